package rig

import (
	"os"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"
)

func TestMain(m *testing.M) {
	RunRoleIfRequested()
	os.Exit(m.Run())
}

// TestFailoverRig is the short default run of the end-to-end rig with the
// agents' automatic failover: two unplanned failovers (n1 dies, then n2),
// one planned switchover and
// one partition (n1-n2 cut for 5 s) with
// PostgreSQL under pgbench, the HTTP poller and the fsync writer on ext4
// over the LUN, then the end-of-run checks. The full run is
// `go run ./benchmarks/failover`. The environment varies it:
// HABLOCK_RIG_TAKEOVER=manual (the baseline path), HABLOCK_RIG_FAILOVERS=N,
// HABLOCK_RIG_SWITCHOVERS=N, HABLOCK_RIG_PARTITIONS=all|none|KIND,...,
// HABLOCK_RIG_KEEP=1 (keep the logs in /tmp/rg-PID).
func TestFailoverRig(t *testing.T) {
	if miss := Requirements(); len(miss) > 0 {
		t.Skip("the failover rig needs: " + strings.Join(miss, "; "))
	}
	if testing.Short() {
		t.Skip("the failover rig takes about two minutes: skipped with -short")
	}
	takeover := TakeoverAuto
	if s := os.Getenv("HABLOCK_RIG_TAKEOVER"); s != "" {
		var err error
		if takeover, err = ParseTakeover(s); err != nil {
			t.Fatal(err)
		}
	}
	ctx := t.Context()
	r, err := New(ctx, Options{Takeover: takeover, Logf: t.Logf})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := r.Close(); err != nil {
			t.Errorf("close: %v", err)
		}
		if t.Failed() || os.Getenv("HABLOCK_RIG_KEEP") != "" {
			t.Logf("logs kept in %s", r.Dir())
			return
		}
		_ = r.RemoveDir()
	})
	start := time.Now()
	if err := r.StartCluster(ctx); err != nil {
		t.Fatal(err)
	}
	if err := r.StartClient(ctx); err != nil {
		t.Fatal(err)
	}
	t.Logf("cluster and client up after %v", time.Since(start).Round(time.Millisecond))
	failovers, switchovers := envInt(t, "HABLOCK_RIG_FAILOVERS", 2), envInt(t, "HABLOCK_RIG_SWITCHOVERS", 1)
	var trials []Trial
	for i := 0; i < failovers; i++ {
		tr, err := r.Failover(ctx)
		if err != nil {
			t.Fatal(err)
		}
		trials = append(trials, tr)
	}
	for i := 0; i < switchovers; i++ {
		tr, err := r.Switchover(ctx)
		if err != nil {
			t.Fatal(err)
		}
		trials = append(trials, tr)
	}
	for _, kind := range partitionsFromEnv(t) {
		pr, err := r.Partition(ctx, kind, 5*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		if len(pr.Overlaps) > 0 {
			t.Errorf("%s: n1 and n2 acknowledged writes in the same period: %s", kind, strings.Join(pr.Overlaps, "; "))
		}
		if pr.Acks[pr.PrimaryAfter] == 0 {
			t.Errorf("%s: the side writer on the Primary %s had no write acknowledged", kind, pr.PrimaryAfter)
		}
		if kind != CutPrimary { // the client is cut off with the Primary
			trials = append(trials, pr.Trial)
		}
	}
	for _, tr := range trials {
		if tr.Errors() != 0 {
			t.Errorf("%s %s->%s: %d errors: HTTP %d, writer %d, pgbench failed %d aborted %d %s",
				tr.Kind, tr.From, tr.To, tr.Errors(), tr.HTTPFailures, tr.WriteErrors, tr.PGFailed, tr.PGAborted, tr.PGErr)
		}
		if tr.PGCommitted == 0 {
			t.Errorf("%s %s->%s: pgbench committed nothing", tr.Kind, tr.From, tr.To)
		}
	}
	f, err := r.Finish(ctx)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("final: %d committed ids recorded, %d ledger rows, %d missing; %d writes; backing files equal %v (%d MiB); e2fsck clean %v; kernel errors %d; lost side writes %d",
		f.LedgerRecorded, f.LedgerRows, f.LedgerMissing, f.Writes, f.BackingEqual, f.BackingSize>>20, f.E2fsckClean, len(f.KernelErrors), len(f.LostSideWrites))
	if !f.OK() {
		t.Errorf("end-of-run checks failed: %+v", f)
	}
}

// envInt reads a trial count override from the environment.
func envInt(t *testing.T, name string, def int) int {
	s := os.Getenv(name)
	if s == "" {
		return def
	}
	n, err := strconv.Atoi(s)
	if err != nil || n < 0 {
		t.Fatalf("%s=%q: want a count", name, s)
	}
	return n
}

// partitionsFromEnv: HABLOCK_RIG_PARTITIONS is a comma-separated list of
// PartitionKinds (default cut-n1-n2; "all"; "none" for none).
func partitionsFromEnv(t *testing.T) []PartitionKind {
	s := os.Getenv("HABLOCK_RIG_PARTITIONS")
	switch s {
	case "":
		return []PartitionKind{CutDisks}
	case "none":
		return nil
	case "all":
		return PartitionKinds
	}
	var kinds []PartitionKind
	for _, k := range strings.Split(s, ",") {
		if !slices.Contains(PartitionKinds, PartitionKind(k)) {
			t.Fatalf("HABLOCK_RIG_PARTITIONS: unknown %q; known: %v", k, PartitionKinds)
		}
		kinds = append(kinds, PartitionKind(k))
	}
	return kinds
}

package rig

import (
	"os"
	"path/filepath"
	"testing"
	"time"
)

// pgbench 15's summary after a run (copied from a rig run), and one
// written in its format for a run where two clients were aborted.
const (
	pgbenchOK = `progress: 15.0 s, 317.7 tps, lat 12.569 ms stddev 6.469, 0 failed
transaction type: /tmp/rg-23370/ledger.pgbench
scaling factor: 1
query mode: simple
number of clients: 4
number of threads: 2
maximum number of tries: 1
duration: 15 s
number of transactions actually processed: 2387
number of failed transactions: 0 (0.000%)
latency average = 25.085 ms
tps = 158.906119 (without initial connection time)
`
	pgbenchAborted = `pgbench: error: client 2 aborted in command 7 (SQL) of script 0; perhaps the backend died while processing
pgbench: error: client 0 aborted in command 5 (SQL) of script 0; perhaps the backend died while processing
number of transactions actually processed: 812
number of failed transactions: 3 (0.368%)
pgbench: error: Run was aborted; the above results are incomplete.
`
)

func TestPgbenchCounts(t *testing.T) {
	for _, c := range []struct {
		out                        string
		processed, failed, aborted int
	}{
		{pgbenchOK, 2387, 0, 0},
		{pgbenchAborted, 812, 3, 2},
		{"", 0, 0, 0},
	} {
		p, f, a := pgbenchCounts(c.out)
		if p != c.processed || f != c.failed || a != c.aborted {
			t.Errorf("pgbenchCounts = %d, %d, %d; want %d, %d, %d\n%s", p, f, a, c.processed, c.failed, c.aborted, c.out)
		}
	}
}

func TestStallMeasures(t *testing.T) {
	base := time.Unix(1000, 0)
	at := func(ms int) int64 { return base.Add(time.Duration(ms) * time.Millisecond).UnixNano() }
	r := &Rig{writes: []int64{at(0), at(5), at(10), at(900), at(905), at(2000)}}
	if got := r.maxGap(base, base.Add(time.Second)); got != 890*time.Millisecond {
		t.Errorf("maxGap over [0, 1000ms] = %v, want 890ms", got)
	}
	// The gap that starts before the window counts: the stall began there.
	if got := r.maxGap(base.Add(500*time.Millisecond), base.Add(950*time.Millisecond)); got != 890*time.Millisecond {
		t.Errorf("maxGap over [500, 950ms] = %v, want 890ms", got)
	}
	if got := r.maxGap(base.Add(901*time.Millisecond), base.Add(1500*time.Millisecond)); got != 5*time.Millisecond {
		t.Errorf("maxGap over [901, 1500ms] = %v, want 5ms (from the completion before the window)", got)
	}
	if got, ok := r.firstWriteAfter(base.Add(10 * time.Millisecond)); !ok || got.UnixNano() != at(900) {
		t.Errorf("firstWriteAfter(10ms) = %v, %v; want the completion at 900ms", got, ok)
	}
	if _, ok := r.firstWriteAfter(base.Add(2 * time.Second)); ok {
		t.Error("firstWriteAfter(the last completion) found one")
	}
}

func TestLostSideWrites(t *testing.T) {
	img := filepath.Join(t.TempDir(), "img")
	data := make([]byte, 4*sideBlock)
	for i := range sideBlock {
		data[i] = 7           // block 0 holds the later write's pattern
		data[sideBlock+i] = 2 // block 1 holds an older pattern than the last ack
	}
	if err := os.WriteFile(img, data, 0o644); err != nil {
		t.Fatal(err)
	}
	t0 := time.Unix(1000, 0)
	r := &Rig{sideAcks: []ack{
		{node: N1, seq: 0, off: 0, pat: 3, end: t0},
		{node: N1, seq: 1, off: 0, pat: 7, end: t0.Add(time.Second)}, // overwrote seq 0: fine
		{node: N2, seq: 5, off: sideBlock, pat: 9, end: t0},          // lost: 2 on disk
	}}
	lost, err := r.lostSideWrites(img)
	if err != nil {
		t.Fatal(err)
	}
	if len(lost) != 1 {
		t.Fatalf("lostSideWrites = %q, want exactly n2's write 5", lost)
	}
	t.Log(lost[0])
}

func TestTakeoverFromLog(t *testing.T) {
	// Lines from an agent's log in a rig run (auto takeover).
	const log = `time=2026-11-22T08:01:05.100Z level=INFO msg="failover decision" node=n2 action=none epoch=2 primary=n1
time=2026-11-22T08:01:06.823Z level=INFO msg="failover decision" node=n2 action=drop-link reason="the primary is silent for heartbeat-timeout but the replication link looks up: drop it (then take over)" epoch=2 primary=n1
time=2026-11-22T08:01:06.875Z level=INFO msg="proposal agreed" node=n2 record="{epoch 3 primary \"n2\" up-to-date n2}" by=w
time=2026-11-22T08:01:06.880Z level=INFO msg="promoted by failover" node=n2 epoch=3 peer_outdated=true engine=2.966611ms target=223.462µs vip=1.217771ms tickled=1 total=4.923341ms
`
	kill, _ := time.Parse(time.RFC3339Nano, "2026-11-22T08:01:06.500Z")
	lb, ok := takeoverFromLog(log, kill)
	if !ok {
		t.Fatal("no takeover found")
	}
	if got := lb.decided.Sub(kill); got != 323*time.Millisecond {
		t.Errorf("decided %v after the kill, want 323ms (the decision before the kill is ignored)", got)
	}
	if got := lb.promoted.Sub(lb.decided); got != 57*time.Millisecond {
		t.Errorf("promoted %v after the decision, want 57ms", got)
	}
	if lb.vip != 1217771*time.Nanosecond {
		t.Errorf("vip = %v, want 1.217771ms", lb.vip)
	}
	if _, ok := takeoverFromLog(log, kill.Add(time.Second)); ok {
		t.Error("found a takeover after the last line")
	}
}

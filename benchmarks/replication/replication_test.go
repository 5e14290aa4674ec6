package main

import (
	"math"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/hablock/hablock/benchmarks/internal/bench"
	hbconfig "github.com/hablock/hablock/internal/config"
)

func TestParseUUID(t *testing.T) {
	out := "created metadata for resource r0 node n1 in /tmp/rs/n1-meta\nbacking /tmp/rs/n1.img, 256 MiB, block size 512\nvolume UUID: 9e6dde4a-7817-4f57-9c7a-a5ed82cbf7c6\non the peer run: ...\n"
	u, err := parseUUID(out)
	if err != nil || u != "9e6dde4a-7817-4f57-9c7a-a5ed82cbf7c6" {
		t.Fatalf("parseUUID = %q, %v", u, err)
	}
	if _, err := parseUUID("error: meta-dir exists\n"); err == nil {
		t.Fatal("parsed a UUID from output without one")
	}
}

// The generated resource file is accepted by the real parser and says what
// the benchmark means.
func TestResourceFile(t *testing.T) {
	src := resourceFile("rB", "B", 1<<30, 4000, [2]int{4001, 4002}, "/tmp/x")
	r, err := hbconfig.Parse(strings.NewReader(src), "rB.conf")
	if err != nil {
		t.Fatalf("%v\n%s", err, src)
	}
	if r.Name != "rB" || r.Size != 1<<30 || len(r.Nodes) != 2 {
		t.Fatalf("parsed %+v", r)
	}
	for _, want := range []string{"protocol B", "listen 127.0.0.1:4000", "resync-rate unlimited",
		"node n1 { address 127.0.0.1:4001; backing /tmp/x/n1.img; meta-dir /tmp/x/n1-meta; admin /tmp/x/n1.sock }",
		"node n2 { address 127.0.0.1:4002;"} {
		if !strings.Contains(src, want) {
			t.Errorf("resource file lacks %q:\n%s", want, src)
		}
	}
}

func TestSelectWorkloads(t *testing.T) {
	ws, err := selectWorkloads([]string{"w1m-qd4", "w4k-qd1"}, map[string]int{"w4k-qd1": 1000}, 0.5)
	if err != nil {
		t.Fatal(err)
	}
	if len(ws) != 2 || ws[0].Name != "w1m-qd4" || ws[0].Count != 500 || ws[1].Count != 500 || ws[1].QueueDepth != 1 {
		t.Fatalf("got %+v", ws)
	}
	if _, err := selectWorkloads([]string{"r4k-qd1"}, nil, 1); err == nil {
		t.Error("unknown workload accepted")
	}
	if _, err := selectWorkloads([]string{"w4k-qd1"}, map[string]int{"nope": 1}, 1); err == nil {
		t.Error("unknown --count workload accepted")
	}
	if _, err := selectWorkloads([]string{"w4k-qd1"}, nil, 1e-9); err == nil {
		t.Error("zero count accepted")
	}
}

func near(a, b float64) bool { return math.Abs(a-b) < 1e-9 }

func TestFinishRatiosAndLatency(t *testing.T) {
	r := &report{Configs: []configInfo{{Name: "standalone"}, {Name: "C"}, {Name: "B"}, {Name: "A"}}}
	wr := r.addWorkload(bench.Workload{Name: "w4k-qd1", Write: true, BlockSize: 4096, QueueDepth: 1, Count: 100})
	for _, x := range []struct {
		cfg  string
		iops float64
	}{{"standalone", 10000}, {"C", 5000}, {"standalone", 8000}, {"C", 6000}, {"standalone", 9000}, {"C", 4000}} {
		wr.add(x.cfg, bench.Run{Status: "ok", IOPS: x.iops})
	}
	wr.add("A", bench.Run{Status: "hang"})
	wr.finish()
	if got := *wr.Configs["standalone"].MedianIOPS; got != 9000 {
		t.Errorf("standalone median %v", got)
	}
	if got := *wr.Ratios["C/standalone"]; !near(got, 5000.0/9000) {
		t.Errorf("C/standalone %v", got)
	}
	if got := *wr.LatencyUS["C"]; got != 200 {
		t.Errorf("C latency %v µs, want 200", got)
	}
	if got := *wr.Ratios["C/standalone latency"]; !near(got, 1.8) {
		t.Errorf("latency ratio %v, want 1.8", got)
	}
	if wr.Ratios["A/standalone"] != nil || wr.LatencyUS["A"] != nil {
		t.Error("A has no successful run but got a ratio or latency")
	}

	w16 := r.addWorkload(bench.Workload{Name: "w4k-qd16", Write: true, BlockSize: 4096, QueueDepth: 16, Count: 100})
	w16.add("standalone", bench.Run{Status: "ok", IOPS: 20000})
	w16.add("C", bench.Run{Status: "ok", IOPS: 17000})
	w16.add("B", bench.Run{Status: "ok", IOPS: 18000})
	w16.add("A", bench.Run{Status: "ok", IOPS: 19000})
	w16.finish()
	if w16.LatencyUS != nil {
		t.Error("latency reported for qd16")
	}
	r.Sync = &syncResult{Bytes: 4 << 30, CopySeconds: []float64{8, 16, 10}, SyncRuns: []float64{12, 11, 30}, PhaseRuns: []float64{10, 9, 29}}
	r.Sync.compute()
	r.Acceptance = r.acceptance()
	want := map[string]struct {
		v    float64
		pass bool
	}{
		"protocol C 4 KiB qd16 writes >= 0.85x standalone (IOPS)": {0.85, true},
		"protocol C 4 KiB qd1 write latency <= 1.5x standalone":   {1.8, false},
		"full initial sync >= 0.80x raw file copy speed":          {10.0 / 12, true}, // median copy 10 s, median sync 12 s
	}
	for _, c := range r.Acceptance {
		w, ok := want[c.Criterion]
		if !ok {
			continue
		}
		if c.Value == nil || !near(*c.Value, w.v) || c.Pass == nil || *c.Pass != w.pass {
			t.Errorf("%s: value %v pass %v, want %v %v", c.Criterion, c.Value, c.Pass, w.v, w.pass)
		}
	}
	md := r.markdown()
	for _, s := range []string{"| 4 KiB write qd1 | 100 |", "(latency 1.80x)", "| raw copy 2 | 16.00 |", "**FAIL**"} {
		if !strings.Contains(md, s) {
			t.Errorf("markdown lacks %q:\n%s", s, md)
		}
	}

	// Two runs append two dated sections after what the file had.
	path := filepath.Join(t.TempDir(), "RESULTS.md")
	if err := os.WriteFile(path, []byte("# earlier results\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	for range 2 {
		if err := appendResults(path, r.section()); err != nil {
			t.Fatal(err)
		}
	}
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	head := "## " + reportTitle + ", " + r.Started.Format("2006-01-02 15:04Z")
	if got := string(b); !strings.HasPrefix(got, "# earlier results\n\n"+head) || strings.Count(got, head) != 2 || strings.Count(got, "**FAIL**") != 2*strings.Count(md, "**FAIL**") {
		t.Errorf("results file after two appends:\n%s", got)
	}
}

func TestSyncCompute(t *testing.T) {
	s := &syncResult{Bytes: 1e9, CopySeconds: []float64{1, 4, 2}, SyncRuns: []float64{8, 2.5, 1}}
	s.compute()
	if !near(*s.CopyMBps, 500) || !near(*s.SyncMBps, 400) || !near(*s.Ratio, 400.0/500) {
		t.Fatalf("copy %v sync %v ratio %v", *s.CopyMBps, *s.SyncMBps, *s.Ratio)
	}
	if s.PhaseMBps != nil || s.PhaseRatio != nil {
		t.Error("phase rate without a phase time")
	}
	empty := &syncResult{Bytes: 1e9}
	empty.compute()
	if empty.Ratio != nil || empty.CopyMBps != nil {
		t.Error("ratio without measurements")
	}
}

func TestStatusHealth(t *testing.T) {
	st := status{Role: "Primary", Disk: "UpToDate", PeerDisk: "UpToDate", Connection: "Connected", Replication: "Established"}
	if h := st.unhealthy(); h != "" {
		t.Errorf("healthy status reported %q", h)
	}
	st.OutOfSync = 4096
	if st.unhealthy() == "" {
		t.Error("out-of-sync bytes not reported")
	}
	st = status{Role: "Primary", Disk: "UpToDate", PeerDisk: "Inconsistent", Connection: "Connected", Replication: "SyncSource"}
	if !st.syncing() || st.unhealthy() == "" {
		t.Error("sync under way not seen")
	}
	line := st.String()
	if lastField(line, "connection:") != "Connected" || lastField(line, "replication:") != "SyncSource" || lastField(line, "nope:") != "" {
		t.Errorf("lastField on %q", line)
	}
}

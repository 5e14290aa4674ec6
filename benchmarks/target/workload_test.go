package main

import (
	"bufio"
	"math"
	"os"
	"slices"
	"strings"
	"testing"
)

// Output captured from qemu-img 7.2 on the testbed.
const sampleWrite = `Sending 20000 write requests, 4096 bytes each, 16 in parallel (starting at offset 0, step size 4096)
Run completed in 0.119 seconds.
`

func TestParseBenchOutput(t *testing.T) {
	b, err := parseBenchOutput(sampleWrite)
	if err != nil {
		t.Fatal(err)
	}
	want := benchOutput{Write: true, Count: 20000, BlockSize: 4096, QueueDepth: 16, Seconds: 0.119}
	if b != want {
		t.Fatalf("got %+v, want %+v", b, want)
	}
	w := workload{Write: true, Count: 20000, BlockSize: 4096, QueueDepth: 16}
	if err := b.Check(w); err != nil {
		t.Fatalf("check: %v", err)
	}
	w.QueueDepth = 1
	if err := b.Check(w); err == nil {
		t.Fatal("check accepted a different queue depth")
	}

	r, err := parseBenchOutput("qemu-img: warning: something\nSending 3000 read requests, 1048576 bytes each, 4 in parallel (starting at offset 0, step size 1048576)\nRun completed in 2 seconds.\n")
	if err != nil {
		t.Fatal(err)
	}
	if r.Write || r.Count != 3000 || r.BlockSize != 1<<20 || r.QueueDepth != 4 || r.Seconds != 2 {
		t.Fatalf("got %+v", r)
	}
}

func TestParseBenchOutputErrors(t *testing.T) {
	for name, out := range map[string]string{
		"empty":         "",
		"no-completion": "Sending 10 write requests, 4096 bytes each, 1 in parallel (starting at offset 0, step size 4096)\n",
		"login-failed":  "qemu-img: Could not open 'driver=iscsi,...': iSCSI: Failed to connect to LUN : iscsi_service failed with : iscsi_service_reconnect_if_loggedin. Can not reconnect right now.\n",
		"zero-time":     "Sending 10 write requests, 4096 bytes each, 1 in parallel (starting at offset 0, step size 4096)\nRun completed in 0.000 seconds.\n",
	} {
		if b, err := parseBenchOutput(out); err == nil {
			t.Errorf("%s: parsed %+v, want an error", name, b)
		}
	}
}

func TestBenchArgs(t *testing.T) {
	w := workload{Write: true, BlockSize: 1 << 20, QueueDepth: 4, Count: 3000}
	got := strings.Join((&rawTarget{file: "/x.img"}).argv(w), " ")
	want := "qemu-img bench -w -c 3000 -d 4 -s 1048576 -S 1048576 -f raw -t none -i native /x.img"
	if got != want {
		t.Fatalf("raw argv\n got %s\nwant %s", got, want)
	}
	w = workload{BlockSize: 4096, QueueDepth: 16, Count: 10}
	got = strings.Join((&tgtTarget{port: 3261, iqn: "iqn.x:t"}).argv(w), " ")
	want = "qemu-img bench -c 10 -d 16 -s 4096 -S 4096 -t none --image-opts driver=iscsi,transport=tcp,portal=127.0.0.1:3261,target=iqn.x:t,lun=1"
	if got != want {
		t.Fatalf("tgt argv\n got %s\nwant %s", got, want)
	}
}

func TestMedian(t *testing.T) {
	for _, c := range []struct {
		in   []float64
		want float64
	}{
		{[]float64{3}, 3},
		{[]float64{5, 1, 3}, 3},
		{[]float64{4, 1, 3, 2}, 2.5},
		{[]float64{10, 10, 1000}, 10},
	} {
		in := slices.Clone(c.in)
		if got := median(c.in); got != c.want {
			t.Errorf("median(%v) = %v, want %v", c.in, got, c.want)
		}
		if !slices.Equal(in, c.in) {
			t.Errorf("median modified its input: %v", c.in)
		}
	}
	if !math.IsNaN(median(nil)) {
		t.Error("median(nil) is not NaN")
	}
}

func TestRatesAndRatio(t *testing.T) {
	if got := iops(30000, 2.5); got != 12000 {
		t.Errorf("iops = %v", got)
	}
	if got := mibps(3000, 1<<20, 1.5); got != 2000 {
		t.Errorf("mibps = %v", got)
	}
	if got := mibps(25600, 4096, 2); got != 50 {
		t.Errorf("mibps 4k = %v", got)
	}
	if got := ratio(36000, 30000); math.Abs(got-1.2) > 1e-12 {
		t.Errorf("ratio = %v", got)
	}
	for _, c := range [][2]float64{{math.NaN(), 1}, {1, math.NaN()}, {1, 0}} {
		if !math.IsNaN(ratio(c[0], c[1])) {
			t.Errorf("ratio(%v, %v) is not NaN", c[0], c[1])
		}
	}
}

// A workload's cells get medians of their successful runs only, and
// ratios of those medians; a target without a successful run gets no ratio.
func TestWorkloadFinish(t *testing.T) {
	wr := &workloadResult{workload: workload{BlockSize: 4096}, Targets: map[string]*cellResult{}, Ratios: map[string]*float64{}}
	for _, r := range []struct {
		target string
		rec    runRecord
	}{
		{"tgt", runRecord{Status: "ok", IOPS: 30000}},
		{"gotgt", runRecord{Status: "hang"}},
		{"hablock", runRecord{Status: "ok", IOPS: 40000, MaxRSSKiB: 9000, HWMKiB: 9500}},
		{"tgt", runRecord{Status: "ok", IOPS: 10000}},
		{"gotgt", runRecord{Status: "crash"}},
		{"hablock", runRecord{Status: "ok", IOPS: 35000, MaxRSSKiB: 12000, HWMKiB: 11000}},
		{"tgt", runRecord{Status: "ok", IOPS: 31000}},
		{"gotgt", runRecord{Status: "hang"}},
		{"hablock", runRecord{Status: "error"}},
	} {
		wr.add(r.target, r.rec)
	}
	wr.finish()
	if got := *wr.Targets["tgt"].MedianIOPS; got != 30000 {
		t.Errorf("tgt median %v", got)
	}
	if got := *wr.Targets["hablock"].MedianIOPS; got != 37500 {
		t.Errorf("hablock median %v (mean of its two ok runs)", got)
	}
	if got := *wr.Targets["hablock"].MedianMiBps; got != 37500*4096.0/(1<<20) {
		t.Errorf("hablock MiB/s %v", got)
	}
	if c := wr.Targets["hablock"]; c.OK != 2 || c.MaxRSSKiB != 12000 || c.MaxHWMKiB != 11000 {
		t.Errorf("hablock cell %+v", c)
	}
	if got := *wr.Ratios["hablock/tgt"]; got != 1.25 {
		t.Errorf("hablock/tgt %v", got)
	}
	if wr.Ratios["hablock/gotgt"] != nil || wr.Targets["gotgt"].MedianIOPS != nil {
		t.Error("gotgt has no successful run but got a median or ratio")
	}
	if got := failSummary(wr.Targets["gotgt"]); got != "hang x2, crash x1" {
		t.Errorf("failSummary = %q", got)
	}
	if !slices.Equal(wr.Order, []string{"tgt", "gotgt", "hablock"}) {
		t.Errorf("order %v", wr.Order)
	}
}

func TestParseMemStatus(t *testing.T) {
	status := "Name:\thablock\nVmPeak:\t 1300000 kB\nVmHWM:\t   20480 kB\nVmRSS:\t   18000 kB\nThreads:\t7\n"
	m, err := parseMemStatus(bufio.NewScanner(strings.NewReader(status)))
	if err != nil {
		t.Fatal(err)
	}
	if m.VmRSS != 18000 || m.VmHWM != 20480 {
		t.Fatalf("got %+v", m)
	}
	if _, err := parseMemStatus(bufio.NewScanner(strings.NewReader("Name:\tx\n"))); err == nil {
		t.Fatal("status without VmRSS accepted")
	}
}

func TestShellQuote(t *testing.T) {
	got := commandLine([]string{"--targets", "raw,tgt", "--markdown", "benchmarks/RESULTS.md", "--x", "a b"})
	want := "go run ./benchmarks/target --targets raw,tgt --markdown benchmarks/RESULTS.md --x 'a b'"
	if got != want {
		t.Fatalf("got %s", got)
	}
}

func TestReadMemStatusSelf(t *testing.T) {
	m, err := readMemStatus(os.Getpid())
	if err != nil {
		t.Fatal(err)
	}
	if m.VmRSS <= 0 || m.VmHWM < m.VmRSS {
		t.Fatalf("implausible %+v", m)
	}
}

// The Markdown rendered from a report equals the one rendered from its
// JSON (--render), and carries the medians, ratios and acceptance results.
func TestReportJSONRoundTrip(t *testing.T) {
	r := &report{Command: "go run ./benchmarks/target", Reps: 2, Size: 1 << 30, RunTimeout: "30s",
		Machine: machineInfo{NProc: 2, LoadStart: "0.10 0.1 0.1", LoadEnd: "3.5 1 1"}}
	for _, n := range []string{"tgt", "hablock"} {
		r.Targets = append(r.Targets, targetInfo{Name: n, Description: n + " on 127.0.0.1"})
	}
	wr := r.addWorkload(workload{Name: "w4k-qd16", Write: true, BlockSize: 4096, QueueDepth: 16, Count: 1000})
	wr.add("tgt", runRecord{Rep: 1, Status: "ok", IOPS: 20000})
	wr.add("hablock", runRecord{Rep: 1, Status: "ok", IOPS: 30000, MaxRSSKiB: 70 * 1024})
	wr.add("tgt", runRecord{Rep: 2, Status: "hang", Detail: "no completion"})
	wr.add("hablock", runRecord{Rep: 2, Status: "ok", IOPS: 26000})
	wr.finish()
	r.Acceptance = r.acceptance()
	md := r.markdown()
	for _, want := range []string{
		"| 4 KiB write qd16 | 1000 | 20,000 (78.1) [1/2 ok; hang x1] | 28,000 (109.4) | 1.40x |",
		"| 4 KiB write qd16 | 20,000 / hang | 30,000 / 26,000 |",
		"| w4k-qd16 hablock/tgt >= 1.2x | 1.40 | pass |",
		"| hablock export RSS during 4k qd16 runs < 64 MiB | 70.00 | **FAIL**",
		"load average exceeded the number of CPUs",
	} {
		if !strings.Contains(md, want) {
			t.Errorf("markdown lacks %q:\n%s", want, md)
		}
	}
	path := t.TempDir() + "/r.json"
	if err := r.writeJSON(path); err != nil {
		t.Fatal(err)
	}
	back, err := loadReport(path)
	if err != nil {
		t.Fatal(err)
	}
	if got := back.markdown(); got != md {
		t.Errorf("markdown from JSON differs:\n%s\n---\n%s", got, md)
	}
}

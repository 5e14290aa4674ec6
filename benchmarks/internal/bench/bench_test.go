package bench

import (
	"math"
	"os"
	"testing"
	"time"
)

func TestCellFinish(t *testing.T) {
	var c Cell
	c.Add(Run{Status: "ok", IOPS: 100, MaxRSSKiB: 5})
	c.Add(Run{Status: "hang"})
	c.Add(Run{Status: "ok", IOPS: 300, HWMKiB: 9})
	if m := c.Finish(1 << 20); m != 200 || *c.MedianMiBps != 200 || c.OK != 2 || c.MaxRSSKiB != 5 || c.MaxHWMKiB != 9 {
		t.Fatalf("median %v, cell %+v", m, c)
	}
	if got := FmtCell(&c); got != "200 (200.0) [2/3 ok; hang x1]" {
		t.Errorf("FmtCell = %q", got)
	}
	var none Cell
	none.Add(Run{Status: "crash"})
	if m := none.Finish(4096); !math.IsNaN(m) || none.MedianIOPS != nil || FmtCell(&none) != "**crash x1**" {
		t.Errorf("cell without a successful run: %v %+v", m, none)
	}
}

func TestThousandsAndCommandLine(t *testing.T) {
	for in, want := range map[float64]string{0: "0", 999: "999", 1000: "1,000", 1234567.4: "1,234,567", -12345: "-12,345"} {
		if got := Thousands(in); got != want {
			t.Errorf("Thousands(%v) = %q, want %q", in, got, want)
		}
	}
	if got := CommandLine("replication", []string{"--sync-size", "1G", "--x", "a b"}); got != "go run ./benchmarks/replication --sync-size 1G --x 'a b'" {
		t.Errorf("CommandLine = %q", got)
	}
}

func TestProcAndMachineCPU(t *testing.T) {
	before, err := ProcCPU(os.Getpid())
	if err != nil {
		t.Fatal(err)
	}
	// Burn about 50 ms of CPU (two clock ticks at least).
	x := 0
	for start := time.Now(); time.Since(start) < 50*time.Millisecond; {
		x++
	}
	after, err := ProcCPU(os.Getpid())
	if err != nil {
		t.Fatal(err)
	}
	if after <= before {
		t.Fatalf("CPU time did not grow after a busy loop (%d iterations): %v -> %v", x, before, after)
	}
	busy, total, err := MachineCPU()
	if err != nil {
		t.Fatal(err)
	}
	if total <= 0 || busy <= 0 || busy > total {
		t.Fatalf("machine CPU busy %v of total %v", busy, total)
	}
	if _, err := ProcCPU(-1); err == nil {
		t.Fatal("ProcCPU(-1) succeeded")
	}
}

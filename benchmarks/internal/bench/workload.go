package bench

import (
	"fmt"
	"math"
	"regexp"
	"sort"
	"strconv"
)

// Workload is one qemu-img bench configuration.
type Workload struct {
	Name       string `json:"name"`        // e.g. "w4k-qd16"
	Write      bool   `json:"write"`       // -w
	BlockSize  int    `json:"block_size"`  // -s and -S, bytes
	QueueDepth int    `json:"queue_depth"` // -d
	Count      int    `json:"count"`       // -c
}

// Label is the human-readable form used in the table.
func (w Workload) Label() string {
	op := "read"
	if w.Write {
		op = "write"
	}
	return fmt.Sprintf("%s %s qd%d", SizeLabel(int64(w.BlockSize)), op, w.QueueDepth)
}

// BenchArgs is the qemu-img argument list up to (not including) the image:
// the caller appends either "-f raw -t none -i native FILE" or
// "-t none --image-opts OPTS".
func (w Workload) BenchArgs() []string {
	args := []string{"bench"}
	if w.Write {
		args = append(args, "-w")
	}
	bs := strconv.Itoa(w.BlockSize)
	return append(args,
		"-c", strconv.Itoa(w.Count),
		"-d", strconv.Itoa(w.QueueDepth),
		"-s", bs, "-S", bs)
}

// DefaultWorkloads are the five workloads, in the order they run.
// Counts aim at 2-4 s per run against tgt over loopback on the 2-core
// testbed (tgt: ~9.5k IOPS qd1 writes, ~31k/42k IOPS qd16 writes/reads).
func DefaultWorkloads() []Workload {
	return []Workload{
		{Name: "w4k-qd1", Write: true, BlockSize: 4096, QueueDepth: 1, Count: 25000},
		{Name: "w4k-qd16", Write: true, BlockSize: 4096, QueueDepth: 16, Count: 110000},
		{Name: "r4k-qd1", Write: false, BlockSize: 4096, QueueDepth: 1, Count: 25000},
		{Name: "r4k-qd16", Write: false, BlockSize: 4096, QueueDepth: 16, Count: 120000},
		{Name: "w1m-qd4", Write: true, BlockSize: 1 << 20, QueueDepth: 4, Count: 2500},
	}
}

// BenchOutput is what qemu-img bench printed.
type BenchOutput struct {
	Write      bool
	Count      int
	BlockSize  int
	QueueDepth int
	Seconds    float64
}

var (
	sendingRE   = regexp.MustCompile(`Sending (\d+) (read|write) requests, (\d+) bytes each, (\d+) in parallel`)
	completedRE = regexp.MustCompile(`Run completed in ([0-9]+(?:\.[0-9]+)?) seconds\.`)
)

// ParseBenchOutput extracts the request parameters and the elapsed time
// from qemu-img bench's stdout.
func ParseBenchOutput(out string) (BenchOutput, error) {
	var b BenchOutput
	m := sendingRE.FindStringSubmatch(out)
	if m == nil {
		return b, fmt.Errorf("no %q line in qemu-img output", "Sending ...")
	}
	b.Count, _ = strconv.Atoi(m[1])
	b.Write = m[2] == "write"
	b.BlockSize, _ = strconv.Atoi(m[3])
	b.QueueDepth, _ = strconv.Atoi(m[4])
	c := completedRE.FindStringSubmatch(out)
	if c == nil {
		return b, fmt.Errorf("no %q line in qemu-img output", "Run completed in ...")
	}
	s, err := strconv.ParseFloat(c[1], 64)
	if err != nil {
		return b, fmt.Errorf("bad elapsed time %q: %v", c[1], err)
	}
	if s <= 0 {
		return b, fmt.Errorf("elapsed time %v is not positive (count too small to measure)", s)
	}
	b.Seconds = s
	return b, nil
}

// Check verifies that qemu-img ran what was asked.
func (b BenchOutput) Check(w Workload) error {
	if b.Write != w.Write || b.Count != w.Count || b.BlockSize != w.BlockSize || b.QueueDepth != w.QueueDepth {
		return fmt.Errorf("qemu-img ran %d %v requests of %d bytes at depth %d, want %d %v of %d at %d",
			b.Count, RWName(b.Write), b.BlockSize, b.QueueDepth, w.Count, RWName(w.Write), w.BlockSize, w.QueueDepth)
	}
	return nil
}

func RWName(write bool) string {
	if write {
		return "write"
	}
	return "read"
}

// IOPS and MiBps of a run of count requests of size bytes in seconds.
func IOPS(count int, seconds float64) float64 { return float64(count) / seconds }

func MiBps(count, size int, seconds float64) float64 {
	return float64(count) * float64(size) / (1 << 20) / seconds
}

// Median of xs (mean of the two middle values for an even length); NaN for
// an empty slice. xs is not modified.
func Median(xs []float64) float64 {
	if len(xs) == 0 {
		return math.NaN()
	}
	s := append([]float64(nil), xs...)
	sort.Float64s(s)
	n := len(s)
	if n%2 == 1 {
		return s[n/2]
	}
	return (s[n/2-1] + s[n/2]) / 2
}

// Ratio a/b, NaN when either is missing (NaN) or b is not positive.
func Ratio(a, b float64) float64 {
	if math.IsNaN(a) || math.IsNaN(b) || b <= 0 {
		return math.NaN()
	}
	return a / b
}

// SizeLabel prints 4096 as "4 KiB", 1<<20 as "1 MiB".
func SizeLabel(n int64) string {
	switch {
	case n >= 1<<30 && n%(1<<30) == 0:
		return fmt.Sprintf("%d GiB", n>>30)
	case n >= 1<<20 && n%(1<<20) == 0:
		return fmt.Sprintf("%d MiB", n>>20)
	case n >= 1<<10 && n%(1<<10) == 0:
		return fmt.Sprintf("%d KiB", n>>10)
	}
	return fmt.Sprintf("%d B", n)
}

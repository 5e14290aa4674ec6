package bench

import (
	"fmt"
	"strings"
)

// Run is one qemu-img run.
type Run struct {
	Rep       int     `json:"rep"`
	Status    string  `json:"status"` // ok, hang, crash, error, down, ...
	Seconds   float64 `json:"seconds,omitempty"`
	IOPS      float64 `json:"iops,omitempty"`
	MiBps     float64 `json:"mib_per_s,omitempty"`
	Detail    string  `json:"detail,omitempty"`
	MaxRSSKiB int64   `json:"max_vmrss_kib,omitempty"` // peak VmRSS sampled during the run
	HWMKiB    int64   `json:"vmhwm_kib,omitempty"`     // VmHWM right after the run
	// CPUus is the CPU time (user + system) each process used during
	// the run, in µs per request, by role ("qemu-img", "serving",
	// "secondary"); BusyPct is the whole machine's busy CPU time over
	// the run as a share of wall time x CPUs.
	CPUus   map[string]float64 `json:"cpu_us_per_request,omitempty"`
	BusyPct float64            `json:"machine_busy_pct,omitempty"`
}

// Summary is the one-line progress form of r.
func (r Run) Summary() string {
	s := r.Status
	if r.Status == "ok" {
		s = fmt.Sprintf("%8.0f IOPS %8.1f MiB/s (%.3f s)", r.IOPS, r.MiBps, r.Seconds)
	} else if r.Detail != "" {
		s += ": " + r.Detail
	}
	if r.MaxRSSKiB > 0 {
		s += fmt.Sprintf("  rss %.1f MiB", float64(r.MaxRSSKiB)/1024)
	}
	return s
}

// Cell is one target (configuration) on one workload.
type Cell struct {
	Runs        []Run    `json:"runs"`
	OK          int      `json:"ok_runs"`
	MedianIOPS  *float64 `json:"median_iops"`
	MedianMiBps *float64 `json:"median_mib_per_s"`
	MaxRSSKiB   int64    `json:"max_vmrss_kib,omitempty"`
	MaxHWMKiB   int64    `json:"max_vmhwm_kib,omitempty"`
}

// Add records a run.
func (c *Cell) Add(r Run) {
	c.Runs = append(c.Runs, r)
	c.MaxRSSKiB = max(c.MaxRSSKiB, r.MaxRSSKiB)
	c.MaxHWMKiB = max(c.MaxHWMKiB, r.HWMKiB)
}

// Finish computes the medians of the successful runs (requests of
// blockSize bytes) and returns the median IOPS (NaN without a successful
// run).
func (c *Cell) Finish(blockSize int) float64 {
	var xs []float64
	for _, r := range c.Runs {
		if r.Status == "ok" {
			xs = append(xs, r.IOPS)
		}
	}
	c.OK = len(xs)
	m := Median(xs)
	c.MedianIOPS = Num(m)
	c.MedianMiBps = Num(m * float64(blockSize) / (1 << 20))
	return m
}

// FailSummary counts the failure statuses of a cell, e.g. "hang x3".
func FailSummary(c *Cell) string {
	counts := map[string]int{}
	var order []string
	for _, r := range c.Runs {
		if r.Status == "ok" {
			continue
		}
		if counts[r.Status] == 0 {
			order = append(order, r.Status)
		}
		counts[r.Status]++
	}
	var parts []string
	for _, s := range order {
		parts = append(parts, fmt.Sprintf("%s x%d", s, counts[s]))
	}
	return strings.Join(parts, ", ")
}

// FmtCell is "IOPS (MiB/s)" of a cell's medians, with failures noted.
func FmtCell(c *Cell) string {
	if c == nil {
		return "-"
	}
	if c.OK == 0 {
		return "**" + FailSummary(c) + "**"
	}
	s := fmt.Sprintf("%s (%.1f)", Thousands(*c.MedianIOPS), *c.MedianMiBps)
	if c.OK < len(c.Runs) {
		s += fmt.Sprintf(" [%d/%d ok; %s]", c.OK, len(c.Runs), FailSummary(c))
	}
	return s
}

// FmtRatio is "1.23x", or "n/a" for nil.
func FmtRatio(p *float64) string {
	if p == nil {
		return "n/a"
	}
	return fmt.Sprintf("%.2fx", *p)
}

// ColumnsHeader ends a Markdown table header whose first cell the caller
// printed (e.g. "| workload |"): one right-aligned column per name, then
// the separator row.
func ColumnsHeader(names []string) string {
	var b strings.Builder
	for _, n := range names {
		fmt.Fprintf(&b, " %s |", n)
	}
	fmt.Fprintf(&b, "\n|---|%s\n", strings.Repeat("---:|", len(names)))
	return b.String()
}

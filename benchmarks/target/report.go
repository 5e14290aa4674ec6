package main

import (
	"context"
	"encoding/json"
	"fmt"
	benchpkg "github.com/hablock/hablock/benchmarks/internal/bench"
	"os"
	"runtime/debug"
	"strings"
	"time"
)

type workloadResult struct {
	workload
	Label   string                 `json:"label"`
	Order   []string               `json:"target_order"`
	Targets map[string]*cellResult `json:"targets"`
	Ratios  map[string]*float64    `json:"ratios"` // of median IOPS, e.g. "hablock/tgt"
}

func (wr *workloadResult) add(target string, r runRecord) {
	c, ok := wr.Targets[target]
	if !ok {
		c = &cellResult{}
		wr.Targets[target] = c
		wr.Order = append(wr.Order, target)
	}
	c.Add(r)
}

// ratioPairs are the ratios the report shows (numerator/denominator).
var ratioPairs = [][2]string{{"hablock", "tgt"}, {"hablock", "gotgt"}, {"hablock", "raw"}}

func (wr *workloadResult) finish() {
	med := map[string]float64{}
	for name, c := range wr.Targets {
		med[name] = c.Finish(wr.BlockSize)
	}
	for _, p := range ratioPairs {
		a, okA := med[p[0]]
		b, okB := med[p[1]]
		if okA && okB {
			wr.Ratios[p[0]+"/"+p[1]] = num(ratio(a, b))
		}
	}
}

type targetInfo struct {
	Name        string `json:"name"`
	Description string `json:"description"`
	Restarts    int    `json:"restarts"`
}

type warmupRecord struct {
	Target   string `json:"target"`
	Workload string `json:"workload"`
	Status   string `json:"status"`
	Detail   string `json:"detail,omitempty"`
}

type machineInfo struct {
	NProc     int    `json:"nproc"`
	CPU       string `json:"cpu"`
	MemTotal  string `json:"mem_total"`
	Kernel    string `json:"kernel"`
	Go        string `json:"go"`
	Qemu      string `json:"qemu_img"`
	Tgt       string `json:"tgt"`
	Gotgt     string `json:"gotgt"`
	Hablock   string `json:"hablock,omitempty"`
	LoadStart string `json:"loadavg_start"`
	LoadEnd   string `json:"loadavg_end"`
}

type check struct {
	Criterion string   `json:"criterion"`
	Value     *float64 `json:"value"`
	Pass      *bool    `json:"pass"` // null: not measurable in this run
	Note      string   `json:"note,omitempty"`
}

type report struct {
	Command    string            `json:"command"`
	Started    time.Time         `json:"started"`
	Finished   time.Time         `json:"finished"`
	Machine    machineInfo       `json:"machine"`
	Size       int64             `json:"backing_file_bytes"`
	Reps       int               `json:"reps"`
	RunTimeout string            `json:"run_timeout"`
	Targets    []targetInfo      `json:"targets"`
	Warmup     []warmupRecord    `json:"warmup,omitempty"`
	Workloads  []*workloadResult `json:"workloads"`
	Acceptance []check           `json:"acceptance,omitempty"`
}

func newReport(b *bench) *report {
	return &report{
		Command:    commandLine(b.args),
		Started:    time.Now().UTC(),
		Machine:    machine(),
		Size:       b.size,
		Reps:       b.o.reps,
		RunTimeout: b.o.runTimeout.String(),
	}
}

func (r *report) addTarget(t target) {
	for i := range r.Targets {
		if r.Targets[i].Name == t.name() {
			return
		}
	}
	r.Targets = append(r.Targets, targetInfo{Name: t.name(), Description: t.describe()})
}

// noteRestart counts a restart of t and records how it now runs (ports
// change on restart).
func (r *report) noteRestart(t target) {
	for i := range r.Targets {
		if r.Targets[i].Name == t.name() {
			r.Targets[i].Restarts++
			r.Targets[i].Description = t.describe()
		}
	}
}

func (r *report) addWorkload(w workload) *workloadResult {
	wr := &workloadResult{workload: w, Label: w.Label(), Targets: map[string]*cellResult{}, Ratios: map[string]*float64{}}
	r.Workloads = append(r.Workloads, wr)
	return wr
}

func (r *report) finish() {
	r.Finished = time.Now().UTC()
	r.Machine.LoadEnd = loadavg()
	r.Acceptance = r.acceptance()
}

func (r *report) workload(name string) *workloadResult {
	for _, w := range r.Workloads {
		if w.Name == name {
			return w
		}
	}
	return nil
}

// rssLimitKiB is the bound on hablock export's RSS under qd16.
const rssLimitKiB = 64 * 1024

// acceptance evaluates the criteria on this run's numbers.
func (r *report) acceptance() []check {
	if !contains(r.targetNames(), "hablock") {
		return nil
	}
	var out []check
	ratioCheck := func(wl, pair string, min float64) {
		c := check{Criterion: fmt.Sprintf("%s %s >= %.1fx", wl, pair, min)}
		w := r.workload(wl)
		switch {
		case w == nil:
			c.Note = "workload not run"
		case w.Ratios[pair] == nil:
			c.Note = "no ratio: " + r.missingWhy(w, pair)
		default:
			c.Value = w.Ratios[pair]
			pass := *c.Value >= min
			c.Pass = &pass
		}
		out = append(out, c)
	}
	for _, wl := range []string{"w4k-qd16", "r4k-qd16"} {
		ratioCheck(wl, "hablock/tgt", 1.2)
	}
	for _, wl := range []string{"w4k-qd1", "r4k-qd1", "w1m-qd4"} {
		ratioCheck(wl, "hablock/tgt", 1.0)
	}
	for _, wl := range []string{"w4k-qd1", "w4k-qd16", "r4k-qd1", "r4k-qd16", "w1m-qd4"} {
		ratioCheck(wl, "hablock/gotgt", 1.0)
	}
	// RSS of hablock export during the qd16 runs: the larger of the peak
	// sampled VmRSS and the VmHWM read right after each qd16 run (VmHWM is
	// a lifetime peak, so it bounds the qd16 runs from above).
	c := check{Criterion: "hablock export RSS during 4k qd16 runs < 64 MiB"}
	var peak int64
	seen := false
	for _, wl := range []string{"w4k-qd16", "r4k-qd16"} {
		if w := r.workload(wl); w != nil {
			if cell := w.Targets["hablock"]; cell != nil && (cell.MaxRSSKiB > 0 || cell.MaxHWMKiB > 0) {
				seen = true
				peak = max(peak, cell.MaxRSSKiB, cell.MaxHWMKiB)
			}
		}
	}
	if seen {
		v := float64(peak) / 1024
		pass := peak < rssLimitKiB
		c.Value, c.Pass = &v, &pass
		c.Note = "MiB; max(sampled VmRSS, VmHWM after each run)"
	} else {
		c.Note = "hablock not run or RSS not sampled"
	}
	out = append(out, c)
	return out
}

// missingWhy explains why a ratio is missing (e.g. the reference hung).
func (r *report) missingWhy(w *workloadResult, pair string) string {
	var why []string
	for _, name := range strings.Split(pair, "/") {
		c := w.Targets[name]
		if c == nil {
			why = append(why, name+" not run")
		} else if c.OK == 0 {
			why = append(why, name+": "+failSummary(c))
		}
	}
	return strings.Join(why, "; ")
}

func (r *report) targetNames() []string {
	var n []string
	for _, t := range r.Targets {
		n = append(n, t.Name)
	}
	return n
}

func (r *report) markdown() string {
	var b strings.Builder
	p := func(format string, a ...any) { fmt.Fprintf(&b, format, a...) }
	names := r.targetNames()
	p("# Target benchmark: hablock vs tgt vs gotgt vs raw file\n\n")
	p("Command (from the module root, as root):\n\n```\n%s\n```\n\n", r.Command)
	p("Run %s to %s. Median of %d runs per cell, targets alternated within each workload; "+
		"cells are IOPS (MiB/s); ratios are of the medians from this run.\n\n",
		r.Started.Format("2006-01-02 15:04:05Z"), r.Finished.Format("15:04:05Z"), r.Reps)

	p("| workload | count |")
	for _, n := range names {
		p(" %s |", n)
	}
	var ratios []string
	for _, rp := range ratioPairs {
		if contains(names, rp[0]) && contains(names, rp[1]) {
			ratios = append(ratios, rp[0]+"/"+rp[1])
		}
	}
	for _, rn := range ratios {
		p(" %s |", rn)
	}
	p("\n|---|---:|%s%s\n", strings.Repeat("---:|", len(names)), strings.Repeat("---:|", len(ratios)))
	for _, w := range r.Workloads {
		p("| %s | %d |", w.Label, w.Count)
		for _, n := range names {
			p(" %s |", fmtCell(w.Targets[n]))
		}
		for _, rn := range ratios {
			p(" %s |", fmtRatio(w.Ratios[rn]))
		}
		p("\n")
	}

	p("\nEvery run, in run order (IOPS; a failed run shows its status):\n\n| workload |")
	p("%s", benchpkg.ColumnsHeader(names))
	for _, w := range r.Workloads {
		p("| %s |", w.Label)
		for _, n := range names {
			c := w.Targets[n]
			if c == nil {
				p(" - |")
				continue
			}
			var runs []string
			for _, run := range c.Runs {
				if run.Status == "ok" {
					runs = append(runs, thousands(run.IOPS))
				} else {
					runs = append(runs, run.Status)
				}
			}
			p(" %s |", strings.Join(runs, " / "))
		}
		p("\n")
	}

	p("\nPeak resident memory of each target process (MiB; max sampled VmRSS / max VmHWM after the runs):\n\n")
	p("| workload |")
	var procs []string
	for _, n := range names {
		if n != "raw" {
			procs = append(procs, n)
			p(" %s |", n)
		}
	}
	p("\n|---|%s\n", strings.Repeat("---:|", len(procs)))
	for _, w := range r.Workloads {
		p("| %s |", w.Label)
		for _, n := range procs {
			c := w.Targets[n]
			if c == nil || (c.MaxRSSKiB == 0 && c.MaxHWMKiB == 0) {
				p(" - |")
				continue
			}
			p(" %.1f / %.1f |", float64(c.MaxRSSKiB)/1024, float64(c.MaxHWMKiB)/1024)
		}
		p("\n")
	}

	if len(r.Acceptance) > 0 {
		p("\nAcceptance criteria of the issue, evaluated on this run:\n\n| criterion | value | result |\n|---|---:|---|\n")
		for _, c := range r.Acceptance {
			v, res := "n/a", "n/a"
			if c.Value != nil {
				v = fmt.Sprintf("%.2f", *c.Value)
			}
			if c.Pass != nil {
				res = map[bool]string{true: "pass", false: "**FAIL**"}[*c.Pass]
			}
			if c.Note != "" {
				res += " (" + c.Note + ")"
			}
			p("| %s | %s | %s |\n", c.Criterion, v, res)
		}
	}

	var failures []string
	for _, w := range r.Workloads {
		for _, n := range w.Order {
			for _, run := range w.Targets[n].Runs {
				if run.Status != "ok" {
					failures = append(failures, fmt.Sprintf("- %s rep %d, %s: %s: %s", w.Label, run.Rep, n, run.Status, run.Detail))
				}
			}
		}
	}
	for _, wu := range r.Warmup {
		if wu.Status != "ok" {
			failures = append(failures, fmt.Sprintf("- warmup %s, %s: %s: %s", wu.Workload, wu.Target, wu.Status, wu.Detail))
		}
	}
	if len(failures) > 0 {
		p("\nFailed runs (hang = no completion within %s, then the target was restarted; crash = the target process died):\n\n%s\n",
			r.RunTimeout, strings.Join(failures, "\n"))
	}

	p("\nTargets:\n\n")
	for _, t := range r.Targets {
		p("- **%s**: %s", t.Name, t.Description)
		if t.Restarts > 0 {
			p(" (restarted %d times)", t.Restarts)
		}
		p("\n")
	}
	p("\nEach target has its own %s backing file in one temporary directory, pre-filled with the same "+
		"pseudo-random data and fdatasync'ed before the targets start; reads read that data. "+
		"iSCSI runs use `qemu-img bench ... -t none --image-opts driver=iscsi,...`; "+
		"a sync(2) runs between runs, untimed. IOPS come from qemu-img's \"Run completed in X seconds\".\n",
		sizeLabel(r.Size))

	m := r.Machine
	p("\nMachine: %d CPUs (%s), %s RAM, Linux %s, %s, %s, tgt %s, gotgt %s",
		m.NProc, m.CPU, m.MemTotal, m.Kernel, m.Go, m.Qemu, m.Tgt, m.Gotgt)
	if m.Hablock != "" {
		p(", %s", m.Hablock)
	}
	p(". Load average at start %s, at end %s.\n", m.LoadStart, m.LoadEnd)
	if busy(m.LoadStart, m.NProc) || busy(m.LoadEnd, m.NProc) {
		p("\n**Note:** the 1-minute load average exceeded the number of CPUs: other work shared the machine " +
			"during this run, so absolute numbers are depressed and individual runs vary; compare ratios, and see every run above.\n")
	}
	return b.String()
}

func contains(xs []string, s string) bool {
	for _, x := range xs {
		if x == s {
			return true
		}
	}
	return false
}

func (r *report) writeJSON(path string) error {
	b, err := json.MarshalIndent(r, "", "  ")
	if err != nil {
		return err
	}
	return os.WriteFile(path, append(b, '\n'), 0o644)
}

// commandLine is the command a reader would type to reproduce this run.
func commandLine(args []string) string {
	parts := []string{"go", "run", "./benchmarks/target"}
	for _, a := range args {
		parts = append(parts, shellQuote(a))
	}
	return strings.Join(parts, " ")
}

func machine() machineInfo {
	bm := benchpkg.DescribeMachine()
	m := machineInfo{NProc: bm.NProc, CPU: bm.CPU, MemTotal: bm.MemTotal, Kernel: bm.Kernel, Go: bm.Go, Qemu: bm.Qemu, LoadStart: loadavg()}
	m.Tgt = firstLine(cmdOut("tgtadm", "--version"))
	m.Gotgt = "v0.2.2"
	if bi, ok := debug.ReadBuildInfo(); ok {
		for _, d := range bi.Deps {
			if d.Path == "github.com/gostor/gotgt" {
				m.Gotgt = d.Version
			}
		}
	}
	return m
}

func hablockVersion(ctx context.Context, bin string) string {
	return benchpkg.HablockVersion(ctx, bin)
}

// loadReport reads a report written with --json.
func loadReport(path string) (*report, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	var r report
	if err := json.Unmarshal(b, &r); err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return &r, nil
}

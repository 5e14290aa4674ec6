package main

import (
	"encoding/json"
	"fmt"
	"os"
	"strings"
	"time"

	"github.com/hablock/hablock/benchmarks/internal/bench"
)

type configInfo struct {
	Name        string `json:"name"`
	Description string `json:"description"`
}

type warmupRecord struct {
	Config string `json:"config"`
	Status string `json:"status"`
	Detail string `json:"detail,omitempty"`
}

type workloadResult struct {
	bench.Workload
	Label   string                 `json:"label"`
	Order   []string               `json:"config_order"`
	Configs map[string]*bench.Cell `json:"configs"`
	// Ratios of median IOPS to standalone, e.g. "C/standalone"; for qd1
	// also "C/standalone latency" (its inverse).
	Ratios map[string]*float64 `json:"ratios"`
	// LatencyUS is 1/median IOPS in µs per configuration (queue depth 1).
	LatencyUS map[string]*float64 `json:"latency_us,omitempty"`
}

func (wr *workloadResult) add(cfg string, r bench.Run) {
	c, ok := wr.Configs[cfg]
	if !ok {
		c = &bench.Cell{}
		wr.Configs[cfg] = c
		wr.Order = append(wr.Order, cfg)
	}
	c.Add(r)
}

func (wr *workloadResult) finish() {
	med := map[string]float64{}
	for name, c := range wr.Configs {
		med[name] = c.Finish(wr.BlockSize)
	}
	base, haveBase := med["standalone"]
	for _, name := range wr.Order {
		if name == "standalone" {
			continue
		}
		if haveBase {
			wr.Ratios[name+"/standalone"] = bench.Num(bench.Ratio(med[name], base))
		}
	}
	if wr.QueueDepth == 1 {
		wr.LatencyUS = map[string]*float64{}
		for name, m := range med {
			wr.LatencyUS[name] = bench.Num(latencyUS(m))
		}
		if haveBase {
			for _, name := range wr.Order {
				if name != "standalone" {
					wr.Ratios[name+"/standalone latency"] = bench.Num(bench.Ratio(latencyUS(med[name]), latencyUS(base)))
				}
			}
		}
	}
}

// latencyUS is the mean time per request of a queue-depth-1 run, in µs.
func latencyUS(iops float64) float64 {
	if !(iops > 0) {
		return bench.Ratio(1, 0) // NaN
	}
	return 1e6 / iops
}

type check struct {
	Criterion string   `json:"criterion"`
	Value     *float64 `json:"value"`
	Pass      *bool    `json:"pass"` // null: not measured in this run
	Note      string   `json:"note,omitempty"`
}

type machineInfo struct {
	NProc     int    `json:"nproc"`
	CPU       string `json:"cpu"`
	MemTotal  string `json:"mem_total"`
	Kernel    string `json:"kernel"`
	Go        string `json:"go"`
	Qemu      string `json:"qemu_img"`
	Hablock   string `json:"hablock,omitempty"`
	LoadStart string `json:"loadavg_start"`
	LoadEnd   string `json:"loadavg_end"`
}

type report struct {
	Command    string            `json:"command"`
	Started    time.Time         `json:"started"`
	Finished   time.Time         `json:"finished"`
	Machine    machineInfo       `json:"machine"`
	Size       int64             `json:"volume_bytes"`
	Reps       int               `json:"reps"`
	RunTimeout string            `json:"run_timeout"`
	Configs    []configInfo      `json:"configs"`
	Warmup     []warmupRecord    `json:"warmup,omitempty"`
	Workloads  []*workloadResult `json:"workloads"`
	Sync       *syncResult       `json:"initial_sync,omitempty"`
	Acceptance []check           `json:"acceptance"`
}

func newReport(r *runner) *report {
	m := bench.DescribeMachine()
	return &report{
		Command: bench.CommandLine("replication", r.args),
		Started: time.Now().UTC(),
		Machine: machineInfo{NProc: m.NProc, CPU: m.CPU, MemTotal: m.MemTotal, Kernel: m.Kernel, Go: m.Go, Qemu: m.Qemu,
			LoadStart: bench.Loadavg()},
		Size:       r.size,
		Reps:       r.o.reps,
		RunTimeout: r.o.runTimeout.String(),
	}
}

func (r *report) addWorkload(w bench.Workload) *workloadResult {
	wr := &workloadResult{Workload: w, Label: w.Label(), Configs: map[string]*bench.Cell{}, Ratios: map[string]*float64{}}
	r.Workloads = append(r.Workloads, wr)
	return wr
}

func (r *report) finish() {
	r.Finished = time.Now().UTC()
	r.Machine.LoadEnd = bench.Loadavg()
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

// acceptance evaluates the criteria on this run's numbers.
func (r *report) acceptance() []check {
	var out []check
	ratioCheck := func(crit, wl, key string, limit float64, atMost bool) {
		c := check{Criterion: crit}
		w := r.workload(wl)
		switch {
		case w == nil:
			c.Note = "workload not run"
		case w.Ratios[key] == nil:
			c.Note = "no ratio (configuration not run or no successful run)"
		default:
			c.Value = w.Ratios[key]
			pass := *c.Value >= limit
			if atMost {
				pass = *c.Value <= limit
			}
			c.Pass = &pass
		}
		out = append(out, c)
	}
	ratioCheck("protocol C 4 KiB qd16 writes >= 0.85x standalone (IOPS)", "w4k-qd16", "C/standalone", 0.85, false)
	ratioCheck("protocol C 4 KiB qd1 write latency <= 1.5x standalone", "w4k-qd1", "C/standalone latency", 1.5, true)
	ratioCheck("protocol C 1 MiB qd4 writes >= 0.85x standalone (MiB/s)", "w1m-qd4", "C/standalone", 0.85, false)
	c := check{Criterion: "full initial sync >= 0.80x raw file copy speed"}
	switch {
	case r.Sync == nil:
		c.Note = "not run (--sync-size 0)"
	case r.Sync.Ratio == nil:
		c.Note = "not measured: " + r.Sync.Error
	default:
		c.Value = r.Sync.Ratio
		pass := *c.Value >= 0.80
		c.Pass = &pass
		c.Note = fmt.Sprintf("%s volume; median of %d syncs ('primary --force' to UpToDate) / median of %d raw copies",
			bench.SizeLabel(r.Sync.Bytes), len(r.Sync.SyncRuns), len(r.Sync.CopySeconds))
	}
	out = append(out, c)
	var ab []string
	for _, w := range r.Workloads {
		for _, n := range []string{"A", "B"} {
			if w.Configs[n] != nil && w.Configs[n].OK > 0 && !contains(ab, n) {
				ab = append(ab, n)
			}
		}
	}
	reported := len(ab) == 2
	out = append(out, check{Criterion: "protocols A and B reported", Pass: &reported, Note: "measured: " + strings.Join(ab, ", ")})
	return out
}

func contains(xs []string, s string) bool {
	for _, x := range xs {
		if x == s {
			return true
		}
	}
	return false
}

func (r *report) configNames() []string {
	var n []string
	for _, c := range r.Configs {
		n = append(n, c.Name)
	}
	return n
}

const reportTitle = "Replication benchmark: replicated resource (protocols C, B, A) vs the same target standalone"

func (r *report) markdown() string {
	return "# " + reportTitle + "\n\n" + r.body()
}

// section is the report as a dated second-level section of a results
// file that collects many runs.
func (r *report) section() string {
	return "## " + reportTitle + ", " + r.Started.Format("2006-01-02 15:04Z") + "\n\n" + r.body()
}

// appendResults appends section to path, separated from what is there
// by a blank line; the file is created if missing.
func appendResults(path, section string) error {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o644)
	if err != nil {
		return err
	}
	if _, err := f.WriteString("\n" + section); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}

// body is the report without its title (it has no other headings).
func (r *report) body() string {
	var b strings.Builder
	p := func(format string, a ...any) { fmt.Fprintf(&b, format, a...) }
	names := r.configNames()
	p("Command (from the module root):\n\n```\n%s\n```\n\n", r.Command)
	p("Run %s to %s, everything on 127.0.0.1. Median of %d runs per cell, configurations alternated within each workload; "+
		"cells are IOPS (MiB/s), and for queue depth 1 also the latency 1/IOPS; ratios are of the medians from this run.\n\n",
		r.Started.Format("2006-01-02 15:04:05Z"), r.Finished.Format("15:04:05Z"), r.Reps)
	var ratios []string
	for _, n := range names {
		if n != "standalone" && contains(names, "standalone") {
			ratios = append(ratios, n+"/standalone")
		}
	}
	if len(r.Workloads) > 0 {
		p("| workload | count |")
		for _, n := range names {
			p(" %s |", n)
		}
		for _, rn := range ratios {
			p(" %s |", rn)
		}
		p("\n|---|---:|%s%s\n", strings.Repeat("---:|", len(names)), strings.Repeat("---:|", len(ratios)))
		for _, w := range r.Workloads {
			p("| %s | %d |", w.Label, w.Count)
			for _, n := range names {
				cell := bench.FmtCell(w.Configs[n])
				if l := w.LatencyUS[n]; l != nil {
					cell += fmt.Sprintf(", %.0f µs", *l)
				}
				p(" %s |", cell)
			}
			for _, rn := range ratios {
				s := bench.FmtRatio(w.Ratios[rn])
				if l := w.Ratios[rn+" latency"]; l != nil {
					s += fmt.Sprintf(" (latency %.2fx)", *l)
				}
				p(" %s |", s)
			}
			p("\n")
		}

		p("\nEvery run, in run order (IOPS; a failed run shows its status):\n\n| workload |")
		p("%s", bench.ColumnsHeader(names))
		for _, w := range r.Workloads {
			p("| %s |", w.Label)
			for _, n := range names {
				c := w.Configs[n]
				if c == nil {
					p(" - |")
					continue
				}
				var runs []string
				for _, run := range c.Runs {
					if run.Status == "ok" {
						runs = append(runs, bench.Thousands(run.IOPS))
					} else {
						runs = append(runs, run.Status)
					}
				}
				p(" %s |", strings.Join(runs, " / "))
			}
			p("\n")
		}
		p("\nPeak resident memory of the serving process (hablock export; the Primary's agent), MiB, max sampled VmRSS / VmHWM:\n\n| workload |")
		p("%s", bench.ColumnsHeader(names))
		for _, w := range r.Workloads {
			p("| %s |", w.Label)
			for _, n := range names {
				c := w.Configs[n]
				if c == nil || (c.MaxRSSKiB == 0 && c.MaxHWMKiB == 0) {
					p(" - |")
					continue
				}
				p(" %.1f / %.1f |", float64(c.MaxRSSKiB)/1024, float64(c.MaxHWMKiB)/1024)
			}
			p("\n")
		}
		r.cpuTable(p, names, ratios)
	}

	if s := r.Sync; s != nil {
		p("\nFull initial sync of a %s volume (protocol C pair, n1 pre-filled with random data), against a raw copy of the same file on the same filesystem (read/write loop with 1 MiB buffers, then fdatasync; page cache of the source dropped first; an untimed warm-up copy, then once before the first sync and once after each; each sync on a fresh pair):\n\n",
			bench.SizeLabel(s.Bytes))
		p("| measurement | seconds | MB/s |\n|---|---:|---:|\n")
		if w := s.WarmupSeconds; w > 0 {
			p("| warm-up raw copy (not counted) | %.2f | %.0f |\n", w, float64(s.Bytes)/w/1e6)
		}
		for i, c := range s.CopySeconds {
			p("| raw copy %d | %.2f | %.0f |\n", i+1, c, float64(s.Bytes)/c/1e6)
		}
		for i, c := range s.SyncRuns {
			p("| initial sync %d, 'primary --force' to UpToDate | %.2f | %.0f |\n", i+1, c, float64(s.Bytes)/c/1e6)
		}
		for i, c := range s.PhaseRuns {
			if c > 0 {
				p("| initial sync %d, first status showing the sync to UpToDate | %.2f | %.0f |\n", i+1, c, float64(s.Bytes)/c/1e6)
			}
		}
		p("\nMedians: raw copy %s MB/s, sync %s MB/s. sync / copy: %s; sync phase / copy: %s. MB = 10^6 bytes.\n",
			fmtF(s.CopyMBps, "%.0f"), fmtF(s.SyncMBps, "%.0f"), fmtF(s.Ratio, "%.2fx"), fmtF(s.PhaseRatio, "%.2fx"))
		if s.Reconnects > 0 {
			p("\nThe replication link dropped %d time(s) during the sync (n1 went from Connected to another connection state; see below).\n", s.Reconnects)
		}
		if len(s.StatusTimeline) > 0 {
			p("\nStatus of n1 during the first sync (connection or replication changes, polled every 50 ms; time since 'primary --force'):\n\n```\n%s\n```\n",
				strings.Join(s.StatusTimeline, "\n"))
		}
		if s.Error != "" {
			p("\n**Initial sync failed:** %s\n", s.Error)
		}
	}

	if len(r.Acceptance) > 0 {
		p("\nCriteria of the issue, evaluated on this run:\n\n| criterion | value | result |\n|---|---:|---|\n")
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

	var notes []string
	for _, w := range r.Workloads {
		for _, n := range w.Order {
			for _, run := range w.Configs[n].Runs {
				if run.Status != "ok" || run.Detail != "" {
					notes = append(notes, fmt.Sprintf("- %s rep %d, %s: %s: %s", w.Label, run.Rep, n, run.Status, run.Detail))
				}
			}
		}
	}
	for _, wu := range r.Warmup {
		if wu.Status != "ok" {
			notes = append(notes, fmt.Sprintf("- warmup, %s: %s: %s", wu.Config, wu.Status, wu.Detail))
		}
	}
	if len(notes) > 0 {
		p("\nFailed or flagged runs (hang = no completion within %s; crash = a process died; degraded = the pair was not Connected/UpToDate before the run):\n\n%s\n",
			r.RunTimeout, strings.Join(notes, "\n"))
	}

	if len(r.Configs) > 0 {
		p("\nConfigurations (each with its own %s backing files, pre-filled with the same pseudo-random data; n2's filled by the initial sync):\n\n", bench.SizeLabel(r.Size))
		for _, c := range r.Configs {
			p("- **%s**: %s\n", c.Name, c.Description)
		}
		p("\nqemu-img bench ... -t none --image-opts driver=iscsi,... ; sync(2) between runs, untimed; IOPS from qemu-img's \"Run completed in X seconds\".\n")
	}
	m := r.Machine
	p("\nMachine: %d CPUs (%s), %s RAM, Linux %s, %s, %s", m.NProc, m.CPU, m.MemTotal, m.Kernel, m.Go, m.Qemu)
	if m.Hablock != "" {
		p(", %s", m.Hablock)
	}
	p(". Load average at start %s, at end %s.\n", m.LoadStart, m.LoadEnd)
	if bench.Busy(m.LoadStart, m.NProc) || bench.Busy(m.LoadEnd, m.NProc) {
		p("\n**Note:** the 1-minute load average exceeded the number of CPUs: other work shared the machine during this run; compare ratios, and see every run above.\n")
	}
	return b.String()
}

func fmtF(p *float64, format string) string {
	if p == nil {
		return "n/a"
	}
	return fmt.Sprintf(format, *p)
}

func (r *report) writeJSON(path string) error {
	b, err := json.MarshalIndent(r, "", "  ")
	if err != nil {
		return err
	}
	return os.WriteFile(path, append(b, '\n'), 0o644)
}

// cpuRoles are the processes whose CPU time a run records, in table order.
var cpuRoles = []string{"qemu-img", "serving", "secondary"}

// cpuMedians is the median CPU time per request of each process over
// the cell's successful runs, their sum, and the median machine busy %;
// ok is false when some process has no sample.
func cpuMedians(c *bench.Cell) (per map[string]float64, total, busy float64, ok bool) {
	if c == nil {
		return nil, 0, 0, false
	}
	per = map[string]float64{}
	var busies []float64
	for _, role := range cpuRoles {
		var xs []float64
		for _, run := range c.Runs {
			if v, has := run.CPUus[role]; run.Status == "ok" && has {
				xs = append(xs, v)
			}
		}
		if len(xs) > 0 {
			per[role] = bench.Median(xs)
			total += per[role]
		}
	}
	for _, run := range c.Runs {
		if run.Status == "ok" && run.BusyPct > 0 {
			busies = append(busies, run.BusyPct)
		}
	}
	_, q := per["qemu-img"]
	_, s := per["serving"]
	return per, total, bench.Median(busies), q && s && len(busies) > 0
}

// cpuTable prints the CPU cost per request of every process and, for
// each replicated configuration, the ratio the CPU cost alone would allow.
func (r *report) cpuTable(p func(string, ...any), names, ratios []string) {
	p("\nCPU time per request (µs of user + system time, median of the runs): qemu-img + serving process (hablock export; the Primary's agent) "+
		"+ Secondary's agent = total, and the share of the machine's %d CPUs that was busy during the run:\n\n| workload |", r.Machine.NProc)
	p("%s", bench.ColumnsHeader(names))
	for _, w := range r.Workloads {
		p("| %s |", w.Label)
		for _, n := range names {
			per, total, busy, ok := cpuMedians(w.Configs[n])
			if !ok {
				p(" n/a |")
				continue
			}
			var parts []string
			for _, role := range cpuRoles {
				if v, has := per[role]; has {
					parts = append(parts, fmt.Sprintf("%.1f", v))
				}
			}
			p(" %s = **%.1f**, busy %.0f%% |", strings.Join(parts, " + "), total, busy)
		}
		p("\n")
	}
	if len(ratios) == 0 {
		return
	}
	p("\nCPU-bound ceiling: when the CPUs are the bottleneck, a configuration can reach at most " +
		"total CPU per request of standalone / its own (the same CPUs doing more work per request). " +
		"A measured ratio at or near its ceiling means the configuration is limited by CPU, not by waiting; " +
		"only less CPU per replicated write (or more CPUs) raises it. At queue depth 1 the CPUs are mostly idle, but the work is serial " +
		"(initiator, Primary, Secondary, Primary, initiator), so the latency is close to the CPU time per request and the same ceiling applies.\n\n| workload |")
	for _, rn := range ratios {
		p(" %s measured / ceiling |", rn)
	}
	p("\n|---|%s\n", strings.Repeat("---:|", len(ratios)))
	for _, w := range r.Workloads {
		p("| %s |", w.Label)
		_, base, _, baseOK := cpuMedians(w.Configs["standalone"])
		for _, rn := range ratios {
			n := strings.TrimSuffix(rn, "/standalone")
			_, total, _, ok := cpuMedians(w.Configs[n])
			if !ok || !baseOK || total == 0 {
				p(" %s / n/a |", bench.FmtRatio(w.Ratios[rn]))
				continue
			}
			p(" %s / %.2fx |", bench.FmtRatio(w.Ratios[rn]), base/total)
		}
		p("\n")
	}
}

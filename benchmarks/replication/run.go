package main

import (
	"context"
	"crypto/rand"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/hablock/hablock/benchmarks/internal/bench"
	"golang.org/x/sys/unix"
)

func (r *runner) run(ctx context.Context) (*report, error) {
	if len(r.workloads) > 0 {
		if _, err := os.Stat("/usr/bin/qemu-img"); err != nil {
			if _, err := bench.RunCmd(ctx, 10*time.Second, "qemu-img", "--version"); err != nil {
				return nil, fmt.Errorf("qemu-img not found (qemu-utils, qemu-block-extra)")
			}
		}
	}
	dir, err := os.MkdirTemp(r.o.dir, "hablock-repl-bench-")
	if err != nil {
		return nil, err
	}
	if r.o.keep {
		r.logf("keeping %s", dir)
	} else {
		defer os.RemoveAll(dir)
	}
	bin, err := bench.BuildHablock(ctx, r.o.hablockBin, r.o.repo, dir, r.log, "")
	if err != nil {
		return nil, err
	}
	rep := newReport(r)
	rep.Machine.Hablock = bench.HablockVersion(ctx, bin)

	var configs []config
	defer func() {
		for _, c := range configs {
			c.stop()
		}
	}()
	block := make([]byte, 1<<20)
	if _, err := rand.Read(block); err != nil {
		return nil, err
	}
	if len(r.workloads) > 0 {
		for _, name := range r.o.configs {
			cdir := filepath.Join(dir, name)
			if err := os.Mkdir(cdir, 0o755); err != nil {
				return nil, err
			}
			var file string
			var c config
			if name == "standalone" {
				s := &standalone{bin: bin, dir: cdir, file: filepath.Join(cdir, "export.img"), size: r.size}
				file, c = s.file, s
			} else {
				p := &pair{bin: bin, dir: cdir, res: "r" + name, protocol: name, size: r.size}
				file, c = p.backing(0), p
			}
			r.logf("pre-filling %s (%s)", file, bench.SizeLabel(r.size))
			if err := bench.Prefill(file, r.size, block); err != nil {
				return nil, err
			}
			configs = append(configs, c)
			if ctx.Err() != nil {
				return nil, ctx.Err()
			}
		}
		// Start everything, then promote every pair and wait for their
		// initial syncs (they run concurrently).
		for _, c := range configs {
			r.logf("starting %s", c.name())
			switch c := c.(type) {
			case *standalone:
				if err := c.start(ctx); err != nil {
					return nil, fmt.Errorf("starting standalone: %w", err)
				}
			case *pair:
				if err := c.setup(ctx, r.logf); err != nil {
					return nil, fmt.Errorf("setting up protocol %s: %w", c.protocol, err)
				}
				if err := c.promote(ctx); err != nil {
					return nil, fmt.Errorf("protocol %s: %w", c.protocol, err)
				}
			}
		}
		for _, c := range configs {
			if p, ok := c.(*pair); ok {
				t0 := time.Now()
				if err := p.waitHealthy(ctx, r.o.healthy+time.Duration(r.size/(50<<20))*time.Second); err != nil {
					return nil, fmt.Errorf("%w\nn1 log:\n%s\nn2 log:\n%s", err, p.agents[0].LogTail(10), p.agents[1].LogTail(10))
				}
				r.logf("  %s: Connected/UpToDate (waited %.1f s)", p.res, time.Since(t0).Seconds())
			}
			rep.Configs = append(rep.Configs, configInfo{Name: c.name(), Description: c.describe()})
		}
		if r.o.warmup {
			w := bench.Workload{Name: "warmup-w4k-qd16", Write: true, BlockSize: 4096, QueueDepth: 16, Count: 2000}
			for _, c := range configs {
				run := r.runOne(ctx, c, w, 0)
				if ctx.Err() != nil {
					return nil, ctx.Err()
				}
				rep.Warmup = append(rep.Warmup, warmupRecord{Config: c.name(), Status: run.Status, Detail: run.Detail})
				r.logf("warmup %s: %s %s", c.name(), run.Status, run.Detail)
			}
		}
		for _, w := range r.workloads {
			wr := rep.addWorkload(w)
			for i := 1; i <= r.o.reps; i++ {
				for _, c := range configs {
					run := r.runOne(ctx, c, w, i)
					if ctx.Err() != nil {
						return nil, fmt.Errorf("interrupted: %w", ctx.Err())
					}
					wr.add(c.name(), run)
					r.logf("[%s %d/%d] %-10s %s", w.Name, i, r.o.reps, c.name(), run.Summary())
				}
			}
			wr.finish()
		}
		for _, c := range configs {
			c.stop()
		}
		configs = nil
		for _, name := range r.o.configs {
			_ = os.RemoveAll(filepath.Join(dir, name)) // free the space for the sync test
		}
	}

	if r.syncSize > 0 {
		res, err := r.measureSync(ctx, bin, filepath.Join(dir, "sync"), block)
		rep.Sync = res
		if err != nil {
			rep.Sync.Error = err.Error()
			r.logf("initial sync: %v", err)
		}
		if ctx.Err() != nil {
			return nil, ctx.Err()
		}
	}
	rep.finish()
	return rep, nil
}

// runOne runs w once against c.
func (r *runner) runOne(ctx context.Context, c config, w bench.Workload, repNo int) bench.Run {
	run := bench.Run{Rep: repNo}
	if d := c.dead(); d != "" {
		run.Status, run.Detail = "down", d
		return run
	}
	if p, ok := c.(*pair); ok {
		if err := p.waitHealthy(ctx, r.o.healthy); err != nil {
			run.Status, run.Detail = "degraded", err.Error()
			return run
		}
	}
	if r.o.syncBetween {
		syscall.Sync()
	}
	srv := c.serving()
	cpu := startCPU(srv, c.secondary())
	s := bench.StartRSSSampler(srv.Pid(), r.o.rssInterval)
	res := bench.RunQemu(ctx, bench.IscsiArgv(w, c.port(), c.iqn(), 0), r.o.runTimeout)
	run.MaxRSSKiB, run.HWMKiB = s.Stop()
	cpuUS, busy := cpu.stop(res.CPU, w.Count)
	if ctx.Err() != nil {
		run.Status = "interrupted"
		return run
	}
	switch d := c.dead(); {
	case d != "":
		run.Status = "crash"
		run.Detail = fmt.Sprintf("%s; qemu-img: %s", d, bench.LastLine(res.Out))
	case res.Timeout:
		run.Status = "hang"
		run.Detail = fmt.Sprintf("no completion within %v; qemu-img: %s; status after: %s", r.o.runTimeout, bench.LastLine(res.Out), c.health(ctx))
	case res.Err != nil:
		run.Status = "error"
		run.Detail = fmt.Sprintf("%v: %s", res.Err, bench.LastLine(res.Out))
	default:
		out, err := bench.ParseBenchOutput(res.Out)
		if err == nil {
			err = out.Check(w)
		}
		if err != nil {
			run.Status, run.Detail = "error", err.Error()
			break
		}
		run.Status = "ok"
		run.Seconds = out.Seconds
		run.IOPS = bench.IOPS(w.Count, out.Seconds)
		run.MiBps = bench.MiBps(w.Count, w.BlockSize, out.Seconds)
		run.CPUus, run.BusyPct = cpuUS, busy
		if h := c.health(ctx); h != "" {
			// Measured, but the pair was not healthy right after: say so.
			run.Detail = "after the run: " + h
		}
	}
	return run
}

// syncResult is the initial-sync measurement.
type syncResult struct {
	Bytes         int64     `json:"bytes"`
	WarmupSeconds float64   `json:"warmup_copy_seconds,omitempty"` // untimed for the ratio
	CopySeconds   []float64 `json:"copy_seconds"`
	CopyMBps      *float64  `json:"copy_mb_per_s"` // median of the copies, MB = 10^6 bytes
	// SyncRuns and PhaseRuns are each round's sync time and sync-phase
	// time; SyncSeconds and PhaseSeconds their medians.
	SyncRuns       []float64 `json:"sync_seconds_each"`
	PhaseRuns      []float64 `json:"sync_phase_seconds_each"`
	SyncSeconds    float64   `json:"sync_seconds,omitempty"`
	SyncMBps       *float64  `json:"sync_mb_per_s"`
	PhaseSeconds   float64   `json:"sync_phase_seconds,omitempty"`
	PhaseMBps      *float64  `json:"sync_phase_mb_per_s"`
	Ratio          *float64  `json:"sync_over_copy"`
	PhaseRatio     *float64  `json:"sync_phase_over_copy"`
	Reconnects     int       `json:"connection_drops_seen"`
	FirstStatus    string    `json:"status_at_promotion,omitempty"`
	StatusTimeline []string  `json:"status_changes,omitempty"` // first round
	Error          string    `json:"error,omitempty"`
}

// measureSync times, of the same pre-filled file, an untimed warm-up
// copy, a raw copy, then --sync-rounds times a full initial sync of a
// fresh pair followed by a raw copy: copies and syncs alternate, so slow
// and fast phases of the machine's disk fall on both.
func (r *runner) measureSync(ctx context.Context, bin, dir string, block []byte) (*syncResult, error) {
	res := &syncResult{Bytes: r.syncSize}
	if err := os.Mkdir(dir, 0o755); err != nil {
		return res, err
	}
	src := (&pair{dir: dir}).backing(0)
	r.logf("initial sync: pre-filling %s (%s)", src, bench.SizeLabel(r.syncSize))
	if err := bench.Prefill(src, r.syncSize, block); err != nil {
		return res, err
	}
	copyOnce := func(warmup bool) error {
		dst := filepath.Join(dir, "copy.img")
		if err := dropCache(src); err != nil {
			return err
		}
		syscall.Sync()
		t0 := time.Now()
		if err := copyFile(src, dst); err != nil {
			return err
		}
		s := time.Since(t0).Seconds()
		what := "raw copy"
		if warmup {
			res.WarmupSeconds, what = s, "warm-up raw copy (not counted)"
		} else {
			res.CopySeconds = append(res.CopySeconds, s)
		}
		r.logf("initial sync: %s %s in %.2f s (%.0f MB/s)", what, bench.SizeLabel(r.syncSize), s, float64(r.syncSize)/s/1e6)
		_ = dropCache(dst)
		return os.Remove(dst)
	}
	// The first read of the freshly written file is measurably slower on
	// this kind of VM (its virtual disk is cached by the host once read),
	// which would flatter the sync: a warm-up copy first, not counted.
	if err := copyOnce(true); err != nil {
		return res, err
	}
	if err := copyOnce(false); err != nil {
		return res, err
	}
	for round := 1; round <= r.o.syncRounds; round++ {
		p := &pair{bin: bin, dir: dir, res: "rsync", protocol: "C", size: r.syncSize}
		secs, phase, err := r.syncOnce(ctx, p, res, round)
		p.stop()
		// The next round starts from fresh metadata and an empty n2.
		for _, f := range []string{p.backing(1), filepath.Join(dir, "n1-meta"), filepath.Join(dir, "n2-meta")} {
			_ = os.RemoveAll(f)
		}
		if err != nil {
			res.compute()
			return res, err
		}
		res.SyncRuns = append(res.SyncRuns, secs)
		res.PhaseRuns = append(res.PhaseRuns, phase)
		if err := copyOnce(false); err != nil {
			return res, err
		}
	}
	res.compute()
	return res, nil
}

// syncOnce sets up the pair p (n1's backing file already holds the data),
// promotes n1 with --force and times the full sync to n2; the first
// round records n1's status changes in res.
func (r *runner) syncOnce(ctx context.Context, p *pair, res *syncResult, round int) (secs, phase float64, err error) {
	first := round == 1
	src := p.backing(0)
	if err := p.setup(ctx, r.logf); err != nil {
		return 0, 0, err
	}
	// Both agents connected before the clock starts.
	deadline := time.Now().Add(r.o.healthy)
	last := ""
	for {
		st, err := getStatus(ctx, p.socket(0))
		if err == nil && st.Connection == "Connected" {
			last = st.String()
			if first {
				res.StatusTimeline = append(res.StatusTimeline, "before: "+last)
			}
			break
		}
		if d := p.dead(); d != "" {
			return 0, 0, fmt.Errorf("%s", d)
		}
		if time.Now().After(deadline) {
			return 0, 0, fmt.Errorf("sync pair not Connected after %v: %v %v", r.o.healthy, st, err)
		}
		time.Sleep(50 * time.Millisecond)
	}
	if err := dropCache(src); err != nil {
		return 0, 0, err
	}
	syscall.Sync()
	t0 := time.Now()
	if err := p.promote(ctx); err != nil {
		return 0, 0, err
	}
	var tPhase time.Time
	timeout := time.Now().Add(r.o.syncTimeout)
	for {
		st, err := getStatus(ctx, p.socket(0))
		now := time.Now()
		if err == nil {
			line := st.String()
			if first && res.FirstStatus == "" {
				res.FirstStatus = line
			}
			if line != last && (st.Connection != lastField(last, "connection:") || st.Replication != lastField(last, "replication:")) {
				if first {
					res.StatusTimeline = append(res.StatusTimeline, fmt.Sprintf("+%.2fs %s", now.Sub(t0).Seconds(), line))
				}
				if lastField(last, "connection:") == "Connected" && st.Connection != "Connected" {
					res.Reconnects++
				}
			}
			last = line
			if tPhase.IsZero() && st.syncing() {
				tPhase = now
			}
			if st.unhealthy() == "" {
				secs = now.Sub(t0).Seconds()
				if !tPhase.IsZero() {
					phase = now.Sub(tPhase).Seconds()
				}
				break
			}
		}
		if d := p.dead(); d != "" {
			return 0, 0, fmt.Errorf("during the sync: %s", d)
		}
		if now.After(timeout) {
			return 0, 0, fmt.Errorf("sync not done after %v; last status: %s", r.o.syncTimeout, last)
		}
		if ctx.Err() != nil {
			return 0, 0, ctx.Err()
		}
		time.Sleep(50 * time.Millisecond)
	}
	r.logf("initial sync %d: %s in %.2f s (%.0f MB/s; sync phase %.2f s)", round, bench.SizeLabel(r.syncSize), secs,
		float64(r.syncSize)/secs/1e6, phase)
	return secs, phase, nil
}

// lastField extracts "key:VALUE" from a status line ("" when absent).
func lastField(line, key string) string {
	for _, f := range strings.Fields(line) {
		if v, ok := strings.CutPrefix(f, key); ok {
			return v
		}
	}
	return ""
}

// compute fills the rates (MB = 10^6 bytes) and ratios.
func (s *syncResult) compute() {
	if len(s.CopySeconds) > 0 {
		s.CopyMBps = bench.Num(float64(s.Bytes) / bench.Median(s.CopySeconds) / 1e6)
	}
	if len(s.SyncRuns) > 0 {
		s.SyncSeconds = bench.Median(s.SyncRuns)
	}
	if len(s.PhaseRuns) > 0 {
		s.PhaseSeconds = bench.Median(s.PhaseRuns)
	}
	if s.SyncSeconds > 0 {
		s.SyncMBps = bench.Num(float64(s.Bytes) / s.SyncSeconds / 1e6)
	}
	if s.PhaseSeconds > 0 {
		s.PhaseMBps = bench.Num(float64(s.Bytes) / s.PhaseSeconds / 1e6)
	}
	if s.CopyMBps != nil && s.SyncMBps != nil {
		s.Ratio = bench.Num(bench.Ratio(*s.SyncMBps, *s.CopyMBps))
	}
	if s.CopyMBps != nil && s.PhaseMBps != nil {
		s.PhaseRatio = bench.Num(bench.Ratio(*s.PhaseMBps, *s.CopyMBps))
	}
}

// copyFile copies src to a new dst and fdatasyncs it.
func copyFile(src, dst string) error {
	in, err := os.Open(src)
	if err != nil {
		return err
	}
	defer in.Close()
	out, err := os.OpenFile(dst, os.O_CREATE|os.O_TRUNC|os.O_WRONLY, 0o644)
	if err != nil {
		return err
	}
	buf := make([]byte, 1<<20)
	if _, err := io.CopyBuffer(struct{ io.Writer }{out}, struct{ io.Reader }{in}, buf); err != nil {
		out.Close()
		return err
	}
	if err := unix.Fdatasync(int(out.Fd())); err != nil {
		out.Close()
		return err
	}
	return out.Close()
}

// dropCache evicts path's clean pages from the page cache.
func dropCache(path string) error {
	f, err := os.Open(path)
	if err != nil {
		return err
	}
	defer f.Close()
	if err := unix.Fdatasync(int(f.Fd())); err != nil {
		return err
	}
	return unix.Fadvise(int(f.Fd()), 0, 0, unix.FADV_DONTNEED)
}

// cpuSample is the CPU time of the processes of one run, taken before it
// (see startCPU) to be subtracted after it.
type cpuSample struct {
	procs map[string]*bench.Server
	start map[string]time.Duration
	busy  time.Duration
	total time.Duration
}

// startCPU samples the CPU time used so far by the serving process, the
// secondary (if any) and the whole machine.
func startCPU(serving, secondary *bench.Server) *cpuSample {
	c := &cpuSample{procs: map[string]*bench.Server{"serving": serving}, start: map[string]time.Duration{}}
	if secondary != nil {
		c.procs["secondary"] = secondary
	}
	for role, p := range c.procs {
		if t, err := bench.ProcCPU(p.Pid()); err == nil {
			c.start[role] = t
		}
	}
	c.busy, c.total, _ = bench.MachineCPU()
	return c
}

// stop returns the CPU time per request (µs) of each process since
// startCPU, qemu-img's (qemuCPU, from its rusage) included, and the
// machine's busy share (%). A process whose time could not be read is
// left out.
func (c *cpuSample) stop(qemuCPU time.Duration, count int) (map[string]float64, float64) {
	perReq := func(d time.Duration) float64 { return float64(d.Microseconds()) / float64(count) }
	us := map[string]float64{}
	if qemuCPU > 0 {
		us["qemu-img"] = perReq(qemuCPU)
	}
	for role, p := range c.procs {
		t0, ok := c.start[role]
		if !ok {
			continue
		}
		if t, err := bench.ProcCPU(p.Pid()); err == nil {
			us[role] = perReq(t - t0)
		}
	}
	var pct float64
	if busy, total, err := bench.MachineCPU(); err == nil && total > c.total {
		pct = 100 * float64(busy-c.busy) / float64(total-c.total)
	}
	return us, pct
}

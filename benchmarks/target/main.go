// Command target benchmarks hablock's iSCSI target against the raw file,
// tgt and gotgt with qemu-img bench, in one run, alternating targets.
//
//	go run ./benchmarks/target [flags]
//
// Run with --help for what is measured and how.
package main

import (
	benchpkg "github.com/hablock/hablock/benchmarks/internal/bench"
	"github.com/hablock/hablock/internal/units"

	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"time"

	"github.com/spf13/pflag"
)

const helpText = `target: compare hablock's iSCSI target with tgt, gotgt and the raw file.

Usage:
  go run ./benchmarks/target [flags]          (as root, from the module root)

What runs
  raw      the backing file itself, opened by qemu-img with O_DIRECT and Linux
           native AIO (-f raw -t none -i native): the ceiling of the disk.
  tgt      Debian's tgtd on 127.0.0.1:<free port> with its own control port
           (-C N, random, never 7) configured with tgtadm: one target, LUN 1
           backed by the file (tgt's LUN 0 is its controller), bind -I ALL.
  gotgt    github.com/gostor/gotgt v0.2.2, the reference Go target, embedded in
           this binary and started as a child process (--gotgt-serve) in its
           own network namespace that has only lo, because gotgt v0.2.2 can only
           listen on the wildcard address; qemu-img reaches it on 127.0.0.1
           through nsenter --net. File backing store, LUN 0.
  hablock  'hablock export --backing FILE --size SIZE --listen 127.0.0.1:PORT
           --iqn IQN --lun 0', built from ./cmd/hablock (or --hablock-bin).

Every target gets its own backing file of --size bytes in one temporary
directory, pre-filled with the same pseudo-random data and fdatasync'ed
before any target starts, so no run pays first-write allocation costs and
reads return written data (the read workloads read the first count x 4 KiB of
that data on every target).

Workloads (qemu-img bench; offsets start at 0 and step by the request size,
wrapping at the end of the device)
  w4k-qd1   4 KiB writes, queue depth 1      r4k-qd1   4 KiB reads, qd 1
  w4k-qd16  4 KiB writes, queue depth 16     r4k-qd16  4 KiB reads, qd 16
  w1m-qd4   1 MiB writes, queue depth 4
iSCSI targets are opened with --image-opts driver=iscsi,... and -t none
(qemu's iscsi driver then sends no flushes, like the raw run). Each workload
runs --reps times over all targets in turn (A B C D A B C D ...); a sync(2)
runs, untimed, between runs so one target's dirty page cache is not written
back during the next target's run. IOPS = count / the "Run completed in X
seconds" qemu-img prints (I/O loop only, not login); MiB/s = IOPS x size.
The table shows the median of the reps and the ratios of medians
hablock/tgt, hablock/gotgt and hablock/raw, all from this one run. Absolute
numbers drift between runs on shared machines; the ratios are the result.

Every qemu-img run has a hard timeout (--run-timeout). A run that times out
is reported as "hang", one during which the target process died as "crash";
the target is then restarted for the next run. Medians use successful runs.

The resident memory of each target's process is sampled from
/proc/PID/status (VmRSS every --rss-interval, VmHWM at the end of each run);
the report shows the peaks per workload and checks hablock's against the
issue's 64 MiB bound for the qd16 runs, with the issue's throughput criteria.

Output: progress on stderr, the Markdown report on stdout and in --markdown,
the same data as JSON in --json. Temporary files and every process started
are removed on exit and on SIGINT/SIGTERM. Needs root (network namespace,
tgtd), qemu-img with the iscsi driver (qemu-block-extra), tgt, nsenter, ip.

Flags:
`

type options struct {
	targets     []string
	workloads   []string
	reps        int
	counts      map[string]int
	scale       float64
	size        string
	dir         string
	runTimeout  time.Duration
	rssInterval time.Duration
	warmup      bool
	syncBetween bool
	jsonPath    string
	mdPath      string
	hablockBin  string
	repo        string
	keep        bool
	render      string

	gotgtServe     bool
	gotgtBacking   string
	gotgtIQN       string
	gotgtPort      int
	gotgtReadyFile string
}

var allTargets = []string{"raw", "tgt", "gotgt", "hablock"}

func main() {
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
}

func run(args []string, stdout, stderr io.Writer) int {
	var o options
	fs := pflag.NewFlagSet("target", pflag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() {
		fmt.Fprint(stdout, helpText)
		fs.SetOutput(stdout)
		fs.PrintDefaults()
		fs.SetOutput(stderr)
	}
	var wlNames []string
	for _, w := range defaultWorkloads() {
		wlNames = append(wlNames, w.Name)
	}
	fs.StringSliceVar(&o.targets, "targets", allTargets, "targets to run, in this order (raw,tgt,gotgt,hablock)")
	fs.StringSliceVar(&o.workloads, "workloads", wlNames, "workloads to run, in this order")
	fs.IntVar(&o.reps, "reps", 3, "repetitions of each workload on each target (median reported)")
	fs.StringToIntVar(&o.counts, "count", nil, "override a workload's request count (-c), e.g. --count w4k-qd16=120000")
	fs.Float64Var(&o.scale, "scale", 1, "multiply every request count (e.g. 0.1 for a quick smoke run)")
	fs.StringVar(&o.size, "size", "1G", "size of each target's backing file")
	fs.StringVar(&o.dir, "dir", "", "parent of the temporary directory (default $TMPDIR); all backing files live there")
	fs.DurationVar(&o.runTimeout, "run-timeout", 30*time.Second, "kill a qemu-img run after this long and report a hang")
	fs.DurationVar(&o.rssInterval, "rss-interval", 50*time.Millisecond, "VmRSS sampling period")
	fs.BoolVar(&o.warmup, "warmup", true, "one short untimed write+read run per target before measuring")
	fs.BoolVar(&o.syncBetween, "sync-between", true, "sync(2) between runs (untimed)")
	fs.StringVar(&o.jsonPath, "json", "benchmarks/results.json", "write results as JSON here (empty: don't)")
	fs.StringVar(&o.mdPath, "markdown", "", "also write the Markdown report here")
	fs.StringVar(&o.hablockBin, "hablock-bin", "", "use this hablock binary instead of building ./cmd/hablock")
	fs.StringVar(&o.repo, "repo", "", "module root to build ./cmd/hablock in (default: from go env GOMOD)")
	fs.BoolVar(&o.keep, "keep", false, "keep the temporary directory (backing files, target logs)")
	fs.StringVar(&o.render, "render", "", "run nothing: print (and with --markdown write) the Markdown report of a JSON file written earlier")

	fs.BoolVar(&o.gotgtServe, "gotgt-serve", false, "internal: run the embedded gotgt target")
	fs.StringVar(&o.gotgtBacking, "gotgt-backing", "", "internal: gotgt backing file")
	fs.StringVar(&o.gotgtIQN, "gotgt-iqn", "", "internal: gotgt target IQN")
	fs.IntVar(&o.gotgtPort, "gotgt-port", 3260, "internal: gotgt port")
	fs.StringVar(&o.gotgtReadyFile, "gotgt-ready-file", "", "internal: file written once gotgt listens")
	for _, n := range []string{"gotgt-serve", "gotgt-backing", "gotgt-iqn", "gotgt-port", "gotgt-ready-file"} {
		_ = fs.MarkHidden(n)
	}

	if err := fs.Parse(args); err != nil {
		if errors.Is(err, pflag.ErrHelp) {
			return 0
		}
		fmt.Fprintf(stderr, "target: %v\n", err)
		return 2
	}
	if o.gotgtServe {
		if err := gotgtServe(o.gotgtBacking, o.gotgtIQN, o.gotgtPort, o.gotgtReadyFile); err != nil {
			fmt.Fprintf(stderr, "gotgt helper: %v\n", err)
			return 1
		}
		return 0
	}

	if o.render != "" {
		rep, err := loadReport(o.render)
		if err != nil {
			fmt.Fprintf(stderr, "target: %v\n", err)
			return 1
		}
		md := rep.markdown()
		fmt.Fprint(stdout, md)
		if o.mdPath != "" {
			if err := os.WriteFile(o.mdPath, []byte(md), 0o644); err != nil {
				fmt.Fprintf(stderr, "target: %v\n", err)
				return 1
			}
		}
		return 0
	}

	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	b, err := newBench(o, args, stderr)
	if err != nil {
		fmt.Fprintf(stderr, "target: %v\n", err)
		return 2
	}
	rep, err := b.run(ctx)
	if err != nil {
		fmt.Fprintf(stderr, "target: %v\n", err)
		if ctx.Err() != nil {
			return 130
		}
		return 1
	}
	md := rep.markdown()
	fmt.Fprint(stdout, md)
	if o.mdPath != "" {
		if err := os.WriteFile(o.mdPath, []byte(md), 0o644); err != nil {
			fmt.Fprintf(stderr, "target: %v\n", err)
			return 1
		}
	}
	if o.jsonPath != "" {
		if err := rep.writeJSON(o.jsonPath); err != nil {
			fmt.Fprintf(stderr, "target: %v\n", err)
			return 1
		}
		fmt.Fprintf(stderr, "wrote %s\n", o.jsonPath)
	}
	return 0
}

// bench is one benchmark run.
type bench struct {
	o         options
	args      []string
	log       io.Writer
	size      int64
	workloads []workload
}

func newBench(o options, args []string, log io.Writer) (*bench, error) {
	b := &bench{o: o, args: args, log: log}
	for _, t := range o.targets {
		if !slices.Contains(allTargets, t) {
			return nil, fmt.Errorf("unknown target %q (want some of %s)", t, strings.Join(allTargets, ","))
		}
	}
	if len(o.targets) == 0 {
		return nil, fmt.Errorf("no targets")
	}
	if o.reps < 1 {
		return nil, fmt.Errorf("--reps must be at least 1")
	}
	if o.scale <= 0 {
		return nil, fmt.Errorf("--scale must be positive")
	}
	var err error
	if b.size, err = units.ParseSize(o.size); err != nil {
		return nil, err
	}
	if b.size%(1<<20) != 0 {
		return nil, fmt.Errorf("--size must be a multiple of 1 MiB")
	}
	defs := map[string]workload{}
	for _, w := range defaultWorkloads() {
		defs[w.Name] = w
	}
	for name := range o.counts {
		if _, ok := defs[name]; !ok {
			return nil, fmt.Errorf("--count: unknown workload %q", name)
		}
	}
	for _, name := range o.workloads {
		w, ok := defs[name]
		if !ok {
			return nil, fmt.Errorf("unknown workload %q", name)
		}
		if c, ok := o.counts[name]; ok {
			w.Count = c
		}
		w.Count = int(float64(w.Count) * o.scale)
		if w.Count < 1 {
			return nil, fmt.Errorf("workload %s: count %d", name, w.Count)
		}
		if !w.Write && int64(w.Count)*int64(w.BlockSize) > b.size {
			fmt.Fprintf(log, "note: %s reads %s, more than --size %s: it wraps and rereads\n",
				name, sizeLabel(int64(w.Count)*int64(w.BlockSize)), o.size)
		}
		b.workloads = append(b.workloads, w)
	}
	if len(b.workloads) == 0 {
		return nil, fmt.Errorf("no workloads")
	}
	// Fail now, not after the run, if a report cannot be written.
	for _, p := range []string{o.jsonPath, o.mdPath} {
		if p == "" {
			continue
		}
		if st, err := os.Stat(filepath.Dir(p)); err != nil || !st.IsDir() {
			return nil, fmt.Errorf("cannot write %s: directory %s missing (run from the module root or pass --json/--markdown)", p, filepath.Dir(p))
		}
	}
	return b, nil
}

func (b *bench) logf(format string, a ...any) {
	fmt.Fprintf(b.log, format+"\n", a...)
}

// preflight checks the tools the chosen targets need.
func (b *bench) preflight() error {
	need := []string{"qemu-img"}
	has := func(t string) bool { return slices.Contains(b.o.targets, t) }
	if has("tgt") {
		need = append(need, "tgtd", "tgtadm")
	}
	if has("gotgt") {
		need = append(need, "nsenter", "ip")
	}
	for _, n := range need {
		if _, err := exec.LookPath(n); err != nil {
			return fmt.Errorf("%s not found in PATH (see /work/shared/docs/testbed.md for packages)", n)
		}
	}
	if (has("tgt") || has("gotgt")) && os.Geteuid() != 0 {
		return fmt.Errorf("tgt and gotgt need root (tgtd; a network namespace for gotgt)")
	}
	return nil
}

// buildHablock returns the hablock binary to run, building it if needed.
func (b *bench) buildHablock(ctx context.Context, dir string) (string, error) {
	return benchpkg.BuildHablock(ctx, b.o.hablockBin, b.o.repo, dir, b.log, "(run with --targets raw,tgt,gotgt to leave hablock out)")
}

func (b *bench) run(ctx context.Context) (*report, error) {
	if err := b.preflight(); err != nil {
		return nil, err
	}
	dir, err := os.MkdirTemp(b.o.dir, "hablock-bench-")
	if err != nil {
		return nil, err
	}
	if b.o.keep {
		b.logf("keeping %s", dir)
	} else {
		defer os.RemoveAll(dir)
	}
	self, err := os.Executable()
	if err != nil {
		return nil, err
	}

	rep := newReport(b)
	const iqnPrefix = "iqn.2026-01.io.hablock.bench:"
	var targets []target
	defer func() {
		for _, t := range targets {
			t.stop()
		}
	}()
	for _, name := range b.o.targets {
		file := filepath.Join(dir, name+".img")
		var t target
		switch name {
		case "raw":
			t = &rawTarget{file: file}
		case "tgt":
			t = &tgtTarget{file: file, dir: dir, iqn: iqnPrefix + "tgt"}
		case "gotgt":
			t = &gotgtTarget{self: self, file: file, dir: dir, iqn: iqnPrefix + "gotgt"}
		case "hablock":
			bin, err := b.buildHablock(ctx, dir)
			if err != nil {
				return nil, err
			}
			rep.Machine.Hablock = hablockVersion(ctx, bin)
			t = &hablockTarget{bin: bin, file: file, dir: dir, iqn: iqnPrefix + "hablock", size: b.size}
		}
		targets = append(targets, t)
	}

	block := make([]byte, 1<<20)
	if _, err := rand.Read(block); err != nil {
		return nil, err
	}
	for _, t := range targets {
		file := filepath.Join(dir, t.name()+".img")
		b.logf("pre-filling %s (%s)", file, sizeLabel(b.size))
		if err := prefill(file, b.size, block); err != nil {
			return nil, err
		}
		if ctx.Err() != nil {
			return nil, ctx.Err()
		}
	}
	for _, t := range targets {
		b.logf("starting %s", t.name())
		if err := t.start(ctx); err != nil {
			return nil, fmt.Errorf("starting %s: %w", t.name(), err)
		}
		b.logf("  %s", t.describe())
		rep.addTarget(t)
	}

	if b.o.warmup {
		for _, t := range targets {
			for _, w := range []workload{
				{Name: "warmup-w4k-qd16", Write: true, BlockSize: 4096, QueueDepth: 16, Count: 2000},
				{Name: "warmup-r4k-qd16", Write: false, BlockSize: 4096, QueueDepth: 16, Count: 2000},
			} {
				r := b.runOne(ctx, rep, t, w, 0)
				if ctx.Err() != nil {
					return nil, ctx.Err()
				}
				rep.Warmup = append(rep.Warmup, warmupRecord{Target: t.name(), Workload: w.Name, Status: r.Status, Detail: r.Detail})
				b.logf("warmup %s %s: %s %s", t.name(), w.Name, r.Status, r.Detail)
			}
		}
	}

	for _, w := range b.workloads {
		wr := rep.addWorkload(w)
		for i := 1; i <= b.o.reps; i++ {
			for _, t := range targets {
				r := b.runOne(ctx, rep, t, w, i)
				if ctx.Err() != nil {
					return nil, fmt.Errorf("interrupted: %w", ctx.Err())
				}
				wr.add(t.name(), r)
				b.logf("[%s %d/%d] %-7s %s", w.Name, i, b.o.reps, t.name(), r.Summary())
			}
		}
		wr.finish()
	}
	rep.finish()
	return rep, nil
}

// runOne runs w once on t, restarting t first if its process is gone.
func (b *bench) runOne(ctx context.Context, rep *report, t target, w workload, repNo int) runRecord {
	r := runRecord{Rep: repNo}
	if p := t.proc(); p != nil {
		if done, how := p.Exited(); done {
			b.logf("%s is not running (%s); restarting", t.name(), how)
			if err := b.restart(ctx, rep, t); err != nil {
				r.Status, r.Detail = "down", err.Error()
				return r
			}
		}
	}
	if b.o.syncBetween {
		syscall.Sync()
	}
	var pid int
	if p := t.proc(); p != nil {
		pid = p.Pid()
	}
	s := startRSSSampler(pid, b.o.rssInterval)
	res := runQemu(ctx, t.argv(w), b.o.runTimeout)
	r.MaxRSSKiB, r.HWMKiB = s.Stop()
	if ctx.Err() != nil {
		r.Status = "interrupted"
		return r
	}
	crashed := false
	how := ""
	if p := t.proc(); p != nil {
		crashed, how = p.Exited()
	}
	switch {
	case crashed:
		r.Status = "crash"
		r.Detail = fmt.Sprintf("target process died (%s); qemu-img: %s; target log: %s",
			how, lastLine(res.Out), lastLine(t.proc().LogTail(3)))
	case res.Timeout:
		r.Status = "hang"
		r.Detail = fmt.Sprintf("no completion within %v; qemu-img: %s", b.o.runTimeout, lastLine(res.Out))
		if t.proc() != nil {
			b.logf("%s hung; restarting it", t.name())
		}
		if err := b.restart(ctx, rep, t); err != nil {
			r.Detail += "; restart failed: " + err.Error()
		}
	case res.Err != nil:
		r.Status = "error"
		r.Detail = fmt.Sprintf("%v: %s", res.Err, lastLine(res.Out))
	default:
		out, err := parseBenchOutput(res.Out)
		if err == nil {
			err = out.Check(w)
		}
		if err != nil {
			r.Status, r.Detail = "error", err.Error()
			break
		}
		r.Status = "ok"
		r.Seconds = out.Seconds
		r.IOPS = iops(w.Count, out.Seconds)
		r.MiBps = mibps(w.Count, w.BlockSize, out.Seconds)
	}
	return r
}

// restart stops and starts t's process (no-op for the raw file).
func (b *bench) restart(ctx context.Context, rep *report, t target) error {
	if t.proc() == nil {
		return nil
	}
	t.stop()
	err := t.start(ctx)
	rep.noteRestart(t)
	return err
}

// Command replication benchmarks hablock's replicated resource (two
// hablock agents on 127.0.0.1, protocols C, B and A) against the same
// target standalone (hablock export) with qemu-img bench, and times a full
// initial sync against a raw file copy, in one run.
//
//	go run ./benchmarks/replication [flags]
//
// Run with --help for what is measured and how.
package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"time"

	"github.com/hablock/hablock/benchmarks/internal/bench"
	"github.com/hablock/hablock/internal/units"
	"github.com/spf13/pflag"
)

const helpText = `replication: the cost of replication, measured through the iSCSI target.

Usage:
  go run ./benchmarks/replication [flags]          (from the module root)

What runs (everything on 127.0.0.1; each configuration has its own backing
files, metadata and admin sockets in one temporary directory)
  standalone  'hablock export --backing FILE --size SIZE --listen 127.0.0.1:PORT
              --iqn IQN --lun 0': the same iSCSI target without replication,
              the baseline.
  C, B, A     a two-node replicated resource per protocol: a resource file
              with both nodes on 127.0.0.1 (different ports, backing files,
              meta-dirs and admin sockets; net { resync-rate unlimited }),
              'hablock create-md' on n1 (random UUID) and on n2 (--uuid of n1),
              'hablock agent --config FILE --node n1' and '... --node n2',
              then 'hablock primary --force' on n1 (a fresh pair; n1's
              pre-filled data wins) and a wait until n1's status shows
              connection Connected, disk and peer-disk UpToDate, nothing out of
              sync. qemu-img then writes through n1's iSCSI target.

Every backing file of --size bytes is pre-filled with the same pseudo-random
data (n2's is filled by the initial sync) and fdatasync'ed before measuring.

Workloads (qemu-img bench -w ... -t none --image-opts driver=iscsi,...)
  w4k-qd16  4 KiB writes, queue depth 16
  w4k-qd1   4 KiB writes, queue depth 1 (latency = 1/IOPS, in µs)
  w1m-qd4   1 MiB writes, queue depth 4
Each workload runs --reps times over all configurations in turn (standalone C
B A standalone C B A ...); sync(2) runs, untimed, between runs. Before each run
on a replicated configuration its status must be Connected/UpToDate (waited
for up to --healthy-timeout; else the run is reported "degraded" and skipped);
a run after which it is not is reported too. IOPS = count / qemu-img's "Run
completed in X seconds"; the table shows medians and the ratios
C|B|A / standalone from this run. An agent or target that dies is reported
("crash") and not restarted.

Initial sync (--sync-size, default 4G; 0 skips it)
  A separate pair (protocol C) whose n1 backing file is pre-filled with random
  data. raw copy: a read/write loop (1 MiB buffers; no copy_file_range, so
  no reflink shortcut) of that file to a new file in the same directory,
  then fdatasync; an untimed warm-up copy first (the first read of a freshly
  written file is slower on VMs whose disk the host caches), then timed once
  before the first sync and once after each, the page cache of the source
  dropped (fadvise DONTNEED) before each; --sync-rounds syncs (default 3),
  each on a fresh pair (new metadata, empty n2), alternate with the copies.
  The criterion compares the median sync time with the median copy time. sync: n1 and n2 agents started and Connected, the
  source's page cache dropped, then 'hablock primary --force' on n1; the
  clock runs from that command until n1's status (the admin socket's GET
  /v1/status, polled every 50 ms) shows peer-disk UpToDate and nothing out of
  sync (the target's disk is flushed before it is declared UpToDate, as the
  copy's fdatasync). MB/s = size / time. The sync phase alone (first poll that shows a
  sync under way to done) is reported too. Criterion: sync >= 0.80 x copy.

Criteria of the issue, evaluated on this run:
  protocol C >= 0.85 x standalone on 4 KiB qd16 writes (IOPS);
  protocol C qd1 write latency <= 1.5 x standalone;
  protocol C >= 0.85 x standalone on 1 MiB qd4 writes;
  full initial sync >= 0.80 x the raw copy speed; A and B reported.

Output: progress on stderr, the Markdown report on stdout and in --markdown,
the same data as JSON in --json, and the report appended to --results
(benchmarks/RESULTS.md) as a section headed with the run's date. Every process started and the temporary
directory are removed on exit and on SIGINT/SIGTERM. Needs qemu-img with the
iscsi driver (qemu-block-extra).

Flags:
`

type options struct {
	configs     []string
	workloads   []string
	reps        int
	counts      map[string]int
	scale       float64
	size        string
	syncSize    string
	dir         string
	runTimeout  time.Duration
	healthy     time.Duration
	syncTimeout time.Duration
	syncRounds  int
	rssInterval time.Duration
	warmup      bool
	syncBetween bool
	jsonPath    string
	mdPath      string
	resultsPath string
	hablockBin  string
	repo        string
	keep        bool
}

var allConfigs = []string{"standalone", "C", "B", "A"}

// defaultWorkloads are the three write workloads. Counts aim at
// 1-4 s per run on the 2-core testbed.
func defaultWorkloads() []bench.Workload {
	return []bench.Workload{
		{Name: "w4k-qd16", Write: true, BlockSize: 4096, QueueDepth: 16, Count: 40000},
		{Name: "w4k-qd1", Write: true, BlockSize: 4096, QueueDepth: 1, Count: 8000},
		{Name: "w1m-qd4", Write: true, BlockSize: 1 << 20, QueueDepth: 4, Count: 1000},
	}
}

func main() {
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
}

func run(args []string, stdout, stderr io.Writer) int {
	var o options
	fs := pflag.NewFlagSet("replication", pflag.ContinueOnError)
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
	fs.StringSliceVar(&o.configs, "configs", allConfigs, "configurations to run, in this order (standalone,C,B,A)")
	fs.StringSliceVar(&o.workloads, "workloads", wlNames, "workloads to run, in this order")
	fs.IntVar(&o.reps, "reps", 3, "repetitions of each workload on each configuration (median reported)")
	fs.StringToIntVar(&o.counts, "count", nil, "override a workload's request count (-c), e.g. --count w4k-qd16=80000")
	fs.Float64Var(&o.scale, "scale", 1, "multiply every request count (e.g. 0.1 for a quick smoke run)")
	fs.StringVar(&o.size, "size", "1G", "volume size of each benchmarked configuration")
	fs.StringVar(&o.syncSize, "sync-size", "4G", "volume size of the initial-sync measurement (0: skip it)")
	fs.StringVar(&o.dir, "dir", "", "parent of the temporary directory (default $TMPDIR); all files live there")
	fs.DurationVar(&o.runTimeout, "run-timeout", 60*time.Second, "kill a qemu-img run after this long and report a hang")
	fs.DurationVar(&o.healthy, "healthy-timeout", 60*time.Second, "how long to wait for a pair to be Connected/UpToDate (initially and before each run)")
	fs.DurationVar(&o.syncTimeout, "sync-timeout", 10*time.Minute, "give up on the timed initial sync after this long")
	fs.IntVar(&o.syncRounds, "sync-rounds", 3, "initial syncs to time (each on a fresh pair, each followed by a raw copy); the medians are compared")
	fs.DurationVar(&o.rssInterval, "rss-interval", 50*time.Millisecond, "VmRSS sampling period of the serving process")
	fs.BoolVar(&o.warmup, "warmup", true, "one short untimed write run per configuration before measuring")
	fs.BoolVar(&o.syncBetween, "sync-between", true, "sync(2) between runs (untimed)")
	fs.StringVar(&o.jsonPath, "json", "benchmarks/replication/results.json", "write results as JSON here (empty: don't)")
	fs.StringVar(&o.mdPath, "markdown", "", "also write the Markdown report here")
	fs.StringVar(&o.resultsPath, "results", "benchmarks/RESULTS.md", "append the report as a dated section to this file (empty: don't)")
	fs.StringVar(&o.hablockBin, "hablock-bin", "", "use this hablock binary instead of building ./cmd/hablock")
	fs.StringVar(&o.repo, "repo", "", "module root to build ./cmd/hablock in (default: from go env GOMOD)")
	fs.BoolVar(&o.keep, "keep", false, "keep the temporary directory (backing files, logs)")
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, pflag.ErrHelp) {
			return 0
		}
		fmt.Fprintf(stderr, "replication: %v\n", err)
		return 2
	}
	b, err := newRunner(o, args, stderr)
	if err != nil {
		fmt.Fprintf(stderr, "replication: %v\n", err)
		return 2
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	rep, err := b.run(ctx)
	if err != nil {
		fmt.Fprintf(stderr, "replication: %v\n", err)
		if ctx.Err() != nil {
			return 130
		}
		if rep == nil {
			return 1
		}
	}
	md := rep.markdown()
	fmt.Fprint(stdout, md)
	if o.mdPath != "" {
		if err := os.WriteFile(o.mdPath, []byte(md), 0o644); err != nil {
			fmt.Fprintf(stderr, "replication: %v\n", err)
			return 1
		}
	}
	if o.resultsPath != "" {
		if err := appendResults(o.resultsPath, rep.section()); err != nil {
			fmt.Fprintf(stderr, "replication: %v\n", err)
			return 1
		}
		fmt.Fprintf(stderr, "appended to %s\n", o.resultsPath)
	}
	if o.jsonPath != "" {
		if err := rep.writeJSON(o.jsonPath); err != nil {
			fmt.Fprintf(stderr, "replication: %v\n", err)
			return 1
		}
		fmt.Fprintf(stderr, "wrote %s\n", o.jsonPath)
	}
	if err != nil {
		return 1
	}
	return 0
}

type runner struct {
	o         options
	args      []string
	log       io.Writer
	size      int64
	syncSize  int64
	workloads []bench.Workload
}

func newRunner(o options, args []string, log io.Writer) (*runner, error) {
	r := &runner{o: o, args: args, log: log}
	for _, c := range o.configs {
		if !slices.Contains(allConfigs, c) {
			return nil, fmt.Errorf("unknown configuration %q (want some of %s)", c, strings.Join(allConfigs, ","))
		}
	}
	if o.reps < 1 {
		return nil, fmt.Errorf("--reps must be at least 1")
	}
	if o.scale <= 0 {
		return nil, fmt.Errorf("--scale must be positive")
	}
	var err error
	if r.size, err = units.ParseSize(o.size); err != nil {
		return nil, fmt.Errorf("--size: %w", err)
	}
	if r.size <= 0 || r.size%(1<<20) != 0 {
		return nil, fmt.Errorf("--size must be a positive multiple of 1 MiB")
	}
	if o.syncSize != "0" {
		if r.syncSize, err = units.ParseSize(o.syncSize); err != nil {
			return nil, fmt.Errorf("--sync-size: %w", err)
		}
		if r.syncSize < 0 || r.syncSize%(1<<20) != 0 {
			return nil, fmt.Errorf("--sync-size must be a multiple of 1 MiB")
		}
		if o.syncRounds < 1 || o.syncRounds > 20 {
			return nil, fmt.Errorf("--sync-rounds: %d not in 1..20", o.syncRounds)
		}
	}
	r.workloads, err = selectWorkloads(o.workloads, o.counts, o.scale)
	if err != nil {
		return nil, err
	}
	if len(o.configs) == 0 && len(r.workloads) > 0 {
		return nil, fmt.Errorf("no configurations")
	}
	for _, p := range []string{o.jsonPath, o.mdPath, o.resultsPath} {
		if p == "" {
			continue
		}
		if st, err := os.Stat(filepath.Dir(p)); err != nil || !st.IsDir() {
			return nil, fmt.Errorf("cannot write %s: directory %s missing (run from the module root or pass --json/--markdown)", p, filepath.Dir(p))
		}
	}
	return r, nil
}

// selectWorkloads picks the named workloads with their counts overridden
// and scaled.
func selectWorkloads(names []string, counts map[string]int, scale float64) ([]bench.Workload, error) {
	defs := map[string]bench.Workload{}
	for _, w := range defaultWorkloads() {
		defs[w.Name] = w
	}
	for name := range counts {
		if _, ok := defs[name]; !ok {
			return nil, fmt.Errorf("--count: unknown workload %q", name)
		}
	}
	var out []bench.Workload
	for _, name := range names {
		w, ok := defs[name]
		if !ok {
			return nil, fmt.Errorf("unknown workload %q", name)
		}
		if c, ok := counts[name]; ok {
			w.Count = c
		}
		w.Count = int(float64(w.Count) * scale)
		if w.Count < 1 {
			return nil, fmt.Errorf("workload %s: count %d", name, w.Count)
		}
		out = append(out, w)
	}
	return out, nil
}

func (r *runner) logf(format string, a ...any) {
	fmt.Fprintf(r.log, format+"\n", a...)
}

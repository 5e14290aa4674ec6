// Command resync measures what hablock resyncs after a node is killed, at
// the scale: two hablock agents on 127.0.0.1 with a 4 GiB volume,
// (a) the Secondary SIGKILLed under a write load and 100 MiB more written
// without it, (b) the Primary SIGKILLed under load, the Secondary promoted
// with `hablock primary` and 100 MiB written there. It prints the resync
// bytes (from `hablock status --json`) against what was dirtied, load
// errors, and a byte-for-byte comparison of both backing files, and
// appends the numbers to benchmarks/RESULTS.md.
//
//	go run ./benchmarks/resync [flags]
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
	"syscall"
	"time"

	"github.com/spf13/pflag"

	"github.com/hablock/hablock/internal/units"
)

const helpText = `resync: how much a resync moves after a node is SIGKILLed, at the issue's scale.

Usage:
  go run ./benchmarks/resync [flags]          (from the module root, as root)

Setup (everything on 127.0.0.1, files in one temporary directory under --dir)
  A resource file with both nodes on 127.0.0.1 (net { connect-retry-min 100ms ;
  connect-retry-max 1s ; resync-rate unlimited }, every other key at its default),
  'hablock create-md' on n1 and on n2 (--uuid of n1), 'hablock agent' for
  each, 'hablock primary --force' on n1, and a wait until the initial full
  sync of the --size volume has finished (n1 Connected, both UpToDate).
  Writes go through the Primary's iSCSI target with qemu-io (libiscsi).

(a) Secondary SIGKILL
  A load runs qemu-io processes one after another, each rewriting a 16 MiB
  region in 512 KiB writes. After --load-time n2 is SIGKILLed; the load goes
  on until n1 reports the peer gone and at least two more complete passes
  have run (so the whole region was rewritten without the peer), then
  stops. Then --write bytes more: 1 MiB writes spread evenly over the volume
  (90 % of --write) and 4 KiB writes at random offsets (the rest). n2 is
  restarted; the clock runs until n1 shows Connected, UpToDate on both
  sides, nothing out of sync.
  Reported: resync bytes = the growth of n1's counters.resync_bytes
  (hablock status --json) across the restart; bytes dirtied = the union of
  4 KiB blocks written after the kill (the load region plus --write);
  their ratio (criterion <= 1.05); load errors (criterion 0: qemu-io exit
  status and "failed" in its output); n1's out_of_sync_bytes before the
  restart; both backing files compared byte for byte with the agents
  stopped (criterion: equal).

(b) Primary SIGKILL
  A fresh pair, set up as above ((a)'s files are removed first; the
  activity log keeps extents hot across clean restarts, so (a)'s pair
  would count (a)'s writes too). The same load on n1, SIGKILL of n1 after
  --load-time (the load is stopped with it). n2 is promoted
  with 'hablock primary' once it reports the peer gone, and --write bytes
  are written through n2's target as in (a). n1 is restarted with
  --no-connect: it must come back Secondary; its out_of_sync_bytes and the
  activity-log extents it applied (its log line "activity log extents
  marked out of sync ... extents=N") are read, then 'hablock connect'. The
  clock runs until n2 shows Connected, both UpToDate, nothing out of sync.
  Reported: resync bytes (growth of n2's counters.resync_bytes) against the
  bound AL extents x 4 MiB + n2's out_of_sync_bytes before the connect
  (criterion: resync <= bound), and the file comparison.

Results: a Markdown section on stdout, appended (dated) to --results under
the header "## Resync after a SIGKILL (go run ./benchmarks/resync)", which
is created at the end of the file if absent; other sections are left as
they are. The exit status is 1 if a criterion failed.

Flags:
`

type options struct {
	size, write, dir   string
	results            string
	hablockBin, repo   string
	loadTime, timeout  time.Duration
	keep               bool
	sizeBytes, wrBytes int64
}

func main() {
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
}

func run(args []string, stdout, stderr io.Writer) int {
	var o options
	fs := pflag.NewFlagSet("resync", pflag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() {
		fmt.Fprint(stdout, helpText)
		fs.SetOutput(stdout)
		fs.PrintDefaults()
		fs.SetOutput(stderr)
	}
	fs.StringVar(&o.size, "size", "4G", "volume size (a multiple of 64 MiB)")
	fs.StringVar(&o.write, "write", "100M", "bytes written without the peer after the kill, beyond the load (a multiple of 1 MiB)")
	fs.StringVar(&o.dir, "dir", "", "parent of the temporary directory (default $TMPDIR); needs about 2 x --size free")
	fs.StringVar(&o.results, "results", "benchmarks/RESULTS.md", "append the dated results here (empty: don't)")
	fs.DurationVar(&o.loadTime, "load-time", 3*time.Second, "how long the load runs before the SIGKILL")
	fs.DurationVar(&o.timeout, "timeout", 15*time.Minute, "give up on any one wait (initial sync, resync) after this long")
	fs.StringVar(&o.hablockBin, "hablock-bin", "", "use this hablock binary instead of building ./cmd/hablock")
	fs.StringVar(&o.repo, "repo", "", "module root to build ./cmd/hablock in (default: from go env GOMOD)")
	fs.BoolVar(&o.keep, "keep", false, "keep the temporary directory (backing files, metadata, agent logs)")
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, pflag.ErrHelp) {
			return 0
		}
		fmt.Fprintf(stderr, "resync: %v (see --help)\n", err)
		return 2
	}
	if err := o.validate(); err != nil {
		fmt.Fprintf(stderr, "resync: %v\n", err)
		return 2
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	rep, err := newRunner(o, args, stderr).run(ctx)
	if rep != nil {
		md := rep.markdown()
		fmt.Fprint(stdout, md)
		if o.results != "" {
			if aerr := appendResults(o.results, md); aerr != nil {
				fmt.Fprintf(stderr, "resync: %v\n", aerr)
				return 1
			}
			fmt.Fprintf(stderr, "appended to %s\n", o.results)
		}
	}
	if err != nil {
		fmt.Fprintf(stderr, "resync: %v\n", err)
		if ctx.Err() != nil {
			return 130
		}
		return 1
	}
	if !rep.pass() {
		return 1
	}
	return 0
}

func (o *options) validate() error {
	var err error
	if o.sizeBytes, err = units.ParseSize(o.size); err != nil {
		return fmt.Errorf("--size: %w", err)
	}
	if o.sizeBytes <= 0 || o.sizeBytes%(64<<20) != 0 {
		return fmt.Errorf("--size %s: want a positive multiple of 64 MiB", o.size)
	}
	if o.wrBytes, err = units.ParseSize(o.write); err != nil {
		return fmt.Errorf("--write: %w", err)
	}
	if o.wrBytes < 1<<20 || o.wrBytes%(1<<20) != 0 || o.wrBytes > o.sizeBytes/2 {
		return fmt.Errorf("--write %s: want a multiple of 1 MiB, at least 1 MiB and at most half of --size", o.write)
	}
	if o.loadTime <= 0 || o.timeout <= 0 {
		return fmt.Errorf("--load-time and --timeout must be positive")
	}
	if o.results != "" {
		if _, err := os.Stat(o.results); err != nil {
			return fmt.Errorf("--results %s: %v (run from the module root, or pass --results '' to skip)", o.results, err)
		}
	}
	if o.dir != "" {
		if st, err := os.Stat(o.dir); err != nil || !st.IsDir() {
			return fmt.Errorf("--dir %s: not a directory", o.dir)
		}
	}
	return nil
}

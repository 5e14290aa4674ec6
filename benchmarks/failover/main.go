// Command failover runs the end-to-end failover rig of issue 4 (package
// failover/rig) for many trials and reports the distribution of the
// client-visible stall and its breakdown.
//
//	go run ./benchmarks/failover --trials 20 --switchovers 20   # as root, from the module root
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
	"runtime"
	"slices"
	"strings"
	"syscall"
	"time"

	"github.com/spf13/pflag"

	"github.com/hablock/hablock/failover/rig"
	"github.com/hablock/hablock/internal/admin"
)

const helpText = `failover: unplanned failovers and planned switchovers of a replicated
hablock resource under a real client, measured as the client sees them.

Usage:
  go run ./benchmarks/failover [flags]          (as root, from the module root)

The rig (package failover/rig; its documentation has the details)
  Network namespaces on one bridge: n1 10.250.0.1 and n2 10.250.0.2 run
  'hablock agent' (built from ./cmd/hablock), w 10.250.0.3 the witness (with
  --takeover auto), c1 10.250.0.10 the client; the VIP 10.250.0.100/24 is on
  the Primary's eth0. In c1, qemu-storage-daemon logs in through the VIP and
  exports the LUN with FUSE; ext4 is made on it and loop-mounted; on it run
  PostgreSQL (pgbench, -c 4, a TPC-B-like script that also inserts a unique
  id into a ledger table; ids whose COMMIT succeeded are recorded), an HTTP
  server serving a file it rewrites every second, polled every 10 ms (a
  poll fails on an error or after 5 s), and a writer doing 4 KiB pwrite +
  fdatasync in a loop.

A failover trial
  pgbench runs 15 s; after 3 s the Primary dies as a host does: its eth0
  goes down, then its agent is SIGKILLed. The survivor takes over (see
  --takeover). The rig waits for the writer's first completed write after
  the takeover, then for pgbench, then brings the dead node back (link up,
  agent restarted, Secondary) and waits until both disks are UpToDate with
  nothing out of sync. The next trial kills the other node.
    stall      longest gap between consecutive completed write+fsync calls
               of the writer around the kill (the client-visible I/O stall)
    detect     kill -> the survivor's status (polled every 10 ms through its
               admin socket) shows the peer link lost
    promote    -> its role is Primary
    vip        -> the VIP is on its eth0
    reconnect  -> the writer's first completed write after that
    (with --takeover auto the breakdown comes from the new Primary's log:
    detect = its first failover decision, promote = quorum vote + engine +
    target until "promoted by failover", vip = that line's vip timing,
    reconnect = from that line to the first completed write)
    resync     agent restart -> both in sync (and the bytes resynced)
A switchover trial: pgbench runs 8 s; after 3 s the role moves to the other
node (manual: 'hablock secondary' on the Primary, VIP moved, 'hablock
primary' on the other; auto: 'hablock switchover --to'); stall as above.

Partitions (--partitions, after the switchovers)
  cut-n1-n2     nftables drop rules between n1 and n2 only
  cut-primary   the Primary cut from n2, the witness and the client
  cut-witness   the witness cut from both disk nodes
  flap-primary  the Primary's eth0 down and up every second
  Each holds for --partition-hold under the client load plus a side writer
  on each disk node: qemu-io, one 4 KiB write + flush per login, to that
  node's own target (127.0.0.1:3260 in its namespace), in the last 16 MiB of
  the volume (mkfs leaves them out of ext4). Every acknowledged write's
  period is recorded; a write acknowledged by n1 whose period overlaps one
  acknowledged by n2 is an overlap (two nodes acknowledging at once). After
  the heal the rig waits for one Primary and both disks UpToDate; at the
  end the last acknowledged write of every block must be on the disks.
  With --takeover manual nothing promotes during a cut (the Primary must
  stay where it was); the scenarios mean most with --takeover auto.

At the end: every recorded ledger id must be in the table; the client,
PostgreSQL, the mount and the initiator stop; the kernel log must show no
I/O error on the client's loop device; both agents stop once in sync; the
backing files must be identical and e2fsck -fn clean.

--takeover
  auto    (the default) the agents fail over by themselves (serf, witness
          quorum, VIP, tickle ACKs); the rig only kills, observes and
          revives.
  manual  the baseline: the rig stands in for the failover manager: it
          promotes the survivor through its admin socket once its link has
          noticed the loss (net ping-interval + ping-timeout), adds the VIP
          with 'ip addr' and announces it with 'arping -U'; with --tickle
          it then sends tickle ACKs to the clients the dead Primary served
          (read from it just before the kill). The resource file has no
          witness then (a witness turns the agents' failover on).

The report (Markdown) goes to stdout and is appended, dated, to --markdown.

Flags:
`

type options struct {
	trials, switchovers int
	takeover            string
	markdown            string
	prefix              string
	keep                bool
	pingInterval        time.Duration
	pingTimeout         time.Duration
	size                int64
	partitions          []string
	hold                time.Duration
	tickle              bool
	events              int
}

func main() {
	rig.RunRoleIfRequested()
	if err := run(os.Args[1:], os.Stdout, os.Stderr); err != nil {
		if errors.Is(err, pflag.ErrHelp) {
			return
		}
		fmt.Fprintln(os.Stderr, "failover:", err)
		os.Exit(1)
	}
}

func run(args []string, stdout, stderr io.Writer) error {
	var o options
	fs := pflag.NewFlagSet("failover", pflag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() {
		fmt.Fprint(stdout, helpText)
		fs.SetOutput(stdout)
		fs.PrintDefaults()
	}
	fs.IntVar(&o.trials, "trials", 20, "unplanned failovers (the Primary alternates)")
	fs.IntVar(&o.switchovers, "switchovers", 20, "planned switchovers after the failovers")
	fs.StringVar(&o.takeover, "takeover", "auto", "who promotes the survivor: auto (the agents) or manual (the rig)")
	fs.StringVar(&o.markdown, "markdown", "benchmarks/RESULTS.md", "append the report to this `file` (empty: stdout only)")
	fs.StringVar(&o.prefix, "prefix", "rg", "prefix of the namespaces and of /tmp/PREFIX-PID")
	fs.BoolVar(&o.keep, "keep", false, "keep the working directory (logs, images) after a successful run")
	fs.IntVar(&o.events, "events", 0, "at the end, print the last `N` events of the Primary's event stream (hablock events), to stdout only")
	fs.DurationVar(&o.pingInterval, "ping-interval", 500*time.Millisecond, "replication link net.ping-interval")
	fs.DurationVar(&o.pingTimeout, "ping-timeout", 250*time.Millisecond, "replication link net.ping-timeout")
	fs.Int64Var(&o.size, "size", 512<<20, "volume size in `bytes`")
	fs.BoolVar(&o.tickle, "tickle", false, "manual takeover: also send tickle ACKs to the clients the dead Primary served (read from it just before the kill), as the automatic takeover does")
	fs.StringSliceVar(&o.partitions, "partitions", nil, "partition scenarios to run after the switchovers, comma-separated: cut-n1-n2, cut-primary, cut-witness, flap-primary, or all")
	fs.DurationVar(&o.hold, "partition-hold", 10*time.Second, "how long each cut lasts (flap-primary: how long the link flaps; the issue says 1m)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("unexpected argument %q (see --help)", fs.Arg(0))
	}
	takeover, err := rig.ParseTakeover(o.takeover)
	if err != nil {
		return err
	}
	var kinds []rig.PartitionKind
	for _, p := range o.partitions {
		if p == "all" {
			kinds = append(kinds, rig.PartitionKinds...)
			continue
		}
		if !slices.Contains(rig.PartitionKinds, rig.PartitionKind(p)) {
			return fmt.Errorf("--partitions: unknown scenario %q; known: %v or all", p, rig.PartitionKinds)
		}
		kinds = append(kinds, rig.PartitionKind(p))
	}
	if o.trials < 0 || o.switchovers < 0 || o.trials+o.switchovers+len(kinds) == 0 {
		return fmt.Errorf("--trials %d --switchovers %d and no --partitions: nothing to run", o.trials, o.switchovers)
	}
	if miss := rig.Requirements(); len(miss) > 0 {
		return fmt.Errorf("the rig needs: %s (scripts/deps.sh installs the packages)", strings.Join(miss, "; "))
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	logf := func(format string, a ...any) {
		fmt.Fprintf(stderr, "%s %s\n", time.Now().Format("15:04:05.000"), fmt.Sprintf(format, a...))
	}
	began := time.Now()
	r, err := rig.New(ctx, rig.Options{Takeover: takeover, Prefix: o.prefix, VolumeSize: o.size,
		PingInterval: o.pingInterval, PingTimeout: o.pingTimeout, Tickle: o.tickle, Logf: logf})
	if err != nil {
		return err
	}
	failed := true
	defer func() {
		if err := r.Close(); err != nil {
			logf("close: %v", err)
		}
		if failed || o.keep {
			logf("logs kept in %s", r.Dir())
		} else {
			_ = r.RemoveDir()
		}
	}()
	if err := r.StartCluster(ctx); err != nil {
		return err
	}
	if err := r.StartClient(ctx); err != nil {
		return err
	}
	var fo, so []rig.Trial
	var runErr error
	for i := 0; i < o.trials && runErr == nil; i++ {
		logf("failover %d/%d", i+1, o.trials)
		t, err := r.Failover(ctx)
		if err != nil {
			runErr = fmt.Errorf("failover %d: %w", i+1, err)
			break
		}
		fo = append(fo, t)
	}
	for i := 0; i < o.switchovers && runErr == nil; i++ {
		logf("switchover %d/%d", i+1, o.switchovers)
		t, err := r.Switchover(ctx)
		if err != nil {
			runErr = fmt.Errorf("switchover %d: %w", i+1, err)
			break
		}
		so = append(so, t)
	}
	var parts []rig.PartitionResult
	for _, k := range kinds {
		if runErr != nil {
			break
		}
		p, err := r.Partition(ctx, k, o.hold)
		if err != nil {
			runErr = fmt.Errorf("partition %s: %w", k, err)
			break
		}
		parts = append(parts, p)
	}
	// The event stream is read before Finish, which stops the agents.
	var evs []admin.Event
	var evErr error
	evNode := r.Primary()
	if o.events > 0 {
		if evs, evErr = r.Events(ctx, evNode); evErr != nil {
			logf("events of %s: %v", evNode, evErr)
		}
	}
	var fin *rig.Final
	if runErr == nil {
		f, err := r.Finish(ctx)
		if err != nil {
			runErr = fmt.Errorf("end-of-run checks: %w", err)
		} else {
			fin = &f
		}
	}
	rep := report(o, takeover, began, time.Now(), fo, so, parts, fin, runErr)
	fmt.Fprint(stdout, rep)
	if o.events > 0 && evErr == nil {
		fmt.Fprintf(stdout, "\n### The last %d events of the Primary, %s (hablock events)\n\n```\n", min(o.events, len(evs)), evNode)
		for _, e := range evs[max(0, len(evs)-o.events):] {
			fmt.Fprintln(stdout, e.String())
		}
		fmt.Fprint(stdout, "```\n")
	}
	if o.markdown != "" {
		f, err := os.OpenFile(o.markdown, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
		if err != nil {
			return err
		}
		_, werr := f.WriteString("\n" + rep)
		if err := errors.Join(werr, f.Close()); err != nil {
			return err
		}
		logf("report appended to %s", o.markdown)
	}
	if runErr != nil {
		return runErr
	}
	failed = !fin.OK()
	return nil
}

// dist is the distribution of one measure over trials.
type dist struct{ min, median, p90, max, mean time.Duration }

func distOf(ts []rig.Trial, f func(rig.Trial) time.Duration) dist {
	if len(ts) == 0 {
		return dist{}
	}
	v := make([]time.Duration, len(ts))
	var sum time.Duration
	for i, t := range ts {
		v[i] = f(t)
		sum += v[i]
	}
	slices.Sort(v)
	p90 := v[min(len(v)-1, (len(v)*9+9)/10-1)]
	return dist{min: v[0], median: median(v), p90: p90, max: v[len(v)-1], mean: sum / time.Duration(len(v))}
}

func median(v []time.Duration) time.Duration {
	n := len(v)
	if n%2 == 1 {
		return v[n/2]
	}
	return (v[n/2-1] + v[n/2]) / 2
}

func ms(d time.Duration) string { return fmt.Sprintf("%.0f", float64(d)/float64(time.Millisecond)) }

func distRow(name string, d dist) string {
	return fmt.Sprintf("| %s | %s | %s | %s | %s | %s |\n", name, ms(d.min), ms(d.median), ms(d.p90), ms(d.max), ms(d.mean))
}

func report(o options, tk rig.Takeover, began, ended time.Time, fo, so []rig.Trial, parts []rig.PartitionResult, fin *rig.Final, runErr error) string {
	var b strings.Builder
	host, _ := os.Hostname()
	fmt.Fprintf(&b, "## Failover rig, %s (takeover: %s)\n\n", began.UTC().Format("2006-01-02 15:04Z"), tk)
	pflags := ""
	if len(parts) > 0 || len(o.partitions) > 0 {
		pflags = fmt.Sprintf(" --partitions %s --partition-hold %v", strings.Join(o.partitions, ","), o.hold)
	}
	if o.tickle {
		pflags += " --tickle"
	}
	fmt.Fprintf(&b, "Command: `go run ./benchmarks/failover --trials %d --switchovers %d --takeover %s%s` (ping-interval %v, ping-timeout %v, volume %d MiB). "+
		"Run %s to %s on %s (%d CPUs, %s).\n\n",
		o.trials, o.switchovers, tk, pflags, o.pingInterval, o.pingTimeout, o.size>>20,
		began.UTC().Format("15:04:05Z"), ended.UTC().Format("15:04:05Z"), host, runtime.NumCPU(), runtime.Version())
	if tk == rig.TakeoverAuto {
		b.WriteString("**Takeover path: automatic.** The agents (n1, n2 and the witness w) detected the failure, voted and " +
			"took over by themselves; the rig only killed, observed and revived. The breakdown comes from the new Primary's log.\n\n")
	}
	if tk == rig.TakeoverManual {
		b.WriteString("**Takeover path: manual (the baseline).** The rig, not the agents, promoted the survivor " +
			"through its admin socket as soon as its replication link reported the peer lost, moved the VIP with `ip addr` and " +
			"announced it with `arping -U`. ")
		if o.tickle {
			b.WriteString("With --tickle: the rig read the Primary's established iSCSI connections just before the kill and, " +
				"right after the VIP move, sent each client a tickle ACK from the survivor (failover.Tickler).\n\n")
		} else {
			b.WriteString("No tickle ACKs (no --tickle): the client's TCP connection to the dead node is reset only when its own " +
				"retransmission reaches the new Primary.\n\n")
		}
	}
	if runErr != nil {
		fmt.Fprintf(&b, "**The run stopped with an error:** %s\n\n", strings.ReplaceAll(runErr.Error(), "\n", " "))
	}
	if len(fo) > 0 {
		fmt.Fprintf(&b, "### %d unplanned failovers (ms)\n\n", len(fo))
		b.WriteString("| measure | min | median | p90 | max | mean |\n|---|---:|---:|---:|---:|---:|\n")
		b.WriteString(distRow("client-visible stall", distOf(fo, func(t rig.Trial) time.Duration { return t.Stall })))
		b.WriteString(distRow("detection", distOf(fo, func(t rig.Trial) time.Duration { return t.Detect })))
		b.WriteString(distRow("promotion", distOf(fo, func(t rig.Trial) time.Duration { return t.Promote })))
		b.WriteString(distRow("VIP", distOf(fo, func(t rig.Trial) time.Duration { return t.VIPMove })))
		b.WriteString(distRow("client reconnect", distOf(fo, func(t rig.Trial) time.Duration { return t.Reconnect })))
		b.WriteString(distRow("resync of the returning node", distOf(fo, func(t rig.Trial) time.Duration { return t.Resync })))
		b.WriteString("\n")
		trialTable(&b, fo, true)
	}
	if len(so) > 0 {
		fmt.Fprintf(&b, "### %d planned switchovers (ms)\n\n", len(so))
		b.WriteString("| measure | min | median | p90 | max | mean |\n|---|---:|---:|---:|---:|---:|\n")
		b.WriteString(distRow("client-visible stall", distOf(so, func(t rig.Trial) time.Duration { return t.Stall })))
		b.WriteString(distRow("role + VIP move", distOf(so, func(t rig.Trial) time.Duration { return t.VIPMove })))
		b.WriteString(distRow("client reconnect", distOf(so, func(t rig.Trial) time.Duration { return t.Reconnect })))
		b.WriteString("\n")
		trialTable(&b, so, false)
	}
	if len(parts) > 0 {
		b.WriteString("### Partitions\n\n")
		b.WriteString("Each scenario runs under the client load plus a side writer on each disk node (qemu-io, one 4 KiB write + flush " +
			"per login, to that node's own target, in the 16 MiB the file system leaves free). Overlaps: pairs of writes acknowledged " +
			"by n1 and by n2 in overlapping periods (must be 0).\n\n")
		b.WriteString("| scenario | Primary before→after | cut (ms) | heal to in sync (ms) | acks n1 / n2 | overlaps | client stall (ms) | HTTP fail | pgbench committed / failed / aborted |\n")
		b.WriteString("|---|---|---:|---:|---:|---:|---:|---:|---:|\n")
		for _, p := range parts {
			fmt.Fprintf(&b, "| %s | %s→%s | %s | %s | %d / %d | %d | %s | %d | %d / %d / %d |\n", p.Kind, p.From, p.PrimaryAfter,
				ms(p.Cut), ms(p.Heal), p.Acks["n1"], p.Acks["n2"], len(p.Overlaps), ms(p.ClientStall), p.HTTPFailures,
				p.PGCommitted, p.PGFailed, p.PGAborted)
		}
		for _, p := range parts {
			for _, ov := range p.Overlaps[:min(3, len(p.Overlaps))] {
				fmt.Fprintf(&b, "- %s: %s\n", p.Kind, ov)
			}
		}
		b.WriteString("\n")
	}
	if fin != nil {
		b.WriteString("### End of run\n\n")
		fmt.Fprintf(&b, "- ledger: %d transaction ids recorded as committed, %d rows in the table, **%d missing**\n",
			fin.LedgerRecorded, fin.LedgerRows, fin.LedgerMissing)
		fmt.Fprintf(&b, "- writer: %d write+fsync calls completed\n", fin.Writes)
		fmt.Fprintf(&b, "- backing files equal once quiesced: %v (%d MiB compared)\n", fin.BackingEqual, fin.BackingSize>>20)
		fmt.Fprintf(&b, "- e2fsck -fn clean: %v\n", fin.E2fsckClean)
		fmt.Fprintf(&b, "- kernel I/O or ext4 errors on the client's loop device: %d\n", len(fin.KernelErrors))
		if len(parts) > 0 {
			fmt.Fprintf(&b, "- acknowledged side writes missing from the disks: %d\n", len(fin.LostSideWrites))
			for _, l := range fin.LostSideWrites[:min(5, len(fin.LostSideWrites))] {
				fmt.Fprintf(&b, "  - %s\n", l)
			}
		}
		for _, l := range fin.KernelErrors[:min(5, len(fin.KernelErrors))] {
			fmt.Fprintf(&b, "  - `%s`\n", l)
		}
		b.WriteString("\n")
	}
	criteria(&b, fo, so, parts, fin)
	return b.String()
}

func trialTable(b *strings.Builder, ts []rig.Trial, failover bool) {
	if failover {
		b.WriteString("| # | from→to | stall | detect | promote | VIP | reconnect | HTTP fail (slowest poll) | pgbench committed / failed / aborted | resync (KiB) |\n")
		b.WriteString("|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|\n")
	} else {
		b.WriteString("| # | from→to | stall | role+VIP | reconnect | HTTP fail (slowest poll) | pgbench committed / failed / aborted |\n")
		b.WriteString("|---:|---|---:|---:|---:|---:|---:|\n")
	}
	for i, t := range ts {
		pg := fmt.Sprintf("%d / %d / %d", t.PGCommitted, t.PGFailed, t.PGAborted)
		if t.PGErr != "" {
			pg += " (pgbench: " + strings.ReplaceAll(t.PGErr, "\n", " ") + ")"
		}
		http := fmt.Sprintf("%d (%s)", t.HTTPFailures, ms(t.HTTPMax))
		if failover {
			fmt.Fprintf(b, "| %d | %s→%s | %s | %s | %s | %s | %s | %s | %s | %s (%d) |\n", i+1, t.From, t.To,
				ms(t.Stall), ms(t.Detect), ms(t.Promote), ms(t.VIPMove), ms(t.Reconnect), http, pg, ms(t.Resync), t.ResyncedBytes>>10)
		} else {
			fmt.Fprintf(b, "| %d | %s→%s | %s | %s | %s | %s | %s |\n", i+1, t.From, t.To,
				ms(t.Stall), ms(t.VIPMove), ms(t.Reconnect), http, pg)
		}
	}
	b.WriteString("\n")
}

func criteria(b *strings.Builder, fo, so []rig.Trial, parts []rig.PartitionResult, fin *rig.Final) {
	b.WriteString("### Criteria of issue 4 on this run\n\n")
	mark := func(ok bool) string {
		if ok {
			return "met"
		}
		return "**not met**"
	}
	errs := func(ts []rig.Trial) (n int) {
		for _, t := range ts {
			n += t.Errors()
		}
		return n
	}
	if len(fo) > 0 {
		d := distOf(fo, func(t rig.Trial) time.Duration { return t.Stall })
		fmt.Fprintf(b, "- %d failovers with 0 pgbench errors and 0 failed HTTP polls: %d errors, %s\n", len(fo), errs(fo), mark(errs(fo) == 0))
		fmt.Fprintf(b, "- failover stall median < 500 ms: %s ms, %s; maximum < 1000 ms: %s ms, %s\n",
			ms(d.median), mark(d.median < 500*time.Millisecond), ms(d.max), mark(d.max < time.Second))
	}
	if len(so) > 0 {
		d := distOf(so, func(t rig.Trial) time.Duration { return t.Stall })
		fmt.Fprintf(b, "- %d switchovers with 0 errors: %d, %s; stall median < 100 ms: %s ms, %s\n",
			len(so), errs(so), mark(errs(so) == 0), ms(d.median), mark(d.median < 100*time.Millisecond))
	}
	if len(parts) > 0 {
		n := 0
		for _, p := range parts {
			n += len(p.Overlaps)
		}
		fmt.Fprintf(b, "- partitions: never two nodes acknowledging writes in the same period: %d overlaps, %s; "+
			"%d scenarios healed to one Primary with both disks UpToDate (one that does not stops the run with an error, above)\n",
			n, mark(n == 0), len(parts))
	}
	if fin != nil {
		fmt.Fprintf(b, "- 0 lost committed transactions, ext4 clean, backing files equal, no kernel I/O errors: %s\n", mark(fin.OK()))
	}
	b.WriteString("\n")
}

package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"github.com/hablock/hablock/failover"
	"io"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/schollz/progressbar/v3"
	"golang.org/x/term"

	"github.com/hablock/hablock/internal/admin"
)

// The admin commands talk to the local agent over its admin socket: HTTP
// with JSON bodies on the Unix socket named by the node's "admin" key in
// the resource file (default /run/hablock/RESOURCE-NODE.sock, mode 0600).
// See package internal/admin for the endpoints.

const adminTargetHelp = `
The agent is found through its admin socket: either --config FILE --node
NAME (the socket is the node's "admin" key, default
/run/hablock/RESOURCE-NODE.sock) or --socket PATH. The socket speaks HTTP
with JSON (GET /v1/status, POST /v1/primary?force=1, ...), mode 0600.

Flags:
`

type adminSpec struct {
	name, summary, help string
	// op performs the request; nil for status.
	op func(ctx context.Context, c *admin.Client, o *adminOpts) (admin.Status, error)
	// which optional flags the command takes
	force, repair, wait, json, discard, to bool
	// waitKind is what --wait follows after op: "sync" (the
	// connection and its resync) or "verify".
	waitKind string
	// events: the command prints the event stream (--follow, --json)
	// instead of a status.
	events bool
}

type adminOpts struct {
	config, node, socket string
	force, repair, wait  bool
	json, discard        bool
	follow               bool
	to                   string
	timeout              time.Duration
}

var adminSpecs = []adminSpec{
	{name: "events", summary: "print a node's events: state changes, failover steps (like drbdsetup events2)", events: true,
		help: `Print the node's events, oldest first, one per line: every change of the
role, the peer's role, the disk and peer-disk states, the connection and
replication states and the generation identifiers (source replication);
every step of the failover manager: votes, promotions, fencing, adopted
records (source failover); and the agent's own (its start, metadata
failures and recovery). The agent keeps the last 1024; each has a number
(#SEQ) without gaps, so a reader that sees a jump knows it missed some.

With --follow it goes on printing events as they happen, until
interrupted (a long poll of GET /v1/events?after=SEQ&wait=30s). With
--json each event is one JSON object per line (JSON Lines): seq, at,
source, kind, from, to, reason.

Examples:
  hablock events --config /etc/hablock/r0.conf --node n1
  hablock events --config /etc/hablock/r0.conf --node n1 --follow
  hablock events --socket /run/hablock/r0-n1.sock --follow --json | jq -c 'select(.kind=="role")'
`},
	{name: "status", summary: "show a node's role, disk, connection and sync progress (like drbdadm status)", json: true,
		help: `Show the state of the resource on this node, like "drbdadm status":

  r0 role:Primary
    disk:UpToDate
    n2 connection:Connected role:Secondary
      peer-disk:Inconsistent replication:SyncSource done:42.10% eta:0:12

With --json the full status (every counter, sync and verify progress with
rate and ETA in seconds) is printed as one JSON object.

Examples:
  hablock status --config /etc/hablock/r0.conf --node n1
  hablock status --socket /run/hablock/r0-n1.sock --json | jq .replication
`},
	{name: "connect", summary: "connect to the peer (and resync); --discard-my-data resolves a split brain", wait: true, waitKind: "sync", discard: true,
		op: func(ctx context.Context, c *admin.Client, o *adminOpts) (admin.Status, error) {
			return c.Connect(ctx, o.discard)
		},
		help: `Connect to the peer: the agent dials/accepts the peer link, runs the handshake
and the resync the generation identifiers call for. Returns at once; with
--wait it follows the connection and any resync until it is Established,
with a progress bar when stdout is a terminal.

Split brain (both nodes wrote while apart; status shows connection
StandAlone and last-error "split brain"): unless an after-sb policy of
the resource file settles it, recover by hand as with DRBD. On the node
whose changes are to be thrown away (the victim):
  hablock secondary --config FILE --node VICTIM
  hablock connect   --config FILE --node VICTIM --discard-my-data
and on the node whose data survives:
  hablock connect   --config FILE --node SURVIVOR
The victim becomes sync target and receives what differs (only the blocks
either side changed since the split, when the generation identifiers
allow; else everything). --discard-my-data applies until a connection is
established; it is refused on a Primary and while connected.

Examples:
  hablock connect --config /etc/hablock/r0.conf --node n1 --wait
  hablock connect --config /etc/hablock/r0.conf --node n2 --discard-my-data
`},
	{name: "disconnect", summary: "drop the peer link and stay StandAlone until connect",
		op: func(ctx context.Context, c *admin.Client, _ *adminOpts) (admin.Status, error) {
			return c.Disconnect(ctx)
		},
		help: `Drop the link to the peer and do not reconnect until "hablock connect". A
Primary keeps serving; its writes are tracked in the out-of-sync bitmap.

Examples:
  hablock disconnect --config /etc/hablock/r0.conf --node n1
`},
	{name: "primary", summary: "promote this node: it serves the volume over iSCSI", force: true,
		op: func(ctx context.Context, c *admin.Client, o *adminOpts) (admin.Status, error) {
			return c.Primary(ctx, o.force)
		},
		help: `Promote this node to Primary: it takes writes, replicates them and exports
the volume over iSCSI. Refused unless the local disk is UpToDate and the
peer is not Primary. --force promotes a node whose disk is not UpToDate
(the initial promotion of a fresh resource, or the survivor after losing
the good node): its data is declared the good copy and the peer will be
resynced from it. Never use --force while the other node may be Primary.

Examples:
  hablock primary --config /etc/hablock/r0.conf --node n1
  hablock primary --config /etc/hablock/r0.conf --node n1 --force   # fresh volume: n1's data wins
`},
	{name: "secondary", summary: "demote this node: stop serving, flush",
		op: func(ctx context.Context, c *admin.Client, _ *adminOpts) (admin.Status, error) {
			return c.Secondary(ctx)
		},
		help: `Demote this node to Secondary: the iSCSI export stops, outstanding writes are
flushed, and the node only applies the peer's writes.

Examples:
  hablock secondary --config /etc/hablock/r0.conf --node n1
`},
	{name: "switchover", summary: "hand the Primary role to the peer, planned, with no I/O error (automatic failover)", to: true,
		op: func(ctx context.Context, c *admin.Client, o *adminOpts) (admin.Status, error) {
			return c.Switchover(ctx, o.to)
		},
		help: `Move the Primary role to the other disk node in a planned way (maintenance,
failback), on a resource with a witness. Run it on the current Primary.
It is refused unless the peer is connected and UpToDate. The steps:
  1. this node holds new I/O (held commands are neither answered nor
     failed) and flushes both disks;
  2. a quorum vote records the peer as Primary of the next epoch;
  3. this node gives up the VIP and demotes, keeping its iSCSI
     connections open but silent;
  4. the peer promotes, starts its target, takes the VIP (gratuitous
     ARP) and resets the initiators' old connections (tickle ACK);
  5. this node closes its connections: initiators reconnect to the new
     Primary on their first try and retry the held commands.
Initiators see a short stall and no error. "hablock status" on either
node shows the new epoch.

Examples:
  hablock switchover --config /etc/hablock/r0.conf --node n1
  hablock switchover --config /etc/hablock/r0.conf --node n1 --to n2
`},
	{name: "invalidate", summary: "discard this node's data: full resync from the peer on the next connect",
		op: func(ctx context.Context, c *admin.Client, _ *adminOpts) (admin.Status, error) {
			return c.Invalidate(ctx)
		},
		help: `Mark this node's data Inconsistent, with every block out of sync, so that the
next connect resyncs all of it from the peer (DRBD's invalidate). Run it on
the node whose data is bad. It is refused while connected (disconnect
first) and on the Primary (demote it first: its data is what the
initiators see). Until the resync has finished the node cannot be
promoted.

Examples:
  hablock disconnect --config /etc/hablock/r0.conf --node n2
  hablock invalidate --config /etc/hablock/r0.conf --node n2
  hablock connect    --config /etc/hablock/r0.conf --node n2 --wait
`},
	{name: "verify", summary: "compare both disks online; --repair resyncs differences", repair: true, wait: true, waitKind: "verify",
		op: func(ctx context.Context, c *admin.Client, o *adminOpts) (admin.Status, error) {
			return c.Verify(ctx, o.repair)
		},
		help: `Compare the whole volume with the peer, block by block (digest: the
resource's net.verify-alg), while it keeps serving. Differing blocks are
marked out of sync; with --repair (on the Primary) they are then resynced
from this node. Returns at once; --wait follows it to the end, with a
progress bar when stdout is a terminal, and prints what it found.

Examples:
  hablock verify --config /etc/hablock/r0.conf --node n1 --wait
  hablock verify --config /etc/hablock/r0.conf --node n1 --repair
`},
	{name: "pause-sync", summary: "pause the running resync",
		op: func(ctx context.Context, c *admin.Client, _ *adminOpts) (admin.Status, error) {
			return c.PauseSync(ctx)
		},
		help: `Pause the resync (on the sync source) until resume-sync, e.g. to give the
disks to a batch job. Writes keep being replicated.

Examples:
  hablock pause-sync --config /etc/hablock/r0.conf --node n1
`},
	{name: "resume-sync", summary: "resume a paused resync",
		op: func(ctx context.Context, c *admin.Client, _ *adminOpts) (admin.Status, error) {
			return c.ResumeSync(ctx)
		},
		help: `Resume a resync paused with pause-sync.

Examples:
  hablock resume-sync --config /etc/hablock/r0.conf --node n1
`},
}

// adminCommands returns the admin subcommands for commands().
func adminCommands() []command {
	var cmds []command
	for _, s := range adminSpecs {
		cmds = append(cmds, command{name: s.name, summary: s.summary, run: func(args []string, stdout, stderr io.Writer) error {
			return runAdmin(s, args, stdout, stderr)
		}})
	}
	return cmds
}

func runAdmin(spec adminSpec, args []string, stdout, stderr io.Writer) error {
	var o adminOpts
	fs := newFlags(spec.name, spec.help+adminTargetHelp, stdout, stderr)
	fs.StringVar(&o.config, "config", "", "resource file `path`; with --node, finds the admin socket")
	fs.StringVar(&o.node, "node", "", "the local node's `name` in the resource file")
	fs.StringVar(&o.socket, "socket", "", "admin socket `path` of the agent (instead of --config and --node)")
	fs.DurationVar(&o.timeout, "timeout", 0, "give up after this long (0: 60s for a request; no limit with --wait)")
	if spec.json {
		fs.BoolVar(&o.json, "json", false, "print the full status as JSON")
	}
	if spec.events {
		fs.BoolVar(&o.json, "json", false, "print each event as one JSON object per line")
		fs.BoolVar(&o.follow, "follow", false, "keep printing events as they happen, until interrupted")
	}
	if spec.force {
		fs.BoolVar(&o.force, "force", false, "promote even though the local disk is not UpToDate (see above)")
	}
	if spec.repair {
		fs.BoolVar(&o.repair, "repair", false, "resync the blocks found different, from this node (Primary only)")
	}
	if spec.wait {
		fs.BoolVar(&o.wait, "wait", false, "follow the progress until it finishes")
	}
	if spec.to {
		fs.StringVar(&o.to, "to", "", "the `node` to hand the role to (default: the peer, the only choice)")
	}
	if spec.discard {
		fs.BoolVar(&o.discard, "discard-my-data", false, "if a split brain is found, give up this node's changes and resync from the peer (see above)")
	}
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	hint := ""
	switch {
	case o.socket != "" && (o.config != "" || o.node != ""):
		return usageErrorf("give either --socket or --config and --node, not both")
	case o.socket == "" && (o.config == "" || o.node == ""):
		return usageErrorf("--config and --node (or --socket) are required to find the agent")
	case o.socket == "":
		_, node, err := loadNode(o.config, o.node)
		if err != nil {
			return err
		}
		o.socket = node.Admin
		hint = fmt.Sprintf("hablock agent --config %s --node %s", o.config, o.node)
	default:
		hint = "hablock agent --config FILE --node NAME"
	}

	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	timeout := o.timeout
	if timeout == 0 && !o.wait && !o.follow {
		timeout = 60 * time.Second
	}
	if timeout > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, timeout)
		defer cancel()
	}
	c := admin.NewClient(o.socket)
	defer c.Close()
	noAgent := func(err error) error {
		if errors.Is(err, admin.ErrNoAgent) {
			return fmt.Errorf("no agent at %s: is `%s` running?", o.socket, hint)
		}
		return err
	}

	if spec.events {
		return noAgent(printEvents(ctx, c, o, stdout))
	}
	var st admin.Status
	var err error
	if spec.op == nil {
		st, err = c.Status(ctx)
	} else {
		st, err = spec.op(ctx, c, &o)
	}
	if err != nil {
		return noAgent(err)
	}
	if o.wait {
		if st, err = follow(ctx, c, spec.waitKind, stdout); err != nil {
			return noAgent(err)
		}
	}
	if o.json {
		enc := json.NewEncoder(stdout)
		enc.SetIndent("", "  ")
		return enc.Encode(st)
	}
	_, err = io.WriteString(stdout, formatStatus(st))
	return err
}

// printEvents prints the kept events and, with o.follow, the new ones
// until ctx ends (then it returns nil: an interrupt ends a follow).
func printEvents(ctx context.Context, c *admin.Client, o adminOpts, w io.Writer) error {
	enc := json.NewEncoder(w)
	var after uint64
	for first := true; ; first = false {
		wait := time.Duration(0)
		if !first {
			wait = admin.MaxEventWait
		}
		evs, next, err := c.Events(ctx, after, wait)
		if err != nil {
			if o.follow && !first && ctx.Err() != nil {
				return nil
			}
			return err
		}
		for _, e := range evs {
			if o.json {
				err = enc.Encode(e)
			} else {
				_, err = io.WriteString(w, e.String()+"\n")
			}
			if err != nil {
				return err
			}
		}
		if next < after {
			// The agent restarted: its numbering began again.
			fmt.Fprintf(w, "-- the agent restarted (events numbered from 1 again) --\n")
		}
		after = next
		if !o.follow {
			return nil
		}
	}
}

// formatStatus renders st like drbdadm status.
func formatStatus(st admin.Status) string {
	var b strings.Builder
	fmt.Fprintf(&b, "%s role:%s\n", st.Resource, st.Role)
	if st.Role == "Witness" {
		// Diskless: only the quorum view.
		formatFailover(&b, st.Failover)
		return b.String()
	}
	fmt.Fprintf(&b, "  disk:%s", st.Disk)
	if st.OutOfSyncBytes > 0 {
		fmt.Fprintf(&b, " out-of-sync:%s", humanBytes(float64(st.OutOfSyncBytes)))
	}
	b.WriteString("\n")
	if !st.Engine {
		b.WriteString("  (replication engine not running in this agent)\n")
	}
	peer := st.Peer
	if peer == "" {
		peer = "peer"
	}
	fmt.Fprintf(&b, "  %s connection:%s role:%s\n", peer, st.Connection, st.PeerRole)
	fmt.Fprintf(&b, "    peer-disk:%s replication:%s", st.PeerDisk, st.Replication)
	switch {
	case isResync(st.Replication) && st.Sync != nil:
		fmt.Fprintf(&b, " done:%.2f%% eta:%s", st.Sync.Percent(), admin.FormatETA(st.Sync.ETA()))
		if st.Sync.Paused {
			b.WriteString(" paused")
		}
	case isVerify(st.Replication) && st.Verify != nil:
		fmt.Fprintf(&b, " verified:%.2f%% eta:%s", st.Verify.Percent(), admin.FormatETA(st.Verify.ETA()))
	}
	b.WriteString("\n")
	if r := st.VerifyResult; r != nil && !isVerify(st.Replication) {
		fmt.Fprintf(&b, "    last-verify:%s checked:%s out-of-sync:%s", r.Finished.Format(time.RFC3339),
			humanBytes(float64(r.CheckedBytes)), humanBytes(float64(r.OutOfSyncBytes)))
		if r.Error != "" {
			fmt.Fprintf(&b, " error:%q", r.Error)
		}
		b.WriteString("\n")
	}
	if st.LastError != "" && st.Connection != "Connected" {
		fmt.Fprintf(&b, "  last-error: %s\n", st.LastError)
	}
	if md := st.Metadata; md != nil {
		if md.UnsavedChunks > 0 {
			fmt.Fprintf(&b, "  metadata: FAILING: %d bitmap chunks not recorded (%d failed writes); writes the peer does not get fail until the store recovers: %s\n",
				md.UnsavedChunks, md.Failures, md.LastError)
		} else {
			fmt.Fprintf(&b, "  metadata: recovered after %d failed metadata writes (last: %s)\n", md.Failures, md.LastError)
		}
	}
	if st.LostCache {
		b.WriteString("  lost-cache: the machine restarted while this node ran; writes it had not flushed may be missing, so the whole volume is out of sync until the next connect resyncs it\n")
	}
	if st.CrashedPrimary {
		b.WriteString("  crashed-primary: this node went down as Primary; the next connect resyncs its activity log's extents\n")
	}
	if st.SplitBrain || st.IsSplitBrain() {
		node := st.Node
		if node == "" {
			node = "this node"
		}
		fmt.Fprintf(&b, "  split-brain: both nodes wrote while apart; nothing is synced until you choose whose changes to discard (hablock connect --help):\n")
		fmt.Fprintf(&b, "    keep %s's data: on %s: hablock secondary, then hablock connect --discard-my-data; here: hablock connect\n", node, peer)
		fmt.Fprintf(&b, "    keep %s's data: here: hablock secondary, then hablock connect --discard-my-data; on %s: hablock connect\n", peer, peer)
	}
	formatFailover(&b, st.Failover)
	return b.String()
}

// formatFailover writes the failover manager's view (nil: none).
func formatFailover(b *strings.Builder, f *failover.Status) {
	if f == nil {
		return
	}
	q := "no"
	if f.Quorum {
		q = "yes"
	}
	fmt.Fprintf(b, "  failover: epoch:%d primary:%s up-to-date:%s quorum:%s", f.Record.Epoch, orNone(f.Record.Primary), orNone(strings.Join(f.Record.UpToDate, ",")), q)
	if f.Suspended {
		b.WriteString(" io:suspended")
	}
	b.WriteString("\n")
	for _, m := range f.Members {
		fmt.Fprintf(b, "    %s serf:%s heartbeat:", m.Name, m.Serf)
		if m.HeartbeatAgeMS < 0 {
			b.WriteString("never")
		} else {
			fmt.Fprintf(b, "%dms-ago", m.HeartbeatAgeMS)
		}
		b.WriteString("\n")
	}
	if f.Last.Reason != "" {
		fmt.Fprintf(b, "    last-decision: %s: %s\n", f.Last.Action, f.Last.Reason)
	}
}

func orNone(s string) string {
	if s == "" {
		return "none"
	}
	return s
}

func isResync(repl string) bool {
	switch repl {
	case "WFBitMapS", "WFBitMapT", "SyncSource", "SyncTarget", "PausedSyncS", "PausedSyncT", "StartingSyncS", "StartingSyncT":
		return true
	}
	return false
}

func isVerify(repl string) bool { return repl == "VerifyS" || repl == "VerifyT" }

// pollInterval is how often --wait asks for the status; lines are printed
// every plainEvery when stdout is not a terminal.
const (
	pollInterval = 250 * time.Millisecond
	plainEvery   = 2 * time.Second
)

// follow polls the status until the resync (kind "sync") or the verify
// (kind "verify") is over, drawing a progress bar on a terminal and
// printing a line every plainEvery otherwise.
func follow(ctx context.Context, c *admin.Client, kind string, stdout io.Writer) (admin.Status, error) {
	tty := false
	if f, ok := stdout.(*os.File); ok {
		tty = term.IsTerminal(int(f.Fd()))
	}
	var bar *progressbar.ProgressBar
	defer func() {
		if bar != nil {
			bar.Finish()
			fmt.Fprintln(stdout)
		}
	}()
	start := time.Now()
	var lastLine time.Time
	seenActive := false
	t := time.NewTicker(pollInterval)
	defer t.Stop()
	for {
		st, err := c.Status(ctx)
		if err != nil {
			return st, err
		}
		var p *admin.Progress
		done := false
		switch kind {
		case "sync":
			if isResync(st.Replication) {
				p = st.Sync
			}
			done = st.Connection == "Connected" && !isResync(st.Replication)
			if st.Connection == "StandAlone" && (seenActive || time.Since(start) > 2*time.Second) {
				return st, fmt.Errorf("connection given up (StandAlone): %s", orUnknown(st.LastError))
			}
			seenActive = seenActive || st.Connection != "StandAlone"
		case "verify":
			if isVerify(st.Replication) {
				p = st.Verify
				seenActive = true
			}
			// Done once it has been seen running, or its result is newer
			// than this command (the agent is on this host: one clock).
			fresh := st.VerifyResult != nil && !st.VerifyResult.Finished.Before(start.Add(-time.Second))
			done = !isVerify(st.Replication) && (seenActive || fresh || time.Since(start) > 2*time.Second)
			if done && st.VerifyResult != nil && st.VerifyResult.Error != "" {
				return st, fmt.Errorf("verify failed: %s", st.VerifyResult.Error)
			}
			if done && st.Connection != "Connected" && st.VerifyResult == nil {
				return st, fmt.Errorf("verify did not run: connection %s: %s", st.Connection, orUnknown(st.LastError))
			}
		}
		if p != nil {
			if tty {
				if bar == nil {
					bar = progressbar.NewOptions64(int64(p.Total),
						progressbar.OptionSetWriter(stdout),
						progressbar.OptionSetDescription(kind),
						progressbar.OptionShowBytes(true),
						progressbar.OptionUseIECUnits(true),
						progressbar.OptionSetPredictTime(true),
						progressbar.OptionSetWidth(40),
						progressbar.OptionThrottle(100*time.Millisecond))
				}
				bar.ChangeMax64(int64(p.Total))
				bar.Set64(int64(p.Done))
			} else if time.Since(lastLine) >= plainEvery || done {
				lastLine = time.Now()
				fmt.Fprintf(stdout, "%s %s: %.2f%% %s of %s, %s/s, eta %s\n", time.Now().Format("15:04:05"), st.Replication,
					p.Percent(), humanBytes(float64(p.Done)), humanBytes(float64(p.Total)),
					humanBytes(p.Rate), admin.FormatETA(p.ETA()))
			}
		}
		if done {
			if bar != nil {
				bar.Set64(bar.GetMax64())
			}
			return st, nil
		}
		select {
		case <-ctx.Done():
			return st, fmt.Errorf("stopped waiting: %w", ctx.Err())
		case <-t.C:
		}
	}
}

// humanBytes formats n bytes with a binary unit and one decimal: "1.5 GiB".
func humanBytes(n float64) string {
	for _, u := range []struct {
		s string
		v float64
	}{{"TiB", 1 << 40}, {"GiB", 1 << 30}, {"MiB", 1 << 20}, {"KiB", 1 << 10}} {
		if n >= u.v {
			return fmt.Sprintf("%.1f %s", n/u.v, u.s)
		}
	}
	return fmt.Sprintf("%.0f B", n)
}

func orUnknown(s string) string {
	if s == "" {
		return "no error recorded"
	}
	return s
}

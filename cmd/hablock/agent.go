package main

import (
	"context"
	"crypto/rand"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/signal"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/hablock/hablock/blockdev"
	"github.com/hablock/hablock/blockdev/meta"
	"github.com/hablock/hablock/failover"
	"github.com/hablock/hablock/internal/admin"
	"github.com/hablock/hablock/internal/config"
	"github.com/hablock/hablock/internal/metrics"
	"github.com/hablock/hablock/internal/units"
	"github.com/hablock/hablock/iscsi"
	"github.com/hablock/hablock/iscsi/scsi"
	"github.com/hablock/hablock/replication"
)

const agentHelp = `Run one disk node of a replicated resource until SIGINT or SIGTERM.

The agent reads the resource file (--config; the same file on every node),
picks its node (--node), opens the node's metadata (made by "hablock
create-md") and backing store, and then:

  - runs the replication engine: the peer link between the two nodes'
    "address" settings (the node whose name sorts first dials, the other
    accepts), handshake, resync, online verify;
  - serves the admin socket (the node's "admin" setting) that "hablock
    status", "primary", "secondary", "connect", "disconnect", "verify",
    "pause-sync", "resume-sync", "invalidate" and "switchover" talk to;
  - while Primary, exports the replicated volume over iSCSI on
    iscsi.listen as iscsi.iqn, LUN 0, with the volume UUID as SCSI
    identity (the same disk on both nodes).

It always starts Secondary, as DRBD does, and connects to the peer at once
(unless --no-connect). Whether it was Primary before a crash or a clean
stop does not matter: which node is Primary is decided by the operator
("hablock primary") or the failover manager, never by a restart, so a
restarted node cannot steal the role from a peer promoted meanwhile. An
invalid or inconsistent resource file is refused before anything is
opened, with the file, line and field in the message.

The activity log (DRBD's AL) bounds the resync after a Primary crash:
before a write to a cold 4 MiB extent is issued, the set of hot extents
(at most 1024) is synced to the metadata. A node restarting with the
crashed-primary flag (it was Primary and did not stop cleanly) marks its
persisted hot extents out of sync and keeps the flag until it has
connected, so the next connect resyncs only them plus the bitmap: from
the peer if it was promoted meanwhile, else from this node.

Power loss: the backing store is written through the page cache, so a
write is durable only after a flush (SYNCHRONIZE CACHE, FUA, or the
agent's own). The agent records the machine's boot ID while it runs and
clears it after a clean stop. A node that finds it after a restart of the
machine (power loss, kernel crash) cannot tell which unflushed writes its
disk lost, so it marks the whole volume out of sync and says so in the
log: it is resynced from the peer (only the blocks that differ when
net.csums-alg is sha256), or, when its generation is the newer, it
resyncs all of the peer; "hablock status" shows "lost-cache" until then.
A resync target's disk is flushed before it becomes UpToDate, and blocks
are recorded in sync only after the flush that makes them so.
$HABLOCK_BOOT_ID, when set, replaces the machine's boot ID (tests use it
to simulate a restart).

Recovery commands: "hablock invalidate" (disconnected, Secondary) makes
the next connect resync everything from the peer; after a split brain,
"hablock connect --discard-my-data" on the node whose changes are to be
thrown away (see "hablock connect --help").

Metadata failures: the out-of-sync bitmap is recorded in the metadata
store before a write that needs it completes. When the store cannot
write (a failed or read-only metadata device), such a write fails
(MEDIUM ERROR to the initiator, nothing written) rather than being
acknowledged with nothing durable to say the peer lacks it; replicated
writes need no new bits and go on. The agent retries the bitmap every
500 ms, and "hablock status" shows "metadata: FAILING" until it is
recorded, then "recovered". Fault injection for tests and drills: with
HABLOCK_FAULT_METADATA=PATH in the environment, every metadata write
fails while the file PATH exists.

Metrics: with --metrics HOST:PORT the agent (and the witness) serves
Prometheus metrics on GET /metrics, read from the same snapshot as
"hablock status" at each scrape. Every series has the labels resource
and node. States are one series valued 1 with the state in a label:
hablock_role{role}, hablock_disk_state{state}, hablock_peer_disk_state,
hablock_peer_role, hablock_connection_state, hablock_replication_state.
Gauges: hablock_out_of_sync_bytes, hablock_resync_{total,done}_bytes,
hablock_resync_rate_bytes_per_second, hablock_resync_running,
hablock_verify_{total,done}_bytes, hablock_volume_size_bytes,
hablock_split_brain, hablock_crashed_primary, hablock_lost_cache,
hablock_metadata_unsaved_chunks. Counters: hablock_writes_total,
hablock_written_bytes_total, hablock_replication_sent_bytes_total,
hablock_resync_bytes_total, hablock_local_io_errors_total,
hablock_metadata_write_failures_total. With a witness:
hablock_failover_epoch, _quorum, _io_suspended, _record_primary{primary},
_record_up_to_date{member}, _heartbeat_age_seconds{member},
_heartbeat_max_gap_seconds{member}, _member_serf_state{member,state},
_member_epoch{member}, _own_stalls_total, _own_max_stall_seconds. Plus
the Go runtime's go_* and the process's process_* series. Example alert:
hablock_disk_state{state!="UpToDate"} == 1 for 5m.

Profiling: with HABLOCK_PPROF=ADDR (for example 127.0.0.1:6060) in the
environment the agent also serves Go's net/http/pprof handlers on ADDR
(/debug/pprof/...; no authentication, so keep ADDR on loopback). Off by
default.

Automatic failover: a resource with a witness (its "witness" section;
run "hablock agent --node W" on the witness too) fails over by itself.
Each node runs the failover manager (package failover): UDP heartbeats
every failover.heartbeat-interval, serf membership, and a quorum record
(epoch, Primary, up-to-date disks) agreed by two of the three nodes and
persisted before anyone acts on it. Then:
  - the Primary's engine runs with fencing: when it loses its peer it
    holds writes (neither acknowledged nor failed) until a majority has
    recorded the peer outdated, and suspends I/O when it hears neither
    peer nor witness;
  - the Secondary takes over when the Primary has been silent for
    failover.heartbeat-timeout, only if the witness does not hear it
    either and only with an UpToDate disk listed in the record: it
    promotes, starts the iSCSI target, adds iscsi.vip (gratuitous ARP)
    and resets the initiators' old connections (tickle ACK);
  - a node that comes back after being replaced learns the new epoch,
    stays or becomes Secondary and resyncs from the new Primary (bitmap
    and activity log, never a blind full sync);
  - "hablock switchover" moves the role in a planned way; "hablock
    primary" takes it through a vote; "hablock secondary" is refused.
Without a witness, failover is manual ("hablock primary"/"secondary").
A stale iscsi.vip left on the interface by a killed agent is removed at
start, before the node is heard.

Examples:
  hablock create-md --config /etc/hablock/r0.conf --node n1
  hablock agent --config /etc/hablock/r0.conf --node n1
  # on the node whose data wins, the first time:
  hablock primary --config /etc/hablock/r0.conf --node n1 --force

Flags:
`

func runAgent(args []string, stdout, stderr io.Writer) error {
	var (
		cfgPath, nodeName, logLevel, logFormat string
		metricsAddr                            string
		noConnect                              bool
		grace                                  time.Duration
		procs                                  int
	)
	fs := newFlags("agent", agentHelp, stdout, stderr)
	fs.StringVar(&cfgPath, "config", "", "resource file `path` (required)")
	fs.StringVar(&nodeName, "node", "", "this node's `name` in the resource file (required)")
	fs.BoolVar(&noConnect, "no-connect", false, "do not connect to the peer at start (then: hablock connect)")
	fs.DurationVar(&grace, "shutdown-grace", 5*time.Second, "on SIGINT/SIGTERM, how long iSCSI sessions get to log out")
	fs.StringVar(&logLevel, "log-level", "info", "log `level`: debug, info, warn, error")
	fs.StringVar(&logFormat, "log-format", "text", "log `format`: text or json")
	fs.StringVar(&metricsAddr, "metrics", "", "serve Prometheus metrics on GET /metrics at `host:port` (no authentication: a loopback or management address); off when empty (the series: see Metrics above)")
	fs.IntVar(&procs, "procs", 0, "CPUs the Go runtime may use at once (GOMAXPROCS). 0: half the machine's CPUs, at least 1, unless $GOMAXPROCS is set (as for hablock export: idle runtime threads spin and take cores from the kernel's network and page-cache work)")
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	if procs < 0 {
		return usageErrorf("--procs: %d is negative", procs)
	}
	if err := requireConfigNode(cfgPath, nodeName); err != nil {
		return err
	}
	log, err := newLogger(stderr, logLevel, logFormat)
	if err != nil {
		return usageErrorf("%v", err)
	}
	if metricsAddr != "" {
		if _, _, err := net.SplitHostPort(metricsAddr); err != nil {
			return usageErrorf("--metrics %q: want host:port, e.g. 127.0.0.1:9877", metricsAddr)
		}
	}
	if res, err := config.Load(cfgPath); err == nil && res.IsWitness(nodeName) {
		return runWitness(res, nodeName, cfgPath, metricsAddr, log) // the diskless quorum member: cmd/hablock/witness.go
	}
	setProcs(procs)
	if addr := os.Getenv("HABLOCK_PPROF"); addr != "" {
		stopPprof, err := servePprof(addr, log)
		if err != nil {
			return err
		}
		defer stopPprof()
	}
	res, node, err := loadNode(cfgPath, nodeName)
	if err != nil {
		return err
	}
	peer, err := res.Peer(node.Name)
	if err != nil {
		return err
	}
	a, err := openAgent(res, node, peer, cfgPath, log)
	if err != nil {
		return err
	}
	defer a.close(grace)
	if err := a.openVIP(); err != nil {
		return err
	}
	if err := a.startFailover(); err != nil {
		return err
	}
	defer a.stopFailover() // before close: no decision while shutting down

	adminLn, err := admin.Listen(node.Admin)
	if err != nil {
		return err
	}
	srv := admin.NewServer(a, a.log)
	stopMetrics, err := serveMetrics(metricsAddr, res.Name, node.Name, a.Status, a.log)
	if err != nil {
		return err
	}
	defer stopMetrics()
	adminDone := make(chan error, 1)
	go func() { adminDone <- srv.Serve(adminLn) }()
	defer func() {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		if srv.Shutdown(ctx) != nil {
			srv.Close()
		}
	}()

	if !noConnect {
		a.Connect(context.Background(), false)
	}
	st := a.Status(context.Background())
	a.events.Append(admin.Event{Source: "agent", Kind: "start", Reason: fmt.Sprintf("agent running: role %s, disk %s, connection %s, out of sync %s",
		st.Role, st.Disk, st.Connection, units.FormatSize(int64(st.OutOfSyncBytes)))})
	log.Info("agent running", "resource", res.Name, "node", node.Name, "admin", node.Admin, "peer_address", a.peerAddrLog(),
		"role", st.Role, "disk", st.Disk, "size", units.FormatSize(st.Size), "uuid", st.UUID)

	sigs := make(chan os.Signal, 2)
	signal.Notify(sigs, syscall.SIGINT, syscall.SIGTERM)
	defer signal.Stop(sigs)
	select {
	case sig := <-sigs:
		log.Info("shutting down", "node", node.Name, "signal", sig.String())
	case err := <-adminDone:
		if !errors.Is(err, http.ErrServerClosed) {
			return fmt.Errorf("admin socket: %w", err)
		}
	}
	return nil
}

// agent is one node of a resource: the replication Volume over the
// backing store, its metadata, the peer link and, while Primary, the
// iSCSI export. It implements admin.Node.
type agent struct {
	res        *config.Resource
	node, peer config.Node
	cfgPath    string
	log        *slog.Logger // with the node attribute
	engineLog  *slog.Logger // without it: the engine adds its own
	store      *meta.Store
	id         meta.Identity
	dev        *blockdev.File
	rcfg       replication.Config
	epoch      uint64
	// crashPending: this node crashed as Primary and has not connected
	// since; the crashed-primary flag stays persisted until it has (the
	// handshake's decision needs it, DRBD rule 40), even across a clean
	// stop before then.
	crashPending atomic.Bool
	// lostPending: the machine restarted under this node (see
	// checkRestart) and it has not connected since; FlagLostCache stays
	// persisted until it has, like crashPending.
	lostPending atomic.Bool
	peerLn      *net.TCPListener // nil on the dialing side
	persist     *persister
	// events is the node's event stream (hablock events): the engine's
	// transitions, the failover manager's events, the agent's own.
	events *admin.EventLog
	al     *activityLog

	// ctx ends when the agent closes; background work (Run, Verify)
	// derives from it.
	ctx    context.Context
	cancel context.CancelFunc
	wg     sync.WaitGroup

	// opMu serialises admin operations (role changes, connect).
	opMu sync.Mutex
	// syncMu orders sync (persisting the volume's flags) against
	// replacing the volume, so flags of a stopped volume are never
	// written over those of its successor.
	syncMu sync.Mutex

	mu        sync.Mutex // guards the fields below
	vol       *replication.Volume
	runCancel context.CancelFunc // nil when not connecting
	runDone   chan struct{}
	// refuseCancel stops the loop that refuses the peer's connections
	// while StandAlone (accepting side only); nil when not running.
	refuseCancel context.CancelFunc
	refuseDone   chan struct{}
	// operatorDisconnected: `hablock disconnect` is in effect (cleared by
	// connect); runEnded: when the connection loop last gave up;
	// lastKick: when reviveLink last restarted it.
	operatorDisconnected bool
	runEnded, lastKick   time.Time
	exp                  *exporter
	vip                  *failover.VIP     // nil without iscsi.vip
	tickler              *failover.Tickler // nil without iscsi.vip
	// mgr is the failover manager: nil without a witness (manual
	// failover). Set once before the peer link starts; read by engine
	// hooks on their own goroutines.
	mgr       atomic.Pointer[failover.Manager]
	verifying bool
	verifyAt  time.Time
	verifyRes *admin.VerifyResult
}

var _ admin.Node = (*agent)(nil)

func openAgent(res *config.Resource, node, peer config.Node, cfgPath string, log *slog.Logger) (*agent, error) {
	mopts := meta.DefaultOptions()
	mopts.Logger = log
	store, err := meta.Open(node.MetaDir, mopts)
	if err != nil {
		if errors.Is(err, meta.ErrNoMetadata) {
			return nil, fmt.Errorf("no metadata in %s: run `hablock create-md --config %s --node %s` first", node.MetaDir, cfgPath, node.Name)
		}
		return nil, err
	}
	if path := os.Getenv("HABLOCK_FAULT_METADATA"); path != "" {
		log.Warn("fault injection: metadata writes fail while the file exists", "file", path)
		store.SetWriteFault(func() error {
			if _, err := os.Stat(path); err == nil {
				return fmt.Errorf("fault injected by $HABLOCK_FAULT_METADATA (%s exists)", path)
			}
			return nil
		})
	}
	a := &agent{res: res, node: node, peer: peer, cfgPath: cfgPath, log: log.With("node", node.Name), engineLog: log, store: store,
		events: admin.NewEventLog(0)}
	ok := false
	defer func() {
		if !ok {
			a.closeResources()
		}
	}()
	if a.id, err = store.Identity(); err != nil {
		return nil, err
	}
	switch {
	case a.id.Resource != res.Name || a.id.Node != node.Name:
		return nil, fmt.Errorf("metadata in %s belongs to resource %s node %s, not %s node %s (was meta-dir copied?)",
			node.MetaDir, a.id.Resource, a.id.Node, res.Name, node.Name)
	case a.id.BlockSize != int(res.BlockSize):
		return nil, fmt.Errorf("%s: block-size %d differs from the metadata's %d (%s); block-size cannot change after create-md",
			cfgPath, res.BlockSize, a.id.BlockSize, node.MetaDir)
	case res.Size != 0 && res.Size != a.id.Size:
		return nil, fmt.Errorf("%s: size %d differs from the metadata's %d (%s); the size cannot change after create-md",
			cfgPath, res.Size, a.id.Size, node.MetaDir)
	}
	mst, err := store.State()
	if err != nil {
		return nil, err
	}
	a.epoch = mst.Epoch
	// Buffered I/O (no O_DIRECT), as 'hablock export' by default: the
	// LUN reports a volatile write cache (WCE=1), so a write may complete
	// once it is in the page cache of both nodes (protocol C: the peer
	// acks after its pwrite returned). SYNCHRONIZE CACHE and FUA reach
	// Volume.Flush, which completes only after both nodes fdatasync'ed
	// (the Flush message is ordered after every write sent before it):
	// DRBD's semantics over disks with caches. A killed agent loses
	// nothing (the page cache belongs to the kernel); a node losing power
	// loses at most what the initiator had not flushed, like a disk's
	// cache. The benchmark's standalone baseline runs in this same mode.
	if a.dev, err = blockdev.OpenFile(node.Backing, blockdev.FileOptions{Size: a.id.Size}); err != nil {
		return nil, fmt.Errorf("backing store: %w", err)
	}
	if a.rcfg, err = replicationConfig(res, a.id.Size); err != nil {
		return nil, err
	}
	bm, err := replication.NewBitmap(uint64(a.id.Size), a.rcfg.BlockSize)
	if err != nil {
		return nil, err
	}
	if a.persist, err = newPersister(store, bm, a.log); err != nil {
		return nil, err
	}
	a.persist.events = a.events
	a.persist.durable = a.dev.Flush
	crashed := mst.Gen.Flags.Has(meta.FlagCrashedPrimary)
	alExtents, err := a.openActivityLog(crashed)
	if err != nil {
		return nil, err
	}
	lost, err := a.checkRestart(mst.Gen)
	if err != nil {
		return nil, err
	}
	st := replication.State{
		VolumeUUID:     a.id.UUID,
		NodeName:       node.Name,
		Role:           replication.RoleSecondary,
		Disk:           diskFromFlags(mst.Gen.Flags),
		GI:             replication.GenIDs{Current: mst.Gen.Current, Bitmap: mst.Gen.Bitmap, History: mst.Gen.History},
		Bitmap:         a.persist.snapshot(),
		CrashedPrimary: crashed,
		ActivityLog:    alExtents,
		LostCache:      lost,
	}
	if st.GI.Current == 0 {
		st.GI = replication.NewGenIDs()
	}
	// Always start Secondary, as DRBD does: which node is Primary is the
	// operator's or the failover manager's decision, never a leftover of
	// how this process last stopped. A crashed Primary keeps the
	// crashed-primary flag (persisted until a connection is established,
	// see crashPending) and its activity log, applied above.
	a.crashPending.Store(crashed)
	a.lostPending.Store(lost)
	if mst.Role == meta.Primary {
		how := "a clean stop"
		if crashed {
			how = "a crash"
		}
		a.log.Warn("was Primary before "+how+"; starting Secondary: promote with `hablock primary` if this node should serve",
			"crashed_primary", crashed)
		if err := a.persist.setRole(meta.Secondary); err != nil {
			return nil, err
		}
	}
	a.vol, err = a.newVolume(st)
	if err != nil {
		return nil, err
	}
	if peer.Name > node.Name {
		// The node whose name sorts first dials; this one accepts.
	} else {
		addr, err := net.ResolveTCPAddr("tcp", node.Address)
		if err != nil {
			return nil, fmt.Errorf("node %s address %s: %w", node.Name, node.Address, err)
		}
		if a.peerLn, err = net.ListenTCP("tcp", addr); err != nil {
			return nil, fmt.Errorf("node %s: listen for the peer: %w", node.Name, err)
		}
	}
	a.ctx, a.cancel = context.WithCancel(context.Background())
	a.wg.Add(1)
	go a.watch()
	ok = true
	return a, nil
}

// dialer reports whether this node dials the peer (else it accepts).
func (a *agent) dialer() bool { return a.peer.Name > a.node.Name }

func (a *agent) peerAddrLog() string {
	if a.dialer() {
		return "dial " + a.peer.Address
	}
	return "listen " + a.peerLn.Addr().String()
}

func (a *agent) newVolume(st replication.State) (*replication.Volume, error) {
	v, err := replication.NewVolume(a.dev, st, a.rcfg, a.engineLog)
	if err != nil {
		return nil, err
	}
	v.SetHooks(replication.Hooks{
		OnGenIDs:       a.persist.genIDs,
		OnDiskState:    a.persist.diskState,
		OnBitmapDirty:  a.persist.dirty,
		OnBitmapMerged: a.persist.merged,
		OnBitmapClean:  a.persist.clean,
		OnPeerLost:     a.notifyFailover,
		BeforeWrite:    a.al.before,
		AfterWrite:     a.al.after,
		OnTransition: func(t replication.Transition) {
			a.events.Append(admin.Event{Source: "replication", Kind: t.Kind, From: t.From, To: t.To, Reason: t.Reason})
		},
	})
	return v, nil
}

// Events implements admin.EventSource.
func (a *agent) Events() *admin.EventLog { return a.events }

// serveMetrics serves a node's Prometheus metrics on addr (--metrics)
// until the returned function is called; with addr empty it does
// nothing.
func serveMetrics(addr, resource, node string, status metrics.StatusFunc, log *slog.Logger) (func(), error) {
	if addr == "" {
		return func() {}, nil
	}
	ms, err := metrics.Listen(addr, resource, node, status, log)
	if err != nil {
		return nil, err
	}
	log.Info("serving metrics", "addr", ms.Addr().String(), "path", "/metrics")
	return func() { ms.Close() }, nil
}

// openActivityLog loads the persisted hot set into a new activity log.
// After a crash as Primary (crashed) the hot extents are first marked out
// of sync in the persisted bitmap, so they are resynced even if this node
// crashes again before it connects; the returned extents are for
// replication.State.ActivityLog. The persisted hot set itself stays as it
// is: Restore makes those extents hot and already persisted.
func (a *agent) openActivityLog(crashed bool) ([]replication.Extent, error) {
	cfg := meta.DefaultALConfig()
	al, err := meta.NewActivityLog(cfg)
	if err != nil {
		return nil, err
	}
	hot, err := a.store.LoadAL()
	if err != nil {
		return nil, fmt.Errorf("load activity log: %w", err)
	}
	a.al = &activityLog{store: a.store, al: al}
	a.al.cond = sync.NewCond(&a.al.mu)
	if !crashed || len(hot) == 0 {
		al.Restore(hot)
		return nil, nil
	}
	size := uint64(a.id.Size)
	var exts []replication.Extent
	for _, e := range hot {
		off := e * uint64(cfg.ExtentSize)
		if off >= size || off/uint64(cfg.ExtentSize) != e {
			continue
		}
		exts = append(exts, replication.Extent{Off: off, Len: min(uint64(cfg.ExtentSize), size-off)})
	}
	if err := a.persist.markOutOfSync(exts); err != nil {
		return nil, fmt.Errorf("apply activity log to the bitmap: %w", err)
	}
	al.Restore(hot)
	var bytes uint64
	for _, e := range exts {
		bytes += e.Len
	}
	a.log.Warn("crashed primary: activity log extents marked out of sync; they will be resynced with the bitmap",
		"extents", len(exts), "bytes", units.FormatSize(int64(bytes)))
	return exts, nil
}

// replicationConfig maps the resource file onto the engine's Config.
func replicationConfig(res *config.Resource, size int64) (replication.Config, error) {
	c := replication.DefaultConfig()
	switch res.Protocol {
	case config.ProtocolA:
		c.Protocol = replication.ProtocolA
	case config.ProtocolB:
		c.Protocol = replication.ProtocolB
	default:
		c.Protocol = replication.ProtocolC
	}
	// Bitmap granularity: 4 KiB when the size allows (a smaller bitmap),
	// else the logical block size; both nodes have the same size, so
	// they choose alike.
	if size%replication.DefaultBlockSize != 0 {
		c.BlockSize = res.BlockSize
	}
	n := res.Net
	c.PingInterval, c.PingTimeout, c.Timeout = n.PingInterval, n.PingTimeout, n.Timeout
	if c.Timeout <= c.PingTimeout {
		c.Timeout = c.PingTimeout + time.Second
	}
	c.ConnectRetryMin, c.ConnectRetryMax = n.ConnectRetryMin, n.ConnectRetryMax
	if n.ResyncRate > 0 {
		c.ResyncRate = n.ResyncRate
	} else {
		c.ResyncRate = 1 << 50 // "unlimited"
	}
	c.ResyncMinRate = min(c.ResyncMinRate, c.ResyncRate)
	sb, err := splitBrainPolicy(n.AfterSB0Pri, n.AfterSB1Pri)
	if err != nil {
		return c, err
	}
	c.SplitBrain = sb
	// With a witness, failover is automatic: a Primary that loses its
	// peer holds writes until a majority has recorded the peer outdated
	// (DRBD's fencing resource-only, with the quorum as fence-peer).
	c.Fencing = res.Witness != nil
	c.ResyncChecksums = n.CsumsAlg == "sha256"
	c.VerifyAlgo = replication.ChecksumSHA256
	if n.VerifyAlg == "crc32c" {
		c.VerifyAlgo = replication.ChecksumCRC32C
	}
	c.KoCount = n.KoCount
	return c, c.Validate()
}

func splitBrainPolicy(p0, p1 string) (replication.SplitBrainPolicy, error) {
	var p replication.SplitBrainPolicy
	found := false
	for v := replication.SB0Disconnect; v <= replication.SB0DiscardNode; v++ {
		if v.String() == p0 {
			p.After0Pri, found = v, true
		}
	}
	if !found {
		const prefix = "discard-node-"
		if len(p0) <= len(prefix) || p0[:len(prefix)] != prefix {
			return p, fmt.Errorf("net.after-sb-0pri %q: not a policy the engine knows", p0)
		}
		p.After0Pri, p.DiscardNode = replication.SB0DiscardNode, p0[len(prefix):]
	}
	found = false
	for v := replication.SB1Disconnect; v <= replication.SB1DiscardSecondary; v++ {
		if v.String() == p1 {
			p.After1Pri, found = v, true
		}
	}
	if !found {
		return p, fmt.Errorf("net.after-sb-1pri %q: not a policy the engine knows", p1)
	}
	return p, nil
}

// diskFromFlags is the disk state a node attaches with.
func diskFromFlags(f meta.GenFlags) replication.DiskState {
	switch {
	case !f.Has(meta.FlagConsistent):
		return replication.Inconsistent
	case f.Has(meta.FlagWasUpToDate):
		return replication.UpToDate
	}
	return replication.Outdated
}

// diskFlags are the flags that record the local disk state d.
func diskFlags(d replication.DiskState) meta.GenFlags {
	var f meta.GenFlags
	if d >= replication.Outdated && d != replication.DUnknown {
		f |= meta.FlagConsistent
	}
	if d == replication.UpToDate {
		f |= meta.FlagWasUpToDate
	}
	return f
}

func flagsFor(s replication.VolumeStatus, crashed, lost bool) meta.GenFlags {
	f := diskFlags(s.Disk)
	if s.PeerDisk == replication.Outdated {
		f |= meta.FlagPeerOutdated
	}
	if crashed {
		f |= meta.FlagCrashedPrimary
	}
	if lost {
		f |= meta.FlagLostCache
	}
	return f
}

func (a *agent) volume() *replication.Volume {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.vol
}

// watch persists the disk-state flags and the lazily cleaned bitmap
// chunks, and logs nothing itself (the engine logs each change).
//
// The disk-state flags (consistent, was-up-to-date) are persisted at once
// by Hooks.OnDiskState; this poll also records peer-outdated and the
// crashed-primary and lost-cache flags.
func (a *agent) watch() {
	defer a.wg.Done()
	t := time.NewTicker(watchInterval)
	defer t.Stop()
	for {
		select {
		case <-a.ctx.Done():
			return
		case <-t.C:
		}
		a.sync()
		a.reviveLink()
	}
}

const watchInterval = 500 * time.Millisecond

// sync persists the flags and pending bitmap chunks now.
func (a *agent) sync() {
	a.syncMu.Lock()
	defer a.syncMu.Unlock()
	s := a.volume().Status()
	if s.Connects > 0 {
		a.crashPending.Store(false) // the handshake has used it
		a.lostPending.Store(false)
	}
	a.persist.updateFlags(flagsFor(s, s.Role == replication.RolePrimary || a.crashPending.Load(), a.lostPending.Load()))
	if s.PeerDisk != replication.DUnknown {
		a.persist.setPeerDisk(s.PeerDisk.String())
	}
	a.persist.flush()
}

func replicationGen(g replication.GenIDs) meta.Generations {
	return meta.Generations{Current: g.Current, Bitmap: g.Bitmap, History: g.History}
}

// ---- admin.Node ----

func (a *agent) Status(context.Context) admin.Status {
	a.mu.Lock()
	v, running, verifying, verifyAt, vres := a.vol, a.runCancel != nil, a.verifying, a.verifyAt, a.verifyRes
	a.mu.Unlock()
	s := v.Status()
	conn := s.Conn.String()
	if !running && s.Conn == replication.Unconnected {
		conn = replication.StandAlone.String() // not trying: the agent is not running the link
	}
	out := admin.Status{
		Resource: a.res.Name, Node: a.node.Name, Peer: a.peer.Name,
		Role: s.Role.String(), Disk: s.Disk.String(), PeerRole: s.PeerRole.String(), PeerDisk: s.PeerDisk.String(),
		Connection: conn, Replication: s.Repl.String(), OutOfSyncBytes: s.OutOfSyncBytes,
		Epoch: a.epoch, Size: a.id.Size, UUID: a.id.UUID.String(), Engine: true,
		Counters: admin.Counters{Writes: s.Writes, BytesWritten: s.BytesWritten, BytesSent: s.BytesSent,
			ResyncBytes: s.ResyncBytes, LocalErrors: s.LocalErrors},
		LastError:      s.LastError,
		VerifyResult:   vres,
		CrashedPrimary: a.crashPending.Load() && s.Connects == 0,
		LostCache:      a.lostPending.Load() && s.Connects == 0,
	}
	if unsaved, failures, last := a.persist.unsavedChunks(); failures > 0 {
		out.Metadata = &admin.MetadataHealth{Failures: failures, UnsavedChunks: unsaved, LastError: last}
	}
	if m := a.mgr.Load(); m != nil {
		fs := m.Status()
		out.Failover = &fs
		out.Epoch = fs.Record.Epoch
	}
	if s.ResyncTotal > 0 {
		out.Sync = admin.NewProgress(s.ResyncDone, s.ResyncTotal, s.ResyncRate, s.Repl.IsResync(), s.ResyncPaused)
	}
	if s.VerifyTotal > 0 {
		rate := 0.0
		if el := time.Since(verifyAt).Seconds(); verifying && el > 0 {
			rate = float64(s.VerifyDone) / el
		}
		out.Verify = admin.NewProgress(s.VerifyDone, s.VerifyTotal, rate, verifying, false)
	}
	return out
}

// Connect starts the connection loop. With discardMyData (DRBD's connect
// --discard-my-data) this node gives up its changes if the handshake
// finds a split brain the after-sb policies leave unresolved: it becomes
// the sync target of the peer. The flag applies to the handshakes of this
// connect until one establishes a connection; a later connect without it
// clears it.
func (a *agent) Connect(_ context.Context, discardMyData bool) error {
	a.opMu.Lock()
	defer a.opMu.Unlock()
	a.mu.Lock()
	a.operatorDisconnected = false
	a.mu.Unlock()
	v := a.volume()
	if discardMyData {
		s := v.Status()
		switch {
		case s.Role == replication.RolePrimary:
			return fmt.Errorf("%w: this node is Primary; a node that discards its data becomes sync target, which a Primary cannot be: run `hablock secondary` on it first, then `hablock connect --discard-my-data`",
				admin.ErrConflict)
		case s.Conn == replication.Connected:
			return fmt.Errorf("%w: already connected to %s (replication %v): --discard-my-data applies only to a new connection's split-brain decision; run `hablock disconnect` first if you mean it",
				admin.ErrConflict, a.peer.Name, s.Repl)
		}
		a.log.Warn("connect with discard-my-data: if a split brain is found, this node's changes are discarded and it resyncs from the peer",
			"peer", a.peer.Name)
	}
	a.connectLocked(v, discardMyData)
	return nil
}

// connectLocked starts the connection loop of v with the discard-my-data
// flag set as asked (cleared again once connected); a.opMu held.
func (a *agent) connectLocked(v *replication.Volume, discardMyData bool) {
	v.SetDiscardMyData(discardMyData)
	a.startRunLocked()
	if !discardMyData {
		return
	}
	a.mu.Lock()
	done := a.runDone
	a.mu.Unlock()
	a.wg.Add(1)
	go func() {
		defer a.wg.Done()
		a.clearDiscardWhenConnected(v, done)
	}()
}

// clearDiscardWhenConnected clears the volume's discard-my-data flag once
// a connection is established (DRBD forgets it after the handshake), so
// that a later split brain is not resolved by this old decision. It gives
// up when the connection loop ends (the flag then waits for the next
// Connect, which sets it anew) or the agent closes.
func (a *agent) clearDiscardWhenConnected(v *replication.Volume, done <-chan struct{}) {
	t := time.NewTicker(50 * time.Millisecond)
	defer t.Stop()
	for {
		if v.Status().Conn == replication.Connected {
			v.SetDiscardMyData(false)
			a.log.Info("connected; discard-my-data cleared")
			return
		}
		select {
		case <-a.ctx.Done():
			return
		case <-done:
			return
		case <-t.C:
		}
	}
}

// startRunLocked starts the connection loop; a.opMu held.
func (a *agent) startRunLocked() {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.runCancel != nil {
		return
	}
	a.stopRefusingLocked()
	ctx, cancel := context.WithCancel(a.ctx)
	done := make(chan struct{})
	a.runCancel, a.runDone = cancel, done
	v := a.vol
	go func() {
		defer close(done)
		var err error
		if a.dialer() {
			err = v.Run(ctx, replication.Dialer(a.peer.Address))
		} else {
			err = v.RunAccepting(ctx, a.peerLn)
		}
		if ctx.Err() == nil && !errors.Is(err, replication.ErrClosed) {
			a.log.Error("peer link given up; run `hablock connect` to retry", "err", err)
		}
		a.mu.Lock()
		if a.runDone == done {
			a.runCancel, a.runDone = nil, nil
			a.runEnded = time.Now()
			if ctx.Err() == nil && err != nil {
				a.startRefusingLocked(v, err.Error())
			}
		}
		a.mu.Unlock()
	}()
}

// startRefusingLocked answers the peer's connections while this node,
// on the accepting side, runs no link (StandAlone after a fatal
// handshake): each gets the engine's StandAlone refusal with reason, so
// the peer stops redialing and says why. a.mu held.
func (a *agent) startRefusingLocked(v *replication.Volume, reason string) {
	if a.dialer() || a.refuseCancel != nil {
		return
	}
	ctx, cancel := context.WithCancel(a.ctx)
	done := make(chan struct{})
	a.refuseCancel, a.refuseDone = cancel, done
	accept := replication.Acceptor(a.peerLn)
	go func() {
		defer close(done)
		for {
			conn, err := accept(ctx)
			if err != nil {
				return
			}
			if err := v.RefuseConn(conn, reason); err != nil {
				a.log.Debug("refused a connection while StandAlone", "err", err)
			}
		}
	}()
}

// stopRefusingLocked stops startRefusingLocked's loop and waits for it;
// a.mu held.
func (a *agent) stopRefusingLocked() {
	if a.refuseCancel == nil {
		return
	}
	a.refuseCancel()
	<-a.refuseDone
	a.refuseCancel, a.refuseDone = nil, nil
}

func (a *agent) Disconnect(context.Context) error {
	a.opMu.Lock()
	defer a.opMu.Unlock()
	a.stopRunLocked()
	a.mu.Lock()
	a.operatorDisconnected = true
	a.mu.Unlock()
	return nil
}

// stopRunLocked stops the connection loop and waits for it; a.opMu held.
// It reports whether it was running.
func (a *agent) stopRunLocked() bool {
	a.mu.Lock()
	cancel, done := a.runCancel, a.runDone
	a.runCancel, a.runDone = nil, nil
	a.mu.Unlock()
	if cancel == nil {
		return false
	}
	cancel()
	<-done
	return true
}

func (a *agent) Primary(ctx context.Context, force bool) error {
	if m := a.mgr.Load(); m != nil {
		return a.primaryByVote(ctx, m, force)
	}
	a.opMu.Lock()
	defer a.opMu.Unlock()
	v := a.volume()
	s := v.Status()
	if s.Role == replication.RolePrimary {
		return a.startExport()
	}
	if s.Disk != replication.UpToDate {
		if !force {
			return fmt.Errorf("%w: local disk is %v, not UpToDate; `hablock primary --force` declares this node's data the good copy (the peer will be fully resynced from it)",
				admin.ErrConflict, s.Disk)
		}
		if s.PeerRole == replication.RolePrimary {
			return fmt.Errorf("%w: peer %s is Primary", admin.ErrConflict, a.peer.Name)
		}
		wasRunning, err := a.forceUpToDateLocked()
		if wasRunning {
			// Reconnect once promoted (or refused): a handshake started
			// before Promote would be refused as stale and redone.
			defer a.startRunLocked()
		}
		if err != nil {
			return err
		}
		v = a.volume()
	}
	// Record the role (and that a crash from now on is a crashed
	// Primary) before the first write can happen.
	s = v.Status()
	a.persist.updateFlags(flagsFor(s, true, a.lostPending.Load()))
	if err := a.persist.setRole(meta.Primary); err != nil {
		return err
	}
	if err := v.Promote(); err != nil {
		a.persist.setRole(meta.Secondary)
		if errors.Is(err, replication.ErrBusy) || errors.Is(err, replication.ErrNoGoodDisk) {
			return fmt.Errorf("%w: %w", admin.ErrConflict, err)
		}
		return err
	}
	a.sync()
	if err := a.startExport(); err != nil {
		v.Demote()
		a.persist.setRole(meta.Secondary)
		a.sync()
		return err
	}
	if a.vip != nil {
		if err := a.vip.Acquire(ctx); err != nil {
			return fmt.Errorf("primary, exporting, but the VIP %s could not be added: %w", a.res.ISCSI.VIP, err)
		}
	}
	return nil
}

// forceUpToDateLocked declares the local data the good copy: the volume
// is restarted UpToDate in a new generation, with every block marked out
// of sync so that the peer gets all of it. It stops the connection loop
// and reports whether it ran; the caller restarts it. a.opMu held.
//
// It restarts the volume rather than calling Volume.ForceUpToDate,
// which needs the link down: stopping the old volume tears a running
// link down with it. A metadata write that fails fails the force.
func (a *agent) forceUpToDateLocked() (wasRunning bool, err error) {
	wasRunning = a.stopRunLocked()
	a.syncMu.Lock()
	defer a.syncMu.Unlock()
	refuse := func(err error) (bool, error) {
		return wasRunning, fmt.Errorf("force: cannot record this node's data as the good copy (nothing changed): %w", err)
	}
	old := a.volume()
	// Record first, while the old volume still serves: a store that
	// cannot write leaves the node as it was. (With the link stopped and
	// the node Secondary, nothing changes the GIs meanwhile.)
	gi := old.GenIDs()
	gi.NewCurrent(freshGen())
	bm := old.Bitmap()
	bm.SetAll()
	a.persist.replace(bm)
	if err := a.persist.flushAll(); err != nil {
		return refuse(err)
	}
	st := replication.State{VolumeUUID: a.id.UUID, NodeName: a.node.Name, Role: replication.RoleSecondary,
		Disk: replication.UpToDate, GI: gi, Bitmap: a.persist.snapshot()}
	if err := a.persist.genIDs(gi); err != nil {
		return refuse(err)
	}
	if err := a.persist.setFlags(meta.FlagConsistent|meta.FlagWasUpToDate, replicationGen(gi)); err != nil {
		return refuse(err)
	}
	old.Stop()
	v, err := a.newVolume(st)
	if err != nil {
		return wasRunning, err
	}
	a.log.Warn("forced UpToDate: this node's data is now the good copy; the peer will be fully resynced", "gen", gi.String())
	a.events.Append(admin.Event{Source: "agent", Kind: "disk", From: old.Status().Disk.String(), To: replication.UpToDate.String(),
		Reason: "forced by the operator: this node's data is the good copy, the peer is fully resynced"})
	a.mu.Lock()
	a.vol = v
	a.mu.Unlock()
	return wasRunning, nil
}

func freshGen() uint64 {
	var b [8]byte
	rand.Read(b[:])
	return binary.BigEndian.Uint64(b[:])&^1 | 1<<2 // even (role bit clear), never zero
}

func (a *agent) Secondary(context.Context) error {
	if a.mgr.Load() != nil {
		return fmt.Errorf("%w: automatic failover is on (witness %s): a Primary demoted by hand would just be replaced; run `hablock switchover` to hand the role to %s",
			admin.ErrConflict, a.res.Witness.Name, a.peer.Name)
	}
	a.opMu.Lock()
	defer a.opMu.Unlock()
	if a.vip != nil {
		if err := a.vip.Release(); err != nil {
			a.log.Error("release VIP", "vip", a.res.ISCSI.VIP, "err", err)
		}
	}
	a.stopExport(5 * time.Second)
	v := a.volume()
	if err := v.Flush(); err != nil && !errors.Is(err, replication.ErrNotPrimary) {
		return fmt.Errorf("flush before demote: %w", err)
	}
	if err := v.Demote(); err != nil {
		return err
	}
	if err := a.persist.setRole(meta.Secondary); err != nil {
		return err
	}
	a.sync()
	return nil
}

// Invalidate discards this node's claim to current data (DRBD's
// invalidate): the disk becomes Inconsistent with every block out of
// sync, so the next connect resyncs all of it from the peer. Only while
// not connected and not Primary.
func (a *agent) Invalidate(context.Context) error {
	a.opMu.Lock()
	defer a.opMu.Unlock()
	v := a.volume()
	s := v.Status()
	switch {
	case s.Role == replication.RolePrimary:
		return fmt.Errorf("%w: this node is Primary and its data is what the initiators see: run `hablock secondary` first (and promote %s if it should serve), then invalidate",
			admin.ErrConflict, a.peer.Name)
	case s.Conn == replication.Connected || s.Conn == replication.Connecting:
		return fmt.Errorf("%w: connected to %s (%v): disconnect first (`hablock disconnect`), then invalidate, then `hablock connect` to receive a full resync",
			admin.ErrConflict, a.peer.Name, s.Conn)
	}
	if err := v.Invalidate(); err != nil {
		switch {
		case errors.Is(err, replication.ErrBusy):
			return fmt.Errorf("%w: %w: disconnect first (`hablock disconnect`), then invalidate", admin.ErrConflict, err)
		case errors.Is(err, replication.ErrNoGoodDisk):
			return fmt.Errorf("%w: %w: the local disk is detached; there is nothing to invalidate", admin.ErrConflict, err)
		}
		return err
	}
	a.sync() // persist Inconsistent now, not up to watchInterval late
	a.log.Warn("invalidated: local data is Inconsistent; the next connect resyncs all of it from the peer",
		"out_of_sync", units.FormatSize(int64(v.Status().OutOfSyncBytes)))
	return nil
}

func (a *agent) Verify(_ context.Context, repair bool) error {
	a.opMu.Lock()
	defer a.opMu.Unlock()
	v := a.volume()
	if s := v.Status(); s.Conn != replication.Connected || s.Repl != replication.Established {
		return fmt.Errorf("%w: verify needs an Established connection (connection %v, replication %v)", admin.ErrConflict, s.Conn, s.Repl)
	}
	a.mu.Lock()
	if a.verifying {
		a.mu.Unlock()
		return fmt.Errorf("%w: a verify is running", admin.ErrConflict)
	}
	a.verifying, a.verifyAt = true, time.Now()
	a.mu.Unlock()
	started := make(chan error, 1)
	a.wg.Add(1)
	go func() {
		defer a.wg.Done()
		res, err := v.Verify(a.ctx, repair)
		select {
		case started <- err:
		default:
		}
		r := &admin.VerifyResult{Finished: time.Now(), CheckedBytes: res.Checked, Repair: repair}
		for _, e := range res.OutOfSync {
			r.OutOfSyncBytes += e.Len
		}
		if err != nil {
			r.Error = err.Error()
		}
		a.log.Info("verify finished", "checked", r.CheckedBytes, "out_of_sync", r.OutOfSyncBytes, "repair", repair, "err", err)
		a.mu.Lock()
		a.verifying, a.verifyRes = false, r
		a.mu.Unlock()
	}()
	// Report an immediate refusal (busy, not connected) to the caller.
	select {
	case err := <-started:
		if err != nil {
			if errors.Is(err, replication.ErrBusy) || errors.Is(err, replication.ErrNotConnected) || errors.Is(err, replication.ErrNotPrimary) {
				return fmt.Errorf("%w: %w", admin.ErrConflict, err)
			}
			return err
		}
	case <-time.After(100 * time.Millisecond):
		select {
		case started <- nil: // the goroutine's later send now goes nowhere
		default:
		}
	}
	return nil
}

func (a *agent) PauseSync(context.Context) error {
	a.volume().PauseResync()
	return nil
}

func (a *agent) ResumeSync(context.Context) error {
	a.volume().ResumeResync()
	return nil
}

// ---- iSCSI export (Primary only) ----

type exporter struct {
	srv    *iscsi.Server
	target *scsi.Target
	done   chan error
}

// startExport serves the volume over iSCSI if it is not served yet.
func (a *agent) startExport() error {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.exp != nil {
		return nil
	}
	cfg := iscsi.DefaultConfig()
	cfg.Logger = a.log
	target := scsi.NewTarget(a.res.ISCSI.IQN, a.log)
	if err := target.AddLUN(0, scsi.LUConfig{Device: a.vol, BlockSize: a.res.BlockSize, UUID: a.id.UUID, WriteCache: true}); err != nil {
		return fmt.Errorf("iscsi lun: %w", err)
	}
	srv, err := iscsi.NewServer(cfg)
	if err != nil {
		target.Close()
		return err
	}
	if err := srv.AddTarget(a.res.ISCSI.IQN, target); err != nil {
		target.Close()
		return err
	}
	ln, err := net.Listen("tcp", a.res.ISCSI.Listen)
	if err != nil {
		target.Close()
		return fmt.Errorf("iscsi.listen %s: %w", a.res.ISCSI.Listen, err)
	}
	e := &exporter{srv: srv, target: target, done: make(chan error, 1)}
	go func() { e.done <- srv.Serve(ln) }()
	a.exp = e
	a.log.Info("exporting volume", "iqn", a.res.ISCSI.IQN, "lun", 0, "listen", ln.Addr().String())
	return nil
}

func (a *agent) stopExport(grace time.Duration) {
	a.mu.Lock()
	e := a.exp
	a.exp = nil
	a.mu.Unlock()
	if e == nil {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), grace)
	defer cancel()
	if err := e.srv.Shutdown(ctx); err != nil {
		a.log.Warn("iSCSI sessions did not log out in time; closed them", "err", err)
		e.srv.Close()
	}
	e.target.Close()
	<-e.done
	a.log.Info("iSCSI export stopped")
}

// ---- shutdown ----

func (a *agent) close(grace time.Duration) {
	a.closeVIP()
	a.stopExport(grace)
	v := a.volume()
	if v.Status().Role == replication.RolePrimary {
		// Flush both disks while the link is still up. With fencing a
		// Primary without its peer holds a flush until the peer is
		// fenced, which nobody will do now: bound the wait; Stop then
		// abandons it, and the local disk is flushed below.
		flushed := make(chan error, 1)
		go func() { flushed <- v.Flush() }()
		select {
		case err := <-flushed:
			if err != nil {
				a.log.Error("final flush", "err", err)
			}
		case <-time.After(grace):
			a.log.Warn("final flush held (peer lost, not fenced); stopping without it", "waited", grace)
		}
	}
	a.opMu.Lock()
	a.stopRunLocked()
	a.opMu.Unlock()
	v.Stop()
	flushErr := a.dev.Flush()
	if flushErr != nil {
		a.log.Error("flush the backing store", "err", flushErr)
	}
	a.cancel()
	a.wg.Wait()
	a.sync()
	// A clean stop is not a crash: clear crashed-primary (the role is kept),
	// unless an earlier crash has not been resolved by a connect yet.
	s := v.Status()
	a.persist.setFlags(flagsFor(s, a.crashPending.Load(), a.lostPending.Load()), replicationGen(s.GI))
	if flushErr == nil {
		// Everything written is on the disk: a machine restart from
		// now on loses nothing of this node's (see checkRestart).
		if err := a.store.ClearRunning(); err != nil {
			a.log.Error("record the clean stop", "err", err)
		}
	}
	a.closeResources()
	a.log.Info("stopped")
}

func (a *agent) closeResources() {
	if a.peerLn != nil {
		a.peerLn.Close()
	}
	if a.dev != nil {
		if err := a.dev.Close(); err != nil {
			a.log.Error("close backing store", "err", err)
		}
	}
	if a.store != nil {
		a.store.Close()
	}
}

// bootIDPath is where Linux exposes the ID of the current boot.
const bootIDPath = "/proc/sys/kernel/random/boot_id"

// bootID identifies this boot of the machine. $HABLOCK_BOOT_ID replaces
// it: a fault-injection hook with which tests simulate a machine restart
// (power loss) without rebooting.
func bootID() (string, error) {
	if id := os.Getenv("HABLOCK_BOOT_ID"); id != "" {
		return id, nil
	}
	b, err := os.ReadFile(bootIDPath)
	if err != nil {
		return "", fmt.Errorf("machine boot ID: %w", err)
	}
	return strings.TrimSpace(string(b)), nil
}

// checkRestart finds out whether the machine restarted while this node
// ran: the metadata says the node did not stop cleanly (its running
// record is there) and that it ran under another boot. Then its page
// cache is gone, and with it every write the node had completed (and
// acknowledged) but not yet flushed: anywhere on the disk, not only in
// the activity log's extents. The node then reports LostCache in its
// handshake and resyncs the whole volume (see replication.State), and
// FlagLostCache is persisted until it has connected, so another crash
// before then does not forget it. A process that merely died (same
// boot) lost nothing: the kernel still writes its page cache back.
// Finally the running record is rewritten with this boot's ID.
func (a *agent) checkRestart(gen meta.Generations) (bool, error) {
	boot, err := bootID()
	if err != nil {
		return false, err
	}
	prev, running, err := a.store.Running()
	if err != nil {
		return false, err
	}
	lost := gen.Flags.Has(meta.FlagLostCache)
	if running && prev != boot {
		lost = true
		a.log.Error("the machine restarted while this node was running (power loss or kernel crash): writes it had not flushed "+
			"may be missing anywhere on its disk; the whole volume is marked out of sync and will be resynced "+
			"(from the peer, unless this node's data is the newer)", "previous_boot", prev, "boot", boot)
	}
	switch {
	case lost && !gen.Flags.Has(meta.FlagLostCache):
		// Through the persister, whose view of the stored flags must
		// stay exact (it skips writes that change nothing).
		if err := a.persist.setFlags(gen.Flags|meta.FlagLostCache, gen); err != nil {
			return false, err
		}
	case lost:
		a.log.Warn("the machine restarted under this node earlier and it has not connected since: "+
			"the whole volume is still marked out of sync", "boot", boot)
	}
	if err := a.store.SetRunning(boot); err != nil {
		return false, err
	}
	return lost, nil
}

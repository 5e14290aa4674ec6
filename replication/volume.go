package replication

import (
	"crypto/rand"
	"encoding/binary"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hablock/hablock/blockdev"
)

// Errors of the replication engine, wrapped with context (%w).
var (
	// ErrSplitBrain: both nodes wrote independently and the policy did
	// not resolve it; the connection is given up (StandAlone).
	ErrSplitBrain = errors.New("replication: split brain")
	// ErrUnrelated: the nodes' generations share no history.
	ErrUnrelated = errors.New("replication: unrelated data")
	// ErrVolumeMismatch: the peer serves another volume (UUIDs differ).
	ErrVolumeMismatch = errors.New("replication: volume UUID mismatch")
	// ErrIncompatible: protocol versions, replication protocol, size,
	// block size or node names do not fit. (Two Primaries are a split
	// brain: ErrSplitBrain.)
	ErrIncompatible = errors.New("replication: incompatible peer")
	// ErrNoUpToDateSource: a resync is needed but its source has no
	// consistent data.
	ErrNoUpToDateSource = errors.New("replication: no up-to-date sync source")
	// ErrRRConflict: the decision would make our Primary a sync target
	// (DRBD's rr-conflict=disconnect): its data would be overwritten
	// under the initiator. Demote it first.
	ErrRRConflict = errors.New("replication: primary would become sync target")
	// ErrPeerGone: the link to the peer died (timeout, close, error).
	ErrPeerGone = errors.New("replication: peer gone")
	// ErrProtocol: the peer violated the protocol (garbage, bad CRC,
	// unknown or unexpected message); the link was closed.
	ErrProtocol = errors.New("replication: protocol violation")
	// ErrNotPrimary: I/O on a node that is not Primary.
	ErrNotPrimary = errors.New("replication: not primary")
	// ErrNoGoodDisk: neither the local disk nor the peer could serve
	// the request.
	ErrNoGoodDisk = errors.New("replication: no usable disk")
	// ErrBusy: a link is already established, or a verify is running.
	ErrBusy = errors.New("replication: busy")
	// ErrClosed: the volume was closed.
	ErrClosed = errors.New("replication: volume closed")
	// ErrNotConnected: the operation needs a connected peer.
	ErrNotConnected = errors.New("replication: not connected")
	// ErrMetadata: the caller's hook could not record the out-of-sync
	// bitmap, the GIs or the disk state durably (OnBitmapDirty,
	// OnBitmapMerged, OnGenIDs or OnDiskState failed). A write that
	// would have needed the record fails with nothing written.
	ErrMetadata = errors.New("replication: metadata not recorded")
)

// ProtoVersion is the replication protocol version this code speaks
// (Handshake.MinProto..MaxProto).
const ProtoVersion = 1

// Handshake.Features carries the replication protocol in its low two
// bits; both nodes must agree.
const featureProtoMask = 3

// State is a volume's persistent identity and replication state, as
// loaded from the metadata store at attach time.
type State struct {
	VolumeUUID blockdev.UUID
	// NodeName identifies this node to the peer (1..MaxNodeName bytes,
	// different from the peer's).
	NodeName string
	// Role at start: RolePrimary serves I/O, RoleSecondary applies the
	// peer's writes.
	Role Role
	// Disk is the local data's state: UpToDate, Consistent, Outdated or
	// Inconsistent.
	Disk DiskState
	GI   GenIDs
	// Bitmap is the persisted out-of-sync bitmap (nil: all clean). Its
	// geometry must match the device and Config.BlockSize. The volume
	// owns it afterwards.
	Bitmap *Bitmap
	// CrashedPrimary: the node was Primary when it went down without a
	// clean demote or stop (the caller persists this flag while Primary
	// and clears it on Demote or a clean stop). It is sent in the
	// handshake: with the same generation on both sides, the crashed
	// Primary becomes the bitmap sync source (Decide, rule 40).
	CrashedPrimary bool
	// ActivityLog, read only when CrashedPrimary, is the activity log's
	// hot extents as persisted when the node went down (see
	// Hooks.BeforeWrite): the only places where a write may have reached
	// the local disk and not the peer. NewVolume marks them out of sync
	// in Bitmap (DRBD applies its activity log to the bitmap on attach),
	// so the connect-time bitmap exchange resyncs them too: from the peer
	// if it was promoted and wrote meanwhile (its bitmap is then merged
	// with ours, and the union is resynced to this node), or to the peer
	// if this node is the sync source. The engine reports these bits
	// through OnBitmapDirty only at that connect, so a caller that must
	// survive another crash before then persists them in its bitmap
	// first (as the agent does), or keeps the CrashedPrimary flag and the
	// activity log until the resync ends.
	ActivityLog []Extent
	// LostCache: the node's machine restarted (power loss, kernel crash)
	// while the node ran, so writes it completed but had not flushed
	// (in the page cache, or a disk's volatile cache) may be missing
	// from its disk, anywhere on it. NewVolume marks the whole bitmap
	// out of sync, and the flag goes in the handshake: with the same
	// generation on both sides this node becomes the sync target (Decide,
	// rule 40), so every block is resynced from the peer (with
	// Config.ResyncChecksums only those that differ travel); when the
	// generations say this node is the source, the peer gets all of it.
	// The caller persists the full bitmap before it lets the node
	// connect, and the flag until a connection was established.
	LostCache bool
	// DiscardMyData: see SetDiscardMyData.
	DiscardMyData bool
}

// Hooks let the caller persist what must survive a crash. OnGenIDs,
// OnBitmapDirty and OnBitmapClean run synchronously, under the volume's
// state lock: keep them short and do not call back into the Volume.
// BeforeWrite and AfterWrite (the activity log) run outside it.
type Hooks struct {
	// OnGenIDs is called with the new GIs whenever they change, before
	// anything is done in the new generation. An error is counted as a
	// metadata error (VolumeStatus.MetadataErrors). When it refuses the
	// new generation of a Primary that goes on without its peer, the old
	// one is kept and the write that needed it fails (ErrMetadata): a
	// crash would otherwise restart the node in the peer's generation
	// with changes the peer lacks.
	OnGenIDs func(GenIDs) error
	// OnDiskState is called with the local disk state whenever it
	// changes, before anything is done in the new state (a resync
	// target is Inconsistent before the first resynced block is
	// written): persist it before returning, so that a crash never
	// restarts a half-synced disk as UpToDate. An error is counted as a
	// metadata error; when it refuses Inconsistent to a resync target,
	// the connect fails before any resynced block is written.
	OnDiskState func(DiskState) error
	// OnBitmapDirty is called when bytes [off, off+n) (whole blocks)
	// become out of sync, before the write that caused it completes.
	// An error says the bits are not durable: the engine then fails a
	// Primary's write that would have depended on them, before anything
	// of it is written, and keeps the activity-log extent of a write it
	// can no longer fail hot (AfterWrite is not called for it), so that
	// a crash before the caller records the bits still resyncs the
	// range. After a failure the next range marked out of sync makes
	// the engine report the whole bitmap again (OnBitmapMerged, or
	// OnBitmapDirty run by run) until that succeeds, since bits already
	// set in memory are no longer known to be durable. Each failure is
	// counted in VolumeStatus.MetadataErrors.
	OnBitmapDirty func(off, n uint64) error
	// OnBitmapMerged, when set, replaces the run-by-run OnBitmapDirty
	// calls with which the whole bitmap is reported at a connect (the
	// peer's bits merged in), invalidate or force: bm is the engine's
	// bitmap, to be read during the call only. A caller that persists
	// the bitmap in chunks then writes each chunk once, instead of once
	// per dirty run (thousands of synced writes inside the handshake's
	// timeout after a random write load). An error fails the connect
	// (or the invalidate or force) that reported the bitmap.
	OnBitmapMerged func(bm *Bitmap) error
	// OnBitmapClean is called when blocks of [off, off+n) become in sync
	// (resync progress). It may be persisted lazily: a persisted bit that
	// is set but should not be costs only a redundant resync, but without
	// it a crashed sync target restarts its resync from the beginning.
	// It must not be persisted before the data is durable: on a sync
	// target the resynced blocks are written, not flushed, when they are
	// reported clean, so flush the local device after taking the bits
	// and before writing them (the resync itself ends with a Flush of
	// the target, before the target becomes UpToDate).
	OnBitmapClean func(off, n uint64)

	// BeforeWrite and AfterWrite drive the caller's activity log (DRBD's
	// AL; blockdev/meta.ActivityLog is one). Unlike the hooks above they
	// are not called under the volume's lock but from the write path,
	// concurrently, and may block. Both nil: no activity log (then a
	// crashed Primary resyncs only what its bitmap recorded).
	//
	// BeforeWrite is called on the Primary for each piece of a WriteAt or
	// Discard, [off, off+n), before it is issued to the local disk or
	// sent to the peer. It must return only once every extent the range
	// touches is durably recorded hot (a synced metadata write when one
	// was cold). An error fails the piece with nothing written.
	//
	// AfterWrite is called exactly once for each successful BeforeWrite,
	// with the same range, once the piece can no longer differ between
	// the nodes without the bitmap saying so: the local write has
	// completed (or failed) and the peer has it on disk (protocol C:
	// its WriteAck; A and B: the BarrierAck of its epoch), or the range
	// was marked out of sync (OnBitmapDirty returned) because the peer
	// failed it, the link was lost, or there was none. It may run on a
	// link goroutine; it must not block for long nor call the Volume.
	BeforeWrite func(off, n uint64) error
	AfterWrite  func(off, n uint64)

	// OnTransition, when set, is called on every change of the role,
	// the peer's role, the disk and peer-disk states, the connection
	// and replication states and the GIs, under the volume's lock: it
	// must not block nor call the Volume (append to an event log).
	OnTransition func(Transition)

	// OnPeerLost is called when, with Config.Fencing on, a Primary
	// starts holding writes because its link to the peer dropped and the
	// peer is not fenced: the caller should get the peer fenced (then
	// SetPeerFenced(true)) or give up the Primary role (Demote). It is
	// called once per lost link, not under the volume's lock, possibly
	// from a link goroutine; it must not block (hand off to another
	// goroutine). Nil: none.
	OnPeerLost func()
}

// Transition is one state change, for Hooks.OnTransition.
type Transition struct {
	// Kind is role, peer-role, disk, peer-disk, connection,
	// replication or generation.
	Kind     string
	From, To string
	Reason   string
}

// transitionLocked reports a change to OnTransition; v.mu held.
func (v *Volume) transitionLocked(kind string, from, to fmt.Stringer, why string) {
	if v.hooks.OnTransition != nil {
		v.hooks.OnTransition(Transition{Kind: kind, From: from.String(), To: to.String(), Reason: why})
	}
}

// setPeerRoleLocked records the peer's role.
func (v *Volume) setPeerRoleLocked(r Role, why string) {
	if v.peerRole == r {
		return
	}
	from := v.peerRole
	v.peerRole = r
	v.transitionLocked("peer-role", from, r, why)
}

// alRef calls AfterWrite once both the local write and the peer's side
// of a piece are done (refs starts at 2).
type alRef struct {
	refs   atomic.Int32
	off, n uint64
	after  func(off, n uint64)
}

func newALRef(after func(off, n uint64), off, n uint64) *alRef {
	if after == nil {
		return nil
	}
	r := &alRef{off: off, n: n, after: after}
	r.refs.Store(2)
	return r
}

// release drops one reference; nil-safe.
func (r *alRef) release() {
	if r == nil {
		return
	}
	switch left := r.refs.Add(-1); {
	case left == 0:
		r.after(r.off, r.n)
	case left < 0:
		panic("replication: activity log reference released twice")
	}
}

// Volume is one node's replicated volume. On the Primary it implements
// blockdev.Device over the local device, replicating every write; on
// the Secondary it applies the peer's writes and refuses local I/O.
//
// Goroutines: Run (called by the owner) owns the connection loop; each
// connection runs a reader, a writer, a pinger and a resyncer goroutine
// owned by Attach, which waits for all of them before returning. The
// secondary's receiver starts one applier goroutine per received
// request, at most MaxInflightWrites at once.
type Volume struct {
	cfg   Config
	log   *slog.Logger
	dev   blockdev.Device
	size  uint64
	uuid  blockdev.UUID
	name  string
	hooks Hooks
	flags HandshakeFlags // under mu once Run starts (SetDiscardMyData)
	// connects counts established links (under mu; VolumeStatus.Connects).
	connects uint64

	// gate orders the connect-time exchange against the write path:
	// writes hold it shared from choosing the link to the end of the
	// local write; Attach holds it exclusively from the handshake to
	// the link's activation, so GIs and bitmap do not move under the
	// handshake and no write falls between "degraded" and "replicated".
	gate sync.RWMutex

	locks    rangeLocks
	inflight *inflights

	mu sync.Mutex // guards the fields below
	// INVARIANT: link != nil only while conn == Connected.
	link     *link
	role     Role
	peerRole Role
	disk     DiskState
	peerDisk DiskState
	conn     ConnState
	repl     ReplState
	gi       GenIDs
	peerGI   GenIDs
	peerName string
	bm       *Bitmap
	paused   bool
	pauseCh  chan struct{} // closed and replaced on resume
	closed   bool
	lastErr  string
	// metaErrors and lastMetaErr: metadata hook failures (VolumeStatus).
	metaErrors  uint64
	lastMetaErr string
	// metaUnrecorded: a bitmap hook failed and no whole-bitmap report
	// has succeeded since; bits set in memory may not be durable.
	metaUnrecorded bool
	// diskUnrecorded: OnDiskState failed for the current disk state.
	diskUnrecorded bool

	hold ioHold // fencing and I/O suspension (fence.go)

	resyncTotal, resyncDone uint64
	resyncStart, resyncEnd  time.Time
	verifyTotal, verifyDone uint64
	verifying               bool

	stop     chan struct{} // closed by Close
	stopOnce sync.Once
	// afterStopSignal, set only by tests, runs in Stop right after stop
	// is closed (the link's watch goroutine may tear the link down then).
	afterStopSignal func()

	writes, bytesWritten, bytesSent, resyncBytes, localErrors atomic.Uint64
}

var _ blockdev.Device = (*Volume)(nil)

// NewVolume wraps dev. It does not connect: call Run or Attach.
func NewVolume(dev blockdev.Device, st State, cfg Config, log *slog.Logger) (*Volume, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	if st.NodeName == "" || len(st.NodeName) > MaxNodeName {
		return nil, fmt.Errorf("%w: NodeName %q", ErrInvalidConfig, st.NodeName)
	}
	if st.Role != RolePrimary && st.Role != RoleSecondary {
		return nil, fmt.Errorf("%w: Role %v", ErrInvalidConfig, st.Role)
	}
	size := uint64(dev.Size())
	bs := cfg.blockSize()
	if size == 0 || size%uint64(bs) != 0 {
		return nil, fmt.Errorf("%w: device size %d not a multiple of BlockSize %d", ErrInvalidConfig, size, bs)
	}
	bm := st.Bitmap
	if bm == nil {
		var err error
		if bm, err = NewBitmap(size, bs); err != nil {
			return nil, err
		}
	} else if bm.VolumeSize() != size || bm.BlockSize() != bs {
		return nil, fmt.Errorf("%w: bitmap %d/%d for device %d/%d", ErrGeometry, bm.VolumeSize(), bm.BlockSize(), size, bs)
	}
	v := &Volume{
		cfg: cfg, dev: dev, size: size, uuid: st.VolumeUUID, name: st.NodeName,
		log:      log.With("node", st.NodeName),
		inflight: newInflights(cfg.MaxInflightWrites, cfg.MaxInflightBytes),
		role:     st.Role, disk: Attaching, peerDisk: DUnknown, conn: StandAlone, repl: ReplOff,
		gi: st.GI, bm: bm, pauseCh: make(chan struct{}), stop: make(chan struct{}),
	}
	if st.CrashedPrimary {
		v.flags |= FlagCrashedPrimary
		for _, e := range st.ActivityLog {
			if e.Len == 0 || e.Off >= size {
				continue
			}
			bm.Set(e.Off, min(e.Len, size-e.Off))
		}
	}
	if st.LostCache {
		v.flags |= FlagLostCache
		bm.SetAll()
	}
	if st.DiscardMyData {
		v.flags |= FlagDiscardMyData
	}
	if err := v.disk.Become(st.Disk); err != nil {
		return nil, fmt.Errorf("%w: Disk: %w", ErrInvalidConfig, err)
	}
	return v, nil
}

// SetHooks installs persistence hooks; call before Run or any I/O.
func (v *Volume) SetHooks(h Hooks) {
	v.mu.Lock()
	v.hooks = h
	v.mu.Unlock()
}

func freshUUID() uint64 {
	var b [8]byte
	rand.Read(b[:])
	return binary.BigEndian.Uint64(b[:]) &^ uuidPrimaryBit
}

// ---- state changes (v.mu held) ----

// setGILocked makes g the GIs and reports them (OnGenIDs). An error of
// the hook is counted and returned; g stays in effect.
func (v *Volume) setGILocked(g GenIDs, why string) error {
	if g == v.gi {
		return nil
	}
	v.log.Info("generation change", "gen", g.String(), "old", v.gi.String(), "reason", why)
	v.transitionLocked("generation", v.gi, g, why)
	v.gi = g
	if v.hooks.OnGenIDs != nil {
		if err := v.hooks.OnGenIDs(g); err != nil {
			return v.metadataErrLocked(fmt.Errorf("record generation %s (%s): %w", g.String(), why, err))
		}
	}
	return nil
}

// peerLostLocked starts the new generation of a Primary that goes on
// without its peer (GenIDs.PeerLost). If OnGenIDs cannot record it, the
// old generation is put back, so that memory says what the metadata
// says: the write that needed it fails, and the next one tries again.
func (v *Volume) peerLostLocked(why string) error {
	old, g := v.gi, v.gi
	if !g.PeerLost(true, freshUUID()) {
		return nil
	}
	if err := v.setGILocked(g, why); err != nil {
		v.gi = old
		return err
	}
	return nil
}

// setDiskLocked changes the disk state and reports it (OnDiskState); an
// error of the hook is counted and returned, the new state stays in
// memory, and the next call reports it again even if it names the same
// state (diskUnrecorded).
func (v *Volume) setDiskLocked(to DiskState, why string) error {
	if v.disk == to && !v.diskUnrecorded {
		return nil
	}
	if v.disk != to {
		from := v.disk
		if err := v.disk.Become(to); err != nil {
			v.log.Error("disk state change refused", "err", err)
			return nil
		}
		v.log.Info("disk state", "state", to.String(), "from", from.String(), "reason", why)
		v.transitionLocked("disk", from, to, why)
	}
	if v.hooks.OnDiskState != nil {
		if err := v.hooks.OnDiskState(v.disk); err != nil {
			v.diskUnrecorded = true
			return v.metadataErrLocked(fmt.Errorf("record disk state %s (%s): %w", v.disk, why, err))
		}
	}
	v.diskUnrecorded = false
	return nil
}

func (v *Volume) setPeerDiskLocked(to DiskState) {
	if v.peerDisk == to {
		return
	}
	from := v.peerDisk
	if err := v.peerDisk.Become(to); err != nil {
		v.log.Error("peer disk state change refused", "err", err)
		return
	}
	v.transitionLocked("peer-disk", from, to, "")
}

func (v *Volume) setConnLocked(to ConnState, why string) {
	if v.conn == to {
		return
	}
	from := v.conn
	if err := v.conn.Become(to); err != nil {
		v.log.Error("connection state change refused", "err", err)
		return
	}
	v.log.Info("connection state", "state", to.String(), "from", from.String(), "reason", why)
	v.transitionLocked("connection", from, to, why)
}

func (v *Volume) setReplLocked(to ReplState, why string) {
	if v.repl == to {
		return
	}
	from := v.repl
	if err := v.repl.Become(to); err != nil {
		v.log.Error("replication state change refused", "err", err)
		return
	}
	v.log.Info("replication state", "state", to.String(), "from", from.String(), "reason", why)
	v.transitionLocked("replication", from, to, why)
}

// markDirty marks [off, off+n) out of sync. Writing without a peer as
// Primary starts a new generation first (GenIDs.PeerLost).
// An error is OnBitmapDirty's: the bits are set in memory, not durably.
func (v *Volume) markDirty(off, n uint64) error {
	v.mu.Lock()
	defer v.mu.Unlock()
	return v.markDirtyLocked(off, n)
}

func (v *Volume) markDirtyLocked(off, n uint64) error {
	// Not after Stop: a node shutting down writes nothing more in this
	// generation, and a new one would look like a split brain to a peer
	// promoted in the meantime.
	if v.link == nil && !v.closed && v.role == RolePrimary && v.gi.Bitmap == 0 && v.disk >= UpToDate {
		if err := v.peerLostLocked("writing without peer"); err != nil {
			return err
		}
	}
	added, _ := v.bm.Set(off, n)
	if v.metaUnrecorded && (v.hooks.OnBitmapDirty != nil || v.hooks.OnBitmapMerged != nil) {
		// An earlier report failed: bits set in memory then (these
		// among them, maybe) are not known to be durable, so a range
		// whose bits were already set proves nothing. Report the
		// whole bitmap again.
		return v.reportDirtyLocked()
	}
	if added > 0 && v.hooks.OnBitmapDirty != nil {
		bs := uint64(v.bm.BlockSize())
		start := off / bs * bs
		end := min((off+n+bs-1)/bs*bs, v.size)
		if err := v.hooks.OnBitmapDirty(start, end-start); err != nil {
			return v.bitmapErrLocked(fmt.Errorf("record blocks [%d, %d) out of sync: %w", start, end, err))
		}
	}
	return nil
}

// metadataErrLocked counts and logs a failure of a metadata hook and
// returns it wrapped in ErrMetadata.
func (v *Volume) metadataErrLocked(err error) error {
	v.metaErrors++
	v.lastMetaErr = err.Error()
	v.log.Error("metadata not recorded durably", "err", err)
	return fmt.Errorf("%w: %w", ErrMetadata, err)
}

// bitmapErrLocked is metadataErrLocked for a bitmap hook: bits set in
// memory are no longer known to be durable (metaUnrecorded).
func (v *Volume) bitmapErrLocked(err error) error {
	v.metaUnrecorded = true
	return v.metadataErrLocked(err)
}

// reportDirtyLocked reports every dirty run to OnBitmapDirty, after a
// bulk change (full sync, bitmap exchange).
// A success clears the mark of an earlier failure (metaUnrecorded).
func (v *Volume) reportDirtyLocked() error {
	if v.hooks.OnBitmapMerged != nil {
		if err := v.hooks.OnBitmapMerged(v.bm); err != nil {
			return v.bitmapErrLocked(fmt.Errorf("record the bitmap (%d bytes out of sync): %w", v.bm.DirtyBytes(), err))
		}
		v.metaUnrecorded = false
		return nil
	}
	if v.hooks.OnBitmapDirty == nil {
		return nil
	}
	for pos := uint64(0); ; {
		off, n, ok := v.bm.NextDirtyRange(pos, ^uint64(0))
		if !ok {
			v.metaUnrecorded = false
			return nil
		}
		if err := v.hooks.OnBitmapDirty(off, n); err != nil {
			return v.bitmapErrLocked(fmt.Errorf("record blocks [%d, %d) out of sync: %w", off, off+n, err))
		}
		pos = off + n
	}
}

func (v *Volume) isPrimary() bool {
	v.mu.Lock()
	defer v.mu.Unlock()
	return v.role == RolePrimary
}

// Promote makes this node Primary. The local disk must be UpToDate, the
// peer must not be Primary, and no resync may target this node. A node
// promoted without its peer starts a new generation (GenIDs.Promote).
// Success ends an AbandonIO (fence.go).
func (v *Volume) Promote() error {
	v.gate.Lock()
	defer v.gate.Unlock()
	v.mu.Lock()
	switch {
	case v.role == RolePrimary:
		v.fencePromotedLocked()
		v.mu.Unlock()
		return nil
	case v.disk != UpToDate:
		v.mu.Unlock()
		return fmt.Errorf("replication: promote with disk %v: %w", v.disk, ErrNoGoodDisk)
	case v.peerRole == RolePrimary:
		v.mu.Unlock()
		return fmt.Errorf("replication: promote while peer %s is primary: %w", v.peerName, ErrBusy)
	}
	g := v.gi
	g.Promote(v.link != nil, freshUUID())
	v.setGILocked(g, "promote")
	v.role = RolePrimary
	v.log.Info("role", "role", RolePrimary.String())
	v.transitionLocked("role", RoleSecondary, RolePrimary, "promote")
	v.fencePromotedLocked()
	l := v.link
	sc := &StateChange{Role: v.role, Disk: v.disk, Repl: v.repl, GI: v.gi}
	v.mu.Unlock()
	if l != nil {
		l.send(sc)
	}
	return nil
}

// Demote makes this node Secondary. New I/O fails with ErrNotPrimary;
// writes already started complete. Flush first to make them durable.
// Held I/O (SuspendIO, fencing) is abandoned first, as by AbandonIO, so
// Demote never waits for it.
func (v *Volume) Demote() error {
	v.abandonForDemote() // never wait for held I/O (fence.go)
	v.gate.Lock()
	defer v.gate.Unlock()
	v.mu.Lock()
	if v.role != RolePrimary {
		v.mu.Unlock()
		return nil
	}
	g := v.gi
	g.Demote()
	v.setGILocked(g, "demote")
	v.role = RoleSecondary
	v.log.Info("role", "role", RoleSecondary.String())
	v.transitionLocked("role", RolePrimary, RoleSecondary, "demote")
	v.fenceDemotedLocked()
	l := v.link
	sc := &StateChange{Role: v.role, Disk: v.disk, Repl: v.repl, GI: v.gi}
	v.mu.Unlock()
	if l != nil {
		l.send(sc)
	}
	return nil
}

// clearLocked marks [off, off+n) in sync and reports it.
func (v *Volume) clearLocked(off, n uint64) {
	if cleared, _ := v.bm.Clear(off, n); cleared > 0 && v.hooks.OnBitmapClean != nil {
		v.hooks.OnBitmapClean(off, n)
	}
	if v.hold.fenceWaiters > 0 {
		v.wakeHoldLocked() // a held write may now be on the peer (fence.go)
	}
}

func (v *Volume) startResyncStatsLocked() {
	v.resyncTotal, v.resyncDone = v.bm.DirtyBytes(), 0
	v.resyncStart, v.resyncEnd = time.Now(), time.Time{}
}

// ForceUpToDate declares the local data the good copy (DRBD's primary
// --force), while not connected: the disk becomes UpToDate in a new
// generation and every block is marked out of sync, so the peer gets all
// of it on the next connect.
func (v *Volume) ForceUpToDate() error {
	v.gate.Lock()
	defer v.gate.Unlock()
	v.mu.Lock()
	defer v.mu.Unlock()
	switch {
	case v.link != nil || v.conn == Connecting:
		return fmt.Errorf("replication: force UpToDate while connected: %w", ErrBusy)
	case v.disk <= Failed:
		return fmt.Errorf("replication: force UpToDate with disk %v: %w", v.disk, ErrNoGoodDisk)
	}
	v.bm.SetAll()
	if err := v.reportDirtyLocked(); err != nil {
		return fmt.Errorf("replication: force UpToDate: %w", err)
	}
	g := v.gi
	g.NewCurrent(freshUUID())
	v.setGILocked(g, "forced up to date")
	v.setDiskLocked(UpToDate, "forced by operator")
	return nil
}

// Invalidate discards the local data's claim to be current (DRBD's
// invalidate), while not connected and not Primary: the disk becomes
// Inconsistent with every block out of sync, so the next connect fully
// resyncs it from the peer.
func (v *Volume) Invalidate() error {
	v.gate.Lock()
	defer v.gate.Unlock()
	v.mu.Lock()
	defer v.mu.Unlock()
	switch {
	case v.link != nil || v.conn == Connecting:
		return fmt.Errorf("replication: invalidate while connected: %w", ErrBusy)
	case v.role == RolePrimary:
		return fmt.Errorf("replication: invalidate a primary: %w", ErrBusy)
	case v.disk <= Failed:
		return fmt.Errorf("replication: invalidate with disk %v: %w", v.disk, ErrNoGoodDisk)
	}
	v.bm.SetAll()
	if err := v.reportDirtyLocked(); err != nil {
		return fmt.Errorf("replication: invalidate: %w", err)
	}
	v.setDiskLocked(Inconsistent, "invalidated by operator")
	return nil
}

func (v *Volume) curLink() *link {
	v.mu.Lock()
	defer v.mu.Unlock()
	return v.link
}

func (v *Volume) localOK() bool {
	v.mu.Lock()
	defer v.mu.Unlock()
	return v.disk > Failed
}

// localFailed records a local I/O error: the disk is detached (DRBD's
// on-io-error detach) and I/O continues through the peer.
func (v *Volume) localFailed(err error) {
	v.localErrors.Add(1)
	v.mu.Lock()
	defer v.mu.Unlock()
	v.lastErr = err.Error()
	if v.disk > Failed {
		v.log.Error("local disk I/O error, detaching; serving through peer", "err", err)
		v.setDiskLocked(Failed, "local I/O error")
	}
}

// blockRange rounds [off, off+n) out to whole bitmap blocks.
func (v *Volume) blockRange(off, n uint64) (uint64, uint64) {
	bs := uint64(v.cfg.blockSize())
	return off / bs * bs, min((off+n+bs-1)/bs*bs, v.size)
}

// ---- blockdev.Device ----

func (v *Volume) checkIO(off int64, n int) error {
	v.mu.Lock()
	if err := v.admitLocked(); err != nil {
		v.mu.Unlock()
		return err
	}
	role, closed := v.role, v.closed
	v.mu.Unlock()
	switch {
	case closed:
		return fmt.Errorf("replication: volume %s: %w", v.uuid, ErrClosed)
	case role != RolePrimary:
		return fmt.Errorf("replication: volume %s on %s: %w", v.uuid, v.name, ErrNotPrimary)
	case off < 0 || n < 0 || uint64(n) > v.size || uint64(off) > v.size-uint64(n):
		return fmt.Errorf("replication: offset %d length %d size %d: %w", off, n, v.size, blockdev.ErrOutOfRange)
	}
	return nil
}

// Size implements blockdev.Device.
func (v *Volume) Size() int64 { return int64(v.size) }

// ReadOnly implements blockdev.Device.
func (v *Volume) ReadOnly() bool { return v.dev.ReadOnly() }

// ReadAt reads from the local disk, or from the peer when the local disk
// has failed.
func (v *Volume) ReadAt(p []byte, off int64) (int, error) {
	if err := v.checkIO(off, len(p)); err != nil {
		return 0, err
	}
	if v.localOK() {
		n, err := v.dev.ReadAt(p, off)
		if err == nil {
			return n, nil
		}
		v.localFailed(err)
	}
	l := v.curLink()
	if l == nil {
		return 0, fmt.Errorf("replication: read offset %d length %d: %w", off, len(p), ErrNoGoodDisk)
	}
	for done := 0; done < len(p); {
		k := min(len(p)-done, MaxData)
		if err := l.remoteRead(p[done:done+k], uint64(off)+uint64(done)); err != nil {
			return done, fmt.Errorf("replication: read offset %d length %d from peer: %w: %w", off, len(p), ErrNoGoodDisk, err)
		}
		done += k
	}
	return len(p), nil
}

// WriteAt writes locally and to the peer in parallel and returns as the
// protocol says. Losing the peer is not an error: the range is marked
// out of sync instead. A local error is not an error either while the
// peer took the write (the local disk is detached).
func (v *Volume) WriteAt(p []byte, off int64) (int, error) {
	if err := v.checkIO(off, len(p)); err != nil {
		return 0, err
	}
	for done := 0; done < len(p); {
		k := min(len(p)-done, MaxData)
		if err := v.replicate(p[done:done+k], uint64(off)+uint64(done), uint64(k), false); err != nil {
			return done, err
		}
		done += k
	}
	return len(p), nil
}

// Discard discards locally and on the peer (Discard messages of at most
// MaxDiscard bytes), like a write of zeros.
func (v *Volume) Discard(off, n int64) error {
	if n < 0 || n > int64(v.size) {
		return fmt.Errorf("replication: discard offset %d length %d: %w", off, n, blockdev.ErrOutOfRange)
	}
	if err := v.checkIO(off, int(n)); err != nil {
		return err
	}
	for done := int64(0); done < n; {
		k := min(n-done, MaxDiscard)
		if err := v.replicate(nil, uint64(off+done), uint64(k), true); err != nil {
			return err
		}
		done += k
	}
	return nil
}

// replicate writes p (or discards n bytes) at off locally and on the
// peer.
func (v *Volume) replicate(p []byte, off, n uint64, discard bool) error {
	v.inflight.acquire(int64(len(p)))
	defer v.inflight.release(int64(len(p)))

	// The activity log first: nothing of this piece may reach the local
	// disk (or the peer) before its extent is durably hot.
	v.mu.Lock()
	before, after := v.hooks.BeforeWrite, v.hooks.AfterWrite
	v.mu.Unlock()
	var ar *alRef
	if before != nil {
		if err := before(off, n); err != nil {
			return fmt.Errorf("replication: write offset %d length %d: activity log: %w", off, n, err)
		}
		ar = newALRef(after, off, n)
	}

issue:
	v.gate.RLock()
	l, primary := v.primaryLink()
	if !primary {
		v.gate.RUnlock()
		ar.release()
		ar.release()
		return fmt.Errorf("replication: write offset %d length %d: demoted before it was issued: %w: %w", off, n, ErrAbandoned, ErrNotPrimary)
	}
	lo, hi := v.blockRange(off, n)
	h := v.locks.lock(lo, hi)
	var pw *pendingWrite
	if l != nil {
		pw = l.startWrite(off, n, p, discard, ar)
	}
	if pw == nil && v.fenceHolds() {
		// Fencing: no peer and not fenced; nothing issued yet (fence.go).
		v.locks.unlock(h)
		v.gate.RUnlock()
		if err := v.waitPeerOrFence(); err != nil {
			ar.release()
			ar.release()
			return fmt.Errorf("replication: write offset %d length %d: %w", off, n, err)
		}
		goto issue
	}
	if pw == nil {
		if err := v.markDirty(off, n); err != nil {
			// Nothing issued: the range cannot differ between the nodes
			// because of this write, so its extent may go cold.
			v.locks.unlock(h)
			v.gate.RUnlock()
			ar.release()
			ar.release()
			return fmt.Errorf("replication: write offset %d length %d without the peer: %w", off, n, err)
		}
		ar.release() // the peer's side: recorded in the bitmap
	}
	var localErr error
	if v.localOK() {
		if discard {
			localErr = v.dev.Discard(int64(off), int64(n))
		} else {
			_, localErr = v.dev.WriteAt(p, int64(off))
		}
	} else {
		localErr = fmt.Errorf("local disk detached: %w", ErrNoGoodDisk)
	}
	v.locks.unlock(h)
	v.gate.RUnlock()
	ar.release() // the local side: completed or failed

	v.writes.Add(1)
	v.bytesWritten.Add(n)
	var peerErr error
	if pw != nil {
		peerErr = l.waitWrite(pw)
	}
	peerOK := pw != nil && peerErr == nil
	if localErr != nil {
		if !errors.Is(localErr, ErrNoGoodDisk) {
			v.localFailed(localErr)
		}
		if !peerOK {
			return fmt.Errorf("replication: write offset %d length %d: %w: %w", off, n, ErrNoGoodDisk, localErr)
		}
	}
	if errors.Is(peerErr, ErrMetadata) {
		// The peer lacks it and nothing durable says so: not
		// acknowledged (the range's activity-log extent stays hot).
		return fmt.Errorf("replication: write offset %d length %d: the peer lost it: %w", off, n, peerErr)
	}
	if pw != nil && !peerOK && l.isDead() {
		return v.waitUnreplicated(off, n) // fencing (fence.go)
	}
	return nil
}

// Flush flushes the local disk and the peer's (a Flush message ordered
// after every write sent before it) in parallel; it completes when both
// are done. A lost peer is not an error.
func (v *Volume) Flush() error {
	if err := v.checkIO(0, 0); err != nil {
		return err
	}
flush:
	var ch chan error
	l := v.curLink()
	if l != nil {
		ch = l.startFlush()
	}
	if ch == nil && v.fenceHolds() {
		// Fencing: no peer and not fenced; nothing issued yet (fence.go).
		if err := v.waitPeerOrFence(); err != nil {
			return fmt.Errorf("replication: flush: %w", err)
		}
		goto flush
	}
	var err error
	if v.localOK() {
		if err = v.dev.Flush(); err != nil {
			v.localFailed(err)
		}
	} else {
		err = fmt.Errorf("local disk detached: %w", ErrNoGoodDisk)
	}
	peerOK := false
	if ch != nil {
		peerOK = <-ch == nil
	}
	if err != nil && !peerOK {
		return fmt.Errorf("replication: flush: %w: %w", ErrNoGoodDisk, err)
	}
	if ch != nil && !peerOK && l.isDead() {
		// Fencing (fence.go): held until fenced, or redone on a new link.
		if retry, err := v.waitUnreplicatedFlush(); err != nil || !retry {
			return err
		}
		goto flush
	}
	return nil
}

// Close stops replication (closing any link) and closes the local
// device.
func (v *Volume) Close() error {
	v.Stop()
	return v.dev.Close()
}

// Stop stops replication without closing the device: the link is cut
// (as a crash would) and later I/O fails with ErrClosed.
func (v *Volume) Stop() {
	// closed before stop: the link's watch goroutine fails the link as
	// soon as stop is closed, and a teardown that did not yet see closed
	// started a new generation on the stopping Primary, which its peer,
	// promoted meanwhile, then met as a split brain (TestFailoverAndReturn,
	// seen twice in CI).
	v.mu.Lock()
	v.closed = true
	v.wakeHoldLocked()
	l := v.link
	v.mu.Unlock()
	v.stopOnce.Do(func() { close(v.stop) })
	if v.afterStopSignal != nil {
		v.afterStopSignal()
	}
	if l != nil {
		l.fail(fmt.Errorf("volume stopped: %w", ErrClosed))
		<-l.finished
	}
}

// Bitmap returns a copy of the out-of-sync bitmap.
func (v *Volume) Bitmap() *Bitmap {
	v.mu.Lock()
	defer v.mu.Unlock()
	c, _ := NewBitmap(v.bm.VolumeSize(), v.bm.BlockSize())
	c.Merge(v.bm)
	return c
}

// GenIDs returns the current GIs.
func (v *Volume) GenIDs() GenIDs {
	v.mu.Lock()
	defer v.mu.Unlock()
	return v.gi
}

// VolumeStatus is a snapshot of a volume's replication state.
type VolumeStatus struct {
	Node, Peer     string
	Role, PeerRole Role
	Conn           ConnState
	Disk, PeerDisk DiskState
	Repl           ReplState
	Protocol       Protocol
	GI             GenIDs
	// OutOfSyncBytes is what the bitmap marks as differing from the peer.
	OutOfSyncBytes uint64
	// ResyncTotal and ResyncDone are the bytes of the current (or last)
	// resync; ResyncRate its average rate in bytes/s.
	ResyncTotal, ResyncDone uint64
	ResyncRate              float64
	ResyncPaused            bool
	// VerifyTotal and VerifyDone are the progress of online verify.
	VerifyTotal, VerifyDone uint64
	// Writes and BytesWritten count WriteAt/Discard pieces served;
	// BytesSent counts frame bytes sent; ResyncBytes resync payload sent
	// (source) or applied (target); LocalErrors local I/O errors.
	Writes, BytesWritten, BytesSent, ResyncBytes, LocalErrors uint64
	LastError                                                 string
	// MetadataErrors counts failures to record the bitmap, the GIs or
	// the disk state durably (the Hooks that return errors);
	// LastMetadataError is the latest.
	MetadataErrors    uint64
	LastMetadataError string

	// Held: with Config.Fencing, this Primary holds writes because the
	// peer may lack them and is not fenced: writes are waiting for it,
	// or it has no live link and SetPeerFenced(true) was not called.
	Held bool
	// Fenced: SetPeerFenced(true) is in effect.
	Fenced bool
	// Suspended and SuspendReason: SuspendIO is in effect, and why.
	Suspended     bool
	SuspendReason string
	// Abandoned: AbandonIO (or Demote with held I/O) is in effect: new
	// I/O fails with ErrAbandoned until ResumeIO or Promote.
	Abandoned bool
	// HeldOps counts the operations held now (suspended or fenced).
	HeldOps int
	// Connects counts the links established (handshake done) since the
	// volume was made: once it is non-zero, the handshake has used the
	// State's CrashedPrimary and LostCache.
	Connects uint64
}

// Status returns a snapshot; safe for concurrent use.
func (v *Volume) Status() VolumeStatus {
	v.mu.Lock()
	defer v.mu.Unlock()
	s := VolumeStatus{
		Node: v.name, Peer: v.peerName, Role: v.role, PeerRole: v.peerRole, Conn: v.conn,
		Disk: v.disk, PeerDisk: v.peerDisk, Repl: v.repl, Protocol: v.cfg.Protocol, GI: v.gi,
		OutOfSyncBytes: v.bm.DirtyBytes(),
		ResyncTotal:    v.resyncTotal, ResyncDone: v.resyncDone, ResyncPaused: v.paused,
		VerifyTotal: v.verifyTotal, VerifyDone: v.verifyDone,
		Writes: v.writes.Load(), BytesWritten: v.bytesWritten.Load(), BytesSent: v.bytesSent.Load(),
		ResyncBytes: v.resyncBytes.Load(), LocalErrors: v.localErrors.Load(), LastError: v.lastErr,
		Connects: v.connects, MetadataErrors: v.metaErrors, LastMetadataError: v.lastMetaErr,
	}
	v.holdStatusLocked(&s)
	end := time.Now()
	if !v.resyncEnd.IsZero() {
		end = v.resyncEnd
	}
	if el := end.Sub(v.resyncStart).Seconds(); !v.resyncStart.IsZero() && el > 0 {
		s.ResyncRate = float64(v.resyncDone) / el
	}
	return s
}

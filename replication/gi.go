package replication

import "fmt"

// GenIDs are a node's generation identifiers (DRBD's "UUIDs"): random
// 64-bit tags naming generations of the data. They are persisted with the
// volume's metadata and exchanged in Handshake; comparing them at connect
// time tells whether the nodes hold the same data, which of them is newer,
// whether a bitmap-based resync suffices, and whether both changed the
// data independently (split brain).
//
//   - Current names the generation the node's data is in now.
//   - Bitmap is the generation the node's out-of-sync bitmap is relative
//     to: set to the old Current when the node starts writing without its
//     peer, and cleared when a resync completes. Zero means "no changes
//     tracked": the bitmap is empty.
//   - History holds the two previous Bitmap values, newest first.
//
// The lowest bit of each value is not part of the identity: it records
// whether the node was Primary when the value was Current, and every
// comparison masks it (see SameGen). The bit of Bitmap therefore says
// whether the node was Primary when it diverged from its peer, which the
// discard-younger/older-primary split-brain policies use.
type GenIDs struct {
	Current uint64
	Bitmap  uint64
	History [2]uint64
}

const (
	// UUIDJustCreated is Current on fresh metadata: the volume has never
	// been synced. Two fresh nodes connect without a sync (both stay
	// Inconsistent until an operator picks a source); a fresh node
	// connecting to an established one gets a full sync.
	UUIDJustCreated uint64 = 4

	// uuidPrimaryBit is the role bit masked out of comparisons.
	uuidPrimaryBit uint64 = 1

	// uuidNewBitmapOffset is added to the bitmap UUID to make the sync
	// UUID at resync start, so that rules 51 and 71 can recognise a
	// sync UUID that never reached the target (DRBD protocol >= 96).
	uuidNewBitmapOffset uint64 = 1 << 48
)

// Same reports whether g and o are equal up to role bits.
func (g GenIDs) Same(o GenIDs) bool {
	return SameGen(g.Current, o.Current) && SameGen(g.Bitmap, o.Bitmap) &&
		SameGen(g.History[0], o.History[0]) && SameGen(g.History[1], o.History[1])
}

// SameGen reports whether a and b name the same generation (ignoring the
// role bit).
func SameGen(a, b uint64) bool { return a&^uuidPrimaryBit == b&^uuidPrimaryBit }

func (g GenIDs) String() string {
	return fmt.Sprintf("%016X:%016X:%016X:%016X", g.Current, g.Bitmap, g.History[0], g.History[1])
}

// NewGenIDs returns the GIs of freshly created metadata.
func NewGenIDs() GenIDs { return GenIDs{Current: UUIDJustCreated} }

// PrimaryAtSplit reports whether the node was Primary when it began
// tracking changes without its peer (the role bit of Bitmap).
func (g GenIDs) PrimaryAtSplit() bool { return g.Bitmap&uuidPrimaryBit != 0 }

// ---- transitions ----
//
// None of these draws randomness: the caller passes a fresh random value
// (crypto/rand at the edge, a counter in tests) and persists the result
// before acting on it (before the first write in the new generation, or
// before answering the peer).

// NewCurrent starts a new generation: the node is about to write without
// its peer. If no bitmap generation is set, the old Current becomes the
// bitmap UUID (changes are tracked from there); if one is set, changes
// are already being tracked relative to it and it is kept. The role bit
// of Current carries over.
func (g *GenIDs) NewCurrent(fresh uint64) {
	if g.Bitmap == 0 {
		g.Bitmap = g.Current
	}
	g.Current = fresh&^uuidPrimaryBit | g.Current&uuidPrimaryBit
}

// Promote records a promotion to Primary. A node promoted while not
// connected to an up-to-date peer, and not already tracking changes,
// starts a new generation (DRBD: "new current UUID on promotion"), so
// that the peer, when it comes back, sees that this side moved on.
// It reports whether a new Current was made.
func (g *GenIDs) Promote(connected bool, fresh uint64) bool {
	made := false
	if !connected && g.Bitmap == 0 {
		g.NewCurrent(fresh)
		made = true
	}
	g.Current |= uuidPrimaryBit
	return made
}

// Demote records a demotion to Secondary.
func (g *GenIDs) Demote() { g.Current &^= uuidPrimaryBit }

// PeerLost records the loss of the connection (or of the peer's disk).
// A Primary with an up-to-date disk that is not yet tracking changes
// starts a new generation: it goes on writing alone ("new current UUID
// on disconnect as primary"). It reports whether a new Current was made.
func (g *GenIDs) PeerLost(primary bool, fresh uint64) bool {
	if primary && g.Bitmap == 0 {
		g.NewCurrent(fresh)
		return true
	}
	return false
}

// rotate pushes v into History.
func (g *GenIDs) rotate(v uint64) {
	g.History[1] = g.History[0]
	g.History[0] = v
}

// StartResyncSource makes the sync UUID at the start of a resync on the
// source and returns it, to be sent in SyncUUID. The old bitmap UUID goes
// to History; the new one is the old plus a fixed offset (recognisable by
// rules 51/71 if the SyncUUID is lost), or fresh if there was none (full
// sync of a node that never diverged).
func (g *GenIDs) StartResyncSource(fresh uint64) uint64 {
	sync := fresh
	if g.Bitmap != 0 && g.Bitmap != UUIDJustCreated {
		sync = g.Bitmap + uuidNewBitmapOffset
	}
	if g.Bitmap != 0 {
		g.rotate(g.Bitmap)
	}
	g.Bitmap = sync
	return sync
}

// StartResyncTarget adopts the source's sync UUID as Current when a
// resync starts on the target. From here until the resync finishes the
// target's data is Inconsistent and labelled with the sync generation.
func (g *GenIDs) StartResyncTarget(sync uint64) {
	g.Current = sync&^uuidPrimaryBit | g.Current&uuidPrimaryBit
	g.Bitmap = 0
}

// FinishResyncSource clears the bitmap UUID into History once the target
// acknowledged the end of the resync.
func (g *GenIDs) FinishResyncSource() {
	if g.Bitmap != 0 {
		g.rotate(g.Bitmap)
		g.Bitmap = 0
	}
}

// FinishResyncTarget takes over the source's generation when a resync
// completes, so both nodes end with the same GIs (up to the role bit,
// which stays the target's own). src is the source's GIs as last
// received, either before or after its FinishResyncSource.
func (g *GenIDs) FinishResyncTarget(src GenIDs) {
	src.FinishResyncSource() // no-op if the source already finished
	role := g.Current & uuidPrimaryBit
	*g = src
	g.Current = src.Current&^uuidPrimaryBit | role
}

// ---- the connect-time decision ----

// Decision is the outcome of comparing two nodes' GIs at connect time.
type Decision uint8

const (
	// NoSync: same generation, nothing to resync.
	NoSync Decision = iota
	// BitmapResyncLocalIsSource: the peer's data is an ancestor of ours;
	// resync the blocks set in either bitmap, from us.
	BitmapResyncLocalIsSource
	// BitmapResyncPeerIsSource: mirror image.
	BitmapResyncPeerIsSource
	// FullSyncLocalIsSource: the peer is older than our bitmap covers
	// (or fresh, or inconsistent): resync every block, from us.
	FullSyncLocalIsSource
	// FullSyncPeerIsSource: mirror image.
	FullSyncPeerIsSource
	// SplitBrain: both nodes wrote since they last agreed. Resolve with
	// a split-brain policy (ResolveSplitBrain) or an operator.
	SplitBrain
	// Unrelated: no common generation at all: different volumes, or one
	// side's metadata was recreated. Never resync; disconnect.
	Unrelated
	// NoUpToDateSource: the GIs pick a source whose disk is not
	// consistent (e.g. it is itself an interrupted sync target).
	// Disconnect and wait for a node with good data.
	NoUpToDateSource
	numDecisions
)

var decisionNames = [...]string{"NoSync", "BitmapResyncLocalIsSource", "BitmapResyncPeerIsSource",
	"FullSyncLocalIsSource", "FullSyncPeerIsSource", "SplitBrain", "Unrelated", "NoUpToDateSource"}

func (d Decision) String() string { return enumName(decisionNames[:], uint8(d), "Decision") }

// Mirror is the same decision seen from the peer.
func (d Decision) Mirror() Decision {
	switch d {
	case BitmapResyncLocalIsSource:
		return BitmapResyncPeerIsSource
	case BitmapResyncPeerIsSource:
		return BitmapResyncLocalIsSource
	case FullSyncLocalIsSource:
		return FullSyncPeerIsSource
	case FullSyncPeerIsSource:
		return FullSyncLocalIsSource
	}
	return d
}

// LocalIsSource and PeerIsSource report the resync direction.
func (d Decision) LocalIsSource() bool {
	return d == BitmapResyncLocalIsSource || d == FullSyncLocalIsSource
}

func (d Decision) PeerIsSource() bool {
	return d == BitmapResyncPeerIsSource || d == FullSyncPeerIsSource
}

// IsFull reports whether every block must be resynced.
func (d Decision) IsFull() bool { return d == FullSyncLocalIsSource || d == FullSyncPeerIsSource }

// Node is one side's input to Decide, as held locally or received in a
// Handshake.
type Node struct {
	// Name breaks ties that must come out the same on both nodes: when
	// nothing else decides, the node with the greater name becomes the
	// sync target. Names of the two nodes must differ.
	Name string
	GI   GenIDs
	Disk DiskState
	Role Role
	// CrashedPrimary: the node was Primary when it last went down without
	// demoting; its data may hold writes the peer never saw.
	CrashedPrimary bool
	// LostCache: the node's machine restarted while it ran; writes it
	// had not flushed may be missing anywhere on its disk.
	LostCache bool
}

// Result is Decide's answer.
type Result struct {
	Decision Decision
	// Rule names the GI rule that matched; the numbers follow DRBD's
	// drbd_uuid_compare so logs can be compared (10..100; 110 for
	// Unrelated).
	Rule int
	// ByDiskState: exactly one side was Inconsistent, and that changed
	// what the GIs alone would have decided.
	ByDiskState bool
	// SplitBrainFull: for SplitBrain only. The nodes share a History
	// generation but not their bitmap UUID, so the bitmaps do not cover
	// all differences: whichever side wins must send every block, and
	// automatic policies are not applied (DRBD's -100 without
	// always-asbp). When false, both bitmaps are relative to the same
	// generation and their union is exactly what differs.
	SplitBrainFull bool
	// Local and Peer are the GIs after the corrections some rules make
	// (a lost SyncUUID or a missed resync-finished event). The caller
	// persists Local before acting.
	Local, Peer GenIDs
}

// relation is the raw GI comparison (DRBD's hg before disk states):
// positive means local is newer, magnitude 2 means full sync.
type relation int

const (
	relSame        relation = 0
	relLocalBitmap relation = 1
	relLocalFull   relation = 2
	relPeerBitmap  relation = -1
	relPeerFull    relation = -2
	relSBBitmap    relation = 100
	relSBFull      relation = -100
	relUnrelated   relation = -1000
)

// localLosesTie is the deterministic, symmetric tie-break.
func localLosesTie(local, peer string) bool { return local > peer }

// compareGI is DRBD's drbd_uuid_compare for two nodes, rewritten from its
// documented rules. It may correct l or p (rules 34, 35, 51, 71).
func compareGI(l, p *GenIDs, lCrashed, pCrashed, lLost, pLost, lLoses bool) (relation, int) {
	m := func(v uint64) uint64 { return v &^ uuidPrimaryBit }
	self, peer := m(l.Current), m(p.Current)

	// Fresh metadata.
	if self == UUIDJustCreated && peer == UUIDJustCreated {
		return relSame, 10
	}
	if (self == UUIDJustCreated || self == 0) && peer != UUIDJustCreated {
		return relPeerFull, 20
	}
	if self != UUIDJustCreated && (peer == UUIDJustCreated || peer == 0) {
		return relLocalFull, 30
	}

	if self == peer {
		// Same generation. A bitmap UUID on one side only means that
		// side was a sync source whose "resync finished" did not get
		// recorded everywhere.
		if p.Bitmap == 0 && l.Bitmap != 0 {
			if m(l.Bitmap) == m(p.History[0]) && m(l.History[0]) == m(p.History[1]) {
				// We missed the finish; the peer recorded it. Catch up.
				l.rotate(l.Bitmap)
				l.Bitmap = 0
				return relLocalBitmap, 34
			}
			return relLocalBitmap, 36
		}
		if l.Bitmap == 0 && p.Bitmap != 0 {
			if m(l.History[0]) == m(p.Bitmap) && m(l.History[1]) == m(p.History[0]) {
				p.rotate(p.Bitmap)
				p.Bitmap = 0
				return relPeerBitmap, 35
			}
			return relPeerBitmap, 37
		}
		// A node whose machine restarted under it may lack any write it
		// had not flushed: the other is the source (and when both did,
		// one of them must still become the source, below).
		switch {
		case lLost && !pLost:
			return relPeerBitmap, 40
		case pLost && !lLost:
			return relLocalBitmap, 40
		}
		// Common power failure or clean shutdown: a node that crashed
		// as Primary may have writes the other lacks.
		switch {
		case !lCrashed && !pCrashed && lLost: // both lost their caches
			if lLoses {
				return relPeerBitmap, 40
			}
			return relLocalBitmap, 40
		case !lCrashed && !pCrashed:
			return relSame, 40
		case lCrashed && !pCrashed:
			return relLocalBitmap, 40
		case !lCrashed && pCrashed:
			return relPeerBitmap, 40
		default:
			if lLoses {
				return relPeerBitmap, 40
			}
			return relLocalBitmap, 40
		}
	}

	// The peer's changes are relative to our current generation.
	if self == m(p.Bitmap) {
		return relPeerBitmap, 50
	}
	// The peer started a resync as source but its SyncUUID never reached
	// us: undo that start on the peer's copy and resync by bitmap.
	if self == m(p.History[0]) && m(p.History[0])+uuidNewBitmapOffset == m(p.Bitmap) {
		p.Bitmap = p.History[0]
		p.History[0] = p.History[1]
		return relPeerBitmap, 51
	}
	// We are an ancestor of the peer older than its bitmap covers.
	for _, h := range p.History {
		if self == m(h) {
			return relPeerFull, 60
		}
	}

	// Mirror images of 50, 51 and 60.
	if m(l.Bitmap) == peer {
		return relLocalBitmap, 70
	}
	if m(l.History[0]) == peer && m(l.History[0])+uuidNewBitmapOffset == m(l.Bitmap) {
		l.Bitmap = l.History[0]
		l.History[0] = l.History[1]
		return relLocalBitmap, 71
	}
	for _, h := range l.History {
		if m(h) == peer {
			return relLocalFull, 80
		}
	}

	// Both moved on from the same generation: split brain, and both
	// bitmaps are relative to that generation.
	if m(l.Bitmap) == m(p.Bitmap) && m(l.Bitmap) != 0 {
		return relSBBitmap, 90
	}
	// Some shared history: split brain, bitmaps do not cover it.
	for _, a := range l.History {
		for _, b := range p.History {
			if m(a) == m(b) && m(a) != 0 {
				return relSBFull, 100
			}
		}
	}
	return relUnrelated, 110
}

// Decide is the connect-time decision, a pure function of both nodes'
// state. It is symmetric: Decide(b, a).Decision is
// Decide(a, b).Decision.Mirror(), so both nodes reach the same
// conclusion independently.
//
// After the GI comparison, disk states adjust it as DRBD does: if exactly
// one side is Inconsistent (or worse) that side becomes the target, with
// a full sync if the GIs could not bound the differences. A source whose
// disk is not at least Outdated yields NoUpToDateSource.
func Decide(local, peer Node) Result {
	r := Result{Local: local.GI, Peer: peer.GI}
	rel, rule := compareGI(&r.Local, &r.Peer, local.CrashedPrimary, peer.CrashedPrimary,
		local.LostCache, peer.LostCache, localLosesTie(local.Name, peer.Name))
	r.Rule = rule

	if rel == relUnrelated {
		r.Decision = Unrelated
		return r
	}

	lOK, pOK := local.Disk > Inconsistent, peer.Disk > Inconsistent
	if lOK != pOK {
		full := rel == relSBFull || rel == relLocalFull || rel == relPeerFull
		before := rel
		switch {
		case lOK && full:
			rel = relLocalFull
		case lOK:
			rel = relLocalBitmap
		case full:
			rel = relPeerFull
		default:
			rel = relPeerBitmap
		}
		r.ByDiskState = rel != before
	}

	switch rel {
	case relSame:
		r.Decision = NoSync
	case relLocalBitmap:
		r.Decision = BitmapResyncLocalIsSource
	case relLocalFull:
		r.Decision = FullSyncLocalIsSource
	case relPeerBitmap:
		r.Decision = BitmapResyncPeerIsSource
	case relPeerFull:
		r.Decision = FullSyncPeerIsSource
	case relSBBitmap, relSBFull:
		r.Decision = SplitBrain
		r.SplitBrainFull = rel == relSBFull
		return r
	}
	if (r.Decision.LocalIsSource() && !lOK) || (r.Decision.PeerIsSource() && !pOK) {
		r.Decision = NoUpToDateSource
	}
	return r
}

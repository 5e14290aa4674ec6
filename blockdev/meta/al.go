package meta

import (
	"container/list"
	"encoding/binary"
	"errors"
	"fmt"
	"math"
	"math/bits"
)

// The activity log (DRBD's AL) bounds what must be resynced after a crash
// of the Primary. The volume is cut into extents; a bounded set of them is
// "hot". The ordering rule, the one thing to get right:
//
//	An extent is in the hot set on disk before any write to it is issued,
//	and stays there until every write to it has completed.
//
// After a crash, the persisted hot set (LoadAL) is a superset of every
// extent that may hold a write the peer never got, so resyncing those
// extents plus the out-of-sync bitmap is enough.
//
// The write path, with one mutex around the ActivityLog:
//
//	need, err := al.Begin(off, n)        // ErrALBusy: wait for an End, retry
//	if need {
//		hot, seq := al.Snapshot()
//		store.PersistAL(hot)              // synced; persists are serialised
//		al.Persisted(seq)
//	}
//	issue the write; when it completes: al.End(off, n)
//
// Snapshots must be persisted in the order they were taken (take the
// snapshot and persist under one lock), or an older set could overwrite a
// newer one.

// MaxALExtents bounds ALConfig.Extents and a persisted hot set: 16384
// extents encode to 128 KiB, under valueThreshold.
const MaxALExtents = 16384

// Errors of the ActivityLog.
var (
	// ErrALBusy: the request needs cold extents, and every hot extent that
	// could make room has writes in flight. Retry after an End.
	ErrALBusy = errors.New("meta: activity log full of extents with writes in flight")
)

// ALConfig sizes the activity log.
type ALConfig struct {
	// Extents is the number of hot extents. Default 1024. More extents
	// mean fewer AL writes under a scattered workload (each write to a
	// cold extent costs one synced metadata write first) but a longer
	// resync after a crash: up to Extents × ExtentSize bytes, 4 GiB with
	// the defaults (DRBD's default of 1237 extents is about 4.8 GiB).
	// Range [1, MaxALExtents].
	Extents int

	// ExtentSize is the size of one extent in bytes. Default 4 MiB, DRBD's
	// value: large enough that sequential writes rarely cross into a cold
	// extent, small enough that resyncing one is quick. A power of two in
	// [64 KiB, 1 GiB].
	ExtentSize int64
}

// DefaultALConfig returns the default ALConfig.
func DefaultALConfig() ALConfig {
	return ALConfig{Extents: 1024, ExtentSize: 4 << 20}
}

// Validate checks c and names the offending field. It never mutates c.
func (c ALConfig) Validate() error {
	if c.Extents < 1 || c.Extents > MaxALExtents {
		return fmt.Errorf("meta: ALConfig.Extents %d: must be in [1, %d]", c.Extents, MaxALExtents)
	}
	if c.ExtentSize < 64<<10 || c.ExtentSize > 1<<30 || c.ExtentSize&(c.ExtentSize-1) != 0 {
		return fmt.Errorf("meta: ALConfig.ExtentSize %d: must be a power of two in [64 KiB, 1 GiB]", c.ExtentSize)
	}
	return nil
}

// ActivityLog is the pure core of the activity log: an LRU set of hot
// extents with in-flight write counts. It does no I/O and is not safe for
// concurrent use: the caller holds one mutex around every call.
type ActivityLog struct {
	cfg   ALConfig
	shift uint // log2(cfg.ExtentSize)

	slots map[uint64]*list.Element // extent -> element holding *alSlot
	lru   *list.List               // front = most recently used

	// seq counts additions to the hot set; persisted is the seq of the
	// newest snapshot known to be on disk.
	// INVARIANT: persisted <= seq.
	seq, persisted uint64
}

type alSlot struct {
	ext   uint64
	refs  int    // writes begun and not yet ended
	added uint64 // seq at which ext became hot
}

// NewActivityLog returns an empty activity log.
func NewActivityLog(cfg ALConfig) (*ActivityLog, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	return &ActivityLog{
		cfg:   cfg,
		shift: uint(bits.TrailingZeros64(uint64(cfg.ExtentSize))),
		slots: make(map[uint64]*list.Element, cfg.Extents),
		lru:   list.New(),
	}, nil
}

// extents returns the first and last extent of [off, off+n); ok is false
// for an empty request.
func (a *ActivityLog) extents(off, n int64) (first, last uint64, ok bool, err error) {
	if off < 0 || n < 0 || n > math.MaxInt64-off {
		return 0, 0, false, fmt.Errorf("meta: activity log: invalid range off=%d len=%d", off, n)
	}
	if n == 0 {
		return 0, 0, false, nil
	}
	return uint64(off) >> a.shift, uint64(off+n-1) >> a.shift, true, nil
}

// Begin records a write of [off, off+n) about to be issued: it makes the
// extents it touches hot (evicting the least recently used idle extents if
// needed) and pins them until End. needPersist is true if any of them is
// not yet in a persisted snapshot: then the caller must persist a Snapshot
// (and call Persisted) before issuing the write.
//
// It fails, changing nothing, with ErrALBusy if there are not enough idle
// extents to evict, and with ErrTooLarge if the request spans more extents
// than the log holds.
func (a *ActivityLog) Begin(off, n int64) (needPersist bool, err error) {
	first, last, ok, err := a.extents(off, n)
	if err != nil || !ok {
		return false, err
	}
	if last-first >= uint64(a.cfg.Extents) {
		return false, fmt.Errorf("meta: activity log: write off=%d len=%d spans %d extents: %w (log holds %d)",
			off, n, last-first+1, ErrTooLarge, a.cfg.Extents)
	}
	// Count what is needed before changing anything.
	cold := 0
	for e := first; e <= last; e++ {
		if _, hot := a.slots[e]; !hot {
			cold++
		}
	}
	if evict := cold - (a.cfg.Extents - a.lru.Len()); evict > 0 {
		idle := 0
		for el := a.lru.Back(); el != nil && idle < evict; el = el.Prev() {
			s := el.Value.(*alSlot)
			if s.refs == 0 && (s.ext < first || s.ext > last) {
				idle++
			}
		}
		if idle < evict {
			return false, ErrALBusy
		}
	}
	// Pin the hot extents of the range first, so that making room for the
	// cold ones cannot evict them.
	for e := first; e <= last; e++ {
		if el, hot := a.slots[e]; hot {
			s := el.Value.(*alSlot)
			s.refs++
			a.lru.MoveToFront(el)
			if s.added > a.persisted {
				needPersist = true // hot, but its addition is not on disk yet
			}
		}
	}
	for e := first; e <= last; e++ {
		if _, hot := a.slots[e]; hot {
			continue
		}
		if a.lru.Len() == a.cfg.Extents {
			a.evictLocked()
		}
		a.seq++
		a.slots[e] = a.lru.PushFront(&alSlot{ext: e, refs: 1, added: a.seq})
		needPersist = true
	}
	return needPersist, nil
}

// evictLocked drops the least recently used idle extent; Begin has checked
// that one exists.
func (a *ActivityLog) evictLocked() {
	for el := a.lru.Back(); el != nil; el = el.Prev() {
		if s := el.Value.(*alSlot); s.refs == 0 {
			a.lru.Remove(el)
			delete(a.slots, s.ext)
			return
		}
	}
	panic("meta: activity log: no idle extent to evict")
}

// End records that the write of [off, off+n) passed to Begin completed (or
// failed). It panics if the range was not begun: that is a bug in the
// caller, and a silent miscount could evict an extent with a write in
// flight.
func (a *ActivityLog) End(off, n int64) {
	first, last, ok, err := a.extents(off, n)
	if err != nil {
		panic(err)
	}
	if !ok {
		return
	}
	for e := first; e <= last; e++ {
		el, hot := a.slots[e]
		if !hot || el.Value.(*alSlot).refs == 0 {
			panic(fmt.Sprintf("meta: activity log: End(off=%d, len=%d) without Begin: extent %d not pinned", off, n, e))
		}
		el.Value.(*alSlot).refs--
	}
}

// Snapshot returns the hot set, most recently used first, and the seq to
// pass to Persisted once it is on disk.
func (a *ActivityLog) Snapshot() (extents []uint64, seq uint64) {
	extents = make([]uint64, 0, a.lru.Len())
	for el := a.lru.Front(); el != nil; el = el.Next() {
		extents = append(extents, el.Value.(*alSlot).ext)
	}
	return extents, a.seq
}

// Persisted records that the Snapshot taken at seq is on disk. Extents
// made hot up to seq no longer need a persist.
func (a *ActivityLog) Persisted(seq uint64) {
	if seq > a.seq {
		panic(fmt.Sprintf("meta: activity log: Persisted(%d) beyond seq %d", seq, a.seq))
	}
	a.persisted = max(a.persisted, seq)
}

// Restore makes extents hot, idle and already persisted, in the order
// given (most recently used first), as after loading them with LoadAL;
// writes to them then need no persist. It is meant for a fresh log; extents
// already hot are skipped, and those beyond the capacity are dropped.
func (a *ActivityLog) Restore(extents []uint64) {
	for _, e := range extents {
		if a.lru.Len() == a.cfg.Extents {
			return
		}
		if _, hot := a.slots[e]; hot {
			continue
		}
		a.slots[e] = a.lru.PushBack(&alSlot{ext: e, added: 0})
	}
}

// Hot reports whether the extent holding byte off is hot.
func (a *ActivityLog) Hot(off int64) bool {
	_, hot := a.slots[uint64(off)>>a.shift]
	return hot
}

// Len is the number of hot extents.
func (a *ActivityLog) Len() int { return a.lru.Len() }

// ExtentSize is the extent size in bytes.
func (a *ActivityLog) ExtentSize() int64 { return a.cfg.ExtentSize }

// PersistAL durably records extents as the activity log's hot set,
// replacing the previous one. It is called before a write to a cold extent
// is issued (see ActivityLog) and returns only once the record is synced.
func (s *Store) PersistAL(extents []uint64) error {
	if len(extents) > MaxALExtents {
		return fmt.Errorf("meta: persist activity log of %d extents: %w (max %d)", len(extents), ErrTooLarge, MaxALExtents)
	}
	b := make([]byte, 4+8*len(extents))
	binary.LittleEndian.PutUint32(b, uint32(len(extents)))
	for i, e := range extents {
		binary.LittleEndian.PutUint64(b[4+8*i:], e)
	}
	return s.put(keyAL, kindActivityLog, alVersion, b)
}

// LoadAL returns the persisted hot set (empty if none was ever persisted).
// After a crash these extents must be resynced in addition to the bitmap:
// the caller folds them into the bitmap (PutBitmapChunks) before the
// first PersistAL replaces them, or Restores them into the new log.
func (s *Store) LoadAL() ([]uint64, error) {
	b, err := s.get(keyAL, kindActivityLog, alVersion)
	if errors.Is(err, ErrNoMetadata) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	if len(b) < 4 {
		return nil, fmt.Errorf("meta: %s: activity log: %w: %d bytes", s.dir, ErrCorrupt, len(b))
	}
	n := binary.LittleEndian.Uint32(b)
	if n > MaxALExtents || len(b) != 4+8*int(n) {
		return nil, fmt.Errorf("meta: %s: activity log: %w: count %d in %d bytes", s.dir, ErrCorrupt, n, len(b))
	}
	extents := make([]uint64, n)
	for i := range extents {
		extents[i] = binary.LittleEndian.Uint64(b[4+8*i:])
	}
	return extents, nil
}

package main

import (
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"sync"

	"github.com/hablock/hablock/blockdev/meta"
	"github.com/hablock/hablock/internal/admin"
	"github.com/hablock/hablock/replication"
)

// activityLog is the engine's BeforeWrite/AfterWrite hooks over
// meta.ActivityLog, following the ordering rule documented in
// blockdev/meta/al.go: Begin, and when an extent became hot, persist the
// snapshot (synced) before the write is issued; End when the engine says
// the write can no longer differ unrecorded. One mutex around the log and
// the persist, so snapshots reach the disk in the order they were taken.
type activityLog struct {
	store *meta.Store
	mu    sync.Mutex
	cond  *sync.Cond // signalled by after: Begin may find room
	al    *meta.ActivityLog
}

// before is Hooks.BeforeWrite.
func (l *activityLog) before(off, n uint64) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	for {
		need, err := l.al.Begin(int64(off), int64(n))
		if errors.Is(err, meta.ErrALBusy) {
			l.cond.Wait() // every extent that could make room has writes in flight
			continue
		}
		if err != nil || !need {
			return err
		}
		hot, seq := l.al.Snapshot()
		if err := l.store.PersistAL(hot); err != nil {
			// Not issued: unpin. The extents stay hot but unpersisted,
			// so the next Begin on them persists again.
			l.al.End(int64(off), int64(n))
			l.cond.Broadcast()
			return fmt.Errorf("persist activity log: %w", err)
		}
		l.al.Persisted(seq)
		return nil
	}
}

// after is Hooks.AfterWrite.
func (l *activityLog) after(off, n uint64) {
	l.mu.Lock()
	l.al.End(int64(off), int64(n))
	l.mu.Unlock()
	l.cond.Broadcast()
}

// ---- persistence of the engine's state in the metadata store ----

// persister keeps the metadata in step with the engine: GIs at once
// (OnGenIDs), bitmap chunks that become dirty at once (before the write
// completes), chunks that become clean lazily (flush). Its methods are
// called from the engine's hooks, under the volume's lock: they must not
// call the Volume.
type persister struct {
	store *meta.Store
	log   *slog.Logger

	// wmu serialises the bitmap chunk writes (taken before mu): a chunk
	// is encoded and written under it, so writes land in the order the
	// encodings were taken. mu itself is never held across a store
	// write of bitmap chunks, so clean (called under the engine's lock
	// on every resync step) never waits for the disk.
	wmu     sync.Mutex
	mu      sync.Mutex
	bm      *replication.Bitmap // mirror of the engine's bitmap
	pending map[uint64]bool     // chunks cleaned since the last flush, or whose write failed
	// unsaved holds the chunks whose last write failed: bits set in bm
	// that the store may not have. They stay in pending too, so that
	// the next flush retries them, and dirty writes them again even
	// when it sets no new bit.
	unsaved map[uint64]bool
	// failures counts failed chunk writes; lastFailure is the latest.
	failures    uint64
	lastFailure string
	// events, when set, gets a "metadata" event when chunks become
	// unsaved and when the last of them is written.
	events *admin.EventLog
	gen    meta.Generations // as stored, flags included
	role   meta.Role
	peer   string
	// durable, when set, makes every completed local write durable
	// (the backing store's Flush). A chunk written by flushAll may
	// record blocks in sync, and on a sync target "in sync" is only
	// true once the resynced data is on the disk: a clean bit persisted
	// before its data would, after a power loss, skip blocks that the
	// disk never got. So flushAll encodes the chunks, calls durable,
	// and only then writes them (a set bit is always safe to keep).
	durable func() error
}

// chunkBlocks is the number of bitmap blocks per stored chunk: 4 KiB of
// bits, 128 MiB of volume at the 4 KiB bitmap granularity, so that
// marking one write out of sync rewrites a small record.
const chunkBlocks = 4096 * 8

func newPersister(store *meta.Store, bm *replication.Bitmap, log *slog.Logger) (*persister, error) {
	p := &persister{store: store, log: log, bm: bm, pending: map[uint64]bool{}, unsaved: map[uint64]bool{}}
	st, err := store.State()
	if err != nil {
		return nil, err
	}
	p.gen, p.role, p.peer = st.Gen, st.Role, st.PeerDisk
	bs := uint64(bm.BlockSize())
	err = store.LoadBitmapChunks(func(idx uint64, b []byte) error {
		if len(b) > chunkBlocks/8 {
			return fmt.Errorf("%w: bitmap chunk %d has %d bytes, want at most %d", meta.ErrCorrupt, idx, len(b), chunkBlocks/8)
		}
		base := idx * chunkBlocks
		var err error
		eachRun(b, func(from, to uint64) {
			if err != nil {
				return
			}
			if base+to > bm.Blocks() {
				err = fmt.Errorf("%w: bitmap chunk %d marks block %d past the end (%d blocks)", meta.ErrCorrupt, idx, base+to-1, bm.Blocks())
				return
			}
			start := (base + from) * bs
			bm.Set(start, min((base+to)*bs, bm.VolumeSize())-start)
		})
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("load bitmap: %w", err)
	}
	return p, nil
}

// snapshot returns a copy of the bitmap for replication.State.
func (p *persister) snapshot() *replication.Bitmap {
	p.mu.Lock()
	defer p.mu.Unlock()
	c, _ := replication.NewBitmap(p.bm.VolumeSize(), p.bm.BlockSize())
	c.Merge(p.bm)
	return c
}

func (p *persister) replace(bm *replication.Bitmap) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.bm = bm
	for idx := uint64(0); idx*chunkBlocks < bm.Blocks(); idx++ {
		p.pending[idx] = true
	}
}

// chunksLocked encodes the chunks idxs (sorted, distinct): bit i of byte
// j of chunk idx is block idx*chunkBlocks+8j+i. A clean chunk is nil (the
// store deletes it). One sweep over the bitmap serves every chunk.
func (p *persister) chunksLocked(idxs []uint64) map[uint64][]byte {
	out := make(map[uint64][]byte, len(idxs))
	bs := uint64(p.bm.BlockSize())
	nb := p.bm.Blocks()
	k := 0 // idxs[k] is the chunk being filled
	for pos := uint64(0); k < len(idxs); {
		pos = max(pos, idxs[k]*chunkBlocks*bs)
		off, n, ok := p.bm.NextDirtyRange(pos, ^uint64(0))
		if !ok {
			break
		}
		from, to := off/bs, min((off+n+bs-1)/bs, nb)
		// Spread [from, to) over the wanted chunks it touches.
		for k < len(idxs) && idxs[k]*chunkBlocks < to {
			first := idxs[k] * chunkBlocks
			last := min(first+chunkBlocks, nb)
			if from < last {
				b := out[idxs[k]]
				if b == nil {
					b = make([]byte, (last-first+7)/8)
					out[idxs[k]] = b
				}
				setBits(b, max(from, first)-first, min(to, last)-first)
			}
			if to < last {
				break
			}
			k++
		}
		pos = to * bs
	}
	for _, idx := range idxs {
		if _, ok := out[idx]; !ok {
			out[idx] = nil
		}
	}
	return out
}

// setBits sets bits [from, to) of b (bit i is b[i/8] & 1<<(i%8)).
func setBits(b []byte, from, to uint64) {
	for ; from < to && from%8 != 0; from++ {
		b[from/8] |= 1 << (from % 8)
	}
	for ; from+8 <= to; from += 8 {
		b[from/8] = 0xff
	}
	for ; from < to; from++ {
		b[from/8] |= 1 << (from % 8)
	}
}

// eachRun calls fn for every maximal run [from, to) of set bits in b.
func eachRun(b []byte, fn func(from, to uint64)) {
	n := uint64(len(b)) * 8
	set := func(i uint64) bool { return b[i/8]&(1<<(i%8)) != 0 }
	for i := uint64(0); i < n; {
		if i%8 == 0 && b[i/8] == 0 {
			i += 8
			continue
		}
		if !set(i) {
			i++
			continue
		}
		start := i
		for i < n {
			if i%8 == 0 && b[i/8] == 0xff {
				i += 8
			} else if set(i) {
				i++
			} else {
				break
			}
		}
		fn(start, i)
	}
}

// encodeLocked sorts idxs and encodes those chunks; p.mu held.
func (p *persister) encodeLocked(idxs []uint64) map[uint64][]byte {
	slices.Sort(idxs)
	return p.chunksLocked(idxs)
}

// putChunks writes chunks (encodeLocked's) in batches; p.wmu held, p.mu
// not.
func (p *persister) putChunks(idxs []uint64, chunks map[uint64][]byte) error {
	batch := map[uint64][]byte{}
	size := int64(0)
	// MaxBatchBytes is computed for chunks of MaxBitmapChunkSize; ours
	// are smaller, so more entries and more per-entry overhead: halve it.
	maxBatch := p.store.MaxBatchBytes() / 2
	for _, idx := range idxs {
		c := chunks[idx]
		if size+int64(len(c)) > maxBatch && len(batch) > 0 {
			if err := p.store.PutBitmapChunks(batch); err != nil {
				return err
			}
			batch, size = map[uint64][]byte{}, 0
		}
		batch[idx] = c
		size += int64(len(c))
	}
	if len(batch) == 0 {
		return nil
	}
	return p.store.PutBitmapChunks(batch)
}

func (p *persister) chunkRange(off, n uint64) (uint64, uint64) {
	bs := uint64(p.bm.BlockSize())
	return off / bs / chunkBlocks, (off + n - 1) / bs / chunkBlocks
}

// dirty is Hooks.OnBitmapDirty: persisted before returning. An error
// (the store cannot write) fails the engine's write that needed the bits
// (replication.ErrMetadata); the chunks are kept for the next flush or
// dirty to retry.
func (p *persister) dirty(off, n uint64) error {
	if n == 0 {
		return nil
	}
	p.wmu.Lock()
	defer p.wmu.Unlock()
	p.mu.Lock()
	from, to := p.chunkRange(off, n)
	if added, err := p.bm.Set(off, n); err == nil && added == 0 && !p.unsavedLocked(from, to) {
		// Every bit set in p.bm is persisted as set, but in unsaved
		// chunks (others only wait in pending for bits being cleared),
		// so there is nothing to write. This keeps the connect-time
		// report of the merged bitmap (one call per dirty run, within
		// the handshake timeout) from rewriting chunks the node
		// already has.
		p.mu.Unlock()
		return nil
	}
	var idxs []uint64
	for i := from; i <= to; i++ {
		idxs = append(idxs, i)
		delete(p.pending, i)
	}
	chunks := p.encodeLocked(idxs)
	p.mu.Unlock()
	if err := p.save(idxs, chunks); err != nil {
		return fmt.Errorf("persist out-of-sync bitmap [%d, %d): %w", off, off+n, err)
	}
	return nil
}

// unsavedLocked reports whether a chunk of [from, to] is unsaved; p.mu
// held.
func (p *persister) unsavedLocked(from, to uint64) bool {
	if len(p.unsaved) == 0 {
		return false
	}
	for i := from; i <= to; i++ {
		if p.unsaved[i] {
			return true
		}
	}
	return false
}

// save writes chunks (encodeLocked's) and keeps track of the ones it
// could not write: unsaved, and pending for the next flush. p.wmu held,
// p.mu not.
func (p *persister) save(idxs []uint64, chunks map[uint64][]byte) error {
	err := p.putChunks(idxs, chunks)
	p.mu.Lock()
	defer p.mu.Unlock()
	before := len(p.unsaved)
	for _, i := range idxs {
		if err != nil {
			p.unsaved[i], p.pending[i] = true, true
		} else {
			delete(p.unsaved, i)
		}
	}
	if err != nil {
		p.failedLocked(err)
	}
	switch after := len(p.unsaved); {
	case p.events == nil:
	case before == 0 && after > 0:
		p.events.Append(admin.Event{Source: "agent", Kind: "metadata", From: "ok", To: "failing",
			Reason: fmt.Sprintf("%d bitmap chunks not recorded: %s", after, p.lastFailure)})
	case before > 0 && after == 0:
		p.events.Append(admin.Event{Source: "agent", Kind: "metadata", From: "failing", To: "ok",
			Reason: fmt.Sprintf("bitmap recorded after %d failed writes", p.failures)})
	}
	return err
}

// failedLocked counts a failed store write for status; p.mu held.
func (p *persister) failedLocked(err error) {
	p.failures++
	p.lastFailure = err.Error()
}

// unsavedChunks is the number of bitmap chunks whose bits the store may
// lack, with the count of failed writes and the last failure (status).
func (p *persister) unsavedChunks() (chunks int, failures uint64, last string) {
	p.mu.Lock()
	defer p.mu.Unlock()
	return len(p.unsaved), p.failures, p.lastFailure
}

// merged is Hooks.OnBitmapMerged: every bit set in bm is set here and
// persisted before returning, each touched chunk written once.
func (p *persister) merged(bm *replication.Bitmap) error {
	p.wmu.Lock()
	defer p.wmu.Unlock()
	p.mu.Lock()
	touched := map[uint64]bool{}
	for pos := uint64(0); ; {
		off, n, ok := bm.NextDirtyRange(pos, ^uint64(0))
		if !ok {
			break
		}
		pos = off + n
		from, to := p.chunkRange(off, n)
		if added, err := p.bm.Set(off, n); err != nil || (added == 0 && !p.unsavedLocked(from, to)) {
			continue // already persisted as set (see dirty)
		}
		for i := from; i <= to; i++ {
			touched[i] = true
			delete(p.pending, i)
		}
	}
	idxs := make([]uint64, 0, len(touched))
	for i := range touched {
		idxs = append(idxs, i)
	}
	chunks := p.encodeLocked(idxs)
	p.mu.Unlock()
	if err := p.save(idxs, chunks); err != nil {
		return fmt.Errorf("persist the out-of-sync bitmap (%d chunks): %w", len(idxs), err)
	}
	return nil
}

// markOutOfSync marks exts out of sync and persists the chunks they touch
// before returning.
func (p *persister) markOutOfSync(exts []replication.Extent) error {
	p.wmu.Lock()
	defer p.wmu.Unlock()
	p.mu.Lock()
	touched := map[uint64]bool{}
	for _, e := range exts {
		if e.Len == 0 {
			continue
		}
		if _, err := p.bm.Set(e.Off, e.Len); err != nil {
			p.mu.Unlock()
			return err
		}
		from, to := p.chunkRange(e.Off, e.Len)
		for i := from; i <= to; i++ {
			touched[i] = true
			delete(p.pending, i)
		}
	}
	idxs := make([]uint64, 0, len(touched))
	for i := range touched {
		idxs = append(idxs, i)
	}
	chunks := p.encodeLocked(idxs)
	p.mu.Unlock()
	return p.save(idxs, chunks)
}

// clean is Hooks.OnBitmapClean: persisted lazily by flush.
func (p *persister) clean(off, n uint64) {
	if n == 0 {
		return
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	p.bm.Clear(off, n)
	from, to := p.chunkRange(off, n)
	for i := from; i <= to; i++ {
		p.pending[i] = true
	}
}

func (p *persister) flush() {
	if err := p.flushAll(); err != nil {
		p.log.Error("persist bitmap", "err", err)
	}
}

func (p *persister) flushAll() error {
	p.wmu.Lock()
	defer p.wmu.Unlock()
	p.mu.Lock()
	if len(p.pending) == 0 {
		p.mu.Unlock()
		return nil
	}
	idxs := make([]uint64, 0, len(p.pending))
	for i := range p.pending {
		idxs = append(idxs, i)
	}
	chunks := p.encodeLocked(idxs)
	clear(p.pending)
	p.mu.Unlock()
	if err := p.makeDurable(); err != nil {
		p.mu.Lock()
		for _, i := range idxs {
			p.pending[i] = true // written by the next flush
		}
		p.mu.Unlock()
		return err
	}
	return p.save(idxs, chunks) // a failed chunk is pending again
}

// makeDurable calls durable, if set: everything written locally before
// the chunks were encoded reaches the disk before they do.
func (p *persister) makeDurable() error {
	if p.durable == nil {
		return nil
	}
	if err := p.durable(); err != nil {
		return fmt.Errorf("flush the backing store before recording blocks in sync: %w", err)
	}
	return nil
}

// genIDs is Hooks.OnGenIDs: persisted before returning.
func (p *persister) genIDs(g replication.GenIDs) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	gen := replicationGen(g)
	gen.Flags = p.gen.Flags
	if gen == p.gen {
		return nil
	}
	if err := p.store.SetGenerations(gen); err != nil {
		p.failedLocked(err)
		return fmt.Errorf("persist generation identifiers %s: %w", g.String(), err)
	}
	p.gen = gen
	return nil
}

// diskState is Hooks.OnDiskState: the consistent and was-up-to-date
// flags follow the local disk state before the engine acts in it (a
// resync target is recorded Inconsistent before its first resynced
// block is written). Called under the engine's lock, like genIDs.
func (p *persister) diskState(d replication.DiskState) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	if err := p.setFlagsLocked(p.gen.Flags&^diskFlagMask|diskFlags(d), p.gen); err != nil {
		p.failedLocked(err)
		return fmt.Errorf("persist disk state %s: %w", d, err)
	}
	return nil
}

// diskFlagMask are the flags diskState owns.
const diskFlagMask = meta.FlagConsistent | meta.FlagWasUpToDate

// updateFlags is setFlags for callers working from a status snapshot
// (the periodic poll, promotion), which may be older than what the hooks
// have persisted since: it changes only the flags the hooks do not own
// (crashed-primary, lost-cache, peer-outdated), keeping the persisted
// generations and disk-state flags.
func (p *persister) updateFlags(f meta.GenFlags) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.setFlagsLocked(f&^diskFlagMask|p.gen.Flags&diskFlagMask, p.gen)
}

// setFlags persists the disk-state flags with gen (skipped when nothing
// changed). An error is logged and returned; the next call retries.
func (p *persister) setFlags(f meta.GenFlags, gen meta.Generations) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.setFlagsLocked(f, gen)
}

func (p *persister) setFlagsLocked(f meta.GenFlags, gen meta.Generations) error {
	gen.Flags = f
	if gen == p.gen {
		return nil
	}
	if err := p.store.SetGenerations(gen); err != nil {
		p.log.Error("persist disk flags", "err", err)
		return fmt.Errorf("persist disk flags: %w", err)
	}
	p.gen = gen
	return nil
}

func (p *persister) setRole(r meta.Role) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	if r == p.role {
		return nil
	}
	if err := p.store.SetRole(r); err != nil {
		return fmt.Errorf("persist role: %w", err)
	}
	p.role = r
	return nil
}

func (p *persister) setPeerDisk(s string) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if s == p.peer {
		return
	}
	if err := p.store.SetPeerDisk(s); err != nil {
		p.log.Error("persist peer disk state", "err", err)
		return
	}
	p.peer = s
}

package replication

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"time"
)

// Resync, source side. The resyncer goroutine sweeps the bitmap from the
// start: for each dirty run (up to ResyncChunk) it takes the range lock,
// reads the local data, queues a ResyncData and releases the lock. The
// target writes it (ordered after any earlier overlapping Write, see
// receiver) and acks; on the ack the source clears those bits. A pass
// that ends with bits still set (failed acks, or bits set meanwhile by
// verify) is followed by another; the resync ends when the bitmap is
// clean and nothing is in flight.
//
// Why a foreground write can never be overwritten by stale resync data:
// both go through the range lock on the source, and both are queued on
// the one ordered connection while it is held. If the foreground write
// got the lock first, the resync read sees its data; if the resync got
// it first, the Write is queued after the ResyncData, and the target
// applies overlapping requests in queue order, so the Write lands last.
// (The target never reorders; it needs no "drop resync data" rule.)
//
// Rate control: after each chunk the resyncer waits until
// chunk/rate has passed since the previous one (a token bucket with no
// burst). rate is ResyncRate, or ResyncMinRate while foreground writes
// are in flight and ResyncDynamic is set, so application I/O keeps the
// link and disks first while resync still always progresses.

// resyncReq is an unacknowledged ResyncData or ChecksumRequest.
type resyncReq struct {
	off, n uint64
	sum    []byte // the digest sent in a ChecksumRequest, else nil
}

func (l *link) kickResync() {
	select {
	case l.kick <- struct{}{}:
	default:
	}
}

func (l *link) resyncer() {
	defer l.wg.Done()
	for {
		select {
		case <-l.kick:
		case <-l.dead:
			return
		}
		l.sweep()
	}
}

func (l *link) sweep() {
	v := l.v
	var pos uint64
	l.mu.Lock()
	failures := l.resyncFailures
	l.mu.Unlock()
	for {
		if !l.waitUnpaused() {
			return
		}
		v.mu.Lock()
		off, n, ok := v.bm.NextDirtyRange(pos, uint64(v.cfg.ResyncChunk))
		v.mu.Unlock()
		if !ok {
			if !l.waitResyncIdle() {
				return
			}
			v.mu.Lock()
			left := v.bm.Count()
			v.mu.Unlock()
			if left == 0 {
				// The target's acks mean "written", not "durable":
				// it must not become UpToDate (and persist so)
				// before everything it received is on its disk.
				switch again, ok := l.flushTarget(); {
				case !ok:
					return
				case again:
					pos = 0
					continue
				}
				l.finishResync()
				return
			}
			l.mu.Lock()
			failed := l.resyncFailures != failures
			failures = l.resyncFailures
			l.mu.Unlock()
			if failed {
				l.log.Error("resync stalled: peer failed resync writes", "blocks_left", left)
				return
			}
			l.log.Info("resync pass left dirty blocks; another pass", "blocks_left", left)
			pos = 0
			continue
		}
		pos = off + n
		useSum := v.cfg.ResyncChecksums && !l.forced(off, n)
		// A checksum request moves no data: only data is rate limited.
		if !useSum && !l.throttle(n) {
			return
		}
		select {
		case l.resyncSem <- struct{}{}:
		case <-l.dead:
			return
		}
		// Data is read straight into its frame (ID filled in below).
		frame, buf := newResyncDataFrame(0, off, int(n))
		h := v.locks.lock(off, off+n)
		_, err := v.dev.ReadAt(buf, int64(off))
		if err != nil {
			v.locks.unlock(h)
			<-l.resyncSem
			v.localFailed(err)
			l.fail(fmt.Errorf("%w: resync source read failed: %w", ErrNoGoodDisk, err))
			return
		}
		l.mu.Lock()
		if l.closed {
			l.mu.Unlock()
			v.locks.unlock(h)
			return
		}
		l.nextID++
		id := idResync | l.nextID
		req := resyncReq{off: off, n: n}
		if useSum {
			req.sum = digest(ChecksumSHA256, buf)
		}
		l.resyncs[id] = req
		l.mu.Unlock()
		if useSum {
			err = l.send(&ChecksumRequest{ID: id, Offset: off, Length: uint32(n), Algo: ChecksumSHA256, Sum: req.sum})
		} else {
			binary.BigEndian.PutUint64(frame[HeaderSize:], id)
			if err = sealPayload(frame, MsgResyncData, 0); err != nil {
				l.fail(fmt.Errorf("encode %v: %w", MsgResyncData, err))
			} else {
				err = l.sendFrame(frame, MsgResyncData)
			}
		}
		v.locks.unlock(h)
		if err != nil {
			return
		}
		if !useSum {
			v.resyncBytes.Add(n)
		}
	}
}

func (l *link) resyncAcked(id uint64, st Status) error {
	l.mu.Lock()
	r, ok := l.resyncs[id]
	delete(l.resyncs, id)
	if st != StatusOK {
		l.resyncFailures++
	}
	l.mu.Unlock()
	if !ok {
		return fmt.Errorf("ack for unknown resync request %#x", id)
	}
	// Clear before releasing the slot: the sweep treats "all slots
	// free" as "every ack applied" and then counts what is left.
	defer func() { <-l.resyncSem }()
	v := l.v
	if st != StatusOK {
		l.log.Warn("peer failed resync write", "off", r.off, "len", r.n, "status", st.String())
		return nil
	}
	v.mu.Lock()
	v.clearLocked(r.off, r.n)
	v.resyncDone += r.n
	v.mu.Unlock()
	return nil
}

// handleChecksumReply: equal digests mean the range is in sync (the
// target compared at the same point of the ordered stream); otherwise
// the range is forced to travel as data in the next pass.
func (l *link) handleChecksumReply(m *ChecksumReply) error {
	l.mu.Lock()
	r, ok := l.resyncs[m.ID]
	delete(l.resyncs, m.ID)
	equal := ok && m.Status == StatusOK && bytes.Equal(m.Sum, r.sum)
	if ok && !equal {
		if l.forceData == nil {
			l.forceData, _ = NewBitmap(l.v.size, l.v.cfg.blockSize())
		}
		l.forceData.Set(r.off, r.n)
	}
	l.mu.Unlock()
	if !ok || r.sum == nil {
		return fmt.Errorf("checksum reply for unknown request %#x", m.ID)
	}
	if equal {
		v := l.v
		v.mu.Lock()
		v.clearLocked(r.off, r.n)
		v.resyncDone += r.n
		v.mu.Unlock()
	}
	<-l.resyncSem // after clearing, as in resyncAcked
	return nil
}

// forced reports whether any block of [off, off+n) must travel as data.
func (l *link) forced(off, n uint64) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.forceData == nil {
		return false
	}
	bs := uint64(l.forceData.BlockSize())
	i, ok := l.forceData.NextDirty(off / bs)
	return ok && i*bs < off+n
}

// waitResyncIdle waits until every ResyncData is acked.
func (l *link) waitResyncIdle() bool {
	for i := 0; i < cap(l.resyncSem); i++ {
		select {
		case l.resyncSem <- struct{}{}:
		case <-l.dead:
			for ; i > 0; i-- {
				<-l.resyncSem
			}
			return false
		}
	}
	for i := 0; i < cap(l.resyncSem); i++ {
		<-l.resyncSem
	}
	return true
}

func (l *link) throttle(n uint64) bool {
	v := l.v
	rate := v.cfg.ResyncRate
	if v.cfg.ResyncDynamic && v.inflight.busy() {
		rate = v.cfg.ResyncMinRate
	}
	now := time.Now()
	if l.nextSync.After(now) {
		t := time.NewTimer(l.nextSync.Sub(now))
		select {
		case <-t.C:
		case <-l.dead:
			t.Stop()
			return false
		}
		now = l.nextSync
	}
	l.nextSync = now.Add(time.Duration(float64(n) / float64(rate) * float64(time.Second)))
	return true
}

func (l *link) waitUnpaused() bool {
	v := l.v
	for {
		v.mu.Lock()
		paused, ch := v.paused, v.pauseCh
		v.mu.Unlock()
		if !paused {
			return true
		}
		select {
		case <-ch:
		case <-l.dead:
			return false
		}
	}
}

// flushTarget makes the resynced data durable on the target before the
// resync is declared finished: a Flush, ordered after every ResyncData
// sent, completes only once the target has applied them all and flushed
// its disk. ok is false when the link died or the target's flush
// failed (the resync does not finish on this link); again is true when
// blocks became out of sync meanwhile (another pass first).
func (l *link) flushTarget() (again, ok bool) {
	ch := l.startFlush()
	if ch == nil {
		return false, false
	}
	var err error
	select {
	case err = <-ch:
	case <-l.dead:
		// Not the ack: teardown, which fails pending flushes, runs only
		// once this goroutine (one of the link's) has returned.
		return false, false
	}
	if err != nil {
		if !errors.Is(err, ErrPeerGone) {
			l.log.Error("resync target failed to flush its disk; resync not finished", "err", err)
		}
		return false, false
	}
	v := l.v
	v.mu.Lock()
	left := v.bm.Count()
	v.mu.Unlock()
	return left != 0, true
}

// finishResync ends a resync on the source and tells the target.
func (l *link) finishResync() {
	v := l.v
	v.mu.Lock()
	if v.repl == PausedSyncS {
		v.setReplLocked(SyncSource, "resync finished")
	}
	if v.repl == SyncSource {
		g := v.gi
		g.FinishResyncSource()
		v.setGILocked(g, "resync finished (source)")
		v.setReplLocked(Established, "resync finished")
	}
	v.setPeerDiskLocked(UpToDate)
	v.resyncEnd = time.Now()
	sc := &StateChange{Role: v.role, Disk: v.disk, Repl: Established, GI: v.gi}
	v.mu.Unlock()
	l.log.Info("resync finished")
	l.send(sc)
}

// PauseResync pauses a running (or the next) resync on this node when it
// is the sync source; ResumeResync continues it.
func (v *Volume) PauseResync() {
	v.mu.Lock()
	defer v.mu.Unlock()
	v.paused = true
	if v.repl == SyncSource {
		v.setReplLocked(PausedSyncS, "paused")
	}
}

// ResumeResync resumes a paused resync.
func (v *Volume) ResumeResync() {
	v.mu.Lock()
	defer v.mu.Unlock()
	if !v.paused {
		return
	}
	v.paused = false
	close(v.pauseCh)
	v.pauseCh = make(chan struct{})
	if v.repl == PausedSyncS {
		v.setReplLocked(SyncSource, "resumed")
	}
}

// Extent is a byte range of the volume.
type Extent struct{ Off, Len uint64 }

// VerifyResult is the outcome of online verify.
type VerifyResult struct {
	// Checked is the number of bytes compared.
	Checked uint64
	// OutOfSync lists the blocks (one Extent per block) whose digests
	// differed; they are marked in the bitmap.
	OutOfSync []Extent
}

type verifyOp struct {
	off, n uint64
	local  []byte
	ch     chan *VerifyReply
}

// Verify compares the whole volume with the peer (run it on the Primary,
// or with no Primary at all), VerifyChunk by
// VerifyChunk, re-checking mismatching chunks block by block. Blocks
// that differ are marked out of sync and returned. With repair set (only
// on the Primary) they are then resynced from this node; Verify does not
// wait for that resync. It may run while the volume serves writes: the
// local read and the request are ordered against writes by the range
// lock, and the peer reads after every earlier overlapping write.
func (v *Volume) Verify(ctx context.Context, repair bool) (VerifyResult, error) {
	var res VerifyResult
	v.mu.Lock()
	l := v.link
	switch {
	case l == nil:
		v.mu.Unlock()
		return res, fmt.Errorf("replication: verify: %w", ErrNotConnected)
	case v.repl != Established || v.verifying:
		v.mu.Unlock()
		return res, fmt.Errorf("replication: verify while %v: %w", v.repl, ErrBusy)
	case repair && v.role != RolePrimary:
		v.mu.Unlock()
		return res, fmt.Errorf("replication: verify repair from a secondary: %w", ErrNotPrimary)
	case v.peerRole == RolePrimary:
		// Our reads would race the Primary's writes still on their way
		// to us: false mismatches. Verify from the Primary.
		v.mu.Unlock()
		return res, fmt.Errorf("replication: verify from the secondary while %s is primary: %w", v.peerName, ErrNotPrimary)
	}
	v.verifying = true
	v.verifyTotal, v.verifyDone = v.size, 0
	v.setReplLocked(VerifyS, "verify")
	v.mu.Unlock()
	defer func() {
		v.mu.Lock()
		v.verifying = false
		if v.repl == VerifyS {
			v.setReplLocked(Established, "verify done")
		}
		v.mu.Unlock()
	}()

	chunk := uint64(v.cfg.VerifyChunk)
	bs := uint64(v.cfg.blockSize())
	var window []*verifyOp
	check := func(op *verifyOp) error {
		var rep *VerifyReply
		select {
		case rep = <-op.ch:
		case <-ctx.Done():
			return ctx.Err()
		}
		if rep == nil {
			return fmt.Errorf("replication: verify: %w", ErrPeerGone)
		}
		if rep.Status == StatusOK && bytes.Equal(rep.Sum, op.local) {
			return nil
		}
		if op.n > bs {
			// Drill down block by block.
			var sub []*verifyOp
			for o := op.off; o < op.off+op.n; o += bs {
				s, err := l.startVerify(o, bs)
				if err != nil {
					return err
				}
				sub = append(sub, s)
			}
			for _, s := range sub {
				rep := <-s.ch
				if rep == nil {
					return fmt.Errorf("replication: verify: %w", ErrPeerGone)
				}
				if rep.Status != StatusOK || !bytes.Equal(rep.Sum, s.local) {
					res.OutOfSync = append(res.OutOfSync, Extent{s.off, s.n})
				}
			}
			return nil
		}
		res.OutOfSync = append(res.OutOfSync, Extent{op.off, op.n})
		return nil
	}
	for off := uint64(0); off < v.size || len(window) > 0; {
		if off < v.size && len(window) < v.cfg.ResyncInflight {
			n := min(chunk, v.size-off)
			op, err := l.startVerify(off, n)
			if err != nil {
				return res, err
			}
			window = append(window, op)
			off += n
			continue
		}
		op := window[0]
		window = window[1:]
		if err := check(op); err != nil {
			return res, err
		}
		res.Checked += op.n
		v.mu.Lock()
		v.verifyDone += op.n
		v.mu.Unlock()
	}
	v.mu.Lock()
	var metaErr error
	for _, e := range res.OutOfSync {
		if err := v.markDirtyLocked(e.Off, e.Len); err != nil && metaErr == nil {
			metaErr = err
		}
	}
	start := repair && len(res.OutOfSync) > 0 && v.link == l
	if start {
		v.setReplLocked(Established, "verify done")
		v.setReplLocked(WFBitMapS, "verify repair")
		v.setReplLocked(SyncSource, "verify repair")
		v.startResyncStatsLocked()
	}
	v.mu.Unlock()
	if len(res.OutOfSync) > 0 {
		v.log.Warn("verify found out-of-sync blocks", "blocks", len(res.OutOfSync), "repair", repair)
	}
	if start {
		l.kickResync()
	}
	if metaErr != nil {
		return res, fmt.Errorf("replication: verify found %d out-of-sync ranges: %w", len(res.OutOfSync), metaErr)
	}
	return res, nil
}

// startVerify hashes [off, off+n) locally and asks the peer for its
// digest of the same range, under the range lock.
func (l *link) startVerify(off, n uint64) (*verifyOp, error) {
	v := l.v
	buf := make([]byte, n)
	h := v.locks.lock(v.blockRange(off, n))
	defer v.locks.unlock(h)
	if _, err := v.dev.ReadAt(buf, int64(off)); err != nil {
		v.localFailed(err)
		return nil, fmt.Errorf("replication: verify read: %w", err)
	}
	algo := v.cfg.VerifyAlgo
	if algo == 0 {
		algo = ChecksumSHA256
	}
	op := &verifyOp{off: off, n: n, local: digest(algo, buf), ch: make(chan *VerifyReply, 1)}
	l.mu.Lock()
	if l.closed {
		l.mu.Unlock()
		return nil, fmt.Errorf("replication: verify: %w", ErrPeerGone)
	}
	l.nextID++
	id := l.nextID
	l.verifies[id] = op.ch
	l.mu.Unlock()
	req := &VerifyRequest{ChecksumRequest{ID: id, Offset: off, Length: uint32(n), Algo: algo}}
	if err := l.send(req); err != nil {
		return nil, err
	}
	return op, nil
}

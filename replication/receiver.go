package replication

import (
	"bytes"
	"crypto/sha256"
	"encoding/binary"
	"hash/crc32"
	"sync"
)

// receiver applies what the peer sends: writes, resync data, flushes,
// barriers, and the reads behind verify and remote-read requests.
//
// Ordering rule: requests are submitted in arrival order (the reader
// goroutine is the only submitter). Each one first waits for every
// earlier request still active whose block range overlaps its own, then
// runs. So overlapping requests take effect in the order the peer sent
// them, which is the order they took effect on the peer (see
// rangeLocks), while non-overlapping ones run concurrently. Flush and
// Barrier wait for every earlier request; later requests do not wait for
// them. At most cap(sem) requests are active; the reader blocks (and so
// pushes back on the peer through TCP) beyond that.
type receiver struct {
	l      *link
	sem    chan struct{}
	mu     sync.Mutex
	active []*rentry
	// inline is set while submitInline runs work on the reader
	// goroutine (which alone reads and writes it).
	inline bool
}

// inlineWrite is the largest write the reader applies itself when the
// receiver is idle (see submitInline): every size a Write or ResyncData
// can carry. Concurrent pwrites to one file gain nothing from the page
// cache (the kernel serialises buffered writes to an inode) and cost a
// goroutine, a thread hand-off and lock contention each; applied in
// arrival order by the reader they are cheapest, and TCP buffers what
// arrives meanwhile. Writes with FUA or a flush before them (which wait
// for the disk) still run on their own goroutine.
const inlineWrite = MaxData

type rentry struct {
	off, end uint64
	all      bool // flush/barrier: depends on every earlier entry
	done     chan struct{}
}

func (r *receiver) submit(off, end uint64, all bool, work func()) {
	r.submitInline(off, end, all, false, work)
}

// submitInline is submit, except that with inline set and nothing
// active it runs work on the caller (the reader) instead of a new
// goroutine: nothing earlier can overlap, and nothing later is read
// until it returns, so the ordering rule holds trivially. Used for
// small writes, where a goroutine hand-off costs more than the work.
func (r *receiver) submitInline(off, end uint64, all, inline bool, work func()) {
	l := r.l
	if inline {
		r.mu.Lock()
		idle := len(r.active) == 0
		r.mu.Unlock()
		if idle {
			r.inline = true
			work()
			r.inline = false
			return
		}
	}
	select {
	case r.sem <- struct{}{}:
	case <-l.dead:
		return
	}
	e := &rentry{off: off, end: end, all: all, done: make(chan struct{})}
	r.mu.Lock()
	var deps []chan struct{}
	for _, a := range r.active {
		if all || (!a.all && a.off < end && off < a.end) {
			deps = append(deps, a.done)
		}
	}
	r.active = append(r.active, e)
	r.mu.Unlock()
	l.wg.Add(1)
	go func() {
		defer l.wg.Done()
		for _, d := range deps {
			<-d
		}
		work()
		r.mu.Lock()
		for i, a := range r.active {
			if a == e {
				r.active = append(r.active[:i], r.active[i+1:]...)
				break
			}
		}
		r.mu.Unlock()
		close(e.done)
		<-r.sem
	}()
}

// localIO runs fn on the local disk under the range lock, or reports
// StatusIOError if the disk is detached or fn fails.
func (r *receiver) localIO(off, n uint64, fn func() error) Status {
	v := r.l.v
	if !v.localOK() {
		return StatusIOError
	}
	if off > v.size || n > v.size-off {
		return StatusOutOfRange
	}
	lo, hi := v.blockRange(off, n)
	h := v.locks.lock(lo, hi)
	err := fn()
	v.locks.unlock(h)
	if err != nil {
		v.localFailed(err)
		return StatusIOError
	}
	return StatusOK
}

// submitWrite applies m; buf (which m.Data aliases) goes back to
// the frame pools once the data is written.
func (r *receiver) submitWrite(m *Write, buf []byte) {
	l, v := r.l, r.l.v
	lo, hi := v.blockRange(m.Offset, uint64(len(m.Data)))
	inline := len(m.Data) <= inlineWrite && m.Flags&(WriteFUA|WriteFlushBefore) == 0
	r.submitInline(lo, hi, false, inline, func() {
		st := r.localIO(m.Offset, uint64(len(m.Data)), func() error {
			if m.Flags&WriteFlushBefore != 0 {
				if err := v.dev.Flush(); err != nil {
					return err
				}
			}
			if _, err := v.dev.WriteAt(m.Data, int64(m.Offset)); err != nil {
				return err
			}
			if m.Flags&WriteFUA != 0 {
				return v.dev.Flush()
			}
			return nil
		})
		v.writes.Add(1)
		v.bytesWritten.Add(uint64(len(m.Data)))
		putFrameBuf(buf)
		if st != StatusOK {
			// Our copy of the range is now stale: remember it. The
			// Primary marks it too when it gets the failed ack; an
			// error here is counted and logged by markDirty.
			_ = v.markDirty(m.Offset, uint64(len(m.Data)))
		}
		// Protocol C acks every write once written; A and B ack here
		// only failures (B acked receipt already, and BarrierAck says
		// the epoch is on disk).
		switch {
		case l.proto == ProtocolC && st == StatusOK && r.inline:
			l.queueAck(m.ID) // the reader sends it with others
		case l.proto == ProtocolC || st != StatusOK:
			l.send(&WriteAck{Status: st, IDs: []uint64{m.ID}})
		}
	})
}

func (r *receiver) submitDiscard(m *Discard) {
	l, v := r.l, r.l.v
	n := uint64(m.Length)
	lo, hi := v.blockRange(m.Offset, n)
	if m.Offset > v.size || n > v.size-m.Offset {
		lo, hi = 0, 0
	}
	r.submit(lo, hi, false, func() {
		st := r.localIO(m.Offset, n, func() error { return v.dev.Discard(int64(m.Offset), int64(n)) })
		if st == StatusIOError {
			_ = v.markDirty(m.Offset, n) // as in submitWrite
		}
		switch {
		case l.proto == ProtocolC && st == StatusOK && r.inline:
			l.queueAck(m.ID) // the reader sends it with others
		case l.proto == ProtocolC || st != StatusOK:
			l.send(&WriteAck{Status: st, IDs: []uint64{m.ID}})
		}
	})
}

// submitResync applies m; buf as for submitWrite.
func (r *receiver) submitResync(m *ResyncData, buf []byte) {
	l, v := r.l, r.l.v
	n := uint64(len(m.Data))
	lo, hi := v.blockRange(m.Offset, n)
	r.submitInline(lo, hi, false, true, func() {
		st := m.Status
		if st == StatusOK {
			st = r.localIO(m.Offset, n, func() error {
				_, err := v.dev.WriteAt(m.Data, int64(m.Offset))
				return err
			})
		}
		putFrameBuf(buf)
		if st == StatusOK {
			v.mu.Lock()
			v.clearLocked(m.Offset, n)
			v.resyncDone += n
			v.mu.Unlock()
			v.resyncBytes.Add(n)
		}
		if st == StatusOK && r.inline {
			l.queueAck(m.ID)
		} else {
			l.send(&WriteAck{Status: st, IDs: []uint64{m.ID}})
		}
	})
}

func (r *receiver) submitFlush(id uint64) {
	l, v := r.l, r.l.v
	r.submit(0, v.size, true, func() {
		st := StatusOK
		if !v.localOK() {
			st = StatusIOError
		} else if err := v.dev.Flush(); err != nil {
			v.localFailed(err)
			st = StatusIOError
		}
		l.send(&FlushAck{ID: id, Status: st})
	})
}

func (r *receiver) submitBarrier(nr uint64) {
	l, v := r.l, r.l.v
	r.submit(0, v.size, true, func() {
		if v.localOK() {
			if err := v.dev.Flush(); err != nil {
				v.localFailed(err)
			}
		}
		// A failed write of the epoch was already marked out of sync
		// here; the ack only tells the primary to forget the epoch.
		l.send(&BarrierAck{Nr: nr})
	})
}

// submitLocalRead queues a read of [off, off+n) from the local device,
// ordered with the writes around it like any request, and hands the
// result (data only when st is StatusOK) to done on the worker. A range
// outside the volume is left to localIO to refuse.
func (r *receiver) submitLocalRead(off uint64, n uint64, done func(st Status, data []byte)) {
	v := r.l.v
	lo, hi := v.blockRange(off, n)
	if off > v.size || n > v.size-off {
		lo, hi = 0, 0
	}
	r.submit(lo, hi, false, func() {
		buf := make([]byte, n)
		st := r.localIO(off, n, func() error {
			_, err := v.dev.ReadAt(buf, int64(off))
			return err
		})
		if st != StatusOK {
			buf = nil
		}
		done(st, buf)
	})
}

func (r *receiver) submitRead(m *ResyncRequest) {
	r.submitLocalRead(m.Offset, uint64(m.Length), func(st Status, data []byte) {
		r.l.send(&ResyncData{ID: m.ID, Offset: m.Offset, Status: st, Data: data})
	})
}

func (r *receiver) submitVerify(m *VerifyRequest) {
	r.submitLocalRead(m.Offset, uint64(m.Length), func(st Status, data []byte) {
		rep := &VerifyReply{ChecksumReply{ID: m.ID, Offset: m.Offset, Length: m.Length, Algo: m.Algo, Status: st}}
		if st == StatusOK {
			rep.Sum = digest(m.Algo, data)
		}
		r.l.send(rep)
	})
}

// submitChecksum answers a sync source's checksum with our digest of the
// same range, and clears our bits if they match.
func (r *receiver) submitChecksum(m *ChecksumRequest) {
	v := r.l.v
	n := uint64(m.Length)
	r.submitLocalRead(m.Offset, n, func(st Status, data []byte) {
		rep := &ChecksumReply{ID: m.ID, Offset: m.Offset, Length: m.Length, Algo: m.Algo, Status: st}
		if st == StatusOK {
			rep.Sum = digest(m.Algo, data)
			if bytes.Equal(rep.Sum, m.Sum) {
				v.mu.Lock()
				v.clearLocked(m.Offset, n)
				v.resyncDone += n
				v.mu.Unlock()
			}
		}
		r.l.send(rep)
	})
}

func digest(a ChecksumAlgo, b []byte) []byte {
	switch a {
	case ChecksumCRC32C:
		return binary.BigEndian.AppendUint32(nil, crc32.Checksum(b, castagnoli))
	default:
		s := sha256.Sum256(b)
		return s[:]
	}
}

package replication

import "sync"

// rangeLocks is an exclusive lock over byte ranges (rounded out to whole
// bitmap blocks by the caller). It orders, on one node, everything whose
// order must match on the wire: a foreground write holds its range from
// enqueueing its Write until its local write is done, and a resync or
// verify read holds its range from reading until its message is
// enqueued. So for any two overlapping operations, the one enqueued
// first also touched the local disk first. Non-overlapping operations do
// not wait for each other.
type rangeLocks struct {
	mu   sync.Mutex
	held []*heldRange // INVARIANT: pairwise non-overlapping
}

type heldRange struct {
	off, end uint64
	done     chan struct{}
}

// lock waits until no held range overlaps [off, end) and takes it.
func (r *rangeLocks) lock(off, end uint64) *heldRange {
	for {
		r.mu.Lock()
		var wait chan struct{}
		for _, h := range r.held {
			if h.off < end && off < h.end {
				wait = h.done
				break
			}
		}
		if wait == nil {
			h := &heldRange{off: off, end: end, done: make(chan struct{})}
			r.held = append(r.held, h)
			r.mu.Unlock()
			return h
		}
		r.mu.Unlock()
		<-wait
	}
}

func (r *rangeLocks) unlock(h *heldRange) {
	r.mu.Lock()
	for i, x := range r.held {
		if x == h {
			r.held[i] = r.held[len(r.held)-1]
			r.held = r.held[:len(r.held)-1]
			break
		}
	}
	r.mu.Unlock()
	close(h.done)
}

// inflights caps in-flight requests by count and bytes (etcd's
// inflights, blocking). A request larger than maxBytes is admitted when
// nothing else is in flight.
type inflights struct {
	mu       sync.Mutex
	cond     sync.Cond
	count    int
	bytes    int64
	maxCount int
	maxBytes int64
}

func newInflights(maxCount int, maxBytes int64) *inflights {
	f := &inflights{maxCount: maxCount, maxBytes: maxBytes}
	f.cond.L = &f.mu
	return f
}

func (f *inflights) acquire(n int64) {
	f.mu.Lock()
	for f.count >= f.maxCount || (f.count > 0 && f.bytes+n > f.maxBytes) {
		f.cond.Wait()
	}
	f.count++
	f.bytes += n
	f.mu.Unlock()
}

func (f *inflights) release(n int64) {
	f.mu.Lock()
	f.count--
	f.bytes -= n
	f.mu.Unlock()
	f.cond.Broadcast()
}

func (f *inflights) busy() bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.count > 0
}

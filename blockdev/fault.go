package blockdev

import (
	"fmt"
	"math/rand/v2"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// Op names a Device operation for fault injection. Ops combine as a bit
// set: OpRead|OpWrite.
type Op uint8

const (
	OpRead Op = 1 << iota
	OpWrite
	OpFlush
	OpDiscard

	// OpAll matches every operation.
	OpAll = OpRead | OpWrite | OpFlush | OpDiscard
)

func (o Op) String() string {
	if o == 0 {
		return "none"
	}
	var names []string
	for _, x := range []struct {
		op   Op
		name string
	}{{OpRead, "read"}, {OpWrite, "write"}, {OpFlush, "flush"}, {OpDiscard, "discard"}} {
		if o&x.op != 0 {
			names = append(names, x.name)
			o &^= x.op
		}
	}
	if o != 0 {
		names = append(names, fmt.Sprintf("Op(%#x)", uint8(o)))
	}
	return strings.Join(names, "|")
}

// Rule describes one fault. A request matches when its op is in Ops and
// its byte range overlaps [Off, Off+Len). Flush has no range and matches on
// its op alone.
type Rule struct {
	// Ops the rule applies to. Zero means OpAll.
	Ops Op
	// Off and Len select a byte range. Len 0 means the whole device.
	Off, Len int64
	// Err is returned by matching requests, wrapped with the op, offset
	// and length. Nil with no Latency means ErrIO; nil with Latency set
	// means "delay only, then run the request".
	Err error
	// Skip lets the first Skip matching requests through untouched.
	Skip int
	// Times is how often the rule fires after Skip; then it is spent.
	// Zero means every time (persistent); 1 means one-shot.
	Times int
	// Latency is added before a matching request runs (or fails).
	Latency time.Duration
	// Partial applies to writes that fail: the first Partial bytes of the
	// request are written to the device before the error is returned, as
	// a torn write would leave them. Zero writes nothing.
	Partial int
}

// Fault is an installed Rule. Its methods are safe for concurrent use.
type Fault struct {
	rule  Rule
	seen  atomic.Int64 // matching requests, including skipped ones
	fired atomic.Int64
	gone  atomic.Bool
}

// Fired reports how many requests the fault has acted on.
func (f *Fault) Fired() int64 { return f.fired.Load() }

// Remove disables the fault.
func (f *Fault) Remove() { f.gone.Store(true) }

// fire decides whether the fault acts on a matching request.
func (f *Fault) fire() bool {
	if f.gone.Load() {
		return false
	}
	k := f.seen.Add(1)
	if k <= int64(f.rule.Skip) {
		return false
	}
	if f.rule.Times > 0 && k > int64(f.rule.Skip+f.rule.Times) {
		return false
	}
	f.fired.Add(1)
	return true
}

func (f *Fault) matches(op Op, off, n int64) bool {
	ops := f.rule.Ops
	if ops == 0 {
		ops = OpAll
	}
	if ops&op == 0 {
		return false
	}
	if op == OpFlush || f.rule.Len == 0 {
		return true
	}
	// A zero-length request at off overlaps if off lies inside the range.
	end := off + max(n, 1)
	return off < f.rule.Off+f.rule.Len && f.rule.Off < end
}

// Counts is a snapshot of the operations a Faulty has seen.
type Counts struct {
	Reads, Writes, Flushes, Discards int64
	// Injected counts requests that failed because of a fault.
	Injected int64
}

// Faulty wraps a Device and injects errors and latency, in the manner of
// pebble's vfs/errorfs. It is safe for concurrent use; rules may be added
// and removed while I/O runs.
type Faulty struct {
	d Device

	mu     sync.Mutex
	faults []*Fault

	reads, writes, flushes, discards, injected atomic.Int64
}

var _ Device = (*Faulty)(nil)

// NewFaulty wraps d. With no rules it passes every call through.
func NewFaulty(d Device) *Faulty { return &Faulty{d: d} }

// Inject installs r and returns a handle to watch or remove it. Rules are
// checked in the order installed; the first one that fires with an error
// decides the outcome, and latencies of all firing rules add up.
func (f *Faulty) Inject(r Rule) *Fault {
	x := &Fault{rule: r}
	f.mu.Lock()
	f.faults = append(f.faults, x)
	f.mu.Unlock()
	return x
}

// Clear removes every rule.
func (f *Faulty) Clear() {
	f.mu.Lock()
	for _, x := range f.faults {
		x.Remove()
	}
	f.faults = nil
	f.mu.Unlock()
}

// Counts returns the number of calls seen so far, faulted or not.
func (f *Faulty) Counts() Counts {
	return Counts{
		Reads:    f.reads.Load(),
		Writes:   f.writes.Load(),
		Flushes:  f.flushes.Load(),
		Discards: f.discards.Load(),
		Injected: f.injected.Load(),
	}
}

// Unwrap returns the wrapped device.
func (f *Faulty) Unwrap() Device { return f.d }

// decide returns the fault that fails this request, if any, after
// sleeping for the latency of every rule that fires.
func (f *Faulty) decide(op Op, off, n int64) *Fault {
	f.mu.Lock()
	faults := f.faults
	f.mu.Unlock()
	var delay time.Duration
	var fail *Fault
	for _, x := range faults {
		if !x.matches(op, off, n) || !x.fire() {
			continue
		}
		delay += x.rule.Latency
		if fail == nil && (x.rule.Err != nil || x.rule.Latency == 0) {
			fail = x
		}
	}
	if delay > 0 {
		time.Sleep(delay)
	}
	if fail != nil {
		f.injected.Add(1)
	}
	return fail
}

func (x *Fault) err(op Op, off, n int64) error {
	err := x.rule.Err
	if err == nil {
		err = ErrIO
	}
	if op == OpFlush {
		return fmt.Errorf("blockdev: injected fault on flush: %w", err)
	}
	return fmt.Errorf("blockdev: injected fault on %v offset %d length %d: %w", op, off, n, err)
}

// ReadAt implements io.ReaderAt.
func (f *Faulty) ReadAt(p []byte, off int64) (int, error) {
	f.reads.Add(1)
	if x := f.decide(OpRead, off, int64(len(p))); x != nil {
		return 0, x.err(OpRead, off, int64(len(p)))
	}
	return f.d.ReadAt(p, off)
}

// WriteAt implements io.WriterAt.
func (f *Faulty) WriteAt(p []byte, off int64) (int, error) {
	f.writes.Add(1)
	if x := f.decide(OpWrite, off, int64(len(p))); x != nil {
		n := 0
		if k := min(x.rule.Partial, len(p)); k > 0 {
			n, _ = f.d.WriteAt(p[:k], off)
		}
		return n, x.err(OpWrite, off, int64(len(p)))
	}
	return f.d.WriteAt(p, off)
}

// Flush implements Device.
func (f *Faulty) Flush() error {
	f.flushes.Add(1)
	if x := f.decide(OpFlush, 0, 0); x != nil {
		return x.err(OpFlush, 0, 0)
	}
	return f.d.Flush()
}

// Discard implements Device.
func (f *Faulty) Discard(off, n int64) error {
	f.discards.Add(1)
	if x := f.decide(OpDiscard, off, n); x != nil {
		return x.err(OpDiscard, off, n)
	}
	return f.d.Discard(off, n)
}

// Size implements Device.
func (f *Faulty) Size() int64 { return f.d.Size() }

// ReadOnly implements Device.
func (f *Faulty) ReadOnly() bool { return f.d.ReadOnly() }

// Close implements Device. Faults never apply to Close.
func (f *Faulty) Close() error { return f.d.Close() }

// Crashable is an in-memory Device that simulates power loss: it keeps
// what has been flushed apart from writes that have completed but not been
// flushed, and CrashClone returns the device a reboot would find. It is
// safe for concurrent use.
type Crashable struct {
	mu       sync.Mutex
	cur      []byte // what reads see
	durable  []byte // what survives a crash
	pending  []pendingOp
	readOnly bool
	closed   bool
}

// pendingOp is a completed write (data != nil) or discard (data == nil,
// n bytes) not yet covered by a Flush.
type pendingOp struct {
	off  int64
	n    int64
	data []byte
}

var _ Device = (*Crashable)(nil)

// NewCrashable returns a zero-filled crash-simulating device of size bytes.
func NewCrashable(size int64) *Crashable {
	return &Crashable{cur: make([]byte, size), durable: make([]byte, size)}
}

func (c *Crashable) checkLocked(op string, off, n int64, write bool) error {
	if c.closed {
		return fmt.Errorf("blockdev: %s: %w", op, ErrClosed)
	}
	if off < 0 || n < 0 || off > int64(len(c.cur))-n {
		return fmt.Errorf("blockdev: %s offset %d length %d (size %d): %w", op, off, n, len(c.cur), ErrOutOfRange)
	}
	if write && c.readOnly {
		return fmt.Errorf("blockdev: %s offset %d length %d: %w", op, off, n, ErrReadOnly)
	}
	return nil
}

// ReadAt implements io.ReaderAt. Reads see unflushed writes.
func (c *Crashable) ReadAt(p []byte, off int64) (int, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if err := c.checkLocked("read", off, int64(len(p)), false); err != nil {
		return 0, err
	}
	return copy(p, c.cur[off:]), nil
}

// WriteAt implements io.WriterAt. The data is lost by a crash until the
// next Flush.
func (c *Crashable) WriteAt(p []byte, off int64) (int, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if err := c.checkLocked("write", off, int64(len(p)), true); err != nil {
		return 0, err
	}
	copy(c.cur[off:], p)
	c.pending = append(c.pending, pendingOp{off: off, n: int64(len(p)), data: append([]byte(nil), p...)})
	return len(p), nil
}

// Discard implements Device. Like a write, it is not durable until Flush.
func (c *Crashable) Discard(off, n int64) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if err := c.checkLocked("discard", off, n, true); err != nil {
		return err
	}
	clear(c.cur[off : off+n])
	c.pending = append(c.pending, pendingOp{off: off, n: n})
	return nil
}

// Flush implements Device: every write and discard completed so far
// becomes durable.
func (c *Crashable) Flush() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed {
		return fmt.Errorf("blockdev: flush: %w", ErrClosed)
	}
	for _, op := range c.pending {
		op.apply(c.durable, op.off, op.n)
	}
	c.pending = nil
	return nil
}

// apply writes the part [off, off+n) of op (which must lie inside op) to dst.
func (op pendingOp) apply(dst []byte, off, n int64) {
	if op.data == nil {
		clear(dst[off : off+n])
		return
	}
	copy(dst[off:off+n], op.data[off-op.off:])
}

// Pending reports how many writes and discards are not yet flushed.
func (c *Crashable) Pending() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.pending)
}

// CrashOptions chooses which unflushed writes survive a simulated crash.
type CrashOptions struct {
	// Rand, when set, lets each unflushed write or discard survive with
	// probability one half, applied in the order they completed. Nil
	// means none survives: the clone holds exactly what was flushed.
	Rand *rand.Rand
	// Sector, with Rand set, tears writes: each Sector-aligned piece of
	// each unflushed write survives independently, as on a disk that
	// only guarantees sector atomicity. Zero keeps whole writes together.
	Sector int64
}

// CrashClone returns a new, open, writable device holding what a reboot
// after power loss at this instant would find: everything flushed, plus
// the unflushed writes opts lets through. c itself is unchanged and may
// be used (or crashed again) afterwards, even when closed.
func (c *Crashable) CrashClone(opts CrashOptions) *Crashable {
	c.mu.Lock()
	defer c.mu.Unlock()
	clone := &Crashable{
		cur:     append([]byte(nil), c.durable...),
		durable: append([]byte(nil), c.durable...),
	}
	if opts.Rand == nil {
		return clone
	}
	for _, op := range c.pending {
		if opts.Sector <= 0 {
			if opts.Rand.IntN(2) == 0 {
				op.apply(clone.cur, op.off, op.n)
			}
			continue
		}
		for pos := op.off; pos < op.off+op.n; {
			next := min((pos/opts.Sector+1)*opts.Sector, op.off+op.n)
			if opts.Rand.IntN(2) == 0 {
				op.apply(clone.cur, pos, next-pos)
			}
			pos = next
		}
	}
	copy(clone.durable, clone.cur)
	return clone
}

// Size implements Device.
func (c *Crashable) Size() int64 { return int64(len(c.cur)) }

// SetReadOnly makes later writes and discards fail with ErrReadOnly.
func (c *Crashable) SetReadOnly(ro bool) {
	c.mu.Lock()
	c.readOnly = ro
	c.mu.Unlock()
}

// ReadOnly implements Device.
func (c *Crashable) ReadOnly() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.readOnly
}

// Close implements Device. Unflushed writes stay pending, so CrashClone
// after Close still models a crash of a device closed without Flush.
func (c *Crashable) Close() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed {
		return fmt.Errorf("blockdev: close: %w", ErrClosed)
	}
	c.closed = true
	return nil
}

package blockdev

import (
	"bytes"
	"errors"
	"math/rand/v2"
	"strings"
	"sync"
	"testing"
	"testing/synctest"
	"time"
)

func TestOpString(t *testing.T) {
	for op, want := range map[Op]string{
		0:                  "none",
		OpRead:             "read",
		OpWrite | OpFlush:  "write|flush",
		OpAll:              "read|write|flush|discard",
		OpDiscard | Op(64): "discard|Op(0x40)",
	} {
		if got := op.String(); got != want {
			t.Errorf("Op(%#x).String() = %q, want %q", uint8(op), got, want)
		}
	}
}

func TestFaultyPassThrough(t *testing.T) {
	m := NewMemory(8192)
	f := NewFaulty(m)
	p := pattern(1, 4096)
	if _, err := f.WriteAt(p, 4096); err != nil {
		t.Fatal(err)
	}
	got := make([]byte, 4096)
	if _, err := m.ReadAt(got, 4096); err != nil || !bytes.Equal(got, p) {
		t.Fatal("write did not reach the wrapped device")
	}
	if err := f.Flush(); err != nil {
		t.Fatal(err)
	}
	if err := f.Discard(0, 512); err != nil {
		t.Fatal(err)
	}
	if _, err := f.ReadAt(got, 0); err != nil {
		t.Fatal(err)
	}
	want := Counts{Reads: 1, Writes: 1, Flushes: 1, Discards: 1}
	if c := f.Counts(); c != want {
		t.Errorf("counts %+v, want %+v", c, want)
	}
	if f.Size() != 8192 || f.ReadOnly() || f.Unwrap() != m {
		t.Error("Size, ReadOnly or Unwrap do not pass through")
	}
}

func TestFaultyOneShotInRange(t *testing.T) {
	f := NewFaulty(NewMemory(1 << 16))
	fault := f.Inject(Rule{Ops: OpWrite, Off: 8192, Len: 4096, Times: 1})
	buf := make([]byte, 4096)

	if _, err := f.WriteAt(buf, 0); err != nil {
		t.Errorf("write outside the range failed: %v", err)
	}
	if _, err := f.ReadAt(buf, 8192); err != nil {
		t.Errorf("read in the range failed, but the rule is for writes: %v", err)
	}
	_, err := f.WriteAt(buf, 6144) // overlaps [8192, 12288) by 2048 bytes
	if !errors.Is(err, ErrIO) || !strings.Contains(err.Error(), "offset 6144 length 4096") {
		t.Fatalf("overlapping write: %v, want injected ErrIO with offset and length", err)
	}
	if _, err := f.WriteAt(buf, 8192); err != nil {
		t.Errorf("one-shot fault fired twice: %v", err)
	}
	if fault.Fired() != 1 || f.Counts().Injected != 1 || f.Counts().Writes != 3 {
		t.Errorf("fired %d, counts %+v", fault.Fired(), f.Counts())
	}
}

func TestFaultySkipTimesAndPersistent(t *testing.T) {
	f := NewFaulty(NewMemory(4096))
	f.Inject(Rule{Ops: OpFlush, Skip: 2, Times: 2, Err: ErrNoSpace})
	var got []bool
	for range 6 {
		err := f.Flush()
		if err != nil && !errors.Is(err, ErrNoSpace) {
			t.Fatalf("unexpected error %v", err)
		}
		got = append(got, err != nil)
	}
	if want := []bool{false, false, true, true, false, false}; !equalBools(got, want) {
		t.Errorf("flush failures %v, want %v", got, want)
	}

	persistent := f.Inject(Rule{Ops: OpRead | OpDiscard})
	for range 3 {
		if _, err := f.ReadAt(make([]byte, 1), 0); !errors.Is(err, ErrIO) {
			t.Fatalf("persistent read fault: %v", err)
		}
		if err := f.Discard(0, 1); !errors.Is(err, ErrIO) {
			t.Fatalf("persistent discard fault: %v", err)
		}
	}
	persistent.Remove()
	if _, err := f.ReadAt(make([]byte, 1), 0); err != nil {
		t.Errorf("read after Remove: %v", err)
	}
	f.Inject(Rule{})
	f.Clear()
	if err := f.Flush(); err != nil {
		t.Errorf("flush after Clear: %v", err)
	}
}

func equalBools(a, b []bool) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

func TestFaultyTornWrite(t *testing.T) {
	m := NewMemory(8192)
	f := NewFaulty(m)
	f.Inject(Rule{Ops: OpWrite, Times: 1, Partial: 1000})
	p := bytes.Repeat([]byte{7}, 4096)
	n, err := f.WriteAt(p, 0)
	if !errors.Is(err, ErrIO) || n != 1000 {
		t.Fatalf("torn write: n=%d err=%v, want 1000 and ErrIO", n, err)
	}
	got := make([]byte, 4096)
	m.ReadAt(got, 0)
	want := append(bytes.Repeat([]byte{7}, 1000), make([]byte, 3096)...)
	if !bytes.Equal(got, want) {
		t.Error("device does not hold exactly the torn prefix")
	}
}

func TestFaultyLatency(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		f := NewFaulty(NewMemory(4096))
		f.Inject(Rule{Ops: OpWrite, Latency: 30 * time.Millisecond})
		f.Inject(Rule{Ops: OpWrite, Latency: 20 * time.Millisecond, Err: ErrNoSpace, Times: 1})
		start := time.Now()
		if _, err := f.WriteAt([]byte{1}, 0); !errors.Is(err, ErrNoSpace) {
			t.Fatalf("first write: %v, want ErrNoSpace", err)
		}
		if d := time.Since(start); d != 50*time.Millisecond {
			t.Errorf("first write took %v, want both latencies (50ms)", d)
		}
		start = time.Now()
		if _, err := f.WriteAt([]byte{1}, 0); err != nil {
			t.Fatalf("latency-only rule failed the write: %v", err)
		}
		if d := time.Since(start); d != 30*time.Millisecond {
			t.Errorf("second write took %v, want 30ms", d)
		}
		start = time.Now()
		f.ReadAt(make([]byte, 1), 0)
		if d := time.Since(start); d != 0 {
			t.Errorf("read was delayed by %v", d)
		}
	})
}

func TestFaultyConcurrent(t *testing.T) {
	f := NewFaulty(NewMemory(1 << 16))
	fault := f.Inject(Rule{Ops: OpWrite, Off: 0, Len: 4096, Times: 5})
	var wg sync.WaitGroup
	var mu sync.Mutex
	failed := 0
	for g := range 4 {
		wg.Go(func() {
			buf := make([]byte, 512)
			for i := range 100 {
				off := int64((g*100 + i) % 128 * 512)
				if _, err := f.WriteAt(buf, off); err != nil {
					mu.Lock()
					failed++
					mu.Unlock()
				}
				f.ReadAt(buf, off)
			}
		})
	}
	wg.Wait()
	c := f.Counts()
	if failed != 5 || fault.Fired() != 5 || c.Injected != 5 || c.Writes != 400 || c.Reads != 400 {
		t.Errorf("failed %d, fired %d, counts %+v; want 5 failures of 400 writes", failed, fault.Fired(), c)
	}
}

func TestCrashCloneKeepsOnlyFlushed(t *testing.T) {
	c := NewCrashable(16 << 10)
	a, b := pattern(1, 4096), pattern(2, 4096)
	c.WriteAt(a, 0)
	c.WriteAt(b, 8192)
	if err := c.Flush(); err != nil {
		t.Fatal(err)
	}
	c.WriteAt(pattern(3, 4096), 0) // overwrites flushed data, unflushed
	c.Discard(8192, 4096)
	c.WriteAt(pattern(4, 4096), 4096)
	if c.Pending() != 3 {
		t.Fatalf("Pending() = %d, want 3", c.Pending())
	}

	clone := c.CrashClone(CrashOptions{})
	got := make([]byte, 16<<10)
	clone.ReadAt(got, 0)
	want := make([]byte, 16<<10)
	copy(want, a)
	copy(want[8192:], b)
	if !bytes.Equal(got, want) {
		t.Error("clone does not hold exactly the flushed data")
	}
	if clone.Pending() != 0 {
		t.Error("clone has pending writes")
	}

	// The original still reads its unflushed writes, even after Close.
	c.Close()
	c2 := c.CrashClone(CrashOptions{})
	c2.ReadAt(got, 0)
	if !bytes.Equal(got, want) {
		t.Error("clone of a closed device differs")
	}
	if _, err := c.ReadAt(got, 0); !errors.Is(err, ErrClosed) {
		t.Errorf("read after close: %v", err)
	}

	// A clone is a working device of its own.
	if _, err := clone.WriteAt([]byte{9}, 0); err != nil {
		t.Fatal(err)
	}
	if again := clone.CrashClone(CrashOptions{}); readByte(again, 0) != a[0] {
		t.Error("unflushed write on the clone survived its crash")
	}
}

func readByte(d Device, off int64) byte {
	b := make([]byte, 1)
	d.ReadAt(b, off)
	return b[0]
}

// TestCrashCloneRandomSubset checks that a random crash keeps every
// flushed byte, and that each unflushed sector holds either its flushed
// value or its unflushed one, with both outcomes occurring across seeds.
func TestCrashCloneRandomSubset(t *testing.T) {
	for _, sector := range []int64{0, 512} {
		const size = 8192
		c := NewCrashable(size)
		flushed := pattern(10, size)
		c.WriteAt(flushed, 0)
		c.Flush()
		unflushed := pattern(11, 4096)
		c.WriteAt(unflushed, 2048) // [2048, 6144) pending

		// Per pending sector: seen holding its old value, seen holding its new one.
		var sawOld, sawNew [8]bool
		sawMixed := false
		for seed := range uint64(64) {
			clone := c.CrashClone(CrashOptions{Rand: rand.New(rand.NewPCG(seed, 1)), Sector: sector})
			got := make([]byte, size)
			clone.ReadAt(got, 0)
			if !bytes.Equal(got[:2048], flushed[:2048]) || !bytes.Equal(got[6144:], flushed[6144:]) {
				t.Fatalf("sector %d seed %d: flushed data outside the pending write changed", sector, seed)
			}
			olds, news := 0, 0
			for i := range 8 {
				off := 2048 + i*512
				switch {
				case bytes.Equal(got[off:off+512], flushed[off:off+512]):
					olds++
					sawOld[i] = true
				case bytes.Equal(got[off:off+512], unflushed[off-2048:off-2048+512]):
					news++
					sawNew[i] = true
				default:
					t.Fatalf("sector %d seed %d: bytes at %d are neither old nor new", sector, seed, off)
				}
			}
			sawMixed = sawMixed || (olds > 0 && news > 0)
		}
		if sawOld != [8]bool{true, true, true, true, true, true, true, true} || sawOld != sawNew {
			t.Errorf("sector %d: over 64 seeds, sectors seen lost %v and kept %v; want every sector both ways", sector, sawOld, sawNew)
		}
		if sawMixed != (sector != 0) {
			t.Errorf("sector %d: torn writes seen = %v, want %v", sector, sawMixed, sector != 0)
		}
	}
}

func TestCrashableBasics(t *testing.T) {
	c := NewCrashable(4096)
	if c.Size() != 4096 {
		t.Fatalf("Size %d", c.Size())
	}
	if _, err := c.WriteAt(make([]byte, 2), 4095); !errors.Is(err, ErrOutOfRange) {
		t.Errorf("write past end: %v", err)
	}
	c.SetReadOnly(true)
	if _, err := c.WriteAt([]byte{1}, 0); !errors.Is(err, ErrReadOnly) || !c.ReadOnly() {
		t.Errorf("read-only write: %v", err)
	}
	if err := c.Discard(0, 1); !errors.Is(err, ErrReadOnly) {
		t.Errorf("read-only discard: %v", err)
	}
	if err := c.Close(); err != nil {
		t.Fatal(err)
	}
	if err := c.Close(); !errors.Is(err, ErrClosed) {
		t.Errorf("second close: %v", err)
	}
	if err := c.Flush(); !errors.Is(err, ErrClosed) {
		t.Errorf("flush after close: %v", err)
	}
}

func TestMemoryBounds(t *testing.T) {
	m := NewMemory(4096)
	buf := make([]byte, 16)
	// off+len overflows int64: must be refused, not wrap around.
	if _, err := m.ReadAt(buf, 1<<63-8); !errors.Is(err, ErrOutOfRange) {
		t.Errorf("read near MaxInt64: %v", err)
	}
	if err := m.Discard(8, 1<<63-1); !errors.Is(err, ErrOutOfRange) {
		t.Errorf("discard of MaxInt64 bytes: %v", err)
	}
	m.Close()
	if err := m.Close(); !errors.Is(err, ErrClosed) {
		t.Errorf("second close: %v", err)
	}
}

package meta

import (
	"errors"
	"slices"
	"testing"
)

const testExt = 64 << 10 // smallest extent size, to keep offsets readable

func newTestAL(t *testing.T, extents int) *ActivityLog {
	t.Helper()
	a, err := NewActivityLog(ALConfig{Extents: extents, ExtentSize: testExt})
	if err != nil {
		t.Fatal(err)
	}
	return a
}

// begin calls Begin and fails the test on error.
func begin(t *testing.T, a *ActivityLog, off, n int64) bool {
	t.Helper()
	need, err := a.Begin(off, n)
	if err != nil {
		t.Fatalf("Begin(%d, %d): %v", off, n, err)
	}
	return need
}

// persist plays the caller's part: snapshot, (pretend) write, Persisted.
func persist(a *ActivityLog) []uint64 {
	hot, seq := a.Snapshot()
	a.Persisted(seq)
	return hot
}

func TestALConfigDefaultsValidate(t *testing.T) {
	if err := DefaultALConfig().Validate(); err != nil {
		t.Fatal(err)
	}
	for _, c := range []ALConfig{
		{Extents: 0, ExtentSize: 4 << 20},
		{Extents: MaxALExtents + 1, ExtentSize: 4 << 20},
		{Extents: 8, ExtentSize: 3 << 20},
		{Extents: 8, ExtentSize: 32 << 10},
		{Extents: 8, ExtentSize: 2 << 30},
	} {
		if err := c.Validate(); err == nil {
			t.Errorf("%+v validated", c)
		}
	}
}

func TestALPersistBeforeColdWrite(t *testing.T) {
	a := newTestAL(t, 4)
	if !begin(t, a, 0, 4096) {
		t.Fatal("first write to a cold extent: needPersist false")
	}
	// Not yet persisted: a second write to the same extent must not be
	// issued before the first one's persist either.
	if !begin(t, a, 100, 10) {
		t.Fatal("write to an extent whose addition is not persisted: needPersist false")
	}
	if got := persist(a); !slices.Equal(got, []uint64{0}) {
		t.Fatalf("snapshot %v, want [0]", got)
	}
	a.End(0, 4096)
	a.End(100, 10)
	if begin(t, a, 8192, 512) {
		t.Fatal("write to a hot, persisted extent: needPersist true")
	}
	a.End(8192, 512)
	// A write spanning a hot and a cold extent needs a persist.
	if !begin(t, a, testExt-512, 1024) {
		t.Fatal("write reaching into cold extent 1: needPersist false")
	}
	a.End(testExt-512, 1024)
	if got := persist(a); !slices.Equal(got, []uint64{1, 0}) {
		t.Fatalf("snapshot %v, want [1 0] (MRU first)", got)
	}
	if begin(t, a, 0, 2*testExt) {
		t.Fatal("write inside extents 0 and 1, both persisted: needPersist true")
	}
	a.End(0, 2*testExt)
	// Empty requests touch nothing.
	if begin(t, a, 5*testExt, 0) || a.Len() != 2 {
		t.Fatalf("zero-length Begin changed the log (len %d)", a.Len())
	}
}

func TestALLRUEviction(t *testing.T) {
	a := newTestAL(t, 3)
	for _, e := range []int64{0, 1, 2} {
		begin(t, a, e*testExt, 1)
		a.End(e*testExt, 1)
	}
	persist(a)
	// Touch 0 so that 1 is the least recently used.
	if begin(t, a, 0, 1) {
		t.Fatal("hot extent 0 needs persist")
	}
	a.End(0, 1)
	if !begin(t, a, 3*testExt, 1) {
		t.Fatal("cold extent 3: needPersist false")
	}
	a.End(3*testExt, 1)
	if a.Hot(1*testExt) || !a.Hot(0) || !a.Hot(2*testExt) || !a.Hot(3*testExt) {
		hot, _ := a.Snapshot()
		t.Fatalf("after evicting the LRU extent 1, hot set is %v", hot)
	}
	hot, _ := a.Snapshot()
	if !slices.Equal(hot, []uint64{3, 0, 2}) {
		t.Fatalf("hot set %v, want [3 0 2]", hot)
	}
	if a.Len() != 3 {
		t.Fatalf("Len %d, want capacity 3", a.Len())
	}
}

func TestALPinnedExtentsAreNotEvicted(t *testing.T) {
	a := newTestAL(t, 2)
	begin(t, a, 0, 1)       // extent 0 in flight
	begin(t, a, testExt, 1) // extent 1 in flight
	persist(a)
	need, err := a.Begin(2*testExt, 1)
	if !errors.Is(err, ErrALBusy) || need {
		t.Fatalf("Begin with every extent pinned: need=%v err=%v, want ErrALBusy", need, err)
	}
	if hot, _ := a.Snapshot(); !slices.Equal(hot, []uint64{1, 0}) {
		t.Fatalf("failed Begin changed the hot set: %v", hot)
	}
	// Completing the write to 0 makes it idle; it is also the LRU, so it
	// goes.
	a.End(0, 1)
	if !begin(t, a, 2*testExt, 1) {
		t.Fatal("cold extent 2: needPersist false")
	}
	if a.Hot(0) || !a.Hot(testExt) {
		t.Fatal("evicted the pinned extent instead of the idle one")
	}
	// Extent 1 is now the LRU but pinned; 2 is pinned too.
	if _, err := a.Begin(3*testExt, 1); !errors.Is(err, ErrALBusy) {
		t.Fatalf("want ErrALBusy, got %v", err)
	}
	a.End(testExt, 1)
	a.End(2*testExt, 1)
}

func TestALRangeHotExtentNotEvictedForItsOwnRange(t *testing.T) {
	// Capacity 2, hot {0, 2 (LRU)}, both idle. A write over extents 1..2
	// keeps 2, which it uses, and evicts 0 to make room for 1.
	a := newTestAL(t, 2)
	begin(t, a, 2*testExt, 1)
	a.End(2*testExt, 1)
	begin(t, a, 0, 1)
	a.End(0, 1)
	persist(a)
	if !begin(t, a, testExt, testExt+1) { // extents 1 and 2
		t.Fatal("needPersist false for cold extent 1")
	}
	if a.Hot(0) || !a.Hot(testExt) || !a.Hot(2*testExt) {
		hot, _ := a.Snapshot()
		t.Fatalf("hot set %v, want {1, 2}", hot)
	}
	a.End(testExt, testExt+1)
	if _, err := a.Begin(0, 3*testExt); !errors.Is(err, ErrTooLarge) {
		t.Fatalf("write over 3 extents in a log of 2: %v, want ErrTooLarge", err)
	}
}

func TestALRestore(t *testing.T) {
	a := newTestAL(t, 2)
	a.Restore([]uint64{7, 7, 3, 9})
	if hot, _ := a.Snapshot(); !slices.Equal(hot, []uint64{7, 3}) {
		t.Fatalf("restored hot set %v, want [7 3]", hot)
	}
	if begin(t, a, 3*testExt, 1) {
		t.Fatal("restored extent needs persist")
	}
	a.End(3*testExt, 1)
}

func TestALEndWithoutBeginPanics(t *testing.T) {
	a := newTestAL(t, 2)
	begin(t, a, 0, 1)
	a.End(0, 1)
	defer func() {
		if recover() == nil {
			t.Fatal("second End did not panic")
		}
	}()
	a.End(0, 1)
}

func TestALInvalidRange(t *testing.T) {
	a := newTestAL(t, 2)
	for _, r := range [][2]int64{{-1, 1}, {0, -1}, {1 << 62, 1 << 62}} {
		if _, err := a.Begin(r[0], r[1]); err == nil {
			t.Errorf("Begin(%d, %d) accepted", r[0], r[1])
		}
	}
	if a.Len() != 0 {
		t.Fatal("invalid Begin changed the log")
	}
}

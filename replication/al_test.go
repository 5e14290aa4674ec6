package replication

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hablock/hablock/blockdev"
	"github.com/hablock/hablock/blockdev/meta"
)

// testAL drives a meta.ActivityLog as the agent does: Begin, and when a
// cold extent became hot, persist the snapshot (here: keep a copy, the
// "disk") before returning.
type testAL struct {
	t    testing.TB
	mu   sync.Mutex
	cond *sync.Cond
	al   *meta.ActivityLog
	disk []uint64 // the persisted hot set

	begins, ends, persists int
	// onBegin and onEnd, if set, are called under mu.
	onBegin, onEnd func(off, n uint64)
}

func newTestAL(t testing.TB, extents int, extentSize int64) *testAL {
	al, err := meta.NewActivityLog(meta.ALConfig{Extents: extents, ExtentSize: extentSize})
	if err != nil {
		t.Fatal(err)
	}
	a := &testAL{t: t, al: al}
	a.cond = sync.NewCond(&a.mu)
	return a
}

func (a *testAL) before(off, n uint64) error {
	a.mu.Lock()
	defer a.mu.Unlock()
	for {
		need, err := a.al.Begin(int64(off), int64(n))
		if errors.Is(err, meta.ErrALBusy) {
			a.cond.Wait()
			continue
		}
		if err != nil {
			return err
		}
		if need {
			hot, seq := a.al.Snapshot()
			a.disk = hot
			a.persists++
			a.al.Persisted(seq)
		}
		a.begins++
		if a.onBegin != nil {
			a.onBegin(off, n)
		}
		return nil
	}
}

func (a *testAL) after(off, n uint64) {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.al.End(int64(off), int64(n))
	a.ends++
	if a.onEnd != nil {
		a.onEnd(off, n)
	}
	a.cond.Broadcast()
}

func (a *testAL) counts() (begins, ends int) {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.begins, a.ends
}

// persisted is the hot set on "disk" as the extents State.ActivityLog
// takes.
func (a *testAL) persisted() []Extent {
	a.mu.Lock()
	defer a.mu.Unlock()
	size := uint64(a.al.ExtentSize())
	var out []Extent
	for _, e := range a.disk {
		out = append(out, Extent{Off: e * size, Len: size})
	}
	return out
}

// installAL adds the activity log hooks to n's persistence hooks (the
// same as newNode's).
func installAL(n *tnode, a *testAL) {
	n.v.SetHooks(Hooks{
		OnGenIDs:      n.persistGI,
		OnBitmapDirty: n.persistDirty,
		OnBitmapClean: func(off, l uint64) {
			n.pmu.Lock()
			n.pbm.Clear(off, l)
			n.pmu.Unlock()
		},
		BeforeWrite: a.before,
		AfterWrite:  a.after,
	})
}

// recDev records the writes and discards that reach the device.
type recDev struct {
	blockdev.Device
	rec func(string)
}

func (d *recDev) WriteAt(p []byte, off int64) (int, error) {
	d.rec(fmt.Sprintf("write %d %d", off, len(p)))
	return d.Device.WriteAt(p, off)
}

func (d *recDev) Discard(off, n int64) error {
	d.rec(fmt.Sprintf("discard %d %d", off, n))
	return d.Device.Discard(off, n)
}

// The activity log hook runs before the local write, and its End after
// it; a refused BeforeWrite fails the write with nothing written.
func TestActivityLogHookOrder(t *testing.T) {
	var mu sync.Mutex
	var events []string
	rec := func(s string) {
		mu.Lock()
		events = append(events, s)
		mu.Unlock()
	}
	mem := blockdev.NewMemory(testSize)
	dev := &recDev{Device: mem, rec: rec}
	n := newNode(t, dev, mem, syncedState("a", RolePrimary), testConfig())
	al := newTestAL(t, 4, 64<<10)
	al.onBegin = func(off, l uint64) { rec(fmt.Sprintf("begin %d %d", off, l)) }
	al.onEnd = func(off, l uint64) { rec(fmt.Sprintf("end %d %d", off, l)) }
	installAL(n, al)

	if _, err := n.v.WriteAt(bytes.Repeat([]byte{7}, 8192), 4096); err != nil {
		t.Fatal(err)
	}
	if err := n.v.Discard(1<<20, 64<<10); err != nil {
		t.Fatal(err)
	}
	want := []string{
		"begin 4096 8192", "write 4096 8192", "end 4096 8192",
		"begin 1048576 65536", "discard 1048576 65536", "end 1048576 65536",
	}
	if !slices.Equal(events, want) {
		t.Fatalf("events %q, want %q", events, want)
	}
	if !al.al.Hot(4096) || !al.al.Hot(1<<20) {
		t.Fatal("written extents not hot")
	}
	if got := al.persisted(); len(got) != 2 {
		t.Fatalf("persisted hot set %v, want 2 extents", got)
	}

	// A failing BeforeWrite: nothing written, no End.
	events = nil
	boom := errors.New("metadata gone")
	n.v.SetHooks(Hooks{BeforeWrite: func(off, l uint64) error { return boom }, AfterWrite: func(off, l uint64) { rec("end") }})
	if _, err := n.v.WriteAt(make([]byte, 4096), 0); !errors.Is(err, boom) {
		t.Fatalf("write with failing activity log: %v", err)
	}
	if len(events) != 0 {
		t.Fatalf("events after refused BeforeWrite: %q", events)
	}
}

// With a peer, End comes only once the peer has the write on disk:
// under protocol C at its WriteAck, under A at the epoch's BarrierAck.
func TestActivityLogEndAfterPeerHasIt(t *testing.T) {
	for _, proto := range []Protocol{ProtocolC, ProtocolB, ProtocolA} {
		t.Run(proto.String(), func(t *testing.T) {
			cfg := testConfig()
			cfg.Protocol = proto
			pr := newPair(t, cfg, syncedState("a", RolePrimary), syncedState("b", RoleSecondary), nil, nil, nil)
			pr.waitInSync(5 * time.Second)
			al := newTestAL(t, 16, 64<<10)
			var bad atomic.Value
			al.onEnd = func(off, l uint64) {
				p, s := make([]byte, l), make([]byte, l)
				pr.p.mem.ReadAt(p, int64(off))
				pr.s.mem.ReadAt(s, int64(off))
				if !bytes.Equal(p, s) {
					bad.Store(fmt.Sprintf("End(%d, %d) before the peer has the write", off, l))
				}
			}
			installAL(pr.p, al)
			r := rand.New(rand.NewPCG(9, uint64(proto)))
			for i := 0; i < 50; i++ {
				// Distinct, non-overlapping ranges, so that a later write
				// cannot make the check pass by accident.
				off := int64(i) * 64 << 10
				if _, err := pr.p.v.WriteAt(randBytes(r, 8192), off); err != nil {
					t.Fatal(err)
				}
			}
			waitFor(t, "every Begin ended", 5*time.Second, func() bool { b, e := al.counts(); return b == e && b == 50 })
			if s := bad.Load(); s != nil {
				t.Fatal(s)
			}
		})
	}
}

// freezer forwards a TCP connection both ways; once frozen it drops
// everything from a to b, as a network that eats the primary's writes.
type freezer struct {
	frozen atomic.Bool
	conns  []net.Conn
	wg     sync.WaitGroup
}

// newFreezer returns the two ends to Attach: one for a, one for b.
func newFreezer(t *testing.T) (*freezer, net.Conn, net.Conn) {
	a, pa := tcpPair(t)
	pb, b := tcpPair(t)
	f := &freezer{conns: []net.Conn{a, pa, pb, b}}
	f.wg.Add(2)
	go func() { // a -> b
		defer f.wg.Done()
		buf := make([]byte, 32<<10)
		for {
			n, err := pa.Read(buf)
			if n > 0 && !f.frozen.Load() {
				pb.Write(buf[:n])
			}
			if err != nil {
				return
			}
		}
	}()
	go func() { // b -> a
		defer f.wg.Done()
		io.Copy(pa, pb)
	}()
	return f, a, b
}

func (f *freezer) close() {
	for _, c := range f.conns {
		c.Close()
	}
	f.wg.Wait()
}

// frozenPair is a Primary a with an activity log of extents of ext bytes
// and a Secondary b, attached through a freezer and connected. Wait
// waits for both Attach calls to return.
type frozenPair struct {
	amem, bmem *blockdev.Memory
	a, b       *tnode
	al         *testAL
	fz         *freezer
	wg         sync.WaitGroup
}

func newFrozenPair(t *testing.T, extents int, ext int64) *frozenPair {
	fp := &frozenPair{amem: blockdev.NewMemory(testSize), bmem: blockdev.NewMemory(testSize)}
	fp.a = newNode(t, fp.amem, fp.amem, syncedState("a", RolePrimary), testConfig())
	fp.b = newNode(t, fp.bmem, fp.bmem, syncedState("b", RoleSecondary), testConfig())
	fp.al = newTestAL(t, extents, ext)
	installAL(fp.a, fp.al)
	var ca, cb net.Conn
	fp.fz, ca, cb = newFreezer(t)
	fp.wg.Add(2)
	go func() { defer fp.wg.Done(); fp.a.v.Attach(context.Background(), ca) }()
	go func() { defer fp.wg.Done(); fp.b.v.Attach(context.Background(), cb) }()
	waitFor(t, "connected", 5*time.Second, func() bool {
		return fp.b.v.Status().Repl == Established && fp.a.v.Status().Repl == Established
	})
	return fp
}

// A Primary crashes with writes on its disk that the peer never got; the
// peer is promoted and writes more; the old Primary restarts as Secondary
// with its persisted activity log: the resync moves exactly the activity
// log's extents plus the new Primary's bitmap, and both disks end equal.
func TestCrashedPrimaryResyncsActivityLog(t *testing.T) {
	const ext = 64 << 10
	fp := newFrozenPair(t, 8, ext)
	amem, bmem, a, b, al, fz, wg := fp.amem, fp.bmem, fp.a, fp.b, fp.al, fp.fz, &fp.wg
	defer fz.close()

	r := rand.New(rand.NewPCG(10, 10))
	// Replicated writes: extents 0 and 3 become hot.
	for _, off := range []int64{0, 3*ext + 4096} {
		if _, err := a.v.WriteAt(randBytes(r, 16<<10), off); err != nil {
			t.Fatal(err)
		}
	}
	// The network eats what follows: writes to extents 5 and 10 reach
	// a's disk only.
	fz.frozen.Store(true)
	lost := map[int64][]byte{5*ext + 8192: randBytes(r, 4096), 10 * ext: randBytes(r, 12<<10)}
	var wwg sync.WaitGroup
	for off, p := range lost {
		wwg.Add(1)
		go func() {
			defer wwg.Done()
			a.v.WriteAt(p, off) // completes when a is stopped
		}()
	}
	waitFor(t, "unreplicated writes on a's disk", 2*time.Second, func() bool {
		for off, p := range lost {
			got := make([]byte, len(p))
			amem.ReadAt(got, off)
			if !bytes.Equal(got, p) {
				return false
			}
		}
		return true
	})
	// Crash: what a persisted is what survives (read before Stop, whose
	// teardown a real crash would not run).
	aGI, aBM, aAL := *a.gi.Load(), a.persistedBitmap(), al.persisted()
	a.v.Stop()
	wwg.Wait()
	fz.close()
	wg.Wait()
	if len(aAL) != 4 {
		t.Fatalf("persisted activity log %v, want extents 0, 3, 5 and 10", aAL)
	}
	if aBM.Count() != 0 {
		t.Fatalf("a's persisted bitmap has %d blocks; the crash should have left it clean", aBM.Count())
	}
	for off, p := range lost {
		got := make([]byte, len(p))
		bmem.ReadAt(got, off)
		if bytes.Equal(got, p) {
			t.Fatalf("write at %d reached b; the test wants it lost", off)
		}
	}

	// b takes over and writes, outside a's activity log extents.
	if err := b.v.Promote(); err != nil {
		t.Fatal(err)
	}
	if _, err := b.v.WriteAt(randBytes(r, 8192), 20*ext); err != nil {
		t.Fatal(err)
	}
	if _, err := b.v.WriteAt(randBytes(r, 4096), 40*ext+4096); err != nil {
		t.Fatal(err)
	}
	want := b.v.Bitmap()
	if want.DirtyBytes() != 12<<10 {
		t.Fatalf("b's bitmap %d bytes, want 12 KiB", want.DirtyBytes())
	}
	for _, e := range aAL {
		want.Set(e.Off, e.Len)
	}
	want.Merge(aBM)

	// a restarts as Secondary: crashed primary, with its activity log.
	sa := syncedState("a", RoleSecondary)
	sa.GI, sa.Bitmap, sa.CrashedPrimary, sa.ActivityLog = aGI, aBM, true, aAL
	a2 := newNode(t, amem, amem, sa, testConfig())
	if got := a2.v.Status().OutOfSyncBytes; got != 4*ext {
		t.Fatalf("restarted crashed primary has %d bytes out of sync, want its 4 activity log extents", got)
	}
	sentBefore := b.v.resyncBytes.Load()
	ca, cb := tcpPair(t)
	ctx, cancel := context.WithCancel(context.Background())
	wg.Add(2)
	go func() { defer wg.Done(); a2.v.Attach(ctx, ca) }()
	go func() { defer wg.Done(); b.v.Attach(ctx, cb) }()
	waitFor(t, "resync to the old primary", 5*time.Second, func() bool {
		s := a2.v.Status()
		return s.Repl == Established && s.Disk == UpToDate && b.v.Status().OutOfSyncBytes == 0
	})
	moved := b.v.resyncBytes.Load() - sentBefore
	if moved != want.DirtyBytes() {
		t.Fatalf("resync moved %d bytes, want %d (activity log extents plus b's bitmap)", moved, want.DirtyBytes())
	}
	if moved >= testSize/2 {
		t.Fatalf("resync moved %d bytes of %d: not a bounded resync", moved, testSize)
	}
	waitFor(t, "same GIs after resync", 5*time.Second, func() bool { return a2.v.GenIDs().Same(b.v.GenIDs()) })
	cancel()
	wg.Wait()
	assertSame(t, amem, bmem)
}

// State.ActivityLog is applied only to a crashed Primary, and clipped at
// the end of the volume.
func TestCrashedPrimaryActivityLogIgnoredWhenNotCrashed(t *testing.T) {
	mem := blockdev.NewMemory(testSize)
	st := syncedState("a", RoleSecondary)
	st.ActivityLog = []Extent{{Off: 0, Len: 64 << 10}}
	n := newNode(t, mem, mem, st, testConfig())
	if got := n.v.Status().OutOfSyncBytes; got != 0 {
		t.Fatalf("activity log applied without CrashedPrimary: %d bytes out of sync", got)
	}
	st.CrashedPrimary = true
	st.ActivityLog = []Extent{{Off: 0, Len: 64 << 10}, {Off: testSize - 4096, Len: 64 << 10}}
	n = newNode(t, mem, mem, st, testConfig())
	if got := n.v.Status().OutOfSyncBytes; got != 64<<10+4096 {
		t.Fatalf("activity log applied: %d bytes out of sync, want %d (clipped at the end)", got, 64<<10+4096)
	}
}

package replication

import (
	"bytes"
	"context"
	"errors"
	"math/rand/v2"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hablock/hablock/blockdev"
)

func fencingConfig() Config {
	c := testConfig()
	c.Fencing = true
	return c
}

// onPeerLost adds an OnPeerLost hook to n's hooks and returns its call
// counter.
func onPeerLost(n *tnode) *atomic.Int32 {
	var calls atomic.Int32
	n.v.mu.Lock()
	h := n.v.hooks
	n.v.mu.Unlock()
	h.OnPeerLost = func() { calls.Add(1) }
	n.v.SetHooks(h)
	return &calls
}

// writeLoad runs workers that each write random data to their own
// region of v until stop, one write at a time, and records what they
// did.
type writeLoad struct {
	wg        sync.WaitGroup
	stop      atomic.Bool
	completed atomic.Int64 // writes returned without error
	mu        sync.Mutex
	errs      []error
	last      []Extent // per worker: the range of its last write
}

func startWriteLoad(v *Volume, workers int, seed uint64) *writeLoad {
	w := &writeLoad{last: make([]Extent, workers)}
	region := int64(testSize / workers)
	for i := 0; i < workers; i++ {
		w.wg.Add(1)
		go func(i int) {
			defer w.wg.Done()
			r := rand.New(rand.NewPCG(seed, uint64(i)))
			for !w.stop.Load() {
				n := 1 + r.IntN(16<<10)
				off := int64(i)*region + r.Int64N(region-int64(n))
				w.mu.Lock()
				w.last[i] = Extent{Off: uint64(off), Len: uint64(n)}
				w.mu.Unlock()
				if _, err := v.WriteAt(randBytes(r, n), off); err != nil {
					w.mu.Lock()
					w.errs = append(w.errs, err)
					w.mu.Unlock()
					return
				}
				w.completed.Add(1)
			}
		}(i)
	}
	return w
}

func (w *writeLoad) finish() []error {
	w.stop.Store(true)
	w.wg.Wait()
	return w.errs
}

// cutWhileLoaded starts a write load on a fenced pair, cuts the link
// for good (until pr.blocked is cleared) and waits until every worker's
// write is held. It returns the load and the completions at that point.
func cutWhileLoaded(t *testing.T, pr *pair, workers int) (*writeLoad, int64) {
	t.Helper()
	return cutWhileLoadedBy(t, pr, workers, pr.killLink)
}

// cutWhileLoadedBy is cutWhileLoaded with the cut done by cut.
func cutWhileLoadedBy(t *testing.T, pr *pair, workers int, cut func()) (*writeLoad, int64) {
	t.Helper()
	pr.waitInSync(5 * time.Second)
	w := startWriteLoad(pr.p.v, workers, 21)
	waitFor(t, "load running", 5*time.Second, func() bool { return w.completed.Load() >= 200 })
	pr.blocked.Store(true)
	cut()
	waitFor(t, "every writer held", 10*time.Second, func() bool {
		st := pr.p.v.Status()
		return st.Held && st.HeldOps == workers && st.Conn != Connected
	})
	c := w.completed.Load()
	// All writers are inside a held WriteAt, so none can complete
	// unless the engine releases one; give it the chance to misbehave.
	time.Sleep(5 * testConfig().PingInterval)
	if got := w.completed.Load(); got != c {
		t.Fatalf("%d writes completed while held", got-c)
	}
	if st := pr.p.v.Status(); !st.Held || st.HeldOps != workers || st.Fenced {
		t.Fatalf("status while held: %+v", st)
	}
	return w, c
}

func TestFencingHoldsWritesUntilPeerFenced(t *testing.T) {
	for _, proto := range []Protocol{ProtocolC, ProtocolB} {
		t.Run(proto.String(), func(t *testing.T) { testFencingHoldsWrites(t, proto) })
	}
}

func testFencingHoldsWrites(t *testing.T, proto Protocol) {
	const workers = 8
	cfg := fencingConfig()
	cfg.Protocol = proto
	pr := newPair(t, cfg, syncedState("a", RolePrimary), syncedState("b", RoleSecondary), nil, nil, nil)
	lost := onPeerLost(pr.p)
	w, held := cutWhileLoaded(t, pr, workers)
	if n := lost.Load(); n != 1 {
		t.Fatalf("OnPeerLost called %d times, want 1", n)
	}
	w.stop.Store(true)
	pr.p.v.SetPeerFenced(true)
	if errs := w.finish(); len(errs) != 0 {
		t.Fatalf("held writes failed after SetPeerFenced: %v", errs)
	}
	if got := w.completed.Load(); got != held+workers {
		t.Fatalf("%d writes completed after SetPeerFenced, want the %d held", got-held, workers)
	}
	st := pr.p.v.Status()
	if st.Held || st.HeldOps != 0 || !st.Fenced {
		t.Fatalf("status after SetPeerFenced: %+v", st)
	}
	// Every held write's range is out of sync, in memory and persisted.
	bm, pbm := pr.p.v.Bitmap(), pr.p.persistedBitmap()
	for i, e := range w.last {
		for _, b := range []*Bitmap{bm, pbm} {
			if off, _, ok := b.NextDirtyRange(e.Off/DefaultBlockSize*DefaultBlockSize, e.Len); !ok || off > e.Off {
				t.Fatalf("writer %d's held write %+v not marked out of sync", i, e)
			}
		}
	}
	// Writes now run alone, degraded.
	if _, err := pr.p.v.WriteAt(bytes.Repeat([]byte{7}, 8192), 0); err != nil {
		t.Fatal(err)
	}
	if err := pr.p.v.Flush(); err != nil {
		t.Fatal(err)
	}
	// After reconnecting, the bitmap resync makes the peer identical,
	// and the peer is a normal replica again.
	pr.blocked.Store(false)
	pr.waitInSync(10 * time.Second)
	assertSame(t, pr.p.mem, pr.s.mem)
	if st := pr.p.v.Status(); st.Fenced || st.Held {
		t.Fatalf("status after reconnect: %+v", st)
	}
	if n := lost.Load(); n != 1 {
		t.Fatalf("OnPeerLost called %d times, want 1", n)
	}
}

// The peer stops (as its process would) under load: the same hold.
func TestFencingPeerStopped(t *testing.T) {
	const workers = 4
	pr := newPair(t, fencingConfig(), syncedState("a", RolePrimary), syncedState("b", RoleSecondary), nil, nil, nil)
	lost := onPeerLost(pr.p)
	w, held := cutWhileLoadedBy(t, pr, workers, pr.s.v.Stop)
	if n := lost.Load(); n != 1 {
		t.Fatalf("OnPeerLost called %d times, want 1", n)
	}
	w.stop.Store(true)
	pr.p.v.SetPeerFenced(true)
	if errs := w.finish(); len(errs) != 0 || w.completed.Load() != held+workers {
		t.Fatalf("after SetPeerFenced: %d completed of %d held, errors %v", w.completed.Load()-held, workers, errs)
	}
}

func TestFencingAbandonIO(t *testing.T) {
	const workers = 6
	pr := newPair(t, fencingConfig(), syncedState("a", RolePrimary), syncedState("b", RoleSecondary), nil, nil, nil)
	w, held := cutWhileLoaded(t, pr, workers)
	pr.p.v.AbandonIO()
	errs := w.finish()
	if len(errs) != workers {
		t.Fatalf("%d of %d held writes failed: %v", len(errs), workers, errs)
	}
	for _, err := range errs {
		if !errors.Is(err, ErrAbandoned) {
			t.Fatalf("held write: %v, want ErrAbandoned", err)
		}
	}
	if got := w.completed.Load(); got != held {
		t.Fatalf("%d held writes completed", got-held)
	}
	// Later I/O fails at once, reads included, until ResumeIO.
	if _, err := pr.p.v.ReadAt(make([]byte, 4096), 0); !errors.Is(err, ErrAbandoned) {
		t.Fatalf("read after AbandonIO: %v", err)
	}
	if st := pr.p.v.Status(); !st.Abandoned || st.HeldOps != 0 {
		t.Fatalf("status after AbandonIO: %+v", st)
	}
	pr.p.v.ResumeIO()
	if _, err := pr.p.v.ReadAt(make([]byte, 4096), 0); err != nil {
		t.Fatalf("read after ResumeIO: %v", err)
	}
	// Fencing still holds writes; Demote abandons them and does not
	// wait for them.
	errc := make(chan error, 1)
	go func() {
		_, err := pr.p.v.WriteAt(make([]byte, 4096), 0)
		errc <- err
	}()
	waitFor(t, "write held", 5*time.Second, func() bool { return pr.p.v.Status().HeldOps == 1 })
	if err := pr.p.v.Demote(); err != nil {
		t.Fatal(err)
	}
	if err := <-errc; !errors.Is(err, ErrAbandoned) {
		t.Fatalf("held write after Demote: %v, want ErrAbandoned", err)
	}
	if st := pr.p.v.Status(); st.Role != RoleSecondary || st.Held || !st.Abandoned {
		t.Fatalf("status after Demote: %+v", st)
	}
}

func TestFencingDemoteWhileWritesHeld(t *testing.T) {
	const workers = 6
	pr := newPair(t, fencingConfig(), syncedState("a", RolePrimary), syncedState("b", RoleSecondary), nil, nil, nil)
	w, held := cutWhileLoaded(t, pr, workers)
	if err := pr.p.v.Demote(); err != nil {
		t.Fatalf("demote with held writes: %v", err)
	}
	errs := w.finish()
	if len(errs) != workers || w.completed.Load() != held {
		t.Fatalf("after Demote: %d errors, %d completions, want %d and 0: %v", len(errs), w.completed.Load()-held, workers, errs)
	}
	for _, err := range errs {
		if !errors.Is(err, ErrAbandoned) {
			t.Fatalf("held write: %v, want ErrAbandoned", err)
		}
	}
	// The demoted node reconnects as Secondary and resyncs the writes
	// it never acknowledged to its peer (nobody is Primary: no
	// conflict), so both end up identical.
	pr.blocked.Store(false)
	pr.waitInSync(10 * time.Second)
	assertSame(t, pr.p.mem, pr.s.mem)
}

// A reconnect that resyncs the held writes' ranges to the peer releases
// them: the peer has them now.
func TestFencingHeldWritesReleasedByResync(t *testing.T) {
	const workers = 4
	pr := newPair(t, fencingConfig(), syncedState("a", RolePrimary), syncedState("b", RoleSecondary), nil, nil, nil)
	lost := onPeerLost(pr.p)
	w, held := cutWhileLoaded(t, pr, workers)
	pr.blocked.Store(false)
	waitFor(t, "held writes released", 10*time.Second, func() bool { return w.completed.Load() >= held+workers })
	if errs := w.finish(); len(errs) != 0 {
		t.Fatal(errs)
	}
	pr.waitInSync(10 * time.Second)
	assertSame(t, pr.p.mem, pr.s.mem)
	if st := pr.p.v.Status(); st.Fenced || st.Held {
		t.Fatalf("status: %+v", st)
	}
	if n := lost.Load(); n != 1 {
		t.Fatalf("OnPeerLost called %d times, want 1", n)
	}
}

func TestSuspendIO(t *testing.T) {
	pr := newPair(t, testConfig(), syncedState("a", RolePrimary), syncedState("b", RoleSecondary), nil, nil, nil)
	pr.waitInSync(5 * time.Second)
	v := pr.p.v
	r := rand.New(rand.NewPCG(3, 3))
	old, fresh := randBytes(r, 64<<10), randBytes(r, 64<<10)
	if _, err := v.WriteAt(old, 0); err != nil {
		t.Fatal(err)
	}
	v.SuspendIO("test: no quorum")
	if st := v.Status(); !st.Suspended || st.SuspendReason != "test: no quorum" {
		t.Fatalf("status: %+v", st)
	}
	got := make([]byte, len(old))
	done := make(chan error, 4)
	go func() { _, err := v.ReadAt(got, 0); done <- err }()
	go func() { _, err := v.WriteAt(fresh, 1<<20); done <- err }()
	go func() { done <- v.Flush() }()
	go func() { done <- v.Discard(2<<20, 64<<10) }()
	waitFor(t, "all four held", 5*time.Second, func() bool { return v.Status().HeldOps == 4 })
	time.Sleep(5 * testConfig().PingInterval)
	if len(done) != 0 {
		t.Fatalf("%d operations completed while suspended", len(done))
	}
	b := make([]byte, len(fresh))
	pr.p.mem.ReadAt(b, 1<<20)
	if bytes.Equal(b, fresh) {
		t.Fatal("a suspended write reached the disk")
	}
	v.ResumeIO()
	for range 4 {
		if err := <-done; err != nil {
			t.Fatalf("after ResumeIO: %v", err)
		}
	}
	if !bytes.Equal(got, old) {
		t.Fatal("suspended read returned wrong data")
	}
	assertSame(t, pr.p.mem, pr.s.mem)
	pr.s.mem.ReadAt(b, 1<<20)
	if !bytes.Equal(b, fresh) {
		t.Fatal("suspended write not on the peer")
	}

	// AbandonIO during a suspension fails the held I/O and what follows.
	v.SuspendIO("again")
	go func() { _, err := v.WriteAt(fresh, 0); done <- err }()
	go func() { done <- v.Flush() }()
	waitFor(t, "held", 5*time.Second, func() bool { return v.Status().HeldOps == 2 })
	v.AbandonIO()
	for range 2 {
		if err := <-done; !errors.Is(err, ErrAbandoned) {
			t.Fatalf("after AbandonIO: %v, want ErrAbandoned", err)
		}
	}
	if _, err := v.ReadAt(got, 0); !errors.Is(err, ErrAbandoned) {
		t.Fatalf("read after AbandonIO: %v", err)
	}
	if st := v.Status(); st.Suspended || !st.Abandoned {
		t.Fatalf("status: %+v", st)
	}
	if !bytes.Equal(readAll(t, pr.p.mem)[:len(old)], old) {
		t.Fatal("an abandoned write reached the disk")
	}
	// A successful Promote ends it too.
	if err := v.Promote(); err != nil {
		t.Fatal(err)
	}
	if _, err := v.ReadAt(got, 0); err != nil {
		t.Fatal(err)
	}

	// On a Secondary, suspension holds I/O too; after ResumeIO it fails
	// as any I/O on a Secondary does.
	pr.s.v.SuspendIO("secondary")
	go func() { _, err := pr.s.v.ReadAt(got, 0); done <- err }()
	waitFor(t, "held on secondary", 5*time.Second, func() bool { return pr.s.v.Status().HeldOps == 1 })
	pr.s.v.ResumeIO()
	if err := <-done; !errors.Is(err, ErrNotPrimary) {
		t.Fatalf("read on secondary: %v", err)
	}
}

func TestFencingNewPrimaryWithoutLink(t *testing.T) {
	t.Run("fenced", func(t *testing.T) {
		mem := blockdev.NewMemory(testSize)
		n := newNode(t, mem, mem, syncedState("b", RoleSecondary), fencingConfig())
		defer n.v.Stop()
		n.v.SetPeerFenced(true)
		if err := n.v.Promote(); err != nil {
			t.Fatal(err)
		}
		if _, err := n.v.WriteAt(bytes.Repeat([]byte{1}, 8192), 4096); err != nil {
			t.Fatal(err)
		}
		if err := n.v.Flush(); err != nil {
			t.Fatal(err)
		}
		if st := n.v.Status(); st.Held || !st.Fenced || st.OutOfSyncBytes != 2*4096 {
			t.Fatalf("status: %+v", st)
		}
	})
	t.Run("not fenced", func(t *testing.T) {
		mem := blockdev.NewMemory(testSize)
		n := newNode(t, mem, mem, syncedState("b", RoleSecondary), fencingConfig())
		defer n.v.Stop()
		lost := onPeerLost(n)
		if err := n.v.Promote(); err != nil {
			t.Fatal(err)
		}
		if st := n.v.Status(); !st.Held {
			t.Fatalf("status: %+v", st)
		}
		data := bytes.Repeat([]byte{2}, 8192)
		done := make(chan error, 3)
		go func() { _, err := n.v.WriteAt(data, 4096); done <- err }()
		go func() { done <- n.v.Flush() }()
		go func() { done <- n.v.Discard(1<<20, 4096) }()
		waitFor(t, "held", 5*time.Second, func() bool { return n.v.Status().HeldOps == 3 })
		// Reads are not held by fencing.
		if _, err := n.v.ReadAt(make([]byte, 512), 0); err != nil {
			t.Fatal(err)
		}
		time.Sleep(5 * testConfig().PingInterval)
		if len(done) != 0 {
			t.Fatal("an operation completed while held")
		}
		b := make([]byte, len(data))
		mem.ReadAt(b, 4096)
		if bytes.Equal(b, data) || n.v.Status().OutOfSyncBytes != 0 {
			t.Fatal("a held write was issued locally")
		}
		n.v.SetPeerFenced(true)
		for range 3 {
			if err := <-done; err != nil {
				t.Fatal(err)
			}
		}
		mem.ReadAt(b, 4096)
		if !bytes.Equal(b, data) {
			t.Fatal("released write not on disk")
		}
		if st := n.v.Status(); st.Held || st.OutOfSyncBytes != 3*4096 {
			t.Fatalf("status: %+v", st)
		}
		if lost.Load() != 0 {
			t.Fatal("OnPeerLost called without a lost link")
		}
	})
	t.Run("stopped while held", func(t *testing.T) {
		mem := blockdev.NewMemory(testSize)
		n := newNode(t, mem, mem, syncedState("b", RolePrimary), fencingConfig())
		done := make(chan error, 1)
		go func() { _, err := n.v.WriteAt(make([]byte, 512), 0); done <- err }()
		waitFor(t, "held", 5*time.Second, func() bool { return n.v.Status().HeldOps == 1 })
		n.v.Stop()
		if err := <-done; !errors.Is(err, ErrAbandoned) || !errors.Is(err, ErrClosed) {
			t.Fatalf("held write after Stop: %v", err)
		}
	})
}

// Without Fencing nothing is held: a Primary without its peer writes
// degraded at once (the other engine tests cover the rest).
func TestNoFencingWritesDegraded(t *testing.T) {
	mem := blockdev.NewMemory(testSize)
	n := newNode(t, mem, mem, syncedState("a", RolePrimary), testConfig())
	defer n.v.Stop()
	if _, err := n.v.WriteAt(make([]byte, 4096), 0); err != nil {
		t.Fatal(err)
	}
	if st := n.v.Status(); st.Held || st.OutOfSyncBytes != 4096 {
		t.Fatalf("status: %+v", st)
	}
}

// A write that passed the role check before a Demote is not issued after
// it: a demoted node acknowledges nothing.
func TestWriteRacingDemoteNotIssued(t *testing.T) {
	mem := blockdev.NewMemory(testSize)
	n := newNode(t, mem, mem, syncedState("a", RolePrimary), testConfig())
	defer n.v.Stop()
	entered, release := make(chan struct{}), make(chan struct{})
	n.v.SetHooks(Hooks{
		BeforeWrite: func(off, l uint64) error {
			close(entered)
			<-release
			return nil
		},
		AfterWrite: func(off, l uint64) {},
	})
	done := make(chan error, 1)
	go func() { _, err := n.v.WriteAt(bytes.Repeat([]byte{9}, 4096), 0); done <- err }()
	<-entered // past checkIO, not yet issued
	if err := n.v.Demote(); err != nil {
		t.Fatal(err)
	}
	close(release)
	if err := <-done; !errors.Is(err, ErrNotPrimary) || !errors.Is(err, ErrAbandoned) {
		t.Fatalf("write racing Demote: %v, want ErrNotPrimary and ErrAbandoned", err)
	}
	b := make([]byte, 4096)
	mem.ReadAt(b, 0)
	if !bytes.Equal(b, make([]byte, 4096)) || n.v.Status().OutOfSyncBytes != 0 {
		t.Fatal("a write was issued on a demoted node")
	}
}

// A write and a flush pending on the peer when the link drops are held
// after their local part, and complete once the peer is fenced.
func TestFencingPendingWriteAndFlushHeld(t *testing.T) {
	a, b := tcpPair(t)
	mem := blockdev.NewMemory(testSize)
	n := newNode(t, mem, mem, syncedState("a", RolePrimary), fencingConfig())
	defer n.v.Stop()
	lost := onPeerLost(n)
	// The fake peer shakes hands, then reads without answering until it
	// has seen a Write and a Flush, and hangs up.
	go func() {
		hs, _ := AppendFrame(nil, 1, 0, fakeHandshake(RoleSecondary))
		b.Write(hs)
		var write, flush bool
		for !write || !flush {
			f, _, err := ReadFrame(b, MaxPayload, nil)
			if err != nil {
				break
			}
			write = write || f.Type == MsgWrite
			flush = flush || f.Type == MsgFlush
		}
		b.Close()
	}()
	errc := make(chan error, 1)
	go func() { errc <- n.v.Attach(context.Background(), a) }()
	waitFor(t, "connected", 5*time.Second, func() bool { return n.v.Status().Conn == Connected })
	data := bytes.Repeat([]byte{5}, 3*4096)
	done := make(chan error, 2)
	go func() { _, err := n.v.WriteAt(data, 8192); done <- err }()
	go func() { done <- n.v.Flush() }()
	if err := <-errc; !errors.Is(err, ErrPeerGone) {
		t.Fatalf("attach: %v", err)
	}
	waitFor(t, "both held", 5*time.Second, func() bool { return n.v.Status().HeldOps == 2 })
	time.Sleep(5 * testConfig().PingInterval)
	if len(done) != 0 {
		t.Fatal("completed while held")
	}
	// The write is on the local disk and marked out of sync already.
	b2 := make([]byte, len(data))
	mem.ReadAt(b2, 8192)
	if st := n.v.Status(); !bytes.Equal(b2, data) || st.OutOfSyncBytes != 3*4096 || !st.Held || lost.Load() != 1 {
		t.Fatalf("while held: local data written %v, status %+v, OnPeerLost %d", bytes.Equal(b2, data), st, lost.Load())
	}
	n.v.SetPeerFenced(true)
	for range 2 {
		if err := <-done; err != nil {
			t.Fatal(err)
		}
	}
}

// A flush pending on the peer when the link drops is redone on the next
// link: it completes without SetPeerFenced once the peer has flushed.
func TestFencingPendingFlushRedoneOnNewLink(t *testing.T) {
	amem, bmem := blockdev.NewMemory(testSize), blockdev.NewMemory(testSize)
	bdev := blockdev.NewFaulty(bmem)
	// The peer's first flush takes a while: long enough to cut the link
	// under it.
	bdev.Inject(blockdev.Rule{Ops: blockdev.OpFlush, Latency: 500 * time.Millisecond, Times: 1})
	a := newNode(t, amem, amem, syncedState("a", RolePrimary), fencingConfig())
	b := newNode(t, bdev, bmem, syncedState("b", RoleSecondary), fencingConfig())
	defer a.v.Stop()
	defer b.v.Stop()
	attach := func() (chan error, chan error) {
		ca, cb := tcpPair(t)
		ea, eb := make(chan error, 1), make(chan error, 1)
		go func() { ea <- a.v.Attach(context.Background(), ca) }()
		go func() { eb <- b.v.Attach(context.Background(), cb) }()
		return ea, eb
	}
	ea, eb := attach()
	waitFor(t, "established", 5*time.Second, func() bool {
		return a.v.Status().Repl == Established && b.v.Status().Repl == Established
	})
	if _, err := a.v.WriteAt(bytes.Repeat([]byte{3}, 4096), 0); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- a.v.Flush() }()
	waitFor(t, "peer flushing", 5*time.Second, func() bool { return bdev.Counts().Flushes >= 1 })
	a.v.curLink().conn.Close() // the link drops under the peer's flush
	<-ea
	waitFor(t, "flush held", 5*time.Second, func() bool { return a.v.Status().HeldOps == 1 })
	if len(done) != 0 {
		t.Fatal("flush completed while the peer may not have flushed")
	}
	<-eb
	ea, eb = attach()
	if err := <-done; err != nil {
		t.Fatalf("held flush: %v", err)
	}
	if st := a.v.Status(); st.Fenced || st.Held || bdev.Counts().Flushes < 2 {
		t.Fatalf("after reconnect: %+v, peer flushes %d", st, bdev.Counts().Flushes)
	}
	a.v.Stop()
	b.v.Stop()
	<-ea
	<-eb
}

// The failover sequence the failover manager drives, end to end: the
// Primary loses its peer and holds; the Secondary is promoted with the
// old Primary fenced and writes alone; the old Primary is demoted (its
// held writes abandoned) and reconnects discarding its unacknowledged
// changes. Every write the old Primary acknowledged is on the new one,
// and both end identical.
func TestFencingFailoverLosesNoAcknowledgedWrite(t *testing.T) {
	const (
		workers = 8
		slot    = 4096
		region  = testSize / 2 / workers
	)
	pr := newPair(t, fencingConfig(), syncedState("a", RolePrimary), syncedState("b", RoleSecondary), nil, nil, nil)
	pr.waitInSync(5 * time.Second)
	slotData := func(w, i int) []byte {
		b := bytes.Repeat([]byte{byte(w*31 + i)}, slot)
		b[0], b[1] = byte(w), byte(i)
		return b
	}
	var completed atomic.Int64
	acked := make([]int, workers) // per worker: slots acknowledged
	errs := make([]error, workers)
	var wg sync.WaitGroup
	for w := range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; i < region/slot; i++ {
				if _, err := pr.p.v.WriteAt(slotData(w, i), int64(w*region+i*slot)); err != nil {
					errs[w] = err
					return
				}
				acked[w] = i + 1
				completed.Add(1)
			}
		}()
	}
	waitFor(t, "load running", 5*time.Second, func() bool { return completed.Load() >= 100 })
	pr.blocked.Store(true)
	pr.killLink()
	waitFor(t, "writers held", 10*time.Second, func() bool { return pr.p.v.Status().HeldOps == workers })
	// b too must have seen the link go (a failover manager promotes only
	// after detecting the loss); before that it refuses, peer Primary.
	waitFor(t, "b disconnected", 10*time.Second, func() bool { return pr.s.v.Status().Conn != Connected })

	// Takeover: the quorum recorded a outdated; b is promoted and serves.
	pr.s.v.SetPeerFenced(true)
	if err := pr.s.v.Promote(); err != nil {
		t.Fatal(err)
	}
	newData := bytes.Repeat([]byte{0xEE}, 64<<10)
	if _, err := pr.s.v.WriteAt(newData, testSize/2); err != nil {
		t.Fatal(err)
	}
	// a learns it was replaced: demoted, held writes abandoned.
	if err := pr.p.v.Demote(); err != nil {
		t.Fatal(err)
	}
	wg.Wait()
	for w, err := range errs {
		if !errors.Is(err, ErrAbandoned) {
			t.Fatalf("writer %d: %v, want ErrAbandoned", w, err)
		}
	}
	// a rejoins as Secondary, discarding what it never acknowledged.
	pr.p.v.SetDiscardMyData(true)
	pr.blocked.Store(false)
	waitFor(t, "a resynced from b", 10*time.Second, func() bool {
		a, b := pr.p.v.Status(), pr.s.v.Status()
		return a.Conn == Connected && a.Repl == Established && a.Disk == UpToDate && b.OutOfSyncBytes == 0 && b.PeerDisk == UpToDate
	})
	assertSame(t, pr.p.mem, pr.s.mem)
	got := make([]byte, slot)
	for w := range workers {
		for i := range acked[w] {
			pr.s.mem.ReadAt(got, int64(w*region+i*slot))
			if !bytes.Equal(got, slotData(w, i)) {
				t.Fatalf("acknowledged write %d of writer %d lost on the new primary", i, w)
			}
		}
	}
	got = make([]byte, len(newData))
	pr.s.mem.ReadAt(got, testSize/2)
	if !bytes.Equal(got, newData) {
		t.Fatal("the new primary's write was lost")
	}
	pr.p.v.mu.Lock()
	discard := pr.p.v.flags&FlagDiscardMyData != 0
	pr.p.v.mu.Unlock()
	if pr.p.v.Status().Role != RoleSecondary || discard {
		t.Fatal("old primary: wrong role, or discard-my-data not cleared after use")
	}
}

package replication

import (
	"bytes"
	"errors"
	"math/rand/v2"
	"testing"
	"time"

	"github.com/hablock/hablock/blockdev"
)

var errStoreDown = errors.New("metadata device gone read-only")

// A Primary without its peer must record a write's range out of sync
// before it writes. When the metadata store cannot, the write fails with
// ErrMetadata and nothing of it reaches the disk; once the store works
// again, writes are accepted and their bits recorded.
func TestMetadataFailureFailsDegradedWrite(t *testing.T) {
	mem := blockdev.NewMemory(testSize)
	n := newNode(t, mem, mem, syncedState("a", RolePrimary), testConfig())
	al := newTestAL(t, 8, 64<<10)
	installAL(n, al)
	r := rand.New(rand.NewPCG(41, 1))
	n.failMetadata(errStoreDown)
	p := randBytes(r, 8192)
	_, err := n.v.WriteAt(p, 1<<20)
	if !errors.Is(err, ErrMetadata) || !errors.Is(err, errStoreDown) {
		t.Fatalf("write while the bitmap cannot be recorded: %v, want ErrMetadata wrapping the store's error", err)
	}
	got := make([]byte, len(p))
	mem.ReadAt(got, 1<<20)
	if !bytes.Equal(got, make([]byte, len(p))) {
		t.Fatal("the failed write reached the disk")
	}
	// The new generation of a Primary alone could not be recorded
	// either: memory keeps the recorded one, so that a crash cannot
	// restart the node in the peer's generation with changes it lacks.
	if gi, rec := n.v.GenIDs(), *n.gi.Load(); gi != rec || gi != syncedState("a", RolePrimary).GI {
		t.Fatalf("generations after the failure: in memory %v, recorded %v; want both still %v", gi, rec, syncedState("a", RolePrimary).GI)
	}
	if s := n.v.Status(); s.MetadataErrors != 1 || s.LastMetadataError == "" {
		t.Fatalf("status MetadataErrors %d, LastMetadataError %q; want 1 and the error", s.MetadataErrors, s.LastMetadataError)
	}
	if b, e := al.counts(); b != e {
		t.Fatalf("activity log: %d begins, %d ends: a write that issued nothing must not pin its extent", b, e)
	}
	if err := n.v.Discard(2<<20, 4096); !errors.Is(err, ErrMetadata) {
		t.Fatalf("discard while the bitmap cannot be recorded: %v, want ErrMetadata", err)
	}

	n.failMetadata(nil)
	if _, err := n.v.WriteAt(p, 1<<20); err != nil {
		t.Fatalf("write once the store works again: %v", err)
	}
	mem.ReadAt(got, 1<<20)
	if !bytes.Equal(got, p) {
		t.Fatal("the accepted write is not on the disk")
	}
	if gi, rec := n.v.GenIDs(), *n.gi.Load(); gi != rec || gi.Bitmap == 0 {
		t.Fatalf("generations after the accepted write: in memory %v, recorded %v; want the new generation recorded", gi, rec)
	}

	// The generation is recorded now; only the bitmap fails.
	n.failMetadata(errStoreDown)
	if _, err := n.v.WriteAt(p, 3<<20); !errors.Is(err, ErrMetadata) {
		t.Fatalf("write needing new bits with the store failing: %v, want ErrMetadata", err)
	}
	n.failMetadata(nil)
	pbm := n.persistedBitmap()
	if off, l, ok := pbm.NextDirtyRange(0, ^uint64(0)); !ok || off > 1<<20 || off+l < 1<<20+8192 {
		t.Fatalf("persisted bitmap %d bytes (first run %d+%d, %v): the accepted write's range is not recorded", pbm.DirtyBytes(), off, l, ok)
	}
}

// The link dies with writes in flight while the metadata store cannot
// record the bitmap. Those writes reached the Primary's disk and not the
// peer, and nothing durable says so: they must fail (not be
// acknowledged), and their activity-log extents stay pinned, so that a
// crash before the store recovers still resyncs them as a crashed
// Primary's activity log. With a working store the same loss is
// acknowledged (degraded mode) and the extents are released.
func TestMetadataFailureWhenLinkDiesWithWritesInFlight(t *testing.T) {
	for _, failing := range []bool{false, true} {
		name := "store-ok"
		if failing {
			name = "store-failing"
		}
		t.Run(name, func(t *testing.T) {
			const ext = 64 << 10
			fp := newFrozenPair(t, 8, ext)
			a, b, al, fz := fp.a, fp.b, fp.al, fp.fz
			defer fz.close()

			r := rand.New(rand.NewPCG(42, 2))
			fz.frozen.Store(true) // the network eats what follows
			offs := []int64{2 * ext, 5*ext + 4096}
			errs := make(chan error, len(offs))
			for _, off := range offs {
				p := randBytes(r, 4096)
				go func() {
					_, err := a.v.WriteAt(p, off)
					errs <- err
				}()
			}
			waitFor(t, "writes in flight", 2*time.Second, func() bool { b, _ := al.counts(); return b == len(offs) })
			if failing {
				a.failMetadata(errStoreDown)
			}
			fz.close() // the link dies
			for range offs {
				select {
				case err := <-errs:
					switch {
					case failing && !errors.Is(err, ErrMetadata):
						t.Errorf("write lost by the peer, bitmap not recorded: %v, want ErrMetadata", err)
					case !failing && err != nil:
						t.Errorf("write lost by the peer, bitmap recorded: %v, want it acknowledged (degraded)", err)
					}
				case <-time.After(10 * time.Second):
					t.Fatal("a write did not complete after the link died")
				}
			}
			begins, ends := al.counts()
			switch {
			case failing && ends != 0:
				t.Errorf("activity log: %d of %d writes ended although their ranges are not recorded out of sync", ends, begins)
			case !failing && ends != begins:
				t.Errorf("activity log: %d begins, %d ends with the bitmap recorded", begins, ends)
			}
			if got := a.v.Status().MetadataErrors; failing != (got > 0) {
				t.Errorf("MetadataErrors %d with the store failing %v", got, failing)
			}
			a.v.Stop()
			b.v.Stop()
			fp.wg.Wait()
		})
	}
}

// A node that must become a resync target while its metadata store
// cannot record that (the new generation, or Inconsistent) refuses the
// connect before any resynced block reaches its disk: its recorded
// state, UpToDate with the old data, stays true. Once the store works,
// the next connect resyncs and ends UpToDate.
func TestMetadataFailureRefusesSyncTarget(t *testing.T) {
	for _, c := range []struct {
		name string
		fail func(n *tnode, err error)
	}{
		{"store-failing", func(n *tnode, err error) { n.failMetadata(err) }},
		{"disk-state-failing", func(n *tnode, err error) { n.pmu.Lock(); n.diskErr = err; n.pmu.Unlock() }},
	} {
		t.Run(c.name, func(t *testing.T) {
			w := newWatchedResync(t, 16, 43)
			pr, watch := w.pr, w.watch
			c.fail(pr.s, errStoreDown)
			w.arm()
			pr.blocked.Store(false)
			waitFor(t, "a refused connect on b", 5*time.Second, func() bool { return pr.s.v.Status().MetadataErrors >= 2 })
			if n := watch.bad.Load(); n != 0 {
				t.Fatalf("%d resync writes reached b while its recorded disk state was UpToDate", n)
			}
			if d := DiskState(pr.s.disk.Load()); d != UpToDate {
				t.Fatalf("b's recorded disk state %v, want still UpToDate", d)
			}
			c.fail(pr.s, nil)
			pr.waitInSync(10 * time.Second)
			if n := watch.bad.Load(); n != 0 {
				t.Fatalf("%d resync writes reached b while its recorded disk state was not Inconsistent", n)
			}
			if d := DiskState(pr.s.disk.Load()); d != UpToDate {
				t.Fatalf("after the resync b's recorded disk state is %v, want UpToDate", d)
			}
			assertSame(t, pr.p.mem, pr.s.mem)
		})
	}
}

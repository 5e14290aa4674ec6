package scsi

import (
	"bytes"
	"encoding/binary"
	"encoding/json"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hablock/hablock/blockdev"
)

func newMem(size int64) *blockdev.Memory { return blockdev.NewMemory(size) }

// countingDev counts flushes.
type countingDev struct {
	*blockdev.Memory
	flushes atomic.Int64
}

func (d *countingDev) Flush() error {
	d.flushes.Add(1)
	return d.Memory.Flush()
}

// gateDev blocks WriteAt at chosen byte offsets until the gate is opened,
// and reports every write start.
type gateDev struct {
	*blockdev.Memory
	mu      sync.Mutex
	gates   map[int64]chan struct{}
	started chan int64
}

func newGateDev(size int64) *gateDev {
	return &gateDev{Memory: newMem(size), gates: map[int64]chan struct{}{}, started: make(chan int64, 100)}
}

func (d *gateDev) gate(off int64) chan struct{} {
	d.mu.Lock()
	defer d.mu.Unlock()
	ch := make(chan struct{})
	d.gates[off] = ch
	return ch
}

func (d *gateDev) WriteAt(p []byte, off int64) (int, error) {
	d.started <- off
	d.mu.Lock()
	ch := d.gates[off]
	d.mu.Unlock()
	if ch != nil {
		<-ch
	}
	return d.Memory.WriteAt(p, off)
}

func waitStarted(t *testing.T, d *gateDev, off int64) {
	t.Helper()
	select {
	case got := <-d.started:
		if got != off {
			t.Fatalf("write at %d started, want %d", got, off)
		}
	case <-time.After(5 * time.Second):
		t.Fatalf("write at %d did not start", off)
	}
}

func pending(ch <-chan *Response) bool {
	select {
	case <-ch:
		return false
	case <-time.After(50 * time.Millisecond):
		return true
	}
}

func TestOrderedWaits(t *testing.T) {
	d := newGateDev(testSize)
	h := newHarnessDev(t, d, 512, func(c *LUConfig) { c.WriteCache = true })
	g := d.gate(0)
	w := h.async(h.out(nexA, cdbWrite10(0, 1), pattern(1, 512)))
	waitStarted(t, d, 0)
	// A SIMPLE read of another range runs at once.
	h.expectGood(h.read(nexA, 100, 1))
	// An ORDERED command waits for the write.
	oc := h.in(nexA, cdbRead10(200, 1), 512)
	oc.Attr = AttrOrdered
	o := h.async(oc)
	if !pending(o) {
		t.Fatal("ORDERED command completed before the earlier write")
	}
	// A SIMPLE command after the ORDERED one waits too.
	s := h.async(h.in(nexA, cdbRead10(300, 1), 512))
	if !pending(s) {
		t.Fatal("SIMPLE command overtook an ORDERED one")
	}
	// HEAD OF QUEUE runs at once.
	hq := h.in(nexA, make([]byte, 6), 0)
	hq.Attr = AttrHeadOfQueue
	h.expectGood(h.do(hq))
	close(g)
	h.expectGood(<-w)
	h.expectGood(<-o)
	h.expectGood(<-s)
}

func TestOverlappingWritesInOrder(t *testing.T) {
	d := newGateDev(testSize)
	h := newHarnessDev(t, d, 512, func(c *LUConfig) { c.WriteCache = true })
	g := d.gate(0)
	w1 := h.async(h.out(nexA, cdbWrite10(0, 2), pattern('1', 1024)))
	waitStarted(t, d, 0)
	w2 := h.async(h.out(nexA, cdbWrite10(1, 1), pattern('2', 512)))
	r := h.async(h.in(nexA, cdbRead10(0, 2), 1024))
	// A non-overlapping write proceeds.
	w3 := h.async(h.out(nexA, cdbWrite10(50, 1), pattern('3', 512)))
	waitStarted(t, d, 50*512)
	h.expectGood(<-w3)
	if !pending(w2) || !pending(r) {
		t.Fatal("overlapping commands did not wait")
	}
	close(g)
	h.expectGood(<-w1)
	waitStarted(t, d, 512)
	h.expectGood(<-w2)
	rr := <-r
	h.expectGood(rr)
	want := append(pattern('1', 512), pattern('2', 512)...)
	if !bytes.Equal(rr.Data, want) {
		t.Fatal("overlapping writes not applied in order")
	}
}

func TestAbortQueuedAndRunning(t *testing.T) {
	d := newGateDev(testSize)
	h := newHarnessDev(t, d, 512, func(c *LUConfig) { c.WriteCache = true })
	g := d.gate(0)
	c1 := h.out(nexA, cdbWrite10(0, 1), pattern(1, 512))
	w1 := h.async(c1)
	waitStarted(t, d, 0)
	c2 := h.out(nexA, cdbWrite10(0, 1), pattern(2, 512))
	w2 := h.async(c2)
	// Abort the queued task: immediate.
	if r := h.tgt.AbortTask(nexA, 0, c2.Tag); r != TMFComplete {
		t.Fatalf("abort queued: %d", r)
	}
	if r := <-w2; !r.Aborted {
		t.Fatal("queued task not reported aborted")
	}
	// Abort the running task: returns only after it finished.
	res := make(chan TMFResponse)
	go func() { res <- h.tgt.AbortTask(nexA, 0, c1.Tag) }()
	select {
	case <-res:
		t.Fatal("abort of running task returned before the task finished")
	case <-time.After(50 * time.Millisecond):
	}
	close(g)
	if r := <-res; r != TMFComplete {
		t.Fatalf("abort running: %d", r)
	}
	if r := <-w1; !r.Aborted {
		t.Fatal("running task not reported aborted")
	}
	if r := h.tgt.AbortTask(nexA, 0, 999); r != TMFTaskNotExist {
		t.Fatalf("abort unknown: %d", r)
	}
	if r := h.tgt.AbortTask(nexA, 5, 1); r != TMFLUNNotExist {
		t.Fatalf("abort on missing LUN: %d", r)
	}
	// The LU still works; the second write never happened.
	if got := h.read(nexA, 0, 1).Data; !bytes.Equal(got, pattern(1, 512)) {
		t.Fatalf("block 0 = %x..., want the first write", got[:4])
	}
}

func TestClearTaskSetAndResets(t *testing.T) {
	d := newGateDev(testSize)
	h := newHarnessDev(t, d, 512, func(c *LUConfig) { c.WriteCache = true })
	h.expectGood(h.do(h.in(nexB, make([]byte, 6), 0)))
	g := d.gate(0)
	w1 := h.async(h.out(nexB, cdbWrite10(0, 1), pattern(1, 512)))
	waitStarted(t, d, 0)
	w2 := h.async(h.out(nexA, cdbWrite10(0, 1), pattern(2, 512)))
	done := make(chan TMFResponse)
	go func() { done <- h.tgt.LogicalUnitReset(nexA, 0) }()
	if r := <-w2; !r.Aborted {
		t.Fatal("queued task survived LU reset")
	}
	close(g)
	if r := <-done; r != TMFComplete {
		t.Fatal(r)
	}
	if r := <-w1; !r.Aborted {
		t.Fatal("running task not aborted by LU reset")
	}
	// Both nexuses, the issuer included, get a reset UA, once.
	h.expectSense(h.do(h.in(nexA, make([]byte, 6), 0)), KeyUnitAttention, ascPowerOnReset)
	h.expectGood(h.do(h.in(nexA, make([]byte, 6), 0)))
	h.expectSense(h.do(h.in(nexB, make([]byte, 6), 0)), KeyUnitAttention, ascPowerOnReset)
	h.expectGood(h.do(h.in(nexB, make([]byte, 6), 0)))
	// Target reset.
	if r := h.tgt.TargetReset(nexA, false); r != TMFComplete {
		t.Fatal(r)
	}
	r := h.do(h.in(nexB, []byte{opRequestSense, 0, 0, 0, 18, 0}, 18))
	h.expectGood(r)
	if r.Data[2] != KeyUnitAttention {
		t.Fatalf("REQUEST SENSE did not report the UA: % x", r.Data)
	}
	h.expectGood(h.do(h.in(nexB, make([]byte, 6), 0)))
}

func TestReserve6(t *testing.T) {
	h := newHarness(t, testSize, 512, nil)
	res6 := []byte{opReserve6, 0, 0, 0, 0, 0}
	rel6 := []byte{opRelease6, 0, 0, 0, 0, 0}
	h.expectGood(h.do(h.in(nexA, res6, 0)))
	h.expectGood(h.do(h.in(nexA, res6, 0)))
	if r := h.do(h.in(nexB, res6, 0)); r.Status != StatusReservationConflict {
		t.Fatalf("RESERVE from B: status %x", r.Status)
	}
	h.expectGood(h.do(h.in(nexB, rel6, 0))) // no-op
	if r := h.do(h.in(nexB, []byte{opModeSense6, 0, 0x3f, 0, 255, 0}, 255)); r.Status != StatusReservationConflict {
		t.Fatalf("MODE SENSE from B: status %x", r.Status)
	}
	h.expectGood(h.do(h.in(nexB, cdbInquiry(false, 0, 36), 36)))
	h.expectGood(h.read(nexA, 0, 1))
	// Nexus loss releases it.
	h.tgt.NexusLost(nexA)
	h.expectGood(h.do(h.in(nexB, res6, 0)))
	// LU reset releases it too.
	h.tgt.LogicalUnitReset(nexB, 0)
	h.expectGood(h.do(h.in(nexA, res6, 0))) // A's nexus was lost: it is new, no UA
	h.expectSense(h.do(h.in(nexB, res6, 0)), KeyUnitAttention, ascPowerOnReset)
	h.expectGood(h.do(h.in(nexA, rel6, 0)))
}

func (h *harness) prout(n Nexus, sa, typ byte, key, sark uint64) *Response {
	return h.do(h.out(n, cdbPROut(sa, typ), prParam(key, sark)))
}

func (h *harness) readKeys(n Nexus) (gen uint32, keys []uint64) {
	r := h.do(h.in(n, cdbPRIn(prInReadKeys, 1024), 1024))
	h.expectGood(r)
	gen = binary.BigEndian.Uint32(r.Data)
	for i := 8; i+8 <= len(r.Data); i += 8 {
		keys = append(keys, binary.BigEndian.Uint64(r.Data[i:]))
	}
	return gen, keys
}

func TestPRConflictMatrix(t *testing.T) {
	nexC := Nexus{InitiatorName: "iqn.2026-11.test:c", TargetName: "iqn.2026-11.test:t", TPGT: 1}
	// For each type: can a registered non-holder (B) read/write, can an
	// unregistered one (C) read/write.
	matrix := []struct {
		typ                         byte
		regRead, regWrite, unR, unW bool
	}{
		{PRTypeWriteExclusive, true, false, true, false},
		{PRTypeExclusiveAccess, false, false, false, false},
		{PRTypeWriteExclusiveRegOnly, true, true, true, false},
		{PRTypeExclAccessRegOnly, true, true, false, false},
		{PRTypeWriteExclusiveAllReg, true, true, true, false},
		{PRTypeExclAccessAllReg, true, true, false, false},
	}
	for _, m := range matrix {
		h := newHarness(t, testSize, 512, nil)
		h.expectGood(h.prout(nexA, prOutRegisterIgnore, 0, 0, 0xa))
		h.expectGood(h.prout(nexB, prOutRegisterIgnore, 0, 0, 0xb))
		h.expectGood(h.prout(nexA, prOutReserve, m.typ, 0xa, 0))
		ok := func(r *Response) bool {
			if r.Status == StatusGood {
				return true
			}
			if r.Status != StatusReservationConflict {
				t.Fatalf("type %d: unexpected status %x", m.typ, r.Status)
			}
			return false
		}
		check := func(n Nexus, wantR, wantW bool) {
			t.Helper()
			if got := ok(h.read(n, 1, 1)); got != wantR {
				t.Errorf("type %d nexus %s: read allowed=%v, want %v", m.typ, n.InitiatorName, got, wantR)
			}
			if got := ok(h.write(n, 1, pattern(1, 512))); got != wantW {
				t.Errorf("type %d nexus %s: write allowed=%v, want %v", m.typ, n.InitiatorName, got, wantW)
			}
		}
		check(nexA, true, true)
		check(nexB, m.regRead, m.regWrite)
		check(nexC, m.unR, m.unW)
		// TUR and INQUIRY are always allowed.
		h.expectGood(h.do(h.in(nexC, make([]byte, 6), 0)))
		// Releasing with the wrong type is an error; the right type works.
		other := byte(PRTypeWriteExclusive)
		if m.typ == PRTypeWriteExclusive {
			other = PRTypeExclusiveAccess
		}
		h.expectSense(h.prout(nexA, prOutRelease, other, 0xa, 0), KeyIllegalRequest, ascInvalidReleasePR)
		h.expectGood(h.prout(nexA, prOutRelease, m.typ, 0xa, 0))
		if allRegistrants(m.typ) || m.typ == PRTypeWriteExclusiveRegOnly || m.typ == PRTypeExclAccessRegOnly {
			h.expectSense(h.do(h.in(nexB, make([]byte, 6), 0)), KeyUnitAttention, ascReservationsReleased)
		}
		check(nexC, true, true)
	}
}

func TestPRRegisterPreemptClear(t *testing.T) {
	var mu sync.Mutex
	var last PRState
	calls := 0
	h := newHarness(t, testSize, 512, func(c *LUConfig) {
		c.OnPRChange = func(lun uint64, s PRState) {
			mu.Lock()
			last, calls = s, calls+1
			mu.Unlock()
		}
	})
	h.expectGood(h.prout(nexA, prOutRegister, 0, 0, 0x1111))
	// Re-register with a wrong key conflicts.
	if r := h.prout(nexA, prOutRegister, 0, 0x2222, 0x3333); r.Status != StatusReservationConflict {
		t.Fatalf("status %x", r.Status)
	}
	h.expectGood(h.prout(nexB, prOutRegisterIgnore, 0, 0, 0x2222))
	gen, keys := h.readKeys(nexA)
	if len(keys) != 2 {
		t.Fatalf("keys %x", keys)
	}
	h.expectGood(h.prout(nexA, prOutReserve, PRTypeExclusiveAccess, 0x1111, 0))
	// B preempts A: A's registration is removed and B holds the reservation.
	h.expectGood(h.prout(nexB, prOutPreempt, PRTypeWriteExclusive, 0x2222, 0x1111))
	h.expectSense(h.do(h.in(nexA, make([]byte, 6), 0)), KeyUnitAttention, ascRegistrationsPreempt)
	gen2, keys := h.readKeys(nexA)
	if len(keys) != 1 || keys[0] != 0x2222 || gen2 != gen+1 {
		t.Fatalf("after preempt gen %d->%d keys %x", gen, gen2, keys)
	}
	r := h.do(h.in(nexA, cdbPRIn(prInReadReservation, 100), 100))
	if len(r.Data) != 24 || binary.BigEndian.Uint64(r.Data[8:]) != 0x2222 || r.Data[21] != PRTypeWriteExclusive {
		t.Fatalf("READ RESERVATION % x", r.Data)
	}
	r = h.do(h.in(nexA, cdbPRIn(prInReadFullStatus, 1000), 1000))
	h.expectGood(r)
	if binary.BigEndian.Uint32(r.Data[4:]) == 0 || r.Data[8+12]&1 == 0 {
		t.Fatalf("READ FULL STATUS % x", r.Data)
	}
	// State is serialisable and was reported through the hook.
	mu.Lock()
	b, err := json.Marshal(last)
	mu.Unlock()
	if err != nil || calls == 0 {
		t.Fatalf("hook calls %d err %v", calls, err)
	}
	back, err := DecodePRState(b)
	if err != nil || back.Reservation == nil || back.Reservation.Holder != nexB {
		t.Fatalf("round trip: %+v %v", back, err)
	}
	// CLEAR removes everything.
	h.expectGood(h.prout(nexB, prOutClear, 0, 0x2222, 0))
	_, keys = h.readKeys(nexB)
	if len(keys) != 0 {
		t.Fatalf("keys after clear %x", keys)
	}
	// State survives in a new target built from it.
	h2 := newHarness(t, testSize, 512, func(c *LUConfig) { c.PRState = &back })
	_, keys = h2.readKeys(nexA)
	if len(keys) != 1 {
		t.Fatalf("restored keys %x", keys)
	}
	if r := h2.write(nexA, 0, pattern(1, 512)); r.Status != StatusReservationConflict {
		t.Fatalf("restored reservation not enforced: %x", r.Status)
	}
}

// TestCompareAndWriteAtomic runs many concurrent CAW increments of a
// counter in one block, mixed with writes to a neighbouring block, and
// checks that no update is lost.
func TestCompareAndWriteAtomic(t *testing.T) {
	h := newHarness(t, testSize, 512, func(c *LUConfig) { c.WriteCache = true })
	h.expectGood(h.write(nexA, 0, make([]byte, 512)))
	const workers, per = 8, 40
	var succ atomic.Int64
	var wg sync.WaitGroup
	for w := 0; w < workers; w++ {
		wg.Add(1)
		go func(w int) {
			defer wg.Done()
			n := nexA
			if w%2 == 1 {
				n = nexB
			}
			for i := 0; i < per; {
				r := h.read(n, 0, 1)
				if r.Status != StatusGood {
					t.Errorf("read: %x", r.Status)
					return
				}
				cur := binary.BigEndian.Uint64(r.Data)
				next := make([]byte, 512)
				binary.BigEndian.PutUint64(next, cur+1)
				r = h.do(h.out(n, cdbCAW(0, 1), append(bytes.Clone(r.Data), next...)))
				switch r.Status {
				case StatusGood:
					succ.Add(1)
					i++
				case StatusCheckCondition:
					if k, _ := senseKeyASC(r); k != KeyMiscompare {
						t.Errorf("CAW sense key %x", k)
						return
					}
				default:
					t.Errorf("CAW status %x", r.Status)
					return
				}
				h.write(n, 1, pattern(byte(i), 512))
			}
		}(w)
	}
	wg.Wait()
	final := binary.BigEndian.Uint64(h.read(nexA, 0, 1).Data)
	if final != uint64(succ.Load()) || final != workers*per {
		t.Fatalf("counter %d, successes %d, want %d", final, succ.Load(), workers*per)
	}
}

func TestConcurrentSubmitStress(t *testing.T) {
	h := newHarness(t, testSize, 512, func(c *LUConfig) { c.WriteCache = true })
	var wg sync.WaitGroup
	for g := 0; g < 4; g++ {
		wg.Add(1)
		go func(g int) {
			defer wg.Done()
			chs := make([]<-chan *Response, 0, 64)
			for i := 0; i < 64; i++ {
				lba := uint32((i * 7) % 32)
				var cmd *Command
				if i%3 == 0 {
					cmd = h.out(nexA, cdbWrite10(lba, 2), pattern(byte(g), 1024))
				} else {
					cmd = h.in(nexA, cdbRead10(lba, 2), 1024)
				}
				if i%11 == 0 {
					cmd.Attr = AttrOrdered
				}
				chs = append(chs, h.async(cmd))
			}
			for _, ch := range chs {
				select {
				case r := <-ch:
					if r.Status != StatusGood {
						t.Errorf("status %x", r.Status)
					}
				case <-time.After(10 * time.Second):
					t.Error("timeout")
					return
				}
			}
		}(g)
	}
	wg.Wait()
}

func TestSyncCacheOrdering(t *testing.T) {
	d := newGateDev(testSize)
	h := newHarnessDev(t, d, 512, func(c *LUConfig) { c.WriteCache = true })
	g := d.gate(0)
	w := h.async(h.out(nexA, cdbWrite10(0, 1), pattern(1, 512)))
	waitStarted(t, d, 0)
	// SYNCHRONIZE CACHE of the whole medium waits for the pending write...
	s := h.async(h.in(nexA, []byte{opSyncCache10, 0, 0, 0, 0, 0, 0, 0, 0, 0}, 0))
	if !pending(s) {
		t.Fatal("SYNCHRONIZE CACHE did not wait for the earlier write")
	}
	// ...but does not hold back later writes.
	h.expectGood(h.write(nexA, 100, pattern(2, 512)))
	close(g)
	h.expectGood(<-w)
	h.expectGood(<-s)
}

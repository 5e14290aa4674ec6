package scsi

import (
	"bytes"
	"encoding/binary"
	"sync"
	"testing"
	"time"

	"github.com/hablock/hablock/blockdev"
)

var (
	nexA = Nexus{InitiatorName: "iqn.2026-11.test:a", ISID: [6]byte{0x80, 0, 0, 0, 0, 1}, TargetName: "iqn.2026-11.test:t", TPGT: 1}
	nexB = Nexus{InitiatorName: "iqn.2026-11.test:b", ISID: [6]byte{0x80, 0, 0, 0, 0, 2}, TargetName: "iqn.2026-11.test:t", TPGT: 1}
)

type harness struct {
	t   *testing.T
	tgt *Target
	dev blockdev.Device
	bs  uint32
	tag uint32
	mu  sync.Mutex
}

func newHarness(t *testing.T, size int64, bs uint32, cfg func(*LUConfig)) *harness {
	t.Helper()
	return newHarnessDev(t, blockdev.NewMemory(size), bs, cfg)
}

func newHarnessDev(t *testing.T, dev blockdev.Device, bs uint32, cfg func(*LUConfig)) *harness {
	t.Helper()
	tgt := NewTarget("iqn.2026-11.test:t", nil)
	c := LUConfig{Device: dev, BlockSize: bs, UUID: [16]byte{1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16}}
	if cfg != nil {
		cfg(&c)
	}
	if err := tgt.AddLUN(0, c); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(tgt.Close)
	return &harness{t: t, tgt: tgt, dev: dev, bs: bs}
}

func (h *harness) nextTag() uint32 {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.tag++
	return h.tag
}

// in builds a data-in command.
func (h *harness) in(n Nexus, cdb []byte, edtl uint32) *Command {
	return &Command{Nexus: n, Tag: h.nextTag(), CDB: cdb, ExpectedLength: edtl, Read: edtl > 0}
}

// out builds a data-out command carrying data.
func (h *harness) out(n Nexus, cdb []byte, data []byte) *Command {
	return &Command{Nexus: n, Tag: h.nextTag(), CDB: cdb, ExpectedLength: uint32(len(data)), Write: len(data) > 0, Data: data}
}

// async submits cmd and returns a channel with its response.
func (h *harness) async(cmd *Command) <-chan *Response {
	ch := make(chan *Response, 1)
	var once sync.Once
	h.tgt.Submit(cmd, func(r *Response) {
		called := false
		once.Do(func() { called = true; ch <- r })
		if !called {
			h.t.Errorf("done called twice for tag %d", cmd.Tag)
		}
	})
	return ch
}

func (h *harness) do(cmd *Command) *Response {
	h.t.Helper()
	select {
	case r := <-h.async(cmd):
		return r
	case <-time.After(10 * time.Second):
		h.t.Fatalf("command % x did not complete", cmd.CDB)
		return nil
	}
}

func senseKeyASC(r *Response) (byte, uint16) {
	if len(r.Sense) == 0 {
		return 0, 0
	}
	if r.Sense[0]&0x7f >= 0x72 {
		return r.Sense[1] & 0x0f, uint16(r.Sense[2])<<8 | uint16(r.Sense[3])
	}
	return r.Sense[2] & 0x0f, uint16(r.Sense[12])<<8 | uint16(r.Sense[13])
}

func (h *harness) expectGood(r *Response) {
	h.t.Helper()
	if r.Status != StatusGood {
		k, a := senseKeyASC(r)
		h.t.Fatalf("status 0x%x sense %x/%04x, want GOOD", r.Status, k, a)
	}
}

func (h *harness) expectSense(r *Response, key byte, asc uint16) {
	h.t.Helper()
	if r.Status != StatusCheckCondition {
		h.t.Fatalf("status 0x%x, want CHECK CONDITION %x/%04x", r.Status, key, asc)
	}
	k, a := senseKeyASC(r)
	if k != key || a != asc {
		h.t.Fatalf("sense %x/%04x, want %x/%04x", k, a, key, asc)
	}
}

// CDB builders.
func cdbRead10(lba uint32, n uint16) []byte {
	c := make([]byte, 10)
	c[0] = opRead10
	binary.BigEndian.PutUint32(c[2:], lba)
	binary.BigEndian.PutUint16(c[7:], n)
	return c
}

func cdbWrite10(lba uint32, n uint16) []byte {
	c := cdbRead10(lba, n)
	c[0] = opWrite10
	return c
}

func cdb16(op byte, lba uint64, n uint32) []byte {
	c := make([]byte, 16)
	c[0] = op
	binary.BigEndian.PutUint64(c[2:], lba)
	binary.BigEndian.PutUint32(c[10:], n)
	return c
}

func cdbInquiry(evpd bool, page byte, alloc uint16) []byte {
	c := make([]byte, 6)
	c[0] = opInquiry
	if evpd {
		c[1] = 1
	}
	c[2] = page
	binary.BigEndian.PutUint16(c[3:], alloc)
	return c
}

func cdbCAW(lba uint64, n byte) []byte {
	c := make([]byte, 16)
	c[0] = opCompareAndWrite
	binary.BigEndian.PutUint64(c[2:], lba)
	c[13] = n
	return c
}

func cdbWriteSame16(lba uint64, n uint32, unmap, ndob bool) []byte {
	c := cdb16(opWriteSame16, lba, n)
	if unmap {
		c[1] |= 0x08
	}
	if ndob {
		c[1] |= 0x01
	}
	return c
}

func cdbUnmap(paramLen uint16) []byte {
	c := make([]byte, 10)
	c[0] = opUnmap
	binary.BigEndian.PutUint16(c[7:], paramLen)
	return c
}

func unmapParam(exts ...[2]uint64) []byte {
	p := make([]byte, 8+16*len(exts))
	binary.BigEndian.PutUint16(p[0:], uint16(len(p)-2))
	binary.BigEndian.PutUint16(p[2:], uint16(16*len(exts)))
	for i, e := range exts {
		binary.BigEndian.PutUint64(p[8+16*i:], e[0])
		binary.BigEndian.PutUint32(p[16+16*i:], uint32(e[1]))
	}
	return p
}

func cdbPROut(sa, typ byte) []byte {
	c := make([]byte, 10)
	c[0] = opPROut
	c[1] = sa
	c[2] = typ
	binary.BigEndian.PutUint32(c[5:], 24)
	return c
}

func prParam(key, sark uint64) []byte {
	p := make([]byte, 24)
	binary.BigEndian.PutUint64(p[0:], key)
	binary.BigEndian.PutUint64(p[8:], sark)
	return p
}

func cdbPRIn(sa byte, alloc uint16) []byte {
	c := make([]byte, 10)
	c[0] = opPRIn
	c[1] = sa
	binary.BigEndian.PutUint16(c[7:], alloc)
	return c
}

func (h *harness) write(n Nexus, lba uint32, data []byte) *Response {
	return h.do(h.out(n, cdbWrite10(lba, uint16(len(data)/int(h.bs))), data))
}

func (h *harness) read(n Nexus, lba uint32, blocks uint16) *Response {
	return h.do(h.in(n, cdbRead10(lba, blocks), uint32(blocks)*h.bs))
}

func pattern(b byte, n int) []byte { return bytes.Repeat([]byte{b}, n) }

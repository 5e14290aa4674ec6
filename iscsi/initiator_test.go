package iscsi

import (
	"bufio"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"testing"
	"time"
)

// rawInit is a minimal hand-driven initiator for protocol tests: it
// sends exactly the PDUs a test builds, including malformed ones.
type rawInit struct {
	t      testing.TB
	nc     net.Conn
	r      *bufio.Reader
	isid   [6]byte
	cmdSN  uint32
	statSN uint32
	itt    uint32
	tsih   uint16
	hd, dd bool // digests in force
	mrdsl  uint32
}

func dialRaw(t testing.TB, addr string) *rawInit {
	t.Helper()
	nc, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { nc.Close() })
	ri := &rawInit{t: t, nc: nc, r: bufio.NewReader(nc), isid: [6]byte{0x80, 0, 0, 1, 2, 3}, cmdSN: 1, itt: 1}
	return ri
}

func (ri *rawInit) nextITT() uint32 { ri.itt++; return ri.itt }

// send writes one PDU built by AppendPDU (digests as negotiated).
func (ri *rawInit) send(h BHS, ahs, data []byte) {
	ri.t.Helper()
	b, err := AppendPDU(nil, &PDU{BHS: h, AHS: ahs, Data: data}, ri.hd, ri.dd)
	if err != nil {
		ri.t.Fatal(err)
	}
	ri.nc.SetWriteDeadline(time.Now().Add(5 * time.Second))
	if _, err := ri.nc.Write(b); err != nil {
		ri.t.Fatalf("send %v: %v", h.Opcode(), err)
	}
}

// recv reads one PDU (5 s deadline).
func (ri *rawInit) recv() (PDU, error) {
	return ri.recvTimeout(5 * time.Second)
}

func (ri *rawInit) recvTimeout(d time.Duration) (PDU, error) {
	ri.nc.SetReadDeadline(time.Now().Add(d))
	var h BHS
	if _, err := io.ReadFull(ri.r, h[:]); err != nil {
		return PDU{}, err
	}
	n := h.TotalAHSLen()
	if ri.hd {
		n += 4
	}
	if dsl := h.DataSegLen(); dsl > 0 {
		n += dsl + pad4(dsl)
		if ri.dd {
			n += 4
		}
	}
	buf := make([]byte, BHSLen+n)
	copy(buf, h[:])
	if _, err := io.ReadFull(ri.r, buf[BHSLen:]); err != nil {
		return PDU{}, err
	}
	p, _, err := DecodePDU(buf, Limits{MaxDataSegment: MaxDataSegmentLength, MaxAHS: MaxAHSLen, HeaderDigest: ri.hd, DataDigest: ri.dd})
	if err == nil && p.BHS.Opcode() != OpLoginResp && p.BHS.Opcode() != OpSCSIDataIn && p.BHS.Opcode() != OpR2T {
		ri.statSN = p.BHS.u32(offCmdSN) + 1
	}
	return p, err
}

func (ri *rawInit) mustRecv() PDU {
	ri.t.Helper()
	p, err := ri.recv()
	if err != nil {
		ri.t.Fatalf("recv: %v", err)
	}
	return p
}

// expectClosed asserts the target closes the connection (possibly after
// some PDUs, e.g. a Reject).
func (ri *rawInit) expectClosed() {
	ri.t.Helper()
	for i := 0; i < 100; i++ {
		_, err := ri.recv()
		if err == nil {
			continue
		}
		var ne net.Error
		if errors.As(err, &ne) && ne.Timeout() {
			ri.t.Fatalf("connection still open")
		}
		return
	}
	ri.t.Fatalf("connection still open after 100 PDUs")
}

// loginReq builds a Login Request header.
func (ri *rawInit) loginReq(transit bool, csg, nsg int) BHS {
	var h BHS
	h.SetOpcode(OpLoginReq, true)
	h[1] = byte(csg<<2 | nsg)
	if transit {
		h[1] |= 0x80
	}
	copy(h[8:14], ri.isid[:])
	h.setU16(14, ri.tsih)
	h.setU32(offITT, ri.itt)
	h.setU32(offCmdSN, ri.cmdSN)
	h.setU32(offExpStat, ri.statSN)
	return h
}

// loginStep sends one Login Request and returns the response's status
// and keys.
func (ri *rawInit) loginStep(transit bool, csg, nsg int, kvs ...KV) (status uint16, resp PDU, keys map[string]string) {
	ri.t.Helper()
	ri.send(ri.loginReq(transit, csg, nsg), nil, AppendText(nil, kvs))
	resp = ri.mustRecv()
	if resp.BHS.Opcode() != OpLoginResp {
		ri.t.Fatalf("got %v, want Login Response", resp.BHS.Opcode())
	}
	ri.statSN = resp.BHS.u32(offCmdSN) + 1
	list, err := ParseText(resp.Data)
	if err != nil {
		ri.t.Fatalf("login response text: %v", err)
	}
	keys = make(map[string]string)
	for _, kv := range list {
		keys[kv.Key] = kv.Value
	}
	return uint16(resp.BHS[36])<<8 | uint16(resp.BHS[37]), resp, keys
}

// login performs a one-PDU operational login to target (or discovery
// when target is "") and fails the test unless it succeeds.
func (ri *rawInit) login(target string, extra ...KV) map[string]string {
	ri.t.Helper()
	kvs := []KV{{"InitiatorName", testInit}}
	if target == "" {
		kvs = append(kvs, KV{"SessionType", "Discovery"})
	} else {
		kvs = append(kvs, KV{"TargetName", target})
	}
	kvs = append(kvs, extra...)
	st, resp, keys := ri.loginStep(true, stageOperational, stageFullFeature, kvs...)
	if st != 0 {
		ri.t.Fatalf("login status 0x%04x", st)
	}
	if resp.BHS[1]&0x80 == 0 || resp.BHS[1]&3 != stageFullFeature {
		ri.t.Fatalf("login response did not transit to full feature phase: flags %#x", resp.BHS[1])
	}
	ri.tsih = resp.BHS.u16(14)
	ri.cmdSN = resp.BHS.u32(offExpStat)
	ri.hd = keys["HeaderDigest"] == "CRC32C"
	ri.dd = keys["DataDigest"] == "CRC32C"
	ri.mrdsl = 8192
	return keys
}

// scsiCmd builds a SCSI Command header.
func (ri *rawInit) scsiCmd(cdb []byte, edtl uint32, read, write, final bool) BHS {
	var h BHS
	h.SetOpcode(OpSCSICmd, false)
	h[1] = 0x01 // SIMPLE
	if final {
		h[1] |= 0x80
	}
	if read {
		h[1] |= 0x40
	}
	if write {
		h[1] |= 0x20
	}
	h.setU32(offITT, ri.nextITT())
	h.setU32(offTTT, edtl)
	h.setU32(offCmdSN, ri.cmdSN)
	h.setU32(offExpStat, ri.statSN)
	copy(h[32:48], cdb)
	return h
}

func cdbRead10(lba uint32, blocks uint16) []byte {
	c := make([]byte, 10)
	c[0] = 0x28
	binary.BigEndian.PutUint32(c[2:], lba)
	binary.BigEndian.PutUint16(c[7:], blocks)
	return c
}

func cdbWrite10(lba uint32, blocks uint16) []byte {
	c := cdbRead10(lba, blocks)
	c[0] = 0x2a
	return c
}

var cdbTUR = make([]byte, 6)

// tur sends TEST UNIT READY and waits for GOOD.
func (ri *rawInit) tur() {
	ri.t.Helper()
	h := ri.scsiCmd(cdbTUR, 0, false, false, true)
	ri.cmdSN++
	ri.send(h, nil, nil)
	p := ri.mustRecv()
	if p.BHS.Opcode() != OpSCSIResp || p.BHS.ITT() != h.ITT() {
		ri.t.Fatalf("TUR: got %v itt %#x", p.BHS.Opcode(), p.BHS.ITT())
	}
	if p.BHS[3] != 0 {
		// A first command may see a unit attention; retry once.
		h = ri.scsiCmd(cdbTUR, 0, false, false, true)
		ri.cmdSN++
		ri.send(h, nil, nil)
		p = ri.mustRecv()
		if p.BHS[3] != 0 {
			ri.t.Fatalf("TUR status %#x", p.BHS[3])
		}
	}
}

// read10 reads blocks at lba and returns the data (collects Data-In).
func (ri *rawInit) read10(lba uint32, blocks uint16) ([]byte, []PDU) {
	ri.t.Helper()
	n := uint32(blocks) * 512
	h := ri.scsiCmd(cdbRead10(lba, blocks), n, true, false, true)
	ri.cmdSN++
	ri.send(h, nil, nil)
	out := make([]byte, n)
	var pdus []PDU
	for {
		p := ri.mustRecv()
		pdus = append(pdus, p)
		switch p.BHS.Opcode() {
		case OpSCSIDataIn:
			off := p.BHS.u32(offBufOff)
			copy(out[off:], p.Data)
			if p.BHS[1]&0x01 != 0 {
				return out, pdus
			}
		case OpSCSIResp:
			if p.BHS[3] != 0 {
				ri.t.Fatalf("READ status %#x", p.BHS[3])
			}
			return out, pdus
		default:
			ri.t.Fatalf("READ: unexpected %v", p.BHS.Opcode())
		}
	}
}

func (ri *rawInit) String() string { return fmt.Sprintf("rawInit(%s)", ri.nc.LocalAddr()) }

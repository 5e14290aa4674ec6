package scsi

import (
	"bytes"
	"encoding/binary"
	"testing"

	"github.com/hablock/hablock/blockdev"
)

const testSize = 8 << 20 // 16384 blocks of 512

// TestCommandTable checks status, sense and data of the main commands.
func TestCommandTable(t *testing.T) {
	h := newHarness(t, testSize, 512, func(c *LUConfig) { c.WriteCache = true })
	nblocks := uint64(testSize / 512)

	rc16 := make([]byte, 16)
	rc16[0], rc16[1] = opServiceActionIn, saReadCapacity16
	binary.BigEndian.PutUint32(rc16[10:], 32)
	gls := cdb16(opServiceActionIn, nblocks, 24)
	gls[1] = saGetLBAStatus
	rsocAll := []byte{opMaintenanceIn, saReportOpcodes, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 0, 0}
	rsocRead10 := []byte{opMaintenanceIn, saReportOpcodes, 1, opRead10, 0, 0, 0, 0, 0xff, 0xff, 0, 0}
	rsocPRInOpt1 := []byte{opMaintenanceIn, saReportOpcodes, 1, opPRIn, 0, 0, 0, 0, 0xff, 0xff, 0, 0}
	rsocPRInOpt2 := []byte{opMaintenanceIn, saReportOpcodes, 2, opPRIn, 0, 1, 0, 0, 0xff, 0xff, 0, 0}
	rsocRead10Opt2 := []byte{opMaintenanceIn, saReportOpcodes, 2, opRead10, 0, 0, 0, 0, 0xff, 0xff, 0, 0}
	badSAI := make([]byte, 16)
	badSAI[0], badSAI[1] = opServiceActionIn, 0x1f
	bigRead := cdbRead10(0, 0xffff) // 32 MiB at 512 > MaxTransferBytes
	rdprotect := cdbRead10(0, 1)
	rdprotect[1] = 0x20

	type tc struct {
		name   string
		cdb    []byte
		edtl   uint32
		status Status
		key    byte
		asc    uint16
		check  func(t *testing.T, d []byte)
	}
	cases := []tc{
		{name: "TUR", cdb: make([]byte, 6)},
		{name: "INQUIRY standard", cdb: cdbInquiry(false, 0, 255), edtl: 255, check: func(t *testing.T, d []byte) {
			if len(d) < 36 || d[0] != 0 || d[2] != 6 || d[3]&0x0f != 2 || d[7]&0x02 == 0 || d[3]&0x10 == 0 {
				t.Fatalf("bad standard inquiry % x", d)
			}
			if int(d[4])+5 != len(d) {
				t.Fatalf("additional length %d, len %d", d[4], len(d))
			}
			found := false
			for i := 58; i+1 < len(d); i += 2 {
				if binary.BigEndian.Uint16(d[i:]) == vdSBC3 {
					found = true
				}
			}
			if !found {
				t.Fatal("SBC-3 version descriptor missing")
			}
		}},
		{name: "INQUIRY alloc 5", cdb: cdbInquiry(false, 0, 5), edtl: 5, check: func(t *testing.T, d []byte) {
			if len(d) != 5 {
				t.Fatalf("len %d", len(d))
			}
		}},
		{name: "INQUIRY page without EVPD", cdb: cdbInquiry(false, 0x80, 255), edtl: 255, status: StatusCheckCondition, key: KeyIllegalRequest, asc: ascInvalidFieldInCDB},
		{name: "VPD supported pages", cdb: cdbInquiry(true, 0, 255), edtl: 255, check: func(t *testing.T, d []byte) {
			if !bytes.Equal(d[4:], supportedVPD) {
				t.Fatalf("pages % x", d[4:])
			}
		}},
		{name: "VPD serial", cdb: cdbInquiry(true, 0x80, 255), edtl: 255, check: func(t *testing.T, d []byte) {
			if string(d[4:]) != "0102030405060708090a0b0c0d0e0f10" {
				t.Fatalf("serial %q", d[4:])
			}
		}},
		{name: "VPD device identification", cdb: cdbInquiry(true, 0x83, 255), edtl: 255, check: func(t *testing.T, d []byte) {
			if d[4+1]&0x0f != 3 || d[4+3] != 16 || d[4+4]>>4 != 6 {
				t.Fatalf("first designator is not NAA-6: % x", d[4:24])
			}
			e := d[4+4+16:]
			if e[1]&0x0f != 2 || e[3] != 8 {
				t.Fatalf("second designator is not EUI-64: % x", e[:12])
			}
		}},
		{name: "VPD block limits", cdb: cdbInquiry(true, 0xb0, 255), edtl: 255, check: func(t *testing.T, d []byte) {
			if len(d) != 64 || d[3] != 0x3c {
				t.Fatalf("len %d page length %d", len(d), d[3])
			}
			if got := binary.BigEndian.Uint32(d[8:]); got != MaxTransferBytes/512 {
				t.Fatalf("max transfer %d", got)
			}
			if binary.BigEndian.Uint32(d[20:]) == 0 || binary.BigEndian.Uint32(d[24:]) == 0 {
				t.Fatal("unmap limits zero")
			}
			if binary.BigEndian.Uint64(d[36:]) != MaxWriteSameBlocks(512) {
				t.Fatal("max write same")
			}
		}},
		{name: "VPD block device characteristics", cdb: cdbInquiry(true, 0xb1, 255), edtl: 255},
		{name: "VPD logical block provisioning", cdb: cdbInquiry(true, 0xb2, 255), edtl: 255, check: func(t *testing.T, d []byte) {
			if d[5]&0xe4 != 0xe4 {
				t.Fatalf("LBPU/LBPWS/LBPWS10/LBPRZ not all set: %02x", d[5])
			}
		}},
		{name: "VPD unknown", cdb: cdbInquiry(true, 0x99, 255), edtl: 255, status: StatusCheckCondition, key: KeyIllegalRequest, asc: ascInvalidFieldInCDB},
		{name: "READ CAPACITY 10", cdb: []byte{opReadCapacity10, 0, 0, 0, 0, 0, 0, 0, 0, 0}, edtl: 8, check: func(t *testing.T, d []byte) {
			if binary.BigEndian.Uint32(d) != uint32(nblocks-1) || binary.BigEndian.Uint32(d[4:]) != 512 {
				t.Fatalf("% x", d)
			}
		}},
		{name: "READ CAPACITY 10 LBA without PMI", cdb: []byte{opReadCapacity10, 0, 0, 0, 0, 1, 0, 0, 0, 0}, edtl: 8, status: StatusCheckCondition, key: KeyIllegalRequest, asc: ascInvalidFieldInCDB},
		{name: "READ CAPACITY 16", cdb: rc16, edtl: 32, check: func(t *testing.T, d []byte) {
			if binary.BigEndian.Uint64(d) != nblocks-1 || d[14]&0xc0 != 0xc0 {
				t.Fatalf("% x", d)
			}
		}},
		{name: "unknown service action in", cdb: badSAI, edtl: 32, status: StatusCheckCondition, key: KeyIllegalRequest, asc: ascInvalidFieldInCDB},
		{name: "GET LBA STATUS beyond end", cdb: gls, edtl: 24, status: StatusCheckCondition, key: KeyIllegalRequest, asc: ascLBAOutOfRange},
		{name: "READ10 zero blocks", cdb: cdbRead10(0, 0)},
		{name: "READ10 beyond end", cdb: cdbRead10(uint32(nblocks), 1), edtl: 512, status: StatusCheckCondition, key: KeyIllegalRequest, asc: ascLBAOutOfRange},
		{name: "READ10 last block", cdb: cdbRead10(uint32(nblocks-1), 1), edtl: 512},
		{name: "READ10 straddling end", cdb: cdbRead10(uint32(nblocks-1), 2), edtl: 1024, status: StatusCheckCondition, key: KeyIllegalRequest, asc: ascLBAOutOfRange},
		{name: "READ10 0 blocks past end", cdb: cdbRead10(uint32(nblocks+1), 0), status: StatusCheckCondition, key: KeyIllegalRequest, asc: ascLBAOutOfRange},
		{name: "READ10 RDPROTECT", cdb: rdprotect, edtl: 512, status: StatusCheckCondition, key: KeyIllegalRequest, asc: ascInvalidFieldInCDB},
		{name: "READ10 too large", cdb: bigRead, edtl: 1 << 20, status: StatusCheckCondition, key: KeyIllegalRequest, asc: ascInvalidFieldInCDB},
		{name: "READ16 LBA 2^63", cdb: cdb16(opRead16, 1<<63, 1), edtl: 512, status: StatusCheckCondition, key: KeyIllegalRequest, asc: ascLBAOutOfRange},
		{name: "invalid opcode", cdb: []byte{0x02, 0, 0, 0, 0, 0}, status: StatusCheckCondition, key: KeyIllegalRequest, asc: ascInvalidOpcode},
		{name: "EXTENDED COPY unsupported", cdb: []byte{0x83, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0}, status: StatusCheckCondition, key: KeyIllegalRequest, asc: ascInvalidOpcode},
		{name: "MODE SENSE 6 all pages", cdb: []byte{opModeSense6, 0, 0x3f, 0, 255, 0}, edtl: 255, check: func(t *testing.T, d []byte) {
			if int(d[0])+1 != len(d) || d[2]&0x10 == 0 || d[3] != 8 {
				t.Fatalf("% x", d)
			}
		}},
		{name: "MODE SENSE 6 caching", cdb: []byte{opModeSense6, 0x08, 0x08, 0, 255, 0}, edtl: 255, check: func(t *testing.T, d []byte) {
			if d[4] != 0x08 || d[6]&0x04 == 0 {
				t.Fatalf("caching page % x", d)
			}
		}},
		{name: "MODE SENSE 10 control", cdb: []byte{opModeSense10, 0, 0x0a, 0, 0, 0, 0, 0, 255, 0}, edtl: 255, check: func(t *testing.T, d []byte) {
			if d[8+8] != 0x0a {
				t.Fatalf("% x", d)
			}
		}},
		{name: "MODE SENSE unknown page", cdb: []byte{opModeSense6, 0, 0x05, 0, 255, 0}, edtl: 255, status: StatusCheckCondition, key: KeyIllegalRequest, asc: ascInvalidFieldInCDB},
		{name: "REPORT LUNS", cdb: []byte{opReportLUNs, 0, 0, 0, 0, 0, 0, 0, 0, 64, 0, 0}, edtl: 64, check: func(t *testing.T, d []byte) {
			if len(d) != 16 || binary.BigEndian.Uint32(d) != 8 {
				t.Fatalf("% x", d)
			}
		}},
		{name: "REQUEST SENSE", cdb: []byte{opRequestSense, 0, 0, 0, 252, 0}, edtl: 252, check: func(t *testing.T, d []byte) {
			if len(d) != 18 || d[0] != 0x70 || d[2] != 0 {
				t.Fatalf("% x", d)
			}
		}},
		{name: "RSOC all", cdb: rsocAll, edtl: 65535, check: func(t *testing.T, d []byte) {
			if int(binary.BigEndian.Uint32(d))+4 != len(d) || len(d) != 4+8*len(supportedOps) {
				t.Fatalf("len %d", len(d))
			}
		}},
		{name: "RSOC READ10", cdb: rsocRead10, edtl: 65535, check: func(t *testing.T, d []byte) {
			if d[1]&0x07 != 3 || d[4] != opRead10 || d[5]&0x18 != 0x18 {
				t.Fatalf("% x", d)
			}
		}},
		{name: "RSOC PRIN option 1", cdb: rsocPRInOpt1, edtl: 65535, status: StatusCheckCondition, key: KeyIllegalRequest, asc: ascInvalidFieldInCDB},
		{name: "RSOC PRIN option 2", cdb: rsocPRInOpt2, edtl: 65535},
		{name: "RSOC READ10 option 2", cdb: rsocRead10Opt2, edtl: 65535, status: StatusCheckCondition, key: KeyIllegalRequest, asc: ascInvalidFieldInCDB},
		{name: "PRIN bad service action", cdb: cdbPRIn(4, 100), edtl: 100, status: StatusCheckCondition, key: KeyIllegalRequest, asc: ascInvalidFieldInCDB},
		{name: "PRIN report capabilities", cdb: cdbPRIn(2, 100), edtl: 100, check: func(t *testing.T, d []byte) {
			if len(d) != 8 || binary.BigEndian.Uint16(d) != 8 {
				t.Fatalf("% x", d)
			}
		}},
		{name: "SYNCHRONIZE CACHE 10", cdb: []byte{opSyncCache10, 0, 0, 0, 0, 0, 0, 0, 0, 0}},
		{name: "SYNCHRONIZE CACHE 16 beyond end", cdb: cdb16(opSyncCache16, nblocks+1, 0), status: StatusCheckCondition, key: KeyIllegalRequest, asc: ascLBAOutOfRange},
		{name: "PRE-FETCH 10", cdb: []byte{opPrefetch10, 0, 0, 0, 0, 0, 0, 0, 1, 0}},
		{name: "VERIFY 10 BYTCHK 0", cdb: []byte{opVerify10, 0, 0, 0, 0, 0, 0, 0, 8, 0}},
		{name: "VERIFY 10 BYTCHK 2", cdb: []byte{opVerify10, 0x04, 0, 0, 0, 0, 0, 0, 8, 0}, status: StatusCheckCondition, key: KeyIllegalRequest, asc: ascInvalidFieldInCDB},
		{name: "START STOP UNIT", cdb: []byte{opStartStopUnit, 0, 0, 0, 1, 0}},
		{name: "NACA set", cdb: []byte{opTestUnitReady, 0, 0, 0, 0, 0x04}, status: StatusCheckCondition, key: KeyIllegalRequest, asc: ascInvalidFieldInCDB},
	}

	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			h.t = t
			r := h.do(h.in(nexA, c.cdb, c.edtl))
			if c.status == StatusGood {
				h.expectGood(r)
			} else if c.status == StatusCheckCondition {
				h.expectSense(r, c.key, c.asc)
			}
			if c.check != nil {
				c.check(t, r.Data)
			}
		})
	}
}

func TestNoSuchLUN(t *testing.T) {
	h := newHarness(t, testSize, 512, nil)
	cmd := h.in(nexA, cdbInquiry(false, 0, 96), 96)
	cmd.LUN = 7
	r := h.do(cmd)
	h.expectGood(r)
	if r.Data[0] != 0x7f {
		t.Fatalf("peripheral byte %02x, want 7f", r.Data[0])
	}
	cmd = h.in(nexA, make([]byte, 6), 0)
	cmd.LUN = 7
	h.expectSense(h.do(cmd), KeyIllegalRequest, ascLUNotSupported)
	cmd = h.in(nexA, []byte{opReportLUNs, 0, 0, 0, 0, 0, 0, 0, 0, 64, 0, 0}, 64)
	cmd.LUN = 7
	r = h.do(cmd)
	h.expectGood(r)
	if len(r.Data) != 16 {
		t.Fatalf("REPORT LUNS on missing LUN: % x", r.Data)
	}
}

func TestResiduals(t *testing.T) {
	h := newHarness(t, testSize, 512, nil)
	// READ10 of 1 block with EDTL 0, 200, 10000.
	r := h.do(&Command{Nexus: nexA, CDB: cdbRead10(0, 1), ExpectedLength: 0, Read: true})
	h.expectGood(r)
	if r.Residual != -512 || len(r.Data) != 0 {
		t.Fatalf("EDTL 0: residual %d data %d", r.Residual, len(r.Data))
	}
	r = h.do(&Command{Nexus: nexA, CDB: cdbRead10(0, 1), ExpectedLength: 200, Read: true})
	if r.Residual != -(512-200) || len(r.Data) != 200 {
		t.Fatalf("EDTL 200: residual %d data %d", r.Residual, len(r.Data))
	}
	r = h.do(&Command{Nexus: nexA, CDB: cdbRead10(0, 1), ExpectedLength: 10000, Read: true})
	if r.Residual != 10000-512 || len(r.Data) != 512 {
		t.Fatalf("EDTL 10000: residual %d data %d", r.Residual, len(r.Data))
	}
	// WRITE10 of 2 blocks with EDTL of one block writes only one block.
	h.expectGood(h.write(nexA, 0, pattern('a', 1024)))
	r = h.do(&Command{Nexus: nexA, CDB: cdbWrite10(0, 2), ExpectedLength: 512, Write: true, Data: pattern('b', 512)})
	h.expectGood(r)
	if r.Residual != -512 {
		t.Fatalf("write overflow residual %d", r.Residual)
	}
	// WRITE10 of 1 block with EDTL of two blocks writes one block.
	r = h.do(&Command{Nexus: nexA, CDB: cdbWrite10(1, 1), ExpectedLength: 1024, Write: true, Data: pattern('c', 1024)})
	h.expectGood(r)
	if r.Residual != 512 {
		t.Fatalf("write underflow residual %d", r.Residual)
	}
	r = h.read(nexA, 0, 3)
	want := append(append(pattern('b', 512), pattern('c', 512)...), pattern(0, 512)...)
	if !bytes.Equal(r.Data, want) {
		t.Fatal("unexpected data after residual writes")
	}
	// MODE SENSE with small allocation length: no overflow.
	r = h.do(h.in(nexA, []byte{opModeSense6, 0, 0x3f, 0, 4, 0}, 4))
	if r.Residual != 0 || len(r.Data) != 4 {
		t.Fatalf("mode sense residual %d len %d", r.Residual, len(r.Data))
	}
	r = h.do(h.in(nexA, []byte{opModeSense6, 0, 0x3f, 0, 255, 0}, 255))
	if r.Residual != int64(255-len(r.Data)) || r.Residual <= 0 {
		t.Fatalf("mode sense 255: residual %d len %d", r.Residual, len(r.Data))
	}
}

func TestWriteReadFUAAndFlush(t *testing.T) {
	for _, wce := range []bool{false, true} {
		fd := &countingDev{Memory: newMem(testSize)}
		h := newHarnessDev(t, fd, 512, func(c *LUConfig) { c.WriteCache = wce })
		h.expectGood(h.write(nexA, 10, pattern(0x5a, 4096)))
		flushes := fd.flushes.Load()
		if !wce && flushes != 1 {
			t.Fatalf("WCE off: %d flushes after write, want 1", flushes)
		}
		if wce && flushes != 0 {
			t.Fatalf("WCE on: %d flushes after write, want 0", flushes)
		}
		c := cdbWrite10(20, 1)
		c[1] |= 0x08 // FUA
		h.expectGood(h.do(h.out(nexA, c, pattern(1, 512))))
		if fd.flushes.Load() != flushes+1 {
			t.Fatal("FUA write did not flush")
		}
		r := h.read(nexA, 10, 8)
		h.expectGood(r)
		if !bytes.Equal(r.Data, pattern(0x5a, 4096)) {
			t.Fatal("read back mismatch")
		}
		h.expectGood(h.do(h.in(nexA, []byte{opSyncCache10, 0, 0, 0, 0, 0, 0, 0, 0, 0}, 0)))
	}
}

func TestWriteSameReallyWrites(t *testing.T) {
	h := newHarness(t, testSize, 512, nil)
	blk := pattern(0xa7, 512)
	h.expectGood(h.do(h.out(nexA, cdbWriteSame16(100, 300, false, false), blk)))
	r := h.read(nexA, 99, 302)
	if !bytes.Equal(r.Data[:512], pattern(0, 512)) || !bytes.Equal(r.Data[512:512*301], pattern(0xa7, 512*300)) || !bytes.Equal(r.Data[512*301:], pattern(0, 512)) {
		t.Fatal("WRITE SAME did not write exactly the range")
	}
	// UNMAP bit with zero data deallocates (reads zeros).
	h.expectGood(h.do(h.out(nexA, cdbWriteSame16(100, 100, true, false), pattern(0, 512))))
	r = h.read(nexA, 100, 100)
	if !allZero(r.Data) {
		t.Fatal("WRITE SAME UNMAP range does not read zeros")
	}
	// NDOB writes zeros without data-out.
	h.expectGood(h.do(h.out(nexA, cdbWriteSame16(200, 200, false, true), nil)))
	r = h.read(nexA, 200, 200)
	if !allZero(r.Data) {
		t.Fatal("NDOB range does not read zeros")
	}
	// Wrong data-out size.
	h.expectSense(h.do(h.out(nexA, cdbWriteSame16(0, 1, false, false), pattern(1, 1024))), KeyIllegalRequest, ascInvalidFieldInCDB)
	// Zero blocks means "to the end of the medium".
	nb := uint64(testSize / 512)
	h.expectGood(h.do(h.out(nexA, cdbWriteSame16(nb-10, 0, false, false), pattern(3, 512))))
	r = h.read(nexA, uint32(nb-10), 10)
	if !bytes.Equal(r.Data, pattern(3, 5120)) {
		t.Fatal("WRITE SAME 0 blocks did not write to the end")
	}
	h.expectSense(h.do(h.out(nexA, cdbWriteSame16(nb+1, 0, false, false), pattern(3, 512))), KeyIllegalRequest, ascLBAOutOfRange)
	// ANCHOR without UNMAP is invalid.
	c := cdbWriteSame16(0, 1, false, false)
	c[1] |= 0x10
	h.expectSense(h.do(h.out(nexA, c, pattern(0, 512))), KeyIllegalRequest, ascInvalidFieldInCDB)
}

func TestUnmapReadsZeros(t *testing.T) {
	h := newHarness(t, testSize, 512, nil)
	h.expectGood(h.write(nexA, 0, pattern('x', 64*512)))
	p := unmapParam([2]uint64{4, 8}, [2]uint64{30, 2})
	h.expectGood(h.do(h.out(nexA, cdbUnmap(uint16(len(p))), p)))
	r := h.read(nexA, 0, 64)
	for b := 0; b < 64; b++ {
		blk := r.Data[b*512 : (b+1)*512]
		unmapped := (b >= 4 && b < 12) || (b >= 30 && b < 32)
		if unmapped != allZero(blk) {
			t.Fatalf("block %d: unmapped=%v zero=%v", b, unmapped, allZero(blk))
		}
	}
	// Out of range descriptor.
	nb := uint64(testSize / 512)
	p = unmapParam([2]uint64{nb - 1, 2})
	h.expectSense(h.do(h.out(nexA, cdbUnmap(uint16(len(p))), p)), KeyIllegalRequest, ascLBAOutOfRange)
	// Zero blocks at the end is fine; no descriptors is fine; empty list fine.
	p = unmapParam([2]uint64{nb, 0})
	h.expectGood(h.do(h.out(nexA, cdbUnmap(uint16(len(p))), p)))
	p = unmapParam()
	h.expectGood(h.do(h.out(nexA, cdbUnmap(uint16(len(p))), p)))
	h.expectGood(h.do(h.out(nexA, cdbUnmap(0), nil)))
	// Short parameter list.
	h.expectSense(h.do(h.out(nexA, cdbUnmap(4), pattern(0, 4))), KeyIllegalRequest, ascParamListLength)
}

func TestCompareAndWrite(t *testing.T) {
	h := newHarness(t, testSize, 512, nil)
	h.expectGood(h.write(nexA, 5, pattern('A', 1024)))
	data := append(pattern('A', 1024), pattern('B', 1024)...)
	h.expectGood(h.do(h.out(nexA, cdbCAW(5, 2), data)))
	r := h.read(nexA, 5, 2)
	if !bytes.Equal(r.Data, pattern('B', 1024)) {
		t.Fatal("CAW did not write")
	}
	// Miscompare at byte 700 of the compare data.
	cmp := pattern('B', 1024)
	cmp[700] = 'C'
	data = append(cmp, pattern('D', 1024)...)
	r = h.do(h.out(nexA, cdbCAW(5, 2), data))
	h.expectSense(r, KeyMiscompare, ascMiscompareVerify)
	if r.Sense[0]&0x80 == 0 || binary.BigEndian.Uint32(r.Sense[3:]) != 700 {
		t.Fatalf("miscompare INFORMATION: % x", r.Sense)
	}
	if !bytes.Equal(h.read(nexA, 5, 2).Data, pattern('B', 1024)) {
		t.Fatal("miscompared CAW wrote")
	}
	// Too many blocks, wrong data length.
	h.expectSense(h.do(h.out(nexA, cdbCAW(5, 0), pattern(0, 1024))), KeyIllegalRequest, ascInvalidFieldInCDB)
	h.expectSense(h.do(h.out(nexA, cdbCAW(5, 1), pattern(0, 512))), KeyIllegalRequest, ascInvalidFieldInCDB)
}

func TestVerify(t *testing.T) {
	h := newHarness(t, testSize, 512, nil)
	h.expectGood(h.write(nexA, 0, pattern('v', 2048)))
	c := []byte{opVerify10, 0x02, 0, 0, 0, 0, 0, 0, 4, 0}
	h.expectGood(h.do(h.out(nexA, c, pattern('v', 2048))))
	bad := pattern('v', 2048)
	bad[1500] = 0
	r := h.do(h.out(nexA, c, bad))
	h.expectSense(r, KeyMiscompare, ascMiscompareVerify)
	if binary.BigEndian.Uint32(r.Sense[3:]) != 1500 {
		t.Fatalf("offset % x", r.Sense)
	}
	c[1] = 0x06 // BYTCHK 3: one block compared against each
	h.expectGood(h.do(h.out(nexA, c, pattern('v', 512))))
}

func TestOrWrite(t *testing.T) {
	h := newHarness(t, testSize, 512, nil)
	h.expectGood(h.write(nexA, 0, pattern(0x0f, 512)))
	h.expectGood(h.do(h.out(nexA, cdb16(opOrWrite, 0, 1), pattern(0xf0, 512))))
	if !bytes.Equal(h.read(nexA, 0, 1).Data, pattern(0xff, 512)) {
		t.Fatal("ORWRITE result wrong")
	}
}

func TestWriteProtect(t *testing.T) {
	h := newHarness(t, testSize, 512, func(c *LUConfig) { c.ReadOnly = true })
	h.expectSense(h.write(nexA, 0, pattern(1, 512)), KeyDataProtect, ascWriteProtected)
	r := h.do(h.in(nexA, []byte{opModeSense6, 0, 0x3f, 0, 255, 0}, 255))
	if r.Data[2]&0x80 == 0 {
		t.Fatal("WP bit not set")
	}
	h.expectGood(h.read(nexA, 0, 1))
}

func TestModeSelectWCE(t *testing.T) {
	h := newHarness(t, testSize, 512, func(c *LUConfig) { c.WriteCache = true })
	h.expectGood(h.do(h.in(nexB, make([]byte, 6), 0))) // B is a known nexus
	// Read current caching page, clear WCE, write it back.
	r := h.do(h.in(nexA, []byte{opModeSense6, 0x08, 0x08, 0, 255, 0}, 255))
	h.expectGood(r)
	param := append([]byte{0, 0, 0, 0}, r.Data[4:]...)
	param[4] &^= 0x80 // PS
	param[6] &^= 0x04 // WCE
	h.expectGood(h.do(h.out(nexA, []byte{opModeSelect6, 0x10, 0, 0, byte(len(param)), 0}, param)))
	r = h.do(h.in(nexA, []byte{opModeSense6, 0x08, 0x08, 0, 255, 0}, 255))
	if r.Data[6]&0x04 != 0 {
		t.Fatal("WCE still set")
	}
	// The other nexus sees MODE PARAMETERS CHANGED once; INQUIRY does not
	// report it.
	h.expectGood(h.do(h.in(nexB, cdbInquiry(false, 0, 96), 96)))
	h.expectSense(h.do(h.in(nexB, make([]byte, 6), 0)), KeyUnitAttention, ascModeParamsChanged)
	h.expectGood(h.do(h.in(nexB, make([]byte, 6), 0)))
	h.expectGood(h.do(h.in(nexA, make([]byte, 6), 0)))
	// Changing a non-changeable field is refused.
	param[4+2] |= 0x01 // RCD
	h.expectSense(h.do(h.out(nexA, []byte{opModeSelect6, 0x10, 0, 0, byte(len(param)), 0}, param)), KeyIllegalRequest, ascInvalidFieldInParam)
}

func TestSoftwareWriteProtect(t *testing.T) {
	h := newHarness(t, testSize, 512, nil)
	r := h.do(h.in(nexA, []byte{opModeSense6, 0x08, 0x0a, 0, 255, 0}, 255))
	h.expectGood(r)
	param := append([]byte{0, 0, 0, 0}, r.Data[4:]...)
	param[4+4] |= 0x08 // SWP
	sel := []byte{opModeSelect6, 0x10, 0, 0, byte(len(param)), 0}
	h.expectGood(h.do(h.out(nexA, sel, param)))
	h.expectSense(h.write(nexA, 0, pattern(1, 512)), KeyDataProtect, ascSoftWriteProtected)
	h.expectGood(h.read(nexA, 0, 1))
	r = h.do(h.in(nexA, []byte{opModeSense6, 0, 0x3f, 0, 255, 0}, 255))
	if r.Data[2]&0x80 == 0 {
		t.Fatal("WP bit not set with SWP")
	}
	param[4+4] &^= 0x08
	h.expectGood(h.do(h.out(nexA, sel, param)))
	h.expectGood(h.write(nexA, 0, pattern(1, 512)))
}

func TestDescriptorSense(t *testing.T) {
	h := newHarness(t, testSize, 512, nil)
	r := h.do(h.in(nexA, []byte{opModeSense10, 0x08, 0x0a, 0, 0, 0, 0, 0, 255, 0}, 255))
	h.expectGood(r)
	param := append(make([]byte, 8), r.Data[8:]...)
	param[8] &^= 0x80
	param[8+2] |= 0x04 // D_SENSE
	h.expectGood(h.do(h.out(nexA, []byte{opModeSelect10, 0x10, 0, 0, 0, 0, 0, 0, byte(len(param)), 0}, param)))
	r = h.do(h.in(nexA, cdb16(opRead16, 1<<40, 1), 512))
	h.expectSense(r, KeyIllegalRequest, ascLBAOutOfRange)
	if r.Sense[0] != 0x72 {
		t.Fatalf("sense not in descriptor format: % x", r.Sense)
	}
	// A miscompare carries its offset in an information descriptor.
	h.expectGood(h.write(nexA, 0, pattern(1, 512)))
	r = h.do(h.out(nexA, cdbCAW(0, 1), append(pattern(2, 512), pattern(3, 512)...)))
	h.expectSense(r, KeyMiscompare, ascMiscompareVerify)
	if len(r.Sense) < 20 || r.Sense[8] != 0x00 || r.Sense[10]&0x80 == 0 || binary.BigEndian.Uint64(r.Sense[12:]) != 0 {
		t.Fatalf("no information descriptor: % x", r.Sense)
	}
}

// A device that abandons a request (a demoted node in a failover) makes
// the command go unanswered: Aborted, no status, no sense; reads and
// flushes alike. The LU keeps working for the next command.
func TestAbandonedIOSendsNoResponse(t *testing.T) {
	dev := blockdev.NewFaulty(blockdev.NewMemory(1 << 20))
	h := newHarnessDev(t, dev, 512, nil)
	f := dev.Inject(blockdev.Rule{Err: blockdev.ErrAbandoned})
	for _, cmd := range []*Command{
		h.out(nexA, cdbWrite10(0, 1), make([]byte, 512)),
		h.in(nexA, cdbRead10(0, 1), 512),
		h.in(nexA, []byte{opSyncCache10, 0, 0, 0, 0, 0, 0, 0, 0, 0}, 0),
	} {
		r := h.do(cmd)
		if !r.Aborted || r.Status != StatusGood || r.Sense != nil {
			t.Fatalf("cdb % x: response %+v, want Aborted with no status", cmd.CDB, r)
		}
	}
	f.Remove()
	h.expectGood(h.do(h.out(nexA, cdbWrite10(0, 1), make([]byte, 512))))
}

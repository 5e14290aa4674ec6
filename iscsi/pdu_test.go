package iscsi

import (
	"bytes"
	"encoding/binary"
	"errors"
	"testing"
)

var testLimits = Limits{MaxDataSegment: 1 << 20, MaxAHS: MaxAHSLen}

func samplePDUs() []PDU {
	var cmd BHS
	cmd.SetOpcode(OpSCSICmd, false)
	cmd[1] = 0xa1
	cmd.setU32(offITT, 7)
	cmd.setU32(offTTT, 4096)
	cmd.setU32(offCmdSN, 1)
	copy(cmd[32:], cdbWrite10(0, 8))

	var login BHS
	login.SetOpcode(OpLoginReq, true)
	login[1] = 0x87
	copy(login[8:14], []byte{0x80, 0, 0, 1, 2, 3})

	var nop BHS
	nop.SetOpcode(OpNOPOut, true)
	nop[1] = 0x80
	nop.setU32(offITT, 9)
	nop.setU32(offTTT, reservedTag)

	var dout BHS
	dout.SetOpcode(OpSCSIDataOut, false)
	dout[1] = 0x80
	dout.setU32(offITT, 7)
	dout.setU32(offTTT, reservedTag)
	dout.setU32(offBufOff, 512)

	var ext BHS
	ext.SetOpcode(OpSCSICmd, false)
	ext[1] = 0xc1

	return []PDU{
		{BHS: cmd, Data: bytes.Repeat([]byte{0xab}, 4096)},
		{BHS: login, Data: AppendText(nil, []KV{{"InitiatorName", testInit}, {"TargetName", testIQN}, {"MaxRecvDataSegmentLength", "262144"}})},
		{BHS: nop, Data: []byte("ping!")},
		{BHS: dout, Data: make([]byte, 3)},
		{BHS: ext, AHS: appendExtCDBAHS(nil, bytes.Repeat([]byte{1}, 17))},
	}
}

func TestPDURoundTrip(t *testing.T) {
	for _, hd := range []bool{false, true} {
		for _, dd := range []bool{false, true} {
			lim := testLimits
			lim.HeaderDigest, lim.DataDigest = hd, dd
			for i, p := range samplePDUs() {
				b, err := AppendPDU(nil, &p, hd, dd)
				if err != nil {
					t.Fatal(err)
				}
				if len(b) != EncodedLen(&p, hd, dd) || len(b)%4 != 0 {
					t.Fatalf("pdu %d: encoded %d bytes, EncodedLen %d", i, len(b), EncodedLen(&p, hd, dd))
				}
				got, n, err := DecodePDU(b, lim)
				if err != nil || n != len(b) {
					t.Fatalf("pdu %d hd=%v dd=%v: decode n=%d err=%v", i, hd, dd, n, err)
				}
				if got.BHS.Opcode() != p.BHS.Opcode() || !bytes.Equal(got.Data, p.Data) || got.BHS.DataSegLen() != len(p.Data) {
					t.Fatalf("pdu %d: round trip mismatch", i)
				}
				if !bytes.Equal(got.AHS, p.AHS) {
					t.Fatalf("pdu %d: AHS mismatch", i)
				}
				// Flip one bit in the header: the header digest catches it.
				if hd {
					c := bytes.Clone(b)
					c[20] ^= 1
					if _, _, err := DecodePDU(c, lim); !errors.Is(err, ErrHeaderDigest) {
						t.Fatalf("pdu %d: corrupted header: err %v, want ErrHeaderDigest", i, err)
					}
				}
				if dd && len(p.Data) > 0 {
					c := bytes.Clone(b)
					c[len(c)-5] ^= 0x80 // last padding/data byte before the digest
					if _, _, err := DecodePDU(c, lim); !errors.Is(err, ErrDataDigest) {
						t.Fatalf("pdu %d: corrupted data: err %v, want ErrDataDigest", i, err)
					}
				}
			}
		}
	}
}

// TestCRC32CVector checks the digest against RFC 3720 B.4 (32 zero bytes
// give aa 36 91 8a on the wire).
func TestCRC32CVector(t *testing.T) {
	var d [4]byte
	binary.LittleEndian.PutUint32(d[:], crc32c(make([]byte, 32)))
	if d != [4]byte{0xaa, 0x36, 0x91, 0x8a} {
		t.Fatalf("crc32c(32 zeros) = % x", d)
	}
	ones := bytes.Repeat([]byte{0xff}, 32)
	binary.LittleEndian.PutUint32(d[:], crc32c(ones))
	if d != [4]byte{0x43, 0xab, 0xa8, 0x62} {
		t.Fatalf("crc32c(32 x 0xff) = % x", d)
	}
}

func TestDecodeBounds(t *testing.T) {
	var h BHS
	h.SetOpcode(OpNOPOut, true)
	h.SetDataSegLen(1<<20 + 1)
	if _, _, err := DecodePDU(h[:], testLimits); !errors.Is(err, ErrMalformed) {
		t.Fatalf("oversized DataSegmentLength: %v", err)
	}
	h.SetDataSegLen(0)
	h[4] = 10
	lim := testLimits
	lim.MaxAHS = 16
	if _, _, err := DecodePDU(h[:], lim); !errors.Is(err, ErrMalformed) {
		t.Fatalf("oversized TotalAHSLength: %v", err)
	}
	if _, _, err := DecodePDU(h[:20], testLimits); !errors.Is(err, ErrMalformed) {
		t.Fatalf("truncated header: %v", err)
	}
	h[4] = 0
	h.SetDataSegLen(100)
	if _, _, err := DecodePDU(append(h[:], make([]byte, 50)...), testLimits); !errors.Is(err, ErrMalformed) {
		t.Fatalf("truncated data: %v", err)
	}
}

func TestParseAHS(t *testing.T) {
	rest := bytes.Repeat([]byte{7}, 20)
	ahs := appendExtCDBAHS(nil, rest)
	ext, _, _, err := parseAHS(ahs)
	if err != nil || !bytes.Equal(ext, rest) {
		t.Fatalf("ext CDB: %x %v", ext, err)
	}
	bidi := []byte{0, 5, ahsBidiReadLen, 0, 0, 0, 0x10, 0}
	_, n, ok, err := parseAHS(bidi)
	if err != nil || !ok || n != 4096 {
		t.Fatalf("bidi: %d %v %v", n, ok, err)
	}
	for _, bad := range [][]byte{
		{0, 200, 1, 0},                        // length past the end
		{0, 0, 1, 0},                          // zero length
		{0, 1, 9, 0},                          // unknown type
		{0, 1},                                // short
		append(ahs, ahs...),                   // two extended CDBs
		{0, 4, ahsBidiReadLen, 0, 0, 0, 0, 0}, // wrong bidi length
	} {
		if _, _, _, err := parseAHS(bad); err == nil {
			t.Fatalf("parseAHS(% x) accepted", bad)
		}
	}
}

func TestLUN(t *testing.T) {
	for _, lun := range []uint64{0, 1, 255, 256, 1000, 16383} {
		if got := decodeLUN(encodeLUN(lun)); got != lun {
			t.Fatalf("LUN %d round trip = %d", lun, got)
		}
	}
	cases := []struct {
		raw  [8]byte
		want uint64
	}{
		{[8]byte{0, 5}, 5},
		{[8]byte{0x40, 5}, 5},
		{[8]byte{0x41, 0x02}, 0x102},
	}
	for _, c := range cases {
		if got := decodeLUN(c.raw); got != c.want {
			t.Fatalf("decodeLUN(% x) = %d, want %d", c.raw, got, c.want)
		}
	}
	for _, raw := range [][8]byte{{0x01, 0}, {0, 0, 1}, {0x80, 1}, {0xc0, 0}} {
		if got := decodeLUN(raw); got < 1<<63 {
			t.Fatalf("decodeLUN(% x) = %d, want an impossible LUN", raw, got)
		}
	}
}

func TestPad4(t *testing.T) {
	for n, want := range map[int]int{0: 0, 1: 3, 2: 2, 3: 1, 4: 0, 5: 3} {
		if got := pad4(n); got != want {
			t.Fatalf("pad4(%d) = %d", n, got)
		}
	}
}

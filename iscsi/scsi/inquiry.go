package scsi

import (
	"crypto/sha256"
	"encoding/binary"
	"strings"
)

// naaOUI is the 24-bit company identifier placed in the NAA-6 and EUI-64
// designators. The remaining designator bits come from the volume UUID, so
// every node exporting the same volume reports the same identity.
const naaOUI = 0x6c9ce9 // arbitrary, fixed for hablock

// Version descriptors (SPC-4 table 31).
const (
	vdSAM5  = 0x00A0
	vdISCSI = 0x0960
	vdSPC4  = 0x0460
	vdSBC3  = 0x04C0
)

func padASCII(s string, n int) []byte {
	b := []byte(strings.Repeat(" ", n))
	for i := 0; i < len(s) && i < n; i++ {
		c := s[i]
		if c < 0x20 || c > 0x7e {
			c = ' '
		}
		b[i] = c
	}
	return b
}

// standardInquiry returns the standard INQUIRY data (SPC-4 6.6.2).
func (l *lu) standardInquiry() []byte {
	b := make([]byte, 74)
	b[0] = 0x00 // peripheral qualifier 0, direct access block device
	b[1] = 0x00 // RMB=0
	b[2] = 0x06 // SPC-4
	b[3] = 0x12 // HISUP, RESPONSE DATA FORMAT 2
	b[4] = byte(len(b) - 5)
	b[5] = 0x00 // TPGS=0, 3PC=0, PROTECT=0
	b[6] = 0x00
	b[7] = 0x02 // CMDQUE
	copy(b[8:16], padASCII(l.cfg.Vendor, 8))
	copy(b[16:32], padASCII(l.cfg.Product, 16))
	copy(b[32:36], padASCII(l.cfg.Revision, 4))
	for i, v := range []uint16{vdSAM5, vdISCSI, vdSPC4, vdSBC3} {
		binary.BigEndian.PutUint16(b[58+2*i:], v)
	}
	return b
}

// noLUInquiry is the standard INQUIRY data for a LUN that does not exist:
// peripheral qualifier 011b, device type 1Fh.
func noLUInquiry() []byte {
	b := make([]byte, 36)
	b[0] = 0x7f
	b[2] = 0x06
	b[3] = 0x12
	b[4] = byte(len(b) - 5)
	copy(b[8:16], padASCII("HABLOCK", 8))
	copy(b[16:32], padASCII("no such LUN", 16))
	return b
}

var supportedVPD = []byte{0x00, 0x80, 0x83, 0xb0, 0xb1, 0xb2}

func vpdHeader(page byte, body []byte) []byte {
	b := make([]byte, 4, 4+len(body))
	b[1] = page
	binary.BigEndian.PutUint16(b[2:], uint16(len(body)))
	return append(b, body...)
}

func (l *lu) serial() string { return hexString(l.cfg.UUID[:]) }

// naa6 returns the 16-byte NAA IEEE Registered Extended designator.
func (l *lu) naa6() []byte {
	u := l.cfg.UUID
	d := make([]byte, 16)
	// NAA(4) | OUI(24) | vendor specific identifier (36) | extension (64)
	d[0] = 0x60 | byte(naaOUI>>20&0x0f)
	d[1] = byte(naaOUI >> 12 & 0xff)
	d[2] = byte(naaOUI >> 4 & 0xff)
	d[3] = byte(naaOUI&0x0f)<<4 | u[0]&0x0f
	copy(d[4:8], u[1:5])
	copy(d[8:16], u[8:16])
	// Fold the remaining UUID bytes in so every UUID bit influences it.
	d[4] ^= u[5]
	d[5] ^= u[6]
	d[6] ^= u[7]
	d[7] ^= u[0] & 0xf0
	return d
}

// eui64 returns the 8-byte EUI-64 designator: OUI + 40 bits of a hash of
// the UUID.
func (l *lu) eui64() []byte {
	h := sha256.Sum256(l.cfg.UUID[:])
	d := make([]byte, 8)
	d[0], d[1], d[2] = byte(naaOUI>>16&0xff), byte(naaOUI>>8&0xff), byte(naaOUI&0xff)
	copy(d[3:], h[:5])
	return d
}

// vpdPage builds one VPD page.
func (l *lu) vpdPage(page byte) ([]byte, *SenseError) {
	switch page {
	case 0x00:
		return vpdHeader(0x00, supportedVPD), nil
	case 0x80:
		return vpdHeader(0x80, []byte(l.serial())), nil
	case 0x83:
		var body []byte
		desig := func(codeSet, typ byte, id []byte) {
			body = append(body, codeSet, typ, 0, byte(len(id)))
			body = append(body, id...)
		}
		desig(0x01, 0x03, l.naa6())  // binary, LU, NAA
		desig(0x01, 0x02, l.eui64()) // binary, LU, EUI-64
		t10 := append(padASCII(l.cfg.Vendor, 8), []byte(l.serial())...)
		desig(0x02, 0x01, t10) // ASCII, LU, T10 vendor ID
		return vpdHeader(0x83, body), nil
	case 0xb0:
		body := make([]byte, 0x3c)
		bs := l.bs
		body[1] = defaultMaxCAWNLB // MAXIMUM COMPARE AND WRITE LENGTH
		gran := uint32(1)
		if bs < 4096 {
			gran = 4096 / bs
		}
		binary.BigEndian.PutUint16(body[2:], uint16(gran))            // OPTIMAL TRANSFER LENGTH GRANULARITY
		binary.BigEndian.PutUint32(body[4:], MaxTransferBytes/bs)     // MAXIMUM TRANSFER LENGTH
		binary.BigEndian.PutUint32(body[8:], OptimalTransferBytes/bs) // OPTIMAL TRANSFER LENGTH
		binary.BigEndian.PutUint32(body[12:], MaxTransferBytes/bs)    // MAXIMUM PREFETCH LENGTH
		binary.BigEndian.PutUint32(body[16:], MaxUnmapBlocks)         // MAXIMUM UNMAP LBA COUNT
		binary.BigEndian.PutUint32(body[20:], MaxUnmapDescriptors)    // MAXIMUM UNMAP BLOCK DESCRIPTOR COUNT
		binary.BigEndian.PutUint32(body[24:], gran)                   // OPTIMAL UNMAP GRANULARITY
		binary.BigEndian.PutUint32(body[28:], 0x80000000)             // UGAVALID, alignment 0
		binary.BigEndian.PutUint64(body[32:], MaxWriteSameBlocks(bs)) // MAXIMUM WRITE SAME LENGTH
		return vpdHeader(0xb0, body), nil
	case 0xb1:
		body := make([]byte, 0x3c)
		binary.BigEndian.PutUint16(body[0:], 0x0001) // non-rotating medium
		return vpdHeader(0xb1, body), nil
	case 0xb2:
		body := make([]byte, 4)
		body[0] = 0                                // THRESHOLD EXPONENT
		body[1] = 0x80 | 0x40 | 0x20 | 0x04 | 0x02 // LBPU, LBPWS, LBPWS10, LBPRZ, ANC_SUP
		body[2] = 0x02                             // PROVISIONING TYPE: thin
		return vpdHeader(0xb2, body), nil
	}
	return nil, errInvalidCDB(2, -1)
}

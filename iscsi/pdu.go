package iscsi

import (
	"bufio"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
)

// Opcode is the 6-bit iSCSI PDU opcode (RFC 7143 11.2.1.2).
type Opcode uint8

// Initiator opcodes.
const (
	OpNOPOut       Opcode = 0x00
	OpSCSICmd      Opcode = 0x01
	OpTaskMgmtReq  Opcode = 0x02
	OpLoginReq     Opcode = 0x03
	OpTextReq      Opcode = 0x04
	OpSCSIDataOut  Opcode = 0x05
	OpLogoutReq    Opcode = 0x06
	OpSNACKReq     Opcode = 0x10
	OpVendor1Init  Opcode = 0x1c // 0x1c..0x1e are vendor-specific
	OpVendor3Init  Opcode = 0x1e
	opInitiatorMax Opcode = 0x1f
)

// Target opcodes.
const (
	OpNOPIn        Opcode = 0x20
	OpSCSIResp     Opcode = 0x21
	OpTaskMgmtResp Opcode = 0x22
	OpLoginResp    Opcode = 0x23
	OpTextResp     Opcode = 0x24
	OpSCSIDataIn   Opcode = 0x25
	OpLogoutResp   Opcode = 0x26
	OpR2T          Opcode = 0x31
	OpAsyncMsg     Opcode = 0x32
	OpReject       Opcode = 0x3f
)

var opNames = map[Opcode]string{
	OpNOPOut: "NOP-Out", OpSCSICmd: "SCSI-Command", OpTaskMgmtReq: "TMF-Request",
	OpLoginReq: "Login-Request", OpTextReq: "Text-Request", OpSCSIDataOut: "Data-Out",
	OpLogoutReq: "Logout-Request", OpSNACKReq: "SNACK", OpNOPIn: "NOP-In",
	OpSCSIResp: "SCSI-Response", OpTaskMgmtResp: "TMF-Response", OpLoginResp: "Login-Response",
	OpTextResp: "Text-Response", OpSCSIDataIn: "Data-In", OpLogoutResp: "Logout-Response",
	OpR2T: "R2T", OpAsyncMsg: "Async-Message", OpReject: "Reject",
}

func (o Opcode) String() string {
	if s, ok := opNames[o]; ok {
		return s
	}
	return fmt.Sprintf("opcode(0x%02x)", uint8(o))
}

// Wire constants.
const (
	BHSLen = 48 // basic header segment
	// MaxAHSLen is the largest AHS the 8-bit TotalAHSLength (in words)
	// can describe.
	MaxAHSLen = 255 * 4
	// MaxDataSegmentLength is the largest data segment the 24-bit
	// DataSegmentLength field can describe; negotiated limits are lower.
	MaxDataSegmentLength = 1<<24 - 1
	digestLen            = 4
	reservedTag          = 0xffffffff
)

// AHS types (RFC 7143 11.2.2).
const (
	ahsExtendedCDB = 1
	ahsBidiReadLen = 2
)

// Sentinel errors of the codec.
var (
	// ErrMalformed: a PDU violates the wire format (a length field out of
	// bounds, a truncated segment, an AHS that does not parse).
	ErrMalformed = errors.New("iscsi: malformed PDU")
	// ErrHeaderDigest: the CRC32C over BHS+AHS did not match. The stream
	// can no longer be trusted; the connection must be closed.
	ErrHeaderDigest = errors.New("iscsi: header digest mismatch")
	// ErrDataDigest: the CRC32C over the data segment did not match. The
	// PDU was read completely, so the stream is still in sync.
	ErrDataDigest = errors.New("iscsi: data digest mismatch")
)

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

// crc32c is the iSCSI digest (RFC 7143 11.2.5 / Appendix B.4).
func crc32c(b ...[]byte) uint32 {
	var c uint32
	for _, p := range b {
		c = crc32.Update(c, castagnoli, p)
	}
	return c
}

// pad4 returns how many zero bytes pad n to a multiple of 4.
func pad4(n int) int { return (4 - n&3) & 3 }

var zeroPad [4]byte

// BHS is the 48-byte basic header segment. Accessors read fields in place
// so that decoding costs no allocation; the byte offsets follow RFC 7143
// section 11.
type BHS [BHSLen]byte

func (h *BHS) Opcode() Opcode     { return Opcode(h[0] & 0x3f) }
func (h *BHS) Immediate() bool    { return h[0]&0x40 != 0 }
func (h *BHS) Flags() byte        { return h[1] }
func (h *BHS) Final() bool        { return h[1]&0x80 != 0 }
func (h *BHS) TotalAHSLen() int   { return int(h[4]) * 4 }
func (h *BHS) DataSegLen() int    { return int(h[5])<<16 | int(h[6])<<8 | int(h[7]) }
func (h *BHS) LUN() [8]byte       { return [8]byte(h[8:16]) }
func (h *BHS) ITT() uint32        { return h.u32(16) }
func (h *BHS) u32(off int) uint32 { return binary.BigEndian.Uint32(h[off:]) }
func (h *BHS) u16(off int) uint16 { return binary.BigEndian.Uint16(h[off:]) }

func (h *BHS) setU32(off int, v uint32) { binary.BigEndian.PutUint32(h[off:], v) }
func (h *BHS) setU16(off int, v uint16) { binary.BigEndian.PutUint16(h[off:], v) }

// SetOpcode sets the opcode and the immediate bit.
func (h *BHS) SetOpcode(op Opcode, immediate bool) {
	h[0] = byte(op) & 0x3f
	if immediate {
		h[0] |= 0x40
	}
}

// SetDataSegLen stores the 24-bit DataSegmentLength. n must be at most
// MaxDataSegmentLength; callers size their segments before encoding.
func (h *BHS) SetDataSegLen(n int) {
	h[5], h[6], h[7] = byte(n>>16), byte(n>>8), byte(n)
}

// Common field offsets shared by several PDU types.
const (
	offITT      = 16
	offTTT      = 20 // also CID (login/logout), EDTL (SCSI command)
	offCmdSN    = 24 // initiator PDUs; StatSN in target PDUs
	offExpStat  = 28 // initiator PDUs; ExpCmdSN in target PDUs
	offMaxCmdSN = 32 // target PDUs
	offRefCmdSN = 32 // TMF request
	offDataSN   = 36
	offBufOff   = 40
	offResidual = 44
)

// PDU is one decoded PDU: header, additional header segments and data.
// Data and AHS alias the buffer they were decoded from.
type PDU struct {
	BHS  BHS
	AHS  []byte
	Data []byte
}

// Limits bounds what a decoder accepts.
type Limits struct {
	// MaxDataSegment is the largest DataSegmentLength accepted: our
	// declared MaxRecvDataSegmentLength.
	MaxDataSegment int
	// MaxAHS is the largest TotalAHSLength (bytes) accepted.
	MaxAHS int
	// HeaderDigest and DataDigest say whether CRC32C digests follow the
	// header and the data segment.
	HeaderDigest, DataDigest bool
}

// checkHeader validates the length fields of a BHS against lim.
func checkHeader(h *BHS, lim Limits) error {
	if n := h.TotalAHSLen(); n > lim.MaxAHS {
		return fmt.Errorf("%w: TotalAHSLength %d > %d", ErrMalformed, n, lim.MaxAHS)
	}
	if n := h.DataSegLen(); n > lim.MaxDataSegment {
		return fmt.Errorf("%w: DataSegmentLength %d > %d", ErrMalformed, n, lim.MaxDataSegment)
	}
	return nil
}

// EncodedLen is the number of bytes AppendPDU produces for p.
func EncodedLen(p *PDU, hdrDigest, dataDigest bool) int {
	n := BHSLen + len(p.AHS) + pad4(len(p.AHS))
	if hdrDigest {
		n += digestLen
	}
	if len(p.Data) > 0 {
		n += len(p.Data) + pad4(len(p.Data))
		if dataDigest {
			n += digestLen
		}
	}
	return n
}

// AppendPDU encodes p onto dst: the BHS with TotalAHSLength and
// DataSegmentLength filled in from p.AHS and p.Data, the AHS padded to a
// word, the optional header digest, the data padded to a word and the
// optional data digest. It is a pure function.
func AppendPDU(dst []byte, p *PDU, hdrDigest, dataDigest bool) ([]byte, error) {
	if len(p.AHS) > MaxAHSLen || len(p.Data) > MaxDataSegmentLength {
		return dst, fmt.Errorf("%w: AHS %d or data %d too long to encode", ErrMalformed, len(p.AHS), len(p.Data))
	}
	h := p.BHS
	ahsWords := (len(p.AHS) + 3) / 4
	h[4] = byte(ahsWords)
	h.SetDataSegLen(len(p.Data))
	start := len(dst)
	dst = append(dst, h[:]...)
	dst = append(dst, p.AHS...)
	dst = append(dst, zeroPad[:pad4(len(p.AHS))]...)
	if hdrDigest {
		dst = binary.LittleEndian.AppendUint32(dst, crc32c(dst[start:]))
	}
	if len(p.Data) > 0 {
		dst = append(dst, p.Data...)
		pad := zeroPad[:pad4(len(p.Data))]
		dst = append(dst, pad...)
		if dataDigest {
			dst = binary.LittleEndian.AppendUint32(dst, crc32c(p.Data, pad))
		}
	}
	return dst, nil
}

// DecodePDU decodes one PDU from the front of b and returns it with the
// number of bytes consumed. Lengths are checked against lim before any
// slicing; the result aliases b. A data digest mismatch returns the
// decoded PDU, its length and ErrDataDigest.
func DecodePDU(b []byte, lim Limits) (PDU, int, error) {
	var p PDU
	if len(b) < BHSLen {
		return p, 0, fmt.Errorf("%w: %d bytes, need a %d-byte header", ErrMalformed, len(b), BHSLen)
	}
	copy(p.BHS[:], b)
	if err := checkHeader(&p.BHS, lim); err != nil {
		return p, 0, err
	}
	ahsLen := p.BHS.TotalAHSLen()
	n := BHSLen + ahsLen
	if hd := lim.HeaderDigest; hd {
		n += digestLen
	}
	if len(b) < n {
		return p, 0, fmt.Errorf("%w: truncated header", ErrMalformed)
	}
	if lim.HeaderDigest {
		want := binary.LittleEndian.Uint32(b[BHSLen+ahsLen:])
		if crc32c(b[:BHSLen+ahsLen]) != want {
			return p, 0, ErrHeaderDigest
		}
	}
	if ahsLen > 0 {
		p.AHS = b[BHSLen : BHSLen+ahsLen]
	}
	dsl := p.BHS.DataSegLen()
	if dsl == 0 {
		return p, n, nil
	}
	padded := dsl + pad4(dsl)
	need := padded
	if lim.DataDigest {
		need += digestLen
	}
	if len(b)-n < need {
		return p, 0, fmt.Errorf("%w: truncated data segment", ErrMalformed)
	}
	p.Data = b[n : n+dsl]
	if lim.DataDigest {
		want := binary.LittleEndian.Uint32(b[n+padded:])
		if crc32c(b[n:n+padded]) != want {
			return p, n + need, ErrDataDigest
		}
	}
	return p, n + need, nil
}

// parseAHS walks the AHS list and returns the extended CDB bytes (type 1)
// and the bidirectional read length (type 2), if present. Pure.
func parseAHS(ahs []byte) (extCDB []byte, bidiRead uint32, hasBidi bool, err error) {
	for len(ahs) > 0 {
		if len(ahs) < 4 {
			return nil, 0, false, fmt.Errorf("%w: AHS shorter than its header", ErrMalformed)
		}
		l := int(binary.BigEndian.Uint16(ahs))
		typ := ahs[2]
		// AHSLength counts the type-specific bytes after the type byte
		// (starting with the reserved byte 3), so the AHS spans 3+l bytes
		// padded to a word.
		total := 3 + l
		total += pad4(total)
		if l == 0 || total > len(ahs) {
			return nil, 0, false, fmt.Errorf("%w: AHSLength %d exceeds TotalAHSLength", ErrMalformed, l)
		}
		switch typ {
		case ahsExtendedCDB:
			if extCDB != nil {
				return nil, 0, false, fmt.Errorf("%w: two extended CDB AHS", ErrMalformed)
			}
			extCDB = ahs[4 : 3+l]
		case ahsBidiReadLen:
			if l != 5 {
				return nil, 0, false, fmt.Errorf("%w: bidi read length AHS length %d", ErrMalformed, l)
			}
			bidiRead, hasBidi = binary.BigEndian.Uint32(ahs[4:8]), true
		default:
			return nil, 0, false, fmt.Errorf("%w: unknown AHS type %d", ErrMalformed, typ)
		}
		ahs = ahs[total:]
	}
	return extCDB, bidiRead, hasBidi, nil
}

// appendExtCDBAHS encodes an extended-CDB AHS carrying rest (the CDB
// bytes past the first 16).
func appendExtCDBAHS(dst, rest []byte) []byte {
	l := len(rest) + 1
	dst = append(dst, byte(l>>8), byte(l), ahsExtendedCDB, 0)
	dst = append(dst, rest...)
	return append(dst, zeroPad[:pad4(3+l)]...)
}

// pduReader reads PDUs from a connection. It bounds every length before
// allocating: the header first (readHeader), then the caller chooses
// where the data segment goes (readData), so Data-Out payloads can land
// directly in the command's buffer.
type pduReader struct {
	r   *bufio.Reader
	lim Limits
	ahs [MaxAHSLen]byte
	dig [digestLen]byte
	pad [4]byte
}

func newPDUReader(r io.Reader, size int, lim Limits) *pduReader {
	return &pduReader{r: bufio.NewReaderSize(r, size), lim: lim}
}

// readHeader reads the BHS, the AHS and the header digest into h. The
// returned AHS slice is valid until the next readHeader.
func (pr *pduReader) readHeader(h *BHS) (ahs []byte, err error) {
	if _, err := io.ReadFull(pr.r, h[:]); err != nil {
		return nil, err
	}
	if err := checkHeader(h, pr.lim); err != nil {
		return nil, err
	}
	n := h.TotalAHSLen()
	ahs = pr.ahs[:n]
	if _, err := io.ReadFull(pr.r, ahs); err != nil {
		return nil, unexpectedEOF(err)
	}
	if pr.lim.HeaderDigest {
		if _, err := io.ReadFull(pr.r, pr.dig[:]); err != nil {
			return nil, unexpectedEOF(err)
		}
		if crc32c(h[:], ahs) != binary.LittleEndian.Uint32(pr.dig[:]) {
			return nil, ErrHeaderDigest
		}
	}
	return ahs, nil
}

// readData reads the data segment of the header just read into dst,
// which must be exactly DataSegmentLength long, then the padding and the
// data digest. ErrDataDigest leaves the stream positioned at the next PDU.
func (pr *pduReader) readData(dst []byte) error {
	if len(dst) == 0 {
		return nil
	}
	if _, err := io.ReadFull(pr.r, dst); err != nil {
		return unexpectedEOF(err)
	}
	pad := pr.pad[:pad4(len(dst))]
	if _, err := io.ReadFull(pr.r, pad); err != nil {
		return unexpectedEOF(err)
	}
	if pr.lim.DataDigest {
		if _, err := io.ReadFull(pr.r, pr.dig[:]); err != nil {
			return unexpectedEOF(err)
		}
		if crc32c(dst, pad) != binary.LittleEndian.Uint32(pr.dig[:]) {
			return ErrDataDigest
		}
	}
	return nil
}

// discardData skips a data segment of n bytes (plus padding and digest)
// without keeping it; the digest is still checked.
func (pr *pduReader) discardData(n int) error {
	if n == 0 {
		return nil
	}
	var crc uint32
	total := n + pad4(n)
	for total > 0 {
		chunk, err := pr.r.Peek(min(total, pr.r.Size()))
		if len(chunk) == 0 {
			return unexpectedEOF(err)
		}
		crc = crc32.Update(crc, castagnoli, chunk)
		total -= len(chunk)
		pr.r.Discard(len(chunk))
	}
	if pr.lim.DataDigest {
		if _, err := io.ReadFull(pr.r, pr.dig[:]); err != nil {
			return unexpectedEOF(err)
		}
		if crc != binary.LittleEndian.Uint32(pr.dig[:]) {
			return ErrDataDigest
		}
	}
	return nil
}

func unexpectedEOF(err error) error {
	if err == io.EOF {
		return io.ErrUnexpectedEOF
	}
	return err
}

// pduWriter encodes PDUs into a buffered writer. Header and data are
// written separately so large data segments bypass the buffer.
type pduWriter struct {
	w                     *bufio.Writer
	hdrDigest, dataDigest bool
	scratch               [BHSLen + digestLen]byte
}

func (pw *pduWriter) writePDU(h *BHS, data []byte) error {
	h[4] = 0 // the target never sends AHS
	h.SetDataSegLen(len(data))
	b := pw.scratch[:BHSLen]
	copy(b, h[:])
	if pw.hdrDigest {
		b = binary.LittleEndian.AppendUint32(b, crc32c(h[:]))
	}
	if _, err := pw.w.Write(b); err != nil {
		return err
	}
	if len(data) == 0 {
		return nil
	}
	if _, err := pw.w.Write(data); err != nil {
		return err
	}
	pad := zeroPad[:pad4(len(data))]
	if _, err := pw.w.Write(pad); err != nil {
		return err
	}
	if pw.dataDigest {
		var d [digestLen]byte
		binary.LittleEndian.PutUint32(d[:], crc32c(data, pad))
		if _, err := pw.w.Write(d[:]); err != nil {
			return err
		}
	}
	return nil
}

// decodeLUN turns the 8-byte LUN field into the flat LUN number used by
// package scsi (SAM-5 4.7). Peripheral device addressing (method 00,
// bus 0) and flat space addressing (method 01) with a single level are
// decoded; any other form is returned as a value no LU can have
// (1<<63 | the raw field's top bits), so the SCSI core answers LOGICAL
// UNIT NOT SUPPORTED.
func decodeLUN(l [8]byte) uint64 {
	raw := binary.BigEndian.Uint64(l[:])
	if raw&0x0000ffffffffffff != 0 {
		return 1<<63 | raw>>1
	}
	switch l[0] >> 6 {
	case 0:
		if l[0]&0x3f == 0 {
			return uint64(l[1])
		}
	case 1:
		return uint64(l[0]&0x3f)<<8 | uint64(l[1])
	}
	return 1<<63 | raw>>1
}

// encodeLUN is the inverse of decodeLUN for LUNs below 16384: peripheral
// addressing below 256, flat space addressing above.
func encodeLUN(lun uint64) [8]byte {
	var l [8]byte
	if lun < 256 {
		l[1] = byte(lun)
	} else {
		l[0] = 0x40 | byte(lun>>8)&0x3f
		l[1] = byte(lun)
	}
	return l
}

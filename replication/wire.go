package replication

import (
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"sync"
)

// Frame layout (all integers big-endian), HeaderSize bytes then payload:
//
//	off len field
//	  0   4 magic "HBRP"
//	  4   2 version (FrameVersion)
//	  6   2 message type (MsgType)
//	  8   2 flags (reserved for framing features; senders write 0,
//	        receivers carry the bits through unchanged)
//	 10   2 reserved, must be zero
//	 12   8 sequence number (per direction, chosen by the sender)
//	 20   4 payload length
//	 24   4 payload CRC32C
//	 28   4 header CRC32C over bytes 0..27
const (
	// Magic opens every frame; anything else means we are not talking to
	// a hablock peer (or lost framing) and the connection must be closed.
	Magic = "HBRP"
	// FrameVersion is the framing version this code writes and accepts.
	// The replication protocol version is negotiated separately in
	// Handshake (MinProto..MaxProto).
	FrameVersion uint16 = 1
	// HeaderSize is the fixed size of a frame header.
	HeaderSize = 32

	// MaxData is the largest data block one Write or ResyncData carries:
	// 1 MiB, the largest single I/O we pass through (iSCSI MaxBurstLength
	// is negotiated below it) so one request is never split on the wire.
	MaxData = 1 << 20
	// maxFixed bounds the fixed fields that precede data in any message
	// (Write uses 24 bytes, ResyncData 18); 64 leaves room for additions.
	maxFixed = 64
	// MaxPayload is the default and largest payload length a receiver
	// accepts: MaxData plus the fixed fields of a data message. Lengths
	// are checked against it (or a smaller per-call max) before any
	// buffer is allocated.
	MaxPayload = MaxData + maxFixed
	// MaxFrame is the largest whole frame, header included.
	MaxFrame = HeaderSize + MaxPayload
)

// Errors returned by Decode, ReadFrame and the Unmarshal methods. All of
// them mean the stream can no longer be trusted: close the connection.
var (
	ErrShortBuffer = errors.New("replication: short buffer")
	ErrBadMagic    = errors.New("replication: bad frame magic")
	ErrVersion     = errors.New("replication: unsupported frame version")
	ErrUnknownType = errors.New("replication: unknown message type")
	ErrTooLarge    = errors.New("replication: payload too large")
	ErrCorrupt     = errors.New("replication: frame corrupt (crc mismatch)")
	ErrMalformed   = errors.New("replication: malformed payload")
)

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

// MsgType identifies a message; each has a payload struct below.
type MsgType uint16

const (
	MsgHandshake       MsgType = iota + 1 // first frame each way: identity, GIs, states
	MsgWrite                              // replicate one write (primary -> secondary)
	MsgWriteAck                           // write(s) done on the peer (protocol B: received, C: written)
	MsgBarrier                            // closes a write epoch; peer acks with BarrierAck
	MsgBarrierAck                         // every write of epoch Nr is on stable storage
	MsgFlush                              // flush the peer's disk cache
	MsgFlushAck                           // ... done
	MsgPing                               // liveness probe
	MsgPingAck                            // ... answer
	MsgResyncRequest                      // sync target asks for a range
	MsgResyncData                         // sync source answers with data
	MsgChecksumRequest                    // checksum-based resync: here is my sum, send if different
	MsgChecksumReply                      // ... the peer's sum for the same range
	MsgVerifyRequest                      // online verify: please checksum this range
	MsgVerifyReply                        // ... here is the sum
	MsgBitmapChunk                        // part of the out-of-sync bitmap
	MsgStateChange                        // role/disk/replication state or GIs changed
	MsgSyncUUID                           // sync source's new bitmap UUID, sent at resync start
	MsgDisconnect                         // orderly close with a reason
	MsgDiscard                            // replicate a discard (primary -> secondary), acked like Write
	numMsgTypes
)

var msgNames = [...]string{"MsgType(0)", "Handshake", "Write", "WriteAck", "Barrier", "BarrierAck", "Flush", "FlushAck",
	"Ping", "PingAck", "ResyncRequest", "ResyncData", "ChecksumRequest", "ChecksumReply",
	"VerifyRequest", "VerifyReply", "BitmapChunk", "StateChange", "SyncUUID", "Disconnect", "Discard"}

func (t MsgType) String() string {
	if int(t) < len(msgNames) {
		return msgNames[t]
	}
	return fmt.Sprintf("MsgType(%d)", uint16(t))
}

// Valid reports whether t is a message type this version understands.
func (t MsgType) Valid() bool { return t >= MsgHandshake && t < numMsgTypes }

// Header is the decoded fixed header of a frame.
type Header struct {
	Version uint16
	Type    MsgType
	Flags   uint16
	Seq     uint64
	Length  uint32 // payload length
}

// Frame is one decoded frame. Payload aliases the buffer it was decoded
// from.
type Frame struct {
	Header
	Payload []byte
}

// parseHeader validates b[:HeaderSize] and returns the header. The payload
// CRC is returned separately; it is checked once the payload is read.
func parseHeader(b []byte, max uint32) (Header, uint32, error) {
	var h Header
	if string(b[0:4]) != Magic {
		return h, 0, ErrBadMagic
	}
	if crc32.Checksum(b[:28], castagnoli) != binary.BigEndian.Uint32(b[28:32]) {
		return h, 0, fmt.Errorf("%w: header", ErrCorrupt)
	}
	h.Version = binary.BigEndian.Uint16(b[4:6])
	h.Type = MsgType(binary.BigEndian.Uint16(b[6:8]))
	h.Flags = binary.BigEndian.Uint16(b[8:10])
	h.Seq = binary.BigEndian.Uint64(b[12:20])
	h.Length = binary.BigEndian.Uint32(b[20:24])
	if h.Version != FrameVersion {
		return h, 0, fmt.Errorf("%w: %d", ErrVersion, h.Version)
	}
	if binary.BigEndian.Uint16(b[10:12]) != 0 {
		return h, 0, fmt.Errorf("%w: reserved header bytes set", ErrMalformed)
	}
	if !h.Type.Valid() {
		return h, 0, fmt.Errorf("%w: %d", ErrUnknownType, uint16(h.Type))
	}
	if max > MaxPayload {
		max = MaxPayload
	}
	if h.Length > max {
		return h, 0, fmt.Errorf("%w: %d > %d", ErrTooLarge, h.Length, max)
	}
	return h, binary.BigEndian.Uint32(b[24:28]), nil
}

// Decode parses one frame from the start of buf without allocating. It
// checks, in order: magic, header CRC, version, reserved bits, type
// (ErrUnknownType: the connection must be closed, never skip), length
// against MaxPayload, and payload CRC (ErrCorrupt). If buf holds less
// than a whole frame it returns ErrShortBuffer. n is the frame's total
// size. f.Payload aliases buf.
func Decode(buf []byte) (f Frame, n int, err error) {
	if len(buf) < HeaderSize {
		return f, 0, ErrShortBuffer
	}
	h, pcrc, err := parseHeader(buf[:HeaderSize], MaxPayload)
	if err != nil {
		return f, 0, err
	}
	n = HeaderSize + int(h.Length)
	if len(buf) < n {
		return f, 0, ErrShortBuffer
	}
	p := buf[HeaderSize:n]
	if crc32.Checksum(p, castagnoli) != pcrc {
		return f, 0, fmt.Errorf("%w: payload", ErrCorrupt)
	}
	return Frame{Header: h, Payload: p}, n, nil
}

// ReadFrame reads one frame from r: the header, then (after checking the
// length against max, itself capped at MaxPayload) exactly the payload.
// It reuses buf when it is large enough and otherwise allocates at most
// HeaderSize+Length bytes; the returned slice is the buffer to pass next
// time. f.Payload aliases it.
func ReadFrame(r io.Reader, max uint32, buf []byte) (f Frame, out []byte, err error) {
	if cap(buf) < HeaderSize {
		buf = make([]byte, HeaderSize)
	}
	buf = buf[:HeaderSize]
	if _, err := io.ReadFull(r, buf); err != nil {
		return f, buf, err
	}
	h, pcrc, err := parseHeader(buf, max)
	if err != nil {
		return f, buf, err
	}
	n := HeaderSize + int(h.Length)
	if cap(buf) < n {
		nb := make([]byte, n)
		copy(nb, buf)
		buf = nb
	}
	buf = buf[:n]
	if _, err := io.ReadFull(r, buf[HeaderSize:]); err != nil {
		if err == io.EOF {
			err = io.ErrUnexpectedEOF
		}
		return f, buf, err
	}
	p := buf[HeaderSize:]
	if crc32.Checksum(p, castagnoli) != pcrc {
		return f, buf, fmt.Errorf("%w: payload", ErrCorrupt)
	}
	return Frame{Header: h, Payload: p}, buf, nil
}

// Message is a typed payload.
type Message interface {
	// Type is the frame type that carries this message.
	Type() MsgType
	// Marshal appends the payload to dst; it fails if a field is out of
	// its documented bounds, so a peer is never sent what it must refuse.
	Marshal(dst []byte) ([]byte, error)
	// Unmarshal parses p strictly: every bound is checked and trailing
	// bytes are an error (ErrMalformed). Byte slices alias p.
	Unmarshal(p []byte) error
}

// AppendFrame appends a whole frame carrying m to dst.
func AppendFrame(dst []byte, seq uint64, flags uint16, m Message) ([]byte, error) {
	start := len(dst)
	dst = append(dst, make([]byte, HeaderSize)...)
	dst, err := m.Marshal(dst)
	if err != nil {
		return dst[:start], err
	}
	plen := len(dst) - start - HeaderSize
	if plen > MaxPayload {
		return dst[:start], fmt.Errorf("%w: %d", ErrTooLarge, plen)
	}
	h := dst[start : start+HeaderSize]
	copy(h[0:4], Magic)
	binary.BigEndian.PutUint16(h[4:6], FrameVersion)
	binary.BigEndian.PutUint16(h[6:8], uint16(m.Type()))
	binary.BigEndian.PutUint16(h[8:10], flags)
	binary.BigEndian.PutUint64(h[12:20], seq)
	binary.BigEndian.PutUint32(h[20:24], uint32(plen))
	binary.BigEndian.PutUint32(h[24:28], crc32.Checksum(dst[start+HeaderSize:], castagnoli))
	binary.BigEndian.PutUint32(h[28:32], crc32.Checksum(h[:28], castagnoli))
	return dst, nil
}

// NewMessage returns an empty message of type t, or ErrUnknownType.
func NewMessage(t MsgType) (Message, error) {
	switch t {
	case MsgHandshake:
		return new(Handshake), nil
	case MsgWrite:
		return new(Write), nil
	case MsgWriteAck:
		return new(WriteAck), nil
	case MsgBarrier:
		return new(Barrier), nil
	case MsgBarrierAck:
		return new(BarrierAck), nil
	case MsgFlush:
		return new(Flush), nil
	case MsgFlushAck:
		return new(FlushAck), nil
	case MsgPing:
		return new(Ping), nil
	case MsgPingAck:
		return new(PingAck), nil
	case MsgResyncRequest:
		return new(ResyncRequest), nil
	case MsgResyncData:
		return new(ResyncData), nil
	case MsgChecksumRequest:
		return new(ChecksumRequest), nil
	case MsgChecksumReply:
		return new(ChecksumReply), nil
	case MsgVerifyRequest:
		return new(VerifyRequest), nil
	case MsgVerifyReply:
		return new(VerifyReply), nil
	case MsgBitmapChunk:
		return new(BitmapChunk), nil
	case MsgStateChange:
		return new(StateChange), nil
	case MsgSyncUUID:
		return new(SyncUUID), nil
	case MsgDisconnect:
		return new(Disconnect), nil
	case MsgDiscard:
		return new(Discard), nil
	}
	return nil, fmt.Errorf("%w: %d", ErrUnknownType, uint16(t))
}

// ParseMessage unmarshals f's payload into the message type its header
// names.
func ParseMessage(f Frame) (Message, error) {
	m, err := NewMessage(f.Type)
	if err != nil {
		return nil, err
	}
	if err := m.Unmarshal(f.Payload); err != nil {
		return nil, fmt.Errorf("%v: %w", f.Type, err)
	}
	return m, nil
}

// ---- payload encoding helpers ----

type enc struct{ b []byte }

func (e *enc) u8(v uint8)   { e.b = append(e.b, v) }
func (e *enc) u16(v uint16) { e.b = binary.BigEndian.AppendUint16(e.b, v) }
func (e *enc) u32(v uint32) { e.b = binary.BigEndian.AppendUint32(e.b, v) }
func (e *enc) u64(v uint64) { e.b = binary.BigEndian.AppendUint64(e.b, v) }

// dec reads fixed fields; the first shortfall sets err and later reads
// return zero.
type dec struct {
	p   []byte
	err error
}

func (d *dec) take(n int) []byte {
	if d.err != nil {
		return nil
	}
	if n < 0 || len(d.p) < n {
		d.err = fmt.Errorf("%w: truncated", ErrMalformed)
		return nil
	}
	b := d.p[:n:n]
	d.p = d.p[n:]
	return b
}

func (d *dec) u8() uint8 {
	if b := d.take(1); b != nil {
		return b[0]
	}
	return 0
}

func (d *dec) u16() uint16 {
	if b := d.take(2); b != nil {
		return binary.BigEndian.Uint16(b)
	}
	return 0
}

func (d *dec) u32() uint32 {
	if b := d.take(4); b != nil {
		return binary.BigEndian.Uint32(b)
	}
	return 0
}

func (d *dec) u64() uint64 {
	if b := d.take(8); b != nil {
		return binary.BigEndian.Uint64(b)
	}
	return 0
}

// fail records a validation error (first one wins).
func (d *dec) fail(format string, args ...any) {
	if d.err == nil {
		d.err = fmt.Errorf("%w: "+format, append([]any{ErrMalformed}, args...)...)
	}
}

// end reports the first error, or trailing bytes.
func (d *dec) end() error {
	if d.err == nil && len(d.p) != 0 {
		d.err = fmt.Errorf("%w: %d trailing bytes", ErrMalformed, len(d.p))
	}
	return d.err
}

func malformed(format string, args ...any) error {
	return fmt.Errorf("%w: "+format, append([]any{ErrMalformed}, args...)...)
}

// resyncDataFixed is the size of ResyncData's fixed fields (ID, Offset,
// Status) that precede its data.
const resyncDataFixed = 18

// newResyncDataFrame returns a frame buffer for a ResyncData of n data
// bytes with the fixed fields filled in, and the slice of it where the
// data goes: the caller reads the data straight into the frame (no
// copy), then calls sealPayload and, with the sequence number, sealHeader.
func newResyncDataFrame(id, off uint64, n int) (frame, data []byte) {
	frame = getFrameBuf(HeaderSize + resyncDataFixed + n)[:HeaderSize+resyncDataFixed+n]
	p := frame[HeaderSize:]
	binary.BigEndian.PutUint64(p[0:8], id)
	binary.BigEndian.PutUint64(p[8:16], off)
	binary.BigEndian.PutUint16(p[16:18], uint16(StatusOK))
	return frame, p[resyncDataFixed:]
}

// sealPayload fills in everything of frame's header but the sequence
// number and header CRC (see sealHeader), checking the payload length
// as AppendFrame does.
func sealPayload(frame []byte, t MsgType, flags uint16) error {
	plen := len(frame) - HeaderSize
	if plen < 0 || plen > MaxPayload {
		return fmt.Errorf("%w: %d", ErrTooLarge, plen)
	}
	h := frame[:HeaderSize]
	copy(h[0:4], Magic)
	binary.BigEndian.PutUint16(h[4:6], FrameVersion)
	binary.BigEndian.PutUint16(h[6:8], uint16(t))
	binary.BigEndian.PutUint16(h[8:10], flags)
	binary.BigEndian.PutUint16(h[10:12], 0)
	binary.BigEndian.PutUint32(h[20:24], uint32(plen))
	binary.BigEndian.PutUint32(h[24:28], crc32.Checksum(frame[HeaderSize:], castagnoli))
	return nil
}

// sealHeader sets the sequence number and the header CRC of a frame
// prepared by sealPayload.
func sealHeader(frame []byte, seq uint64) {
	h := frame[:HeaderSize]
	binary.BigEndian.PutUint64(h[12:20], seq)
	binary.BigEndian.PutUint32(h[28:32], crc32.Checksum(h[:28], castagnoli))
}

// Data frames (writes and resync data) use pooled buffers: a fresh
// slice costs a clearing allocation and GC work per request. Frames of
// up to smallFrame bytes (4-16 KiB writes) come from smallPool, larger
// ones from bigPool (MaxFrame bytes). A buffer goes back to its pool
// only where its last user is known: the writer once the frame is on
// the socket, the receiver once the data is on the local disk. Any
// other path simply drops it to the GC. Pooled buffers are not
// cleared: every user writes (or reads into) the whole frame.
const (
	tinyFrame  = 512
	smallFrame = HeaderSize + maxFixed + 16<<10
)

var (
	smallPool = sync.Pool{New: func() any { return make([]byte, smallFrame) }}
	bigPool   = sync.Pool{New: func() any { return make([]byte, MaxFrame) }}
)

// getFrameBuf returns an empty slice with capacity for n bytes, pooled
// unless n is tiny (or too large for any frame).
func getFrameBuf(n int) []byte {
	switch {
	case n <= tinyFrame || n > MaxFrame:
		return make([]byte, 0, n)
	case n <= smallFrame:
		return smallPool.Get().([]byte)[:0]
	}
	return bigPool.Get().([]byte)[:0]
}

// putFrameBuf returns b to the pool if it came from it. b must not be
// used afterwards.
func putFrameBuf(b []byte) {
	switch cap(b) {
	case smallFrame:
		//lint:ignore SA6002 the 24-byte slice header allocation is small next to the pooled buffer
		smallPool.Put(b[:0])
	case MaxFrame:
		//lint:ignore SA6002 as above
		bigPool.Put(b[:0])
	}
}

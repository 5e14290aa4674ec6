package replication

import "math/bits"

// Bounds on variable-length payload fields, checked by Marshal and
// Unmarshal alike.
const (
	// MaxNodeName bounds Handshake.NodeName (bytes): a hostname label.
	MaxNodeName = 64
	// MaxReason bounds Disconnect.Reason (bytes): one log line.
	MaxReason = 255
	// MaxAckIDs bounds the write IDs one WriteAck carries. At 8 bytes
	// each this keeps acks under 4 KiB while letting a busy secondary
	// coalesce an entire queue depth.
	MaxAckIDs = 512
	// MaxBitmapChunkData bounds BitmapChunk.Data: 64 KiB, i.e. 512 Ki
	// blocks (2 GiB at 4 KiB blocks) per raw chunk.
	MaxBitmapChunkData = 64 << 10
	// MinBlockSize and MaxBlockSize bound Handshake.BlockSize.
	MinBlockSize = 512
	MaxBlockSize = 1 << 20
	// MaxDiscard bounds Discard.Length: 1 GiB, so one request's local
	// discard on the peer stays well inside the write Timeout.
	MaxDiscard = 1 << 30
)

// Status is the outcome of a request carried in an ack or reply.
type Status uint16

const (
	StatusOK         Status = iota // done
	StatusIOError                  // the peer's disk failed the I/O
	StatusOutOfRange               // offset/length beyond the volume
	StatusRefused                  // the peer's state forbids it (e.g. not a sync source)
	numStatus
)

var statusNames = [...]string{"OK", "IOError", "OutOfRange", "Refused"}

func (s Status) String() string { return enumName(statusNames[:], uint8(min(s, 255)), "Status") }

// Valid reports whether s is a defined Status.
func (s Status) Valid() bool { return s < numStatus }

// HandshakeFlags are per-node facts sent in Handshake.
type HandshakeFlags uint32

const (
	// FlagCrashedPrimary: this node was Primary when it last went down
	// without demoting (DRBD's CRASHED_PRIMARY); used by GI rule 40.
	FlagCrashedPrimary HandshakeFlags = 1 << iota
	// FlagDiscardMyData: the operator told this node to become sync
	// target if a split brain is detected (manual recovery).
	FlagDiscardMyData
	// FlagLostCache: this node's machine restarted (power loss, kernel
	// crash) while it ran, so writes it had completed but not flushed
	// may be missing from its disk; used by GI rule 40.
	FlagLostCache
	knownHandshakeFlags = FlagCrashedPrimary | FlagDiscardMyData | FlagLostCache
)

// Handshake is the first message in each direction. The receiver checks
// the VolumeUUID and protocol range, then runs Decide on the GIs.
type Handshake struct {
	VolumeUUID [16]byte
	NodeName   string // 1..MaxNodeName bytes
	MinProto   uint16 // lowest replication protocol spoken, >= 1
	MaxProto   uint16 // highest, >= MinProto
	Features   uint64 // feature bits; the intersection is used
	GI         GenIDs
	Disk       DiskState
	Role       Role
	Flags      HandshakeFlags
	VolumeSize uint64 // bytes
	BlockSize  uint32 // bitmap block size: power of two in [MinBlockSize, MaxBlockSize]
	// DirtyBlocks is how many blocks this node's bitmap marks out of
	// sync: DRBD's "change count" for split-brain policies.
	DirtyBlocks uint64
}

func (*Handshake) Type() MsgType { return MsgHandshake }

func (m *Handshake) validate() error {
	switch {
	case len(m.NodeName) == 0 || len(m.NodeName) > MaxNodeName:
		return malformed("node name length %d not in 1..%d", len(m.NodeName), MaxNodeName)
	case m.MinProto == 0 || m.MinProto > m.MaxProto:
		return malformed("protocol range %d..%d", m.MinProto, m.MaxProto)
	case !m.Disk.Valid():
		return malformed("disk state %d", m.Disk)
	case !m.Role.Valid():
		return malformed("role %d", m.Role)
	case m.Flags&^knownHandshakeFlags != 0:
		return malformed("unknown handshake flags %#x", uint32(m.Flags))
	case m.BlockSize < MinBlockSize || m.BlockSize > MaxBlockSize || bits.OnesCount32(m.BlockSize) != 1:
		return malformed("block size %d", m.BlockSize)
	case m.VolumeSize%uint64(m.BlockSize) != 0:
		// Not required by the bitmap, but the volume is always a whole
		// number of blocks in hablock; anything else is a confused peer.
		return malformed("volume size %d not a multiple of block size %d", m.VolumeSize, m.BlockSize)
	}
	return nil
}

func (m *Handshake) Marshal(dst []byte) ([]byte, error) {
	if err := m.validate(); err != nil {
		return dst, err
	}
	e := enc{dst}
	e.b = append(e.b, m.VolumeUUID[:]...)
	e.u8(uint8(len(m.NodeName)))
	e.b = append(e.b, m.NodeName...)
	e.u16(m.MinProto)
	e.u16(m.MaxProto)
	e.u64(m.Features)
	m.GI.append(&e)
	e.u8(uint8(m.Disk))
	e.u8(uint8(m.Role))
	e.u32(uint32(m.Flags))
	e.u64(m.VolumeSize)
	e.u32(m.BlockSize)
	e.u64(m.DirtyBlocks)
	return e.b, nil
}

func (m *Handshake) Unmarshal(p []byte) error {
	d := dec{p: p}
	copy(m.VolumeUUID[:], d.take(16))
	n := d.u8()
	if n == 0 || n > MaxNodeName {
		d.fail("node name length %d", n)
	}
	m.NodeName = string(d.take(int(n)))
	m.MinProto = d.u16()
	m.MaxProto = d.u16()
	m.Features = d.u64()
	m.GI.read(&d)
	m.Disk = DiskState(d.u8())
	m.Role = Role(d.u8())
	m.Flags = HandshakeFlags(d.u32())
	m.VolumeSize = d.u64()
	m.BlockSize = d.u32()
	m.DirtyBlocks = d.u64()
	if err := d.end(); err != nil {
		return err
	}
	return m.validate()
}

func (g GenIDs) append(e *enc) {
	e.u64(g.Current)
	e.u64(g.Bitmap)
	e.u64(g.History[0])
	e.u64(g.History[1])
}

func (g *GenIDs) read(d *dec) {
	g.Current = d.u64()
	g.Bitmap = d.u64()
	g.History[0] = d.u64()
	g.History[1] = d.u64()
}

// WriteFlags qualify a replicated write.
type WriteFlags uint32

const (
	// WriteFUA: the write must be on stable storage before it is acked.
	WriteFUA WriteFlags = 1 << iota
	// WriteFlushBefore: flush the disk cache before performing the write
	// (a SCSI SYNCHRONIZE CACHE ordered before it).
	WriteFlushBefore
	knownWriteFlags = WriteFUA | WriteFlushBefore
)

// Write replicates one write. Data aliases the frame buffer after
// Unmarshal.
type Write struct {
	Offset uint64 // byte offset in the volume
	ID     uint64 // sender's request ID, echoed in WriteAck
	Flags  WriteFlags
	Data   []byte // 1..MaxData bytes; the length field is len(Data)
}

func (*Write) Type() MsgType { return MsgWrite }

func (m *Write) Marshal(dst []byte) ([]byte, error) {
	if len(m.Data) == 0 || len(m.Data) > MaxData {
		return dst, malformed("write length %d not in 1..%d", len(m.Data), MaxData)
	}
	if m.Flags&^knownWriteFlags != 0 {
		return dst, malformed("unknown write flags %#x", uint32(m.Flags))
	}
	e := enc{dst}
	e.u64(m.Offset)
	e.u64(m.ID)
	e.u32(uint32(m.Flags))
	e.u32(uint32(len(m.Data)))
	e.b = append(e.b, m.Data...)
	return e.b, nil
}

func (m *Write) Unmarshal(p []byte) error {
	d := dec{p: p}
	m.Offset = d.u64()
	m.ID = d.u64()
	m.Flags = WriteFlags(d.u32())
	n := d.u32()
	if m.Flags&^knownWriteFlags != 0 {
		// Unknown flags may carry semantics we cannot honour: refuse.
		d.fail("unknown write flags %#x", uint32(m.Flags))
	}
	if n == 0 || n > MaxData {
		d.fail("write length %d not in 1..%d", n, MaxData)
	}
	m.Data = d.take(int(n))
	return d.end()
}

// WriteAck acknowledges one or more writes with one status.
type WriteAck struct {
	Status Status
	IDs    []uint64 // 1..MaxAckIDs request IDs from Write.ID
}

func (*WriteAck) Type() MsgType { return MsgWriteAck }

func (m *WriteAck) Marshal(dst []byte) ([]byte, error) {
	if len(m.IDs) == 0 || len(m.IDs) > MaxAckIDs {
		return dst, malformed("ack count %d not in 1..%d", len(m.IDs), MaxAckIDs)
	}
	if !m.Status.Valid() {
		return dst, malformed("status %d", m.Status)
	}
	e := enc{dst}
	e.u16(uint16(m.Status))
	e.u16(uint16(len(m.IDs)))
	for _, id := range m.IDs {
		e.u64(id)
	}
	return e.b, nil
}

func (m *WriteAck) Unmarshal(p []byte) error {
	d := dec{p: p}
	m.Status = Status(d.u16())
	n := d.u16()
	if !m.Status.Valid() {
		d.fail("status %d", m.Status)
	}
	if n == 0 || n > MaxAckIDs {
		d.fail("ack count %d", n)
	}
	if d.err == nil && len(d.p) != 8*int(n) {
		d.fail("ack count %d but %d bytes", n, len(d.p))
	}
	if d.err != nil {
		return d.err
	}
	m.IDs = make([]uint64, n) // bounded by MaxAckIDs and checked against len(p)
	for i := range m.IDs {
		m.IDs[i] = d.u64()
	}
	return d.end()
}

func marshalU64(dst []byte, v uint64) ([]byte, error) {
	e := enc{dst}
	e.u64(v)
	return e.b, nil
}

func unmarshalU64(p []byte) (uint64, error) {
	d := dec{p: p}
	v := d.u64()
	return v, d.end()
}

// Barrier closes write epoch Nr: every Write sent before it belongs to
// the epoch. The peer answers BarrierAck once all of them are stable.
type Barrier struct{ Nr uint64 }

func (*Barrier) Type() MsgType                        { return MsgBarrier }
func (m *Barrier) Marshal(dst []byte) ([]byte, error) { return marshalU64(dst, m.Nr) }
func (m *Barrier) Unmarshal(p []byte) (err error)     { m.Nr, err = unmarshalU64(p); return }

// BarrierAck says epoch Nr, which held Writes writes, is on stable
// storage on the peer; the sender may drop those writes from its
// transfer log.
type BarrierAck struct {
	Nr     uint64
	Writes uint32
}

func (*BarrierAck) Type() MsgType { return MsgBarrierAck }

func (m *BarrierAck) Marshal(dst []byte) ([]byte, error) {
	e := enc{dst}
	e.u64(m.Nr)
	e.u32(m.Writes)
	return e.b, nil
}

func (m *BarrierAck) Unmarshal(p []byte) error {
	d := dec{p: p}
	m.Nr = d.u64()
	m.Writes = d.u32()
	return d.end()
}

// Flush asks the peer to flush its disk cache; answered by FlushAck.
type Flush struct{ ID uint64 }

func (*Flush) Type() MsgType                        { return MsgFlush }
func (m *Flush) Marshal(dst []byte) ([]byte, error) { return marshalU64(dst, m.ID) }
func (m *Flush) Unmarshal(p []byte) (err error)     { m.ID, err = unmarshalU64(p); return }

// FlushAck answers Flush ID.
type FlushAck struct {
	ID     uint64
	Status Status
}

func (*FlushAck) Type() MsgType { return MsgFlushAck }

func (m *FlushAck) Marshal(dst []byte) ([]byte, error) {
	if !m.Status.Valid() {
		return dst, malformed("status %d", m.Status)
	}
	e := enc{dst}
	e.u64(m.ID)
	e.u16(uint16(m.Status))
	return e.b, nil
}

func (m *FlushAck) Unmarshal(p []byte) error {
	d := dec{p: p}
	m.ID = d.u64()
	m.Status = Status(d.u16())
	if !m.Status.Valid() {
		d.fail("status %d", m.Status)
	}
	return d.end()
}

// Ping probes liveness; the peer echoes Nonce in PingAck.
type Ping struct{ Nonce uint64 }

func (*Ping) Type() MsgType                        { return MsgPing }
func (m *Ping) Marshal(dst []byte) ([]byte, error) { return marshalU64(dst, m.Nonce) }
func (m *Ping) Unmarshal(p []byte) (err error)     { m.Nonce, err = unmarshalU64(p); return }

// PingAck answers Ping.
type PingAck struct{ Nonce uint64 }

func (*PingAck) Type() MsgType                        { return MsgPingAck }
func (m *PingAck) Marshal(dst []byte) ([]byte, error) { return marshalU64(dst, m.Nonce) }
func (m *PingAck) Unmarshal(p []byte) (err error)     { m.Nonce, err = unmarshalU64(p); return }

// SyncUUID carries the sync source's new bitmap UUID at resync start; the
// target adopts it as its current UUID (see GenIDs.StartResyncTarget).
type SyncUUID struct{ UUID uint64 }

func (*SyncUUID) Type() MsgType                        { return MsgSyncUUID }
func (m *SyncUUID) Marshal(dst []byte) ([]byte, error) { return marshalU64(dst, m.UUID) }
func (m *SyncUUID) Unmarshal(p []byte) (err error)     { m.UUID, err = unmarshalU64(p); return }

// ResyncRequest asks the sync source for Length bytes at Offset.
type ResyncRequest struct {
	ID     uint64
	Offset uint64
	Length uint32 // 1..MaxData
}

func (*ResyncRequest) Type() MsgType { return MsgResyncRequest }

func (m *ResyncRequest) Marshal(dst []byte) ([]byte, error) {
	if m.Length == 0 || m.Length > MaxData {
		return dst, malformed("resync length %d", m.Length)
	}
	e := enc{dst}
	e.u64(m.ID)
	e.u64(m.Offset)
	e.u32(m.Length)
	return e.b, nil
}

func (m *ResyncRequest) Unmarshal(p []byte) error {
	d := dec{p: p}
	m.ID = d.u64()
	m.Offset = d.u64()
	m.Length = d.u32()
	if m.Length == 0 || m.Length > MaxData {
		d.fail("resync length %d", m.Length)
	}
	return d.end()
}

// ResyncData answers ResyncRequest ID. Data is empty unless Status is OK.
type ResyncData struct {
	ID     uint64
	Offset uint64
	Status Status
	Data   []byte // aliases the frame buffer after Unmarshal
}

func (*ResyncData) Type() MsgType { return MsgResyncData }

func (m *ResyncData) check(n int) error {
	switch {
	case !m.Status.Valid():
		return malformed("status %d", m.Status)
	case m.Status == StatusOK && (n == 0 || n > MaxData):
		return malformed("resync data length %d", n)
	case m.Status != StatusOK && n != 0:
		return malformed("data with status %v", m.Status)
	}
	return nil
}

func (m *ResyncData) Marshal(dst []byte) ([]byte, error) {
	if err := m.check(len(m.Data)); err != nil {
		return dst, err
	}
	e := enc{dst}
	e.u64(m.ID)
	e.u64(m.Offset)
	e.u16(uint16(m.Status))
	e.b = append(e.b, m.Data...)
	return e.b, nil
}

func (m *ResyncData) Unmarshal(p []byte) error {
	d := dec{p: p}
	m.ID = d.u64()
	m.Offset = d.u64()
	m.Status = Status(d.u16())
	if d.err != nil {
		return d.err
	}
	if err := m.check(len(d.p)); err != nil {
		return err
	}
	m.Data = d.take(len(d.p))
	if len(m.Data) == 0 {
		m.Data = nil
	}
	return d.end()
}

// ChecksumAlgo names the digest in checksum and verify messages.
type ChecksumAlgo uint8

const (
	ChecksumCRC32C ChecksumAlgo = iota + 1 // 4 bytes, big-endian
	ChecksumSHA256                         // 32 bytes
)

// Size is the digest length in bytes, or 0 for an unknown algorithm.
func (a ChecksumAlgo) Size() int {
	switch a {
	case ChecksumCRC32C:
		return 4
	case ChecksumSHA256:
		return 32
	}
	return 0
}

func (a ChecksumAlgo) String() string {
	switch a {
	case ChecksumCRC32C:
		return "crc32c"
	case ChecksumSHA256:
		return "sha256"
	}
	return enumName(nil, uint8(a), "ChecksumAlgo")
}

// ChecksumRequest starts checksum-based resync of one range: one side
// sends the digest of its own data and the other replies with
// ChecksumReply carrying its digest; the data travels (ResyncData) only
// if they differ. Sum may be empty in a request that only asks for the
// peer's sum. The engine's resync is driven by the sync source, so the
// source sends the request (see Config.ResyncChecksums).
type ChecksumRequest struct {
	ID     uint64
	Offset uint64
	Length uint32 // 1..MaxData
	Algo   ChecksumAlgo
	Sum    []byte // empty, or Algo.Size() bytes
}

func (*ChecksumRequest) Type() MsgType { return MsgChecksumRequest }

func (m *ChecksumRequest) check(n int) error {
	switch {
	case m.Length == 0 || m.Length > MaxData:
		return malformed("checksum length %d", m.Length)
	case m.Algo.Size() == 0:
		return malformed("checksum algorithm %d", m.Algo)
	case n != 0 && n != m.Algo.Size():
		return malformed("%v sum of %d bytes", m.Algo, n)
	}
	return nil
}

func (m *ChecksumRequest) Marshal(dst []byte) ([]byte, error) {
	if err := m.check(len(m.Sum)); err != nil {
		return dst, err
	}
	e := enc{dst}
	e.u64(m.ID)
	e.u64(m.Offset)
	e.u32(m.Length)
	e.u8(uint8(m.Algo))
	e.b = append(e.b, m.Sum...)
	return e.b, nil
}

func (m *ChecksumRequest) Unmarshal(p []byte) error {
	d := dec{p: p}
	m.ID = d.u64()
	m.Offset = d.u64()
	m.Length = d.u32()
	m.Algo = ChecksumAlgo(d.u8())
	if d.err != nil {
		return d.err
	}
	if err := m.check(len(d.p)); err != nil {
		return err
	}
	m.Sum = d.take(len(d.p))
	if len(m.Sum) == 0 {
		m.Sum = nil
	}
	return d.end()
}

// ChecksumReply carries the peer's digest of the same range (always
// Algo.Size() bytes unless Status is not OK, then empty).
type ChecksumReply struct {
	ID     uint64
	Offset uint64
	Length uint32
	Algo   ChecksumAlgo
	Status Status
	Sum    []byte
}

func (*ChecksumReply) Type() MsgType { return MsgChecksumReply }

func (m *ChecksumReply) check(n int) error {
	switch {
	case m.Length == 0 || m.Length > MaxData:
		return malformed("checksum length %d", m.Length)
	case m.Algo.Size() == 0:
		return malformed("checksum algorithm %d", m.Algo)
	case !m.Status.Valid():
		return malformed("status %d", m.Status)
	case m.Status == StatusOK && n != m.Algo.Size():
		return malformed("%v sum of %d bytes", m.Algo, n)
	case m.Status != StatusOK && n != 0:
		return malformed("sum with status %v", m.Status)
	}
	return nil
}

func (m *ChecksumReply) Marshal(dst []byte) ([]byte, error) {
	if err := m.check(len(m.Sum)); err != nil {
		return dst, err
	}
	e := enc{dst}
	e.u64(m.ID)
	e.u64(m.Offset)
	e.u32(m.Length)
	e.u8(uint8(m.Algo))
	e.u16(uint16(m.Status))
	e.b = append(e.b, m.Sum...)
	return e.b, nil
}

func (m *ChecksumReply) Unmarshal(p []byte) error {
	d := dec{p: p}
	m.ID = d.u64()
	m.Offset = d.u64()
	m.Length = d.u32()
	m.Algo = ChecksumAlgo(d.u8())
	m.Status = Status(d.u16())
	if d.err != nil {
		return d.err
	}
	if err := m.check(len(d.p)); err != nil {
		return err
	}
	m.Sum = d.take(len(d.p))
	if len(m.Sum) == 0 {
		m.Sum = nil
	}
	return d.end()
}

// VerifyRequest asks the peer for the digest of a range during online
// verify (same layout as ChecksumRequest; Sum is normally empty).
type VerifyRequest struct{ ChecksumRequest }

func (*VerifyRequest) Type() MsgType { return MsgVerifyRequest }

// VerifyReply answers VerifyRequest (same layout as ChecksumReply). The
// requester marks the range out of sync if the digests differ.
type VerifyReply struct{ ChecksumReply }

func (*VerifyReply) Type() MsgType { return MsgVerifyReply }

// BitmapEncoding says how BitmapChunk.Data encodes its blocks.
type BitmapEncoding uint8

const (
	// BitmapRaw: one bit per block, LSB first, ceil(Blocks/8) bytes,
	// padding bits zero.
	BitmapRaw BitmapEncoding = iota + 1
	// BitmapRLE: alternating run lengths as uvarints, starting with a
	// run of clean blocks (possibly 0); every later run is > 0 and the
	// runs sum to Blocks.
	BitmapRLE
)

// BitmapChunkFlags qualify a BitmapChunk.
type BitmapChunkFlags uint8

// BitmapLast marks the final chunk of a bitmap exchange.
const BitmapLast BitmapChunkFlags = 1

// BitmapChunk carries the out-of-sync bits for Blocks blocks starting at
// block StartBlock. See Bitmap.EncodeChunk and Bitmap.ApplyChunk.
type BitmapChunk struct {
	StartBlock uint64
	Blocks     uint32
	Encoding   BitmapEncoding
	Flags      BitmapChunkFlags
	Data       []byte // <= MaxBitmapChunkData bytes; aliases the frame after Unmarshal
}

func (*BitmapChunk) Type() MsgType { return MsgBitmapChunk }

func (m *BitmapChunk) check() error {
	switch {
	case len(m.Data) > MaxBitmapChunkData:
		return malformed("bitmap chunk of %d bytes", len(m.Data))
	case m.Flags&^BitmapLast != 0:
		return malformed("unknown bitmap flags %#x", uint8(m.Flags))
	case m.Encoding == BitmapRaw:
		if uint64(len(m.Data)) != (uint64(m.Blocks)+7)/8 {
			return malformed("raw chunk of %d blocks has %d bytes", m.Blocks, len(m.Data))
		}
	case m.Encoding == BitmapRLE:
	default:
		return malformed("bitmap encoding %d", m.Encoding)
	}
	return nil
}

func (m *BitmapChunk) Marshal(dst []byte) ([]byte, error) {
	if err := m.check(); err != nil {
		return dst, err
	}
	e := enc{dst}
	e.u64(m.StartBlock)
	e.u32(m.Blocks)
	e.u8(uint8(m.Encoding))
	e.u8(uint8(m.Flags))
	e.b = append(e.b, m.Data...)
	return e.b, nil
}

func (m *BitmapChunk) Unmarshal(p []byte) error {
	d := dec{p: p}
	m.StartBlock = d.u64()
	m.Blocks = d.u32()
	m.Encoding = BitmapEncoding(d.u8())
	m.Flags = BitmapChunkFlags(d.u8())
	if d.err != nil {
		return d.err
	}
	m.Data = d.take(len(d.p))
	if len(m.Data) == 0 {
		m.Data = nil
	}
	if err := d.end(); err != nil {
		return err
	}
	return m.check()
}

// StateChange announces a change of the sender's role, disk or
// replication state, or of its GIs (e.g. a new current UUID on
// promotion).
type StateChange struct {
	Role Role
	Disk DiskState
	Repl ReplState
	GI   GenIDs
}

func (*StateChange) Type() MsgType { return MsgStateChange }

func (m *StateChange) check() error {
	if !m.Role.Valid() || !m.Disk.Valid() || !m.Repl.Valid() {
		return malformed("state role=%d disk=%d repl=%d", m.Role, m.Disk, m.Repl)
	}
	return nil
}

func (m *StateChange) Marshal(dst []byte) ([]byte, error) {
	if err := m.check(); err != nil {
		return dst, err
	}
	e := enc{dst}
	e.u8(uint8(m.Role))
	e.u8(uint8(m.Disk))
	e.u8(uint8(m.Repl))
	m.GI.append(&e)
	return e.b, nil
}

func (m *StateChange) Unmarshal(p []byte) error {
	d := dec{p: p}
	m.Role = Role(d.u8())
	m.Disk = DiskState(d.u8())
	m.Repl = ReplState(d.u8())
	m.GI.read(&d)
	if err := d.end(); err != nil {
		return err
	}
	return m.check()
}

// DisconnectCode says why a peer is closing the connection.
type DisconnectCode uint16

const (
	DisconnectShutdown       DisconnectCode = iota + 1 // operator or process shutdown
	DisconnectSplitBrain                               // unresolved split brain
	DisconnectUnrelated                                // GIs share no history / wrong volume
	DisconnectProtocol                                 // protocol violation or no common version
	DisconnectNoUpToDateDisk                           // no node can be sync source
	DisconnectStandAlone                               // standalone until an operator acts (RefuseConn)
)

// Disconnect is an orderly close with a reason for the peer's log.
type Disconnect struct {
	Code   DisconnectCode
	Reason string // <= MaxReason bytes
}

func (*Disconnect) Type() MsgType { return MsgDisconnect }

func (m *Disconnect) Marshal(dst []byte) ([]byte, error) {
	if len(m.Reason) > MaxReason {
		return dst, malformed("reason of %d bytes", len(m.Reason))
	}
	e := enc{dst}
	e.u16(uint16(m.Code))
	e.u8(uint8(len(m.Reason)))
	e.b = append(e.b, m.Reason...)
	return e.b, nil
}

func (m *Disconnect) Unmarshal(p []byte) error {
	d := dec{p: p}
	m.Code = DisconnectCode(d.u16())
	n := d.u8()
	m.Reason = string(d.take(int(n)))
	return d.end()
}

// Discard replicates a discard of Length bytes at Offset: afterwards the
// range reads back as zeros on the peer. It shares the write ID space
// and is acknowledged with WriteAck like a Write.
type Discard struct {
	ID     uint64
	Offset uint64
	Length uint32 // 1..MaxDiscard
}

func (*Discard) Type() MsgType { return MsgDiscard }

func (m *Discard) Marshal(dst []byte) ([]byte, error) {
	if m.Length == 0 || m.Length > MaxDiscard {
		return dst, malformed("discard length %d not in 1..%d", m.Length, MaxDiscard)
	}
	e := enc{dst}
	e.u64(m.ID)
	e.u64(m.Offset)
	e.u32(m.Length)
	return e.b, nil
}

func (m *Discard) Unmarshal(p []byte) error {
	d := dec{p: p}
	m.ID = d.u64()
	m.Offset = d.u64()
	m.Length = d.u32()
	if m.Length == 0 || m.Length > MaxDiscard {
		d.fail("discard length %d not in 1..%d", m.Length, MaxDiscard)
	}
	return d.end()
}

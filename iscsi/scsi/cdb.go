package scsi

import "encoding/binary"

// Operation codes handled by the target.
const (
	opTestUnitReady   = 0x00
	opRequestSense    = 0x03
	opRead6           = 0x08
	opWrite6          = 0x0A
	opInquiry         = 0x12
	opModeSelect6     = 0x15
	opReserve6        = 0x16
	opRelease6        = 0x17
	opModeSense6      = 0x1A
	opStartStopUnit   = 0x1B
	opPreventAllow    = 0x1E
	opReadCapacity10  = 0x25
	opRead10          = 0x28
	opWrite10         = 0x2A
	opWriteVerify10   = 0x2E
	opVerify10        = 0x2F
	opPrefetch10      = 0x34
	opSyncCache10     = 0x35
	opWriteSame10     = 0x41
	opUnmap           = 0x42
	opModeSelect10    = 0x55
	opReserve10       = 0x56
	opRelease10       = 0x57
	opModeSense10     = 0x5A
	opPRIn            = 0x5E
	opPROut           = 0x5F
	opRead16          = 0x88
	opCompareAndWrite = 0x89
	opWrite16         = 0x8A
	opOrWrite         = 0x8B
	opWriteVerify16   = 0x8E
	opVerify16        = 0x8F
	opPrefetch16      = 0x90
	opSyncCache16     = 0x91
	opWriteSame16     = 0x93
	opServiceActionIn = 0x9E
	opReportLUNs      = 0xA0
	opMaintenanceIn   = 0xA3
	opRead12          = 0xA8
	opWrite12         = 0xAA
	opWriteVerify12   = 0xAE
	opVerify12        = 0xAF

	saReadCapacity16  = 0x10
	saGetLBAStatus    = 0x12
	saReportOpcodes   = 0x0C
	saReportTMFs      = 0x0D
	maxPRInSA         = 0x03
	saPROutRegMove    = 0x07
	maxCDBLen         = 16
	defaultMaxCAWNLB  = 255
	maxParameterBytes = 1 << 20 // largest parameter list we accept (PR OUT, MODE SELECT ...)
)

// MaxTransferBytes caps the data one command may move (data-in or
// data-out). Larger transfer lengths are refused with INVALID FIELD IN CDB,
// and VPD 0xB0 reports it as the MAXIMUM TRANSFER LENGTH.
const MaxTransferBytes = 16 << 20

// OptimalTransferBytes is reported as VPD 0xB0 OPTIMAL TRANSFER LENGTH.
const OptimalTransferBytes = 1 << 20

// MaxWriteSameBytes bounds one WRITE SAME; VPD 0xB0 MAXIMUM WRITE SAME
// LENGTH reports MaxWriteSameBlocks of it.
const MaxWriteSameBytes = 64 << 20

// MaxWriteSameBlocks is the MAXIMUM WRITE SAME LENGTH for block size bs:
// MaxWriteSameBytes worth of blocks, but below 65536 so that initiators
// (and libiscsi's tests) never pair it with a single 32 MiB data transfer.
func MaxWriteSameBlocks(bs uint32) uint64 {
	n := uint64(MaxWriteSameBytes / bs)
	if n > 0xffff {
		n = 0xffff
	}
	return n
}

// MaxUnmapBlocks and MaxUnmapDescriptors are the VPD 0xB0 UNMAP limits.
const (
	MaxUnmapBlocks      = 1 << 20
	MaxUnmapDescriptors = 256
)

// Kind classifies a command for ordering and reservation checks.
type Kind uint8

const (
	KindOther Kind = iota // no medium access (INQUIRY, MODE SENSE ...)
	KindRead              // reads the medium in [LBA, LBA+Blocks)
	KindWrite             // modifies the medium
	KindSync              // flushes a range (ordered after earlier writes)
)

// CDB is a decoded command descriptor block. All fields come from the CDB
// bytes alone (plus the logical block size); DecodeCDB never looks at the
// volume.
type CDB struct {
	Op  byte
	SA  uint8 // service action, for opcodes that have one
	Len int   // CDB length for this opcode

	LBA    uint64
	Blocks uint32 // transfer length / number of logical blocks (READ(6) 0 means 256)

	// AllocLen is the allocation length of data-in commands; ParamLen the
	// parameter list length of data-out commands.
	AllocLen uint32
	ParamLen uint32

	// DataIn and DataOut are the bytes the CDB asks to move in each
	// direction (before the ExpectedLength of the transport is applied).
	DataIn  uint32
	DataOut uint32

	Kind Kind

	DPO, FUA bool
	BytChk   uint8 // VERIFY: 0, 1 or 3; WRITE AND VERIFY: 0 or 1
	Immed    bool

	// WRITE SAME / UNMAP
	Unmap, Anchor, NDOB bool

	// INQUIRY
	EVPD     bool
	PageCode byte

	// MODE SENSE / MODE SELECT
	PC       byte // page control
	SubPage  byte
	DBD      bool
	LLBAA    bool
	PF, SP   bool
	Desc     bool // REQUEST SENSE DESC
	PMI      bool // READ CAPACITY(10)
	Select   byte // REPORT LUNS SELECT REPORT
	RCTD     bool // REPORT SUPPORTED OPCODES
	RepOpt   byte // REPORT SUPPORTED OPCODES reporting options
	ReqOp    byte
	ReqSA    uint16
	Scope    byte // PR OUT scope
	PRType   byte // PR OUT type
	Start    bool // START STOP UNIT
	LoEj     bool
	PowerCnd byte
	Prevent  byte
}

func be16(b []byte) uint32 { return uint32(binary.BigEndian.Uint16(b)) }
func be24(b []byte) uint32 { return uint32(b[0])<<16 | uint32(b[1])<<8 | uint32(b[2]) }
func be32(b []byte) uint32 { return binary.BigEndian.Uint32(b) }
func be64(b []byte) uint64 { return binary.BigEndian.Uint64(b) }

// tlField is the CDB byte holding the transfer length for a CDB of length n.
func tlField(n int) int {
	switch n {
	case 10:
		return 7
	case 12:
		return 6
	}
	return 10
}

// cdbLen returns the CDB length implied by the opcode's group code.
func cdbLen(op byte) int {
	switch op >> 5 {
	case 0:
		return 6
	case 1, 2:
		return 10
	case 4:
		return 16
	case 5:
		return 12
	}
	return 0
}

// DecodeCDB decodes cdb for a logical unit with the given block size. It is
// a pure function: it returns either the decoded command or the sense
// (INVALID COMMAND OPERATION CODE, INVALID FIELD IN CDB ...) to report.
// Transfer lengths above MaxTransferBytes are refused.
func DecodeCDB(cdb []byte, blockSize uint32) (*CDB, *SenseError) {
	if len(cdb) == 0 {
		return nil, errInvalidOpcode()
	}
	if len(cdb) > maxCDBLen {
		return nil, errInvalidCDB(0, -1)
	}
	if blockSize == 0 {
		blockSize = 512
	}
	op := cdb[0]
	n := cdbLen(op)
	if n == 0 {
		return nil, errInvalidOpcode()
	}
	if len(cdb) < n {
		return nil, errInvalidCDB(0, -1)
	}
	c := &CDB{Op: op, Len: n}
	// Control byte: we do not support ACA (NACA must be zero).
	if cdb[n-1]&0x04 != 0 {
		return nil, errInvalidCDB(n-1, 2)
	}
	bs := uint64(blockSize)

	// rw sets the transfer and checks it against MaxTransferBytes.
	transfer := func(blocks uint64, field int) *SenseError {
		if blocks*bs > MaxTransferBytes {
			return errInvalidCDB(field, -1)
		}
		return nil
	}
	protect := func() *SenseError {
		if cdb[1]&0xe0 != 0 {
			return errInvalidCDB(1, 7)
		}
		return nil
	}

	switch op {
	case opTestUnitReady:
	case opRequestSense:
		c.Desc = cdb[1]&0x01 != 0
		c.AllocLen = uint32(cdb[4])
		c.DataIn = c.AllocLen
	case opRead6, opWrite6:
		c.LBA = uint64(be24(cdb[1:4]) & 0x1fffff)
		c.Blocks = uint32(cdb[4])
		if c.Blocks == 0 {
			c.Blocks = 256
		}
		if err := transfer(uint64(c.Blocks), 4); err != nil {
			return nil, err
		}
		if op == opRead6 {
			c.Kind, c.DataIn = KindRead, c.Blocks*blockSize
		} else {
			c.Kind, c.DataOut = KindWrite, c.Blocks*blockSize
		}
	case opInquiry:
		if cdb[1]&0x02 != 0 { // CMDDT (obsolete)
			return nil, errInvalidCDB(1, 1)
		}
		c.EVPD = cdb[1]&0x01 != 0
		c.PageCode = cdb[2]
		if !c.EVPD && c.PageCode != 0 {
			return nil, errInvalidCDB(2, -1)
		}
		c.AllocLen = be16(cdb[3:5])
		c.DataIn = c.AllocLen
	case opModeSelect6, opModeSelect10:
		c.PF = cdb[1]&0x10 != 0
		c.SP = cdb[1]&0x01 != 0
		if op == opModeSelect6 {
			c.ParamLen = uint32(cdb[4])
		} else {
			c.ParamLen = be16(cdb[7:9])
		}
		if c.SP {
			return nil, errInvalidCDB(1, 0)
		}
		c.DataOut = c.ParamLen
	case opModeSense6, opModeSense10:
		c.DBD = cdb[1]&0x08 != 0
		c.PC = cdb[2] >> 6
		c.PageCode = cdb[2] & 0x3f
		c.SubPage = cdb[3]
		if op == opModeSense6 {
			c.AllocLen = uint32(cdb[4])
		} else {
			c.LLBAA = cdb[1]&0x10 != 0
			c.AllocLen = be16(cdb[7:9])
		}
		c.DataIn = c.AllocLen
	case opReserve6, opRelease6:
		if cdb[1]&0x1f != 0 { // 3rd party / extents: not supported
			return nil, errInvalidCDB(1, -1)
		}
	case opReserve10, opRelease10:
		if cdb[1]&0x13 != 0 { // 3RDPTY, LONGID, extents
			return nil, errInvalidCDB(1, -1)
		}
		c.ParamLen = be16(cdb[7:9])
		if c.ParamLen != 0 {
			return nil, errInvalidCDB(7, -1)
		}
	case opStartStopUnit:
		c.Immed = cdb[1]&0x01 != 0
		c.PowerCnd = cdb[4] >> 4
		c.LoEj = cdb[4]&0x02 != 0
		c.Start = cdb[4]&0x01 != 0
	case opPreventAllow:
		c.Prevent = cdb[4] & 0x03
	case opReadCapacity10:
		c.LBA = uint64(be32(cdb[2:6]))
		c.PMI = cdb[8]&0x01 != 0
		if !c.PMI && c.LBA != 0 {
			return nil, errInvalidCDB(2, -1)
		}
		c.AllocLen, c.DataIn = 8, 8
	case opRead10, opWrite10, opRead12, opWrite12, opRead16, opWrite16, opOrWrite,
		opWriteVerify10, opWriteVerify12, opWriteVerify16:
		if err := protect(); err != nil {
			return nil, err
		}
		c.DPO = cdb[1]&0x10 != 0
		switch op {
		case opRead10, opWrite10, opWriteVerify10:
			c.LBA = uint64(be32(cdb[2:6]))
			c.Blocks = be16(cdb[7:9])
		case opRead12, opWrite12, opWriteVerify12:
			c.LBA = uint64(be32(cdb[2:6]))
			c.Blocks = be32(cdb[6:10])
		default:
			c.LBA = be64(cdb[2:10])
			c.Blocks = be32(cdb[10:14])
		}
		switch op {
		case opWriteVerify10, opWriteVerify12, opWriteVerify16:
			c.BytChk = (cdb[1] >> 1) & 0x01
		default:
			c.FUA = cdb[1]&0x08 != 0
		}
		if err := transfer(uint64(c.Blocks), tlField(n)); err != nil {
			return nil, err
		}
		switch op {
		case opRead10, opRead12, opRead16:
			c.Kind, c.DataIn = KindRead, c.Blocks*blockSize
		default:
			c.Kind, c.DataOut = KindWrite, c.Blocks*blockSize
		}
	case opVerify10, opVerify12, opVerify16:
		if err := protect(); err != nil {
			return nil, err
		}
		c.DPO = cdb[1]&0x10 != 0
		c.BytChk = (cdb[1] >> 1) & 0x03
		if c.BytChk == 2 {
			return nil, errInvalidCDB(1, 2)
		}
		switch op {
		case opVerify10:
			c.LBA = uint64(be32(cdb[2:6]))
			c.Blocks = be16(cdb[7:9])
		case opVerify12:
			c.LBA = uint64(be32(cdb[2:6]))
			c.Blocks = be32(cdb[6:10])
		default:
			c.LBA = be64(cdb[2:10])
			c.Blocks = be32(cdb[10:14])
		}
		c.Kind = KindRead
		switch c.BytChk {
		case 1:
			if err := transfer(uint64(c.Blocks), tlField(n)); err != nil {
				return nil, err
			}
			c.DataOut = c.Blocks * blockSize
		case 3:
			if c.Blocks > 0 {
				c.DataOut = blockSize
			}
		}
	case opPrefetch10, opPrefetch16, opSyncCache10, opSyncCache16:
		c.Immed = cdb[1]&0x02 != 0
		if n == 10 {
			c.LBA = uint64(be32(cdb[2:6]))
			c.Blocks = be16(cdb[7:9])
		} else {
			c.LBA = be64(cdb[2:10])
			c.Blocks = be32(cdb[10:14])
		}
		if op == opPrefetch10 || op == opPrefetch16 {
			c.Kind = KindRead
		} else {
			c.Kind = KindSync
		}
	case opWriteSame10, opWriteSame16:
		if err := protect(); err != nil {
			return nil, err
		}
		if cdb[1]&0x06 != 0 { // PBDATA, LBDATA: not supported
			return nil, errInvalidCDB(1, -1)
		}
		c.Anchor = cdb[1]&0x10 != 0
		c.Unmap = cdb[1]&0x08 != 0
		if op == opWriteSame10 {
			c.LBA = uint64(be32(cdb[2:6]))
			c.Blocks = be16(cdb[7:9])
		} else {
			c.NDOB = cdb[1]&0x01 != 0
			c.LBA = be64(cdb[2:10])
			c.Blocks = be32(cdb[10:14])
		}
		if c.Anchor && !c.Unmap {
			return nil, errInvalidCDB(1, 4)
		}
		if uint64(c.Blocks) > MaxWriteSameBlocks(blockSize) {
			return nil, errInvalidCDB(tlField(n), -1)
		}
		if !c.NDOB {
			c.DataOut = blockSize
		}
		c.Kind = KindWrite
	case opUnmap:
		c.Anchor = cdb[1]&0x01 != 0
		c.ParamLen = be16(cdb[7:9])
		c.DataOut = c.ParamLen
		c.Kind = KindWrite
	case opCompareAndWrite:
		if err := protect(); err != nil {
			return nil, err
		}
		c.DPO = cdb[1]&0x10 != 0
		c.FUA = cdb[1]&0x08 != 0
		c.LBA = be64(cdb[2:10])
		c.Blocks = uint32(cdb[13])
		if c.Blocks > defaultMaxCAWNLB {
			return nil, errInvalidCDB(13, -1)
		}
		c.DataOut = 2 * c.Blocks * blockSize
		c.Kind = KindWrite
	case opPRIn:
		c.SA = cdb[1] & 0x1f
		if c.SA > maxPRInSA {
			return nil, errInvalidCDB(1, 4)
		}
		c.AllocLen = be16(cdb[7:9])
		c.DataIn = c.AllocLen
	case opPROut:
		c.SA = cdb[1] & 0x1f
		if c.SA >= saPROutRegMove {
			return nil, errInvalidCDB(1, 4)
		}
		c.Scope = cdb[2] >> 4
		c.PRType = cdb[2] & 0x0f
		c.ParamLen = be32(cdb[5:9])
		if c.ParamLen > maxParameterBytes {
			return nil, errParamListLength()
		}
		c.DataOut = c.ParamLen
	case opServiceActionIn:
		c.SA = cdb[1] & 0x1f
		switch c.SA {
		case saReadCapacity16:
			c.AllocLen = be32(cdb[10:14])
		case saGetLBAStatus:
			c.LBA = be64(cdb[2:10])
			c.AllocLen = be32(cdb[10:14])
		default:
			return nil, errInvalidCDB(1, 4)
		}
		c.DataIn = c.AllocLen
	case opReportLUNs:
		c.Select = cdb[2]
		if c.Select > 2 {
			return nil, errInvalidCDB(2, -1)
		}
		c.AllocLen = be32(cdb[6:10])
		c.DataIn = c.AllocLen
	case opMaintenanceIn:
		c.SA = cdb[1] & 0x1f
		switch c.SA {
		case saReportOpcodes:
			c.RCTD = cdb[2]&0x80 != 0
			c.RepOpt = cdb[2] & 0x07
			if c.RepOpt > 3 {
				return nil, errInvalidCDB(2, 2)
			}
			c.ReqOp = cdb[3]
			c.ReqSA = uint16(be16(cdb[4:6]))
		case saReportTMFs:
		default:
			return nil, errInvalidCDB(1, 4)
		}
		c.AllocLen = be32(cdb[6:10])
		c.DataIn = c.AllocLen
	default:
		return nil, errInvalidOpcode()
	}
	return c, nil
}

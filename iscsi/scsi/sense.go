package scsi

import (
	"encoding/binary"
	"errors"
	"fmt"

	"github.com/hablock/hablock/blockdev"
)

// Sense keys (SPC-4 table 48).
const (
	KeyNoSense        byte = 0x00
	KeyRecoveredError byte = 0x01
	KeyNotReady       byte = 0x02
	KeyMediumError    byte = 0x03
	KeyHardwareError  byte = 0x04
	KeyIllegalRequest byte = 0x05
	KeyUnitAttention  byte = 0x06
	KeyDataProtect    byte = 0x07
	KeyAbortedCommand byte = 0x0B
	KeyMiscompare     byte = 0x0E
)

// ASC/ASCQ pairs used by the target, as 0xAAQQ.
const (
	ascNoAdditional          uint16 = 0x0000
	ascLUNotReadyManualInt   uint16 = 0x0403
	ascWriteError            uint16 = 0x0C00
	ascUnrecoveredReadError  uint16 = 0x1100
	ascMiscompareVerify      uint16 = 0x1D00
	ascParamListLength       uint16 = 0x1A00
	ascInvalidOpcode         uint16 = 0x2000
	ascLBAOutOfRange         uint16 = 0x2100
	ascInvalidFieldInCDB     uint16 = 0x2400
	ascLUNotSupported        uint16 = 0x2500
	ascInvalidFieldInParam   uint16 = 0x2600
	ascInvalidReleasePR      uint16 = 0x2604
	ascWriteProtected        uint16 = 0x2700
	ascSoftWriteProtected    uint16 = 0x2702
	ascSpaceAllocFailedWP    uint16 = 0x2707
	ascPowerOnReset          uint16 = 0x2900
	ascModeParamsChanged     uint16 = 0x2A01
	ascReservationsPreempted uint16 = 0x2A03
	ascReservationsReleased  uint16 = 0x2A04
	ascRegistrationsPreempt  uint16 = 0x2A05
	ascCommandsCleared       uint16 = 0x2F00
	ascSavingNotSupported    uint16 = 0x3900
	ascInternalTargetFailure uint16 = 0x4400
)

// SenseError is a CHECK CONDITION outcome: sense key, ASC/ASCQ and the
// optional INFORMATION and field pointer. It is what the decoder and the
// command handlers return; the target turns it into sense bytes (fixed or
// descriptor format, see the control mode page's D_SENSE).
type SenseError struct {
	Key  byte
	ASC  byte
	ASCQ byte

	// Info is the INFORMATION field (e.g. the miscompare offset); valid
	// when HasInfo is set.
	Info    uint64
	HasInfo bool

	// Field pointer (SPC-4 4.5.2.4.2) when HasField is set: the byte in
	// the CDB (CD=true) or parameter list (CD=false), and optionally bit.
	HasField bool
	CD       bool
	Field    uint16
	Bit      int8 // -1: no bit pointer
}

func (e *SenseError) Error() string {
	return fmt.Sprintf("scsi: sense key 0x%x asc/ascq 0x%02x/0x%02x", e.Key, e.ASC, e.ASCQ)
}

// Code returns ASC<<8|ASCQ.
func (e *SenseError) Code() uint16 { return uint16(e.ASC)<<8 | uint16(e.ASCQ) }

func newSense(key byte, code uint16) *SenseError {
	return &SenseError{Key: key, ASC: byte(code >> 8), ASCQ: byte(code), Bit: -1}
}

// errInvalidCDB is INVALID FIELD IN CDB pointing at byte field of the CDB
// (bit < 0: no bit pointer).
func errInvalidCDB(field int, bit int) *SenseError {
	e := newSense(KeyIllegalRequest, ascInvalidFieldInCDB)
	if field >= 0 {
		e.HasField, e.CD, e.Field, e.Bit = true, true, uint16(field), int8(bit)
	}
	return e
}

// errInvalidParam is INVALID FIELD IN PARAMETER LIST at byte field.
func errInvalidParam(field int, bit int) *SenseError {
	e := newSense(KeyIllegalRequest, ascInvalidFieldInParam)
	if field >= 0 {
		e.HasField, e.CD, e.Field, e.Bit = true, false, uint16(field), int8(bit)
	}
	return e
}

func errInvalidOpcode() *SenseError {
	e := newSense(KeyIllegalRequest, ascInvalidOpcode)
	e.HasField, e.CD, e.Field = true, true, 0
	return e
}

func errLBAOutOfRange() *SenseError   { return newSense(KeyIllegalRequest, ascLBAOutOfRange) }
func errParamListLength() *SenseError { return newSense(KeyIllegalRequest, ascParamListLength) }
func errLUNotSupported() *SenseError  { return newSense(KeyIllegalRequest, ascLUNotSupported) }
func errWriteProtected() *SenseError  { return newSense(KeyDataProtect, ascWriteProtected) }

func errMiscompare(offset uint64) *SenseError {
	e := newSense(KeyMiscompare, ascMiscompareVerify)
	e.Info, e.HasInfo = offset, true
	return e
}

// senseForIOError maps a blockdev error to sense data. It is the one place
// where the volume's sentinel errors become SCSI outcomes.
// errAbandoned is what senseForIOError returns for blockdev.ErrAbandoned:
// not sense data to send but the instruction to send nothing (execute
// turns it into an Aborted response, which the transport drops).
var errAbandoned = &SenseError{Key: KeyAbortedCommand}

func senseForIOError(err error, write bool) *SenseError {
	var se *SenseError
	switch {
	case err == nil:
		return nil
	case errors.As(err, &se):
		return se
	case errors.Is(err, blockdev.ErrAbandoned):
		return errAbandoned
	case errors.Is(err, blockdev.ErrOutOfRange):
		return errLBAOutOfRange()
	case errors.Is(err, blockdev.ErrReadOnly):
		return errWriteProtected()
	case errors.Is(err, blockdev.ErrNoSpace):
		return newSense(KeyDataProtect, ascSpaceAllocFailedWP)
	case write:
		return newSense(KeyMediumError, ascWriteError)
	default:
		return newSense(KeyMediumError, ascUnrecoveredReadError)
	}
}

// Bytes renders the sense data: fixed format (SPC-4 4.5.3) or descriptor
// format (4.5.2) when desc is set.
func (e *SenseError) Bytes(desc bool) []byte {
	var sks [3]byte
	if e.HasField {
		sks[0] = 0x80 // SKSV
		if e.CD {
			sks[0] |= 0x40
		}
		if e.Bit >= 0 {
			sks[0] |= 0x08 | byte(e.Bit&7)
		}
		binary.BigEndian.PutUint16(sks[1:], e.Field)
	}
	if desc {
		b := make([]byte, 8, 8+12+8)
		b[0] = 0x72
		b[1] = e.Key & 0x0f
		b[2], b[3] = e.ASC, e.ASCQ
		if e.HasInfo {
			d := make([]byte, 12)
			d[0], d[1], d[2] = 0x00, 0x0a, 0x80
			binary.BigEndian.PutUint64(d[4:], e.Info)
			b = append(b, d...)
		}
		if e.HasField {
			b = append(b, 0x02, 0x06, 0, sks[0], sks[1], sks[2], 0, 0)
		}
		b[7] = byte(len(b) - 8)
		return b
	}
	b := make([]byte, 18)
	b[0] = 0x70
	if e.HasInfo && e.Info <= 0xffffffff {
		b[0] |= 0x80
		binary.BigEndian.PutUint32(b[3:], uint32(e.Info))
	}
	b[2] = e.Key & 0x0f
	b[7] = 10
	b[12], b[13] = e.ASC, e.ASCQ
	copy(b[15:], sks[:])
	return b
}

// Package scsi is hablock's SCSI target core: the SPC-4/SBC-3 command set
// for a direct-access block device, the task set (ordering rules, aborts,
// resets), reservations and unit attentions. It knows nothing of iSCSI:
// the transport in package iscsi hands it complete commands (CDB plus all
// data-out bytes) and sends back what it returns.
//
// The CDB decoder is pure (no I/O) so it can be fuzzed on its own.
package scsi

import (
	"fmt"

	"github.com/hablock/hablock/blockdev"
)

// Status is a SCSI status byte (SAM-5).
type Status byte

const (
	StatusGood                Status = 0x00
	StatusCheckCondition      Status = 0x02
	StatusConditionMet        Status = 0x04
	StatusBusy                Status = 0x08
	StatusReservationConflict Status = 0x18
	StatusTaskSetFull         Status = 0x28
	StatusACAActive           Status = 0x30
	StatusTaskAborted         Status = 0x40
)

// TaskAttr is the task attribute carried with a command (SAM-5 8.6).
type TaskAttr uint8

const (
	AttrSimple      TaskAttr = 0 // iSCSI ATTR 0 (untagged) and 1 map here
	AttrOrdered     TaskAttr = 2
	AttrHeadOfQueue TaskAttr = 3
	AttrACA         TaskAttr = 4
)

// Nexus identifies an I_T nexus: one iSCSI session (initiator port =
// initiator name + ISID) to one target port. Reservations, unit attentions
// and RESERVE(6) are kept per nexus.
type Nexus struct {
	InitiatorName string  // iSCSI InitiatorName
	ISID          [6]byte // session identifier chosen by the initiator
	TargetName    string  // iSCSI TargetName
	TPGT          uint16  // target portal group tag (relative target port id)
}

// String returns the SCSI initiator port name "iqn...,i,0x<isid>" followed
// by the target port; stable and usable as a map key.
func (n Nexus) String() string {
	return fmt.Sprintf("%s,i,0x%x|%s,t,0x%x", n.InitiatorName, n.ISID[:], n.TargetName, n.TPGT)
}

// Command is one SCSI command as delivered by the transport.
type Command struct {
	Nexus Nexus
	LUN   uint64 // flat LUN number (0 for the disk)
	Tag   uint32 // initiator task tag, unique per nexus while outstanding
	Attr  TaskAttr
	CDB   []byte // 6..16 bytes (longer CDBs are refused by the decoder)

	// ExpectedLength is the iSCSI Expected Data Transfer Length: how many
	// bytes the initiator will send (write) or can receive (read).
	ExpectedLength uint32
	// Read and Write are the iSCSI header's R and W bits.
	Read, Write bool

	// Data holds all data-out bytes the transport received for this
	// command (len(Data) <= ExpectedLength). Owned by the target core
	// after Submit.
	Data []byte
}

// Response is what the target core returns for a Command.
type Response struct {
	Status Status
	// Sense is fixed-format sense data (SPC-4 4.5.3) when Status is
	// CHECK CONDITION, nil otherwise.
	Sense []byte
	// Data is the data-in to send, already cut to the CDB's allocation
	// length and to ExpectedLength.
	Data []byte
	// Residual follows iSCSI's meaning for the SCSI Response PDU:
	// >0 underflow (fewer bytes transferred than ExpectedLength),
	// <0 overflow (the command wanted more than ExpectedLength),
	// 0 exact. The magnitude is the ResidualCount.
	Residual int64
	// Aborted is set when the command was aborted by task management or
	// a reset; the transport sends no SCSI Response for it.
	Aborted bool
}

// TMFResponse is the outcome of a task management function (RFC 7143
// 11.6.1 response codes, which equal SAM's service responses here).
type TMFResponse uint8

const (
	TMFComplete        TMFResponse = 0
	TMFTaskNotExist    TMFResponse = 1
	TMFLUNNotExist     TMFResponse = 2
	TMFTaskAllegiant   TMFResponse = 3
	TMFReassignNotSupp TMFResponse = 4
	TMFNotSupported    TMFResponse = 5
	TMFAuthFailed      TMFResponse = 6
	TMFRejected        TMFResponse = 255
)

// The Target type (target.go) is the entry point. Its contract, which the
// iSCSI transport relies on (see iscsi.Backend):
//
//	NewTarget(name string, log *slog.Logger) *Target
//	(*Target).AddLUN(lun uint64, cfg LUConfig) error
//	(*Target).Submit(cmd *Command, done func(*Response))
//	    Called by one session in CmdSN order (so ordering rules can be
//	    decided at Submit time); never blocks on I/O. done is called exactly
//	    once, from any goroutine, possibly before Submit returns.
//	(*Target).AbortTask(n Nexus, lun uint64, tag uint32) TMFResponse
//	(*Target).AbortTaskSet(n Nexus, lun uint64) TMFResponse
//	(*Target).ClearTaskSet(n Nexus, lun uint64) TMFResponse
//	(*Target).LogicalUnitReset(n Nexus, lun uint64) TMFResponse
//	(*Target).TargetReset(n Nexus, cold bool) TMFResponse
//	    The TMF calls return once every affected task has completed or been
//	    dropped (their done was called with Aborted set).
//	(*Target).NexusLost(n Nexus)
//	    The session is gone (logout, connection loss, reinstatement): abort
//	    its tasks, release its RESERVE(6), establish what SPC-4 says.
//	(*Target).Close()

// LUConfig describes one logical unit (a disk) behind a Target.
type LUConfig struct {
	// Device is the volume. Required.
	Device blockdev.Device
	// BlockSize is the logical block size in bytes reported by READ
	// CAPACITY. Default 512; must be 512 or 4096 and divide Device.Size().
	BlockSize uint32
	// UUID is the volume's identity. VPD 0x80 (unit serial number) and
	// 0x83 (NAA-6 and EUI-64 designators) are derived from it, so two nodes
	// exporting the same replicated volume present the same identity.
	UUID [16]byte
	// Vendor (8 chars), Product (16) and Revision (4) for standard
	// INQUIRY. Defaults "HABLOCK", "hablock disk", "0001".
	Vendor, Product, Revision string
	// ReadOnly makes the unit write-protected (DATA PROTECT sense).
	ReadOnly bool
	// WriteCache is the initial WCE bit of the caching mode page. When
	// false every write is followed by a flush before GOOD is returned.
	// Default (zero value) false; the export command turns it on.
	WriteCache bool

	// PRState, when not nil, is the initial persistent reservation state
	// (for example carried over by replication). It is copied.
	PRState *PRState
	// OnPRChange, when not nil, is called after every PERSISTENT RESERVE
	// OUT that changed the state, with a copy of the new state. It runs on
	// the command's goroutine before the response is returned.
	OnPRChange func(lun uint64, s PRState)
}

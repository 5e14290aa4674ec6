package iscsi

import "github.com/hablock/hablock/iscsi/scsi"

// Backend is what the iSCSI transport needs from a SCSI target core.
// *scsi.Target implements it; the replicated agent may wrap one (for
// example to suspend I/O while quorum is lost).
//
// Submit is called by one session in CmdSN order and must not block on
// I/O; done is called exactly once, from any goroutine. A Response with
// Aborted set produces no SCSI Response PDU.
type Backend interface {
	Submit(cmd *scsi.Command, done func(*scsi.Response))
	AbortTask(n scsi.Nexus, lun uint64, tag uint32) scsi.TMFResponse
	AbortTaskSet(n scsi.Nexus, lun uint64) scsi.TMFResponse
	ClearTaskSet(n scsi.Nexus, lun uint64) scsi.TMFResponse
	LogicalUnitReset(n scsi.Nexus, lun uint64) scsi.TMFResponse
	TargetReset(n scsi.Nexus, cold bool) scsi.TMFResponse
	NexusLost(n scsi.Nexus)
}

var _ Backend = (*scsi.Target)(nil)

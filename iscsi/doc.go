// Package iscsi is hablock's iSCSI target transport (RFC 7143): the PDU
// codec, text-key negotiation, login (with CHAP), discovery sessions, and
// full-feature-phase sessions that deliver SCSI commands to a Backend
// (package iscsi/scsi) and carry their responses back.
//
// Contract used by cmd/hablock and, later, the replicated agent:
//
//	cfg := iscsi.DefaultConfig()          // every field documented, with defaults
//	cfg.Logger = log
//	srv, err := iscsi.NewServer(cfg)      // calls cfg.Validate()
//	srv.AddTarget(iqn, backend)           // backend: *scsi.Target or a wrapper
//	go srv.Serve(listener)                // returns ErrServerClosed after Close/Shutdown
//	srv.Connections() []ConnInfo          // client/local address per live connection
//	srv.Shutdown(ctx)                     // stop accepting, close sessions cleanly
//	srv.Close()                           // drop everything now
//
// Layout: pdu.go (BHS codec, bounded reads, digests), text.go (key=value
// parsing and negotiation), login.go, chap.go, session.go, conn.go.
// Decoders are pure functions over byte slices so they can be fuzzed.
//
// # Connections and goroutines
//
// Each connection has a reader (the goroutine that logged it in), which
// decodes PDUs, orders commands by CmdSN and hands complete commands to
// the Backend in CmdSN order; the Backend runs them concurrently. Output
// goes through one queue per connection: the Backend's completion
// callback writes the queue itself when the socket is free (saving a
// goroutine hand-off per response) and otherwise a writer goroutine does;
// the buffered writer is flushed when the queue runs empty, not per PDU.
// The reader never writes to the socket, so a peer that stops reading
// cannot wedge it. A pinger sends NOP-In on idle connections and drops
// those that do not answer. Every goroutine of a connection recovers
// panics, logs the stack and ends only that connection.
//
// # Sessions
//
// Sessions have one connection and ErrorRecoveryLevel 0 (MaxConnections
// and ErrorRecoveryLevel are negotiated down to 1 and 0). The CmdSN window
// is MaxCmdSN = ExpCmdSN + (Config.MaxOutstandingCommands - outstanding) - 1
// and never moves backwards; commands outside it are dropped silently,
// commands ahead of a gap wait for it. A login with the initiator name and
// ISID of a live session to the same target reinstates it: the old session
// is closed and Backend.NexusLost has returned before the new login
// completes. Connection loss, logout and Close also end in NexusLost.
//
// # Hostile input
//
// Every length from the wire is checked before it sizes an allocation:
// DataSegmentLength against our declared MaxRecvDataSegmentLength,
// TotalAHSLength against 1020 bytes (extended CDBs against 260 bytes), text
// against 64 KiB, write buffers against Config.MaxTransferLength and
// Config.MaxSessionWriteBytes. Data-Out placement is checked against the
// R2T or the unsolicited window before a byte is copied. A protocol
// violation (bad lengths, data beyond what was solicited, a header digest
// error) closes that connection after a Reject where the RFC asks for one;
// a DataSN or offset error fails only its command (CHECK CONDITION, ABORTED
// COMMAND), as ErrorRecoveryLevel 0 cannot recover the sequence; an
// unknown opcode or SNACK is answered with Reject and the connection
// continues.
package iscsi

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
package iscsi

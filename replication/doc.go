// Package replication is hablock's synchronous two-node replication,
// modelled on DRBD: pure cores (wire, messages, GIs, bitmap, states,
// split-brain policies) that open no sockets, start no goroutines, read
// no clocks and touch no disks, so their rules can be tested
// exhaustively; and the engine built on them (volume.go, link.go,
// receiver.go, resync.go), which runs one volume over one TCP
// connection.
//
// # Engine
//
//   - Volume (volume.go) wraps the local blockdev.Device. On the Primary
//     it is itself a Device: writes go to the local disk and the peer in
//     parallel and complete per Config.Protocol; losing the peer marks
//     the bitmap instead of failing I/O; a local I/O error detaches the
//     local disk and I/O continues through the peer. Status() is the
//     observable state. Persistence is the caller's, through Hooks,
//     including the optional activity log (Hooks.BeforeWrite/AfterWrite:
//     an extent is durably hot before a write to it is issued, and a
//     crashed Primary's hot extents, State.ActivityLog, are marked out
//     of sync at restart so only they and the bitmap are resynced).
//   - link.go: Attach runs one connection (handshake, Decide, bitmap
//     exchange, SyncUUID, then reader/writer/pinger goroutines); Run
//     reconnects with exponential backoff.
//   - receiver.go: the peer side applies requests, overlapping ones in
//     the order they were sent, the rest concurrently.
//   - resync.go: bitmap-driven resync from the sync source (optionally
//     checksum-first, Config.ResyncChecksums) with a rate controller and
//     pause, and online verify with optional repair.
//   - fence.go: fencing (Config.Fencing: a Primary that lost its peer
//     holds writes, neither completing nor failing them, until
//     SetPeerFenced, a reconnect that resyncs them, or AbandonIO/Demote)
//     and I/O suspension (SuspendIO, ResumeIO, AbandonIO), the engine
//     side of automatic failover (failover.Local).
//   - standalone.go: unresolved split brains (two Primaries meeting
//     included) are logged loudly and refused; RefuseConn lets a
//     StandAlone node turn its peer's dialing into ErrPeerStandAlone.
//   - config.go: Config, every field with unit, default and reason.
//
// # Pieces of the core
//
//   - wire.go, messages.go: the peer protocol. Every frame has a fixed
//     32-byte header (magic "HBRP", framing version, message type, flags,
//     sequence, payload length, payload CRC32C, header CRC32C) and a typed
//     payload with strict Marshal/Unmarshal. Decode checks magic, header
//     CRC, version, type and length against MaxPayload before looking at
//     (or allocating for) the payload, then the payload CRC. Any error
//     (ErrUnknownType included: unknown messages are never skipped)
//     means the connection must be closed. ReadFrame is the one I/O
//     helper: header, length check, then exactly the payload.
//   - gi.go: generation identifiers (GenIDs) and their transitions, and
//     Decide, the connect-time decision.
//   - splitbrain.go: automatic split-brain recovery policies
//     (after-sb-0pri, after-sb-1pri) and manual discard-my-data.
//   - bitmap.go: the out-of-sync bitmap, one bit per block, with
//     run-length chunked encoding for transfer and persistence.
//   - state.go: Role, ConnState, DiskState and ReplState, each with a
//     transition table and Become. A refused transition returns
//     ErrInvalidTransition, or panics in builds tagged invariants or race.
//
// # Replication protocols and where a write is acknowledged
//
// The Primary sends each write to the Secondary as a Write message and
// completes it to the initiator according to the configured protocol:
//
//   - Protocol A (asynchronous): once written locally and queued to the
//     send buffer. A Primary crash can lose writes the peer never got.
//   - Protocol B (memory-synchronous): once written locally and the peer
//     has received it (WriteAck sent on receipt). Lost only if both nodes
//     fail at once before the peer's disk has it.
//   - Protocol C (synchronous, hablock's default): once written locally
//     and the peer's WriteAck says it is written to its disk. No
//     acknowledged write is lost while either node survives.
//
// Writes are grouped into epochs closed by Barrier; BarrierAck tells the
// Primary that every write of the epoch is stable on the peer, so it can
// forget them. A write flagged WriteFUA or following a Flush must be on
// stable storage before its ack; WriteFlushBefore orders a cache flush
// ahead of the write.
//
// # Generation identifiers and the connect-time decision
//
// Each node keeps GenIDs: Current (the generation of its data), Bitmap
// (the generation its out-of-sync bitmap is relative to, zero when no
// changes are tracked) and two History entries. A node that starts
// writing without its peer — promoted while disconnected, or losing the
// peer while Primary — makes a new Current and keeps the old one as
// Bitmap (GenIDs.Promote, GenIDs.PeerLost). A resync moves the source's
// Bitmap into History and makes the target adopt the source's Current
// (StartResyncSource/Target, FinishResyncSource/Target), so after it both
// nodes hold identical GIs.
//
// When two nodes connect, Decide compares the GIs (following the rules of
// DRBD's drbd_uuid_compare, numbered the same way in Result.Rule):
//
//   - same Current: in sync (NoSync), unless one side crashed as Primary
//     or missed the end of a resync (then a bitmap resync from it);
//   - one side's Current equals the other's Bitmap: the other side
//     wrote alone since; bitmap resync from it;
//   - one side's Current is in the other's History: the other is newer
//     by more than its bitmap covers; full sync from it;
//   - both Bitmaps equal: both wrote since they last agreed — SplitBrain,
//     bitmap-resolvable (ResolveSplitBrain may pick a side);
//   - only History in common: SplitBrain that needs a full sync and an
//     operator (Result.SplitBrainFull);
//   - nothing in common: Unrelated, never resync.
//
// Disk states then adjust it: a node that is Inconsistent always becomes
// the target of one that is not, and a chosen source must at least be
// Outdated (else NoUpToDateSource). Not modelled here, for the caller:
// DRBD's rr-conflict (refusing to make a Primary with good data a sync
// target), after-sb-2pri, and three or more nodes. The engine (link.go)
// refuses the first, and treats two Primaries meeting as a split brain
// that always disconnects (after-sb-2pri disconnect, standalone.go).
package replication

// Package failover holds the node-local actions of a takeover (VIP,
// tickle ACKs) and the failover Manager that decides when to take them:
// quorum with a witness, heartbeats, votes and serf membership.
//
// # Takeover actions
//
// VIP adds and removes the service address on an interface with netlink
// and announces it from an AF_PACKET socket opened once and kept: a
// gratuitous ARP for IPv4 (an RFC 5227 ARP Announcement, garpFrame) or an
// unsolicited Neighbour Advertisement with the Override flag for IPv6
// (unaFrame), on a schedule that by default sends at 0, 100 and 500 ms after
// Acquire. Without the announcement a client here kept the old primary's
// MAC for ~35 s; with it, the client's neighbour entry changes within
// milliseconds. RemoveStale is for a restarted agent, which must drop a VIP
// left by its previous run before it joins the cluster.
//
// Tickle and Tickler reset a client's TCP connection to the old primary at
// once: a bare ACK with sequence 0 sent from the VIP makes the client answer
// with its real sequence numbers, and the new primary's kernel, which has no
// such connection, answers that with a RST (the technique of Samba's CTDB).
// The initiator then reconnects instead of waiting for TCP retransmission or
// NOP-Out timeouts.
//
// Both need CAP_NET_ADMIN/CAP_NET_RAW and act in the network namespace of
// the thread that built them. The frame builders are pure functions with
// byte-level tests; the integration tests (root only) run the real kernel
// paths across network namespaces on a private bridge.
//
// # Automatic failover: the Manager
//
// Every node of a resource (two disk nodes and a diskless witness) runs a
// Manager (NewManager, Start). A disk node's Manager drives its agent
// through Local (local.go is the contract); the witness's has no Local
// and only votes and heartbeats. ConfigFor builds the Config from the
// resource file (config.Failover documents every timing and its default).
//
// The quorum record. Record{Epoch, Primary, UpToDate} says: in Epoch,
// Primary alone may acknowledge writes, and UpToDate are the disk nodes
// that hold every acknowledged write. Each voter keeps, durably (Durable,
// in its badger metadata via MetaStore, synced), the last record it knows
// a majority agreed to and the highest epoch it voted in. It saves both
// before it answers a vote. A change is a proposal of a new Record with a
// higher epoch; two of the three voters must agree, and the proposer's own
// vote (persisted first) is one of them, so one grant from another voter
// commits it. Only committed records travel in heartbeats and vote
// replies; a node that sees a higher epoch adopts it at once (a returning
// old Primary learns within one heartbeat that it was replaced).
//
// The voting rules (CheckVote, pure): a voter grants at most one proposal
// per epoch, only above both its record's epoch and its last vote, and
// only a change allowed from its current record:
//
//   - no Primary yet (epoch 0): the candidate's own first record
//     (`hablock primary --force`, Manager.Promote);
//   - same Primary: only when that Primary proposes it (fence: drop the
//     peer from UpToDate; readmit: add it back once connected and
//     resynced; re-acquire after a restart);
//   - a new Primary C: C must be in the voter's UpToDate (and the proposal
//     may list only nodes that are), and either the current Primary itself
//     asks (planned switchover) or the voter does not hear the current
//     Primary. A voter that heard it less than heartbeat-timeout ago waits
//     up to that long for the gap to open and refuses as soon as the
//     Primary is heard: the witness confirms by its own probing that the
//     Primary is gone before it consents. The current Primary never votes
//     for its own replacement. A disk node refuses to be made Primary while
//     its disk is not UpToDate. --force waives only "C in UpToDate".
//
// Decisions of a disk node (Decide, pure, with a transition table and an
// exhaustive test over every input combination):
//
//   - the record names me, I am not Primary (restart): with my disk
//     UpToDate and a majority reachable, propose a re-acquire, then
//     Promote;
//   - I am the recorded Primary and hold writes (Facts.Held: the peer is
//     lost): with a majority, propose a fence {E+1, me, UpToDate - peer},
//     then PeerFenced; without one, SuspendIO. If a newer record comes
//     back, it is adopted and the next decision demotes;
//   - I am the recorded Primary and hear neither the peer (replication
//     link or heartbeats) nor the witness: SuspendIO until either is back
//     (ResumeIO) or a newer record demotes me;
//   - I am the recorded Primary, the peer is connected and resynced but
//     not in UpToDate: propose a readmit; auto-failback (once the
//     preferred peer has been in sync for failback-settle): Switchover;
//   - another node is recorded Primary and I am Primary: Demote with
//     DiscardLocal (what I wrote alone was never acknowledged);
//   - another node is recorded Primary, its link is down and its
//     heartbeats silent for heartbeat-timeout, my disk is UpToDate and in
//     the record, and I hear the witness: propose {E+1, me, {me}}, then
//     Promote with peerOutdated and the clients from its last heartbeat.
//
// # Safety invariants
//
//   - At most one node acknowledges writes in any epoch: a Primary acts
//     only on a record a majority persisted, any two majorities of three
//     share a voter, and a voter grants one proposal per epoch, durably.
//   - The Secondary promotes only with a majority's consent and only if
//     its disk is UpToDate and listed in the record as holding every
//     acknowledged write; a voter checks the same against its own record.
//   - A Primary that loses its peer acknowledges nothing (its engine holds
//     the writes, fencing on) until a majority has durably recorded the
//     peer as outdated (fence by quorum); one that loses the majority
//     suspends I/O until it regains it or is demoted. The witness consents
//     to a takeover only after it has not heard the Primary for
//     heartbeat-timeout, by which time the Primary has lost the witness
//     too and, having lost its peer, holds or suspends.
//   - A node that returns after being replaced adopts the newer record
//     before it decides anything (no decision during the first
//     heartbeat-timeout after Start), demotes with DiscardLocal and is
//     readmitted only after the resync (the engine's bitmap/activity log).
//   - Takeover order on the new Primary (Local.Promote): engine, iSCSI
//     target, VIP and announcement, then tickle the old Primary's clients.
//     A planned switchover: the old Primary suspends I/O, the record
//     {E+1, to, both} is agreed, it demotes keeping the iSCSI connections,
//     the target promotes (by a direct request carrying the clients),
//     then the old Primary closes the connections so the initiators
//     reconnect to the new Primary at their first try. The record may be
//     agreed with the witness alone and reach the target by a heartbeat
//     before the vote or promote request does: a target that adopts a
//     record handing it the role from its peer with both disks up to
//     date (only a switchover makes one) waits for the promote request,
//     as a granted vote would, before it re-acquires by itself; and a
//     promote request for an older epoch that still names it is
//     answered as done.
//
// The cluster tests (cluster_test.go) run three Managers over real UDP,
// TCP, serf and badger on 127.0.0.1/2/3 with an in-memory Local that
// models a disk node's roles, cut links by dropping control traffic, and
// check on the log of Local calls that no two nodes promote in one epoch.
//
// # Transport, and why votes are a direct RPC
//
// Heartbeats are UDP datagrams every heartbeat-interval to every other
// member (its record, role and facts, and from the Primary its iSCSI
// client connections, at most MaxClients). Votes and a switchover's
// promote request are one request and one reply over a fresh TCP
// connection to the member's control address. Both use one framed wire
// format (wire.go: magic, version, type, length checked against
// MaxPayload before any allocation, bounded counts and names;
// FuzzDecodeFrame). A vote needs a definite, durable answer from a
// specific node within a deadline, and the proposer must know who said
// what; serf queries and user events are best-effort gossip, answered by
// whoever receives them, with no per-node guarantee — fine for
// membership, wrong for consent.
//
// Serf (github.com/hashicorp/serf, memberlist timings from the resource
// file) gives membership, a gossip-confirmed failure view (a dead node in
// about a second with the defaults, against 5-7 s with memberlist's LAN
// defaults) and member tags (role, epoch); its events are logged and
// shown in Status beside the heartbeat ages. Decisions do not wait for
// it: the replication link (Notify on Held) and heartbeat-timeout (300 ms
// by default) are the fast signals, and the voter's own silence check is
// the confirmation.
//
// # False failovers
//
// heartbeat-timeout must exceed the worst gap between two heartbeats of a
// live node: round trip, jitter and scheduling delay. Two things keep a
// busy cluster from failing over falsely. A takeover needs the
// replication link down as well as the heartbeats silent, and a voter's
// own silence check. And a node that was itself not running (no loop ran
// for two heartbeat intervals: CPU starvation, a GC pause, a paused VM)
// counts every member as heard at the end of its stall, so that its own
// stall never passes for the others' silence (Status counts such stalls).
// TestClusterNoFalseFailover measures this with the link modelled down
// (the worst case), 20-50 ms of jitter on every heartbeat and busy CPUs
// (HABLOCK_SOAK sets its duration).
package failover

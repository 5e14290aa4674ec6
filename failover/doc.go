// Package failover holds the node-local actions of a takeover and, later,
// the failover state machine that decides when to take them.
//
// # What is here now
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
// # Safety invariants (the plan; none of this is implemented yet)
//
// The failover work that will drive these actions must hold:
//
//   - At most one node acknowledges writes in any epoch. An epoch number is
//     raised by every promotion and carried in replication traffic; a node
//     acknowledges writes only as the primary of the current epoch.
//   - Promotion needs a majority of the cluster (quorum) and an UpToDate
//     local disk. A node with an Outdated, Inconsistent or unknown disk never
//     promotes, even when it is the only one left.
//   - A primary that loses the majority suspends I/O (it neither completes
//     nor fails writes) before any other node can reach a majority and
//     promote, so that no write is acknowledged by two primaries.
//   - A returning node learns the new epoch before serving anything; if it
//     was primary it demotes: stops the target, releases the VIP
//     (RemoveStale at startup), and resyncs from the current primary.
//   - Takeover order on the new primary: start the iSCSI target, Acquire the
//     VIP (announce), then Tickle the connections the old primary reported.
//     Demotion undoes them in reverse order.
package failover

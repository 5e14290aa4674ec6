package failover

import (
	"context"
	"net/netip"
)

// Local is what a disk node's agent exposes to the failover Manager: the
// facts the Manager decides on and the actions it takes. The witness has
// no Local (nil). Every action is idempotent and may be called again
// after a failure; none may call back into the Manager synchronously.
//
// The contract between the two halves, in the order a takeover uses it:
//
//   - The engine of a Primary runs with fencing on (replication
//     Config.Fencing): when it loses its peer it holds every write that
//     needs the peer, neither completing nor failing it, and the agent
//     calls Manager.Notify. The Manager then either wins a quorum vote that
//     records the peer outdated and calls PeerFenced (the held writes
//     complete, the Primary goes on alone), or loses it and calls Demote.
//   - A Primary that loses the majority gets SuspendIO; ResumeIO once it
//     regains it (or Demote when another node was promoted meanwhile).
//   - Promote is called only after a majority durably recorded this node
//     as the Primary of epoch, with peerOutdated when that record lists
//     the peer as not up to date.
type Local interface {
	// Facts reports the local replication state now. It must be cheap:
	// the Manager calls it on every tick and on every Notify.
	Facts() Facts

	// Promote makes this node the Primary of epoch: promote the engine
	// (first telling it the peer is fenced when peerOutdated), start the
	// iSCSI target, add the VIP and announce it, then tickle clients (the
	// connections the old Primary last reported) so their initiators
	// reconnect at once.
	Promote(ctx context.Context, epoch uint64, peerOutdated bool, clients []Conn) error

	// Demote stops this node being Primary because epoch names another
	// node: hold all I/O, remove the VIP, demote the engine (held commands
	// are abandoned: the iSCSI target sends them no answer, and the
	// initiators retry them on the new Primary), and reconnect to the peer
	// as Secondary. opts.DiscardLocal makes the reconnect discard the local
	// changes the peer does not have (DRBD's --discard-my-data): they were
	// never acknowledged, since this node wrote without its peer only while
	// holding. Unless opts.KeepClients, the iSCSI connections are closed at
	// the end; with it they stay open (answering nothing) until
	// CloseClients, so that in a planned switchover the initiators
	// reconnect only once the new Primary holds the VIP.
	Demote(ctx context.Context, epoch uint64, opts DemoteOptions) error

	// CloseClients closes the iSCSI connections a Demote kept open.
	CloseClients()

	// PeerFenced tells the Primary that a majority recorded the peer as
	// outdated in epoch: writes held since the peer was lost complete, and
	// later writes go on without the peer (degraded, into the bitmap).
	PeerFenced(epoch uint64)

	// SuspendIO holds all new I/O (neither completed nor failed) until
	// ResumeIO or Demote; reason is logged and shown in status.
	SuspendIO(reason string)
	ResumeIO()

	// DropLink drops the replication link now; the engine reconnects by
	// itself. The Manager calls it when the peer has been silent on the
	// control channel for heartbeat-timeout while the link still looks
	// up: the TCP connection to a host that died (or whose cable was
	// pulled) lingers until the engine's own ping or request timeout,
	// seconds later, and both the Primary's fencing and the Secondary's
	// takeover wait for the link to be down. A Primary's engine then holds
	// its writes (fencing) until PeerFenced or Demote.
	DropLink(reason string)

	// Clients lists the iSCSI connections this node serves now, to be
	// shared with the peer so that it can tickle them after a takeover.
	Clients() []Conn
}

// DemoteOptions modify Local.Demote.
type DemoteOptions struct {
	DiscardLocal bool // reconnect with --discard-my-data
	KeepClients  bool // leave the iSCSI connections open until CloseClients
}

// Conn is one iSCSI TCP connection as the target sees it.
type Conn struct {
	Client netip.AddrPort // the initiator's address and port
	Server netip.AddrPort // the address and port it connected to (the VIP)
}

// Role is a disk node's replication role as Facts reports it.
type Role uint8

const (
	RoleSecondary Role = iota
	RolePrimary
)

func (r Role) String() string {
	if r == RolePrimary {
		return "Primary"
	}
	return "Secondary"
}

// Facts is the local state the Manager decides on.
type Facts struct {
	Role Role
	// UpToDate: the local disk is UpToDate (not Inconsistent, Outdated,
	// Failed or detached, and not a resync target).
	UpToDate bool
	// Connected: the replication link is up and its handshake done.
	Connected bool
	// PeerUpToDate: connected, and the peer's disk is UpToDate (resync
	// finished), so a record may list both nodes as up to date.
	PeerUpToDate bool
	// Held: the engine holds writes because it lost its peer and the peer
	// is not fenced yet (fencing on, Primary only).
	Held bool
	// Suspended: SuspendIO is in effect.
	Suspended bool
}

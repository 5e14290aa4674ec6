package replication

import "fmt"

// Split brain refusals.

// refuseSplitBrain refuses the connection as an unresolved split brain
// (DRBD's after-sb-*pri disconnect), logging it loudly: both nodes wrote
// independently, and neither is resynced.
func (l *link) refuseSplitBrain(local, peer *Handshake, why string) error {
	l.log.Error("split brain detected; disconnecting, no resync: keep one side's data with "+
		"'hablock connect --discard-my-data' on the other node",
		"why", why, "role", local.Role.String(), "peer_role", peer.Role.String(),
		"gen", local.GI.String(), "peer_gen", peer.GI.String(),
		"dirty_blocks", local.DirtyBlocks, "peer_dirty_blocks", peer.DirtyBlocks)
	return l.refuse(DisconnectSplitBrain, fmt.Errorf("%w: %s: local %v %v, peer %q %v %v; resolve manually",
		ErrSplitBrain, why, local.Role, local.GI, peer.NodeName, peer.Role, peer.GI))
}

package replication

import (
	"errors"
	"fmt"
)

// AfterSB0Pri is the automatic split-brain policy when neither node is
// Primary at connect time (DRBD's after-sb-0pri).
type AfterSB0Pri uint8

const (
	// SB0Disconnect: no automatic recovery; disconnect and wait for an
	// operator (the default: it never throws data away).
	SB0Disconnect AfterSB0Pri = iota
	// SB0DiscardYoungerPrimary: discard the node that became Primary
	// after the split (its Bitmap UUID lacks the Primary bit); the node
	// that was Primary when the link broke is kept. If that does not
	// decide, fall back to SB0DiscardZeroChanges then
	// SB0DiscardLeastChanges.
	SB0DiscardYoungerPrimary
	// SB0DiscardOlderPrimary: the opposite; same fallbacks.
	SB0DiscardOlderPrimary
	// SB0DiscardZeroChanges: if only one node changed data, keep it; if
	// neither did, the tie-break picks; if both did, disconnect.
	SB0DiscardZeroChanges
	// SB0DiscardLeastChanges: keep the node with more changed blocks;
	// equal counts go to the tie-break.
	SB0DiscardLeastChanges
	// SB0DiscardNode: always discard the node named by
	// SplitBrainPolicy.DiscardNode (DRBD's discard-local/discard-remote).
	SB0DiscardNode
	numSB0
)

var sb0Names = [...]string{"disconnect", "discard-younger-primary", "discard-older-primary",
	"discard-zero-changes", "discard-least-changes", "discard-node"}

func (p AfterSB0Pri) String() string { return enumName(sb0Names[:], uint8(p), "AfterSB0Pri") }

// AfterSB1Pri is the policy when exactly one node is Primary (DRBD's
// after-sb-1pri).
type AfterSB1Pri uint8

const (
	// SB1Disconnect: no automatic recovery.
	SB1Disconnect AfterSB1Pri = iota
	// SB1Consensus: apply the after-sb-0pri policy; accept its result
	// only if it discards the Secondary's data, else disconnect.
	SB1Consensus
	// SB1DiscardSecondary: the Primary's data wins.
	SB1DiscardSecondary
	numSB1
)

var sb1Names = [...]string{"disconnect", "consensus", "discard-secondary"}

func (p AfterSB1Pri) String() string { return enumName(sb1Names[:], uint8(p), "AfterSB1Pri") }

// SplitBrainPolicy configures automatic split-brain recovery. Both nodes
// must use the same policy (the handshake should compare them);
// otherwise they may reach different conclusions. With two Primaries
// there is no automatic recovery: always disconnect.
type SplitBrainPolicy struct {
	// After0Pri applies when neither node is Primary. Default (zero):
	// SB0Disconnect.
	After0Pri AfterSB0Pri
	// DiscardNode names the node whose data SB0DiscardNode discards.
	// Required with SB0DiscardNode, unused otherwise.
	DiscardNode string
	// After1Pri applies when exactly one node is Primary. Default (zero):
	// SB1Disconnect.
	After1Pri AfterSB1Pri
}

// ErrInvalidPolicy is returned by SplitBrainPolicy.Validate.
var ErrInvalidPolicy = errors.New("replication: invalid split-brain policy")

// Validate checks p without changing it.
func (p SplitBrainPolicy) Validate() error {
	switch {
	case p.After0Pri >= numSB0:
		return fmt.Errorf("%w: After0Pri %d", ErrInvalidPolicy, p.After0Pri)
	case p.After1Pri >= numSB1:
		return fmt.Errorf("%w: After1Pri %d", ErrInvalidPolicy, p.After1Pri)
	case p.After0Pri == SB0DiscardNode && p.DiscardNode == "":
		return fmt.Errorf("%w: DiscardNode is required with %v", ErrInvalidPolicy, p.After0Pri)
	case len(p.DiscardNode) > MaxNodeName:
		return fmt.Errorf("%w: DiscardNode longer than %d bytes", ErrInvalidPolicy, MaxNodeName)
	}
	return nil
}

// SBSide is one node's input to split-brain recovery.
type SBSide struct {
	Name string // as in Node.Name; the greater name loses ties
	Role Role   // role now, at connect time
	// PrimaryAtSplit: the node was Primary when it started writing
	// alone (GenIDs.PrimaryAtSplit). The other one is the "younger"
	// Primary, if it was promoted later.
	PrimaryAtSplit bool
	// Changes is the number of blocks the node changed since the split
	// (its bitmap's Count, sent as Handshake.DirtyBlocks).
	Changes uint64
	// DiscardMyData: an operator told this node to give up its data if a
	// split brain is found (Handshake FlagDiscardMyData).
	DiscardMyData bool
}

// SBOutcome is the result of split-brain recovery.
type SBOutcome uint8

const (
	SBDisconnect    SBOutcome = iota // unresolved: disconnect, call an operator
	SBLocalIsSource                  // the peer's changes are discarded
	SBPeerIsSource                   // our changes are discarded
)

var sbOutcomeNames = [...]string{"Disconnect", "LocalIsSource", "PeerIsSource"}

func (o SBOutcome) String() string { return enumName(sbOutcomeNames[:], uint8(o), "SBOutcome") }

func (o SBOutcome) mirror() SBOutcome {
	switch o {
	case SBLocalIsSource:
		return SBPeerIsSource
	case SBPeerIsSource:
		return SBLocalIsSource
	}
	return o
}

// Decision turns the outcome into the resync to run: full is
// Result.SplitBrainFull. SBDisconnect maps to SplitBrain.
func (o SBOutcome) Decision(full bool) Decision {
	switch {
	case o == SBLocalIsSource && full:
		return FullSyncLocalIsSource
	case o == SBLocalIsSource:
		return BitmapResyncLocalIsSource
	case o == SBPeerIsSource && full:
		return FullSyncPeerIsSource
	case o == SBPeerIsSource:
		return BitmapResyncPeerIsSource
	}
	return SplitBrain
}

// ResolveSplitBrain decides a split brain reported by Decide. full is
// Result.SplitBrainFull: when the nodes share only History, automatic
// policies are not trusted (the bitmaps do not describe the
// differences) and only an operator's DiscardMyData resolves it. It is
// symmetric: swapping local and peer mirrors the outcome.
func ResolveSplitBrain(p SplitBrainPolicy, full bool, local, peer SBSide) SBOutcome {
	out := SBDisconnect
	if !full {
		switch primaries(local) + primaries(peer) {
		case 0:
			out = recover0Pri(p, p.After0Pri, local, peer)
		case 1:
			out = recover1Pri(p, local, peer)
		}
	}
	if out == SBDisconnect {
		// Manual recovery: exactly one side agreed to lose its data.
		switch {
		case local.DiscardMyData && !peer.DiscardMyData:
			out = SBPeerIsSource
		case !local.DiscardMyData && peer.DiscardMyData:
			out = SBLocalIsSource
		}
	}
	return out
}

func primaries(s SBSide) int {
	if s.Role == RolePrimary {
		return 1
	}
	return 0
}

// tie resolves an exact tie the same way on both nodes.
func tie(local, peer SBSide) SBOutcome {
	if localLosesTie(local.Name, peer.Name) {
		return SBPeerIsSource
	}
	return SBLocalIsSource
}

func recover0Pri(p SplitBrainPolicy, policy AfterSB0Pri, local, peer SBSide) SBOutcome {
	switch policy {
	case SB0Disconnect:
		return SBDisconnect
	case SB0DiscardNode:
		switch {
		case local.Name == p.DiscardNode && peer.Name != p.DiscardNode:
			return SBPeerIsSource
		case peer.Name == p.DiscardNode && local.Name != p.DiscardNode:
			return SBLocalIsSource
		}
		return SBDisconnect
	case SB0DiscardYoungerPrimary, SB0DiscardOlderPrimary:
		if local.PrimaryAtSplit != peer.PrimaryAtSplit {
			// The side that was Primary at the split is the older one.
			localOlder := local.PrimaryAtSplit
			if (policy == SB0DiscardYoungerPrimary) == localOlder {
				return SBLocalIsSource
			}
			return SBPeerIsSource
		}
		// Undecided: fall back to the change counts.
		if out := byZeroChanges(local, peer); out != SBDisconnect {
			return out
		}
		return byLeastChanges(local, peer)
	case SB0DiscardZeroChanges:
		return byZeroChanges(local, peer)
	case SB0DiscardLeastChanges:
		return byLeastChanges(local, peer)
	}
	return SBDisconnect
}

func byZeroChanges(local, peer SBSide) SBOutcome {
	switch {
	case local.Changes == 0 && peer.Changes == 0:
		return tie(local, peer)
	case peer.Changes == 0:
		return SBLocalIsSource
	case local.Changes == 0:
		return SBPeerIsSource
	}
	return SBDisconnect
}

func byLeastChanges(local, peer SBSide) SBOutcome {
	switch {
	case local.Changes < peer.Changes:
		return SBPeerIsSource
	case local.Changes > peer.Changes:
		return SBLocalIsSource
	}
	return tie(local, peer)
}

func recover1Pri(p SplitBrainPolicy, local, peer SBSide) SBOutcome {
	localPrimary := local.Role == RolePrimary
	switch p.After1Pri {
	case SB1DiscardSecondary:
		if localPrimary {
			return SBLocalIsSource
		}
		return SBPeerIsSource
	case SB1Consensus:
		out := recover0Pri(p, p.After0Pri, local, peer)
		if (out == SBLocalIsSource && localPrimary) || (out == SBPeerIsSource && !localPrimary) {
			return out
		}
	}
	return SBDisconnect
}

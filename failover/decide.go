package failover

import (
	"fmt"
	"slices"
)

// ActionKind is what Decide tells a disk node's Manager to do.
type ActionKind uint8

const (
	ActNone ActionKind = iota
	// ActReacquire: the record names this node Primary but it is not
	// (restart): propose Proposal (same Primary, next epoch); if granted,
	// Local.Promote.
	ActReacquire
	// ActFence: the Primary lost its peer and holds writes: propose
	// Proposal (the peer dropped from UpToDate); if granted,
	// Local.PeerFenced.
	ActFence
	// ActReadmit: the peer is connected and resynced: propose Proposal
	// (the peer back in UpToDate).
	ActReadmit
	// ActTakeover: the Primary is silent and its link down: propose
	// Proposal (this node Primary, alone UpToDate); if granted,
	// Local.Promote with peerOutdated.
	ActTakeover
	// ActDemote: the record names another Primary: Local.Demote(Demote).
	ActDemote
	// ActSuspend: the Primary lost the majority: Local.SuspendIO.
	ActSuspend
	// ActResume: it regained it: Local.ResumeIO.
	ActResume
	// ActFailback: auto-failback: switch over to Target.
	ActFailback
	// ActDropLink: the peer is silent on the control channel but the
	// replication link still looks up (a dead host's connection lingers
	// until the engine's timeouts): Local.DropLink, so that the next
	// decision sees the link down and fences or takes over.
	ActDropLink
)

var actionNames = [...]string{"none", "reacquire", "fence", "readmit", "takeover", "demote", "suspend", "resume", "failback", "drop-link"}

func (k ActionKind) String() string {
	if int(k) < len(actionNames) {
		return actionNames[k]
	}
	return fmt.Sprintf("ActionKind(%d)", k)
}

// Proposes reports whether k runs a vote.
func (k ActionKind) Proposes() bool {
	return k == ActReacquire || k == ActFence || k == ActReadmit || k == ActTakeover
}

// Action is Decide's answer.
type Action struct {
	Kind     ActionKind
	Proposal Record // for kinds that propose
	// PeerOutdated is passed to Local.Promote (reacquire, takeover).
	PeerOutdated bool
	Demote       DemoteOptions // for ActDemote
	Target       string        // for ActFailback
	Reason       string
}

// View is everything a disk node decides on: its durable state, its
// local facts and what it hears. The Manager builds it on every tick and
// Notify; Decide is pure.
type View struct {
	Me, Peer string
	State    Durable
	Facts    Facts
	// PeerHeard: a heartbeat from the peer within heartbeat-timeout.
	PeerHeard bool
	// WitnessHeard: a heartbeat from the witness within heartbeat-timeout
	// (false when the resource has no witness).
	WitnessHeard bool
	// Suspended: the Manager suspended I/O for lost majority (and has not
	// resumed it).
	Suspended bool
	// AwaitingPromote: this node granted a planned switchover to itself
	// and waits for the old Primary's promote request.
	AwaitingPromote bool
	// AutoFailback is the preferred node ("" for none); PeerSettled: the
	// peer has been connected and UpToDate for failback-settle.
	AutoFailback string
	PeerSettled  bool
}

// Majority reports whether this node, counting itself, reaches two of
// the three voters: the peer (replication link or heartbeats) or the
// witness.
func (v View) Majority() bool {
	return v.Facts.Connected || v.PeerHeard || v.WitnessHeard
}

// Decide returns the one next action of a disk node. The rules, in
// order, are those of the package documentation; every answer carries
// its reason for the log.
func Decide(v View) Action {
	rec, f := v.State.Record, v.Facts
	next := v.State.NextEpoch()
	switch rec.Primary {
	case "":
		if f.Role == RolePrimary {
			return Action{Reason: "locally Primary but no quorum record yet: run `hablock primary --force` once to record it"}
		}
		return Action{Reason: "no primary recorded yet (epoch 0): waiting for `hablock primary --force`"}

	case v.Me:
		if f.Connected && !v.PeerHeard && f.Role == RolePrimary && !f.Held {
			return Action{Kind: ActDropLink, Reason: "the peer is silent for heartbeat-timeout but the replication link looks up: drop it (then fence)"}
		}
		if f.Role != RolePrimary {
			switch {
			case v.AwaitingPromote:
				return Action{Reason: "waiting for the old primary's promote request (switchover)"}
			case !f.UpToDate:
				return Action{Reason: "the record names me primary but my disk is not UpToDate: refusing to promote"}
			case !v.Majority():
				return Action{Reason: "the record names me primary but no other voter is reachable"}
			}
			set := []string{v.Me}
			if f.Connected && f.PeerUpToDate && rec.Has(v.Peer) {
				set = nodeSet(v.Me, v.Peer)
			}
			return Action{Kind: ActReacquire, Proposal: Record{Epoch: next, Primary: v.Me, UpToDate: set},
				PeerOutdated: len(set) == 1, Reason: "the record names me primary and I am not: re-acquire"}
		}
		if f.Held {
			if !f.UpToDate {
				if !v.Suspended {
					return Action{Kind: ActSuspend, Reason: "peer lost but my own disk is not UpToDate: the peer may hold the only good copy, so it is not fenced"}
				}
				return Action{Reason: "suspended: peer lost and my disk not UpToDate"}
			}
			if !v.Majority() {
				if !v.Suspended {
					return Action{Kind: ActSuspend, Reason: "peer lost and the witness silent: no majority to fence the peer"}
				}
				return Action{Reason: "suspended: peer lost, no majority"}
			}
			return Action{Kind: ActFence, Proposal: Record{Epoch: next, Primary: v.Me, UpToDate: without(nodeSet(append(slices.Clone(rec.UpToDate), v.Me)...), v.Peer)},
				Reason: "peer lost while writes are held: fence it by quorum"}
		}
		if !v.Majority() {
			if !v.Suspended {
				return Action{Kind: ActSuspend, Reason: "no link to the peer and the witness silent: lost the majority"}
			}
			return Action{Reason: "suspended: no majority"}
		}
		if v.Suspended {
			return Action{Kind: ActResume, Reason: "majority regained"}
		}
		if f.UpToDate && f.Connected && f.PeerUpToDate && !rec.Has(v.Peer) {
			return Action{Kind: ActReadmit, Proposal: Record{Epoch: next, Primary: v.Me, UpToDate: nodeSet(append(slices.Clone(rec.UpToDate), v.Peer)...)},
				Reason: "peer connected and resynced: readmit it"}
		}
		if v.AutoFailback == v.Peer && v.PeerSettled && rec.Has(v.Peer) && f.Connected && f.PeerUpToDate {
			return Action{Kind: ActFailback, Target: v.Peer, Reason: "auto-failback: the preferred node is back in sync"}
		}
		return Action{Reason: "primary with a majority"}

	case v.Peer:
		if f.Role == RolePrimary {
			return Action{Kind: ActDemote, Demote: DemoteOptions{DiscardLocal: true},
				Reason: fmt.Sprintf("epoch %d names %s primary: demote and discard what the new primary does not have", rec.Epoch, rec.Primary)}
		}
		switch {
		case f.Connected && !v.PeerHeard && rec.Has(v.Me):
			return Action{Kind: ActDropLink, Reason: "the primary is silent for heartbeat-timeout but the replication link looks up: drop it (then take over)"}
		case !rec.Has(v.Me):
			return Action{Reason: "outdated in the record: waiting for resync and readmission"}
		case f.Connected || v.PeerHeard:
			return Action{Reason: "secondary; the primary is alive"}
		case !f.UpToDate:
			return Action{Reason: "the primary is silent but my disk is not UpToDate: refusing to take over"}
		case !v.WitnessHeard:
			return Action{Reason: "the primary is silent but so is the witness: no majority to take over"}
		}
		return Action{Kind: ActTakeover, Proposal: Record{Epoch: next, Primary: v.Me, UpToDate: []string{v.Me}},
			PeerOutdated: true, Reason: "the primary is silent and its link down: take over"}
	}
	return Action{Reason: fmt.Sprintf("the record names %q primary, which is not a disk node of this resource", rec.Primary)}
}

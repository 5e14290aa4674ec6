package failover

import (
	"fmt"
	"slices"
)

// VoteRequest asks a voter to agree to Proposal as the next record.
type VoteRequest struct {
	// From is the proposer: the candidate Primary itself, or the current
	// Primary handing over in a planned switchover.
	From     string
	Proposal Record
	// Force is the operator's `hablock primary --force`: the candidate
	// need not be in the current up-to-date set (the operator vouches for
	// its data). It never waives the check that the current Primary is
	// silent.
	Force bool
}

// Verdict is a voter's answer to a VoteRequest.
type Verdict uint8

const (
	// Refuse: the proposal breaks a rule; the reason says which.
	Refuse Verdict = iota
	// Grant: persist the proposal as the record (and Voted) and say yes.
	Grant
	// WaitPrimary: the proposal replaces a Primary that this voter heard
	// less than heartbeat-timeout ago. Ask again once the gap has opened;
	// refuse if the Primary is heard meanwhile.
	WaitPrimary
)

func (v Verdict) String() string {
	switch v {
	case Grant:
		return "grant"
	case WaitPrimary:
		return "wait-for-primary"
	}
	return "refuse"
}

// VoterView is what a voter knows when it judges a vote.
type VoterView struct {
	Me    string
	State Durable
	// PrimarySilent: the current record's Primary has not been heard by
	// this voter (heartbeat or, on a disk node, the replication link) for
	// heartbeat-timeout. Meaningless when Me is that Primary.
	PrimarySilent bool
	// Disk: this voter is a disk node; DiskUpToDate its Facts.UpToDate.
	Disk, DiskUpToDate bool
}

// NextEpoch is the epoch of the next proposal a node with state d makes.
func (d Durable) NextEpoch() uint64 { return max(d.Record.Epoch, d.Voted) + 1 }

// CheckVote applies the voting rules of the package documentation. It is
// pure: the caller persists and answers.
func CheckVote(v VoterView, req VoteRequest) (Verdict, string) {
	cur, p := v.State.Record, req.Proposal
	if err := p.Validate(); err != nil {
		return Refuse, err.Error()
	}
	if p.Primary == "" {
		return Refuse, "a proposal must name a primary"
	}
	if floor := max(cur.Epoch, v.State.Voted); p.Epoch <= floor {
		return Refuse, fmt.Sprintf("epoch %d is not above %d (record %d, voted %d)", p.Epoch, floor, cur.Epoch, v.State.Voted)
	}
	if req.From != p.Primary && (cur.Primary == "" || req.From != cur.Primary) {
		return Refuse, fmt.Sprintf("%s may not propose %s as primary: only the candidate or the current primary may", req.From, p.Primary)
	}
	if v.Disk && p.Primary == v.Me && !v.DiskUpToDate {
		return Refuse, "my disk is not UpToDate; I cannot become primary"
	}
	switch {
	case cur.Primary == "":
		return Grant, "first record"
	case p.Primary == cur.Primary:
		if req.From != cur.Primary {
			return Refuse, fmt.Sprintf("only the primary %s may change its own record", cur.Primary)
		}
		return Grant, "same primary (fence, readmit or re-acquire)"
	}
	// A new Primary.
	if !cur.Has(p.Primary) && !req.Force {
		return Refuse, fmt.Sprintf("%s is not up to date in epoch %d (up to date: %v)", p.Primary, cur.Epoch, cur.UpToDate)
	}
	if !req.Force {
		for _, n := range p.UpToDate {
			if !cur.Has(n) {
				return Refuse, fmt.Sprintf("%s cannot become up to date by a change of primary", n)
			}
		}
	}
	if req.From == cur.Primary {
		return Grant, "planned switchover by the primary"
	}
	if v.Me == cur.Primary {
		return Refuse, fmt.Sprintf("I am the primary of epoch %d and alive", cur.Epoch)
	}
	if !v.PrimarySilent {
		return WaitPrimary, fmt.Sprintf("primary %s was heard less than heartbeat-timeout ago", cur.Primary)
	}
	return Grant, fmt.Sprintf("primary %s is silent", cur.Primary)
}

// granted returns the state a voter persists when it grants p.
func granted(d Durable, p Record) Durable {
	return Durable{Record: p.Clone(), Voted: max(d.Voted, p.Epoch)}
}

// without returns set minus name.
func without(set []string, name string) []string {
	return slices.DeleteFunc(slices.Clone(set), func(s string) bool { return s == name })
}

package replication

import (
	"errors"
	"math/rand/v2"
	"testing"
)

func side(name string, role Role, atSplit bool, changes uint64) SBSide {
	return SBSide{Name: name, Role: role, PrimaryAtSplit: atSplit, Changes: changes}
}

func TestResolveSplitBrainPolicies(t *testing.T) {
	sec, pri := RoleSecondary, RolePrimary
	p0 := func(p AfterSB0Pri) SplitBrainPolicy { return SplitBrainPolicy{After0Pri: p, DiscardNode: "b"} }
	p1 := func(p AfterSB1Pri, zero AfterSB0Pri) SplitBrainPolicy {
		return SplitBrainPolicy{After0Pri: zero, After1Pri: p}
	}
	cases := []struct {
		name        string
		policy      SplitBrainPolicy
		full        bool
		local, peer SBSide
		want        SBOutcome
	}{
		{"0pri disconnect", p0(SB0Disconnect), false, side("a", sec, true, 5), side("b", sec, false, 0), SBDisconnect},
		{"younger: peer promoted later", p0(SB0DiscardYoungerPrimary), false, side("a", sec, true, 1), side("b", sec, false, 9), SBLocalIsSource},
		{"younger: we promoted later", p0(SB0DiscardYoungerPrimary), false, side("a", sec, false, 9), side("b", sec, true, 1), SBPeerIsSource},
		{"younger: undecided -> zero changes", p0(SB0DiscardYoungerPrimary), false, side("a", sec, false, 0), side("b", sec, false, 3), SBPeerIsSource},
		{"younger: undecided -> least changes", p0(SB0DiscardYoungerPrimary), false, side("a", sec, false, 4), side("b", sec, false, 3), SBLocalIsSource},
		{"older: peer was primary at split", p0(SB0DiscardOlderPrimary), false, side("a", sec, false, 1), side("b", sec, true, 9), SBLocalIsSource},
		{"older: we were", p0(SB0DiscardOlderPrimary), false, side("a", sec, true, 9), side("b", sec, false, 1), SBPeerIsSource},
		{"older: undecided -> least changes", p0(SB0DiscardOlderPrimary), false, side("a", sec, true, 2), side("b", sec, true, 7), SBPeerIsSource},
		{"zero: peer unchanged", p0(SB0DiscardZeroChanges), false, side("a", sec, false, 3), side("b", sec, false, 0), SBLocalIsSource},
		{"zero: we unchanged", p0(SB0DiscardZeroChanges), false, side("a", sec, false, 0), side("b", sec, false, 3), SBPeerIsSource},
		{"zero: both changed", p0(SB0DiscardZeroChanges), false, side("a", sec, false, 1), side("b", sec, false, 3), SBDisconnect},
		{"zero: neither changed, tie-break a", p0(SB0DiscardZeroChanges), false, side("a", sec, false, 0), side("b", sec, false, 0), SBLocalIsSource},
		{"zero: neither changed, tie-break c", p0(SB0DiscardZeroChanges), false, side("c", sec, false, 0), side("b", sec, false, 0), SBPeerIsSource},
		{"least: fewer local", p0(SB0DiscardLeastChanges), false, side("a", sec, false, 2), side("b", sec, false, 3), SBPeerIsSource},
		{"least: fewer peer", p0(SB0DiscardLeastChanges), false, side("a", sec, false, 30), side("b", sec, false, 3), SBLocalIsSource},
		{"least: equal, tie-break", p0(SB0DiscardLeastChanges), false, side("x", sec, false, 3), side("b", sec, false, 3), SBPeerIsSource},
		{"node: discard b (peer)", p0(SB0DiscardNode), false, side("a", sec, false, 30), side("b", sec, false, 3), SBLocalIsSource},
		{"node: discard b (us)", p0(SB0DiscardNode), false, side("b", sec, false, 30), side("a", sec, false, 3), SBPeerIsSource},
		{"node: name matches neither", SplitBrainPolicy{After0Pri: SB0DiscardNode, DiscardNode: "z"}, false, side("a", sec, false, 1), side("b", sec, false, 1), SBDisconnect},
		{"1pri disconnect", p1(SB1Disconnect, SB0DiscardZeroChanges), false, side("a", pri, true, 1), side("b", sec, false, 0), SBDisconnect},
		{"1pri discard-secondary, we primary", p1(SB1DiscardSecondary, SB0Disconnect), false, side("a", pri, false, 0), side("b", sec, true, 99), SBLocalIsSource},
		{"1pri discard-secondary, peer primary", p1(SB1DiscardSecondary, SB0Disconnect), false, side("a", sec, false, 99), side("b", pri, true, 0), SBPeerIsSource},
		{"1pri consensus agrees", p1(SB1Consensus, SB0DiscardZeroChanges), false, side("a", pri, false, 5), side("b", sec, false, 0), SBLocalIsSource},
		{"1pri consensus agrees (peer primary)", p1(SB1Consensus, SB0DiscardLeastChanges), false, side("a", sec, false, 1), side("b", pri, false, 5), SBPeerIsSource},
		{"1pri consensus refuses to discard primary", p1(SB1Consensus, SB0DiscardLeastChanges), false, side("a", pri, false, 1), side("b", sec, false, 5), SBDisconnect},
		{"1pri consensus with 0pri disconnect", p1(SB1Consensus, SB0Disconnect), false, side("a", pri, false, 1), side("b", sec, false, 0), SBDisconnect},
		{"2pri always disconnect", p1(SB1DiscardSecondary, SB0DiscardLeastChanges), false, side("a", pri, false, 1), side("b", pri, false, 5), SBDisconnect},
		{"full (shared history only) ignores policy", p0(SB0DiscardLeastChanges), true, side("a", sec, false, 1), side("b", sec, false, 5), SBDisconnect},
		{"manual: we discard", p0(SB0Disconnect), true, SBSide{Name: "a", DiscardMyData: true}, side("b", sec, false, 0), SBPeerIsSource},
		{"manual: peer discards", p1(SB1Disconnect, SB0Disconnect), false, side("a", pri, false, 1), SBSide{Name: "b", Role: sec, DiscardMyData: true}, SBLocalIsSource},
		{"manual: both discard", p0(SB0Disconnect), false, SBSide{Name: "a", DiscardMyData: true}, SBSide{Name: "b", DiscardMyData: true}, SBDisconnect},
		{"manual: after 2pri", p0(SB0Disconnect), false, SBSide{Name: "a", Role: pri}, SBSide{Name: "b", Role: pri, DiscardMyData: true}, SBLocalIsSource},
	}
	for _, c := range cases {
		if err := c.policy.Validate(); err != nil {
			t.Fatalf("%s: %v", c.name, err)
		}
		got := ResolveSplitBrain(c.policy, c.full, c.local, c.peer)
		if got != c.want {
			t.Errorf("%s: %v, want %v", c.name, got, c.want)
		}
		if m := ResolveSplitBrain(c.policy, c.full, c.peer, c.local); m != got.mirror() {
			t.Errorf("%s: mirror %v, want %v", c.name, m, got.mirror())
		}
	}
}

// Every policy is symmetric for random inputs, so both nodes always agree.
func TestResolveSplitBrainSymmetric(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	names := []string{"a", "b", "c"}
	for range 20000 {
		p := SplitBrainPolicy{After0Pri: AfterSB0Pri(rng.IntN(int(numSB0))), After1Pri: AfterSB1Pri(rng.IntN(int(numSB1))), DiscardNode: names[rng.IntN(3)]}
		mk := func(name string) SBSide {
			return SBSide{Name: name, Role: Role(1 + rng.IntN(2)), PrimaryAtSplit: rng.IntN(2) == 0,
				Changes: uint64(rng.IntN(3)), DiscardMyData: rng.IntN(5) == 0}
		}
		l := mk(names[rng.IntN(3)])
		r := mk(names[rng.IntN(3)])
		if l.Name == r.Name {
			continue
		}
		full := rng.IntN(4) == 0
		o := ResolveSplitBrain(p, full, l, r)
		if ResolveSplitBrain(p, full, r, l) != o.mirror() {
			t.Fatalf("asymmetric: %+v %v %+v %+v", p, full, l, r)
		}
	}
}

func TestSplitBrainPolicyValidate(t *testing.T) {
	if err := (SplitBrainPolicy{}).Validate(); err != nil {
		t.Errorf("default policy invalid: %v", err)
	}
	for _, p := range []SplitBrainPolicy{
		{After0Pri: numSB0},
		{After1Pri: numSB1},
		{After0Pri: SB0DiscardNode},
		{After0Pri: SB0DiscardNode, DiscardNode: string(make([]byte, MaxNodeName+1))},
	} {
		if err := p.Validate(); !errors.Is(err, ErrInvalidPolicy) {
			t.Errorf("%+v: %v", p, err)
		}
	}
	if SBLocalIsSource.Decision(true) != FullSyncLocalIsSource || SBPeerIsSource.Decision(false) != BitmapResyncPeerIsSource ||
		SBDisconnect.Decision(false) != SplitBrain {
		t.Error("SBOutcome.Decision")
	}
	if SB0DiscardLeastChanges.String() != "discard-least-changes" || SB1Consensus.String() != "consensus" {
		t.Error("policy names")
	}
}

package failover

import "testing"

func TestCheckVote(t *testing.T) {
	both := Durable{rec(4, "n1", "n1", "n2"), 4}
	for _, tc := range []struct {
		name string
		v    VoterView
		req  VoteRequest
		want Verdict
	}{
		{"first record", VoterView{Me: "w"}, VoteRequest{From: "n1", Proposal: rec(1, "n1", "n1")}, Grant},
		{"first record by another", VoterView{Me: "w"}, VoteRequest{From: "n2", Proposal: rec(1, "n1", "n1")}, Refuse},
		{"stale epoch", VoterView{Me: "w", State: both}, VoteRequest{From: "n1", Proposal: rec(4, "n1", "n1")}, Refuse},
		{"already voted in epoch", VoterView{Me: "w", State: Durable{both.Record, 5}}, VoteRequest{From: "n1", Proposal: rec(5, "n1", "n1")}, Refuse},
		{"fence by primary", VoterView{Me: "w", State: both}, VoteRequest{From: "n1", Proposal: rec(5, "n1", "n1")}, Grant},
		{"fence by primary, peer votes", VoterView{Me: "n2", State: both, Disk: true, DiskUpToDate: true}, VoteRequest{From: "n1", Proposal: rec(5, "n1", "n1")}, Grant},
		{"record change by non-primary", VoterView{Me: "w", State: both}, VoteRequest{From: "n2", Proposal: rec(5, "n1", "n1")}, Refuse},
		{"takeover, primary heard", VoterView{Me: "w", State: both}, VoteRequest{From: "n2", Proposal: rec(5, "n2", "n2")}, WaitPrimary},
		{"takeover, primary silent", VoterView{Me: "w", State: both, PrimarySilent: true}, VoteRequest{From: "n2", Proposal: rec(5, "n2", "n2")}, Grant},
		{"takeover asked of the live primary", VoterView{Me: "n1", State: both, PrimarySilent: true, Disk: true, DiskUpToDate: true}, VoteRequest{From: "n2", Proposal: rec(5, "n2", "n2")}, Refuse},
		{"takeover by outdated node", VoterView{Me: "w", State: Durable{rec(4, "n1", "n1"), 4}, PrimarySilent: true}, VoteRequest{From: "n2", Proposal: rec(5, "n2", "n2")}, Refuse},
		{"forced takeover by outdated node", VoterView{Me: "w", State: Durable{rec(4, "n1", "n1"), 4}, PrimarySilent: true}, VoteRequest{From: "n2", Proposal: rec(5, "n2", "n2"), Force: true}, Grant},
		{"forced takeover, primary heard", VoterView{Me: "w", State: Durable{rec(4, "n1", "n1"), 4}}, VoteRequest{From: "n2", Proposal: rec(5, "n2", "n2"), Force: true}, WaitPrimary},
		{"takeover claims outdated peer", VoterView{Me: "w", State: Durable{rec(4, "n1", "n1", "n3"), 4}, PrimarySilent: true}, VoteRequest{From: "n3", Proposal: rec(5, "n3", "n2", "n3")}, Refuse},
		{"switchover by primary", VoterView{Me: "w", State: both}, VoteRequest{From: "n1", Proposal: rec(5, "n2", "n1", "n2")}, Grant},
		{"switchover, target votes", VoterView{Me: "n2", State: both, Disk: true, DiskUpToDate: true}, VoteRequest{From: "n1", Proposal: rec(5, "n2", "n1", "n2")}, Grant},
		{"switchover, target not up to date", VoterView{Me: "n2", State: both, Disk: true}, VoteRequest{From: "n1", Proposal: rec(5, "n2", "n1", "n2")}, Refuse},
		{"switchover to outdated node", VoterView{Me: "w", State: Durable{rec(4, "n1", "n1"), 4}}, VoteRequest{From: "n1", Proposal: rec(5, "n2", "n1", "n2")}, Refuse},
		{"invalid proposal", VoterView{Me: "w", State: both}, VoteRequest{From: "n1", Proposal: Record{Epoch: 5, Primary: "n1", UpToDate: []string{"n2"}}}, Refuse},
		{"empty proposal", VoterView{Me: "w", State: both}, VoteRequest{From: "n1", Proposal: Record{}}, Refuse},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, why := CheckVote(tc.v, tc.req)
			if got != tc.want {
				t.Errorf("CheckVote = %v (%s), want %v", got, why, tc.want)
			}
			if why == "" {
				t.Error("no reason")
			}
		})
	}
}

// TestOneGrantPerEpoch: once a voter granted epoch E (and persisted
// granted()), no other proposal of epoch E passes, whoever asks.
func TestOneGrantPerEpoch(t *testing.T) {
	d := Durable{rec(4, "n1", "n1", "n2"), 4}
	v := VoterView{Me: "w", State: d, PrimarySilent: true}
	first := VoteRequest{From: "n1", Proposal: rec(5, "n1", "n1")}
	if g, why := CheckVote(v, first); g != Grant {
		t.Fatal(why)
	}
	v.State = granted(d, first.Proposal)
	for _, p := range []VoteRequest{
		{From: "n2", Proposal: rec(5, "n2", "n2")},
		{From: "n1", Proposal: rec(5, "n1", "n1", "n2")},
		{From: "n2", Proposal: rec(5, "n2", "n2"), Force: true},
	} {
		if g, _ := CheckVote(v, p); g != Refuse {
			t.Errorf("second proposal %v in epoch 5: %v", p.Proposal, g)
		}
	}
}

package failover

import (
	"fmt"
	"testing"
)

func rec(epoch uint64, primary string, up ...string) Record {
	return Record{Epoch: epoch, Primary: primary, UpToDate: nodeSet(up...)}
}

// TestDecideTable walks the transition table of a disk node.
func TestDecideTable(t *testing.T) {
	primary := Facts{Role: RolePrimary, UpToDate: true, Connected: true, PeerUpToDate: true}
	secondary := Facts{Role: RoleSecondary, UpToDate: true, Connected: true, PeerUpToDate: true}
	both := rec(4, "n1", "n1", "n2")
	for _, tc := range []struct {
		name string
		v    View
		want ActionKind
		prop Record
	}{
		{"no record", View{Facts: secondary}, ActNone, Record{}},
		{"no record, locally primary", View{Facts: primary}, ActNone, Record{}},
		{"primary, all well", View{State: Durable{both, 4}, Facts: primary, PeerHeard: true, WitnessHeard: true}, ActNone, Record{}},
		{"primary, witness dead", View{State: Durable{both, 4}, Facts: primary, PeerHeard: true}, ActNone, Record{}},
		{"primary, held", View{State: Durable{both, 4}, Facts: Facts{Role: RolePrimary, UpToDate: true, Held: true}, WitnessHeard: true}, ActFence, rec(5, "n1", "n1")},
		{"primary, held, voted ahead", View{State: Durable{both, 7}, Facts: Facts{Role: RolePrimary, UpToDate: true, Held: true}, WitnessHeard: true}, ActFence, rec(8, "n1", "n1")},
		{"primary, held, alone", View{State: Durable{both, 4}, Facts: Facts{Role: RolePrimary, UpToDate: true, Held: true}}, ActSuspend, Record{}},
		{"primary, alone, degraded", View{State: Durable{rec(5, "n1", "n1"), 5}, Facts: Facts{Role: RolePrimary, UpToDate: true}}, ActSuspend, Record{}},
		{"primary, alone, already suspended", View{State: Durable{rec(5, "n1", "n1"), 5}, Facts: Facts{Role: RolePrimary, UpToDate: true}, Suspended: true}, ActNone, Record{}},
		{"primary, majority back", View{State: Durable{rec(5, "n1", "n1"), 5}, Facts: Facts{Role: RolePrimary, UpToDate: true}, WitnessHeard: true, Suspended: true}, ActResume, Record{}},
		{"primary, peer resynced", View{State: Durable{rec(5, "n1", "n1"), 5}, Facts: primary, PeerHeard: true, WitnessHeard: true}, ActReadmit, rec(6, "n1", "n1", "n2")},
		{"primary, peer connected, resyncing", View{State: Durable{rec(5, "n1", "n1"), 5}, Facts: Facts{Role: RolePrimary, UpToDate: true, Connected: true}, PeerHeard: true}, ActNone, Record{}},
		{"primary, failback due", View{State: Durable{both, 4}, Facts: primary, PeerHeard: true, AutoFailback: "n2", PeerSettled: true}, ActFailback, Record{}},
		{"primary, failback not settled", View{State: Durable{both, 4}, Facts: primary, PeerHeard: true, AutoFailback: "n2"}, ActNone, Record{}},
		{"primary, failback to self", View{State: Durable{both, 4}, Facts: primary, PeerHeard: true, AutoFailback: "n1", PeerSettled: true}, ActNone, Record{}},
		{"restart as recorded primary", View{State: Durable{both, 4}, Facts: Facts{UpToDate: true}, WitnessHeard: true}, ActReacquire, rec(5, "n1", "n1")},
		{"restart, peer in sync", View{State: Durable{both, 4}, Facts: secondary}, ActReacquire, rec(5, "n1", "n1", "n2")},
		{"restart, alone", View{State: Durable{both, 4}, Facts: Facts{UpToDate: true}}, ActNone, Record{}},
		{"restart, disk not up to date", View{State: Durable{both, 4}, Facts: Facts{}, WitnessHeard: true}, ActNone, Record{}},
		{"awaiting switchover promote", View{State: Durable{both, 4}, Facts: secondary, AwaitingPromote: true}, ActNone, Record{}},
		{"replaced primary returns", View{State: Durable{rec(6, "n2", "n2"), 6}, Facts: primary}, ActDemote, Record{}},
		{"secondary, primary alive", View{State: Durable{rec(6, "n2", "n1", "n2"), 6}, Facts: secondary, PeerHeard: true, WitnessHeard: true}, ActNone, Record{}},
		{"secondary, link cut, primary heard", View{State: Durable{rec(6, "n2", "n1", "n2"), 6}, Facts: Facts{UpToDate: true}, PeerHeard: true, WitnessHeard: true}, ActNone, Record{}},
		{"secondary, primary dead", View{State: Durable{rec(6, "n2", "n1", "n2"), 6}, Facts: Facts{UpToDate: true}, WitnessHeard: true}, ActTakeover, rec(7, "n1", "n1")},
		{"secondary, primary dead, no witness", View{State: Durable{rec(6, "n2", "n1", "n2"), 6}, Facts: Facts{UpToDate: true}}, ActNone, Record{}},
		{"secondary outdated, primary dead", View{State: Durable{rec(6, "n2", "n2"), 6}, Facts: Facts{UpToDate: true}, WitnessHeard: true}, ActNone, Record{}},
		{"secondary inconsistent, primary dead", View{State: Durable{rec(6, "n2", "n1", "n2"), 6}, Facts: Facts{}, WitnessHeard: true}, ActNone, Record{}},
		{"record names a stranger", View{State: Durable{rec(6, "w", "w"), 6}, Facts: secondary}, ActNone, Record{}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			tc.v.Me, tc.v.Peer = "n1", "n2"
			a := Decide(tc.v)
			if a.Kind != tc.want {
				t.Fatalf("Decide = %v (%s), want %v", a.Kind, a.Reason, tc.want)
			}
			if a.Reason == "" {
				t.Error("no reason")
			}
			if tc.want.Proposes() && !a.Proposal.Equal(tc.prop) {
				t.Errorf("proposal %v, want %v", a.Proposal, tc.prop)
			}
		})
	}
}

// TestDecideInvariants enumerates every combination of the boolean
// inputs and records, and checks the safety rules on each answer.
func TestDecideInvariants(t *testing.T) {
	records := []Durable{
		{}, {rec(3, "n1", "n1", "n2"), 3}, {rec(3, "n1", "n1"), 5}, {rec(3, "n2", "n1", "n2"), 3},
		{rec(3, "n2", "n2"), 4}, {rec(3, "w", "w"), 3},
	}
	n := 0
	for _, st := range records {
		for bits := range 1 << 12 {
			b := func(i int) bool { return bits&(1<<i) != 0 }
			v := View{Me: "n1", Peer: "n2", State: st,
				Facts:     Facts{Role: Role(bits & 1), UpToDate: b(1), Connected: b(2), PeerUpToDate: b(3), Held: b(4), Suspended: b(5)},
				PeerHeard: b(6), WitnessHeard: b(7), Suspended: b(8), AwaitingPromote: b(9), PeerSettled: b(10)}
			if b(11) {
				v.AutoFailback = "n2"
			}
			a := Decide(v)
			n++
			where := fmt.Sprintf("view %+v -> %v (%s)", v, a.Kind, a.Reason)
			if a.Reason == "" {
				t.Fatalf("no reason: %s", where)
			}
			if a.Kind.Proposes() {
				p := a.Proposal
				if err := p.Validate(); err != nil {
					t.Fatalf("invalid proposal %v: %v: %s", p, err, where)
				}
				if p.Epoch <= st.Record.Epoch || p.Epoch <= st.Voted {
					t.Fatalf("proposal epoch %d not above record %d / voted %d: %s", p.Epoch, st.Record.Epoch, st.Voted, where)
				}
				if p.Primary != "n1" {
					t.Fatalf("proposes another node: %s", where)
				}
				if !v.Facts.UpToDate {
					t.Fatalf("proposes itself primary without an UpToDate disk: %s", where)
				}
				if !v.Majority() {
					t.Fatalf("proposes without a reachable majority: %s", where)
				}
			}
			switch a.Kind {
			case ActTakeover:
				if v.Facts.Connected || v.PeerHeard || !st.Record.Has("n1") || st.Record.Primary != "n2" {
					t.Fatalf("takeover while the primary is heard, or not up to date: %s", where)
				}
			case ActDropLink:
				if !v.Facts.Connected || v.PeerHeard {
					t.Fatalf("drops a link that is down or whose peer is heard: %s", where)
				}
			case ActReacquire:
				if st.Record.Primary != "n1" || v.AwaitingPromote {
					t.Fatalf("reacquire of a record that is not mine: %s", where)
				}
			case ActFence, ActReadmit, ActFailback, ActResume, ActSuspend:
				if st.Record.Primary != "n1" || v.Facts.Role != RolePrimary {
					t.Fatalf("%v on a node that is not the recorded primary: %s", a.Kind, where)
				}
				if a.Kind == ActFence && (!v.Facts.Held || a.Proposal.Has("n2")) {
					t.Fatalf("bad fence: %s", where)
				}
				if a.Kind == ActReadmit && (!v.Facts.Connected || !v.Facts.PeerUpToDate) {
					t.Fatalf("readmit of a peer not in sync: %s", where)
				}
			case ActDemote:
				if st.Record.Primary == "n1" || v.Facts.Role != RolePrimary || !a.Demote.DiscardLocal {
					t.Fatalf("bad demote: %s", where)
				}
			}
			if v.Facts.Role == RolePrimary && st.Record.Primary != "" && st.Record.Primary != "n1" && st.Record.Primary == "n2" && a.Kind != ActDemote {
				t.Fatalf("a replaced primary does not demote: %s", where)
			}
		}
	}
	t.Logf("%d views checked", n)
}

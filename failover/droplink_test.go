package failover

import "testing"

// DropLink of the in-memory disk node only records the call: in this
// model the link is what the test sets (cluster.setLink), and a link that
// is up reconnects at once, as the engine's does when the peer is alive.
func (l *memLocal) DropLink(reason string) {
	l.log.add(op{node: l.name, what: "drop-link"})
}

// TestDecideDropLink: a silent peer behind a link that still looks up is
// cut off first (on either role); once the link is down the usual rules
// fence or take over.
func TestDecideDropLink(t *testing.T) {
	both := rec(4, "n1", "n1", "n2")
	primaryUp := Facts{Role: RolePrimary, UpToDate: true, Connected: true, PeerUpToDate: true}
	secondaryUp := Facts{Role: RoleSecondary, UpToDate: true, Connected: true, PeerUpToDate: true}
	for _, tc := range []struct {
		name string
		v    View
		want ActionKind
	}{
		{"primary, peer silent, link up", View{State: Durable{both, 4}, Facts: primaryUp, WitnessHeard: true}, ActDropLink},
		{"primary, peer silent, link dropped: fence", View{State: Durable{both, 4}, Facts: Facts{Role: RolePrimary, UpToDate: true, Held: true}, WitnessHeard: true}, ActFence},
		{"primary, peer heard, link up", View{State: Durable{both, 4}, Facts: primaryUp, PeerHeard: true, WitnessHeard: true}, ActNone},
		{"secondary, primary silent, link up", View{State: Durable{rec(4, "n2", "n1", "n2"), 4}, Facts: secondaryUp, WitnessHeard: true}, ActDropLink},
		{"secondary, primary silent, link dropped: take over", View{State: Durable{rec(4, "n2", "n1", "n2"), 4}, Facts: Facts{UpToDate: true}, WitnessHeard: true}, ActTakeover},
		{"secondary outdated, primary silent, link up: nothing to gain", View{State: Durable{rec(4, "n2", "n2"), 4}, Facts: secondaryUp, WitnessHeard: true}, ActNone},
	} {
		t.Run(tc.name, func(t *testing.T) {
			tc.v.Me, tc.v.Peer = "n1", "n2"
			if a := Decide(tc.v); a.Kind != tc.want {
				t.Fatalf("Decide = %v (%s), want %v", a.Kind, a.Reason, tc.want)
			}
		})
	}
}

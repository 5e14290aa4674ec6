package failover

import (
	"bytes"
	"errors"
	"net/netip"
	"reflect"
	"strings"
	"testing"
)

func wireSamples() []any {
	conns := []Conn{
		{Client: netip.MustParseAddrPort("10.250.0.50:51234"), Server: netip.MustParseAddrPort("10.250.0.100:3260")},
		{Client: netip.MustParseAddrPort("[fd00::5]:40000"), Server: netip.MustParseAddrPort("[fd00::100]:3260")},
	}
	return []any{
		Heartbeat{From: "n1", Seq: 7, Record: rec(3, "n1", "n1", "n2"),
			Facts: Facts{Role: RolePrimary, UpToDate: true, Connected: true, PeerUpToDate: true}, Clients: conns},
		Heartbeat{From: "w", Seq: 1, Witness: true},
		VoteRequest{From: "n2", Proposal: rec(4, "n2", "n2"), Force: true},
		VoteReply{Granted: true, Reason: "primary n1 is silent", Record: rec(4, "n2", "n2")},
		VoteReply{Reason: "epoch 4 is not above 4"},
		promoteRequest{From: "n1", Epoch: 9, Clients: conns[:1]},
		promoteReply{OK: false, Reason: "not up to date"},
	}
}

func TestWireRoundTrip(t *testing.T) {
	for _, m := range wireSamples() {
		b, err := encodeFrame(m)
		if err != nil {
			t.Fatal(err)
		}
		back, err := decodeFrame(b)
		if err != nil {
			t.Fatalf("%T: %v", m, err)
		}
		if !reflect.DeepEqual(back, m) {
			t.Errorf("round trip\n%+v\nwant\n%+v", back, m)
		}
	}
}

func TestWireRejects(t *testing.T) {
	good, _ := encodeFrame(wireSamples()[0])
	for name, b := range map[string][]byte{
		"empty":     nil,
		"magic":     append([]byte("XF"), good[2:]...),
		"version":   append([]byte{'H', 'F', 9}, good[3:]...),
		"type":      append([]byte{'H', 'F', 1, 99}, good[4:]...),
		"truncated": good[:len(good)-1],
		"trailing":  append(append([]byte{}, good...), 0),
		"too long":  {'H', 'F', 1, 1, 0xff, 0xff},
	} {
		if _, err := decodeFrame(b); !errors.Is(err, ErrWire) {
			t.Errorf("%s: %v, want ErrWire", name, err)
		}
	}
	// An invalid record inside is refused too.
	bad, _ := encodeFrame(VoteRequest{From: "n2", Proposal: Record{Epoch: 1, Primary: "n2", UpToDate: []string{"n1"}}})
	if _, err := decodeFrame(bad); !errors.Is(err, ErrWire) {
		t.Errorf("invalid record: %v", err)
	}
	if _, err := encodeFrame(VoteRequest{From: strings.Repeat("x", MaxName+1)}); err == nil {
		t.Error("over-long name encoded")
	}
	// Too many clients are cut to MaxClients, not refused.
	many := make([]Conn, MaxClients+5)
	for i := range many {
		many[i] = Conn{Client: netip.MustParseAddrPort("[fd00::1]:1"), Server: netip.MustParseAddrPort("[fd00::2]:2")}
	}
	b, err := encodeFrame(Heartbeat{From: "n1", Clients: many})
	if err != nil {
		t.Fatal(err)
	}
	m, err := decodeFrame(b)
	if err != nil || len(m.(Heartbeat).Clients) != MaxClients {
		t.Errorf("clients cut: %v", err)
	}
}

// FuzzDecodeFrame: decoding never panics nor allocates past the bounds,
// and what decodes re-encodes to the same bytes.
func FuzzDecodeFrame(f *testing.F) {
	for _, m := range wireSamples() {
		b, _ := encodeFrame(m)
		f.Add(b)
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		m, err := decodeFrame(b)
		if err != nil {
			return
		}
		back, err := encodeFrame(m)
		if err != nil {
			t.Fatalf("decoded %+v does not encode: %v", m, err)
		}
		if !bytes.Equal(back, b) {
			t.Fatalf("re-encoded\n%x\nwant\n%x", back, b)
		}
	})
}

package iscsi

import (
	"bytes"
	"errors"
	"strings"
	"testing"
)

func TestParseText(t *testing.T) {
	in := []KV{{"InitiatorName", testInit}, {"HeaderDigest", "CRC32C,None"}, {"X-com.example.key", ""}}
	b := AppendText(nil, in)
	got, err := ParseText(append(b, 0, 0)) // trailing NUL padding tolerated
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != len(in) {
		t.Fatalf("got %v", got)
	}
	for i := range in {
		if got[i] != in[i] {
			t.Fatalf("pair %d: %v != %v", i, got[i], in[i])
		}
	}
	if !bytes.Equal(AppendText(nil, got), b) {
		t.Fatal("re-encoding differs")
	}
}

func TestParseTextBounds(t *testing.T) {
	bad := map[string][]byte{
		"no NUL":        []byte("A=B"),
		"no =":          []byte("AB\x00"),
		"empty key":     []byte("=B\x00"),
		"long key":      []byte(strings.Repeat("K", MaxKeyLen+1) + "=v\x00"),
		"bad key char":  []byte("K y=v\x00"),
		"long value":    []byte("K=" + strings.Repeat("v", MaxValueLen+1) + "\x00"),
		"too many keys": bytes.Repeat([]byte("K=v\x00"), MaxKeys+1),
		"too much text": make([]byte, MaxTextLen+1),
	}
	for name, b := range bad {
		if _, err := ParseText(b); !errors.Is(err, ErrText) {
			t.Errorf("%s: err %v, want ErrText", name, err)
		}
	}
	ok := bytes.Repeat([]byte("K=v\x00"), MaxKeys)
	if kvs, err := ParseText(ok); err != nil || len(kvs) != MaxKeys {
		t.Fatalf("MaxKeys pairs: %d %v", len(kvs), err)
	}
}

func testOffer() Offer {
	c := DefaultConfig()
	return c.offer()
}

// TestNegotiateRules walks one offer per key through the negotiator and
// checks the response and the resulting parameter, one row per RFC 7143
// section 13 rule.
func TestNegotiateRules(t *testing.T) {
	o := testOffer() // MaxBurst 1 MiB, FirstBurst 256 KiB, ImmediateData Yes, InitialR2T No, MaxOutstandingR2T 4, T2W 2, T2R 0
	cases := []struct {
		key, val string
		want     string // "" = no response
		check    func(Params) bool
	}{
		{"MaxBurstLength", "262144", "262144", func(p Params) bool { return p.MaxBurstLength == 262144 }},
		{"MaxBurstLength", "16776192", "1048576", func(p Params) bool { return p.MaxBurstLength == 1<<20 }},
		{"MaxBurstLength", "100", valReject, func(p Params) bool { return p.MaxBurstLength == 262144 }},
		{"MaxBurstLength", "16777216", valReject, nil},
		{"MaxBurstLength", "abc", valReject, nil},
		{"FirstBurstLength", "65536", "65536", func(p Params) bool { return p.FirstBurstLength == 65536 }},
		{"FirstBurstLength", "0x100000", "262144", func(p Params) bool { return p.FirstBurstLength == 256<<10 }},
		{"ImmediateData", "Yes", "Yes", func(p Params) bool { return p.ImmediateData }},
		{"ImmediateData", "No", "No", func(p Params) bool { return !p.ImmediateData }},
		{"ImmediateData", "Maybe", valReject, nil},
		{"InitialR2T", "No", "No", func(p Params) bool { return !p.InitialR2T }},
		{"InitialR2T", "Yes", "Yes", func(p Params) bool { return p.InitialR2T }},
		{"MaxOutstandingR2T", "1", "1", func(p Params) bool { return p.MaxOutstandingR2T == 1 }},
		{"MaxOutstandingR2T", "100", "4", func(p Params) bool { return p.MaxOutstandingR2T == 4 }},
		{"MaxOutstandingR2T", "0", valReject, nil},
		{"DataPDUInOrder", "No", "Yes", func(p Params) bool { return p.DataPDUInOrder }},
		{"DataSequenceInOrder", "No", "Yes", func(p Params) bool { return p.DataSequenceInOrder }},
		{"ErrorRecoveryLevel", "2", "0", func(p Params) bool { return p.ErrorRecoveryLevel == 0 }},
		{"ErrorRecoveryLevel", "3", valReject, nil},
		{"HeaderDigest", "CRC32C,None", "CRC32C", func(p Params) bool { return p.HeaderDigest }},
		{"HeaderDigest", "None,CRC32C", "None", func(p Params) bool { return !p.HeaderDigest }},
		{"DataDigest", "CRC32C", "CRC32C", func(p Params) bool { return p.DataDigest }},
		{"DataDigest", "MD5", valReject, func(p Params) bool { return !p.DataDigest }},
		{"DefaultTime2Wait", "0", "2", func(p Params) bool { return p.DefaultTime2Wait == 2 }},
		{"DefaultTime2Wait", "10", "10", func(p Params) bool { return p.DefaultTime2Wait == 10 }},
		{"DefaultTime2Retain", "20", "0", func(p Params) bool { return p.DefaultTime2Retain == 0 }},
		{"MaxConnections", "8", "1", func(p Params) bool { return p.MaxConnections == 1 }},
		{"MaxRecvDataSegmentLength", "65536", "", func(p Params) bool { return p.MaxRecvDSLInitiator == 65536 }},
		{"MaxRecvDataSegmentLength", "511", valReject, func(p Params) bool { return p.MaxRecvDSLInitiator == defaultMRDSL }},
		{"IFMarker", "Yes", "No", nil},
		{"OFMarker", "No", "No", nil},
		{"TaskReporting", "FastAbort,RFC3720", "RFC3720", nil},
		{"iSCSIProtocolLevel", "2", "1", nil},
		{"InitiatorAlias", "host1", "", nil},
		{"X-com.example.foo", "bar", valNotUnderstood, nil},
		{"X#mykey", "1", valNotUnderstood, nil},
		{"NoSuchKey", "1", valNotUnderstood, nil},
		{"TargetAlias", "x", valIrrelevant, nil},
		{"MaxBurstLength", valNotUnderstood, "", nil},
		{"MaxBurstLength", valReject, "", nil},
	}
	for _, c := range cases {
		s := NewNegState(o, false, PhaseOperational)
		out := s.Negotiate([]KV{{c.key, c.val}})
		got := ""
		if len(out) == 1 {
			if out[0].Key != c.key {
				t.Fatalf("%s=%s: answered key %q", c.key, c.val, out[0].Key)
			}
			got = out[0].Value
		} else if len(out) > 1 {
			t.Fatalf("%s=%s: %d answers", c.key, c.val, len(out))
		}
		if got != c.want {
			t.Errorf("%s=%s: answered %q, want %q", c.key, c.val, got, c.want)
		}
		if c.check != nil && !c.check(s.Params) {
			t.Errorf("%s=%s: params %+v", c.key, c.val, s.Params)
		}
	}
}

func TestNegotiateDigestPolicy(t *testing.T) {
	o := testOffer()
	o.HeaderDigests = []string{"CRC32C"}
	s := NewNegState(o, false, PhaseOperational)
	if out := s.Negotiate([]KV{{"HeaderDigest", "None"}}); out[0].Value != valReject {
		t.Fatalf("required digest: %v", out)
	}
	o.HeaderDigests = []string{"None"}
	s = NewNegState(o, false, PhaseOperational)
	if out := s.Negotiate([]KV{{"HeaderDigest", "CRC32C,None"}}); out[0].Value != "None" || s.Params.HeaderDigest {
		t.Fatalf("refused digest: %v", out)
	}
}

func TestNegotiateDiscoveryAndFFP(t *testing.T) {
	s := NewNegState(testOffer(), true, PhaseOperational)
	out := s.Negotiate([]KV{{"MaxBurstLength", "1024"}, {"HeaderDigest", "None"}, {"InitialR2T", "Yes"}})
	want := []KV{{"MaxBurstLength", valIrrelevant}, {"HeaderDigest", "None"}, {"InitialR2T", valIrrelevant}}
	for i := range want {
		if out[i] != want[i] {
			t.Fatalf("discovery: %v, want %v", out, want)
		}
	}
	s = NewNegState(testOffer(), false, PhaseFullFeature)
	out = s.Negotiate([]KV{{"MaxBurstLength", "1024"}})
	if out[0].Value != valReject {
		t.Fatalf("leading-only key in FFP: %v", out)
	}
}

func TestNegotiateRepeatAndFinish(t *testing.T) {
	s := NewNegState(testOffer(), false, PhaseOperational)
	s.Negotiate([]KV{{"MaxBurstLength", "8192"}})
	out := s.Negotiate([]KV{{"MaxBurstLength", "65536"}})
	if out[0].Value != "8192" || s.Params.MaxBurstLength != 8192 {
		t.Fatalf("repeated offer changed the result: %v %d", out, s.Params.MaxBurstLength)
	}
	s.Negotiate([]KV{{"FirstBurstLength", "65536"}})
	if p := s.Finish(); p.FirstBurstLength != 8192 {
		t.Fatalf("FirstBurstLength %d not capped by MaxBurstLength", p.FirstBurstLength)
	}
}

func TestRFCDefaults(t *testing.T) {
	s := NewNegState(testOffer(), false, PhaseOperational)
	p := s.Finish()
	if !p.InitialR2T || !p.ImmediateData || p.MaxBurstLength != 262144 || p.FirstBurstLength != 65536 ||
		p.MaxRecvDSLInitiator != 8192 || p.MaxOutstandingR2T != 1 || p.HeaderDigest {
		t.Fatalf("defaults without negotiation: %+v", p)
	}
}

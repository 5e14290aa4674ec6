package iscsi

import (
	"bytes"
	"crypto/sha256"
	"fmt"
	"os"
	"path/filepath"
	"testing"
)

// The seed corpora in testdata/fuzz were produced from encoder output by
// TestWriteFuzzSeeds (ISCSI_WRITE_FUZZ_SEEDS=1 go test -run WriteFuzzSeeds).

func fuzzLimits(flags byte) Limits {
	return Limits{MaxDataSegment: 64 << 10, MaxAHS: MaxAHSLen, HeaderDigest: flags&1 != 0, DataDigest: flags&2 != 0}
}

func FuzzDecodePDU(f *testing.F) {
	for _, p := range samplePDUs() {
		b, _ := AppendPDU(nil, &p, false, false)
		f.Add(b, byte(0))
	}
	f.Fuzz(func(t *testing.T, b []byte, flags byte) {
		lim := fuzzLimits(flags)
		p, n, err := DecodePDU(b, lim)
		if err != nil {
			return
		}
		if n > len(b) || len(p.Data) > lim.MaxDataSegment || len(p.AHS) > lim.MaxAHS {
			t.Fatalf("decoded beyond bounds: n=%d data=%d ahs=%d", n, len(p.Data), len(p.AHS))
		}
		// Exercise the field decoders on whatever came in.
		parseAHS(p.AHS)
		decodeLUN(p.BHS.LUN())
		if p.BHS.Opcode() == OpTextReq || p.BHS.Opcode() == OpLoginReq {
			ParseText(p.Data)
		}
		// Re-encode and decode again: same header, AHS and data.
		enc, err := AppendPDU(nil, &p, lim.HeaderDigest, lim.DataDigest)
		if err != nil {
			t.Fatal(err)
		}
		q, m, err := DecodePDU(enc, lim)
		if err != nil || m != len(enc) {
			t.Fatalf("re-decode: n=%d err=%v", m, err)
		}
		if q.BHS != p.BHS || !bytes.Equal(q.AHS, p.AHS) || !bytes.Equal(q.Data, p.Data) {
			t.Fatal("re-encoded PDU differs")
		}
		// The input's bytes match the encoding except for padding,
		// which a sender may fill with anything.
		if !bytes.Equal(enc[:BHSLen], b[:BHSLen]) {
			t.Fatal("BHS changed on re-encode")
		}
	})
}

func FuzzParseText(f *testing.F) {
	f.Add(AppendText(nil, []KV{{"InitiatorName", testInit}, {"TargetName", testIQN}}))
	f.Fuzz(func(t *testing.T, b []byte) {
		kvs, err := ParseText(b)
		if err != nil {
			return
		}
		if len(kvs) > MaxKeys {
			t.Fatalf("%d keys", len(kvs))
		}
		again, err := ParseText(AppendText(nil, kvs))
		if err != nil || len(again) != len(kvs) {
			t.Fatalf("re-parse: %v", err)
		}
		for i := range kvs {
			if again[i] != kvs[i] {
				t.Fatalf("pair %d: %v != %v", i, again[i], kvs[i])
			}
		}
	})
}

func FuzzNegotiate(f *testing.F) {
	f.Add(AppendText(nil, fastKeys), false, false)
	f.Fuzz(func(t *testing.T, b []byte, discovery, ffp bool) {
		kvs, err := ParseText(b)
		if err != nil {
			return
		}
		phase := PhaseOperational
		if ffp {
			phase = PhaseFullFeature
		}
		o := testOffer()
		s := NewNegState(o, discovery, phase)
		out := s.Negotiate(kvs)
		offered := map[string]bool{}
		for _, kv := range kvs {
			offered[kv.Key] = true
		}
		for _, kv := range out {
			if !offered[kv.Key] {
				t.Fatalf("answered key %q nobody offered", kv.Key)
			}
		}
		p := s.Finish()
		switch {
		case p.MaxBurstLength > o.MaxBurstLength && p.MaxBurstLength != rfcDefaults().MaxBurstLength,
			p.FirstBurstLength > p.MaxBurstLength,
			p.MaxRecvDSLInitiator < 512 || p.MaxRecvDSLInitiator > maxNegotiatable,
			p.MaxOutstandingR2T < 1,
			p.ErrorRecoveryLevel != 0,
			p.MaxConnections != 1,
			!p.DataPDUInOrder || !p.DataSequenceInOrder:
			t.Fatalf("negotiated out of bounds: %+v", p)
		}
	})
}

// TestWriteFuzzSeeds regenerates testdata/fuzz from encoder output.
func TestWriteFuzzSeeds(t *testing.T) {
	if os.Getenv("ISCSI_WRITE_FUZZ_SEEDS") == "" {
		t.Skip("set ISCSI_WRITE_FUZZ_SEEDS=1 to regenerate the seed corpora")
	}
	write := func(target string, args ...string) {
		body := "go test fuzz v1\n"
		for _, a := range args {
			body += a + "\n"
		}
		dir := filepath.Join("testdata", "fuzz", target)
		if err := os.MkdirAll(dir, 0o755); err != nil {
			t.Fatal(err)
		}
		name := fmt.Sprintf("seed-%x", sha256.Sum256([]byte(body)))[:21]
		if err := os.WriteFile(filepath.Join(dir, name), []byte(body), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	lit := func(b []byte) string { return fmt.Sprintf("[]byte(%q)", b) }

	// PDUs: the samples, a login exchange, responses, with every digest mode.
	pdus := samplePDUs()
	var resp BHS
	resp.SetOpcode(OpSCSIResp, false)
	resp[1] = 0x82
	resp.setU32(offResidual, 512)
	pdus = append(pdus, PDU{BHS: resp, Data: append([]byte{0, 18}, senseInvalidField...)})
	var text BHS
	text.SetOpcode(OpTextReq, true)
	text[1] = 0x80
	text.setU32(offTTT, reservedTag)
	pdus = append(pdus, PDU{BHS: text, Data: AppendText(nil, []KV{{"SendTargets", "All"}})})
	var r2t BHS
	r2t.SetOpcode(OpR2T, false)
	r2t[1] = 0x80
	r2t.setU32(offResidual, 65536)
	pdus = append(pdus, PDU{BHS: r2t})
	for _, p := range pdus {
		for flags := byte(0); flags < 4; flags++ {
			b, err := AppendPDU(nil, &p, flags&1 != 0, flags&2 != 0)
			if err != nil {
				t.Fatal(err)
			}
			write("FuzzDecodePDU", lit(b), fmt.Sprintf("byte(%q)", rune(flags)))
		}
	}
	// Login texts as libiscsi and qemu send them.
	texts := [][]KV{
		{{"InitiatorName", testInit}, {"InitiatorAlias", "host"}, {"TargetName", testIQN}, {"SessionType", "Normal"},
			{"HeaderDigest", "None,CRC32C"}, {"DataDigest", "None"}, {"DefaultTime2Wait", "2"}, {"DefaultTime2Retain", "0"},
			{"IFMarker", "No"}, {"OFMarker", "No"}, {"ErrorRecoveryLevel", "0"}, {"InitialR2T", "No"}, {"ImmediateData", "Yes"},
			{"MaxBurstLength", "16776192"}, {"FirstBurstLength", "262144"}, {"MaxOutstandingR2T", "1"}, {"MaxConnections", "1"},
			{"DataPDUInOrder", "Yes"}, {"DataSequenceInOrder", "Yes"}, {"MaxRecvDataSegmentLength", "262144"}},
		{{"InitiatorName", testInit}, {"SessionType", "Discovery"}, {"AuthMethod", "CHAP,None"}},
		{{"CHAP_A", "5"}},
		{{"CHAP_N", "alice"}, {"CHAP_R", "0x0123456789abcdef0123456789abcdef"}, {"CHAP_I", "7"}, {"CHAP_C", "0b3q2+7w=="}},
		{{"SendTargets", "All"}},
		{{"X-com.example.k", "v"}, {"MaxRecvDataSegmentLength", "0x2000"}, {"TaskReporting", "FastAbort,RFC3720"}},
	}
	for _, kvs := range texts {
		b := AppendText(nil, kvs)
		write("FuzzParseText", lit(b))
		for _, d := range []bool{false, true} {
			for _, ffp := range []bool{false, true} {
				write("FuzzNegotiate", lit(b), fmt.Sprintf("bool(%v)", d), fmt.Sprintf("bool(%v)", ffp))
			}
		}
	}
}

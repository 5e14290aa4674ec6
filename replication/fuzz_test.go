package replication

import (
	"bytes"
	"errors"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"reflect"
	"testing"
)

var updateCorpus = flag.Bool("update-corpus", false, "rewrite testdata/fuzz seed corpora from encoder output")

// seedFrames is the FuzzDecodeFrame seed corpus: every sample message as
// a frame, plus a few damaged ones so the fuzzer starts near each check.
func seedFrames(t testing.TB) map[string][]byte {
	seeds := map[string][]byte{}
	for i, m := range sampleMessages() {
		f, err := AppendFrame(nil, uint64(i+1), 0, m)
		if err != nil {
			t.Fatal(err)
		}
		seeds[fmt.Sprintf("%02d-%v", i, m.Type())] = f
	}
	ping, _ := AppendFrame(nil, 1, 0, &Ping{Nonce: 1})
	seeds["bad-payload-crc"] = append(ping[:len(ping)-1:len(ping)-1], ping[len(ping)-1]^1)
	seeds["truncated"] = ping[:HeaderSize+3]
	seeds["unknown-type"] = reheader(ping, func(h []byte) { h[7] = 0xee })
	return seeds
}

// seedHandshakes is the FuzzDecodeHandshake seed corpus: payloads only.
func seedHandshakes(t testing.TB) map[string][]byte {
	hs := *sampleMessages()[0].(*Handshake)
	seeds := map[string][]byte{}
	add := func(name string, h Handshake) {
		p, err := h.Marshal(nil)
		if err != nil {
			t.Fatal(err)
		}
		seeds[name] = p
	}
	add("primary", hs)
	hs2 := hs
	hs2.NodeName, hs2.Role, hs2.Disk, hs2.Flags = "b", RoleSecondary, Inconsistent, 0
	hs2.GI = NewGenIDs()
	add("fresh-secondary", hs2)
	hs3 := hs
	hs3.NodeName = string(bytes.Repeat([]byte{'z'}, MaxNodeName))
	hs3.BlockSize, hs3.VolumeSize = MaxBlockSize, 1<<40
	add("max-name", hs3)
	return seeds
}

func corpusFile(data []byte) []byte {
	return fmt.Appendf(nil, "go test fuzz v1\n[]byte(%q)\n", data)
}

// TestFuzzSeedCorpus keeps testdata/fuzz in step with the encoder: run
// with -update-corpus to regenerate after a wire change.
func TestFuzzSeedCorpus(t *testing.T) {
	for target, seeds := range map[string]map[string][]byte{
		"FuzzDecodeFrame":     seedFrames(t),
		"FuzzDecodeHandshake": seedHandshakes(t),
	} {
		dir := filepath.Join("testdata", "fuzz", target)
		for name, data := range seeds {
			path := filepath.Join(dir, "seed-"+name)
			want := corpusFile(data)
			if *updateCorpus {
				if err := os.MkdirAll(dir, 0o755); err != nil {
					t.Fatal(err)
				}
				if err := os.WriteFile(path, want, 0o644); err != nil {
					t.Fatal(err)
				}
				continue
			}
			got, err := os.ReadFile(path)
			if err != nil || !bytes.Equal(got, want) {
				t.Errorf("%s is stale or missing (run go test -run TestFuzzSeedCorpus -update-corpus): %v", path, err)
			}
		}
	}
}

// FuzzDecodeFrame: Decode never panics or reads past the buffer, never
// returns a payload above MaxPayload, and whatever decodes and parses
// re-encodes to the same bytes.
func FuzzDecodeFrame(f *testing.F) {
	for _, s := range seedFrames(f) {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		fr, n, err := Decode(data)
		if err != nil {
			if fr.Payload != nil || n != 0 {
				t.Fatalf("error %v with n=%d", err, n)
			}
			return
		}
		if n > len(data) || n != HeaderSize+len(fr.Payload) || len(fr.Payload) > MaxPayload {
			t.Fatalf("n=%d len=%d payload=%d", n, len(data), len(fr.Payload))
		}
		// ReadFrame agrees with Decode.
		rf, _, rerr := ReadFrame(bytes.NewReader(data), MaxPayload, nil)
		if rerr != nil || !reflect.DeepEqual(rf.Header, fr.Header) || !bytes.Equal(rf.Payload, fr.Payload) {
			t.Fatalf("ReadFrame disagrees: %v", rerr)
		}
		m, err := ParseMessage(fr)
		if err != nil {
			if !errors.Is(err, ErrMalformed) {
				t.Fatalf("parse error not ErrMalformed: %v", err)
			}
			return
		}
		again, err := AppendFrame(nil, fr.Seq, fr.Flags, m)
		if err != nil {
			t.Fatalf("re-encode %v: %v", fr.Type, err)
		}
		if !bytes.Equal(again, data[:n]) {
			t.Fatalf("%v: re-encoding differs", fr.Type)
		}
	})
}

// FuzzDecodeHandshake: Unmarshal never panics, accepted payloads satisfy
// every documented bound and re-marshal to the same bytes.
func FuzzDecodeHandshake(f *testing.F) {
	for _, s := range seedHandshakes(f) {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		var h Handshake
		if err := h.Unmarshal(data); err != nil {
			if !errors.Is(err, ErrMalformed) {
				t.Fatalf("error not ErrMalformed: %v", err)
			}
			return
		}
		if len(h.NodeName) == 0 || len(h.NodeName) > MaxNodeName || !h.Disk.Valid() || !h.Role.Valid() ||
			h.MinProto == 0 || h.MinProto > h.MaxProto || h.BlockSize < MinBlockSize || h.BlockSize > MaxBlockSize {
			t.Fatalf("accepted out-of-bounds handshake %+v", h)
		}
		again, err := h.Marshal(nil)
		if err != nil || !bytes.Equal(again, data) {
			t.Fatalf("re-marshal: %v", err)
		}
	})
}

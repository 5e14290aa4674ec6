package blockdev

import (
	"encoding/json"
	"regexp"
	"strings"
	"testing"
)

func TestUUIDRoundTrip(t *testing.T) {
	form := regexp.MustCompile(`^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$`)
	seen := map[UUID]bool{}
	for range 100 {
		u := NewUUID()
		if seen[u] || u.IsZero() {
			t.Fatalf("NewUUID repeated or returned zero: %v", u)
		}
		seen[u] = true
		s := u.String()
		if !form.MatchString(s) {
			t.Fatalf("%q is not a version 4 UUID in 8-4-4-4-12 form", s)
		}
		for _, in := range []string{s, strings.ToUpper(s)} {
			v, err := ParseUUID(in)
			if err != nil || v != u {
				t.Fatalf("ParseUUID(%q) = %v, %v; want %v", in, v, err, u)
			}
		}
	}
}

func TestParseUUIDKnown(t *testing.T) {
	u, err := ParseUUID("00112233-4455-6677-8899-aabbccddeeff")
	if err != nil {
		t.Fatal(err)
	}
	want := UUID{0x00, 0x11, 0x22, 0x33, 0x44, 0x55, 0x66, 0x77, 0x88, 0x99, 0xaa, 0xbb, 0xcc, 0xdd, 0xee, 0xff}
	if u != want {
		t.Errorf("got %x, want %x", u, want)
	}
}

func TestParseUUIDRejects(t *testing.T) {
	for _, s := range []string{
		"",
		"00112233445566778899aabbccddeeff",
		"00112233-4455-6677-8899-aabbccddeef",
		"00112233-4455-6677-8899-aabbccddeeff0",
		"00112233_4455-6677-8899-aabbccddeeff",
		"0011223g-4455-6677-8899-aabbccddeeff",
		"{00112233-4455-6677-8899-aabbccddeef}",
	} {
		if u, err := ParseUUID(s); err == nil {
			t.Errorf("ParseUUID(%q) = %v, want an error", s, u)
		}
	}
}

func TestUUIDJSON(t *testing.T) {
	type cfg struct{ Volume UUID }
	in := cfg{NewUUID()}
	b, err := json.Marshal(in)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(b), in.Volume.String()) {
		t.Errorf("JSON %s does not hold the text form", b)
	}
	var out cfg
	if err := json.Unmarshal(b, &out); err != nil || out != in {
		t.Errorf("round trip: %v, %v", out, err)
	}
	if err := json.Unmarshal([]byte(`{"Volume":"nope"}`), &out); err == nil {
		t.Error("bad UUID accepted")
	}
}

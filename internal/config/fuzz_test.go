package config

import (
	"bytes"
	"os"
	"reflect"
	"strings"
	"testing"
)

// FuzzParse: Parse never panics, and what it accepts formats to a file
// that parses back to the same Resource.
func FuzzParse(f *testing.F) {
	if ex, err := os.ReadFile(examplePath); err == nil {
		f.Add(string(ex))
	}
	f.Add(good)
	f.Add("resource r0 { node a { address a:1; backing /a } node b { address b:1; backing \"/b c\" } }")
	f.Fuzz(func(t *testing.T, src string) {
		r, err := Parse(strings.NewReader(src), "f")
		if err != nil {
			return
		}
		var buf bytes.Buffer
		if err := r.Format(&buf); err != nil {
			t.Fatal(err)
		}
		back, err := Parse(&buf, "f")
		if err != nil {
			t.Fatalf("formatted file does not parse: %v\n%s", err, buf.String())
		}
		if !reflect.DeepEqual(strip(back), strip(r)) {
			t.Fatalf("round trip\n%+v\nwant\n%+v", strip(back), strip(r))
		}
	})
}

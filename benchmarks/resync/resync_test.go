package main

import (
	"bytes"
	"fmt"
	"math/rand/v2"
	"strings"
	"testing"
)

func TestInsertSection(t *testing.T) {
	run1, run2 := "### run 1\n\nnumbers 1\n\n", "### run 2\n\nnumbers 2\n\n"
	other := "# Target benchmark\n\ntable\n"
	// Absent: a new section at the end, other text untouched.
	doc := insertSection(other, run1)
	if want := other + "\n" + resultsHeader + "\n\n" + run1; doc != want {
		t.Fatalf("new section:\n%q\nwant\n%q", doc, want)
	}
	// Present and last: appended after run 1.
	doc2 := insertSection(doc, run2)
	if want := doc + run2; doc2 != want {
		t.Fatalf("second run:\n%q\nwant\n%q", doc2, want)
	}
	// Someone added a section after ours: our run goes before it.
	later := "## Someone else's section\n\ntheirs\n"
	doc3 := insertSection(doc+later, run2)
	if want := doc + run2 + later; doc3 != want {
		t.Fatalf("before a later section:\n%q\nwant\n%q", doc3, want)
	}
}

func TestWritePlan(t *testing.T) {
	const size = 4 << 30
	set := newBlockSet(size)
	rng := rand.New(rand.NewPCG(1, 2))
	cmds := writePlan(size, 100<<20, 0x11, rng, set)
	var total int64
	for _, c := range cmds {
		var pat, off, n int64
		if _, err := fmtSscan(c, &pat, &off, &n); err != nil {
			t.Fatalf("%q: %v", c, err)
		}
		if off < 0 || off+n > size || off%4096 != 0 {
			t.Fatalf("%q out of the volume or unaligned", c)
		}
		if off < loadOff+loadLen && off+n > loadOff {
			t.Fatalf("%q overlaps the load region", c)
		}
		total += n
	}
	if total != 100<<20 {
		t.Fatalf("plan writes %d bytes, want %d", total, 100<<20)
	}
	// Random 4 KiB writes may land on each other or on the 1 MiB ones:
	// the set counts each block once.
	if got := set.bytes(); got > total || got < total-(10<<20) {
		t.Fatalf("set holds %d bytes for %d written", got, total)
	}
}

func TestDiffBlocks(t *testing.T) {
	a := bytes.Repeat([]byte{7}, 20<<20)
	b := bytes.Clone(a)
	if n, err := diffBlocks(bytes.NewReader(a), bytes.NewReader(b), int64(len(a))); err != nil || n != 0 {
		t.Fatalf("equal: %d %v", n, err)
	}
	b[5] = 0
	b[9<<20+4095] = 0
	b[9<<20+4096] = 0
	if n, err := diffBlocks(bytes.NewReader(a), bytes.NewReader(b), int64(len(a))); err != nil || n != 3 {
		t.Fatalf("3 blocks changed: got %d %v", n, err)
	}
}

func TestOptionsValidate(t *testing.T) {
	for _, tc := range []struct {
		size, write, err string
	}{
		{"4G", "100M", ""},
		{"4G", "100K", "multiple of 1 MiB"},
		{"100M", "10M", "multiple of 64 MiB"},
		{"128M", "100M", "at most half"},
	} {
		o := options{size: tc.size, write: tc.write, loadTime: 1, timeout: 1}
		err := o.validate()
		if (err == nil) != (tc.err == "") || err != nil && !strings.Contains(err.Error(), tc.err) {
			t.Errorf("size %s write %s: %v, want %q", tc.size, tc.write, err, tc.err)
		}
	}
}

// fmtSscan parses "write -P 0xPAT OFF LEN".
func fmtSscan(c string, pat, off, n *int64) (int, error) {
	return fmt.Sscanf(c, "write -P 0x%x %d %d", pat, off, n)
}

package units

import "testing"

func TestParseSize(t *testing.T) {
	for in, want := range map[string]int64{
		"1G": 1 << 30, "256MiB": 256 << 20, "4096": 4096, "1.5g": 3 << 29,
		"64k": 64 << 10, "512B": 512, " 2T ": 2 << 40, "4GiB": 4 << 30,
	} {
		if got, err := ParseSize(in); err != nil || got != want {
			t.Errorf("ParseSize(%q) = %v, %v; want %v", in, got, err, want)
		}
	}
	for _, in := range []string{"", "x", "-1G", "0", "1.3", "NaN", "1e30T", "4Q"} {
		if got, err := ParseSize(in); err == nil {
			t.Errorf("ParseSize(%q) = %d, want an error", in, got)
		}
	}
}

func TestFormatSize(t *testing.T) {
	for n, want := range map[int64]string{1 << 30: "1 GiB", 3 << 20: "3 MiB", 1536: "1536 bytes", 4 << 40: "4 TiB", 1000: "1000 bytes"} {
		if got := FormatSize(n); got != want {
			t.Errorf("FormatSize(%d) = %q, want %q", n, got, want)
		}
	}
}

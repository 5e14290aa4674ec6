// Package units parses and formats byte sizes the way hablock's command
// line and benchmarks accept them.
package units

import (
	"fmt"
	"math"
	"strconv"
	"strings"
)

// ParseSize parses a byte count such as "4096", "512M", "4G", "4GiB" or
// "1.5T". Suffixes are binary (K = 1024) whether or not they carry "iB";
// "B" alone means bytes. This is the convention of dd, truncate and DRBD.
func ParseSize(s string) (int64, error) {
	orig := s
	s = strings.TrimSpace(s)
	if s == "" {
		return 0, fmt.Errorf("empty size")
	}
	upper := strings.ToUpper(s)
	upper = strings.TrimSuffix(upper, "IB")
	upper = strings.TrimSuffix(upper, "B")
	mult := float64(1)
	if n := len(upper); n > 0 {
		switch upper[n-1] {
		case 'K':
			mult = 1 << 10
		case 'M':
			mult = 1 << 20
		case 'G':
			mult = 1 << 30
		case 'T':
			mult = 1 << 40
		case 'P':
			mult = 1 << 50
		}
		if mult != 1 {
			upper = upper[:n-1]
		}
	}
	v, err := strconv.ParseFloat(strings.TrimSpace(upper), 64)
	if err != nil || math.IsNaN(v) || math.IsInf(v, 0) {
		return 0, fmt.Errorf("invalid size %q: want a number with an optional K, M, G, T suffix (e.g. 4G)", orig)
	}
	if v <= 0 {
		return 0, fmt.Errorf("invalid size %q: must be greater than zero", orig)
	}
	b := v * mult
	if b > math.MaxInt64/2 {
		return 0, fmt.Errorf("invalid size %q: too large", orig)
	}
	if b != math.Trunc(b) {
		return 0, fmt.Errorf("invalid size %q: not a whole number of bytes", orig)
	}
	return int64(b), nil
}

// FormatSize renders n bytes with the largest binary unit that divides it.
func FormatSize(n int64) string {
	units := []struct {
		suffix string
		size   int64
	}{{"TiB", 1 << 40}, {"GiB", 1 << 30}, {"MiB", 1 << 20}, {"KiB", 1 << 10}}
	for _, u := range units {
		if n >= u.size && n%u.size == 0 {
			return fmt.Sprintf("%d %s", n/u.size, u.suffix)
		}
	}
	return fmt.Sprintf("%d bytes", n)
}

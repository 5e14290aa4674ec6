package blockdev

import (
	"crypto/rand"
	"encoding/hex"
	"fmt"
)

// UUID is a volume's identity: chosen once when the volume is created and
// shared by every replica of it. It converts to [16]byte (scsi.LUConfig.UUID).
type UUID [16]byte

// NewUUID returns a random (version 4, RFC 9562) UUID from crypto/rand.
func NewUUID() UUID {
	var u UUID
	rand.Read(u[:])         // never fails since Go 1.24
	u[6] = u[6]&0x0f | 0x40 // version 4
	u[8] = u[8]&0x3f | 0x80 // variant 10
	return u
}

// ParseUUID parses the 36-character form xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx,
// in either case. It accepts any version and variant.
func ParseUUID(s string) (UUID, error) {
	var u UUID
	if len(s) != 36 || s[8] != '-' || s[13] != '-' || s[18] != '-' || s[23] != '-' {
		return u, fmt.Errorf("blockdev: invalid UUID %q: want the form xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx", s)
	}
	hexStr := s[0:8] + s[9:13] + s[14:18] + s[19:23] + s[24:36]
	if _, err := hex.Decode(u[:], []byte(hexStr)); err != nil {
		return UUID{}, fmt.Errorf("blockdev: invalid UUID %q: %w", s, err)
	}
	return u, nil
}

// String returns the lower-case 8-4-4-4-12 form.
func (u UUID) String() string {
	var b [36]byte
	hex.Encode(b[0:8], u[0:4])
	b[8] = '-'
	hex.Encode(b[9:13], u[4:6])
	b[13] = '-'
	hex.Encode(b[14:18], u[6:8])
	b[18] = '-'
	hex.Encode(b[19:23], u[8:10])
	b[23] = '-'
	hex.Encode(b[24:36], u[10:16])
	return string(b[:])
}

// IsZero reports whether u is the all-zero UUID, which never names a volume.
func (u UUID) IsZero() bool { return u == UUID{} }

// MarshalText implements encoding.TextMarshaler.
func (u UUID) MarshalText() ([]byte, error) { return []byte(u.String()), nil }

// UnmarshalText implements encoding.TextUnmarshaler.
func (u *UUID) UnmarshalText(b []byte) error {
	v, err := ParseUUID(string(b))
	if err != nil {
		return err
	}
	*u = v
	return nil
}

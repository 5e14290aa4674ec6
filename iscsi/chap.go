package iscsi

import (
	"bytes"
	"crypto/md5"
	"crypto/rand"
	"crypto/subtle"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"strings"
)

// ErrAuth: CHAP authentication failed. Login answers 0x0201.
var ErrAuth = errors.New("iscsi: authentication failed")

const (
	chapMD5          = "5" // CHAP_A value for MD5 (RFC 1994)
	chapChallengeLen = 16  // bytes of random challenge we send
	chapMaxBinary    = 1024
)

// chapStep is where a CHAP exchange stands.
type chapStep uint8

const (
	chapWantAlgorithm chapStep = iota // expecting CHAP_A
	chapWantResponse                  // sent CHAP_I/CHAP_C, expecting CHAP_N/CHAP_R
	chapDone                          // initiator authenticated (and us, if asked)
)

// chapState is one CHAP exchange on the target side (RFC 7143 12.1.3).
// It holds no I/O: feed it the initiator's keys, send back what it
// returns.
type chapState struct {
	cred      CHAPConfig
	step      chapStep
	id        byte
	challenge []byte
	rand      func([]byte) error // crypto/rand.Read; replaceable in tests
}

func newCHAPState(cred CHAPConfig) *chapState {
	return &chapState{cred: cred, rand: func(b []byte) error { _, err := rand.Read(b); return err }}
}

// handle consumes the CHAP_* keys of one Login Request.
func (c *chapState) handle(keys map[string]string) ([]KV, error) {
	switch c.step {
	case chapWantAlgorithm:
		alg, ok := keys["CHAP_A"]
		if !ok {
			return nil, nil // AuthMethod only so far
		}
		if _, ok := pickFromList(alg, []string{chapMD5}); !ok {
			return []KV{{"CHAP_A", valReject}}, fmt.Errorf("%w: CHAP_A=%q has no MD5", ErrAuth, alg)
		}
		var b [1 + chapChallengeLen]byte
		if err := c.rand(b[:]); err != nil {
			return nil, fmt.Errorf("%w: random challenge: %v", ErrAuth, err)
		}
		c.id, c.challenge = b[0], append([]byte(nil), b[1:]...)
		c.step = chapWantResponse
		return []KV{
			{"CHAP_A", chapMD5},
			{"CHAP_I", fmt.Sprint(c.id)},
			{"CHAP_C", "0x" + hex.EncodeToString(c.challenge)},
		}, nil
	case chapWantResponse:
		name, okN := keys["CHAP_N"]
		resp, okR := keys["CHAP_R"]
		if !okN || !okR {
			return nil, fmt.Errorf("%w: CHAP_N/CHAP_R missing", ErrAuth)
		}
		r, err := decodeBinary(resp)
		if err != nil {
			return nil, fmt.Errorf("%w: CHAP_R: %v", ErrAuth, err)
		}
		want := chapResponse(c.id, c.cred.Secret, c.challenge)
		nameOK := subtle.ConstantTimeCompare([]byte(name), []byte(c.cred.User)) == 1
		if !nameOK || subtle.ConstantTimeCompare(r, want[:]) != 1 {
			return nil, fmt.Errorf("%w: wrong CHAP_N or CHAP_R for user %q", ErrAuth, name)
		}
		idStr, okI := keys["CHAP_I"]
		chal, okC := keys["CHAP_C"]
		if !okI && !okC {
			c.step = chapDone
			return nil, nil
		}
		// Mutual CHAP: the initiator authenticates us.
		if !okI || !okC {
			return nil, fmt.Errorf("%w: mutual CHAP needs both CHAP_I and CHAP_C", ErrAuth)
		}
		if c.cred.MutualSecret == "" {
			return nil, fmt.Errorf("%w: initiator asked for mutual CHAP, none configured", ErrAuth)
		}
		id, ok := parseNumber(idStr, 0, 255)
		if !ok {
			return nil, fmt.Errorf("%w: CHAP_I=%q", ErrAuth, idStr)
		}
		ic, err := decodeBinary(chal)
		if err != nil || len(ic) == 0 {
			return nil, fmt.Errorf("%w: CHAP_C: %v", ErrAuth, err)
		}
		if bytes.Equal(ic, c.challenge) {
			return nil, fmt.Errorf("%w: initiator reflected our challenge", ErrAuth)
		}
		ans := chapResponse(byte(id), c.cred.MutualSecret, ic)
		c.step = chapDone
		return []KV{
			{"CHAP_N", c.cred.MutualUser},
			{"CHAP_R", "0x" + hex.EncodeToString(ans[:])},
		}, nil
	}
	return nil, fmt.Errorf("%w: CHAP keys after authentication", ErrAuth)
}

// chapResponse is MD5(id || secret || challenge) (RFC 1994 4.1).
func chapResponse(id byte, secret string, challenge []byte) [md5.Size]byte {
	h := md5.New()
	h.Write([]byte{id})
	h.Write([]byte(secret))
	h.Write(challenge)
	var out [md5.Size]byte
	h.Sum(out[:0])
	return out
}

// decodeBinary decodes an RFC 7143 5.1 binary value: 0x-hex or 0b-base64.
func decodeBinary(v string) ([]byte, error) {
	if len(v) < 3 {
		return nil, errors.New("binary value too short")
	}
	var b []byte
	var err error
	switch strings.ToLower(v[:2]) {
	case "0x":
		s := v[2:]
		if len(s)%2 == 1 {
			s = "0" + s
		}
		b, err = hex.DecodeString(s)
	case "0b":
		b, err = base64.StdEncoding.DecodeString(v[2:])
	default:
		return nil, errors.New("binary value needs a 0x or 0b prefix")
	}
	if err != nil {
		return nil, err
	}
	if len(b) > chapMaxBinary {
		return nil, fmt.Errorf("binary value of %d bytes", len(b))
	}
	return b, nil
}

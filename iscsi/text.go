package iscsi

import (
	"bytes"
	"errors"
	"fmt"
	"strconv"
	"strings"
)

// Text-key limits (RFC 7143 6.1: key names up to 63 bytes; values up to
// 255 bytes except binary CHAP values, which we allow up to 8192 bytes so
// a 1024-byte challenge in hex fits).
const (
	MaxKeyLen       = 63
	MaxValueLen     = 8192
	MaxKeys         = 256
	MaxTextLen      = 64 << 10 // total across C-bit continuations
	defaultMRDSL    = 8192     // RFC default MaxRecvDataSegmentLength
	maxNegotiatable = 1<<24 - 1
)

// ErrText: a text segment violates the key=value\0 syntax or its bounds.
var ErrText = errors.New("iscsi: malformed text segment")

// Special values (RFC 7143 6.2).
const (
	valNotUnderstood = "NotUnderstood"
	valIrrelevant    = "Irrelevant"
	valReject        = "Reject"
)

// KV is one key=value pair in the order it appeared.
type KV struct{ Key, Value string }

// ParseText splits a text data segment into key=value pairs. Every pair
// must end with NUL; trailing NUL padding is tolerated. Pure and bounded:
// at most MaxKeys pairs, keys of 1..MaxKeyLen bytes from the RFC's
// character set, values of at most MaxValueLen bytes.
func ParseText(b []byte) ([]KV, error) {
	if len(b) > MaxTextLen {
		return nil, fmt.Errorf("%w: %d bytes > %d", ErrText, len(b), MaxTextLen)
	}
	var out []KV
	for len(b) > 0 {
		if b[0] == 0 { // padding or an empty pair: skip
			b = b[1:]
			continue
		}
		end := bytes.IndexByte(b, 0)
		if end < 0 {
			return nil, fmt.Errorf("%w: pair not NUL-terminated", ErrText)
		}
		pair := b[:end]
		b = b[end+1:]
		eq := bytes.IndexByte(pair, '=')
		if eq < 0 {
			return nil, fmt.Errorf("%w: pair without '='", ErrText)
		}
		k, v := pair[:eq], pair[eq+1:]
		if len(k) == 0 || len(k) > MaxKeyLen || !validKey(k) {
			return nil, fmt.Errorf("%w: bad key %.70q", ErrText, k)
		}
		if len(v) > MaxValueLen {
			return nil, fmt.Errorf("%w: value of %s is %d bytes", ErrText, k, len(v))
		}
		if len(out) == MaxKeys {
			return nil, fmt.Errorf("%w: more than %d keys", ErrText, MaxKeys)
		}
		out = append(out, KV{string(k), string(v)})
	}
	return out, nil
}

func validKey(k []byte) bool {
	for _, c := range k {
		switch {
		case c >= 'a' && c <= 'z', c >= 'A' && c <= 'Z', c >= '0' && c <= '9':
		case c == '.', c == '-', c == '+', c == '@', c == '_':
		default:
			return false
		}
	}
	return true
}

// AppendText encodes pairs as key=value\0.
func AppendText(dst []byte, kvs []KV) []byte {
	for _, kv := range kvs {
		dst = append(dst, kv.Key...)
		dst = append(dst, '=')
		dst = append(dst, kv.Value...)
		dst = append(dst, 0)
	}
	return dst
}

// Params are the operational parameters of a session and connection, as
// negotiated. The zero value is not meaningful; start from rfcDefaults.
type Params struct {
	HeaderDigest, DataDigest bool
	// MaxRecvDSLInitiator is what the initiator declared it can receive:
	// the largest data segment we may send. MaxRecvDSLTarget is what we
	// declared (the bound of our reader).
	MaxRecvDSLInitiator, MaxRecvDSLTarget uint32
	MaxBurstLength, FirstBurstLength      uint32
	ImmediateData, InitialR2T             bool
	MaxOutstandingR2T                     uint32
	DataPDUInOrder, DataSequenceInOrder   bool
	ErrorRecoveryLevel                    uint32
	DefaultTime2Wait, DefaultTime2Retain  uint32
	MaxConnections                        uint32
}

// rfcDefaults are the values in force for keys nobody negotiates
// (RFC 7143 section 13).
func rfcDefaults() Params {
	return Params{
		MaxRecvDSLInitiator: defaultMRDSL, MaxRecvDSLTarget: defaultMRDSL,
		MaxBurstLength: 262144, FirstBurstLength: 65536,
		ImmediateData: true, InitialR2T: true,
		MaxOutstandingR2T: 1, DataPDUInOrder: true, DataSequenceInOrder: true,
		DefaultTime2Wait: 2, DefaultTime2Retain: 20, MaxConnections: 1,
	}
}

// Offer is what the target is willing to accept: the value it would pick
// for each key if it had the choice (RFC 7143 6.2.2).
type Offer struct {
	HeaderDigests, DataDigests       []string // acceptable, e.g. CRC32C, None
	MaxRecvDSL                       uint32
	MaxBurstLength, FirstBurstLength uint32
	ImmediateData, InitialR2T        bool
	MaxOutstandingR2T                uint32
	DefaultTime2Wait                 uint32
	DefaultTime2Retain               uint32
}

// keyKind is how a key's result is computed.
type keyKind uint8

const (
	kindMin      keyKind = iota // numeric, result = min
	kindMax                     // numeric, result = max
	kindAnd                     // boolean AND
	kindOr                      // boolean OR
	kindList                    // first of the offer's list we accept
	kindDeclare                 // declarative: recorded, not answered
	kindDeclareN                // declarative number (MaxRecvDataSegmentLength)
)

type keyRule struct {
	kind      keyKind
	lo, hi    uint64
	leadingOp bool // LO: only during the login's operational stage
	discovery bool // relevant in discovery sessions
}

// keyRules lists the operational keys the negotiator answers. Keys that
// login handles itself (names, SessionType, AuthMethod, CHAP_*) are not
// here; they reach Negotiate only by mistake and are answered Irrelevant.
var keyRules = map[string]keyRule{
	"HeaderDigest":             {kind: kindList, discovery: true},
	"DataDigest":               {kind: kindList, discovery: true},
	"MaxConnections":           {kind: kindMin, lo: 1, hi: 65535, leadingOp: true},
	"InitialR2T":               {kind: kindOr, leadingOp: true},
	"ImmediateData":            {kind: kindAnd, leadingOp: true},
	"MaxRecvDataSegmentLength": {kind: kindDeclareN, lo: 512, hi: maxNegotiatable, discovery: true},
	"MaxBurstLength":           {kind: kindMin, lo: 512, hi: maxNegotiatable, leadingOp: true},
	"FirstBurstLength":         {kind: kindMin, lo: 512, hi: maxNegotiatable, leadingOp: true},
	"DefaultTime2Wait":         {kind: kindMax, lo: 0, hi: 3600, leadingOp: true, discovery: true},
	"DefaultTime2Retain":       {kind: kindMin, lo: 0, hi: 3600, leadingOp: true, discovery: true},
	"MaxOutstandingR2T":        {kind: kindMin, lo: 1, hi: 65535, leadingOp: true},
	"DataPDUInOrder":           {kind: kindOr, leadingOp: true},
	"DataSequenceInOrder":      {kind: kindOr, leadingOp: true},
	"ErrorRecoveryLevel":       {kind: kindMin, lo: 0, hi: 2, leadingOp: true, discovery: true},
	"InitiatorAlias":           {kind: kindDeclare, discovery: true},
	"TaskReporting":            {kind: kindList, leadingOp: true},
	"iSCSIProtocolLevel":       {kind: kindMin, lo: 0, hi: 31, leadingOp: true, discovery: true},
	// RFC 3720 markers, obsolete in RFC 7143; initiators still offer
	// them. We never use markers.
	"IFMarker":  {kind: kindAnd, leadingOp: true, discovery: true},
	"OFMarker":  {kind: kindAnd, leadingOp: true, discovery: true},
	"IFMarkInt": {kind: kindDeclare, leadingOp: true, discovery: true},
	"OFMarkInt": {kind: kindDeclare, leadingOp: true, discovery: true},
}

// Names handled by login/text code rather than the negotiator.
var loginKeys = map[string]bool{
	"InitiatorName": true, "TargetName": true, "SessionType": true,
	"TargetAlias": true, "TargetAddress": true, "TargetPortalGroupTag": true,
	"AuthMethod": true, "SendTargets": true,
	"CHAP_A": true, "CHAP_I": true, "CHAP_C": true, "CHAP_N": true, "CHAP_R": true,
}

// NegPhase says where a negotiation happens, which decides whether
// leading-only keys are allowed.
type NegPhase uint8

const (
	PhaseOperational NegPhase = iota // login operational stage
	PhaseFullFeature                 // Text Request in full feature phase
)

// NegState is the negotiation of one login (or one text exchange).
type NegState struct {
	Offer     Offer
	Discovery bool
	Phase     NegPhase
	Params    Params
	// answered remembers keys already negotiated in this login, so a
	// repeated offer is answered with the same result.
	answered map[string]string
}

// NewNegState starts a negotiation from the RFC defaults.
func NewNegState(o Offer, discovery bool, phase NegPhase) *NegState {
	p := rfcDefaults()
	p.MaxRecvDSLTarget = o.MaxRecvDSL
	return &NegState{Offer: o, Discovery: discovery, Phase: phase, Params: p}
}

// Negotiate answers the initiator's offers, updating s.Params, and
// returns the response pairs in offer order. It is pure apart from s.
// Keys the negotiator does not know (including X- and X# extension keys)
// are answered NotUnderstood; keys that do not apply are answered
// Irrelevant; values out of range or of the wrong form are answered
// Reject (and the parameter keeps its current value).
func (s *NegState) Negotiate(offers []KV) []KV {
	if s.answered == nil {
		s.answered = make(map[string]string)
	}
	var out []KV
	for _, kv := range offers {
		if v, ok := s.negotiateOne(kv); ok {
			out = append(out, KV{kv.Key, v})
		}
	}
	return out
}

func (s *NegState) negotiateOne(kv KV) (string, bool) {
	switch kv.Value {
	case valNotUnderstood, valIrrelevant, valReject:
		return "", false // a reply to one of our offers; nothing to say
	}
	if prev, ok := s.answered[kv.Key]; ok {
		return prev, prev != ""
	}
	v, ok := s.decide(kv)
	if ok {
		s.answered[kv.Key] = v
	} else {
		s.answered[kv.Key] = ""
	}
	return v, ok
}

func (s *NegState) decide(kv KV) (string, bool) {
	rule, known := keyRules[kv.Key]
	if !known {
		if loginKeys[kv.Key] {
			return valIrrelevant, true
		}
		return valNotUnderstood, true
	}
	if rule.leadingOp && s.Phase == PhaseFullFeature {
		return valReject, true
	}
	if s.Discovery && !rule.discovery {
		return valIrrelevant, true
	}
	p := &s.Params
	o := &s.Offer
	switch rule.kind {
	case kindDeclare:
		return "", false
	case kindDeclareN:
		n, ok := parseNumber(kv.Value, rule.lo, rule.hi)
		if !ok {
			return valReject, true
		}
		p.MaxRecvDSLInitiator = uint32(n)
		return "", false
	case kindList:
		accept := o.HeaderDigests
		switch kv.Key {
		case "DataDigest":
			accept = o.DataDigests
		case "TaskReporting":
			// ResponseFence and FastAbort need semantics we do not
			// implement; RFC3720 (the default) is always acceptable.
			if c, ok := pickFromList(kv.Value, []string{"RFC3720"}); ok {
				return c, true
			}
			return valReject, true
		}
		choice, ok := pickFromList(kv.Value, accept)
		if !ok {
			return valReject, true
		}
		on := choice == "CRC32C"
		if kv.Key == "HeaderDigest" {
			p.HeaderDigest = on
		} else {
			p.DataDigest = on
		}
		return choice, true
	case kindAnd, kindOr:
		b, ok := parseBool(kv.Value)
		if !ok {
			return valReject, true
		}
		var ours bool
		switch kv.Key {
		case "ImmediateData":
			ours = o.ImmediateData
		case "InitialR2T":
			ours = o.InitialR2T
		case "DataPDUInOrder", "DataSequenceInOrder":
			ours = true // we require in-order data (ErrorRecoveryLevel 0)
		case "IFMarker", "OFMarker":
			ours = false
		}
		res := b && ours
		if rule.kind == kindOr {
			res = b || ours
		}
		switch kv.Key {
		case "ImmediateData":
			p.ImmediateData = res
		case "InitialR2T":
			p.InitialR2T = res
		case "DataPDUInOrder":
			p.DataPDUInOrder = res
		case "DataSequenceInOrder":
			p.DataSequenceInOrder = res
		}
		return formatBool(res), true
	case kindMin, kindMax:
		n, ok := parseNumber(kv.Value, rule.lo, rule.hi)
		if !ok {
			return valReject, true
		}
		var ours uint64
		switch kv.Key {
		case "MaxConnections":
			ours = 1
		case "MaxBurstLength":
			ours = uint64(o.MaxBurstLength)
		case "FirstBurstLength":
			ours = uint64(o.FirstBurstLength)
		case "DefaultTime2Wait":
			ours = uint64(o.DefaultTime2Wait)
		case "DefaultTime2Retain":
			ours = uint64(o.DefaultTime2Retain)
		case "MaxOutstandingR2T":
			ours = uint64(o.MaxOutstandingR2T)
		case "ErrorRecoveryLevel":
			ours = 0
		case "iSCSIProtocolLevel":
			ours = 1 // RFC 7143
		}
		res := min(n, ours)
		if rule.kind == kindMax {
			res = max(n, ours)
		}
		r := uint32(res)
		switch kv.Key {
		case "MaxConnections":
			p.MaxConnections = r
		case "MaxBurstLength":
			p.MaxBurstLength = r
		case "FirstBurstLength":
			p.FirstBurstLength = r
		case "DefaultTime2Wait":
			p.DefaultTime2Wait = r
		case "DefaultTime2Retain":
			p.DefaultTime2Retain = r
		case "MaxOutstandingR2T":
			p.MaxOutstandingR2T = r
		case "ErrorRecoveryLevel":
			p.ErrorRecoveryLevel = r
		}
		return strconv.FormatUint(res, 10), true
	}
	return valNotUnderstood, true
}

// Finish applies the cross-key rule of RFC 7143 13.14: FirstBurstLength
// may not exceed MaxBurstLength. Call once the login's operational stage
// is over.
func (s *NegState) Finish() Params {
	if s.Params.FirstBurstLength > s.Params.MaxBurstLength {
		s.Params.FirstBurstLength = s.Params.MaxBurstLength
	}
	return s.Params
}

// parseNumber accepts decimal, 0x-hex numbers (RFC 7143 5.1 numerical
// values) within [lo, hi].
func parseNumber(v string, lo, hi uint64) (uint64, bool) {
	if v == "" || len(v) > 20 {
		return 0, false
	}
	var n uint64
	var err error
	if strings.HasPrefix(v, "0x") || strings.HasPrefix(v, "0X") {
		n, err = strconv.ParseUint(v[2:], 16, 64)
	} else {
		n, err = strconv.ParseUint(v, 10, 64)
	}
	if err != nil || n < lo || n > hi {
		return 0, false
	}
	return n, true
}

func parseBool(v string) (bool, bool) {
	switch v {
	case "Yes":
		return true, true
	case "No":
		return false, true
	}
	return false, false
}

func formatBool(b bool) string {
	if b {
		return "Yes"
	}
	return "No"
}

// pickFromList returns the first value of the comma-separated offer that
// appears in accept (RFC 7143 6.2.1 list negotiation).
func pickFromList(offer string, accept []string) (string, bool) {
	for item := range strings.SplitSeq(offer, ",") {
		for _, a := range accept {
			if item == a {
				return a, true
			}
		}
	}
	return "", false
}

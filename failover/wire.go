package failover

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"
)

// The control channel's wire format. One frame per UDP datagram
// (heartbeats) and one request frame and one reply frame per TCP
// connection (votes, switchover promotes):
//
//	magic "HF" | version 1 | type 1 | length 2 (big endian) | payload
//
// The length is checked against MaxPayload before anything is read or
// allocated; every count and string inside is bounded (MaxNodes,
// MaxClients, MaxName, maxReason). Unknown versions and types are errors:
// a datagram is dropped, a TCP connection closed.
const (
	wireVersion = 1
	headerLen   = 6
	// MaxPayload keeps a heartbeat within one Ethernet frame.
	MaxPayload = 1400
	// MaxClients bounds the iSCSI connections one heartbeat carries; the
	// Primary sends its first MaxClients (a resource has a handful).
	MaxClients = 32
	maxReason  = 200
)

// ErrWire: a frame that does not decode.
var ErrWire = errors.New("failover: malformed control frame")

type msgType uint8

const (
	msgHeartbeat msgType = iota + 1
	msgVote
	msgVoteReply
	msgPromote
	msgPromoteReply
)

// Heartbeat is what every node sends every heartbeat-interval.
type Heartbeat struct {
	From    string
	Seq     uint64
	Record  Record
	Witness bool
	Facts   Facts  // zero from the witness
	Clients []Conn // the Primary's iSCSI connections, at most MaxClients
}

// VoteReply answers a VoteRequest; Record is the voter's record after
// the vote (so a refused proposer learns a newer epoch at once).
type VoteReply struct {
	Granted bool
	Reason  string
	Record  Record
}

// promoteRequest asks the target of a planned switchover to promote in
// Epoch (which it already agreed to) and tickle Clients.
type promoteRequest struct {
	From    string
	Epoch   uint64
	Clients []Conn
}

type promoteReply struct {
	OK     bool
	Reason string
}

type encoder struct{ b []byte }

func (e *encoder) u8(v uint8)   { e.b = append(e.b, v) }
func (e *encoder) u64(v uint64) { e.b = binary.BigEndian.AppendUint64(e.b, v) }
func (e *encoder) bool(v bool) {
	if v {
		e.u8(1)
	} else {
		e.u8(0)
	}
}
func (e *encoder) str(s string) {
	e.u8(uint8(len(s)))
	e.b = append(e.b, s...)
}
func (e *encoder) record(r Record) {
	e.u64(r.Epoch)
	e.str(r.Primary)
	e.u8(uint8(len(r.UpToDate)))
	for _, n := range r.UpToDate {
		e.str(n)
	}
}
func (e *encoder) addrPort(a netip.AddrPort) {
	b := a.Addr().AsSlice()
	e.u8(uint8(len(b)))
	e.b = append(e.b, b...)
	e.b = binary.BigEndian.AppendUint16(e.b, a.Port())
}
func (e *encoder) conns(cs []Conn) {
	e.u8(uint8(len(cs)))
	for _, c := range cs {
		e.addrPort(c.Client)
		e.addrPort(c.Server)
	}
}

type decoder struct {
	b   []byte
	err error
}

func (d *decoder) fail(format string, args ...any) {
	if d.err == nil {
		d.err = fmt.Errorf("%w: %s", ErrWire, fmt.Sprintf(format, args...))
	}
}
func (d *decoder) take(n int) []byte {
	if d.err != nil {
		return nil
	}
	if len(d.b) < n {
		d.fail("truncated")
		return nil
	}
	v := d.b[:n]
	d.b = d.b[n:]
	return v
}
func (d *decoder) u8() uint8 {
	if v := d.take(1); v != nil {
		return v[0]
	}
	return 0
}
func (d *decoder) u64() uint64 {
	if v := d.take(8); v != nil {
		return binary.BigEndian.Uint64(v)
	}
	return 0
}
func (d *decoder) bool() bool {
	switch v := d.u8(); v {
	case 0:
		return false
	case 1:
		return true
	default:
		d.fail("boolean %d", v)
		return false
	}
}
func (d *decoder) str(limit int) string {
	n := int(d.u8())
	if n > limit {
		d.fail("string of %d bytes, at most %d", n, limit)
		return ""
	}
	return string(d.take(n))
}
func (d *decoder) record() Record {
	var r Record
	r.Epoch = d.u64()
	r.Primary = d.str(MaxName)
	n := int(d.u8())
	if n > MaxNodes {
		d.fail("%d up-to-date nodes, at most %d", n, MaxNodes)
		return r
	}
	for range n {
		r.UpToDate = append(r.UpToDate, d.str(MaxName))
	}
	if d.err == nil {
		if err := r.Validate(); err != nil {
			d.fail("%v", err)
		}
	}
	return r
}
func (d *decoder) addrPort() netip.AddrPort {
	n := int(d.u8())
	if n != 4 && n != 16 {
		d.fail("address of %d bytes", n)
		return netip.AddrPort{}
	}
	a, _ := netip.AddrFromSlice(d.take(n))
	p := d.take(2)
	if p == nil {
		return netip.AddrPort{}
	}
	return netip.AddrPortFrom(a, binary.BigEndian.Uint16(p))
}
func (d *decoder) conns() []Conn {
	n := int(d.u8())
	if n > MaxClients {
		d.fail("%d client connections, at most %d", n, MaxClients)
		return nil
	}
	var cs []Conn
	for range n {
		cs = append(cs, Conn{Client: d.addrPort(), Server: d.addrPort()})
	}
	return cs
}

// encodeFrame encodes one message (a Heartbeat, VoteRequest, VoteReply,
// promoteRequest or promoteReply). It fails only on a message that breaks
// a bound (a caller's bug or an over-long reason, which is truncated).
func encodeFrame(msg any) ([]byte, error) {
	e := &encoder{b: make([]byte, headerLen, 256)}
	var t msgType
	checkNames := func(names ...string) error {
		for _, n := range names {
			if len(n) > MaxName {
				return fmt.Errorf("failover: name %q longer than %d bytes", n, MaxName)
			}
		}
		return nil
	}
	switch m := msg.(type) {
	case Heartbeat:
		t = msgHeartbeat
		if len(m.Clients) > MaxClients {
			m.Clients = m.Clients[:MaxClients]
		}
		if err := checkNames(m.From); err != nil {
			return nil, err
		}
		e.str(m.From)
		e.u64(m.Seq)
		e.record(m.Record)
		e.bool(m.Witness)
		f := m.Facts
		e.u8(uint8(f.Role))
		for _, b := range []bool{f.UpToDate, f.Connected, f.PeerUpToDate, f.Held, f.Suspended} {
			e.bool(b)
		}
		e.conns(m.Clients)
	case VoteRequest:
		t = msgVote
		if err := checkNames(m.From); err != nil {
			return nil, err
		}
		e.str(m.From)
		e.record(m.Proposal)
		e.bool(m.Force)
	case VoteReply:
		t = msgVoteReply
		e.bool(m.Granted)
		e.str(truncate(m.Reason))
		e.record(m.Record)
	case promoteRequest:
		t = msgPromote
		if len(m.Clients) > MaxClients {
			m.Clients = m.Clients[:MaxClients]
		}
		if err := checkNames(m.From); err != nil {
			return nil, err
		}
		e.str(m.From)
		e.u64(m.Epoch)
		e.conns(m.Clients)
	case promoteReply:
		t = msgPromoteReply
		e.bool(m.OK)
		e.str(truncate(m.Reason))
	default:
		return nil, fmt.Errorf("failover: cannot encode %T", msg)
	}
	n := len(e.b) - headerLen
	if n > MaxPayload {
		return nil, fmt.Errorf("failover: %T of %d bytes exceeds %d", msg, n, MaxPayload)
	}
	e.b[0], e.b[1], e.b[2], e.b[3] = 'H', 'F', wireVersion, byte(t)
	binary.BigEndian.PutUint16(e.b[4:6], uint16(n))
	return e.b, nil
}

func truncate(s string) string {
	if len(s) > maxReason {
		return s[:maxReason]
	}
	return s
}

// frameLen checks a header and returns the payload length that follows.
func frameLen(h []byte) (int, error) {
	if len(h) < headerLen {
		return 0, fmt.Errorf("%w: %d-byte header", ErrWire, len(h))
	}
	if h[0] != 'H' || h[1] != 'F' {
		return 0, fmt.Errorf("%w: bad magic %q", ErrWire, h[:2])
	}
	if h[2] != wireVersion {
		return 0, fmt.Errorf("%w: version %d, this build speaks %d", ErrWire, h[2], wireVersion)
	}
	n := int(binary.BigEndian.Uint16(h[4:6]))
	if n > MaxPayload {
		return 0, fmt.Errorf("%w: payload of %d bytes exceeds %d", ErrWire, n, MaxPayload)
	}
	return n, nil
}

// decodeFrame decodes one whole frame (header and payload, nothing
// after) into the message types encodeFrame takes.
func decodeFrame(b []byte) (any, error) {
	n, err := frameLen(b)
	if err != nil {
		return nil, err
	}
	if len(b) != headerLen+n {
		return nil, fmt.Errorf("%w: frame of %d bytes, header says %d", ErrWire, len(b), headerLen+n)
	}
	d := &decoder{b: b[headerLen:]}
	var msg any
	switch msgType(b[3]) {
	case msgHeartbeat:
		var m Heartbeat
		m.From = d.str(MaxName)
		m.Seq = d.u64()
		m.Record = d.record()
		m.Witness = d.bool()
		role := d.u8()
		if role > uint8(RolePrimary) {
			d.fail("role %d", role)
		}
		m.Facts.Role = Role(role)
		for _, p := range []*bool{&m.Facts.UpToDate, &m.Facts.Connected, &m.Facts.PeerUpToDate, &m.Facts.Held, &m.Facts.Suspended} {
			*p = d.bool()
		}
		m.Clients = d.conns()
		msg = m
	case msgVote:
		var m VoteRequest
		m.From = d.str(MaxName)
		m.Proposal = d.record()
		m.Force = d.bool()
		msg = m
	case msgVoteReply:
		var m VoteReply
		m.Granted = d.bool()
		m.Reason = d.str(maxReason)
		m.Record = d.record()
		msg = m
	case msgPromote:
		var m promoteRequest
		m.From = d.str(MaxName)
		m.Epoch = d.u64()
		m.Clients = d.conns()
		msg = m
	case msgPromoteReply:
		var m promoteReply
		m.OK = d.bool()
		m.Reason = d.str(maxReason)
		msg = m
	default:
		return nil, fmt.Errorf("%w: unknown message type %d", ErrWire, b[3])
	}
	if d.err == nil && len(d.b) != 0 {
		d.fail("%d trailing bytes", len(d.b))
	}
	if d.err != nil {
		return nil, d.err
	}
	return msg, nil
}

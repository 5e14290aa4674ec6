package replication

import (
	"errors"
	"fmt"
	"time"
)

// Protocol is the replication protocol: when a write is acknowledged to
// the initiator (see the package documentation).
type Protocol uint8

const (
	// ProtocolC: after the local write and the peer's WriteAck (written
	// on the peer's disk). The default.
	ProtocolC Protocol = iota
	// ProtocolB: after the local write and the peer's receipt ack.
	ProtocolB
	// ProtocolA: after the local write and queueing to the peer.
	ProtocolA
	numProtocols
)

var protocolNames = [...]string{"C", "B", "A"}

func (p Protocol) String() string { return enumName(protocolNames[:], uint8(p), "Protocol") }

// ErrInvalidConfig is returned (wrapped, naming the field) by
// Config.Validate.
var ErrInvalidConfig = errors.New("replication: invalid config")

// Config tunes the replication engine of one volume. Both nodes must use
// the same Protocol and BlockSize (checked in the handshake).
type Config struct {
	// Protocol says when a write completes (default ProtocolC, the zero
	// value: no acknowledged write is lost while either node survives).
	Protocol Protocol

	// BlockSize is the out-of-sync bitmap granularity in bytes (default
	// DefaultBlockSize, 4 KiB; zero means the default). Power of two in
	// [MinBlockSize, MaxBlockSize]; the volume size must be a multiple.
	BlockSize uint32

	// PingInterval is how often each side sends a Ping when idle
	// (default 1 s). DRBD uses 10 s; we run on low-latency LANs and want
	// a dead peer noticed in under two seconds so the initiator's I/O
	// stalls for at most that long before the volume goes degraded.
	PingInterval time.Duration
	// PingTimeout is how long past PingInterval the peer may stay silent
	// before it is declared dead (default 500 ms, as DRBD). A read
	// deadline of PingInterval+PingTimeout is set before every frame.
	PingTimeout time.Duration
	// Timeout bounds every network send, and KoCount x Timeout the age
	// of the oldest unacknowledged request (default 4 s; DRBD's
	// 'timeout' is 6 s). Past either the peer is considered dead and the
	// volume goes degraded.
	// Lower than DRBD because the SCSI initiators in front of us time
	// out commands after tens of seconds and must see a completion
	// well before that. Must exceed PingTimeout.
	Timeout time.Duration
	// KoCount is DRBD's ko-count: a peer that keeps the link alive (it
	// answers Pings) but leaves a request unacknowledged for KoCount x
	// Timeout is expelled: the link is dropped, the Primary goes on
	// degraded (recording writes in the bitmap) and reconnects as after
	// any failure. It bounds how long a dying peer disk can stall the
	// Primary's writes. Default 1; 0: never expel for a slow request
	// (a silent peer is still dropped by the ping deadline).
	KoCount int
	// HandshakeTimeout bounds the connect-time exchange (handshake,
	// bitmaps, sync UUID); new writes wait while it runs (default 2 s).
	HandshakeTimeout time.Duration

	// ConnectRetryMin and ConnectRetryMax bound the exponential backoff
	// between connection attempts in Run (defaults 100 ms and 5 s): fast
	// first retries for a blip, capped so a dead peer costs little.
	ConnectRetryMin time.Duration
	ConnectRetryMax time.Duration

	// MaxInflightWrites and MaxInflightBytes cap the replicated writes
	// in flight (waiting for the peer) by count and by bytes, like
	// etcd's inflights (defaults 256 and 64 MiB). WriteAt blocks while
	// the cap is reached; a write bigger than MaxInflightBytes is let
	// through alone. They also bound the secondary's concurrent appliers.
	// Under protocol A a write stops counting once queued; the send
	// queue (MaxInflightWrites+2*ResyncInflight+64 frames) bounds what
	// waits for the socket.
	MaxInflightWrites int
	MaxInflightBytes  int64

	// BarrierInterval is how often a write epoch is closed with a Barrier
	// under protocols A and B (default 20 ms). The peer's BarrierAck is
	// what tells the primary those writes reached the peer's disk; until
	// then they are marked out of sync if the link drops.
	BarrierInterval time.Duration

	// ResyncRate is the maximum resync bandwidth in bytes/s (default
	// 250 MiB/s: about a 10 GbE link's worth left for foreground I/O
	// on 25 GbE; set it near the slower of disk and link).
	ResyncRate int64
	// ResyncMinRate is the resync rate in bytes/s while foreground
	// writes are in flight and ResyncDynamic is on (default 32 MiB/s,
	// DRBD's c-min-rate idea): application I/O comes first, but resync
	// always progresses. Must be <= ResyncRate.
	ResyncMinRate int64
	// ResyncDynamic turns on the back-off to ResyncMinRate while
	// foreground writes are in flight (default true).
	ResyncDynamic bool
	// ResyncChunk is the largest range one ResyncData carries (default
	// MaxData, 1 MiB: fewer, larger requests; at most MaxData, a
	// multiple of BlockSize).
	ResyncChunk int
	// ResyncInflight caps unacknowledged ResyncData and VerifyRequest
	// messages (default 16): enough to fill a LAN pipe without building
	// a queue that delays foreground writes.
	ResyncInflight int

	// ResyncChecksums makes the sync source send a digest of each dirty
	// range first (ChecksumRequest); the target answers with its own
	// digest and only ranges that differ travel as data (DRBD's
	// csums-alg). Default false: it costs a read on both sides and a
	// round trip; turn it on when targets usually hold mostly the same
	// data (restored from a backup, or an over-approximated bitmap).
	ResyncChecksums bool

	// VerifyChunk is the range one VerifyRequest covers in online verify
	// (default 256 KiB, a multiple of BlockSize, at most MaxData). A
	// mismatching range is re-checked block by block.
	VerifyChunk int
	// VerifyAlgo is the digest online verify compares (DRBD's
	// verify-alg): ChecksumSHA256 (the default; zero means it) or
	// ChecksumCRC32C (cheaper, but one differing range in 2^32 goes
	// unnoticed). Checksum-based resync always uses SHA-256.
	VerifyAlgo ChecksumAlgo

	// SplitBrain is the automatic split-brain recovery policy (default:
	// always disconnect).
	SplitBrain SplitBrainPolicy

	// Fencing makes a Primary hold writes instead of going degraded while
	// it has no link to its peer and the peer is not known to be fenced
	// (DRBD's 'fencing resource-only' with suspended I/O). Default false:
	// a Primary that loses its peer keeps acknowledging writes alone, so
	// a peer promoted meanwhile (by an operator or a failover manager)
	// may lack writes the initiator saw completed. With it, a write is
	// acknowledged only once the peer has it or SetPeerFenced(true) says
	// the peer can no longer be promoted (a failover manager records it
	// outdated in a quorum first). See fence.go for the exact rules.
	// Meaningful with protocol C (and B, short of both nodes failing at
	// once): under protocol A a write completes once queued, before the
	// peer has it, so there is nothing left to hold when the link drops.
	Fencing bool
}

// DefaultConfig returns a Config with every field at its default.
func DefaultConfig() Config {
	return Config{
		Protocol:          ProtocolC,
		BlockSize:         DefaultBlockSize,
		PingInterval:      time.Second,
		PingTimeout:       500 * time.Millisecond,
		Timeout:           4 * time.Second,
		KoCount:           1,
		HandshakeTimeout:  2 * time.Second,
		ConnectRetryMin:   100 * time.Millisecond,
		ConnectRetryMax:   5 * time.Second,
		MaxInflightWrites: 256,
		MaxInflightBytes:  64 << 20,
		BarrierInterval:   20 * time.Millisecond,
		ResyncRate:        250 << 20,
		ResyncMinRate:     32 << 20,
		ResyncDynamic:     true,
		ResyncChunk:       MaxData,
		ResyncInflight:    16,
		VerifyChunk:       256 << 10,
	}
}

// Validate checks c without changing it; the error names the field.
func (c Config) Validate() error {
	bad := func(field string, format string, args ...any) error {
		return fmt.Errorf("%w: %s %s", ErrInvalidConfig, field, fmt.Sprintf(format, args...))
	}
	bs := c.BlockSize
	if bs == 0 {
		bs = DefaultBlockSize
	}
	switch {
	case c.Protocol >= numProtocols:
		return bad("Protocol", "%d unknown", c.Protocol)
	case bs < MinBlockSize || bs > MaxBlockSize || bs&(bs-1) != 0:
		return bad("BlockSize", "%d: want a power of two in [%d, %d]", bs, MinBlockSize, MaxBlockSize)
	case c.PingInterval <= 0:
		return bad("PingInterval", "%v must be > 0", c.PingInterval)
	case c.PingTimeout <= 0:
		return bad("PingTimeout", "%v must be > 0", c.PingTimeout)
	case c.Timeout <= c.PingTimeout:
		return bad("Timeout", "%v must exceed PingTimeout %v", c.Timeout, c.PingTimeout)
	case c.HandshakeTimeout <= 0:
		return bad("HandshakeTimeout", "%v must be > 0", c.HandshakeTimeout)
	case c.ConnectRetryMin <= 0:
		return bad("ConnectRetryMin", "%v must be > 0", c.ConnectRetryMin)
	case c.ConnectRetryMax < c.ConnectRetryMin:
		return bad("ConnectRetryMax", "%v below ConnectRetryMin %v", c.ConnectRetryMax, c.ConnectRetryMin)
	case c.MaxInflightWrites <= 0 || c.MaxInflightWrites > 1<<16:
		return bad("MaxInflightWrites", "%d not in 1..65536", c.MaxInflightWrites)
	case c.MaxInflightBytes < MaxData:
		return bad("MaxInflightBytes", "%d below MaxData %d", c.MaxInflightBytes, MaxData)
	case c.BarrierInterval <= 0:
		return bad("BarrierInterval", "%v must be > 0", c.BarrierInterval)
	case c.ResyncRate <= 0:
		return bad("ResyncRate", "%d must be > 0", c.ResyncRate)
	case c.ResyncMinRate <= 0 || c.ResyncMinRate > c.ResyncRate:
		return bad("ResyncMinRate", "%d not in 1..ResyncRate (%d)", c.ResyncMinRate, c.ResyncRate)
	case c.ResyncChunk <= 0 || c.ResyncChunk > MaxData || c.ResyncChunk%int(bs) != 0:
		return bad("ResyncChunk", "%d: want a multiple of BlockSize %d up to %d", c.ResyncChunk, bs, MaxData)
	case c.ResyncInflight <= 0 || c.ResyncInflight > 1024:
		return bad("ResyncInflight", "%d not in 1..1024", c.ResyncInflight)
	case c.VerifyChunk <= 0 || c.VerifyChunk > MaxData || c.VerifyChunk%int(bs) != 0:
		return bad("VerifyChunk", "%d: want a multiple of BlockSize %d up to %d", c.VerifyChunk, bs, MaxData)
	case c.KoCount < 0:
		return bad("KoCount", "%d is negative", c.KoCount)
	case c.VerifyAlgo != 0 && c.VerifyAlgo.Size() == 0:
		return bad("VerifyAlgo", "%d: want ChecksumSHA256 or ChecksumCRC32C", c.VerifyAlgo)
	}
	if err := c.SplitBrain.Validate(); err != nil {
		return fmt.Errorf("%w: SplitBrain: %w", ErrInvalidConfig, err)
	}
	return nil
}

func (c Config) blockSize() uint32 {
	if c.BlockSize == 0 {
		return DefaultBlockSize
	}
	return c.BlockSize
}

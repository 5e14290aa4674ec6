package config

import (
	"fmt"
	"net"
	"net/netip"
	"strconv"
	"strings"
	"time"
)

// Resource is one replicated volume: two disk nodes that mirror it, an
// optional witness for quorum, and how it is exported over iSCSI. Every
// node reads the same Resource; Node picks the local one.
type Resource struct {
	// Name identifies the resource in paths, logs and the default IQN.
	// Letters, digits, '.', '_' and '-', at most 64 bytes. Required.
	Name string
	// Size of the volume in bytes. Zero (the default): the size of the
	// smaller backing store, decided when the resource is first created,
	// as DRBD does. Set it to create sparse backing files or to leave
	// room on a larger device. Must be a multiple of BlockSize.
	Size int64
	// BlockSize is the logical block size in bytes reported to
	// initiators and the granularity of the out-of-sync bitmap: 512 (the
	// default: every initiator and file system accepts it) or 4096.
	BlockSize uint32
	// Protocol is the replication protocol: when a write is acknowledged
	// to the initiator (see package replication). Default C
	// (synchronous): no acknowledged write is lost while either node
	// survives. There is no zero value; it must be A, B or C.
	Protocol Protocol
	ISCSI    ISCSI
	Net      Net
	// Nodes are the two disk nodes, in file order. Exactly two.
	Nodes []Node
	// Witness is the diskless quorum node; nil when there is none (then
	// a node that loses its peer cannot tell a dead peer from a broken
	// link and will not take over on its own).
	Witness *Node
	// Failover tunes automatic failover: failure detection, quorum votes
	// and serf membership (see package failover).
	Failover Failover

	// file and pos record where each field was set, for errors; keys as
	// in Error.Field ("net.timeout", "node[n1].address", "" for the
	// resource header). Empty for a Resource built in code.
	file string
	pos  map[string]pos
}

// Protocol is a replication protocol letter.
type Protocol byte

const (
	ProtocolA Protocol = 'A' // asynchronous: acked once written locally and queued
	ProtocolB Protocol = 'B' // memory-synchronous: acked once the peer received it
	ProtocolC Protocol = 'C' // synchronous: acked once on both disks
)

func (p Protocol) String() string {
	if p >= ProtocolA && p <= ProtocolC {
		return string(rune(p))
	}
	return fmt.Sprintf("Protocol(%d)", byte(p))
}

// ISCSI says how the volume is exported. Only the Primary serves it.
type ISCSI struct {
	// IQN is the target name initiators log in to; the same on both nodes
	// so that a failover looks like a path that came back. Default
	// "iqn.2026-11.io.hablock:" + the resource name.
	IQN string
	// Listen is the TCP host:port the Primary accepts iSCSI connections
	// on. Default "0.0.0.0:3260" (all addresses, the iSCSI port), which
	// covers the VIP wherever it lands. An explicit host must be the VIP.
	Listen string
	// VIP is the floating address (with its prefix length) that the
	// Primary holds and initiators connect to. Zero (the default): no
	// VIP is managed; initiators must know both nodes' portals.
	VIP netip.Prefix
	// VIPInterface is the network interface the VIP is added to, e.g.
	// "eth0". Required with VIP, empty without it.
	VIPInterface string
}

// Net tunes the replication link between the two disk nodes. Both nodes
// must use the same values (they share this file).
type Net struct {
	// PingInterval: an idle link is probed with a Ping this often.
	// Default 1s: short enough that a dead peer is noticed in about a
	// second and a half, long enough to cost nothing. Must be positive.
	PingInterval time.Duration
	// PingTimeout: a Ping not answered within this declares the link
	// dead. Default 500ms: far above a LAN round trip, yet below
	// PingInterval (required, so at most one Ping is ever in flight).
	PingTimeout time.Duration
	// Timeout: a request (a replicated write, a resync read) not
	// answered within this triggers a Ping; no answer to that drops the
	// link. Default 6s, DRBD's, above a disk's worst ordinary latency.
	// Must be positive.
	Timeout time.Duration
	// KoCount: a peer that keeps answering Pings but leaves one request
	// unanswered for KoCount Timeouts is expelled (the link is dropped;
	// the Primary goes on degraded, recording writes in the bitmap, and
	// reconnects as after any failure), so a dying secondary disk cannot
	// stall the Primary forever. Default 4: 24s with the default Timeout,
	// inside the 30s after which Linux initiators fail a SCSI command
	// (DRBD's 7 would give 42s). Zero: never expel for a slow request.
	KoCount int
	// ConnectRetryMin and ConnectRetryMax bound the pause between
	// attempts to (re)connect to the peer: it starts at Min and doubles
	// up to Max. Defaults 1s and 10s: quick after a blip, cheap while
	// the peer is down for long. Both positive, Min <= Max.
	ConnectRetryMin time.Duration
	ConnectRetryMax time.Duration
	// AfterSB0Pri is the automatic split-brain recovery policy when
	// neither node is Primary at connect time: "disconnect" (the
	// default: never throw data away without an operator),
	// "discard-younger-primary", "discard-older-primary",
	// "discard-zero-changes", "discard-least-changes" or
	// "discard-node-NAME" with NAME one of the disk nodes.
	AfterSB0Pri string
	// AfterSB1Pri is the policy when exactly one node is Primary:
	// "disconnect" (the default), "consensus" or "discard-secondary".
	AfterSB1Pri string
	// ResyncRate caps resynchronisation traffic in bytes per second so
	// that application I/O keeps some of the link. Default 100 MiB/s
	// (DRBD's c-max-rate; about a 1 GbE link). Zero: unlimited.
	ResyncRate int64
	// VerifyAlg is the digest compared block by block by online verify:
	// "sha256" (the default: a 32-bit checksum would miss one differing
	// block in four billion, and verify exists to find them) or
	// "crc32c" (cheaper on CPUs without SHA instructions).
	VerifyAlg string
	// CsumsAlg turns on checksum-based resync (DRBD's csums-alg):
	// "sha256" makes the sync source send a digest of each range first
	// and the data only where the target's digest differs, which saves
	// the link when most blocks are equal (after a machine restart the
	// whole volume is resynced, most of it unchanged); "none" (the
	// default) sends the data of every out-of-sync block.
	CsumsAlg string
}

// Node is one member of the resource. A disk node has a Backing store;
// the witness has none.
type Node struct {
	// Name identifies the node (agent --node NAME) and is sent in the
	// replication handshake. Letters, digits, '.', '_' and '-', at most
	// 64 bytes. Required and unique.
	Name string
	// Address is the host:port this node listens on for its peers and
	// that they dial: replication for disk nodes, quorum for the
	// witness. Required and unique; the host may not be a wildcard.
	Address string
	// Backing is the absolute path of the file or block device holding
	// the data. Required for disk nodes; must be empty for the witness.
	Backing string
	// MetaDir is the absolute path of the directory holding metadata
	// (generation identifiers, the out-of-sync bitmap). Default
	// /var/lib/hablock/RESOURCE-NODE.
	MetaDir string
	// Admin is the absolute path of the Unix socket of the agent's admin
	// interface. Default /run/hablock/RESOURCE-NODE.sock.
	Admin string
	// Gossip is the host:port (UDP and TCP) of this node's serf
	// membership agent. Empty (the default): Address's host with
	// Address's port + 1 (see GossipAddress).
	Gossip string
	// Control is the host:port of this node's failover control channel:
	// heartbeats over UDP and quorum votes over TCP, both on this port.
	// Empty (the default): Address's host with Address's port + 2 (see
	// ControlAddress).
	Control string
}

// GossipAddress returns Gossip, or the default derived from Address
// (same host, port + 1); "" if Address is not host:port.
func (n Node) GossipAddress() string { return derivedAddr(n.Gossip, n.Address, 1) }

// ControlAddress returns Control, or the default derived from Address
// (same host, port + 2); "" if Address is not host:port.
func (n Node) ControlAddress() string { return derivedAddr(n.Control, n.Address, 2) }

func derivedAddr(explicit, address string, off int) string {
	if explicit != "" {
		return explicit
	}
	host, port, err := net.SplitHostPort(address)
	if err != nil {
		return ""
	}
	p, err := strconv.Atoi(port)
	if err != nil || p < 1 || p+off > 65535 {
		return ""
	}
	return net.JoinHostPort(host, strconv.Itoa(p+off))
}

// Failover tunes automatic failover. Every node of a resource must use
// the same values (they share this file). The timings trade detection
// speed against false failovers: heartbeat-timeout must exceed the worst
// round trip plus scheduling jitter between any two nodes, or a busy but
// healthy Primary is replaced.
type Failover struct {
	// HeartbeatInterval: every node sends a UDP heartbeat (its quorum
	// record, role and, from the Primary, the iSCSI client connections)
	// to every other node this often. Default 50ms. Must be positive.
	HeartbeatInterval time.Duration
	// HeartbeatTimeout: a node not heard for this long (and, for the
	// peer, with the replication link down) is presumed dead: the
	// Secondary asks to take over and the witness consents. Default
	// 300ms: six heartbeats, above the 20-50 ms of delay and jitter of a
	// loaded LAN. At least 3 x HeartbeatInterval.
	HeartbeatTimeout time.Duration
	// VoteTimeout bounds one quorum vote (dial, request, the voter's
	// wait of up to HeartbeatTimeout to confirm the Primary is silent,
	// answer). Default 1s. Must exceed HeartbeatTimeout.
	VoteTimeout time.Duration
	// AutoFailback names the disk node the Primary role returns to once
	// it has been connected and UpToDate for FailbackSettle (a planned
	// switchover). Empty (the default, written "none"): no failback.
	AutoFailback string
	// FailbackSettle is how long the preferred node must stay connected
	// and UpToDate before an automatic failback. Default 30s: a node that
	// just came back often goes again. Must be positive.
	FailbackSettle time.Duration

	// Serf (hashicorp/memberlist) timings: membership and the slower,
	// gossip-confirmed failure view. Defaults from measurements on this
	// project's machines: detection of a dead node in 0.8-1.0 s with no
	// false failures under full CPU load and 120-250 ms round trips
	// (memberlist's LAN defaults take 5-7 s; probe 100ms with multiplier
	// 2 flapped at a 100 ms round trip).

	// ProbeInterval: memberlist probes one random member this often.
	// Default 200ms. Must exceed the worst round trip.
	ProbeInterval time.Duration
	// ProbeTimeout: a direct probe unanswered this long is retried
	// indirectly. Default 100ms; below ProbeInterval.
	ProbeTimeout time.Duration
	// SuspicionMult scales how long a suspected member has to refute
	// before it is declared failed. Default 3. At least 1.
	SuspicionMult int
	// SuspicionMaxTimeoutMult caps the suspicion timeout at this multiple
	// of its minimum. Default 1 (no stretching in a 3-node cluster).
	// At least 1.
	SuspicionMaxTimeoutMult int
	// GossipInterval: gossip messages are flushed this often. Default
	// 50ms. Must be positive.
	GossipInterval time.Duration
	// ReconnectInterval: serf tries to rejoin a failed member this often.
	// Default 1s. Must be positive.
	ReconnectInterval time.Duration
}

// DefaultFailover returns the Failover defaults documented on its fields.
func DefaultFailover() Failover {
	return Failover{
		HeartbeatInterval:       50 * time.Millisecond,
		HeartbeatTimeout:        300 * time.Millisecond,
		VoteTimeout:             time.Second,
		FailbackSettle:          30 * time.Second,
		ProbeInterval:           200 * time.Millisecond,
		ProbeTimeout:            100 * time.Millisecond,
		SuspicionMult:           3,
		SuspicionMaxTimeoutMult: 1,
		GossipInterval:          50 * time.Millisecond,
		ReconnectInterval:       time.Second,
	}
}

// Defaults not derived from names.
const (
	DefaultBlockSize    = 512
	DefaultListen       = "0.0.0.0:3260"
	DefaultIQNPrefix    = "iqn.2026-11.io.hablock:"
	DefaultMetaDirRoot  = "/var/lib/hablock"
	DefaultAdminDirRoot = "/run/hablock"
)

// DefaultResource returns a Resource named name with every default set
// and no nodes: nodes have no defaults for address and backing. With two
// nodes added it validates.
func DefaultResource(name string) *Resource {
	return &Resource{
		Name:      name,
		BlockSize: DefaultBlockSize,
		Protocol:  ProtocolC,
		ISCSI:     ISCSI{IQN: DefaultIQNPrefix + strings.ToLower(name), Listen: DefaultListen},
		Net:       DefaultNet(),
		Failover:  DefaultFailover(),
	}
}

// DefaultNet returns the Net defaults documented on its fields.
func DefaultNet() Net {
	return Net{
		PingInterval:    time.Second,
		PingTimeout:     500 * time.Millisecond,
		Timeout:         6 * time.Second,
		KoCount:         4,
		ConnectRetryMin: time.Second,
		ConnectRetryMax: 10 * time.Second,
		AfterSB0Pri:     "disconnect",
		AfterSB1Pri:     "disconnect",
		ResyncRate:      100 << 20,
		VerifyAlg:       "sha256",
		CsumsAlg:        "none",
	}
}

// DefaultNode returns node name of resource res with the default
// MetaDir and Admin paths; Address and Backing are left empty.
func DefaultNode(res, name string) Node {
	base := res + "-" + name
	return Node{
		Name:    name,
		MetaDir: DefaultMetaDirRoot + "/" + base,
		Admin:   DefaultAdminDirRoot + "/" + base + ".sock",
	}
}

// Node returns the node (disk node or witness) called name, or an error
// listing the valid names.
func (r *Resource) Node(name string) (Node, error) {
	for _, n := range r.Nodes {
		if n.Name == name {
			return n, nil
		}
	}
	if r.Witness != nil && r.Witness.Name == name {
		return *r.Witness, nil
	}
	return Node{}, fmt.Errorf("resource %s has no node %q; valid names: %s", r.Name, name, strings.Join(r.names(), ", "))
}

// Peer returns the disk node other than name, which must be a disk node.
func (r *Resource) Peer(name string) (Node, error) {
	if len(r.Nodes) != 2 || (r.Nodes[0].Name != name && r.Nodes[1].Name != name) {
		var disk []string
		for _, n := range r.Nodes {
			disk = append(disk, n.Name)
		}
		return Node{}, fmt.Errorf("resource %s has no disk node %q; disk nodes: %s", r.Name, name, strings.Join(disk, ", "))
	}
	if r.Nodes[0].Name == name {
		return r.Nodes[1], nil
	}
	return r.Nodes[0], nil
}

// IsWitness reports whether name is the witness.
func (r *Resource) IsWitness(name string) bool { return r.Witness != nil && r.Witness.Name == name }

func (r *Resource) names() []string {
	var s []string
	for _, n := range r.Nodes {
		s = append(s, n.Name)
	}
	if r.Witness != nil {
		s = append(s, r.Witness.Name+" (witness)")
	}
	return s
}

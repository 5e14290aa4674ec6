package failover

import (
	"encoding/binary"
	"net"
	"net/netip"
)

// Ethernet and protocol constants used by the frame builders. They are
// spelled out here so the byte layouts below read like the RFCs.
const (
	etherTypeIPv4 = 0x0800
	etherTypeARP  = 0x0806
	etherTypeIPv6 = 0x86dd

	ethHeaderLen = 14
	arpLen       = 28 // ARP payload for Ethernet/IPv4 (RFC 826)
	ipv4HdrLen   = 20
	ipv6HdrLen   = 40
	tcpHdrLen    = 20

	protoTCP    = 6
	protoICMPv6 = 58

	icmpv6NeighborAdvert = 136
	ndOptTargetLLAddr    = 2
	naFlagOverride       = 0x20000000
)

var broadcastMAC = net.HardwareAddr{0xff, 0xff, 0xff, 0xff, 0xff, 0xff}

// allNodesMAC is the Ethernet multicast address of ff02::1 (RFC 2464 §7).
var allNodesMAC = net.HardwareAddr{0x33, 0x33, 0x00, 0x00, 0x00, 0x01}

var allNodesIPv6 = netip.MustParseAddr("ff02::1")

// garpFrame builds a broadcast ARP Announcement for ip owned by mac, as in
// RFC 5227 §2.3: an ARP request whose sender and target protocol addresses
// are both ip and whose target hardware address is zero. Linux treats such a
// request as gratuitous (arp_is_garp) and overrides an existing neighbour
// entry with the new MAC even inside its locktime; it never creates one.
//
// Layout (42 bytes):
//
//	 0  dst MAC ff:ff:ff:ff:ff:ff     6  src MAC          12  ethertype 0x0806
//	14  htype 1 (Ethernet)          16  ptype 0x0800     18  hlen 6   19  plen 4
//	20  oper 1 (request)            22  sha = mac        28  spa = ip
//	32  tha = 00:00:00:00:00:00     38  tpa = ip
//
// mac must be 6 bytes and ip an IPv4 address; otherwise garpFrame panics
// (callers validate both at construction).
func garpFrame(mac net.HardwareAddr, ip netip.Addr) []byte {
	if len(mac) != 6 || !ip.Is4() {
		panic("failover: garpFrame needs a 6-byte MAC and an IPv4 address")
	}
	b := make([]byte, ethHeaderLen+arpLen)
	copy(b[0:6], broadcastMAC)
	copy(b[6:12], mac)
	binary.BigEndian.PutUint16(b[12:14], etherTypeARP)
	a := b[ethHeaderLen:]
	binary.BigEndian.PutUint16(a[0:2], 1) // htype: Ethernet
	binary.BigEndian.PutUint16(a[2:4], etherTypeIPv4)
	a[4] = 6                              // hlen
	a[5] = 4                              // plen
	binary.BigEndian.PutUint16(a[6:8], 1) // oper: request
	copy(a[8:14], mac)
	ip4 := ip.As4()
	copy(a[14:18], ip4[:])
	// a[18:24] target hardware address stays zero.
	copy(a[24:28], ip4[:])
	return b
}

// unaFrame builds an unsolicited Neighbour Advertisement (RFC 4861 §7.2.6)
// for ip owned by mac, sent to all nodes (ff02::1): Ethernet + IPv6 (hop
// limit 255, as receivers require) + ICMPv6 type 136 with the Override flag
// set, Solicited and Router clear, and a Target Link-Layer Address option.
// Receivers that already have an entry for ip replace its MAC and mark it
// STALE, so they re-verify on first use instead of trusting the old MAC.
func unaFrame(mac net.HardwareAddr, ip netip.Addr) []byte {
	if len(mac) != 6 || !ip.Is6() || ip.Is4In6() {
		panic("failover: unaFrame needs a 6-byte MAC and an IPv6 address")
	}
	const icmpLen = 4 + 4 + 16 + 8 // type/code/csum, flags, target, option
	b := make([]byte, ethHeaderLen+ipv6HdrLen+icmpLen)
	copy(b[0:6], allNodesMAC)
	copy(b[6:12], mac)
	binary.BigEndian.PutUint16(b[12:14], etherTypeIPv6)
	putIPv6Header(b[ethHeaderLen:], ip, allNodesIPv6, protoICMPv6, icmpLen, 255)
	m := b[ethHeaderLen+ipv6HdrLen:]
	m[0] = icmpv6NeighborAdvert
	m[1] = 0
	binary.BigEndian.PutUint32(m[4:8], naFlagOverride)
	t := ip.As16()
	copy(m[8:24], t[:])
	m[24] = ndOptTargetLLAddr
	m[25] = 1 // option length in units of 8 bytes
	copy(m[26:32], mac)
	binary.BigEndian.PutUint16(m[2:4], transportChecksum(ip, allNodesIPv6, protoICMPv6, m))
	return b
}

// tickleSegment builds a bare 20-byte TCP segment from src:sport to
// dst:dport with only ACK set, sequence 0, acknowledgement 0 and window 0,
// with its checksum computed over the pseudo-header of src and dst (IPv4 or
// IPv6, both of the same family). See Tickle for why this resets a client.
func tickleSegment(src, dst netip.Addr, sport, dport uint16) []byte {
	b := make([]byte, tcpHdrLen)
	binary.BigEndian.PutUint16(b[0:2], sport)
	binary.BigEndian.PutUint16(b[2:4], dport)
	// b[4:8] sequence 0, b[8:12] acknowledgement 0.
	b[12] = (tcpHdrLen / 4) << 4 // data offset, no options
	b[13] = 0x10                 // ACK
	// b[14:16] window 0, b[18:20] urgent pointer 0.
	binary.BigEndian.PutUint16(b[16:18], transportChecksum(src, dst, protoTCP, b))
	return b
}

// tickleIPv4Packet wraps a tickle segment in an IPv4 header for a raw
// IPPROTO_RAW socket (which implies IP_HDRINCL).
func tickleIPv4Packet(src, dst netip.Addr, sport, dport uint16) []byte {
	seg := tickleSegment(src, dst, sport, dport)
	b := make([]byte, ipv4HdrLen+len(seg))
	h := b[:ipv4HdrLen]
	h[0] = 0x45 // version 4, IHL 5
	binary.BigEndian.PutUint16(h[2:4], uint16(len(b)))
	binary.BigEndian.PutUint16(h[6:8], 0x4000) // don't fragment
	h[8] = 64                                  // TTL
	h[9] = protoTCP
	s, d := src.As4(), dst.As4()
	copy(h[12:16], s[:])
	copy(h[16:20], d[:])
	binary.BigEndian.PutUint16(h[10:12], ^uint16(onesSum(0, h)))
	copy(b[ipv4HdrLen:], seg)
	return b
}

// tickleIPv6Packet wraps a tickle segment in an IPv6 header for a raw
// AF_INET6/IPPROTO_RAW socket (which implies IPV6_HDRINCL).
func tickleIPv6Packet(src, dst netip.Addr, sport, dport uint16) []byte {
	seg := tickleSegment(src, dst, sport, dport)
	b := make([]byte, ipv6HdrLen+len(seg))
	putIPv6Header(b, src, dst, protoTCP, len(seg), 64)
	copy(b[ipv6HdrLen:], seg)
	return b
}

func putIPv6Header(b []byte, src, dst netip.Addr, next byte, payloadLen int, hopLimit byte) {
	b[0] = 0x60 // version 6, traffic class 0, flow label 0
	binary.BigEndian.PutUint16(b[4:6], uint16(payloadLen))
	b[6] = next
	b[7] = hopLimit
	s, d := src.As16(), dst.As16()
	copy(b[8:24], s[:])
	copy(b[24:40], d[:])
}

// transportChecksum is the Internet checksum (RFC 1071) of seg (whose own
// checksum field must be zero) plus the IPv4 (RFC 793) or IPv6 (RFC 8200
// §8.1) pseudo-header.
func transportChecksum(src, dst netip.Addr, proto byte, seg []byte) uint16 {
	var sum uint32
	if src.Is4() {
		s, d := src.As4(), dst.As4()
		sum = onesSum(sum, s[:])
		sum = onesSum(sum, d[:])
		sum += uint32(proto) + uint32(len(seg))
	} else {
		s, d := src.As16(), dst.As16()
		sum = onesSum(sum, s[:])
		sum = onesSum(sum, d[:])
		sum += uint32(len(seg)) + uint32(proto)
	}
	sum = onesSum(sum, seg)
	return ^fold(sum)
}

// onesSum adds b as big-endian 16-bit words to sum (odd length padded with
// a zero byte) and returns the ones'-complement sum folded to 16 bits.
func onesSum(sum uint32, b []byte) uint32 {
	for len(b) >= 2 {
		sum += uint32(b[0])<<8 | uint32(b[1])
		b = b[2:]
	}
	if len(b) == 1 {
		sum += uint32(b[0]) << 8
	}
	return uint32(fold(sum))
}

func fold(sum uint32) uint16 {
	for sum>>16 != 0 {
		sum = sum&0xffff + sum>>16
	}
	return uint16(sum)
}

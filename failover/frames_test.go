package failover

import (
	"bytes"
	"encoding/binary"
	"errors"
	"net"
	"net/netip"
	"testing"
	"time"
)

var testMAC = net.HardwareAddr{0x02, 0x11, 0x22, 0x33, 0x44, 0x55}

func TestGARPFrameLayout(t *testing.T) {
	ip := netip.MustParseAddr("10.250.99.100")
	got := garpFrame(testMAC, ip)
	want := []byte{
		// Ethernet: broadcast destination, our source, ARP.
		0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
		0x02, 0x11, 0x22, 0x33, 0x44, 0x55,
		0x08, 0x06,
		// ARP (RFC 826 layout, RFC 5227 §2.3 announcement values).
		0x00, 0x01, // htype Ethernet
		0x08, 0x00, // ptype IPv4
		0x06,       // hlen
		0x04,       // plen
		0x00, 0x01, // oper request
		0x02, 0x11, 0x22, 0x33, 0x44, 0x55, // sender hardware address
		10, 250, 99, 100, // sender protocol address = VIP
		0, 0, 0, 0, 0, 0, // target hardware address zero
		10, 250, 99, 100, // target protocol address = VIP
	}
	if !bytes.Equal(got, want) {
		t.Fatalf("garpFrame:\n got %x\nwant %x", got, want)
	}
}

func TestGARPFramePanicsOnBadInput(t *testing.T) {
	for _, tc := range []struct {
		mac net.HardwareAddr
		ip  netip.Addr
	}{
		{testMAC[:5], netip.MustParseAddr("10.0.0.1")},
		{testMAC, netip.MustParseAddr("fd00::1")},
	} {
		func() {
			defer func() {
				if recover() == nil {
					t.Errorf("garpFrame(%v, %v) did not panic", tc.mac, tc.ip)
				}
			}()
			garpFrame(tc.mac, tc.ip)
		}()
	}
}

// verifyChecksum recomputes the Internet checksum over the pseudo-header and
// the segment including its checksum field: a correct one sums to 0xffff.
func verifyChecksum(t *testing.T, src, dst netip.Addr, proto byte, seg []byte) {
	t.Helper()
	var sum uint32
	if src.Is4() {
		s, d := src.As4(), dst.As4()
		sum = onesSum(sum, s[:])
		sum = onesSum(sum, d[:])
	} else {
		s, d := src.As16(), dst.As16()
		sum = onesSum(sum, s[:])
		sum = onesSum(sum, d[:])
	}
	sum += uint32(proto) + uint32(len(seg))
	sum = onesSum(sum, seg)
	if fold(sum) != 0xffff {
		t.Fatalf("checksum does not verify: folded sum %#04x over %x", fold(sum), seg)
	}
}

// naiveChecksum is an independent RFC 1071 implementation used to cross-check.
func naiveChecksum(data []byte) uint16 {
	if len(data)%2 == 1 {
		data = append(data, 0)
	}
	var sum uint64
	for i := 0; i < len(data); i += 2 {
		sum += uint64(binary.BigEndian.Uint16(data[i:]))
	}
	for sum > 0xffff {
		sum = sum>>16 + sum&0xffff
	}
	return ^uint16(sum)
}

func TestTickleSegmentIPv4(t *testing.T) {
	src := netip.MustParseAddr("10.250.99.100")
	dst := netip.MustParseAddr("10.250.99.2")
	seg := tickleSegment(src, dst, 3260, 51234)
	if len(seg) != 20 {
		t.Fatalf("len %d, want 20", len(seg))
	}
	if sp, dp := binary.BigEndian.Uint16(seg[0:]), binary.BigEndian.Uint16(seg[2:]); sp != 3260 || dp != 51234 {
		t.Fatalf("ports %d -> %d", sp, dp)
	}
	if seq, ack := binary.BigEndian.Uint32(seg[4:]), binary.BigEndian.Uint32(seg[8:]); seq != 0 || ack != 0 {
		t.Fatalf("seq %d ack %d, want 0 0", seq, ack)
	}
	if seg[12] != 0x50 || seg[13] != 0x10 {
		t.Fatalf("offset/flags %#x %#x, want 0x50 (5 words) 0x10 (ACK only)", seg[12], seg[13])
	}
	verifyChecksum(t, src, dst, protoTCP, seg)

	// Recompute independently with the checksum field zeroed.
	pseudo := append(append(append([]byte{}, src.AsSlice()...), dst.AsSlice()...), 0, protoTCP, 0, 20)
	z := append([]byte{}, seg...)
	z[16], z[17] = 0, 0
	if want, got := naiveChecksum(append(pseudo, z...)), binary.BigEndian.Uint16(seg[16:]); got != want {
		t.Fatalf("checksum %#04x, independent recomputation %#04x", got, want)
	}
	// A single flipped bit must break verification.
	bad := append([]byte{}, seg...)
	bad[3] ^= 1
	var sum uint32
	sum = onesSum(sum, pseudo)
	if fold(onesSum(sum, bad)) == 0xffff {
		t.Fatal("corrupted segment still verifies")
	}
}

func TestTickleSegmentIPv6(t *testing.T) {
	src := netip.MustParseAddr("fd00:250:99::100")
	dst := netip.MustParseAddr("fd00:250:99::2")
	seg := tickleSegment(src, dst, 3260, 40000)
	verifyChecksum(t, src, dst, protoTCP, seg)
	pseudo := append(append(append([]byte{}, src.AsSlice()...), dst.AsSlice()...), 0, 0, 0, 20, 0, 0, 0, protoTCP)
	z := append([]byte{}, seg...)
	z[16], z[17] = 0, 0
	if want, got := naiveChecksum(append(pseudo, z...)), binary.BigEndian.Uint16(seg[16:]); got != want {
		t.Fatalf("checksum %#04x, independent recomputation %#04x", got, want)
	}
}

func TestTickleIPv4Packet(t *testing.T) {
	src := netip.MustParseAddr("10.250.99.100")
	dst := netip.MustParseAddr("10.250.99.2")
	p := tickleIPv4Packet(src, dst, 3260, 51234)
	if len(p) != 40 || p[0] != 0x45 || p[9] != protoTCP || binary.BigEndian.Uint16(p[2:]) != 40 {
		t.Fatalf("bad IPv4 header %x", p[:20])
	}
	if naiveChecksum(p[:20]) != 0 {
		t.Fatalf("IPv4 header checksum does not verify: %x", p[:20])
	}
	if !bytes.Equal(p[12:16], src.AsSlice()) || !bytes.Equal(p[16:20], dst.AsSlice()) {
		t.Fatalf("addresses %x", p[12:20])
	}
	if !bytes.Equal(p[20:], tickleSegment(src, dst, 3260, 51234)) {
		t.Fatal("payload is not the tickle segment")
	}
}

func TestTickleIPv6Packet(t *testing.T) {
	src := netip.MustParseAddr("fd00:250:99::100")
	dst := netip.MustParseAddr("fd00:250:99::2")
	p := tickleIPv6Packet(src, dst, 3260, 51234)
	if len(p) != 60 || p[0]>>4 != 6 || p[6] != protoTCP || binary.BigEndian.Uint16(p[4:]) != 20 {
		t.Fatalf("bad IPv6 header %x", p[:40])
	}
	verifyChecksum(t, src, dst, protoTCP, p[40:])
}

func TestUNAFrame(t *testing.T) {
	ip := netip.MustParseAddr("fd00:250:99::100")
	f := unaFrame(testMAC, ip)
	if len(f) != 14+40+32 {
		t.Fatalf("len %d", len(f))
	}
	if !bytes.Equal(f[0:6], []byte{0x33, 0x33, 0, 0, 0, 1}) || !bytes.Equal(f[6:12], testMAC) || binary.BigEndian.Uint16(f[12:]) != 0x86dd {
		t.Fatalf("bad Ethernet header %x", f[:14])
	}
	h := f[14:54]
	if h[0] != 0x60 || binary.BigEndian.Uint16(h[4:]) != 32 || h[6] != protoICMPv6 || h[7] != 255 {
		t.Fatalf("bad IPv6 header %x", h)
	}
	if !bytes.Equal(h[8:24], ip.AsSlice()) || !bytes.Equal(h[24:40], allNodesIPv6.AsSlice()) {
		t.Fatalf("bad IPv6 addresses %x", h[8:40])
	}
	m := f[54:]
	want := append([]byte{136, 0, m[2], m[3], 0x20, 0, 0, 0}, ip.AsSlice()...)
	want = append(want, 2, 1)
	want = append(want, testMAC...)
	if !bytes.Equal(m, want) {
		t.Fatalf("NA body\n got %x\nwant %x", m, want)
	}
	verifyChecksum(t, ip, allNodesIPv6, protoICMPv6, m)
}

func TestDefaultVIPConfigValidates(t *testing.T) {
	c := DefaultVIPConfig("eth0", netip.MustParsePrefix("10.250.99.100/24"))
	if err := c.Validate(); err != nil {
		t.Fatal(err)
	}
	if len(c.Announce) != 3 || c.Announce[0] != 0 {
		t.Fatalf("default schedule %v", c.Announce)
	}
}

func TestVIPConfigValidateRejects(t *testing.T) {
	good := DefaultVIPConfig("eth0", netip.MustParsePrefix("10.250.99.100/24"))
	for name, mut := range map[string]func(*VIPConfig){
		"no interface":  func(c *VIPConfig) { c.Interface = "" },
		"long name":     func(c *VIPConfig) { c.Interface = "abcdefghijklmnop" },
		"no prefix":     func(c *VIPConfig) { c.Prefix = netip.Prefix{} },
		"multicast":     func(c *VIPConfig) { c.Prefix = netip.MustParsePrefix("224.0.0.1/32") },
		"mapped":        func(c *VIPConfig) { c.Prefix = netip.MustParsePrefix("::ffff:10.0.0.1/128") },
		"decreasing":    func(c *VIPConfig) { c.Announce = []time.Duration{time.Second, 0} },
		"too far":       func(c *VIPConfig) { c.Announce = []time.Duration{time.Minute} },
		"too many":      func(c *VIPConfig) { c.Announce = make([]time.Duration, 17) },
		"negative only": func(c *VIPConfig) { c.Announce = []time.Duration{-time.Second} },
	} {
		c := good
		c.Announce = append([]time.Duration(nil), good.Announce...)
		mut(&c)
		if err := c.Validate(); !errors.Is(err, ErrInvalidConfig) {
			t.Errorf("%s: Validate() = %v, want ErrInvalidConfig", name, err)
		}
	}
}

package failover

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"sync"
	"time"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// Sentinel errors of package failover.
var (
	// ErrClosed is returned by methods of a closed VIP or Tickler.
	ErrClosed = errors.New("failover: closed")
	// ErrInvalidConfig wraps every configuration validation failure.
	ErrInvalidConfig = errors.New("failover: invalid config")
)

// Limits on the announcement schedule, checked by VIPConfig.Validate.
const (
	maxAnnouncements  = 16
	maxAnnounceOffset = 10 * time.Second
)

// VIPConfig configures a VIP manager.
type VIPConfig struct {
	// Interface is the name of the link the address is added to, e.g.
	// "eth0". Required. It is resolved to an ifindex once, in NewVIP: if the
	// link is deleted and recreated, build a new VIP.
	Interface string

	// Prefix is the virtual address with its prefix length, e.g.
	// 10.0.0.100/24. Required. The prefix length decides the connected route
	// the kernel installs; use the subnet's length so that replies to
	// clients leave through Interface.
	Prefix netip.Prefix

	// Announce lists the offsets after Acquire at which a gratuitous ARP
	// (IPv4) or unsolicited Neighbour Advertisement (IPv6) is sent.
	// Default {0, 100ms, 500ms}: the first goes out before Acquire returns,
	// so clients that hear it switch at once (without it, a client here kept
	// the old MAC for ~35 s); the later ones cover a frame lost on a busy
	// switch or a bridge port still learning. Offsets must be non-decreasing,
	// at most 10 s, at most 16 of them. Empty means never announce, which is
	// only sensible in tests.
	Announce []time.Duration
}

// DefaultVIPConfig returns a configuration for prefix on ifname with the
// default announcement schedule.
func DefaultVIPConfig(ifname string, prefix netip.Prefix) VIPConfig {
	return VIPConfig{
		Interface: ifname,
		Prefix:    prefix,
		Announce:  []time.Duration{0, 100 * time.Millisecond, 500 * time.Millisecond},
	}
}

// Validate checks c without changing it; errors wrap ErrInvalidConfig and
// name the field.
func (c VIPConfig) Validate() error {
	if c.Interface == "" || len(c.Interface) >= unix.IFNAMSIZ {
		return fmt.Errorf("%w: Interface %q: must be 1..%d bytes", ErrInvalidConfig, c.Interface, unix.IFNAMSIZ-1)
	}
	if !c.Prefix.IsValid() {
		return fmt.Errorf("%w: Prefix: not set", ErrInvalidConfig)
	}
	a := c.Prefix.Addr()
	if a.Zone() != "" || a.Is4In6() || a.IsUnspecified() || a.IsMulticast() || a.IsLoopback() {
		return fmt.Errorf("%w: Prefix %s: must be a plain unicast address", ErrInvalidConfig, c.Prefix)
	}
	if len(c.Announce) > maxAnnouncements {
		return fmt.Errorf("%w: Announce: %d entries, at most %d", ErrInvalidConfig, len(c.Announce), maxAnnouncements)
	}
	var prev time.Duration
	for i, d := range c.Announce {
		if d < prev || d > maxAnnounceOffset {
			return fmt.Errorf("%w: Announce[%d]=%v: offsets must be non-decreasing within 0..%v", ErrInvalidConfig, i, d, maxAnnounceOffset)
		}
		prev = d
	}
	return nil
}

// VIP manages one virtual IP address on one interface: it adds and removes
// the address with netlink and announces it with gratuitous ARP (IPv4) or an
// unsolicited Neighbour Advertisement (IPv6) so that neighbours replace the
// previous holder's MAC at once.
//
// The netlink handle and the AF_PACKET socket are opened in NewVIP, in the
// network namespace of the calling thread, and kept: every later call acts
// on that namespace whichever thread runs it, and an announcement costs one
// sendto (~0.03 ms measured; opening a packet socket per send cost ~19 ms).
//
// A VIP is safe for concurrent use.
type VIP struct {
	cfg     VIPConfig
	log     *slog.Logger
	nl      *netlink.Handle
	ifindex int
	fd      int // AF_PACKET, SOCK_RAW, protocol 0: send-only, receives nothing

	mu sync.Mutex
	// INVARIANT: cancel and done are both nil or both set; set while an
	// announcement goroutine started by Acquire may still be running.
	cancel context.CancelFunc
	done   chan struct{}
	closed bool
}

// NewVIP opens the netlink handle and the packet socket for prefix on
// ifname, with the default announcement schedule. It does not touch the
// address; call RemoveStale at startup and Acquire on promotion.
func NewVIP(ifname string, prefix netip.Prefix, log *slog.Logger) (*VIP, error) {
	return NewVIPConfig(DefaultVIPConfig(ifname, prefix), log)
}

// NewVIPConfig is NewVIP with an explicit configuration.
func NewVIPConfig(cfg VIPConfig, log *slog.Logger) (*VIP, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if log == nil {
		log = slog.Default()
	}
	cfg.Announce = append([]time.Duration(nil), cfg.Announce...)
	nl, err := netlink.NewHandle(unix.NETLINK_ROUTE)
	if err != nil {
		return nil, fmt.Errorf("failover: netlink handle: %w", err)
	}
	link, err := nl.LinkByName(cfg.Interface)
	if err != nil {
		nl.Close()
		return nil, fmt.Errorf("failover: interface %q: %w", cfg.Interface, err)
	}
	ifindex := link.Attrs().Index
	// Protocol 0: the socket is only used to send, so it asks the kernel for
	// no frames at all rather than queueing every ARP it would never read.
	// Frames carry their own Ethernet header, so one socket sends both ARP
	// and IPv6 frames.
	fd, err := unix.Socket(unix.AF_PACKET, unix.SOCK_RAW|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		nl.Close()
		return nil, fmt.Errorf("failover: packet socket: %w", err)
	}
	if err := unix.Bind(fd, &unix.SockaddrLinklayer{Ifindex: ifindex}); err != nil {
		unix.Close(fd)
		nl.Close()
		return nil, fmt.Errorf("failover: bind packet socket to %q: %w", cfg.Interface, err)
	}
	return &VIP{
		cfg:     cfg,
		log:     log.With("vip", cfg.Prefix.String(), "iface", cfg.Interface),
		nl:      nl,
		ifindex: ifindex,
		fd:      fd,
	}, nil
}

// Acquire adds the address to the interface if it is absent (an address
// already present, with any prefix length, is kept: Acquire is idempotent),
// sends the first announcement before returning and schedules the rest of
// cfg.Announce on a goroutine that runs until the schedule ends, Release or
// Close — not until ctx ends, since announcements must outlive the call.
// ctx is checked before any change. If the address was added but the first
// announcement failed, the address stays and the error is returned.
func (v *VIP) Acquire(ctx context.Context) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	v.mu.Lock()
	defer v.mu.Unlock()
	if v.closed {
		return ErrClosed
	}
	link, err := v.nl.LinkByIndex(v.ifindex)
	if err != nil {
		return fmt.Errorf("failover: acquire %s: %w", v.cfg.Prefix, err)
	}
	present, err := v.presentLocked(link)
	if err != nil {
		return fmt.Errorf("failover: acquire %s: %w", v.cfg.Prefix, err)
	}
	if len(present) == 0 {
		addr := &netlink.Addr{IPNet: prefixToIPNet(v.cfg.Prefix)}
		if v.cfg.Prefix.Addr().Is6() {
			// Skip duplicate address detection: the address must answer
			// now, and the cluster, not DAD, decides who holds it.
			addr.Flags = unix.IFA_F_NODAD
		}
		start := time.Now()
		if err := v.nl.AddrAdd(link, addr); err != nil && !errors.Is(err, unix.EEXIST) {
			return fmt.Errorf("failover: add %s to %s: %w", v.cfg.Prefix, v.cfg.Interface, err)
		}
		v.log.Info("vip added", "took", time.Since(start))
	}
	v.stopAnnouncingLocked()
	if len(v.cfg.Announce) == 0 {
		return nil
	}
	mac := link.Attrs().HardwareAddr
	frame, ethType, err := v.announcement(mac)
	if err != nil {
		return err
	}
	sched := v.cfg.Announce
	first := 0
	for first < len(sched) && sched[first] == 0 {
		if err := v.send(frame, ethType); err != nil {
			return fmt.Errorf("failover: announce %s: %w", v.cfg.Prefix, err)
		}
		first++
	}
	if first == len(sched) {
		return nil
	}
	actx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	v.cancel, v.done = cancel, done
	go v.announceLoop(actx, done, time.Now(), sched[first:], frame, ethType)
	return nil
}

// announceLoop sends frame at each offset (from start) in sched.
func (v *VIP) announceLoop(ctx context.Context, done chan struct{}, start time.Time, sched []time.Duration, frame []byte, ethType uint16) {
	defer close(done)
	t := time.NewTimer(time.Until(start.Add(sched[0])))
	defer t.Stop()
	for i := 0; ; {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		if err := v.send(frame, ethType); err != nil {
			v.log.Warn("vip announcement failed", "n", i+1, "err", err)
		}
		i++
		if i == len(sched) {
			return
		}
		t.Reset(time.Until(start.Add(sched[i])))
	}
}

func (v *VIP) announcement(mac net.HardwareAddr) ([]byte, uint16, error) {
	if len(mac) != 6 {
		return nil, 0, fmt.Errorf("failover: %s has no Ethernet address (%v); cannot announce", v.cfg.Interface, mac)
	}
	if a := v.cfg.Prefix.Addr(); a.Is4() {
		return garpFrame(mac, a), etherTypeARP, nil
	}
	return unaFrame(mac, v.cfg.Prefix.Addr()), etherTypeIPv6, nil
}

// send writes one frame; fd is only closed by Close after the announcement
// goroutine has stopped, so no lock is needed here.
func (v *VIP) send(frame []byte, ethType uint16) error {
	to := &unix.SockaddrLinklayer{
		Ifindex:  v.ifindex,
		Protocol: htons(ethType),
		Halen:    6,
	}
	copy(to.Addr[:], frame[0:6])
	return unix.Sendto(v.fd, frame, 0, to)
}

// Release stops announcing and removes the address from the interface,
// whatever its prefix length. Removing an absent address is not an error.
func (v *VIP) Release() error {
	v.mu.Lock()
	defer v.mu.Unlock()
	if v.closed {
		return ErrClosed
	}
	v.stopAnnouncingLocked()
	n, err := v.removeLocked()
	if err != nil {
		return fmt.Errorf("failover: release %s: %w", v.cfg.Prefix, err)
	}
	if n > 0 {
		v.log.Info("vip removed")
	}
	return nil
}

// RemoveStale removes the address if a previous run left it on the
// interface; an agent calls it before joining the cluster, so that a node
// that is not primary never answers for the VIP. It reports whether an
// address was removed.
func (v *VIP) RemoveStale() (bool, error) {
	v.mu.Lock()
	defer v.mu.Unlock()
	if v.closed {
		return false, ErrClosed
	}
	n, err := v.removeLocked()
	if err != nil {
		return false, fmt.Errorf("failover: remove stale %s: %w", v.cfg.Prefix, err)
	}
	if n > 0 {
		v.log.Warn("removed stale vip left by a previous run")
	}
	return n > 0, nil
}

// Held reports whether the address is currently configured on the
// interface (asked of the kernel, not remembered). It reports false if the
// kernel cannot be asked; the error is logged.
func (v *VIP) Held() bool {
	v.mu.Lock()
	defer v.mu.Unlock()
	if v.closed {
		return false
	}
	link, err := v.nl.LinkByIndex(v.ifindex)
	if err == nil {
		var present []netlink.Addr
		present, err = v.presentLocked(link)
		if err == nil {
			return len(present) > 0
		}
	}
	v.log.Warn("vip state query failed", "err", err)
	return false
}

// Close stops announcing and closes the socket and netlink handle. It leaves
// the address as it is: a process that exits while primary leaves the VIP
// for RemoveStale on its next start (or for the node's death to end).
func (v *VIP) Close() error {
	v.mu.Lock()
	defer v.mu.Unlock()
	if v.closed {
		return nil
	}
	v.closed = true
	v.stopAnnouncingLocked()
	v.nl.Close()
	return unix.Close(v.fd)
}

func (v *VIP) stopAnnouncingLocked() {
	if v.cancel == nil {
		return
	}
	v.cancel()
	<-v.done
	v.cancel, v.done = nil, nil
}

// removeLocked deletes every address on the link equal to the VIP and
// returns how many it deleted.
func (v *VIP) removeLocked() (int, error) {
	link, err := v.nl.LinkByIndex(v.ifindex)
	if err != nil {
		return 0, err
	}
	present, err := v.presentLocked(link)
	if err != nil {
		return 0, err
	}
	n := 0
	for i := range present {
		if err := v.nl.AddrDel(link, &present[i]); err != nil && !errors.Is(err, unix.EADDRNOTAVAIL) {
			return n, err
		}
		n++
	}
	return n, nil
}

// presentLocked lists the addresses on link equal to the VIP's address.
func (v *VIP) presentLocked(link netlink.Link) ([]netlink.Addr, error) {
	want := v.cfg.Prefix.Addr()
	family := netlink.FAMILY_V4
	if want.Is6() {
		family = netlink.FAMILY_V6
	}
	var addrs []netlink.Addr
	var err error
	for range 3 { // a dump interrupted by a concurrent change is retried
		addrs, err = v.nl.AddrList(link, family)
		if !errors.Is(err, netlink.ErrDumpInterrupted) {
			break
		}
	}
	if err != nil {
		return nil, err
	}
	var out []netlink.Addr
	for _, a := range addrs {
		if ip, ok := netip.AddrFromSlice(a.IP); ok && ip.Unmap() == want {
			out = append(out, a)
		}
	}
	return out, nil
}

func prefixToIPNet(p netip.Prefix) *net.IPNet {
	a := p.Addr()
	bits := a.BitLen()
	return &net.IPNet{IP: net.IP(a.AsSlice()), Mask: net.CIDRMask(p.Bits(), bits)}
}

// htons converts a 16-bit value to network byte order as the kernel expects
// it in sll_protocol and socket(2)'s protocol argument.
func htons(v uint16) uint16 { return v<<8 | v>>8 }

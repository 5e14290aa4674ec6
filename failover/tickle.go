package failover

import (
	"context"
	"fmt"
	"net/netip"
	"sync"

	"golang.org/x/sys/unix"
)

// Tickle makes the client at remote drop its TCP connection to local (the
// VIP and iSCSI port, e.g. 10.0.0.100:3260) at once, instead of after TCP
// retransmission or iSCSI NOP-Out timeouts. It is the "tickle ACK" of
// Samba's CTDB, to be sent by a node that has just taken over the VIP for
// each client connection the old primary reported:
//
//  1. From local to remote it sends a bare ACK with sequence 0 and
//     acknowledgement 0 (tickleSegment).
//  2. The client's stack still has the connection, finds the segment
//     outside its window and answers, as RFC 793/5961 require, with an ACK
//     carrying its real sequence and acknowledgement numbers.
//  3. That ACK reaches the new primary, which has no such connection, so
//     its kernel answers with a RST whose sequence number is exactly the
//     acknowledgement the client sent, i.e. the client's rcv_nxt.
//  4. The client accepts that RST, the initiator sees ECONNRESET and
//     reconnects to the VIP — now served by the new primary.
//
// Step 1 needs a raw socket, so Tickle needs CAP_NET_RAW. It opens one raw
// socket per call, in the network namespace of the calling thread; use a
// Tickler to keep one open for a burst of clients. Linux rate-limits
// out-of-window answers per connection (net.ipv4.tcp_invalid_ratelimit,
// 500 ms), so tickling the same connection twice within that time gets one
// answer; tickling once per connection after the VIP is announced is enough.
// local and remote must be of the same family.
func Tickle(ctx context.Context, local, remote netip.AddrPort) error {
	t := &Tickler{fd4: -1, fd6: -1}
	defer t.Close()
	return t.Tickle(ctx, local, remote)
}

// Tickler sends tickle ACKs (see Tickle) from raw sockets kept open until
// Close. Build it with NewTickler. It is safe for concurrent use.
type Tickler struct {
	mu     sync.Mutex
	fd4    int // AF_INET, SOCK_RAW, IPPROTO_RAW (implies IP_HDRINCL); -1 = not open
	fd6    int // AF_INET6, SOCK_RAW, IPPROTO_RAW (implies IPV6_HDRINCL); -1 = not open
	closed bool
}

// NewTickler opens the IPv4 and IPv6 raw sockets now, in the calling
// thread's network namespace. A family the kernel lacks is skipped and only
// fails when used.
func NewTickler() (*Tickler, error) {
	t := &Tickler{fd4: -1, fd6: -1}
	t.mu.Lock()
	defer t.mu.Unlock()
	if _, err := t.socketLocked(false); err != nil {
		return nil, err
	}
	// Without IPv6 in the kernel the socket is retried, and fails, on use.
	_, _ = t.socketLocked(true)
	return t, nil
}

// Tickle sends one tickle ACK from local to remote. ctx is checked before
// sending; the send itself does not block.
func (t *Tickler) Tickle(ctx context.Context, local, remote netip.AddrPort) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	src, dst := local.Addr().Unmap(), remote.Addr().Unmap()
	if !src.IsValid() || !dst.IsValid() || src.Is4() != dst.Is4() || local.Port() == 0 || remote.Port() == 0 {
		return fmt.Errorf("failover: tickle %s -> %s: need two endpoints of one family with ports", local, remote)
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.closed {
		return ErrClosed
	}
	fd, err := t.socketLocked(src.Is6())
	if err != nil {
		return err
	}
	var pkt []byte
	var to unix.Sockaddr
	if src.Is4() {
		pkt = tickleIPv4Packet(src, dst, local.Port(), remote.Port())
		to = &unix.SockaddrInet4{Addr: dst.As4()}
	} else {
		pkt = tickleIPv6Packet(src, dst, local.Port(), remote.Port())
		to = &unix.SockaddrInet6{Addr: dst.As16()}
	}
	if err := unix.Sendto(fd, pkt, 0, to); err != nil {
		return fmt.Errorf("failover: tickle %s -> %s: %w", local, remote, err)
	}
	return nil
}

func (t *Tickler) socketLocked(v6 bool) (int, error) {
	p, family := &t.fd4, unix.AF_INET
	if v6 {
		p, family = &t.fd6, unix.AF_INET6
	}
	if *p >= 0 {
		return *p, nil
	}
	// IPPROTO_RAW sockets only send: the kernel delivers nothing to them,
	// so no receive queue fills while the socket is kept.
	fd, err := unix.Socket(family, unix.SOCK_RAW|unix.SOCK_CLOEXEC, unix.IPPROTO_RAW)
	if err != nil {
		return 0, fmt.Errorf("failover: raw socket: %w", err)
	}
	*p = fd
	return fd, nil
}

// Close closes the sockets; later calls return ErrClosed.
func (t *Tickler) Close() error {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.closed {
		return nil
	}
	t.closed = true
	var err error
	for _, fd := range []int{t.fd4, t.fd6} {
		if fd >= 0 {
			if e := unix.Close(fd); e != nil && err == nil {
				err = e
			}
		}
	}
	return err
}

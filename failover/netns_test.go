package failover

import (
	"encoding/binary"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"runtime"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// The integration tests build a small L2 network of network namespaces:
// one "switch" namespace holding a bridge, and one namespace per node with
// an eth0 veth whose peer is a bridge port. Addresses come from
// 10.250.99.0/24 and exist only inside these namespaces. Deleting the
// namespaces in t.Cleanup deletes every link they hold.

const (
	tbSubnet = "10.250.99.0/24"
	tbVIP    = "10.250.99.100"
)

var tbSeq atomic.Int32

type testbed struct {
	t      *testing.T
	prefix string // hbt-<pid>-<n>
	nodes  map[string]tbNode
}

type tbNode struct {
	ns   string
	ip   netip.Addr
	mac  net.HardwareAddr
	port string // bridge port name in the switch namespace
}

func requireNetnsRoot(t *testing.T) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("integration test needs root (network namespaces, raw sockets); run `go test ./failover/` as root")
	}
	if _, err := exec.LookPath("ip"); err != nil {
		t.Skip("integration test needs the `ip` command (iproute2)")
	}
}

// newTestbed creates the switch namespace and one namespace per node name;
// node i (from 0) gets 10.250.99.(i+1)/24 and MAC 02:00:0a:fa:63:(i+1).
func newTestbed(t *testing.T, names ...string) *testbed {
	t.Helper()
	requireNetnsRoot(t)
	tb := &testbed{
		t:      t,
		prefix: fmt.Sprintf("hbt-%d-%d", os.Getpid(), tbSeq.Add(1)),
		nodes:  map[string]tbNode{},
	}
	sw := tb.prefix + "-sw"
	tb.addNetns(sw)
	tb.ip("-n", sw, "link", "add", "br0", "type", "bridge")
	tb.ip("-n", sw, "link", "set", "br0", "up")
	for i, name := range names {
		n := tbNode{
			ns:   tb.prefix + "-" + name,
			ip:   netip.AddrFrom4([4]byte{10, 250, 99, byte(i + 1)}),
			mac:  net.HardwareAddr{0x02, 0x00, 0x0a, 0xfa, 0x63, byte(i + 1)},
			port: "p" + name,
		}
		tb.addNetns(n.ns)
		tb.ip("-n", sw, "link", "add", n.port, "type", "veth", "peer", "name", "eth0", "address", n.mac.String(), "netns", n.ns)
		tb.ip("-n", sw, "link", "set", n.port, "master", "br0", "up")
		tb.ip("-n", n.ns, "link", "set", "lo", "up")
		tb.ip("-n", n.ns, "link", "set", "eth0", "up")
		tb.ip("-n", n.ns, "addr", "add", n.ip.String()+"/24", "dev", "eth0")
		tb.nodes[name] = n
	}
	return tb
}

func (tb *testbed) addNetns(ns string) {
	tb.t.Helper()
	tb.ip("netns", "add", ns)
	tb.t.Cleanup(func() {
		if out, err := exec.Command("ip", "netns", "del", ns).CombinedOutput(); err != nil {
			tb.t.Errorf("cleanup: ip netns del %s: %v: %s", ns, err, out)
		}
	})
}

// ip runs the ip command and fails the test on error.
func (tb *testbed) ip(args ...string) string {
	tb.t.Helper()
	out, err := exec.Command("ip", args...).CombinedOutput()
	if err != nil {
		tb.t.Fatalf("ip %s: %v: %s", strings.Join(args, " "), err, out)
	}
	return string(out)
}

// in runs fn on a goroutine locked to an OS thread that has joined node's
// network namespace. Sockets fn creates stay in that namespace whatever
// thread later uses them. The thread is never unlocked, so the runtime
// discards it when the goroutine ends instead of reusing it elsewhere.
func (tb *testbed) in(node string, fn func() error) error {
	ns := tb.nodes[node].ns
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		f, err := os.Open("/var/run/netns/" + ns)
		if err != nil {
			errc <- err
			return
		}
		defer f.Close()
		if err := unix.Setns(int(f.Fd()), unix.CLONE_NEWNET); err != nil {
			errc <- fmt.Errorf("setns %s: %w", ns, err)
			return
		}
		errc <- fn()
	}()
	return <-errc
}

// neighMAC returns the MAC in node's neighbour table for ip ("" if none).
func (tb *testbed) neighMAC(node string, ip string) string {
	tb.t.Helper()
	f := strings.Fields(tb.ip("-n", tb.nodes[node].ns, "neigh", "show", ip, "dev", "eth0"))
	for i := 0; i+1 < len(f); i++ {
		if f[i] == "lladdr" {
			return f[i+1]
		}
	}
	return ""
}

func (tb *testbed) hasAddr(node, ip string) bool {
	tb.t.Helper()
	return strings.Contains(tb.ip("-n", tb.nodes[node].ns, "-4", "addr", "show", "dev", "eth0"), " "+ip+"/")
}

// ping sends one ICMP echo request from node to ip and waits up to 1 s for
// the reply (no ping binary is installed here).
func (tb *testbed) ping(node string, ip netip.Addr) error {
	return tb.in(node, func() error {
		fd, err := unix.Socket(unix.AF_INET, unix.SOCK_RAW|unix.SOCK_CLOEXEC, unix.IPPROTO_ICMP)
		if err != nil {
			return err
		}
		defer unix.Close(fd)
		id := uint16(os.Getpid())
		req := []byte{8, 0, 0, 0, byte(id >> 8), byte(id), 0, 1, 'h', 'b'}
		binary.BigEndian.PutUint16(req[2:], naiveChecksum(req))
		if err := unix.Sendto(fd, req, 0, &unix.SockaddrInet4{Addr: ip.As4()}); err != nil {
			return err
		}
		deadline := time.Now().Add(time.Second)
		buf := make([]byte, 1500)
		for {
			left := time.Until(deadline)
			if left <= 0 {
				return fmt.Errorf("no echo reply from %s", ip)
			}
			tv := unix.NsecToTimeval(left.Nanoseconds())
			if err := unix.SetsockoptTimeval(fd, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &tv); err != nil {
				return err
			}
			n, from, err := unix.Recvfrom(fd, buf, 0)
			if err == unix.EAGAIN || err == unix.EINTR {
				continue
			}
			if err != nil {
				return err
			}
			sa, ok := from.(*unix.SockaddrInet4)
			if !ok || netip.AddrFrom4(sa.Addr) != ip || n < 28 {
				continue
			}
			m := buf[int(buf[0]&0x0f)*4 : n]
			if m[0] == 0 && binary.BigEndian.Uint16(m[4:]) == id {
				return nil
			}
		}
	})
}

func testLogger(t *testing.T) *slog.Logger {
	return slog.New(slog.NewTextHandler(t.Output(), &slog.HandlerOptions{Level: slog.LevelDebug}))
}

func (tb *testbed) newVIP(node string, announce []time.Duration) *VIP {
	tb.t.Helper()
	cfg := DefaultVIPConfig("eth0", netip.MustParsePrefix(tbVIP+"/24"))
	cfg.Announce = announce
	var v *VIP
	if err := tb.in(node, func() (err error) {
		v, err = NewVIPConfig(cfg, testLogger(tb.t).With("node", node))
		return err
	}); err != nil {
		tb.t.Fatalf("NewVIP in %s: %v", node, err)
	}
	tb.t.Cleanup(func() { v.Close() })
	return v
}

func TestVIPIntegration(t *testing.T) {
	tb := newTestbed(t, "a", "b")
	vip := netip.MustParseAddr(tbVIP)
	a, b := tb.nodes["a"], tb.nodes["b"]
	const staleMAC = "02:00:00:00:00:01"
	tb.ip("-n", b.ns, "neigh", "replace", tbVIP, "lladdr", staleMAC, "dev", "eth0", "nud", "stale")

	// Control: with no announcement, B keeps the stale MAC.
	quiet := tb.newVIP("a", nil)
	if quiet.Held() {
		t.Fatal("Held before Acquire")
	}
	if err := quiet.Acquire(t.Context()); err != nil {
		t.Fatal(err)
	}
	if !quiet.Held() || !tb.hasAddr("a", tbVIP) {
		t.Fatal("address not on A after Acquire")
	}
	time.Sleep(200 * time.Millisecond)
	if got := tb.neighMAC("b", tbVIP); got != staleMAC {
		t.Fatalf("control: without announcements B's entry is %q, want the stale %s", got, staleMAC)
	}
	if err := quiet.Release(); err != nil {
		t.Fatal(err)
	}

	// One gratuitous ARP, sent before Acquire returns, replaces B's entry.
	v := tb.newVIP("a", []time.Duration{0})
	if err := v.Acquire(t.Context()); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	for tb.neighMAC("b", tbVIP) != a.mac.String() {
		if time.Since(start) > 2*time.Second {
			t.Fatalf("(b) B's neighbour entry for the VIP is %q, want A's MAC %s", tb.neighMAC("b", tbVIP), a.mac)
		}
		time.Sleep(5 * time.Millisecond)
	}
	t.Logf("B learned A's MAC %v after Acquire returned", time.Since(start))

	// Idempotent: a second Acquire keeps exactly one address.
	if err := v.Acquire(t.Context()); err != nil {
		t.Fatal(err)
	}
	if n := strings.Count(tb.ip("-n", a.ns, "-4", "addr", "show", "dev", "eth0"), " "+tbVIP+"/"); n != 1 {
		t.Fatalf("after two Acquires the VIP is on A %d times", n)
	}

	// (a) the VIP answers ping from B.
	if err := tb.ping("b", vip); err != nil {
		t.Fatalf("(a) ping VIP from B after Acquire: %v", err)
	}

	// (c) after Release the address is gone and no longer answers.
	if err := v.Release(); err != nil {
		t.Fatal(err)
	}
	if v.Held() || tb.hasAddr("a", tbVIP) {
		t.Fatal("(c) address still on A after Release")
	}
	if err := v.Release(); err != nil {
		t.Fatalf("second Release: %v", err)
	}
	if err := tb.ping("b", vip); err == nil {
		t.Fatal("(c) VIP still answers ping after Release")
	}

	// (d) RemoveStale removes a leftover address, whatever its prefix length.
	tb.ip("-n", a.ns, "addr", "add", tbVIP+"/32", "dev", "eth0")
	restarted := tb.newVIP("a", nil)
	if !restarted.Held() {
		t.Fatal("Held does not see the leftover address")
	}
	removed, err := restarted.RemoveStale()
	if err != nil || !removed {
		t.Fatalf("(d) RemoveStale = %v, %v; want true, nil", removed, err)
	}
	if tb.hasAddr("a", tbVIP) {
		t.Fatal("(d) leftover address still on A after RemoveStale")
	}
	if removed, err := restarted.RemoveStale(); err != nil || removed {
		t.Fatalf("second RemoveStale = %v, %v; want false, nil", removed, err)
	}
	if !tb.hasAddr("a", a.ip.String()) {
		t.Fatal("RemoveStale removed A's own address")
	}
}

func TestTickleResetsClient(t *testing.T) {
	tb := newTestbed(t, "a", "b", "c")
	vipPort := netip.MustParseAddrPort(tbVIP + ":3260")

	// A holds the VIP and serves on it; B connects as the iSCSI client would.
	va := tb.newVIP("a", []time.Duration{0})
	if err := va.Acquire(t.Context()); err != nil {
		t.Fatal(err)
	}
	var ln net.Listener
	if err := tb.in("a", func() (err error) {
		ln, err = net.Listen("tcp4", vipPort.String())
		return err
	}); err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	accepted := make(chan net.Conn, 1)
	go func() {
		c, err := ln.Accept()
		if err != nil {
			close(accepted)
			return
		}
		accepted <- c
	}()
	var client net.Conn
	if err := tb.in("b", func() (err error) {
		client, err = net.DialTimeout("tcp4", vipPort.String(), 2*time.Second)
		return err
	}); err != nil {
		t.Fatalf("B dial VIP: %v", err)
	}
	defer client.Close()
	server, ok := <-accepted
	if !ok {
		t.Fatal("A did not accept")
	}
	defer server.Close()
	if _, err := client.Write([]byte("x")); err != nil {
		t.Fatal(err)
	}
	if _, err := server.Read(make([]byte, 1)); err != nil {
		t.Fatal(err)
	}

	// A dies silently: link down, then the address goes without closing
	// the connection, so B gets no RST from A.
	tb.ip("-n", tb.nodes["a"].ns, "link", "set", "eth0", "down")
	if err := va.Release(); err != nil {
		t.Fatal(err)
	}

	// C takes the VIP over (its gratuitous ARP redirects B to C's MAC).
	vc := tb.newVIP("c", []time.Duration{0})
	if err := vc.Acquire(t.Context()); err != nil {
		t.Fatal(err)
	}
	var tk *Tickler
	if err := tb.in("c", func() (err error) {
		tk, err = NewTickler()
		return err
	}); err != nil {
		t.Fatal(err)
	}
	defer tk.Close()

	// Control: left alone, B's idle connection does not notice anything.
	client.SetReadDeadline(time.Now().Add(300 * time.Millisecond))
	if _, err := client.Read(make([]byte, 1)); !os.IsTimeout(err) {
		t.Fatalf("control: idle client read = %v, want a timeout", err)
	}

	remote := netip.MustParseAddrPort(client.LocalAddr().String())
	readErr := make(chan error, 1)
	client.SetReadDeadline(time.Now().Add(5 * time.Second))
	go func() {
		_, err := client.Read(make([]byte, 1))
		readErr <- err
	}()
	start := time.Now()
	if err := tk.Tickle(t.Context(), vipPort, remote); err != nil {
		t.Fatalf("Tickle: %v", err)
	}
	err := <-readErr
	took := time.Since(start)
	if !errors.Is(err, unix.ECONNRESET) {
		t.Fatalf("client read after tickle = %v after %v, want ECONNRESET", err, took)
	}
	if took > 2*time.Second {
		t.Fatalf("client reset only after %v, want within 2s", took)
	}
	t.Logf("client reset %v after the tickle", took)
}

// captureGARPs opens an ARP packet socket on node's eth0 and returns a
// function that collects frames equal to want until n have arrived or d has
// passed, returning their arrival times.
func (tb *testbed) captureGARPs(node string, want []byte) func(n int, d time.Duration) []time.Time {
	tb.t.Helper()
	var fd int
	if err := tb.in(node, func() error {
		ifi, err := net.InterfaceByName("eth0")
		if err != nil {
			return err
		}
		fd, err = unix.Socket(unix.AF_PACKET, unix.SOCK_RAW|unix.SOCK_CLOEXEC, int(htons(unix.ETH_P_ARP)))
		if err != nil {
			return err
		}
		return unix.Bind(fd, &unix.SockaddrLinklayer{Protocol: htons(unix.ETH_P_ARP), Ifindex: ifi.Index})
	}); err != nil {
		tb.t.Fatalf("capture socket in %s: %v", node, err)
	}
	tb.t.Cleanup(func() { unix.Close(fd) })
	return func(n int, d time.Duration) []time.Time {
		var got []time.Time
		deadline := time.Now().Add(d)
		buf := make([]byte, 1600)
		for len(got) < n {
			left := time.Until(deadline)
			if left <= 0 {
				break
			}
			tv := unix.NsecToTimeval(left.Nanoseconds())
			unix.SetsockoptTimeval(fd, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &tv)
			m, _, err := unix.Recvfrom(fd, buf, 0)
			if err != nil {
				continue
			}
			if m >= len(want) && string(buf[:len(want)]) == string(want) {
				got = append(got, time.Now())
			}
		}
		return got
	}
}

func TestVIPAnnounceSchedule(t *testing.T) {
	tb := newTestbed(t, "a", "b")
	a := tb.nodes["a"]
	frame := garpFrame(a.mac, netip.MustParseAddr(tbVIP))
	capture := tb.captureGARPs("b", frame)

	// The whole schedule is sent, spaced as configured.
	v := tb.newVIP("a", []time.Duration{0, 100 * time.Millisecond, 300 * time.Millisecond})
	start := time.Now()
	if err := v.Acquire(t.Context()); err != nil {
		t.Fatal(err)
	}
	got := capture(4, time.Second)
	if len(got) != 3 {
		t.Fatalf("B saw %d gratuitous ARPs within 1s, want 3", len(got))
	}
	for i, atLeast := range []time.Duration{0, 90 * time.Millisecond, 290 * time.Millisecond} {
		if off := got[i].Sub(start); off < atLeast {
			t.Errorf("announcement %d arrived %v after Acquire, want >= %v", i, off, atLeast)
		}
	}
	t.Logf("announcements at %v, %v, %v", got[0].Sub(start), got[1].Sub(start), got[2].Sub(start))

	// Release cancels announcements still pending.
	if err := v.Release(); err != nil {
		t.Fatal(err)
	}
	v2 := tb.newVIP("a", []time.Duration{0, 200 * time.Millisecond, 400 * time.Millisecond})
	if err := v2.Acquire(t.Context()); err != nil {
		t.Fatal(err)
	}
	if err := v2.Release(); err != nil {
		t.Fatal(err)
	}
	if got := capture(3, 600*time.Millisecond); len(got) != 1 {
		t.Fatalf("after Acquire+Release B saw %d gratuitous ARPs, want only the immediate one", len(got))
	}

	// Close stops everything; later calls report ErrClosed.
	if err := v2.Close(); err != nil {
		t.Fatal(err)
	}
	if err := v2.Acquire(t.Context()); !errors.Is(err, ErrClosed) {
		t.Fatalf("Acquire after Close = %v, want ErrClosed", err)
	}
}

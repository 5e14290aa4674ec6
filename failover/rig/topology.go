package rig

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"runtime"
	"strings"
	"time"

	"golang.org/x/sys/unix"

	"github.com/hablock/hablock/failover"
)

// The network: a switch namespace holding the bridge, and one namespace
// per host with an eth0 veth whose other end is a bridge port. Addresses
// come from Subnet and exist only inside these namespaces.
const (
	Subnet   = "10.250.0.0/24"
	VIP      = "10.250.0.100"
	VIPCIDR  = VIP + "/24"
	bridge   = "rg-br0"
	ifName   = "eth0"
	nftTable = "rgcut"
)

// Host names as the rig knows them; a host's namespace is prefix + "-" + name.
const (
	N1     = "n1"
	N2     = "n2"
	W      = "w"
	Client = "c1"
)

// hostAddr is each host's address on the bridge.
var hostAddr = map[string]string{N1: "10.250.0.1", N2: "10.250.0.2", W: "10.250.0.3", Client: "10.250.0.10"}

// hostOrder is the creation order (and MAC suffix order).
var hostOrder = []string{N1, N2, W, Client}

// topology is the set of namespaces of one rig. Every name carries the
// prefix so that a crashed run's leftovers can be found and removed.
type topology struct {
	prefix string
	logf   func(string, ...any)
}

func (tp *topology) ns(host string) string { return tp.prefix + "-" + host }
func (tp *topology) sw() string            { return tp.prefix + "-sw" }

// nsPath is the bind mount of host's network namespace, for nsenter.
func (tp *topology) nsPath(host string) string { return "/run/netns/" + tp.ns(host) }

// allNS lists every namespace of the rig, the switch last.
func (tp *topology) allNS() []string {
	var s []string
	for _, h := range hostOrder {
		s = append(s, tp.ns(h))
	}
	return append(s, tp.sw())
}

// run runs a command and returns its combined output; the error names the
// command and carries the output.
func run(ctx context.Context, name string, args ...string) (string, error) {
	cmd := exec.CommandContext(ctx, name, args...)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	cmd.WaitDelay = 5 * time.Second
	if err := cmd.Run(); err != nil {
		return out.String(), fmt.Errorf("%s %s: %w: %s", name, strings.Join(args, " "), err, strings.TrimSpace(out.String()))
	}
	return out.String(), nil
}

func (tp *topology) ip(ctx context.Context, args ...string) error {
	_, err := run(ctx, "ip", args...)
	return err
}

// removeStale deletes what a previous run with this prefix left behind:
// processes still running in its namespaces (SIGKILL), then the
// namespaces themselves (which deletes their links).
func (tp *topology) removeStale(ctx context.Context) {
	for _, ns := range tp.allNS() {
		if _, err := os.Stat("/run/netns/" + ns); err != nil {
			continue
		}
		out, _ := run(ctx, "ip", "netns", "pids", ns)
		for _, pid := range strings.Fields(out) {
			tp.logf("stale run: killing pid %s in namespace %s", pid, ns)
			_, _ = run(ctx, "kill", "-9", pid)
		}
		tp.logf("stale run: deleting namespace %s", ns)
		_, _ = run(ctx, "ip", "netns", "del", ns)
	}
}

// build creates the namespaces, the bridge and the veth pairs; host i gets
// its address from hostAddr and MAC 02:00:0a:fa:00:(i+1).
func (tp *topology) build(ctx context.Context) error {
	sw := tp.sw()
	if err := tp.ip(ctx, "netns", "add", sw); err != nil {
		return err
	}
	steps := [][]string{
		{"-n", sw, "link", "set", "lo", "up"},
		{"-n", sw, "link", "add", bridge, "type", "bridge"},
		{"-n", sw, "link", "set", bridge, "up"},
	}
	for i, h := range hostOrder {
		ns := tp.ns(h)
		if err := tp.ip(ctx, "netns", "add", ns); err != nil {
			return err
		}
		port := "p" + h
		mac := fmt.Sprintf("02:00:0a:fa:00:%02x", i+1)
		steps = append(steps,
			[]string{"-n", sw, "link", "add", port, "type", "veth", "peer", "name", ifName, "address", mac, "netns", ns},
			[]string{"-n", sw, "link", "set", port, "master", bridge, "up"},
			[]string{"-n", ns, "link", "set", "lo", "up"},
			[]string{"-n", ns, "link", "set", ifName, "up"},
			[]string{"-n", ns, "addr", "add", hostAddr[h] + "/24", "dev", ifName},
		)
	}
	for _, s := range steps {
		if err := tp.ip(ctx, s...); err != nil {
			return err
		}
	}
	return nil
}

// teardown deletes every namespace (and with them every link). Processes
// must have been stopped first.
func (tp *topology) teardown(ctx context.Context) error {
	var errs []string
	for _, ns := range tp.allNS() {
		if _, err := os.Stat("/run/netns/" + ns); err != nil {
			continue
		}
		if err := tp.ip(ctx, "netns", "del", ns); err != nil {
			errs = append(errs, err.Error())
		}
	}
	if len(errs) > 0 {
		return fmt.Errorf("teardown: %s", strings.Join(errs, "; "))
	}
	return nil
}

// linkSet sets host's eth0 up or down.
func (tp *topology) linkSet(ctx context.Context, host string, up bool) error {
	state := "down"
	if up {
		state = "up"
	}
	return tp.ip(ctx, "-n", tp.ns(host), "link", "set", ifName, state)
}

// hasVIP reports whether host's eth0 holds the VIP.
func (tp *topology) hasVIP(ctx context.Context, host string) (bool, error) {
	out, err := run(ctx, "ip", "-n", tp.ns(host), "-4", "addr", "show", "dev", ifName)
	if err != nil {
		return false, err
	}
	return strings.Contains(out, " "+VIP+"/"), nil
}

// addVIP adds the VIP to host's eth0 and announces it with one gratuitous
// ARP (arping -U sends at once but returns about a second later, so it is
// not waited for).
func (tp *topology) addVIP(ctx context.Context, host string) error {
	if err := tp.ip(ctx, "-n", tp.ns(host), "addr", "replace", VIPCIDR, "dev", ifName); err != nil {
		return err
	}
	cmd := exec.Command("nsenter", "--net="+tp.nsPath(host), "--", "arping", "-q", "-U", "-c", "1", "-I", ifName, VIP)
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("arping -U in %s: %w", tp.ns(host), err)
	}
	go func() { _ = cmd.Wait() }()
	return nil
}

// delVIP removes the VIP from host's eth0 if it is there.
func (tp *topology) delVIP(ctx context.Context, host string) error {
	has, err := tp.hasVIP(ctx, host)
	if err != nil || !has {
		return err
	}
	return tp.ip(ctx, "-n", tp.ns(host), "addr", "del", VIPCIDR, "dev", ifName)
}

// cut drops all IPv4 traffic between host a and host b (both directions,
// rules in both namespaces) with nftables; sch_netem is not available on
// this kernel. heal removes every cut.
func (tp *topology) cut(ctx context.Context, a, b string) error {
	for _, p := range [][2]string{{a, b}, {b, a}} {
		ns, peer := tp.ns(p[0]), hostAddr[p[1]]
		script := fmt.Sprintf(`table inet %[1]s {
	chain in { type filter hook input priority 0; ip saddr %[2]s drop; }
	chain out { type filter hook output priority 0; ip daddr %[2]s drop; }
}
`, nftTable, peer)
		cmd := exec.CommandContext(ctx, "nsenter", "--net="+tp.nsPath(p[0]), "--", "nft", "-f", "-")
		cmd.Stdin = strings.NewReader(script)
		if out, err := cmd.CombinedOutput(); err != nil {
			return fmt.Errorf("nft in %s (drop %s): %w: %s", ns, peer, err, out)
		}
	}
	return nil
}

// heal removes the nftables cut table from every host that has one.
func (tp *topology) heal(ctx context.Context) error {
	for _, h := range hostOrder {
		out, _ := run(ctx, "nsenter", "--net="+tp.nsPath(h), "--", "nft", "list", "tables")
		if !strings.Contains(out, nftTable) {
			continue
		}
		if _, err := run(ctx, "nsenter", "--net="+tp.nsPath(h), "--", "nft", "delete", "table", "inet", nftTable); err != nil {
			return err
		}
	}
	return nil
}

// iscsiClients lists the client ends of the iSCSI connections host serves
// now (what a Primary shares with its peer for tickling).
func (tp *topology) iscsiClients(ctx context.Context, host string) ([]netip.AddrPort, error) {
	out, err := run(ctx, "nsenter", "--net="+tp.nsPath(host), "--", "ss", "-Htn", "state", "established", "sport", "=", ":3260")
	if err != nil {
		return nil, err
	}
	var conns []netip.AddrPort
	for _, line := range strings.Split(out, "\n") {
		f := strings.Fields(line)
		if len(f) < 4 {
			continue
		}
		if ap, err := netip.ParseAddrPort(f[3]); err == nil {
			conns = append(conns, ap)
		}
	}
	return conns, nil
}

// tickle sends a tickle ACK from VIP:3260 to each client, from a raw
// socket in host's network namespace (failover.Tickler), so that the
// clients' stacks reset their connections to the old Primary at once.
func (tp *topology) tickle(ctx context.Context, host string, clients []netip.AddrPort) error {
	errc := make(chan error, 1)
	go func() {
		// The thread joins host's namespace and is never unlocked: the
		// runtime discards it when this goroutine ends.
		runtime.LockOSThread()
		f, err := os.Open(tp.nsPath(host))
		if err != nil {
			errc <- err
			return
		}
		defer f.Close()
		if err := unix.Setns(int(f.Fd()), unix.CLONE_NEWNET); err != nil {
			errc <- fmt.Errorf("setns %s: %w", tp.ns(host), err)
			return
		}
		tk, err := failover.NewTickler()
		if err != nil {
			errc <- err
			return
		}
		defer tk.Close()
		local := netip.AddrPortFrom(netip.MustParseAddr(VIP), 3260)
		var errs []error
		for _, c := range clients {
			errs = append(errs, tk.Tickle(ctx, local, c))
		}
		errc <- errors.Join(errs...)
	}()
	return <-errc
}

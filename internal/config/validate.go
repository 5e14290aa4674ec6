package config

import (
	"cmp"
	"errors"
	"fmt"
	"net"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"time"
)

// MaxName bounds resource and node names (bytes), as the replication
// handshake does.
const MaxName = 64

var nameRE = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._-]*$`)

var (
	sb0Policies = []string{"disconnect", "discard-younger-primary", "discard-older-primary",
		"discard-zero-changes", "discard-least-changes"}
	sb1Policies = []string{"disconnect", "consensus", "discard-secondary"}
	verifyAlgs  = []string{"sha256", "crc32c"}
	csumsAlgs   = []string{"none", "sha256"}
)

// Validate checks r without changing it and returns every problem found
// (joined, in file order), each an *Error naming the field and, for a
// Resource read by Parse, the line where it was set.
func (r *Resource) Validate() error {
	v := &validator{r: r}
	v.resource()
	v.iscsi()
	v.net()
	v.failover()
	v.nodes()
	slices.SortStableFunc(v.errs, func(a, b *Error) int {
		if (a.Line == 0) != (b.Line == 0) {
			return cmp.Compare(b.Line, a.Line) // positioned first
		}
		return cmp.Compare(a.Line, b.Line)
	})
	errs := make([]error, len(v.errs))
	for i, e := range v.errs {
		errs[i] = e
	}
	return errors.Join(errs...)
}

type validator struct {
	r    *Resource
	errs []*Error
}

// at finds where field was set, falling back to its enclosing section
// and then to the resource header.
func (v *validator) at(field string) pos {
	for {
		if p, ok := v.r.pos[field]; ok {
			return p
		}
		if field == "" {
			return pos{}
		}
		i := strings.LastIndexByte(field, '.')
		if i < strings.LastIndexByte(field, ']') {
			i = -1
		}
		field = field[:max(i, 0)]
	}
}

func (v *validator) errf(field, format string, args ...any) {
	p := v.at(field)
	v.errs = append(v.errs, &Error{File: v.r.file, Line: p.line, Col: p.col, Field: field, Msg: fmt.Sprintf(format, args...)})
}

// also names the line where another field was set, if known.
func (v *validator) also(field string) string {
	if p := v.at(field); p.line > 0 {
		return fmt.Sprintf(" (line %d)", p.line)
	}
	return ""
}

func (v *validator) resource() {
	r := v.r
	if err := checkName(r.Name); err != nil {
		v.errf("resource", "%v", err)
	}
	if r.BlockSize != 512 && r.BlockSize != 4096 {
		v.errf("block-size", "%d is not supported; want 512 or 4096", r.BlockSize)
	} else if r.Size < 0 || r.Size%int64(r.BlockSize) != 0 {
		v.errf("size", "%d bytes is not a multiple of the %d-byte block size", r.Size, r.BlockSize)
	}
	if r.Protocol < ProtocolA || r.Protocol > ProtocolC {
		v.errf("protocol", "%v is not a protocol; want A, B or C", r.Protocol)
	}
}

func (v *validator) iscsi() {
	c := v.r.ISCSI
	if err := CheckIQN(c.IQN); err != nil {
		hint := ""
		if _, set := v.r.pos["iscsi.iqn"]; !set && v.r.pos != nil {
			hint = " (the default, made from the resource name; set iscsi.iqn)"
		}
		v.errf("iscsi.iqn", "%v%s", err, hint)
	}
	if err := checkHostPort(c.Listen, true); err != nil {
		v.errf("iscsi.listen", "%v", err)
	}
	switch {
	case c.VIP.IsValid() && c.VIPInterface == "":
		v.errf("iscsi.vip-interface", "required with iscsi.vip")
	case !c.VIP.IsValid() && c.VIPInterface != "":
		v.errf("iscsi.vip-interface", "set without iscsi.vip")
	}
	if c.VIP.IsValid() {
		a := c.VIP.Addr()
		if a.IsUnspecified() || a.IsMulticast() || a.IsLoopback() || c.VIP.Bits() == 0 {
			v.errf("iscsi.vip", "%v cannot be a floating service address", c.VIP)
		}
		if host, _, err := net.SplitHostPort(c.Listen); err == nil && !isWildcard(host) && host != a.String() {
			v.errf("iscsi.listen", "host %s is not the VIP %s; the Primary must accept on the VIP (use 0.0.0.0 or the VIP)", host, a)
		}
	}
	if c.VIPInterface != "" && (len(c.VIPInterface) > 15 || strings.ContainsAny(c.VIPInterface, "/ \t:")) {
		v.errf("iscsi.vip-interface", "%q is not a network interface name", c.VIPInterface)
	}
}

func (v *validator) net() {
	n := v.r.Net
	for _, d := range []struct {
		field string
		val   time.Duration
	}{
		{"net.ping-interval", n.PingInterval}, {"net.ping-timeout", n.PingTimeout}, {"net.timeout", n.Timeout},
		{"net.connect-retry-min", n.ConnectRetryMin}, {"net.connect-retry-max", n.ConnectRetryMax},
	} {
		if d.val <= 0 {
			v.errf(d.field, "%v: must be positive", d.val)
		}
	}
	if n.PingTimeout > 0 && n.PingTimeout >= n.PingInterval {
		v.errf("net.ping-timeout", "%v must be less than net.ping-interval %v%s", n.PingTimeout, n.PingInterval, v.also("net.ping-interval"))
	}
	if n.ConnectRetryMin > n.ConnectRetryMax {
		v.errf("net.connect-retry-max", "%v is less than net.connect-retry-min %v%s", n.ConnectRetryMax, n.ConnectRetryMin, v.also("net.connect-retry-min"))
	}
	if n.KoCount < 0 {
		v.errf("net.ko-count", "%d: must be 0 (never expel) or more", n.KoCount)
	}
	if n.ResyncRate < 0 {
		v.errf("net.resync-rate", "%d: must be 0 (unlimited) or more", n.ResyncRate)
	}
	if target, ok := strings.CutPrefix(n.AfterSB0Pri, "discard-node-"); ok {
		if !slices.ContainsFunc(v.r.Nodes, func(nd Node) bool { return nd.Name == target }) {
			var disk []string
			for _, nd := range v.r.Nodes {
				disk = append(disk, "discard-node-"+nd.Name)
			}
			v.errf("net.after-sb-0pri", "%q names no disk node; want one of %s", n.AfterSB0Pri, strings.Join(disk, ", "))
		}
	} else if !slices.Contains(sb0Policies, n.AfterSB0Pri) {
		v.errf("net.after-sb-0pri", "%s", badChoice(n.AfterSB0Pri, append(sb0Policies, "discard-node-NAME")))
	}
	if !slices.Contains(sb1Policies, n.AfterSB1Pri) {
		v.errf("net.after-sb-1pri", "%s", badChoice(n.AfterSB1Pri, sb1Policies))
	}
	if !slices.Contains(verifyAlgs, n.VerifyAlg) {
		v.errf("net.verify-alg", "%s", badChoice(n.VerifyAlg, verifyAlgs))
	}
	if !slices.Contains(csumsAlgs, n.CsumsAlg) {
		v.errf("net.csums-alg", "%s", badChoice(n.CsumsAlg, csumsAlgs))
	}
}

func (v *validator) failover() {
	f := v.r.Failover
	for _, d := range []struct {
		field string
		val   time.Duration
	}{
		{"failover.heartbeat-interval", f.HeartbeatInterval}, {"failover.heartbeat-timeout", f.HeartbeatTimeout},
		{"failover.vote-timeout", f.VoteTimeout}, {"failover.failback-settle", f.FailbackSettle},
		{"failover.probe-interval", f.ProbeInterval}, {"failover.probe-timeout", f.ProbeTimeout},
		{"failover.gossip-interval", f.GossipInterval}, {"failover.reconnect-interval", f.ReconnectInterval},
	} {
		if d.val <= 0 {
			v.errf(d.field, "%v: must be positive", d.val)
		}
	}
	if f.HeartbeatInterval > 0 && f.HeartbeatTimeout < 3*f.HeartbeatInterval {
		v.errf("failover.heartbeat-timeout", "%v must be at least 3 x failover.heartbeat-interval %v%s, so that one or two lost heartbeats do not look like a dead node",
			f.HeartbeatTimeout, f.HeartbeatInterval, v.also("failover.heartbeat-interval"))
	}
	if f.HeartbeatTimeout > 0 && f.VoteTimeout <= f.HeartbeatTimeout {
		v.errf("failover.vote-timeout", "%v must exceed failover.heartbeat-timeout %v%s: a voter may wait that long to confirm the Primary is silent",
			f.VoteTimeout, f.HeartbeatTimeout, v.also("failover.heartbeat-timeout"))
	}
	if f.ProbeTimeout > 0 && f.ProbeTimeout >= f.ProbeInterval {
		v.errf("failover.probe-timeout", "%v must be less than failover.probe-interval %v%s", f.ProbeTimeout, f.ProbeInterval, v.also("failover.probe-interval"))
	}
	if f.SuspicionMult < 1 {
		v.errf("failover.suspicion-mult", "%d: must be 1 or more", f.SuspicionMult)
	}
	if f.SuspicionMaxTimeoutMult < 1 {
		v.errf("failover.suspicion-max-timeout-mult", "%d: must be 1 or more", f.SuspicionMaxTimeoutMult)
	}
	if f.AutoFailback != "" && !slices.ContainsFunc(v.r.Nodes, func(nd Node) bool { return nd.Name == f.AutoFailback }) {
		var disk []string
		for _, nd := range v.r.Nodes {
			disk = append(disk, nd.Name)
		}
		v.errf("failover.auto-failback", "%q names no disk node; want none or one of %s", f.AutoFailback, strings.Join(disk, ", "))
	}
}

func badChoice(got string, allowed []string) string {
	msg := fmt.Sprintf("%q is not one of %s", got, strings.Join(allowed, ", "))
	if d := suggest(got, allowed); d != "" {
		msg += "; did you mean " + d + "?"
	}
	return msg
}

type member struct {
	id   string // "node[n1]" or "witness[w]"
	node Node
}

func (v *validator) nodes() {
	r := v.r
	var all []member
	for _, n := range r.Nodes {
		all = append(all, member{"node[" + n.Name + "]", n})
	}
	switch {
	case len(r.Nodes) < 2:
		v.errf("node", "%d disk nodes; want exactly two \"node NAME { ... }\" sections", len(r.Nodes))
	case len(r.Nodes) > 2:
		v.errf(all[2].id, "a third disk node; want exactly two (a diskless quorum member is a \"witness\")")
	}
	if r.Witness != nil {
		all = append(all, member{"witness[" + r.Witness.Name + "]", *r.Witness})
		if r.Witness.Backing != "" {
			v.errf(all[len(all)-1].id+".backing", "a witness has no backing store")
		}
		if r.Protocol != ProtocolC {
			v.errf("protocol", "protocol %v with a witness: automatic failover needs protocol C (with A or B the Secondary may lack writes the Primary already acknowledged, and a takeover would lose them); use protocol C, or drop the witness and fail over by hand", r.Protocol)
		}
	}
	names := map[string]string{} // name -> id
	addrs := map[string]string{} // normalised address -> field
	paths := map[string]string{} // host + "\x00" + path -> field
	for _, m := range all {
		n := m.node
		if err := checkName(n.Name); err != nil {
			v.errf(m.id, "%v", err)
		}
		if first, dup := names[n.Name]; dup {
			v.errf(m.id, "name %q already used by %s%s", n.Name, first, v.also(first))
		} else {
			names[n.Name] = m.id
		}
		dupAddr := false
		if n.Address == "" {
			v.errf(m.id+".address", "required")
		} else if err := checkHostPort(n.Address, false); err != nil {
			v.errf(m.id+".address", "%v", err)
		} else {
			host, port, _ := net.SplitHostPort(n.Address)
			key := strings.ToLower(host) + " " + port
			if first, dup := addrs[key]; dup {
				v.errf(m.id+".address", "%s is also %s%s", n.Address, first, v.also(first))
				dupAddr = true // same host: the path checks would only repeat this
			} else {
				addrs[key] = m.id + ".address"
			}
		}
		// gossip and control are bound only by the failover manager,
		// which runs only with a witness.
		if r.Witness != nil && !dupAddr && n.Address != "" && checkHostPort(n.Address, false) == nil {
			for _, a := range []struct{ key, val string }{{"gossip", n.GossipAddress()}, {"control", n.ControlAddress()}} {
				field := m.id + "." + a.key
				if a.val == "" {
					v.errf(field, "cannot derive it from address %s (port + %d is above 65535); set it", n.Address, map[string]int{"gossip": 1, "control": 2}[a.key])
					continue
				}
				if err := checkHostPort(a.val, false); err != nil {
					v.errf(field, "%v", err)
					continue
				}
				host, port, _ := net.SplitHostPort(a.val)
				key := strings.ToLower(host) + " " + port
				if first, dup := addrs[key]; dup {
					what := a.val
					if _, set := v.r.pos[field]; !set {
						what += " (the default: address port + " + map[string]string{"gossip": "1", "control": "2"}[a.key] + "; set " + a.key + ")"
					}
					v.errf(field, "%s is also %s%s", what, first, v.also(first))
				} else {
					addrs[key] = field
				}
			}
		}
		if !strings.HasPrefix(m.id, "witness") && n.Backing == "" {
			v.errf(m.id+".backing", "required for a disk node")
		}
		host, _, _ := net.SplitHostPort(n.Address)
		for _, p := range []struct{ key, val string }{{"backing", n.Backing}, {"meta-dir", n.MetaDir}, {"admin", n.Admin}} {
			field := m.id + "." + p.key
			if p.val == "" {
				if p.key != "backing" {
					v.errf(field, "required")
				}
				continue
			}
			if !filepath.IsAbs(p.val) {
				v.errf(field, "%q is not an absolute path", p.val)
				continue
			}
			// Two members on one host (a test setup) must not share files.
			k := strings.ToLower(host) + "\x00" + filepath.Clean(p.val)
			if first, dup := paths[k]; dup && host != "" && !dupAddr {
				v.errf(field, "%s is also %s on the same host%s", p.val, first, v.also(first))
			} else {
				paths[k] = field
			}
		}
	}
}

func checkName(s string) error {
	switch {
	case s == "":
		return errors.New("name is empty")
	case len(s) > MaxName:
		return fmt.Errorf("name longer than %d bytes", MaxName)
	case !nameRE.MatchString(s):
		return fmt.Errorf("name %q: use letters, digits, '.', '_' and '-', starting with a letter or digit", s)
	}
	return nil
}

var (
	iqnRE = regexp.MustCompile(`^iqn\.[0-9]{4}-(0[1-9]|1[0-2])\.` + // date the domain was owned
		`[a-z0-9]([a-z0-9-]*[a-z0-9])?(\.[a-z0-9]([a-z0-9-]*[a-z0-9])?)*` + // reversed domain
		`(:[a-z0-9.:-]+)?$`) // optional unique identifier
	euiRE = regexp.MustCompile(`^eui\.[0-9a-f]{16}$`)
	naaRE = regexp.MustCompile(`^naa\.([0-9a-f]{16}|[0-9a-f]{32})$`)
)

// CheckIQN checks an iSCSI name (RFC 7143 section 4.2.7; compared case-
// insensitively): iqn.YYYY-MM.reverse.domain[:identifier] with letters,
// digits, '-', '.' and ':', eui. and 16 hex digits, or naa. and 16 or 32
// hex digits; at most 223 bytes.
func CheckIQN(name string) error {
	l := strings.ToLower(name)
	var ok bool
	var want string
	switch {
	case len(name) > 223:
		return fmt.Errorf("%q is longer than 223 bytes", name)
	case strings.HasPrefix(l, "iqn."):
		ok, want = iqnRE.MatchString(l), "iqn.YYYY-MM.reverse.domain[:identifier] (letters, digits, '-', '.', ':')"
	case strings.HasPrefix(l, "eui."):
		ok, want = euiRE.MatchString(l), "eui. and 16 hex digits"
	case strings.HasPrefix(l, "naa."):
		ok, want = naaRE.MatchString(l), "naa. and 16 or 32 hex digits"
	default:
		want = "iqn.YYYY-MM.reverse.domain[:identifier], eui.<16 hex digits> or naa.<16 or 32 hex digits>"
	}
	if !ok {
		return fmt.Errorf("%q is not an iSCSI name; want %s", name, want)
	}
	return nil
}

package config

import (
	"bufio"
	"fmt"
	"io"
	"strconv"
	"strings"
)

// Format writes r in the file syntax, every setting explicit, so that
// Parse reads back an equal Resource. It does not validate r.
func (r *Resource) Format(w io.Writer) error {
	b := bufio.NewWriter(w)
	kv := func(indent, k, v string) { fmt.Fprintf(b, "%s%s %s\n", indent, k, quote(v)) }
	fmt.Fprintf(b, "resource %s {\n", quote(r.Name))
	if r.Size != 0 {
		kv("    ", "size", formatBytes(r.Size))
	}
	kv("    ", "block-size", strconv.FormatUint(uint64(r.BlockSize), 10))
	kv("    ", "protocol", r.Protocol.String())

	c := r.ISCSI
	b.WriteString("\n    iscsi {\n")
	kv("        ", "iqn", c.IQN)
	kv("        ", "listen", c.Listen)
	if c.VIP.IsValid() {
		kv("        ", "vip", c.VIP.String())
	}
	if c.VIPInterface != "" {
		kv("        ", "vip-interface", c.VIPInterface)
	}
	b.WriteString("    }\n")

	n := r.Net
	rate := "unlimited"
	if n.ResyncRate != 0 {
		rate = formatBytes(n.ResyncRate)
	}
	b.WriteString("\n    net {\n")
	for _, s := range [][2]string{
		{"ping-interval", n.PingInterval.String()}, {"ping-timeout", n.PingTimeout.String()},
		{"timeout", n.Timeout.String()}, {"ko-count", strconv.Itoa(n.KoCount)},
		{"connect-retry-min", n.ConnectRetryMin.String()}, {"connect-retry-max", n.ConnectRetryMax.String()},
		{"after-sb-0pri", n.AfterSB0Pri}, {"after-sb-1pri", n.AfterSB1Pri},
		{"resync-rate", rate}, {"verify-alg", n.VerifyAlg}, {"csums-alg", n.CsumsAlg},
	} {
		kv("        ", s[0], s[1])
	}
	b.WriteString("    }\n")

	f := r.Failover
	failback := f.AutoFailback
	if failback == "" {
		failback = "none"
	}
	b.WriteString("\n    failover {\n")
	for _, s := range [][2]string{
		{"heartbeat-interval", f.HeartbeatInterval.String()}, {"heartbeat-timeout", f.HeartbeatTimeout.String()},
		{"vote-timeout", f.VoteTimeout.String()}, {"auto-failback", failback},
		{"failback-settle", f.FailbackSettle.String()},
		{"probe-interval", f.ProbeInterval.String()}, {"probe-timeout", f.ProbeTimeout.String()},
		{"suspicion-mult", strconv.Itoa(f.SuspicionMult)},
		{"suspicion-max-timeout-mult", strconv.Itoa(f.SuspicionMaxTimeoutMult)},
		{"gossip-interval", f.GossipInterval.String()}, {"reconnect-interval", f.ReconnectInterval.String()},
	} {
		kv("        ", s[0], s[1])
	}
	b.WriteString("    }\n")

	node := func(kind string, nd Node) {
		fmt.Fprintf(b, "\n    %s %s {\n", kind, quote(nd.Name))
		for _, s := range [][2]string{{"address", nd.Address}, {"backing", nd.Backing}, {"meta-dir", nd.MetaDir}, {"admin", nd.Admin},
			{"gossip", nd.Gossip}, {"control", nd.Control}} {
			if s[1] != "" {
				kv("        ", s[0], s[1])
			}
		}
		b.WriteString("    }\n")
	}
	for _, nd := range r.Nodes {
		node("node", nd)
	}
	if r.Witness != nil {
		node("witness", *r.Witness)
	}
	b.WriteString("}\n")
	return b.Flush()
}

// quote returns v as one word of the syntax.
func quote(v string) string {
	if v != "" && !strings.ContainsAny(v, " \t\r\n{};#\"\\") {
		return v
	}
	return `"` + strings.NewReplacer(`\`, `\\`, `"`, `\"`).Replace(v) + `"`
}

// formatBytes renders n with the largest binary suffix that divides it.
func formatBytes(n int64) string {
	for _, u := range []struct {
		suffix string
		shift  uint
	}{{"T", 40}, {"G", 30}, {"M", 20}, {"K", 10}} {
		if n >= 1<<u.shift && n%(1<<u.shift) == 0 {
			return strconv.FormatInt(n>>u.shift, 10) + u.suffix
		}
	}
	return strconv.FormatInt(n, 10)
}

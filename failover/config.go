package failover

import (
	"fmt"
	"net"
	"time"

	"github.com/hablock/hablock/internal/config"
)

// Member is one voter of a resource.
type Member struct {
	Name    string
	Witness bool
	// Control is the host:port of its control channel (UDP heartbeats,
	// TCP votes); Gossip that of its serf agent.
	Control string
	Gossip  string
}

// Config configures a Manager. ConfigFor builds it from a resource file;
// every field is documented (with its default) on config.Failover.
type Config struct {
	Resource string
	// Me is this node's name; Members lists every voter, Me included:
	// the two disk nodes and, normally, the witness.
	Me      string
	Members []Member

	HeartbeatInterval time.Duration
	HeartbeatTimeout  time.Duration
	VoteTimeout       time.Duration
	// PromoteTimeout bounds the promote request of a planned switchover
	// (the target starts its iSCSI target and takes the VIP). Default
	// (ConfigFor) 30s.
	PromoteTimeout time.Duration
	AutoFailback   string
	FailbackSettle time.Duration
	Serf           SerfConfig
}

// ConfigFor returns the Config of node (a disk node or the witness) of
// res, which must have been validated (config.Load does).
func ConfigFor(res *config.Resource, node string) (Config, error) {
	if _, err := res.Node(node); err != nil {
		return Config{}, err
	}
	f := res.Failover
	c := Config{
		Resource: res.Name, Me: node,
		HeartbeatInterval: f.HeartbeatInterval, HeartbeatTimeout: f.HeartbeatTimeout,
		VoteTimeout: f.VoteTimeout, PromoteTimeout: 30 * time.Second,
		AutoFailback: f.AutoFailback, FailbackSettle: f.FailbackSettle,
		Serf: SerfConfig{ProbeInterval: f.ProbeInterval, ProbeTimeout: f.ProbeTimeout, SuspicionMult: f.SuspicionMult,
			SuspicionMaxTimeoutMult: f.SuspicionMaxTimeoutMult, GossipInterval: f.GossipInterval, ReconnectInterval: f.ReconnectInterval},
	}
	for _, n := range res.Nodes {
		c.Members = append(c.Members, Member{Name: n.Name, Control: n.ControlAddress(), Gossip: n.GossipAddress()})
	}
	if w := res.Witness; w != nil {
		c.Members = append(c.Members, Member{Name: w.Name, Witness: true, Control: w.ControlAddress(), Gossip: w.GossipAddress()})
	}
	return c, c.Validate()
}

// Validate checks c and names the offending field. It never mutates c.
func (c Config) Validate() error {
	disks, witnesses, me := 0, 0, false
	seen := map[string]bool{}
	for _, m := range c.Members {
		if err := checkName(m.Name); err != nil {
			return err
		}
		if seen[m.Name] {
			return fmt.Errorf("failover: Config.Members: %q twice", m.Name)
		}
		seen[m.Name] = true
		me = me || m.Name == c.Me
		if m.Witness {
			witnesses++
		} else {
			disks++
		}
		for _, a := range []string{m.Control, m.Gossip} {
			if _, _, err := net.SplitHostPort(a); err != nil {
				return fmt.Errorf("failover: Config.Members[%s]: address %q: %v", m.Name, a, err)
			}
		}
	}
	switch {
	case disks != 2 || witnesses > 1:
		return fmt.Errorf("failover: Config.Members: %d disk nodes and %d witnesses; want 2 and at most 1", disks, witnesses)
	case !me:
		return fmt.Errorf("failover: Config.Me %q is not a member", c.Me)
	case c.HeartbeatInterval <= 0:
		return fmt.Errorf("failover: Config.HeartbeatInterval %v: must be positive", c.HeartbeatInterval)
	case c.HeartbeatTimeout < 3*c.HeartbeatInterval:
		return fmt.Errorf("failover: Config.HeartbeatTimeout %v: must be at least 3 x HeartbeatInterval %v", c.HeartbeatTimeout, c.HeartbeatInterval)
	case c.VoteTimeout <= c.HeartbeatTimeout:
		return fmt.Errorf("failover: Config.VoteTimeout %v: must exceed HeartbeatTimeout %v", c.VoteTimeout, c.HeartbeatTimeout)
	case c.PromoteTimeout <= 0:
		return fmt.Errorf("failover: Config.PromoteTimeout %v: must be positive", c.PromoteTimeout)
	case c.FailbackSettle <= 0:
		return fmt.Errorf("failover: Config.FailbackSettle %v: must be positive", c.FailbackSettle)
	case c.Serf.ProbeInterval <= 0 || c.Serf.ProbeTimeout <= 0 || c.Serf.ProbeTimeout >= c.Serf.ProbeInterval:
		return fmt.Errorf("failover: Config.Serf: probe timeout %v must be positive and below the probe interval %v", c.Serf.ProbeTimeout, c.Serf.ProbeInterval)
	case c.Serf.SuspicionMult < 1 || c.Serf.SuspicionMaxTimeoutMult < 1:
		return fmt.Errorf("failover: Config.Serf: suspicion multipliers must be 1 or more")
	case c.Serf.GossipInterval <= 0 || c.Serf.ReconnectInterval <= 0:
		return fmt.Errorf("failover: Config.Serf: gossip and reconnect intervals must be positive")
	}
	if c.AutoFailback != "" {
		if m, ok := c.member(c.AutoFailback); !ok || m.Witness {
			return fmt.Errorf("failover: Config.AutoFailback %q is not a disk node", c.AutoFailback)
		}
	}
	return nil
}

func (c Config) member(name string) (Member, bool) {
	for _, m := range c.Members {
		if m.Name == name {
			return m, true
		}
	}
	return Member{}, false
}

// peerOf returns the disk node other than name ("" if name is the witness).
func (c Config) peerOf(name string) string {
	if m, _ := c.member(name); m.Witness {
		return ""
	}
	for _, m := range c.Members {
		if !m.Witness && m.Name != name {
			return m.Name
		}
	}
	return ""
}

func (c Config) witness() string {
	for _, m := range c.Members {
		if m.Witness {
			return m.Name
		}
	}
	return ""
}

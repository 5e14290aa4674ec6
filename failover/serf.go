package failover

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"log"
	"log/slog"
	"net"
	"strconv"
	"time"

	"github.com/hashicorp/memberlist"
	"github.com/hashicorp/serf/serf"
)

// SerfConfig holds the memberlist timings (see config.Failover for
// their meaning and the measurements behind the defaults).
type SerfConfig struct {
	ProbeInterval           time.Duration
	ProbeTimeout            time.Duration
	SuspicionMult           int
	SuspicionMaxTimeoutMult int
	GossipInterval          time.Duration
	ReconnectInterval       time.Duration
}

// membership runs one serf agent: membership, a gossip-confirmed
// failure view and tags (role, epoch) for observability. Decisions do not
// wait for it (it declares a dead node in about a second; the heartbeats
// in ~heartbeat-timeout); Status shows it beside the heartbeat ages.
type membership struct {
	s      *serf.Serf
	events chan serf.Event
	log    *slog.Logger
}

// serfLogWriter routes serf's and memberlist's log lines ("[WARN]
// memberlist: ...") to slog: errors at Warn, warnings at Info (a peer
// going away makes many), the rest at Debug.
type serfLogWriter struct{ log *slog.Logger }

func (w serfLogWriter) Write(p []byte) (int, error) {
	line := string(bytes.TrimSpace(p))
	level := slog.LevelDebug
	switch {
	case bytes.Contains(p, []byte("[ERR")):
		level = slog.LevelWarn
	case bytes.Contains(p, []byte("[WARN")):
		level = slog.LevelInfo
	}
	w.log.Log(context.Background(), level, line, "component", "serf")
	return len(p), nil
}

func startMembership(name, bind string, tags map[string]string, sc SerfConfig, logger *slog.Logger) (*membership, error) {
	host, portStr, err := net.SplitHostPort(bind)
	if err != nil {
		return nil, fmt.Errorf("failover: gossip address %q: %w", bind, err)
	}
	port, err := strconv.Atoi(portStr)
	if err != nil {
		return nil, fmt.Errorf("failover: gossip address %q: bad port", bind)
	}
	stdlog := log.New(io.Writer(serfLogWriter{logger}), "", 0)
	ml := memberlist.DefaultLANConfig()
	ml.BindAddr, ml.BindPort = host, port
	ml.AdvertiseAddr, ml.AdvertisePort = host, port
	ml.ProbeInterval = sc.ProbeInterval
	ml.ProbeTimeout = sc.ProbeTimeout
	ml.SuspicionMult = sc.SuspicionMult
	ml.SuspicionMaxTimeoutMult = sc.SuspicionMaxTimeoutMult
	ml.GossipInterval = sc.GossipInterval
	ml.Logger = stdlog
	conf := serf.DefaultConfig()
	conf.Init()
	conf.NodeName = name
	conf.Tags = tags
	conf.MemberlistConfig = ml
	conf.ReconnectInterval = sc.ReconnectInterval
	conf.Logger = stdlog
	conf.CoalescePeriod, conf.QuiescentPeriod = 0, 0
	events := make(chan serf.Event, 64)
	conf.EventCh = events
	s, err := serf.Create(conf)
	if err != nil {
		return nil, fmt.Errorf("failover: start serf on %s: %w", bind, err)
	}
	return &membership{s: s, events: events, log: logger}, nil
}

// joinLoop joins the other members, retrying every interval until one
// join succeeds (they may start later) or ctx ends. Later failures are
// serf's own business (ReconnectInterval).
func (m *membership) joinLoop(ctx context.Context, addrs []string, interval time.Duration) {
	for {
		n, err := m.s.Join(addrs, true)
		if n > 0 {
			m.log.Info("serf joined", "contacted", n)
			return
		}
		m.log.Debug("serf join failed; retrying", "err", err)
		select {
		case <-ctx.Done():
			return
		case <-time.After(interval):
		}
	}
}

func (m *membership) close() {
	if err := m.s.Leave(); err != nil {
		m.log.Debug("serf leave", "err", err)
	}
	m.s.Shutdown()
}

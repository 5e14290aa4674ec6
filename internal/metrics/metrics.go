// Package metrics exports a node's state as Prometheus metrics. It reads
// the same snapshot `hablock status` prints (admin.Status) at every
// scrape, so the two can never disagree and no counter is kept twice.
//
// Conventions:
//   - every series carries the constant labels resource and node;
//   - a state (role, disk, connection, replication) is one series with
//     the state in a label and the value 1, as Prometheus' info and
//     state-set metrics do: `hablock_disk_state{state!="UpToDate"} == 1`
//     is an alert rule;
//   - counters end in _total and count since the agent started;
//   - durations are seconds, sizes bytes.
//
// The witness has no disk: it exports the failover series only.
package metrics

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/hablock/hablock/internal/admin"
)

// StatusFunc returns the node's current snapshot.
type StatusFunc func(context.Context) admin.Status

// Collector is a prometheus.Collector over a StatusFunc.
type Collector struct {
	status StatusFunc
	// scrapeTimeout bounds one StatusFunc call.
	scrapeTimeout time.Duration
	descs         []*prometheus.Desc
	d             descs
}

type descs struct {
	role, peerRole, disk, peerDisk, conn, repl *prometheus.Desc

	outOfSync, syncTotal, syncDone, syncRate, syncRunning *prometheus.Desc
	verifyTotal, verifyDone                               *prometheus.Desc

	writes, bytesWritten, bytesSent, resyncBytes, localErrors *prometheus.Desc

	splitBrain, crashedPrimary, lostCache *prometheus.Desc
	metaFailures, metaUnsaved             *prometheus.Desc
	size                                  *prometheus.Desc

	epoch, quorum, suspended, stalls, maxStall, recordPrimary, recordUpToDate *prometheus.Desc
	hbAge, hbMaxGap, memberSerf, memberEpoch                                  *prometheus.Desc
}

// NewCollector returns a Collector for the node (resource, node label
// every series).
func NewCollector(resource, node string, status StatusFunc) *Collector {
	labels := prometheus.Labels{"resource": resource, "node": node}
	var all []*prometheus.Desc
	nd := func(name, help string, vars ...string) *prometheus.Desc {
		d := prometheus.NewDesc("hablock_"+name, help, vars, labels)
		all = append(all, d)
		return d
	}
	c := &Collector{status: status, scrapeTimeout: 5 * time.Second}
	c.d = descs{
		role:     nd("role", "This node's role (Primary, Secondary, Witness): 1 for the current one.", "role"),
		peerRole: nd("peer_role", "The peer's role as last known (Unknown while disconnected).", "role"),
		disk:     nd("disk_state", "The local disk state (UpToDate, Inconsistent, Outdated, ...).", "state"),
		peerDisk: nd("peer_disk_state", "The peer's disk state as last known (DUnknown while disconnected).", "state"),
		conn:     nd("connection_state", "The replication link (StandAlone, Unconnected, Connecting, Connected, ...).", "state"),
		repl:     nd("replication_state", "What the link carries (Off, Established, SyncSource, SyncTarget, VerifyS, ...).", "state"),

		outOfSync:   nd("out_of_sync_bytes", "Bytes the bitmap marks as differing from the peer."),
		syncTotal:   nd("resync_total_bytes", "Bytes of the current or last resync."),
		syncDone:    nd("resync_done_bytes", "Bytes of the current or last resync done."),
		syncRate:    nd("resync_rate_bytes_per_second", "Average rate of the current or last resync."),
		syncRunning: nd("resync_running", "1 while a resync runs."),
		verifyTotal: nd("verify_total_bytes", "Bytes of the current or last online verify."),
		verifyDone:  nd("verify_done_bytes", "Bytes of the current or last online verify checked."),

		writes:       nd("writes_total", "Write and discard requests served by the engine."),
		bytesWritten: nd("written_bytes_total", "Bytes written or discarded through the engine."),
		bytesSent:    nd("replication_sent_bytes_total", "Bytes of replication frames sent to the peer."),
		resyncBytes:  nd("resync_bytes_total", "Resync payload sent (source) or applied (target)."),
		localErrors:  nd("local_io_errors_total", "I/O errors of the local backing store."),

		splitBrain:     nd("split_brain", "1 while the connection is given up because of a split brain."),
		crashedPrimary: nd("crashed_primary", "1 until the next connect after this node went down as Primary."),
		lostCache:      nd("lost_cache", "1 until the next connect after the machine restarted under this node."),
		metaFailures:   nd("metadata_write_failures_total", "Failed writes of the metadata store (bitmap, generations)."),
		metaUnsaved:    nd("metadata_unsaved_chunks", "Bitmap chunks the metadata store may lack; writes without the peer fail while non-zero."),
		size:           nd("volume_size_bytes", "Size of the volume."),

		epoch:          nd("failover_epoch", "Epoch of the quorum record this node holds."),
		quorum:         nd("failover_quorum", "1 while this node, counting itself, hears a majority of the voters."),
		suspended:      nd("failover_io_suspended", "1 while the failover manager suspends I/O (majority lost)."),
		stalls:         nd("failover_own_stalls_total", "Times this process itself did not run for more than two heartbeat intervals."),
		maxStall:       nd("failover_own_max_stall_seconds", "Longest such stall."),
		recordPrimary:  nd("failover_record_primary", "The Primary the quorum record names: 1.", "primary"),
		recordUpToDate: nd("failover_record_up_to_date", "Disk nodes the quorum record lists as up to date: 1 each.", "member"),
		hbAge:          nd("failover_heartbeat_age_seconds", "Age of the member's last heartbeat (absent if never heard).", "member"),
		hbMaxGap:       nd("failover_heartbeat_max_gap_seconds", "Longest gap between two of the member's heartbeats since start.", "member"),
		memberSerf:     nd("failover_member_serf_state", "The member's serf state (alive, failed, left, unknown): 1.", "member", "state"),
		memberEpoch:    nd("failover_member_epoch", "The epoch the member's last heartbeat carried.", "member"),
	}
	c.descs = all
	return c
}

// Describe implements prometheus.Collector.
func (c *Collector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range c.descs {
		ch <- d
	}
}

// Collect implements prometheus.Collector: one status snapshot per scrape.
func (c *Collector) Collect(ch chan<- prometheus.Metric) {
	ctx, cancel := context.WithTimeout(context.Background(), c.scrapeTimeout)
	defer cancel()
	st := c.status(ctx)
	d := &c.d
	gauge := func(desc *prometheus.Desc, v float64, labels ...string) {
		ch <- prometheus.MustNewConstMetric(desc, prometheus.GaugeValue, v, labels...)
	}
	counter := func(desc *prometheus.Desc, v uint64) {
		ch <- prometheus.MustNewConstMetric(desc, prometheus.CounterValue, float64(v))
	}
	state := func(desc *prometheus.Desc, s string) {
		if s != "" {
			gauge(desc, 1, s)
		}
	}
	flag := func(desc *prometheus.Desc, b bool) {
		v := 0.0
		if b {
			v = 1
		}
		gauge(desc, v)
	}

	state(d.role, st.Role)
	if st.Engine {
		state(d.peerRole, st.PeerRole)
		state(d.disk, st.Disk)
		state(d.peerDisk, st.PeerDisk)
		state(d.conn, st.Connection)
		state(d.repl, st.Replication)
		gauge(d.outOfSync, float64(st.OutOfSyncBytes))
		gauge(d.size, float64(st.Size))
		if p := st.Sync; p != nil {
			gauge(d.syncTotal, float64(p.Total))
			gauge(d.syncDone, float64(p.Done))
			gauge(d.syncRate, p.Rate)
			flag(d.syncRunning, p.Running)
		} else {
			flag(d.syncRunning, false)
		}
		if p := st.Verify; p != nil {
			gauge(d.verifyTotal, float64(p.Total))
			gauge(d.verifyDone, float64(p.Done))
		}
		counter(d.writes, st.Counters.Writes)
		counter(d.bytesWritten, st.Counters.BytesWritten)
		counter(d.bytesSent, st.Counters.BytesSent)
		counter(d.resyncBytes, st.Counters.ResyncBytes)
		counter(d.localErrors, st.Counters.LocalErrors)
		flag(d.splitBrain, st.SplitBrain)
		flag(d.crashedPrimary, st.CrashedPrimary)
		flag(d.lostCache, st.LostCache)
		var failures uint64
		unsaved := 0
		if m := st.Metadata; m != nil {
			failures, unsaved = m.Failures, m.UnsavedChunks
		}
		counter(d.metaFailures, failures)
		gauge(d.metaUnsaved, float64(unsaved))
	}
	if f := st.Failover; f != nil {
		gauge(d.epoch, float64(f.Record.Epoch))
		flag(d.quorum, f.Quorum)
		flag(d.suspended, f.Suspended)
		counter(d.stalls, uint64(max(f.Stalls, 0)))
		gauge(d.maxStall, float64(f.MaxStallMS)/1000)
		state(d.recordPrimary, f.Record.Primary)
		for _, m := range f.Record.UpToDate {
			gauge(d.recordUpToDate, 1, m)
		}
		for _, m := range f.Members {
			if m.HeartbeatAgeMS >= 0 {
				gauge(d.hbAge, float64(m.HeartbeatAgeMS)/1000, m.Name)
			}
			gauge(d.hbMaxGap, float64(m.HeartbeatMaxGapMS)/1000, m.Name)
			gauge(d.memberSerf, 1, m.Name, m.Serf)
			gauge(d.memberEpoch, float64(m.Epoch), m.Name)
		}
	}
}

// NewHandler returns the /metrics handler of a node: its Collector plus
// the Go runtime's and the process's standard collectors, on a registry
// of its own (nothing registered globally).
func NewHandler(resource, node string, status StatusFunc, log *slog.Logger) http.Handler {
	reg := prometheus.NewRegistry()
	reg.MustRegister(NewCollector(resource, node, status),
		collectors.NewGoCollector(),
		collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	opts := promhttp.HandlerOpts{MaxRequestsInFlight: 4, Timeout: 10 * time.Second}
	if log != nil {
		opts.ErrorLog = slog.NewLogLogger(log.Handler(), slog.LevelWarn)
	}
	return promhttp.HandlerFor(reg, opts)
}

// Server serves GET /metrics on a TCP address.
type Server struct {
	ln  net.Listener
	srv *http.Server
	err chan error
}

// Listen binds addr (host:port; use a loopback or management address:
// the endpoint has no authentication) and serves the node's metrics on
// /metrics until Close.
func Listen(addr, resource, node string, status StatusFunc, log *slog.Logger) (*Server, error) {
	if _, _, err := net.SplitHostPort(addr); err != nil {
		return nil, fmt.Errorf("metrics address %q: %w (want host:port, e.g. 127.0.0.1:9877)", addr, err)
	}
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("metrics: %w", err)
	}
	mux := http.NewServeMux()
	mux.Handle("GET /metrics", NewHandler(resource, node, status, log))
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		http.Error(w, "hablock: metrics are at GET /metrics", http.StatusNotFound)
	})
	s := &Server{ln: ln, err: make(chan error, 1), srv: &http.Server{Handler: mux,
		ReadHeaderTimeout: 5 * time.Second, ReadTimeout: 10 * time.Second, WriteTimeout: 30 * time.Second,
		IdleTimeout: 60 * time.Second, MaxHeaderBytes: 16 << 10}}
	if log != nil {
		s.srv.ErrorLog = slog.NewLogLogger(log.Handler(), slog.LevelWarn)
	}
	go func() { s.err <- s.srv.Serve(ln) }()
	return s, nil
}

// Addr is the bound address (useful with port 0).
func (s *Server) Addr() net.Addr { return s.ln.Addr() }

// Close stops serving, waiting up to 2 s for scrapes in progress.
func (s *Server) Close() error {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	err := s.srv.Shutdown(ctx)
	if err != nil {
		s.srv.Close()
	}
	if serr := <-s.err; !errors.Is(serr, http.ErrServerClosed) {
		return serr
	}
	return err
}

package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/hablock/hablock/blockdev/meta"
	"github.com/hablock/hablock/failover"
	"github.com/hablock/hablock/internal/admin"
	"github.com/hablock/hablock/internal/config"
)

// runWitness runs `hablock agent --node W` where W is the resource's
// witness: a failover.Manager with no Local (it heartbeats, votes and
// keeps its quorum record in its meta-dir) and the admin socket, where
// GET /v1/status answers an admin.Status (role Witness, disk Diskless,
// the epoch) and GET /v1/failover the failover.Status (record, quorum,
// members with serf status and heartbeat ages, events). Every other
// admin request answers 409: a witness has no disk.
func runWitness(res *config.Resource, name, cfgPath, metricsAddr string, log *slog.Logger) error {
	node, err := res.Node(name)
	if err != nil {
		return usageErrorf("--node: %v", err)
	}
	log = log.With("resource", res.Name)
	mopts := meta.DefaultOptions()
	mopts.Logger = log
	store, err := meta.OpenWitness(node.MetaDir, mopts)
	if err != nil {
		if errors.Is(err, meta.ErrNoMetadata) {
			return fmt.Errorf("no witness metadata in %s: run `hablock create-md --config %s --node %s` first", node.MetaDir, cfgPath, name)
		}
		return err
	}
	defer store.Close()
	cfg, err := failover.ConfigFor(res, name)
	if err != nil {
		return err
	}
	mgr, err := failover.NewManager(cfg, nil, failover.MetaStore(store), log)
	if err != nil {
		return err
	}
	events := admin.NewEventLog(0)
	mgr.SetEventSink(failoverEvents(events))
	if err := mgr.Start(context.Background()); err != nil {
		return err
	}
	defer mgr.Close()

	ln, err := admin.Listen(node.Admin)
	if err != nil {
		return err
	}
	w := &witnessNode{res: res.Name, name: name, mgr: mgr, events: events}
	stopMetrics, err := serveMetrics(metricsAddr, res.Name, name, w.Status, log)
	if err != nil {
		return err
	}
	defer stopMetrics()
	mux := http.NewServeMux()
	mux.HandleFunc("GET /v1/failover", func(rw http.ResponseWriter, r *http.Request) {
		rw.Header().Set("Content-Type", "application/json")
		enc := json.NewEncoder(rw)
		enc.SetIndent("", "  ")
		enc.Encode(mgr.Status())
	})
	mux.Handle("/", admin.NewServer(w, log).Handler())
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second, ReadTimeout: 10 * time.Second,
		WriteTimeout: 30 * time.Second, IdleTimeout: 60 * time.Second, MaxHeaderBytes: 16 << 10,
		ErrorLog: slog.NewLogLogger(log.Handler(), slog.LevelWarn)}
	done := make(chan error, 1)
	go func() { done <- srv.Serve(ln) }()
	defer func() {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		if srv.Shutdown(ctx) != nil {
			srv.Close()
		}
	}()
	st := mgr.Status()
	log.Info("agent running", "role", "witness", "node", name, "admin", node.Admin, "control", node.ControlAddress(), "gossip", node.GossipAddress(),
		"epoch", st.Record.Epoch, "primary", st.Record.Primary)

	sigs := make(chan os.Signal, 2)
	signal.Notify(sigs, syscall.SIGINT, syscall.SIGTERM)
	defer signal.Stop(sigs)
	select {
	case sig := <-sigs:
		log.Info("shutting down", "node", name, "signal", sig.String())
	case err := <-done:
		if !errors.Is(err, http.ErrServerClosed) {
			return fmt.Errorf("admin socket: %w", err)
		}
	}
	return nil
}

// witnessNode serves the admin API of a witness: status only.
type witnessNode struct {
	res, name string
	mgr       *failover.Manager
	events    *admin.EventLog
}

// Events implements admin.EventSource.
func (w *witnessNode) Events() *admin.EventLog { return w.events }

// failoverEvents is a failover.Manager event sink that appends to log.
func failoverEvents(log *admin.EventLog) func(failover.Event) {
	return func(e failover.Event) {
		log.Append(admin.Event{At: e.At, Source: "failover", Kind: "failover", Reason: e.What})
	}
}

var errWitness = fmt.Errorf("%w: this node is the witness: it has no disk (run the command on a disk node)", admin.ErrConflict)

func (w *witnessNode) Status(ctx context.Context) admin.Status {
	st := w.mgr.Status()
	conn := "NoQuorum"
	if st.Quorum {
		conn = "Quorum"
	}
	return admin.Status{Resource: w.res, Node: w.name, Role: "Witness", Disk: "Diskless", Peer: st.Record.Primary,
		PeerRole: "Primary", PeerDisk: "DUnknown", Connection: conn, Replication: "Off", Epoch: st.Record.Epoch,
		Failover: &st}
}

func (w *witnessNode) Switchover(context.Context, string) error { return errWitness }

func (w *witnessNode) Connect(context.Context, bool) error { return errWitness }
func (w *witnessNode) Disconnect(context.Context) error    { return errWitness }
func (w *witnessNode) Primary(context.Context, bool) error { return errWitness }
func (w *witnessNode) Secondary(context.Context) error     { return errWitness }
func (w *witnessNode) Invalidate(context.Context) error    { return errWitness }
func (w *witnessNode) Verify(context.Context, bool) error  { return errWitness }
func (w *witnessNode) PauseSync(context.Context) error     { return errWitness }
func (w *witnessNode) ResumeSync(context.Context) error    { return errWitness }

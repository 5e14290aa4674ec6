package main

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"time"

	"github.com/hablock/hablock/blockdev/meta"
	"github.com/hablock/hablock/failover"
	"github.com/hablock/hablock/internal/admin"
	"github.com/hablock/hablock/replication"
)

// The agent is the failover Manager's Local: the facts come from the
// replication engine, the actions drive the engine, the iSCSI export, the
// VIP and tickles. Each action takes a.opMu, like the admin operations,
// so a manual command and an automatic decision never interleave.
var _ failover.Local = (*agent)(nil)

// Facts is failover.Local.Facts.
func (a *agent) Facts() failover.Facts {
	s := a.volume().Status()
	f := failover.Facts{
		UpToDate:  s.Disk == replication.UpToDate,
		Connected: s.Conn == replication.Connected,
		Held:      s.Held,
		Suspended: s.Suspended,
	}
	if s.Role == replication.RolePrimary {
		f.Role = failover.RolePrimary
	}
	f.PeerUpToDate = f.Connected && s.PeerDisk == replication.UpToDate && !s.Repl.IsResync()
	return f
}

// Promote is failover.Local.Promote: engine, then target, then VIP, then
// tickles, in that order, so that by the time an initiator is told to
// reconnect (the announcement and the tickle) the target answers.
func (a *agent) Promote(ctx context.Context, epoch uint64, peerOutdated bool, clients []failover.Conn) error {
	a.opMu.Lock()
	defer a.opMu.Unlock()
	start := time.Now()
	v := a.volume()
	if peerOutdated {
		v.SetPeerFenced(true)
	}
	if s := v.Status(); s.Role != replication.RolePrimary {
		if s.Disk != replication.UpToDate {
			return fmt.Errorf("promote for epoch %d: local disk is %v, not UpToDate", epoch, s.Disk)
		}
		s = v.Status()
		a.persist.updateFlags(flagsFor(s, true, a.lostPending.Load()))
		if err := a.persist.setRole(meta.Primary); err != nil {
			return err
		}
		if err := promoteWhenPeerDemoted(ctx, v); err != nil {
			a.persist.setRole(meta.Secondary)
			return fmt.Errorf("promote for epoch %d: %w", epoch, err)
		}
	}
	v.ResumeIO()
	a.setEpoch(epoch)
	a.sync()
	engineAt := time.Now()
	if err := a.startExport(); err != nil {
		return err
	}
	targetAt := time.Now()
	if a.vip != nil {
		if err := a.vip.Acquire(ctx); err != nil {
			return fmt.Errorf("acquire VIP %s: %w", a.res.ISCSI.VIP, err)
		}
	}
	vipAt := time.Now()
	tickled := a.tickle(ctx, clients)
	a.log.Info("promoted by failover", "epoch", epoch, "peer_outdated", peerOutdated,
		"engine", engineAt.Sub(start), "target", targetAt.Sub(engineAt), "vip", vipAt.Sub(targetAt),
		"tickled", tickled, "total", time.Since(start))
	return nil
}

// promoteWhenPeerDemoted promotes v. In a switchover the old Primary
// demotes and then asks this node to promote at once, over the same
// link: its role change may still be in flight, and the engine refuses a
// second Primary. The quorum record already names this node, so wait
// (briefly) for the peer's demotion to arrive instead of failing.
func promoteWhenPeerDemoted(ctx context.Context, v *replication.Volume) error {
	deadline := time.Now().Add(2 * time.Second)
	for {
		err := v.Promote()
		if err == nil || !errors.Is(err, replication.ErrBusy) || v.Status().PeerRole != replication.RolePrimary ||
			time.Now().After(deadline) || ctx.Err() != nil {
			return err
		}
		time.Sleep(2 * time.Millisecond)
	}
}

// tickle resets the clients' connections to the old Primary (those to
// the VIP's address) so their initiators reconnect at once.
func (a *agent) tickle(ctx context.Context, clients []failover.Conn) int {
	if a.tickler == nil || len(clients) == 0 {
		return 0
	}
	n := 0
	for _, c := range clients {
		if a.res.ISCSI.VIP.IsValid() && c.Server.Addr() != a.res.ISCSI.VIP.Addr() {
			continue // not through the VIP: this node cannot speak for it
		}
		if err := a.tickler.Tickle(ctx, c.Server, c.Client); err != nil {
			a.log.Warn("tickle ACK", "client", c.Client, "err", err)
			continue
		}
		n++
	}
	return n
}

// Demote is failover.Local.Demote.
func (a *agent) Demote(ctx context.Context, epoch uint64, opts failover.DemoteOptions) error {
	a.opMu.Lock()
	defer a.opMu.Unlock()
	start := time.Now()
	v := a.volume()
	v.SuspendIO(fmt.Sprintf("demoting: epoch %d has another primary", epoch))
	a.mu.Lock()
	exp := a.exp
	a.mu.Unlock()
	if exp != nil {
		exp.srv.StopAccepting()
	}
	if a.vip != nil {
		if err := a.vip.Release(); err != nil {
			a.log.Error("release VIP", "vip", a.res.ISCSI.VIP, "err", err)
		}
	}
	if v.Status().Role == replication.RolePrimary {
		if err := v.Demote(); err != nil {
			return fmt.Errorf("demote for epoch %d: %w", epoch, err)
		}
	}
	if err := a.persist.setRole(meta.Secondary); err != nil {
		return err
	}
	a.setEpoch(epoch)
	a.sync()
	if !opts.KeepClients {
		a.stopExport(0)
		v.ResumeIO()
	}
	// else: the kept connections' commands stay abandoned (unanswered,
	// retried by the initiator on the new Primary) until CloseClients;
	// resuming here would answer them with errors from a Secondary.
	// With DiscardLocal (this node was replaced while cut off) reconnect
	// so that the handshake gives up its unreplicated, never
	// acknowledged changes. Otherwise (a switchover) the link stays up:
	// both disks are UpToDate and the peer promotes over it; a
	// reconnect here would start a handshake, and a resync, just as the
	// peer is asked to promote.
	if opts.DiscardLocal {
		a.stopRunLocked()
		a.connectLocked(v, true)
	} else {
		a.startRunLocked() // no-op when running
	}
	a.log.Info("demoted by failover", "epoch", epoch, "discard_local", opts.DiscardLocal,
		"keep_clients", opts.KeepClients, "took", time.Since(start))
	return nil
}

// CloseClients is failover.Local.CloseClients: drop the connections a
// switchover's Demote kept, then end the abandonment of their I/O.
func (a *agent) CloseClients() {
	a.stopExport(0)
	a.volume().ResumeIO()
}

// PeerFenced is failover.Local.PeerFenced.
func (a *agent) PeerFenced(epoch uint64) {
	a.volume().SetPeerFenced(true)
	a.setEpoch(epoch)
	a.log.Warn("peer fenced by quorum: going on without it", "epoch", epoch, "peer", a.peer.Name)
}

// SuspendIO is failover.Local.SuspendIO.
func (a *agent) SuspendIO(reason string) { a.volume().SuspendIO(reason) }

// ResumeIO is failover.Local.ResumeIO.
func (a *agent) ResumeIO() { a.volume().ResumeIO() }

// Clients is failover.Local.Clients.
func (a *agent) Clients() []failover.Conn {
	a.mu.Lock()
	exp := a.exp
	a.mu.Unlock()
	if exp == nil {
		return nil
	}
	var out []failover.Conn
	for _, c := range exp.srv.Connections() {
		cl, ok1 := addrPort(c.RemoteAddr)
		sv, ok2 := addrPort(c.LocalAddr)
		if ok1 && ok2 {
			out = append(out, failover.Conn{Client: cl, Server: sv})
		}
	}
	return out
}

func addrPort(a net.Addr) (netip.AddrPort, bool) {
	t, ok := a.(*net.TCPAddr)
	if !ok {
		return netip.AddrPort{}, false
	}
	ap := t.AddrPort()
	return netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port()), ap.IsValid()
}

func (a *agent) setEpoch(e uint64) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if e <= a.epoch {
		return
	}
	a.epoch = e
	if err := a.store.SetEpoch(e); err != nil {
		a.log.Error("persist epoch", "epoch", e, "err", err)
	}
}

// openVIP prepares the VIP manager and the tickler when the resource has
// a VIP, and removes an address a previous run of this node left on the
// interface (a SIGKILLed agent leaves it configured, and a node that
// still holds it answers ARP beside the new Primary).
func (a *agent) openVIP() error {
	if !a.res.ISCSI.VIP.IsValid() {
		return nil
	}
	vip, err := failover.NewVIP(a.res.ISCSI.VIPInterface, a.res.ISCSI.VIP, a.log)
	if err != nil {
		return fmt.Errorf("iscsi.vip %s on %s: %w", a.res.ISCSI.VIP, a.res.ISCSI.VIPInterface, err)
	}
	if _, err := vip.RemoveStale(); err != nil { // logs what it removed
		vip.Close()
		return fmt.Errorf("remove stale VIP %s: %w", a.res.ISCSI.VIP, err)
	}
	t, err := failover.NewTickler()
	if err != nil {
		vip.Close()
		return fmt.Errorf("tickle socket: %w", err)
	}
	a.vip, a.tickler = vip, t
	return nil
}

// closeVIP releases the VIP (a clean stop must not leave the address
// answering beside the next Primary) and closes the sockets.
func (a *agent) closeVIP() {
	if a.vip != nil {
		if err := a.vip.Release(); err != nil {
			a.log.Error("release VIP", "err", err)
		}
		if err := a.vip.Close(); err != nil && !errors.Is(err, failover.ErrClosed) {
			a.log.Error("close VIP", "err", err)
		}
	}
	if a.tickler != nil {
		a.tickler.Close()
	}
}

// notifyFailover is the engine's OnPeerLost hook: the manager decides at
// once (fence the peer or give way) instead of at its next tick.
func (a *agent) notifyFailover() {
	if m := a.mgr.Load(); m != nil {
		m.Notify()
	}
}

// startFailover starts the failover manager when the resource has a
// witness. It must run after openVIP (a stale VIP is gone before this
// node is heard) and before the peer link starts.
func (a *agent) startFailover() error {
	if a.res.Witness == nil {
		return nil
	}
	cfg, err := failover.ConfigFor(a.res, a.node.Name)
	if err != nil {
		return err
	}
	m, err := failover.NewManager(cfg, a, failover.MetaStore(a.store), a.engineLog)
	if err != nil {
		return err
	}
	m.SetEventSink(failoverEvents(a.events))
	if err := m.Start(a.ctx); err != nil {
		return err
	}
	a.mgr.Store(m)
	return nil
}

func (a *agent) stopFailover() {
	if m := a.mgr.Load(); m != nil {
		if err := m.Close(); err != nil {
			a.log.Error("stop failover manager", "err", err)
		}
	}
}

// Switchover is admin.Node.Switchover.
func (a *agent) Switchover(ctx context.Context, to string) error {
	m := a.mgr.Load()
	if m == nil {
		return fmt.Errorf("%w: resource %s has no witness, so no automatic failover: move the role by hand with `hablock secondary` here and `hablock primary` on %s",
			admin.ErrConflict, a.res.Name, a.peer.Name)
	}
	if to != "" && to != a.peer.Name {
		return fmt.Errorf("%w: --to %q: the only other disk node of resource %s is %s", admin.ErrBadRequest, to, a.res.Name, a.peer.Name)
	}
	if err := m.Switchover(ctx, to); err != nil {
		return adminErr(err)
	}
	return nil
}

// adminErr maps the failover manager's refusals onto admin error codes.
func adminErr(err error) error {
	switch {
	case errors.Is(err, failover.ErrNotReady), errors.Is(err, failover.ErrNotPrimary), errors.Is(err, failover.ErrRefused):
		return fmt.Errorf("%w: %w", admin.ErrConflict, err)
	}
	return err
}

// primaryByVote is `hablock primary` with automatic failover: the role
// is taken through a quorum vote (failover.Manager.Promote), which then
// calls Promote above. With force a disk that is not UpToDate (a fresh
// resource) is first declared the good copy, but only when no other
// Primary is recorded and heard, so that --force cannot split the data.
func (a *agent) primaryByVote(ctx context.Context, m *failover.Manager, force bool) error {
	if force && a.volume().Status().Disk != replication.UpToDate {
		st := m.Status()
		if p := st.Record.Primary; p != "" && p != a.node.Name {
			for _, mem := range st.Members {
				if mem.Name == p && mem.HeartbeatAgeMS >= 0 && time.Duration(mem.HeartbeatAgeMS)*time.Millisecond < 2*time.Second {
					return fmt.Errorf("%w: epoch %d names %s Primary and it is alive (heard %d ms ago): --force would split the data; use `hablock switchover` on %s",
						admin.ErrConflict, st.Record.Epoch, p, mem.HeartbeatAgeMS, p)
				}
			}
		}
		a.opMu.Lock()
		wasRunning, err := a.forceUpToDateLocked()
		a.opMu.Unlock()
		if wasRunning {
			// Reconnect once promoted (or refused): a handshake started
			// before the promotion would be refused as stale and redone.
			defer func() {
				a.opMu.Lock()
				a.startRunLocked()
				a.opMu.Unlock()
			}()
		}
		if err != nil {
			return err
		}
	}
	return adminErr(m.Promote(ctx, force))
}

// DropLink is failover.Local.DropLink: restart the connection loop, which
// tears the link down (a Primary's engine then holds its writes until the
// peer is fenced) and dials or accepts anew.
func (a *agent) DropLink(reason string) {
	a.opMu.Lock()
	defer a.opMu.Unlock()
	a.log.Warn("dropping the replication link", "peer", a.peer.Name, "reason", reason)
	if a.stopRunLocked() {
		a.startRunLocked()
	}
}

// reviveLink keeps the replication link of a resource with automatic
// failover trying, from the watch loop:
//   - a connection loop that gave up on its own (a split brain after a
//     false takeover, a StandAlone peer) is restarted every few seconds
//     unless an operator disconnected: the quorum record says which side
//     is Primary, and the replaced side reconnects with discard-my-data,
//     so the next handshake resolves it;
//   - a loop sleeping in its reconnect backoff (up to
//     net.connect-retry-max) is restarted as soon as the peer is heard on
//     the control channel again, so a revived node resyncs at once.
func (a *agent) reviveLink() {
	m := a.mgr.Load()
	if m == nil || !a.opMu.TryLock() {
		return
	}
	defer a.opMu.Unlock()
	a.mu.Lock()
	running, manual, ended, kicked := a.runCancel != nil, a.operatorDisconnected, a.runEnded, a.lastKick
	a.mu.Unlock()
	const every = 2 * time.Second
	now := time.Now()
	switch {
	case manual || now.Sub(kicked) < every:
		return
	case !running:
		if now.Sub(ended) < every {
			return
		}
		a.log.Info("restarting the peer link (automatic failover keeps it trying)", "peer", a.peer.Name)
	default:
		if a.volume().Status().Conn != replication.Unconnected || !peerHeard(m.Status(), a.peer.Name) {
			return
		}
		a.log.Info("peer heard again while the link waits to reconnect: reconnecting now", "peer", a.peer.Name)
		a.stopRunLocked()
	}
	a.mu.Lock()
	a.lastKick = now
	a.mu.Unlock()
	a.startRunLocked()
}

// peerHeard reports whether st shows a heartbeat from name within the
// last second.
func peerHeard(st failover.Status, name string) bool {
	for _, mem := range st.Members {
		if mem.Name == name {
			return mem.HeartbeatAgeMS >= 0 && mem.HeartbeatAgeMS < 1000
		}
	}
	return false
}

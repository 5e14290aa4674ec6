package failover

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/hashicorp/serf/serf"
)

// Sentinel errors of the Manager's operations, wrapped with context.
var (
	// ErrRefused: a majority did not agree to a proposal.
	ErrRefused = errors.New("failover: proposal refused")
	// ErrNotPrimary: a switchover asked of a node that is not the
	// recorded, local Primary.
	ErrNotPrimary = errors.New("failover: not the primary")
	// ErrNotReady: the operation's preconditions do not hold now (target
	// not connected or not UpToDate, local disk not UpToDate).
	ErrNotReady = errors.New("failover: not ready")
	// ErrStopped: the Manager was closed or not started.
	ErrStopped = errors.New("failover: manager not running")
)

// Manager runs failover for one node: heartbeats, votes, serf and, on a
// disk node, the decision loop that drives Local. The witness runs one
// with a nil Local: it only votes and heartbeats.
type Manager struct {
	cfg     Config
	local   Local // nil on the witness
	store   RecordStore
	log     *slog.Logger
	peer    string // the other disk node; "" on the witness
	witness string // "" without one
	addrs   map[string]*net.UDPAddr

	ctx    context.Context
	cancel context.CancelFunc
	wg     sync.WaitGroup
	udp    *net.UDPConn
	tcp    net.Listener
	ms     *membership
	notify chan struct{}
	tagsCh chan map[string]string
	start  time.Time

	// opMu serialises actions on Local: the decision loop's steps,
	// Promote, Switchover and a switchover's promote request.
	opMu sync.Mutex

	// voteMu serialises changes to state and their persistence.
	voteMu sync.Mutex
	state  Durable // INVARIANT: what store holds; changed only under voteMu after a successful Save.

	mu           sync.Mutex // guards the fields below
	heard        map[string]time.Time
	lastHB       map[string]Heartbeat
	suspended    bool
	awaitPromote time.Time // AwaitingPromote until then
	settledSince time.Time
	backoffUntil time.Time
	last         Decision
	events       []Event
	eventSink    func(Event)
	seq          uint64
	tags         map[string]string
	closed       bool
	started      bool

	// partition, set only by tests before Start, drops control traffic
	// (heartbeats, votes, promote requests) from -> to, to model a cut
	// link without network namespaces. Serf traffic is not affected.
	partition func(from, to string) bool
	// delay, set only by tests before Start, holds each heartbeat
	// from -> to this long before sending it (a user-space delay line:
	// this kernel has no netem).
	delay func(from, to string) time.Duration
	// callDelay, set only by tests before Start, holds each control
	// request (vote, promote) from -> to this long before it is sent,
	// to order a switchover's messages against the heartbeats.
	callDelay func(from, to string) time.Duration
	maxGap    map[string]time.Duration // guarded by mu

	// lastTick is when a loop last ran (guarded by mu); a longer pause
	// than stallAfter means this process was not running (CPU
	// starvation, a GC pause, a suspended VM), and silence measured
	// across it says nothing about the others (see checkStall).
	lastTick time.Time
	stalls   int
	maxStall time.Duration
}

// Decision is the last decision of a node, for Status.
type Decision struct {
	Action string    `json:"action"`
	Reason string    `json:"reason"`
	At     time.Time `json:"at"`
	Error  string    `json:"error,omitempty"`
}

// Event is one membership or failover event, for Status.
type Event struct {
	At   time.Time `json:"at"`
	What string    `json:"what"`
}

const maxEvents = 32

// NewManager checks cfg and loads the durable state from store. local is
// nil exactly when cfg.Me is the witness. Nothing runs until Start.
func NewManager(cfg Config, local Local, store RecordStore, log *slog.Logger) (*Manager, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	me, _ := cfg.member(cfg.Me)
	if (local == nil) != me.Witness {
		return nil, fmt.Errorf("failover: node %s: a disk node needs a Local and the witness has none", cfg.Me)
	}
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	st, err := store.Load()
	if err != nil {
		return nil, fmt.Errorf("%w: load: %v", ErrStore, err)
	}
	if err := st.Validate(); err != nil {
		return nil, fmt.Errorf("%w: load: %v", ErrStore, err)
	}
	m := &Manager{cfg: cfg, local: local, store: store, log: log.With("node", cfg.Me),
		peer: cfg.peerOf(cfg.Me), witness: cfg.witness(), state: st,
		notify: make(chan struct{}, 1), tagsCh: make(chan map[string]string, 1), heard: map[string]time.Time{}, lastHB: map[string]Heartbeat{},
		addrs: map[string]*net.UDPAddr{}, maxGap: map[string]time.Duration{}}
	return m, nil
}

// Start binds the control channel and serf and starts the loops. A disk
// node makes no decision during its first heartbeat-timeout, so that it
// hears the others (and learns a newer record) before acting.
func (m *Manager) Start(ctx context.Context) error {
	m.mu.Lock()
	if m.started || m.closed {
		m.mu.Unlock()
		return fmt.Errorf("failover: Start called twice or after Close")
	}
	m.started = true
	m.mu.Unlock()
	me, _ := m.cfg.member(m.cfg.Me)
	for _, o := range m.cfg.Members {
		if o.Name == m.cfg.Me {
			continue
		}
		a, err := net.ResolveUDPAddr("udp", o.Control)
		if err != nil {
			return fmt.Errorf("failover: control address of %s %q: %w", o.Name, o.Control, err)
		}
		m.addrs[o.Name] = a
	}
	ua, err := net.ResolveUDPAddr("udp", me.Control)
	if err != nil {
		return fmt.Errorf("failover: control address %q: %w", me.Control, err)
	}
	if m.udp, err = net.ListenUDP("udp", ua); err != nil {
		return fmt.Errorf("failover: heartbeats on %s: %w (is another agent for this node running?)", me.Control, err)
	}
	if m.tcp, err = net.Listen("tcp", me.Control); err != nil {
		m.udp.Close()
		return fmt.Errorf("failover: votes on %s: %w", me.Control, err)
	}
	m.ms, err = startMembership(m.cfg.Me, me.Gossip, m.tagsNow(), m.cfg.Serf, m.log)
	if err != nil {
		m.udp.Close()
		m.tcp.Close()
		return err
	}
	m.mu.Lock()
	m.ctx, m.cancel = context.WithCancel(ctx)
	m.start = time.Now()
	m.lastTick = m.start
	for _, o := range m.cfg.Members {
		m.heard[o.Name] = m.start // unheard members count as heard at start: no decision on silence before it could be heard
	}
	m.mu.Unlock()
	var joins []string
	for _, o := range m.cfg.Members {
		if o.Name != m.cfg.Me {
			joins = append(joins, o.Gossip)
		}
	}
	// Not waited for by Close: a Join in progress may take memberlist's
	// TCP timeout to give up on an unreachable member.
	go m.ms.joinLoop(m.ctx, joins, m.cfg.Serf.ReconnectInterval)
	m.goRun(m.serfEvents)
	go m.tagsLoop()
	m.goRun(m.udpLoop)
	m.goRun(func() {
		serveTCP(m.tcp, m.cfg.VoteTimeout+m.cfg.PromoteTimeout, m.handleRequest, func(msg string, args ...any) { m.log.Warn(msg, args...) })
	})
	m.goRun(m.heartbeatLoop)
	if m.local != nil {
		m.goRun(m.decisionLoop)
	}
	st := m.durable()
	m.log.Info("failover manager started", "control", me.Control, "gossip", me.Gossip, "epoch", st.Record.Epoch,
		"primary", st.Record.Primary, "up_to_date", strings.Join(st.Record.UpToDate, ","), "witness", me.Witness)
	return nil
}

func (m *Manager) goRun(f func()) {
	m.wg.Add(1)
	go func() { defer m.wg.Done(); f() }()
}

// Close stops every loop, leaves serf and closes the sockets. It does not
// change the local roles.
func (m *Manager) Close() error { return m.stop(true) }

// stop closes the Manager; without leave it drops out of serf as a
// killed process would (tests).
func (m *Manager) stop(leave bool) error {
	m.mu.Lock()
	if m.closed {
		m.mu.Unlock()
		return nil
	}
	m.closed = true
	started := m.started && m.cancel != nil // a Start that failed closed what it opened
	m.mu.Unlock()
	if !started {
		return nil
	}
	m.cancel()
	m.udp.Close()
	m.tcp.Close()
	m.ms.close(leave)
	m.wg.Wait()
	return nil
}

// Notify tells the Manager that Facts changed (e.g. Held): it decides at
// once instead of at the next tick. It never blocks.
func (m *Manager) Notify() {
	select {
	case m.notify <- struct{}{}:
	default:
	}
}

func (m *Manager) durable() Durable {
	m.voteMu.Lock()
	defer m.voteMu.Unlock()
	return Durable{Record: m.state.Record.Clone(), Voted: m.state.Voted}
}

// saveLocked persists d and makes it the state. Caller holds voteMu.
func (m *Manager) saveLocked(d Durable) error {
	if err := m.store.Save(d); err != nil {
		return fmt.Errorf("%w: save: %v", ErrStore, err)
	}
	m.state = Durable{Record: d.Record.Clone(), Voted: d.Voted}
	return nil
}

// adopt makes r the record if it is newer: it was agreed by a majority
// (only agreed records travel in heartbeats and vote replies).
func (m *Manager) adopt(r Record, from string) bool {
	if r.Validate() != nil {
		return false
	}
	m.voteMu.Lock()
	if r.Epoch <= m.state.Record.Epoch {
		m.voteMu.Unlock()
		return false
	}
	old := m.state.Record
	err := m.saveLocked(Durable{Record: r, Voted: max(m.state.Voted, r.Epoch)})
	m.voteMu.Unlock()
	if err != nil {
		m.log.Error("cannot persist a newer record", "from", from, "record", r.String(), "err", err)
		return false
	}
	if handedOver(old, r, m.cfg.Me, m.peer) && m.local != nil && m.local.Facts().Role != RolePrimary {
		// A switchover agreed with the witness alone reaches this node
		// by heartbeat before the old Primary's vote or promote request
		// does: wait for that request, as a granted vote would, instead
		// of re-acquiring the role in another epoch on our own.
		m.mu.Lock()
		m.awaitPromote = time.Now().Add(2*m.cfg.VoteTimeout + m.cfg.PromoteTimeout)
		m.mu.Unlock()
	}
	m.log.Info("adopted a newer record", "from", from, "old", old.String(), "record", r.String())
	m.event(fmt.Sprintf("adopted %v from %s", r, from))
	m.Notify()
	return true
}

// handedOver reports whether the step from record old to r is a planned
// handover from peer to me: only a switchover names the other disk node
// Primary while keeping the old Primary up to date (a takeover lists the
// new Primary alone).
func handedOver(old, r Record, me, peer string) bool {
	return old.Primary == peer && r.Primary == me && r.Has(peer)
}

func (m *Manager) event(what string) {
	e := Event{At: time.Now(), What: what}
	m.mu.Lock()
	m.events = append(m.events, e)
	if len(m.events) > maxEvents {
		m.events = slices.Delete(m.events, 0, len(m.events)-maxEvents)
	}
	sink := m.eventSink
	m.mu.Unlock()
	if sink != nil {
		sink(e)
	}
}

// SetEventSink makes the Manager hand every event (those Status lists)
// to fn as well, as it happens; call it before Start. fn must not block
// nor call the Manager.
func (m *Manager) SetEventSink(fn func(Event)) {
	m.mu.Lock()
	m.eventSink = fn
	m.mu.Unlock()
}

// ---- heartbeats ----

func (m *Manager) facts() Facts {
	if m.local == nil {
		return Facts{}
	}
	return m.local.Facts()
}

// checkStall notices that this process itself was stalled: when no loop
// ran for more than two heartbeat intervals, every member is counted as
// heard now, so that the stall cannot pass for their silence (a starved
// witness would otherwise consent to replacing a live Primary, and a
// starved Secondary ask for it). This only delays a takeover by at most
// heartbeat-timeout after a local stall; it never hastens one. Called at
// the top of every loop iteration and vote.
func (m *Manager) checkStall() {
	now := time.Now()
	m.mu.Lock()
	defer m.mu.Unlock()
	gap := now.Sub(m.lastTick)
	m.lastTick = now
	if gap <= 2*m.cfg.HeartbeatInterval {
		return
	}
	m.stalls++
	m.maxStall = max(m.maxStall, gap)
	for k, t := range m.heard {
		if t.Before(now) {
			m.heard[k] = now
		}
	}
	level := slog.LevelDebug
	if gap > m.cfg.HeartbeatTimeout {
		level = slog.LevelWarn
	}
	m.log.Log(context.Background(), level, "this process was stalled; not counting the stall as silence of the others", "stall", gap.Round(time.Millisecond))
}

func (m *Manager) heartbeatLoop() {
	t := time.NewTicker(m.cfg.HeartbeatInterval)
	defer t.Stop()
	me, _ := m.cfg.member(m.cfg.Me)
	for {
		m.checkStall()
		f := m.facts()
		hb := Heartbeat{From: m.cfg.Me, Record: m.durable().Record, Witness: me.Witness, Facts: f}
		if m.local != nil && f.Role == RolePrimary {
			hb.Clients = m.local.Clients()
		}
		m.mu.Lock()
		m.seq++
		hb.Seq = m.seq
		m.mu.Unlock()
		if b, err := encodeFrame(hb); err != nil {
			m.log.Error("encode heartbeat", "err", err)
		} else {
			for name, a := range m.addrs {
				switch {
				case m.blocked(m.cfg.Me, name):
				case m.delay != nil:
					time.AfterFunc(m.delay(m.cfg.Me, name), func() { m.udp.WriteToUDP(b, a) })
				default:
					m.udp.WriteToUDP(b, a) // loss is what heartbeats measure
				}
			}
		}
		m.updateTags()
		select {
		case <-m.ctx.Done():
			return
		case <-t.C:
		}
	}
}

func (m *Manager) udpLoop() {
	buf := make([]byte, headerLen+MaxPayload+1)
	for {
		n, from, err := m.udp.ReadFromUDP(buf)
		if err != nil {
			if m.ctx.Err() != nil {
				return
			}
			continue
		}
		msg, err := decodeFrame(buf[:n])
		hb, ok := msg.(Heartbeat)
		if err != nil || !ok {
			m.log.Debug("dropped a bad heartbeat", "remote", from.String(), "err", err)
			continue
		}
		if _, known := m.addrs[hb.From]; !known {
			m.log.Debug("heartbeat from a stranger", "remote", from.String(), "name", hb.From)
			continue
		}
		if m.blocked(hb.From, m.cfg.Me) {
			continue
		}
		now := time.Now()
		m.mu.Lock()
		if _, ok := m.lastHB[hb.From]; ok {
			m.maxGap[hb.From] = max(m.maxGap[hb.From], now.Sub(m.heard[hb.From]))
		}
		m.heard[hb.From] = now
		m.lastHB[hb.From] = hb
		m.mu.Unlock()
		if hb.Record.Epoch > m.durable().Record.Epoch {
			m.adopt(hb.Record, hb.From)
		}
	}
}

// heardWithin reports whether name was heard less than d ago.
func (m *Manager) heardWithin(name string, d time.Duration) bool {
	m.mu.Lock()
	defer m.mu.Unlock()
	t, ok := m.heard[name]
	return ok && time.Since(t) < d
}

// ---- votes ----

func (m *Manager) handleRequest(req any) any {
	switch r := req.(type) {
	case VoteRequest:
		if m.blocked(r.From, m.cfg.Me) {
			return nil
		}
		return m.handleVote(r)
	case promoteRequest:
		if m.blocked(r.From, m.cfg.Me) {
			return nil
		}
		return m.handlePromote(r)
	}
	return nil
}

// blocked reports whether the test partition drops from -> to.
func (m *Manager) blocked(from, to string) bool { return m.partition != nil && m.partition(from, to) }

// callTo sends one control request to member to, after the test hook's
// delay if one is set.
func (m *Manager) callTo(ctx context.Context, to string, req any) (any, error) {
	if m.callDelay != nil {
		if d := m.callDelay(m.cfg.Me, to); d > 0 {
			select {
			case <-ctx.Done():
				return nil, ctx.Err()
			case <-time.After(d):
			}
		}
	}
	target, _ := m.cfg.member(to)
	return call(ctx, target.Control, req)
}

// primaryHeardAfter reports whether this voter has heard primary since t
// (heartbeat, or for a disk node its replication link being up).
func (m *Manager) primaryHeardAfter(primary string, t time.Time) bool {
	if primary == m.peer && m.local != nil && m.local.Facts().Connected {
		return true
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.heard[primary].After(t)
}

func (m *Manager) handleVote(req VoteRequest) VoteReply {
	start := time.Now()
	deadline := start.Add(m.cfg.HeartbeatTimeout + m.cfg.HeartbeatInterval)
	for {
		m.checkStall()
		f := m.facts()
		m.voteMu.Lock()
		cur := m.state
		primary := cur.Record.Primary
		silent := primary != "" && !m.primaryHeardAfter(primary, time.Now().Add(-m.cfg.HeartbeatTimeout))
		v := VoterView{Me: m.cfg.Me, State: cur, PrimarySilent: silent, Disk: m.local != nil, DiskUpToDate: f.UpToDate}
		verdict, why := CheckVote(v, req)
		switch verdict {
		case Grant:
			err := m.saveLocked(granted(cur, req.Proposal))
			rec := m.state.Record.Clone()
			m.voteMu.Unlock()
			if err != nil {
				m.log.Error("vote not granted: cannot persist it", "from", req.From, "proposal", req.Proposal.String(), "err", err)
				return VoteReply{Reason: "voter cannot persist its vote", Record: cur.Record}
			}
			if req.Proposal.Primary == m.cfg.Me && req.From != m.cfg.Me && req.From == cur.Record.Primary {
				m.mu.Lock()
				m.awaitPromote = time.Now().Add(2*m.cfg.VoteTimeout + m.cfg.PromoteTimeout)
				m.mu.Unlock()
			}
			m.log.Info("vote granted", "from", req.From, "proposal", req.Proposal.String(), "force", req.Force, "why", why)
			m.event(fmt.Sprintf("granted %v to %s: %s", req.Proposal, req.From, why))
			m.Notify()
			return VoteReply{Granted: true, Reason: why, Record: rec}
		case Refuse:
			m.voteMu.Unlock()
			m.log.Info("vote refused", "from", req.From, "proposal", req.Proposal.String(), "why", why)
			return VoteReply{Reason: why, Record: cur.Record.Clone()}
		}
		m.voteMu.Unlock()
		// WaitPrimary: let the gap open, unless the Primary speaks.
		if m.primaryHeardAfter(primary, start) {
			why = fmt.Sprintf("primary %s is alive: heard while the vote waited", primary)
			m.log.Info("vote refused", "from", req.From, "proposal", req.Proposal.String(), "why", why)
			return VoteReply{Reason: why, Record: cur.Record.Clone()}
		}
		if time.Now().After(deadline) {
			return VoteReply{Reason: why, Record: cur.Record.Clone()}
		}
		select {
		case <-m.ctx.Done():
			return VoteReply{Reason: "voter shutting down", Record: cur.Record.Clone()}
		case <-time.After(m.cfg.HeartbeatInterval / 2):
		}
	}
}

// propose runs one vote on p: this node's own vote is persisted first,
// then one more grant makes two of three. A refusal carrying a newer
// record is adopted.
func (m *Manager) propose(ctx context.Context, p Record, force bool) error {
	m.voteMu.Lock()
	if floor := max(m.state.Record.Epoch, m.state.Voted); p.Epoch <= floor {
		m.voteMu.Unlock()
		return fmt.Errorf("%w: epoch %d is not above %d", ErrRefused, p.Epoch, floor)
	}
	err := m.saveLocked(Durable{Record: m.state.Record, Voted: p.Epoch})
	m.voteMu.Unlock()
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(ctx, m.cfg.VoteTimeout)
	defer cancel()
	type result struct {
		from  string
		reply VoteReply
		err   error
	}
	others := 0
	results := make(chan result, len(m.cfg.Members))
	for _, o := range m.cfg.Members {
		if o.Name == m.cfg.Me {
			continue
		}
		others++
		go func() {
			if m.blocked(m.cfg.Me, o.Name) {
				<-ctx.Done()
				results <- result{from: o.Name, err: ctx.Err()}
				return
			}
			r, err := m.callTo(ctx, o.Name, VoteRequest{From: m.cfg.Me, Proposal: p, Force: force})
			if err != nil {
				results <- result{from: o.Name, err: err}
				return
			}
			reply, ok := r.(VoteReply)
			if !ok {
				results <- result{from: o.Name, err: fmt.Errorf("%w: answer %T to a vote", ErrWire, r)}
				return
			}
			results <- result{from: o.Name, reply: reply}
		}()
	}
	var why []string
	for range others {
		r := <-results
		switch {
		case r.err != nil:
			why = append(why, fmt.Sprintf("%s: %v", r.from, r.err))
		case r.reply.Granted:
			m.voteMu.Lock()
			if m.state.Record.Epoch < p.Epoch {
				err = m.saveLocked(Durable{Record: p, Voted: max(m.state.Voted, p.Epoch)})
			}
			m.voteMu.Unlock()
			if err != nil {
				return err
			}
			m.log.Info("proposal agreed", "record", p.String(), "by", r.from)
			m.event(fmt.Sprintf("agreed %v with %s", p, r.from))
			return nil
		default:
			why = append(why, fmt.Sprintf("%s: %s", r.from, r.reply.Reason))
			if r.reply.Record.Epoch > p.Epoch-1 {
				m.adopt(r.reply.Record, r.from)
			}
		}
	}
	return fmt.Errorf("%w: %v: %s", ErrRefused, p, strings.Join(why, "; "))
}

// ---- decisions ----

func (m *Manager) view() View {
	f := m.local.Facts()
	st := m.durable()
	now := time.Now()
	v := View{Me: m.cfg.Me, Peer: m.peer, State: st, Facts: f,
		PeerHeard:    m.heardWithin(m.peer, m.cfg.HeartbeatTimeout),
		WitnessHeard: m.witness != "" && m.heardWithin(m.witness, m.cfg.HeartbeatTimeout),
		AutoFailback: m.cfg.AutoFailback}
	m.mu.Lock()
	defer m.mu.Unlock()
	v.Suspended = m.suspended
	v.AwaitingPromote = now.Before(m.awaitPromote)
	if f.Connected && f.PeerUpToDate && st.Record.Has(m.peer) {
		if m.settledSince.IsZero() {
			m.settledSince = now
		}
		v.PeerSettled = now.Sub(m.settledSince) >= m.cfg.FailbackSettle
	} else {
		m.settledSince = time.Time{}
	}
	return v
}

func (m *Manager) decisionLoop() {
	t := time.NewTicker(m.cfg.HeartbeatInterval)
	defer t.Stop()
	for {
		select {
		case <-m.ctx.Done():
			return
		case <-t.C:
		case <-m.notify:
		}
		m.checkStall()
		if time.Since(m.start) < m.cfg.HeartbeatTimeout {
			continue
		}
		m.mu.Lock()
		wait := time.Now().Before(m.backoffUntil)
		m.mu.Unlock()
		if wait {
			continue
		}
		m.opMu.Lock()
		m.step()
		m.opMu.Unlock()
	}
}

// step decides once and acts. Caller holds opMu.
func (m *Manager) step() {
	v := m.view()
	a := Decide(v)
	err := m.act(m.ctx, v, a)
	m.mu.Lock()
	changed := m.last.Action != a.Kind.String() || m.last.Reason != a.Reason || (err != nil) != (m.last.Error != "")
	m.last = Decision{Action: a.Kind.String(), Reason: a.Reason, At: time.Now()}
	if err != nil {
		m.last.Error = err.Error()
		// A refused takeover means a voter still hears the Primary (a cut
		// link, not a dead node): ask again only after a vote timeout,
		// since every attempt spends an epoch of this node's vote.
		wait := m.cfg.HeartbeatTimeout
		if a.Kind == ActTakeover && errors.Is(err, ErrRefused) {
			wait = m.cfg.VoteTimeout
		}
		m.backoffUntil = time.Now().Add(wait)
	}
	m.mu.Unlock()
	if changed || a.Kind != ActNone {
		args := []any{"action", a.Kind.String(), "reason", a.Reason, "epoch", v.State.Record.Epoch, "primary", v.State.Record.Primary}
		if a.Kind.Proposes() {
			args = append(args, "proposal", a.Proposal.String())
		}
		if err != nil {
			m.log.Warn("failover decision failed", append(args, "err", err)...)
		} else if a.Kind == ActNone {
			m.log.Debug("failover decision", args...)
		} else {
			m.log.Info("failover decision", args...)
		}
	}
}

func (m *Manager) act(ctx context.Context, v View, a Action) error {
	switch a.Kind {
	case ActNone:
		return nil
	case ActReacquire, ActFence, ActReadmit, ActTakeover:
		if err := m.propose(ctx, a.Proposal, false); err != nil {
			return err
		}
		epoch := a.Proposal.Epoch
		switch a.Kind {
		case ActReacquire:
			return m.promoteLocal(ctx, epoch, a.PeerOutdated, nil)
		case ActTakeover:
			m.mu.Lock()
			clients := slices.Clone(m.lastHB[m.peer].Clients)
			m.mu.Unlock()
			return m.promoteLocal(ctx, epoch, true, clients)
		case ActFence:
			m.local.PeerFenced(epoch)
			m.event(fmt.Sprintf("peer fenced in epoch %d", epoch))
		}
		return nil
	case ActDemote:
		if err := m.local.Demote(ctx, v.State.Record.Epoch, a.Demote); err != nil {
			return fmt.Errorf("demote: %w", err)
		}
		m.mu.Lock()
		m.suspended = false
		m.mu.Unlock()
		m.event(fmt.Sprintf("demoted: epoch %d names %s", v.State.Record.Epoch, v.State.Record.Primary))
	case ActSuspend:
		m.local.SuspendIO(a.Reason)
		m.mu.Lock()
		m.suspended = true
		m.mu.Unlock()
		m.event("suspended I/O: " + a.Reason)
	case ActResume:
		m.local.ResumeIO()
		m.mu.Lock()
		m.suspended = false
		m.mu.Unlock()
		m.event("resumed I/O")
	case ActFailback:
		return m.switchoverLocked(ctx, a.Target)
	case ActDropLink:
		m.local.DropLink(a.Reason)
		m.event("dropped the replication link: " + a.Reason)
	}
	return nil
}

func (m *Manager) promoteLocal(ctx context.Context, epoch uint64, peerOutdated bool, clients []Conn) error {
	if err := m.local.Promote(ctx, epoch, peerOutdated, clients); err != nil {
		return fmt.Errorf("promote in epoch %d: %w", epoch, err)
	}
	m.mu.Lock()
	m.suspended = false
	m.awaitPromote = time.Time{}
	m.mu.Unlock()
	m.event(fmt.Sprintf("promoted in epoch %d (peer outdated %v, %d clients to tickle)", epoch, peerOutdated, len(clients)))
	m.log.Info("promoted", "epoch", epoch, "peer_outdated", peerOutdated, "clients", len(clients))
	return nil
}

// ---- operator and peer requests ----

func (m *Manager) running() error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if !m.started || m.closed {
		return ErrStopped
	}
	return nil
}

// Promote is the operator's `hablock primary`: make this disk node the
// Primary through a vote. On a resource with no record (epoch 0) it
// records the first one. Without force the local disk must be UpToDate
// and in the record's up-to-date set; with force the operator vouches
// for the data (drbdadm --force), but a voter still refuses while it
// hears another live Primary.
func (m *Manager) Promote(ctx context.Context, force bool) error {
	if err := m.running(); err != nil {
		return err
	}
	if m.local == nil {
		return fmt.Errorf("%w: %s is the witness; it has no disk to promote", ErrNotReady, m.cfg.Me)
	}
	m.opMu.Lock()
	defer m.opMu.Unlock()
	f := m.local.Facts()
	st := m.durable()
	rec := st.Record
	if rec.Primary == m.cfg.Me && f.Role == RolePrimary {
		return nil
	}
	if !force && !f.UpToDate {
		return fmt.Errorf("%w: the local disk is not UpToDate; promote with --force only if you vouch for its data", ErrNotReady)
	}
	if !force && rec.Primary != "" && !rec.Has(m.cfg.Me) {
		return fmt.Errorf("%w: epoch %d lists %s as outdated; wait for the resync, or promote with --force if you vouch for its data", ErrNotReady, rec.Epoch, m.cfg.Me)
	}
	set := []string{m.cfg.Me}
	if f.Connected && f.PeerUpToDate && rec.Has(m.peer) {
		set = nodeSet(m.cfg.Me, m.peer)
	}
	p := Record{Epoch: st.NextEpoch(), Primary: m.cfg.Me, UpToDate: set}
	if err := m.propose(ctx, p, force); err != nil {
		return err
	}
	var clients []Conn
	if rec.Primary == m.peer {
		m.mu.Lock()
		clients = slices.Clone(m.lastHB[m.peer].Clients)
		m.mu.Unlock()
	}
	return m.promoteLocal(ctx, p.Epoch, !p.Has(m.peer), clients)
}

// Switchover hands the Primary role to the peer (to: "" or its name) in
// a planned way: suspend I/O, record {E+1, to, both} by vote, Demote
// keeping the iSCSI connections, ask to to promote (passing the
// connections to tickle), then close them so the initiators reconnect to
// the new Primary at their first try. The peer must be connected and
// UpToDate.
func (m *Manager) Switchover(ctx context.Context, to string) error {
	if err := m.running(); err != nil {
		return err
	}
	if m.local == nil {
		return fmt.Errorf("%w: %s is the witness", ErrNotPrimary, m.cfg.Me)
	}
	m.opMu.Lock()
	defer m.opMu.Unlock()
	return m.switchoverLocked(ctx, to)
}

func (m *Manager) switchoverLocked(ctx context.Context, to string) error {
	if to == "" {
		to = m.peer
	}
	if to != m.peer {
		return fmt.Errorf("%w: %q is not the peer disk node (%s)", ErrNotReady, to, m.peer)
	}
	f := m.local.Facts()
	st := m.durable()
	if st.Record.Primary != m.cfg.Me || f.Role != RolePrimary {
		return fmt.Errorf("%w: epoch %d names %q primary; run switchover on it", ErrNotPrimary, st.Record.Epoch, st.Record.Primary)
	}
	if !f.Connected || !f.PeerUpToDate || !st.Record.Has(to) {
		return fmt.Errorf("%w: %s must be connected and UpToDate (connected %v, peer up to date %v, in the record %v)",
			ErrNotReady, to, f.Connected, f.PeerUpToDate, st.Record.Has(to))
	}
	m.log.Info("switchover starting", "to", to, "epoch", st.Record.Epoch)
	m.local.SuspendIO("switchover to " + to)
	p := Record{Epoch: st.NextEpoch(), Primary: to, UpToDate: nodeSet(m.cfg.Me, to)}
	if err := m.propose(ctx, p, false); err != nil {
		m.local.ResumeIO()
		return fmt.Errorf("switchover to %s: %w", to, err)
	}
	clients := m.local.Clients()
	if err := m.local.Demote(ctx, p.Epoch, DemoteOptions{KeepClients: true}); err != nil {
		// The record already names to; I/O stays suspended here, and
		// the decision loop demotes again.
		m.log.Error("switchover: demote failed; asking the new primary to promote anyway", "err", err)
	}
	pctx, cancel := context.WithTimeout(ctx, m.cfg.PromoteTimeout)
	defer cancel()
	var r any
	err := fmt.Errorf("%s unreachable", to)
	if !m.blocked(m.cfg.Me, to) {
		r, err = m.callTo(pctx, to, promoteRequest{From: m.cfg.Me, Epoch: p.Epoch, Clients: clients})
	}
	m.local.CloseClients()
	m.mu.Lock()
	m.suspended = false
	m.mu.Unlock()
	if err != nil {
		return fmt.Errorf("switchover: %s agreed to epoch %d but its promote request failed: %w (it re-acquires the role by itself)", to, p.Epoch, err)
	}
	if rep, ok := r.(promoteReply); !ok || !rep.OK {
		reason := "bad answer"
		if ok {
			reason = rep.Reason
		}
		return fmt.Errorf("switchover: %s did not promote: %s", to, reason)
	}
	m.event(fmt.Sprintf("switched over to %s in epoch %d", to, p.Epoch))
	m.log.Info("switchover done", "to", to, "epoch", p.Epoch)
	return nil
}

func (m *Manager) handlePromote(req promoteRequest) promoteReply {
	if m.local == nil {
		return promoteReply{Reason: "the witness has no disk"}
	}
	m.opMu.Lock()
	defer m.opMu.Unlock()
	rec := m.durable().Record
	// A later epoch that still names this node is the same hand-over
	// carried on (this node re-acquired the role after the wait for the
	// request ran out): the promotion asked for has happened, or is due.
	if rec.Primary != m.cfg.Me || rec.Epoch < req.Epoch {
		return promoteReply{Reason: fmt.Sprintf("my record is %v, not epoch %d with me primary", rec, req.Epoch)}
	}
	if m.local.Facts().Role == RolePrimary {
		return promoteReply{OK: true}
	}
	ctx, cancel := context.WithTimeout(m.ctx, m.cfg.PromoteTimeout)
	defer cancel()
	if err := m.promoteLocal(ctx, rec.Epoch, !rec.Has(m.peer), req.Clients); err != nil {
		return promoteReply{Reason: err.Error()}
	}
	return promoteReply{OK: true}
}

// ---- serf ----

func (m *Manager) tagsNow() map[string]string {
	role := "secondary"
	if m.local == nil {
		role = "witness"
	} else if m.local.Facts().Role == RolePrimary {
		role = "primary"
	}
	return map[string]string{"role": role, "epoch": strconv.FormatUint(m.durable().Record.Epoch, 10), "resource": m.cfg.Resource}
}

// updateTags hands changed tags to tagsLoop. It never blocks: serf's
// SetTags waits for its broadcast (up to serf's BroadcastTimeout, 5 s),
// and the heartbeat loop that calls this must not stall.
func (m *Manager) updateTags() {
	tags := m.tagsNow()
	m.mu.Lock()
	same := m.tags != nil && m.tags["role"] == tags["role"] && m.tags["epoch"] == tags["epoch"]
	if !same {
		m.tags = tags
	}
	m.mu.Unlock()
	if same {
		return
	}
	select {
	case <-m.tagsCh: // drop an older pending update
	default:
	}
	select {
	case m.tagsCh <- tags:
	default:
	}
}

// tagsLoop publishes tag changes to serf. It is not waited for by Close:
// a SetTags in progress may outlive it by serf's BroadcastTimeout.
func (m *Manager) tagsLoop() {
	for {
		select {
		case <-m.ctx.Done():
			return
		case tags := <-m.tagsCh:
			if err := m.ms.s.SetTags(tags); err != nil {
				m.log.Debug("serf tags", "err", err)
			}
		}
	}
}

func (m *Manager) serfEvents() {
	for {
		select {
		case <-m.ctx.Done():
			return
		case e := <-m.ms.events:
			me, ok := e.(serf.MemberEvent)
			if !ok {
				continue
			}
			for _, mem := range me.Members {
				if mem.Name == m.cfg.Me {
					continue
				}
				m.log.Info("serf member event", "event", me.Type.String(), "member", mem.Name, "addr", mem.Addr.String(),
					"role", mem.Tags["role"], "epoch", mem.Tags["epoch"])
				m.event(fmt.Sprintf("serf %s %s", me.Type, mem.Name))
			}
		}
	}
}

// ---- status ----

// Status is a JSON-friendly snapshot of a node's failover state.
type Status struct {
	Node    string `json:"node"`
	Witness bool   `json:"witness"`
	Record  Record `json:"record"`
	Voted   uint64 `json:"voted"`
	// Quorum: this node, counting itself, hears a majority of the voters
	// (for a disk node the replication link counts for the peer).
	Quorum    bool           `json:"quorum"`
	Suspended bool           `json:"suspended"`
	Members   []MemberStatus `json:"members"`
	// Stalls counts the times this process itself did not run for more
	// than two heartbeat intervals; MaxStallMS is the longest.
	Stalls     int      `json:"stalls"`
	MaxStallMS int64    `json:"max_stall_ms"`
	Last       Decision `json:"last_decision"`
	Events     []Event  `json:"events,omitempty"`
}

// MemberStatus is what this node knows of another member.
type MemberStatus struct {
	Name    string `json:"name"`
	Witness bool   `json:"witness,omitempty"`
	// Serf is the member's serf status (alive, suspect is shown as
	// alive, failed, left) or "unknown".
	Serf string `json:"serf"`
	// HeartbeatAgeMS is the age of its last heartbeat in milliseconds;
	// -1 if never heard.
	HeartbeatAgeMS int64 `json:"heartbeat_age_ms"`
	// HeartbeatMaxGapMS is the longest time between two of its
	// heartbeats seen since Start, in milliseconds: compare it with
	// heartbeat-timeout to see how close the cluster came to a false
	// failover.
	HeartbeatMaxGapMS int64  `json:"heartbeat_max_gap_ms"`
	Epoch             uint64 `json:"epoch"`
	Role              string `json:"role,omitempty"`
}

// Status returns the current snapshot.
func (m *Manager) Status() Status {
	st := m.durable()
	s := Status{Node: m.cfg.Me, Record: st.Record, Voted: st.Voted}
	me, _ := m.cfg.member(m.cfg.Me)
	s.Witness = me.Witness
	serfs := map[string]string{}
	m.mu.Lock()
	running := m.started && !m.closed
	m.mu.Unlock()
	if running {
		for _, mem := range m.ms.s.Members() {
			serfs[mem.Name] = mem.Status.String()
		}
	}
	var f Facts
	if m.local != nil {
		f = m.local.Facts()
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	heard := 0
	for _, o := range m.cfg.Members {
		if o.Name == m.cfg.Me {
			continue
		}
		ms := MemberStatus{Name: o.Name, Witness: o.Witness, Serf: "unknown", HeartbeatAgeMS: -1}
		if v, ok := serfs[o.Name]; ok {
			ms.Serf = v
		}
		fresh := false
		if hb, ok := m.lastHB[o.Name]; ok {
			age := time.Since(m.heard[o.Name])
			ms.HeartbeatAgeMS = age.Milliseconds()
			ms.HeartbeatMaxGapMS = m.maxGap[o.Name].Milliseconds()
			ms.Epoch = hb.Record.Epoch
			ms.Role = hb.Facts.Role.String()
			if hb.Witness {
				ms.Role = "witness"
			}
			fresh = age < m.cfg.HeartbeatTimeout
		}
		if fresh || (o.Name == m.peer && f.Connected) {
			heard++
		}
		s.Members = append(s.Members, ms)
	}
	s.Quorum = 1+heard >= len(m.cfg.Members)/2+1
	s.Suspended = m.suspended
	s.Stalls, s.MaxStallMS = m.stalls, m.maxStall.Milliseconds()
	s.Last = m.last
	s.Events = slices.Clone(m.events)
	return s
}

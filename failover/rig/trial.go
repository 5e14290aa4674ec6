package rig

import (
	"bufio"
	"context"
	"crypto/sha256"
	"fmt"
	"io"
	"net/netip"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// Trial is what one failover or switchover measured.
type Trial struct {
	Kind     string // "failover" or "switchover"
	Takeover Takeover
	From, To string // the Primary before and after
	Start    time.Time

	// Stall is the client-visible I/O stall: from the writer's last
	// completed write+fsync on the ext4 mount before the kill (or the
	// switchover) to its first completed one after; or a longer gap
	// between two later completions before I/O had fully resumed.
	Stall time.Duration
	// The breakdown. TakeoverManual: from the rig's polls (every 10 ms)
	// of the survivor's admin status and eth0: Detect from the kill until
	// the survivor's link reports the peer lost; Promote until its role
	// is Primary; VIP until the VIP is on its eth0; Reconnect until the
	// writer's first completed write after that. TakeoverAuto: from the
	// new Primary's log: Detect until its first failover decision,
	// Promote until "promoted by failover" less the VIP part (quorum vote,
	// engine, target), VIP that line's vip timing, Reconnect from that
	// line to the writer's first completed write. Switchovers fill only
	// VIPMove (the whole role move) and Reconnect.
	Detect, Promote, VIPMove, Reconnect time.Duration

	HTTPFailures  int           // failed polls (error or > 5 s) during the trial
	HTTPMax       time.Duration // the slowest poll seen (0 if none over 100 ms)
	WriteErrors   int           // write or fsync errors of the writer
	PGCommitted   int           // pgbench transactions processed
	PGFailed      int           // failed transactions
	PGAborted     int           // aborted pgbench clients
	PGErr         string        // pgbench's error output, if any
	Resync        time.Duration // from the returning agent's start until both UpToDate
	ResyncedBytes uint64        // what the returning node received
}

// Errors counts what the issue requires to be zero.
func (t Trial) Errors() int {
	n := t.HTTPFailures + t.WriteErrors + t.PGFailed + t.PGAborted
	if t.PGErr != "" {
		n++
	}
	return n
}

// pgbench runs for this long per trial; the kill comes after pgWarmup.
const (
	pgWarmup   = 3 * time.Second
	pgDuration = 15
)

type pgRun struct {
	done chan struct{}
	out  strings.Builder
	err  error
}

func (r *Rig) startPgbench(ctx context.Context, seconds int) *pgRun {
	pr := &pgRun{done: make(chan struct{})}
	go func() {
		defer close(pr.done)
		out, err := run(ctx, "nsenter", "--net="+r.tp.nsPath(Client), "--", "pgbench", "-h", r.pgSock, "-U", "postgres", "-n",
			"-c", strconv.Itoa(r.opts.PGClients), "-j", "2", "-T", strconv.Itoa(seconds), "-P", "1",
			"-f", filepath.Join(r.opts.Dir, "ledger.pgbench"), "postgres")
		pr.out.WriteString(out)
		pr.err = err
	}()
	return pr
}

var (
	reProcessed = regexp.MustCompile(`number of transactions actually processed: (\d+)`)
	reFailed    = regexp.MustCompile(`number of failed transactions: (\d+)`)
	reAborted   = regexp.MustCompile(`client \d+ aborted`)
)

// finish waits for pgbench and records its counts in t.
func (pr *pgRun) finish(t *Trial, logPath string) {
	<-pr.done
	out := pr.out.String()
	if f, err := os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644); err == nil {
		fmt.Fprintf(f, "---- %s trial from %s\n%s\n", t.Kind, t.Start.UTC().Format(time.RFC3339Nano), out)
		f.Close()
	}
	t.PGCommitted, t.PGFailed, t.PGAborted = pgbenchCounts(out)
	if pr.err != nil {
		t.PGErr = pr.err.Error()
	}
}

// pgbenchCounts reads pgbench's summary: transactions processed, failed,
// and clients aborted.
func pgbenchCounts(out string) (processed, failed, aborted int) {
	if m := reProcessed.FindStringSubmatch(out); m != nil {
		processed, _ = strconv.Atoi(m[1])
	}
	if m := reFailed.FindStringSubmatch(out); m != nil {
		failed, _ = strconv.Atoi(m[1])
	}
	return processed, failed, len(reAborted.FindAllString(out, -1))
}

// clientEvents counts HTTP failures, the slowest poll and writer errors
// in [from, to].
func (r *Rig) clientEvents(t *Trial, from, to time.Time) {
	r.mu.Lock()
	defer r.mu.Unlock()
	in := func(e event) bool { return e.T >= from.UnixNano() && e.T <= to.UnixNano() }
	for _, e := range r.polls {
		if !in(e) {
			continue
		}
		if e.Err != "" || time.Duration(e.D) > pollTimeout {
			t.HTTPFailures++
		}
		t.HTTPMax = max(t.HTTPMax, time.Duration(e.D))
	}
	for _, e := range r.werrs {
		if in(e) {
			t.WriteErrors++
		}
	}
}

// writeAfter waits until the writer completes a write after at and
// returns the time of the first such completion.
func (r *Rig) writeAfter(ctx context.Context, at time.Time, timeout time.Duration) (time.Time, error) {
	deadline := time.Now().Add(timeout)
	for {
		if t, ok := r.firstWriteAfter(at); ok {
			return t, nil
		}
		if time.Now().After(deadline) {
			return time.Time{}, fmt.Errorf("the writer completed no write in the %v after %s", timeout, at.Format("15:04:05.000"))
		}
		if err := sleep(ctx, 5*time.Millisecond); err != nil {
			return time.Time{}, err
		}
	}
}

// firstWriteAfter returns the first write completion after at, if any
// (completions are recorded in order).
func (r *Rig) firstWriteAfter(at time.Time) (time.Time, bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	i := sort.Search(len(r.writes), func(i int) bool { return r.writes[i] > at.UnixNano() })
	if i == len(r.writes) {
		return time.Time{}, false
	}
	return time.Unix(0, r.writes[i]), true
}

// maxGap is the longest gap between consecutive write completions that
// ends in [from, to]: with from the kill, the first such gap runs from
// the last completion before the kill to the first one after it (the
// issue's stall); later ones catch a second stall before to.
func (r *Rig) maxGap(from, to time.Time) time.Duration {
	r.mu.Lock()
	defer r.mu.Unlock()
	var gap time.Duration
	prev := int64(0)
	for _, w := range r.writes {
		if w < from.UnixNano() {
			prev = w
			continue
		}
		if w > to.UnixNano() {
			break
		}
		if prev != 0 {
			gap = max(gap, time.Duration(w-prev))
		}
		prev = w
	}
	return gap
}

// Kill makes host die as a real host does: its link goes down first (so
// no FIN or RST escapes), then its agent is SIGKILLed. The VIP, if it held
// it, stays configured on its eth0.
func (r *Rig) Kill(ctx context.Context, host string) error {
	if err := r.tp.linkSet(ctx, host, false); err != nil {
		return err
	}
	r.agents[host].kill()
	return nil
}

// Revive brings a killed disk node back: with TakeoverManual the rig
// removes its stale VIP, sets the link up, starts the agent without
// connecting, demotes it if it restarted Primary, then connects; with
// TakeoverAuto it sets the link up and starts the agent, which must do
// all that itself. It then waits until both nodes are in sync and
// returns how long that took and how many bytes the node received.
func (r *Rig) Revive(ctx context.Context, host string) (time.Duration, uint64, error) {
	start := time.Now()
	if r.opts.Takeover == TakeoverManual {
		if err := r.tp.delVIP(ctx, host); err != nil {
			return 0, 0, err
		}
		if err := r.tp.linkSet(ctx, host, true); err != nil {
			return 0, 0, err
		}
		if err := r.startAgent(ctx, host, true); err != nil {
			return 0, 0, err
		}
		st, err := r.Status(ctx, host)
		if err != nil {
			return 0, 0, err
		}
		if st.Role == "Primary" {
			if _, err := r.admins[host].Secondary(ctx); err != nil {
				return 0, 0, fmt.Errorf("hablock secondary on the returning %s: %w", host, err)
			}
		}
		if _, err := r.admins[host].Connect(ctx, false); err != nil {
			return 0, 0, fmt.Errorf("hablock connect on the returning %s: %w", host, err)
		}
	} else {
		if err := r.tp.linkSet(ctx, host, true); err != nil {
			return 0, 0, err
		}
		if err := r.startAgent(ctx, host, false); err != nil {
			return 0, 0, err
		}
	}
	if err := r.waitInSync(ctx, 3*time.Minute); err != nil {
		return 0, 0, err
	}
	took := time.Since(start)
	st, err := r.Status(ctx, host)
	if err != nil {
		return took, 0, err
	}
	if has, _ := r.tp.hasVIP(ctx, host); has && host != r.primary {
		return took, 0, fmt.Errorf("the returning %s (Secondary) still holds the VIP", host)
	}
	return took, st.Counters.ResyncBytes, nil
}

// Failover runs one unplanned failover trial: pgbench starts, after 3 s
// the Primary dies (Kill), the survivor takes over (as Options.Takeover
// says), the rig waits for the writer's I/O to resume and for pgbench to
// end, then revives the dead node and waits for the resync.
func (r *Rig) Failover(ctx context.Context) (Trial, error) {
	// A trial starts from one Primary with both disks in sync (which also
	// tells the rig which node is Primary: the agents may have moved it).
	if err := r.waitInSync(ctx, 30*time.Second); err != nil {
		return Trial{Kind: "failover"}, fmt.Errorf("before the trial: %w", err)
	}
	from := r.primary
	to := other(from)
	t := Trial{Kind: "failover", Takeover: r.opts.Takeover, From: from, To: to, Start: time.Now()}
	pg := r.startPgbench(ctx, pgDuration)
	if err := sleep(ctx, pgWarmup); err != nil {
		return t, err
	}
	var clients []netip.AddrPort
	if r.opts.Takeover == TakeoverManual && r.opts.Tickle {
		var err error
		if clients, err = r.tp.iscsiClients(ctx, from); err != nil {
			return t, err
		}
	}
	kill := time.Now()
	if err := r.Kill(ctx, from); err != nil {
		return t, err
	}
	r.logf("failover: %s killed (link down + SIGKILL)", from)

	var detected, promoted, vip time.Time
	deadline := kill.Add(60 * time.Second)
	for vip.IsZero() {
		if time.Now().After(deadline) {
			st, _ := r.Status(ctx, to)
			return t, fmt.Errorf("failover from %s: %s did not take over within 60s (detected %v, promoted %v); status %+v",
				from, to, !detected.IsZero(), !promoted.IsZero(), st)
		}
		st, err := r.Status(ctx, to)
		now := time.Now()
		if err == nil {
			if detected.IsZero() && (st.Connection != "Connected" || st.Role == "Primary") {
				detected = now
			}
			if promoted.IsZero() && st.Role == "Primary" {
				promoted = now
			}
		}
		switch {
		case r.opts.Takeover == TakeoverManual && !detected.IsZero() && promoted.IsZero():
			if _, err := r.admins[to].Primary(ctx, false); err != nil {
				return t, fmt.Errorf("hablock primary on the survivor %s: %w", to, err)
			}
			promoted = time.Now()
			if err := r.tp.addVIP(ctx, to); err != nil {
				return t, err
			}
			if len(clients) > 0 {
				if err := r.tp.tickle(ctx, to, clients); err != nil {
					return t, fmt.Errorf("tickle from %s: %w", to, err)
				}
			}
			vip = time.Now()
		case r.opts.Takeover == TakeoverAuto && !promoted.IsZero():
			if has, err := r.tp.hasVIP(ctx, to); err == nil && has {
				vip = time.Now()
			}
		}
		if vip.IsZero() {
			if err := sleep(ctx, 10*time.Millisecond); err != nil {
				return t, err
			}
		}
	}
	r.primary = to
	resumed, err := r.writeAfter(ctx, vip, 60*time.Second)
	if err != nil {
		return t, fmt.Errorf("failover from %s to %s: I/O did not resume: %w", from, to, err)
	}
	t.Stall = r.maxGap(kill, resumed)
	t.Detect, t.Promote, t.VIPMove = detected.Sub(kill), promoted.Sub(detected), vip.Sub(promoted)
	t.Reconnect = max(0, resumed.Sub(vip))
	if r.opts.Takeover == TakeoverAuto {
		// The agent logs its own timings, finer than the rig's polls.
		if b, err := os.ReadFile(filepath.Join(r.opts.Dir, to+".log")); err == nil {
			if lb, ok := takeoverFromLog(string(b), kill); ok {
				t.Detect, t.Promote, t.VIPMove = lb.decided.Sub(kill), lb.promoted.Sub(lb.decided)-lb.vip, lb.vip
				if end, ok := r.firstWriteAfter(lb.promoted); ok {
					t.Reconnect = end.Sub(lb.promoted)
				}
			}
		}
	}
	r.logf("failover %s->%s: stall %v (detect %v, promote %v, vip %v, reconnect %v)", from, to,
		t.Stall.Round(time.Millisecond), t.Detect.Round(time.Millisecond), t.Promote.Round(time.Millisecond),
		t.VIPMove.Round(time.Millisecond), t.Reconnect.Round(time.Millisecond))
	pg.finish(&t, filepath.Join(r.opts.Dir, "pgbench.log"))
	r.clientEvents(&t, t.Start, time.Now())
	if t.Resync, t.ResyncedBytes, err = r.Revive(ctx, from); err != nil {
		return t, fmt.Errorf("reviving %s: %w", from, err)
	}
	r.logf("failover %s->%s: %s back and in sync after %v (%d KiB resynced); pgbench %d committed, %d failed, %d aborted; HTTP failures %d",
		from, to, from, t.Resync.Round(time.Millisecond), t.ResyncedBytes>>10, t.PGCommitted, t.PGFailed, t.PGAborted, t.HTTPFailures)
	return t, nil
}

// logBreakdown is a takeover as the new Primary's agent logged it.
type logBreakdown struct {
	decided  time.Time     // its first failover decision after the kill
	promoted time.Time     // "promoted by failover": target up, VIP added
	vip      time.Duration // the VIP add and announcement, from that line
}

var (
	reLogTime = regexp.MustCompile(`^time=(\S+) `)
	reLogVIP  = regexp.MustCompile(` vip=(\S+)`)
)

// takeoverFromLog finds, in an agent's text log, the first failover
// decision and the first "promoted by failover" line after since.
func takeoverFromLog(log string, since time.Time) (logBreakdown, bool) {
	var lb logBreakdown
	for _, line := range strings.Split(log, "\n") {
		m := reLogTime.FindStringSubmatch(line)
		if m == nil {
			continue
		}
		at, err := time.Parse(time.RFC3339Nano, m[1])
		if err != nil || at.Before(since) {
			continue
		}
		switch {
		case lb.decided.IsZero() && strings.Contains(line, `msg="failover decision"`):
			lb.decided = at
		case strings.Contains(line, `msg="promoted by failover"`):
			if v := reLogVIP.FindStringSubmatch(line); v != nil {
				lb.vip, _ = time.ParseDuration(v[1])
			}
			lb.promoted = at
			if lb.decided.IsZero() || lb.decided.After(at) {
				lb.decided = at
			}
			return lb, true
		}
	}
	return lb, false
}

// Switchover runs one planned switchover under pgbench load.
// TakeoverManual: `hablock secondary` on the Primary, the VIP moved, then
// `hablock primary` on the other. TakeoverAuto: `hablock switchover`.
func (r *Rig) Switchover(ctx context.Context) (Trial, error) {
	if err := r.waitInSync(ctx, 30*time.Second); err != nil {
		return Trial{Kind: "switchover"}, fmt.Errorf("before the trial: %w", err)
	}
	from := r.primary
	to := other(from)
	t := Trial{Kind: "switchover", Takeover: r.opts.Takeover, From: from, To: to, Start: time.Now()}
	pg := r.startPgbench(ctx, 8)
	if err := sleep(ctx, pgWarmup); err != nil {
		return t, err
	}
	begin := time.Now()
	var done time.Time
	if r.opts.Takeover == TakeoverManual {
		if _, err := r.admins[from].Secondary(ctx); err != nil {
			return t, fmt.Errorf("hablock secondary on %s: %w", from, err)
		}
		if err := r.tp.delVIP(ctx, from); err != nil {
			return t, err
		}
		if _, err := r.admins[to].Primary(ctx, false); err != nil {
			return t, fmt.Errorf("hablock primary on %s: %w", to, err)
		}
		if err := r.tp.addVIP(ctx, to); err != nil {
			return t, err
		}
		done = time.Now()
	} else {
		if _, err := run(ctx, r.bin, "switchover", "--socket", r.admins[from].Socket(), "--to", to); err != nil {
			return t, err
		}
		if err := r.waitVIP(ctx, to, 30*time.Second); err != nil {
			return t, err
		}
		done = time.Now()
	}
	r.primary = to
	resumed, err := r.writeAfter(ctx, done, 60*time.Second)
	if err != nil {
		return t, fmt.Errorf("switchover %s->%s: I/O did not resume: %w", from, to, err)
	}
	t.Stall = r.maxGap(begin, resumed)
	t.VIPMove = done.Sub(begin)
	t.Reconnect = max(0, resumed.Sub(done))
	pg.finish(&t, filepath.Join(r.opts.Dir, "pgbench.log"))
	r.clientEvents(&t, t.Start, time.Now())
	if err := r.waitInSync(ctx, time.Minute); err != nil {
		return t, err
	}
	if r.primary != to {
		return t, fmt.Errorf("switchover to %s: %s is Primary", to, r.primary)
	}
	r.logf("switchover %s->%s: stall %v (role+VIP move %v, reconnect %v); pgbench %d committed, %d failed; HTTP failures %d",
		from, to, t.Stall.Round(time.Millisecond), t.VIPMove.Round(time.Millisecond), t.Reconnect.Round(time.Millisecond),
		t.PGCommitted, t.PGFailed, t.HTTPFailures)
	return t, nil
}

// Final is the end-of-run check.
type Final struct {
	LedgerRecorded int   // ids whose COMMIT pgbench saw succeed
	LedgerRows     int   // rows in the ledger table
	LedgerMissing  int   // recorded ids not in the table (lost commits)
	Writes         int   // write+fsync calls the writer completed
	BackingEqual   bool  // both backing files identical once quiesced
	BackingSize    int64 // bytes compared
	E2fsckClean    bool  // e2fsck -fn found nothing
	E2fsck         string
	// KernelErrors are kernel log lines since the mount reporting I/O
	// or ext4 errors on the client's loop device (writes the page cache
	// lost without telling any process).
	KernelErrors []string
	// LostSideWrites are acknowledged writes of the partition scenarios'
	// side writers missing from the disks.
	LostSideWrites []string
}

// OK reports whether every end-of-run criterion holds.
func (f Final) OK() bool {
	return f.LedgerMissing == 0 && f.LedgerRecorded > 0 && f.BackingEqual && f.E2fsckClean && len(f.KernelErrors) == 0 && len(f.LostSideWrites) == 0
}

// Finish quiesces the cluster and checks it: every committed ledger id is
// in the table; the client, PostgreSQL, the mount and the initiator stop;
// both agents are in sync and then stopped; the backing files are equal;
// e2fsck -fn finds the file system clean.
func (r *Rig) Finish(ctx context.Context) (Final, error) {
	var f Final
	rows, err := r.psql(ctx, "SELECT id FROM ledger")
	if err != nil {
		return f, err
	}
	have := map[string]bool{}
	for _, id := range strings.Fields(rows) {
		have[id] = true
	}
	f.LedgerRows = len(have)
	rec, err := os.Open(r.ledgerFile)
	if err != nil {
		return f, fmt.Errorf("no transaction was recorded as committed: %w", err)
	}
	sc := bufio.NewScanner(rec)
	for sc.Scan() {
		id := strings.TrimSpace(sc.Text())
		if id == "" {
			continue
		}
		f.LedgerRecorded++
		if !have[id] {
			f.LedgerMissing++
		}
	}
	rec.Close()

	if err := r.work.stop(syscall.SIGTERM, 20*time.Second); err != nil {
		return f, err
	}
	r.mu.Lock()
	f.Writes = len(r.writes)
	r.mu.Unlock()
	if err := r.postgres.stop(syscall.SIGINT, 60*time.Second); err != nil {
		return f, err
	}
	if _, err := run(ctx, "umount", r.mnt); err != nil {
		return f, err
	}
	r.mounted = false
	if err := r.qsd.stop(syscall.SIGTERM, 20*time.Second); err != nil {
		return f, err
	}
	f.KernelErrors = r.kernelIOErrors(ctx)
	if err := r.waitInSync(ctx, 2*time.Minute); err != nil {
		return f, err
	}
	sec := other(r.primary)
	for _, n := range []string{sec, r.primary, W} {
		if p := r.agents[n]; p != nil {
			if err := p.stop(syscall.SIGTERM, 30*time.Second); err != nil {
				return f, err
			}
		}
	}
	h1, n1, err := fileHash(filepath.Join(r.opts.Dir, N1+".img"))
	if err != nil {
		return f, err
	}
	h2, _, err := fileHash(filepath.Join(r.opts.Dir, N2+".img"))
	if err != nil {
		return f, err
	}
	f.BackingEqual, f.BackingSize = h1 == h2, n1
	if f.LostSideWrites, err = r.lostSideWrites(filepath.Join(r.opts.Dir, r.primary+".img")); err != nil {
		return f, err
	}
	out, err := run(ctx, "e2fsck", "-fn", filepath.Join(r.opts.Dir, r.primary+".img"))
	f.E2fsck, f.E2fsckClean = strings.TrimSpace(out), err == nil
	return f, nil
}

func fileHash(path string) ([32]byte, int64, error) {
	var sum [32]byte
	fh, err := os.Open(path)
	if err != nil {
		return sum, 0, err
	}
	defer fh.Close()
	h := sha256.New()
	n, err := io.Copy(h, fh)
	if err != nil {
		return sum, n, err
	}
	copy(sum[:], h.Sum(nil))
	return sum, n, nil
}

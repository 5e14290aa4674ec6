package main

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/hablock/hablock/benchmarks/internal/bench"
	"github.com/hablock/hablock/internal/admin"
)

const (
	iqn      = "iqn.2026-11.io.hablock.bench:resync"
	blk      = 4096
	extentSz = 4 << 20 // the activity log's extent size (meta.DefaultALConfig)
	// The load: qemu-io runs, each rewriting loadLen at loadOff in loadIO
	// writes.
	loadOff, loadLen, loadIO = 64 << 20, 16 << 20, 512 << 10
)

type runner struct {
	o    options
	args []string
	log  io.Writer
	bin  string
	dir  string // the run's temporary directory
	pdir string // the current pair's directory in it
	conf string
	port int // iSCSI
	agt  [2]*bench.Server
	rep  *report
}

func newRunner(o options, args []string, log io.Writer) *runner {
	return &runner{o: o, args: args, log: log}
}

func (r *runner) logf(format string, a ...any) {
	fmt.Fprintf(r.log, "%s "+format+"\n", append([]any{time.Now().UTC().Format("15:04:05")}, a...)...)
}

var nodes = [2]string{"n1", "n2"}

func (r *runner) socket(i int) string  { return filepath.Join(r.pdir, nodes[i]+".sock") }
func (r *runner) backing(i int) string { return filepath.Join(r.pdir, nodes[i]+".img") }

// run sets the pair up and runs both phases. The report is returned even
// when a phase failed (with what was measured).
func (r *runner) run(ctx context.Context) (*report, error) {
	var err error
	if r.dir, err = os.MkdirTemp(r.o.dir, "resync-"); err != nil {
		return nil, err
	}
	defer func() {
		r.stopAgents()
		if r.o.keep {
			r.logf("kept %s", r.dir)
		} else {
			os.RemoveAll(r.dir)
		}
	}()
	if r.bin, err = bench.BuildHablock(ctx, r.o.hablockBin, r.o.repo, r.dir, r.log, ""); err != nil {
		return nil, err
	}
	r.rep = &report{
		start: time.Now().UTC(), command: bench.CommandLine("resync", r.args), size: r.o.sizeBytes, write: r.o.wrBytes,
		machine: bench.DescribeMachine(), version: bench.HablockVersion(ctx, r.bin), loadStart: bench.Loadavg(),
	}
	defer func() { r.rep.end, r.rep.loadEnd = time.Now().UTC(), bench.Loadavg() }()
	// Each phase gets a fresh pair: the activity log keeps extents hot
	// across clean restarts, so (b) on (a)'s pair would measure (a)'s
	// writes too.
	if err := r.setup(ctx, "a"); err != nil {
		return r.rep, fmt.Errorf("(a) setup: %w", err)
	}
	if err := r.phaseSecondary(ctx); err != nil {
		return r.rep, fmt.Errorf("(a) secondary kill: %w", err)
	}
	if !r.o.keep {
		os.RemoveAll(r.pdir) // room for (b)'s backing files
	}
	if err := r.setup(ctx, "b"); err != nil {
		return r.rep, fmt.Errorf("(b) setup: %w", err)
	}
	if err := r.phasePrimary(ctx); err != nil {
		return r.rep, fmt.Errorf("(b) primary kill: %w", err)
	}
	return r.rep, nil
}

// ---- the pair ----

// setup makes a pair in directory sub of the run's directory, promotes n1
// with --force and waits for the initial full sync.
func (r *runner) setup(ctx context.Context, sub string) error {
	r.pdir = filepath.Join(r.dir, sub)
	if err := os.Mkdir(r.pdir, 0o755); err != nil {
		return err
	}
	var ports [3]int
	for i := range ports {
		p, err := bench.FreeLoopbackPort()
		if err != nil {
			return err
		}
		ports[i] = p
	}
	if ports[0] == ports[1] || ports[1] == ports[2] || ports[0] == ports[2] {
		return fmt.Errorf("free port collision; run again")
	}
	r.port = ports[2]
	var b strings.Builder
	fmt.Fprintf(&b, "resource r0 {\n    size %d\n    block-size 4096\n", r.o.sizeBytes)
	fmt.Fprintf(&b, "    iscsi { iqn %s ; listen 127.0.0.1:%d }\n", iqn, r.port)
	// Ping and timeouts at their documented defaults; only reconnecting
	// is quicker (the restart is timed) and the resync is not throttled.
	b.WriteString("    net { connect-retry-min 100ms ; connect-retry-max 1s ; resync-rate unlimited }\n")
	for i, n := range nodes {
		fmt.Fprintf(&b, "    node %s { address 127.0.0.1:%d ; backing %s ; meta-dir %s ; admin %s }\n",
			n, ports[i], r.backing(i), filepath.Join(r.pdir, n+"-meta"), r.socket(i))
	}
	b.WriteString("}\n")
	r.conf = filepath.Join(r.pdir, "r0.conf")
	if err := os.WriteFile(r.conf, []byte(b.String()), 0o644); err != nil {
		return err
	}
	out, err := bench.RunCmd(ctx, 60*time.Second, r.bin, "create-md", "--config", r.conf, "--node", "n1")
	if err != nil {
		return err
	}
	m := regexp.MustCompile(`volume UUID: ([0-9a-f-]{36})`).FindStringSubmatch(out)
	if m == nil {
		return fmt.Errorf("create-md printed no volume UUID: %s", out)
	}
	if _, err := bench.RunCmd(ctx, 60*time.Second, r.bin, "create-md", "--config", r.conf, "--node", "n2", "--uuid", m[1]); err != nil {
		return err
	}
	for i := range nodes {
		if err := r.startAgent(ctx, i); err != nil {
			return err
		}
	}
	began := time.Now()
	if err := r.admin(ctx, 0, "primary", "--force"); err != nil {
		return err
	}
	r.logf("initial full sync of %s from n1 to n2 ...", bench.SizeLabel(r.o.sizeBytes))
	if _, err := r.waitFor(ctx, 0, "in sync after the initial full sync", inSync); err != nil {
		return err
	}
	r.rep.initialSync = append(r.rep.initialSync, time.Since(began))
	r.logf("initial sync done in %v", time.Since(began).Round(time.Millisecond))
	return nil
}

func (r *runner) startAgent(ctx context.Context, i int, extra ...string) error {
	argv := append([]string{r.bin, "agent", "--config", r.conf, "--node", nodes[i]}, extra...)
	s, err := bench.StartServer("agent "+nodes[i], filepath.Join(r.pdir, nodes[i]+".log"), argv, 0)
	if err != nil {
		return err
	}
	r.agt[i] = s
	deadline := time.Now().Add(30 * time.Second)
	for {
		if _, err := r.status(ctx, i); err == nil {
			return nil
		} else if done, how := s.Exited(); done {
			return fmt.Errorf("agent %s exited (%s); log:\n%s", nodes[i], how, s.LogTail(15))
		} else if time.Now().After(deadline) {
			return fmt.Errorf("agent %s: admin socket not answering after 30s: %v", nodes[i], err)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// kill SIGKILLs agent i and waits for it to be gone.
func (r *runner) kill(i int) {
	s := r.agt[i]
	r.agt[i] = nil
	syscall.Kill(s.Pid(), syscall.SIGKILL)
	for done, _ := s.Exited(); !done; done, _ = s.Exited() {
		time.Sleep(10 * time.Millisecond)
	}
	s.Stop(0) // closes its log
}

func (r *runner) stopAgents() {
	for i, s := range r.agt {
		if s != nil {
			s.Stop(20 * time.Second)
			r.agt[i] = nil
		}
	}
}

func (r *runner) admin(ctx context.Context, i int, cmd string, args ...string) error {
	_, err := bench.RunCmd(ctx, 2*time.Minute, append([]string{r.bin, cmd, "--socket", r.socket(i)}, args...)...)
	return err
}

func (r *runner) status(ctx context.Context, i int) (admin.Status, error) {
	c := admin.NewClient(r.socket(i))
	defer c.Close()
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	return c.Status(ctx)
}

func inSync(st admin.Status) bool {
	return st.Connection == "Connected" && st.Replication == "Established" && st.Disk == "UpToDate" &&
		st.PeerDisk == "UpToDate" && st.OutOfSyncBytes == 0
}

// waitFor polls node i's status every 100 ms until cond holds.
func (r *runner) waitFor(ctx context.Context, i int, what string, cond func(admin.Status) bool) (admin.Status, error) {
	deadline := time.Now().Add(r.o.timeout)
	last := time.Now()
	for {
		st, err := r.status(ctx, i)
		if err == nil && cond(st) {
			return st, nil
		}
		if s := r.agt[i]; s != nil {
			if done, how := s.Exited(); done {
				return st, fmt.Errorf("agent %s exited (%s) while waiting to be %s; log:\n%s", nodes[i], how, what, s.LogTail(15))
			}
		}
		if time.Now().After(deadline) {
			return st, fmt.Errorf("%s not %s after %v: %s (err %v)", nodes[i], what, r.o.timeout, oneLine(st), err)
		}
		if time.Since(last) > 10*time.Second {
			last = time.Now()
			r.logf("  waiting for %s to be %s: %s", nodes[i], what, oneLine(st))
		}
		select {
		case <-ctx.Done():
			return st, ctx.Err()
		case <-time.After(100 * time.Millisecond):
		}
	}
}

func oneLine(st admin.Status) string {
	s := fmt.Sprintf("role:%s disk:%s connection:%s peer-disk:%s replication:%s out-of-sync:%d",
		st.Role, st.Disk, st.Connection, st.PeerDisk, st.Replication, st.OutOfSyncBytes)
	if st.Sync != nil && st.Sync.Running {
		s += fmt.Sprintf(" sync:%.1f%%", st.Sync.Percent())
	}
	if st.LastError != "" {
		s += " last-error: " + st.LastError
	}
	return s
}

// ---- I/O through the target ----

// qemuIO runs qemu-io commands against the target on r.port.
func (r *runner) qemuIO(ctx context.Context, cmds []string) (string, error) {
	argv := []string{"qemu-io", "--image-opts", bench.IscsiOpts(r.port, iqn, 0)}
	for _, c := range cmds {
		argv = append(argv, "-c", c)
	}
	res := bench.RunQemu(ctx, argv, 5*time.Minute)
	switch {
	case res.Timeout:
		return res.Out, fmt.Errorf("qemu-io timed out")
	case res.Err != nil:
		return res.Out, res.Err
	case strings.Contains(res.Out, "failed"):
		return res.Out, fmt.Errorf("qemu-io reports a failure: %s", bench.LastLine(res.Out))
	}
	return res.Out, nil
}

// load rewrites the load region with one qemu-io run after another until
// stop is closed, counting complete runs and errors.
type load struct {
	mu     sync.Mutex
	runs   int
	errs   int
	lastEr string
	cancel context.CancelFunc
	done   chan struct{}
}

func (r *runner) startLoad(ctx context.Context) *load {
	ctx, cancel := context.WithCancel(ctx)
	l := &load{cancel: cancel, done: make(chan struct{})}
	go func() {
		defer close(l.done)
		for pat := 1; ctx.Err() == nil; pat++ {
			var cmds []string
			for o := int64(loadOff); o < loadOff+loadLen; o += loadIO {
				cmds = append(cmds, fmt.Sprintf("write -P 0x%x %d %d", pat%200+1, o, loadIO))
			}
			cmds = append(cmds, "flush")
			out, err := r.qemuIO(ctx, cmds)
			if ctx.Err() != nil {
				return // stopped: this run is not counted either way
			}
			l.mu.Lock()
			if err == nil && strings.Count(out, "wrote ") == loadLen/loadIO {
				l.runs++
			} else {
				l.errs++
				l.lastEr = fmt.Sprintf("%v: %s", err, bench.LastLine(out))
			}
			l.mu.Unlock()
		}
	}()
	return l
}

func (l *load) counts() (runs, errs int) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.runs, l.errs
}

func (l *load) stop() {
	l.cancel()
	<-l.done
}

// blockSet is a set of 4 KiB blocks of the volume.
type blockSet []bool

func newBlockSet(size int64) blockSet { return make(blockSet, size/blk) }

func (s blockSet) add(off, n int64) {
	for b := off / blk; b < (off+n+blk-1)/blk; b++ {
		s[b] = true
	}
}

func (s blockSet) bytes() int64 {
	var n int64
	for _, b := range s {
		if b {
			n += blk
		}
	}
	return n
}

// writePlan is --write bytes: 90 % as 1 MiB writes spread evenly over the
// volume, the rest as 4 KiB writes at random offsets, all outside the load
// region; each recorded in set.
func writePlan(size, total int64, pat byte, rng *rand.Rand, set blockSet) []string {
	var cmds []string
	big := total * 9 / 10 >> 20
	small := (total - big<<20) / blk
	stride := size / max(big, 1) / (1 << 20) * (1 << 20)
	for k := int64(0); k < big; k++ {
		off := k * stride
		if off+(1<<20) > loadOff && off < loadOff+loadLen {
			off = loadOff + loadLen // keep the load region's accounting simple
		}
		cmds = append(cmds, fmt.Sprintf("write -P 0x%x %d %d", pat, off, 1<<20))
		set.add(off, 1<<20)
	}
	for k := int64(0); k < small; k++ {
		off := rng.Int64N(size/blk) * blk
		if off >= loadOff && off < loadOff+loadLen {
			k--
			continue
		}
		cmds = append(cmds, fmt.Sprintf("write -P 0x%x %d %d", pat, off, blk))
		set.add(off, blk)
	}
	return cmds
}

// writeMore runs the plan in batches of 500 commands.
func (r *runner) writeMore(ctx context.Context, cmds []string) error {
	for i := 0; i < len(cmds); i += 500 {
		batch := append(cmds[i:min(i+500, len(cmds)):min(i+500, len(cmds))], "flush")
		out, err := r.qemuIO(ctx, batch)
		if err != nil {
			return fmt.Errorf("writing the extra data: %w", err)
		}
		if got := strings.Count(out, "wrote "); got != len(batch)-1 {
			return fmt.Errorf("qemu-io completed %d of %d writes: %s", got, len(batch)-1, bench.LastLine(out))
		}
	}
	return nil
}

// ---- phases ----

func (r *runner) phaseSecondary(ctx context.Context) error {
	ph := &phase{name: "(a) Secondary SIGKILL under load"}
	r.rep.phases = append(r.rep.phases, ph)
	r.logf("(a) load on n1 for %v, then SIGKILL n2", r.o.loadTime)
	l := r.startLoad(ctx)
	time.Sleep(r.o.loadTime)
	r.kill(1)
	killed := time.Now()
	if _, err := r.waitFor(ctx, 0, "disconnected from n2", func(st admin.Status) bool { return st.Connection != "Connected" }); err != nil {
		l.stop()
		return err
	}
	runs0, _ := l.counts()
	for {
		runs, errs := l.counts()
		if runs >= runs0+2 || errs > 0 || time.Since(killed) > r.o.timeout {
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	l.stop()
	ph.loadRuns, ph.loadErrors = l.counts()
	ph.loadLastErr = l.lastEr
	set := newBlockSet(r.o.sizeBytes)
	set.add(loadOff, loadLen)
	rng := rand.New(rand.NewPCG(uint64(time.Now().UnixNano()), 1))
	r.logf("(a) load: %d runs, %d errors; writing %s more without n2", ph.loadRuns, ph.loadErrors, bench.SizeLabel(r.o.wrBytes))
	if err := r.writeMore(ctx, writePlan(r.o.sizeBytes, r.o.wrBytes, 0xa5, rng, set)); err != nil {
		return err
	}
	ph.dirtied = set.bytes()
	st, err := r.status(ctx, 0)
	if err != nil {
		return err
	}
	ph.oosSurvivor = st.OutOfSyncBytes
	before := st.Counters.ResyncBytes

	r.logf("(a) restarting n2; n1 marks %d bytes out of sync, %d dirtied", ph.oosSurvivor, ph.dirtied)
	began := time.Now()
	if err := r.startAgent(ctx, 1); err != nil {
		return err
	}
	if st, err = r.waitFor(ctx, 0, "in sync after n2's restart", inSync); err != nil {
		return err
	}
	ph.resyncTime = time.Since(began)
	ph.resync = int64(st.Counters.ResyncBytes - before)
	r.logf("(a) resync moved %d bytes in %v", ph.resync, ph.resyncTime.Round(time.Millisecond))
	r.stopAgents()
	ph.diff, ph.compareErr = r.compare()
	return ph.compareErr
}

var alLogRE = regexp.MustCompile(`activity log extents marked out of sync.* extents=(\d+)`)

func (r *runner) phasePrimary(ctx context.Context) error {
	ph := &phase{name: "(b) Primary SIGKILL under load, Secondary promoted", primary: true}
	r.rep.phases = append(r.rep.phases, ph)
	r.logf("(b) load on n1 for %v, then SIGKILL n1", r.o.loadTime)
	l := r.startLoad(ctx)
	time.Sleep(r.o.loadTime)
	r.kill(0)
	l.stop()
	ph.loadRuns, ph.loadErrors = l.counts()
	if _, err := r.waitFor(ctx, 1, "disconnected from n1, UpToDate", func(st admin.Status) bool {
		return st.Connection != "Connected" && st.Disk == "UpToDate"
	}); err != nil {
		return err
	}
	if err := r.admin(ctx, 1, "primary"); err != nil {
		return err
	}
	set := newBlockSet(r.o.sizeBytes)
	rng := rand.New(rand.NewPCG(uint64(time.Now().UnixNano()), 2))
	r.logf("(b) n2 promoted; writing %s through its target", bench.SizeLabel(r.o.wrBytes))
	if err := r.writeMore(ctx, writePlan(r.o.sizeBytes, r.o.wrBytes, 0x5b, rng, set)); err != nil {
		return err
	}
	ph.dirtied = set.bytes()
	st2, err := r.status(ctx, 1)
	if err != nil {
		return err
	}
	ph.oosSurvivor = st2.OutOfSyncBytes
	before := st2.Counters.ResyncBytes

	if err := r.startAgent(ctx, 0, "--no-connect"); err != nil {
		return err
	}
	st1, err := r.status(ctx, 0)
	if err != nil {
		return err
	}
	ph.restartRole = st1.Role
	ph.oosCrashed = st1.OutOfSyncBytes
	if m := alLogRE.FindStringSubmatch(bench.ReadFile(filepath.Join(r.pdir, "n1.log"))); m != nil {
		ph.alExtents, _ = strconv.Atoi(m[1])
	}
	r.logf("(b) n1 restarted %s: %d AL extents, %d bytes out of sync; n2 %d out of sync", st1.Role, ph.alExtents, ph.oosCrashed, ph.oosSurvivor)
	began := time.Now()
	if err := r.admin(ctx, 0, "connect"); err != nil {
		return err
	}
	if st2, err = r.waitFor(ctx, 1, "in sync after n1's restart", inSync); err != nil {
		return err
	}
	ph.resyncTime = time.Since(began)
	ph.resync = int64(st2.Counters.ResyncBytes - before)
	r.logf("(b) resync moved %d bytes in %v", ph.resync, ph.resyncTime.Round(time.Millisecond))
	r.stopAgents()
	ph.diff, ph.compareErr = r.compare()
	return ph.compareErr
}

// compare reads both backing files and counts the 4 KiB blocks that
// differ.
func (r *runner) compare() (int64, error) {
	a, err := os.Open(r.backing(0))
	if err != nil {
		return 0, err
	}
	defer a.Close()
	b, err := os.Open(r.backing(1))
	if err != nil {
		return 0, err
	}
	defer b.Close()
	r.logf("comparing both backing files byte for byte ...")
	return diffBlocks(a, b, r.o.sizeBytes)
}

// diffBlocks counts the 4 KiB blocks of [0, size) that differ between a
// and b.
func diffBlocks(a, b io.ReaderAt, size int64) (int64, error) {
	const chunk = 8 << 20
	ba, bb := make([]byte, chunk), make([]byte, chunk)
	var diff int64
	for off := int64(0); off < size; off += chunk {
		n := min(chunk, size-off)
		if _, err := a.ReadAt(ba[:n], off); err != nil {
			return diff, err
		}
		if _, err := b.ReadAt(bb[:n], off); err != nil {
			return diff, err
		}
		if bytes.Equal(ba[:n], bb[:n]) {
			continue
		}
		for o := int64(0); o < n; o += blk {
			if !bytes.Equal(ba[o:o+blk], bb[o:o+blk]) {
				diff++
			}
		}
	}
	return diff, nil
}

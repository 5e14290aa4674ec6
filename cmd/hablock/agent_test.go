package main

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/hablock/hablock/blockdev"
	"github.com/hablock/hablock/blockdev/meta"
	"github.com/hablock/hablock/internal/admin"
	"github.com/hablock/hablock/replication"
)

// freePort returns a 127.0.0.1 port that was free a moment ago.
func freePort(t *testing.T) int {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port
}

// testResource writes a two-node resource file (both nodes on 127.0.0.1,
// everything under dir) and returns its path. extraNet is added to the
// net section.
func testResource(t *testing.T, dir, extraNet string) string {
	t.Helper()
	conf := fmt.Sprintf(`resource r0 {
    size 16M
    iscsi { listen 127.0.0.1:%d }
    net {
        ping-interval 500ms ; ping-timeout 250ms ; timeout 2s
        connect-retry-min 100ms ; connect-retry-max 500ms
        %s
    }
    node n1 { address 127.0.0.1:%d ; backing %s/n1.img ; meta-dir %s/n1-meta ; admin %s/n1.sock }
    node n2 { address 127.0.0.1:%d ; backing %s/n2.img ; meta-dir %s/n2-meta ; admin %s/n2.sock }
}
`, freePort(t), extraNet, freePort(t), dir, dir, dir, freePort(t), dir, dir, dir)
	path := filepath.Join(dir, "r0.conf")
	if err := os.WriteFile(path, []byte(conf), 0o644); err != nil {
		t.Fatal(err)
	}
	return path
}

// hablock runs a command in-process and returns its exit code and output.
func hablock(args ...string) (code int, stdout, stderr string) {
	var o, e bytes.Buffer
	code = run(args, &o, &e)
	return code, o.String(), e.String()
}

var uuidRE = regexp.MustCompile(`volume UUID: ([0-9a-f-]{36})`)

// createMD runs create-md for node (with uuid if not empty) and returns
// the volume UUID.
func createMD(t *testing.T, conf, node, uuid string) string {
	t.Helper()
	args := []string{"create-md", "--config", conf, "--node", node}
	if uuid != "" {
		args = append(args, "--uuid", uuid)
	}
	code, out, errOut := hablock(args...)
	if code != 0 {
		t.Fatalf("create-md %s: exit %d\n%s%s", node, code, out, errOut)
	}
	m := uuidRE.FindStringSubmatch(out)
	if m == nil {
		t.Fatalf("create-md printed no UUID:\n%s", out)
	}
	return m[1]
}

// startAgent runs "hablock agent" as a separate process and waits for it
// to log "agent running". It is killed when the test ends.
func startAgent(t *testing.T, args ...string) *proc {
	t.Helper()
	cmd := hablockCmd(t, append([]string{"agent"}, args...)...)
	stderr, err := cmd.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	p := &proc{t: t, cmd: cmd, exited: make(chan struct{})}
	ready := make(chan struct{}, 1)
	go func() {
		sc := bufio.NewScanner(stderr)
		sc.Buffer(make([]byte, 64<<10), 1<<20)
		for sc.Scan() {
			line := sc.Text()
			p.mu.Lock()
			p.log.WriteString(line + "\n")
			p.mu.Unlock()
			if strings.Contains(line, "agent running") {
				select {
				case ready <- struct{}{}:
				default:
				}
			}
		}
		p.err = cmd.Wait()
		close(p.exited)
	}()
	t.Cleanup(func() {
		p.kill()
		if t.Failed() {
			t.Logf("hablock agent %v log:\n%s", args, p.logText())
		}
	})
	select {
	case <-ready:
		return p
	case <-p.exited:
		t.Fatalf("hablock agent %v exited: %v\n%s", args, p.err, p.logText())
	case <-time.After(15 * time.Second):
		t.Fatalf("hablock agent %v not running after 15s\n%s", args, p.logText())
	}
	return nil
}

func TestCreateMDRefusesOverwrite(t *testing.T) {
	dir := t.TempDir()
	conf := testResource(t, dir, "")
	code, out, errOut := hablock("create-md", "--config", conf, "--node", "n1")
	if code != 0 {
		t.Fatalf("exit %d: %s%s", code, out, errOut)
	}
	uuid := uuidRE.FindStringSubmatch(out)
	if uuid == nil || !strings.Contains(out, "on the peer run: hablock create-md --config "+conf+" --node n2 --uuid "+uuid[1]) {
		t.Fatalf("create-md output lacks the UUID and the peer's command:\n%s", out)
	}
	if fi, err := os.Stat(filepath.Join(dir, "n1.img")); err != nil || fi.Size() != 16<<20 {
		t.Fatalf("backing file: %v %v", fi, err)
	}

	code, _, errOut = hablock("create-md", "--config", conf, "--node", "n1")
	if code != 1 || !strings.Contains(errOut, filepath.Join(dir, "n1-meta")) || !strings.Contains(errOut, "--force") {
		t.Fatalf("second create-md: exit %d, stderr %q; want 1 naming the dir and --force", code, errOut)
	}

	code, out, errOut = hablock("create-md", "--config", conf, "--node", "n1", "--force", "--uuid", uuid[1])
	if code != 0 || !strings.Contains(out, "volume UUID: "+uuid[1]) {
		t.Fatalf("create-md --force: exit %d\n%s%s", code, out, errOut)
	}

	// The peer with the shared UUID.
	if got := createMD(t, conf, "n2", uuid[1]); got != uuid[1] {
		t.Fatalf("n2 UUID %s, want %s", got, uuid[1])
	}

	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"--config", conf, "--node", "n3"}, `no node "n3"`},
		{[]string{"--config", conf, "--node", "n1", "--uuid", "nope"}, "--uuid"},
		{[]string{"--node", "n1"}, "--config is required"},
	} {
		code, _, errOut := hablock(append([]string{"create-md"}, tc.args...)...)
		if code != 2 || !strings.Contains(errOut, tc.want) {
			t.Errorf("create-md %v: exit %d, stderr %q; want 2 and %q", tc.args, code, errOut, tc.want)
		}
	}
}

func TestAgentRefusesBadConfig(t *testing.T) {
	dir := t.TempDir()
	conf := testResource(t, dir, "ping-timeout 5s")
	code, _, errOut := hablock("agent", "--config", conf, "--node", "n1")
	// The second ping-timeout is on line 7 of the file (net section, extra line).
	if code == 0 || !regexp.MustCompile(`r0\.conf:7: net\.ping-timeout`).MatchString(errOut) {
		t.Fatalf("exit %d, stderr %q; want r0.conf:7: net.ping-timeout", code, errOut)
	}
	conf = testResource(t, dir, "resync-rate fast")
	code, _, errOut = hablock("agent", "--config", conf, "--node", "n1")
	if code == 0 || !regexp.MustCompile(`r0\.conf:\d+: net\.resync-rate`).MatchString(errOut) {
		t.Fatalf("exit %d, stderr %q; want r0.conf:N: net.resync-rate", code, errOut)
	}
}

func TestAgentWithoutMetadata(t *testing.T) {
	dir := t.TempDir()
	conf := testResource(t, dir, "")
	code, _, errOut := hablock("agent", "--config", conf, "--node", "n1")
	want := "run `hablock create-md --config " + conf + " --node n1` first"
	if code != 1 || !strings.Contains(errOut, want) {
		t.Fatalf("exit %d, stderr %q; want 1 and %q", code, errOut, want)
	}
}

func TestStatusAgainstAgent(t *testing.T) {
	dir := t.TempDir()
	conf := testResource(t, dir, "")
	createMD(t, conf, "n1", "")

	// No agent yet: a clear message.
	code, _, errOut := hablock("status", "--config", conf, "--node", "n1")
	if code != 1 || !strings.Contains(errOut, "no agent at "+filepath.Join(dir, "n1.sock")) ||
		!strings.Contains(errOut, "hablock agent --config "+conf+" --node n1") {
		t.Fatalf("status without agent: exit %d, %q", code, errOut)
	}

	ag := startAgent(t, "--config", conf, "--node", "n1")
	fi, err := os.Stat(filepath.Join(dir, "n1.sock"))
	if err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("admin socket: %v %v", fi, err)
	}

	code, out, errOut := hablock("status", "--config", conf, "--node", "n1")
	if code != 0 || !strings.HasPrefix(out, "r0 role:Secondary\n  disk:Inconsistent") || !strings.Contains(out, "  n2 connection:") {
		t.Fatalf("status: exit %d\n%s%s", code, out, errOut)
	}
	code, out, errOut = hablock("status", "--socket", filepath.Join(dir, "n1.sock"), "--json")
	var st admin.Status
	if code != 0 || json.Unmarshal([]byte(out), &st) != nil {
		t.Fatalf("status --json: exit %d\n%s%s", code, out, errOut)
	}
	if st.Resource != "r0" || st.Node != "n1" || st.Role != "Secondary" || st.Disk != "Inconsistent" || !st.Engine || st.Size != 16<<20 {
		t.Fatalf("status --json = %+v", st)
	}

	// Without --force an Inconsistent node is not promoted; invalidate
	// (not connected, Secondary) marks everything out of sync.
	code, _, errOut = hablock("primary", "--config", conf, "--node", "n1")
	if code != 1 || !strings.Contains(errOut, "not UpToDate") || !strings.Contains(errOut, "--force") {
		t.Fatalf("primary: exit %d, %q", code, errOut)
	}
	code, out, errOut = hablock("invalidate", "--config", conf, "--node", "n1")
	if code != 0 || !strings.HasPrefix(out, "r0 role:Secondary\n  disk:Inconsistent out-of-sync:16.0 MiB\n") {
		t.Fatalf("invalidate: exit %d\n%s%s", code, out, errOut)
	}
	ag.stop(t)
	if _, err := os.Lstat(filepath.Join(dir, "n1.sock")); !os.IsNotExist(err) {
		t.Errorf("admin socket left after a clean stop: %v", err)
	}
}

// TestTwoAgentsForcePrimaryResync runs both nodes of a resource as real
// processes: n1 is forced Primary over data written into its backing file
// beforehand, and n2 must end up UpToDate with the same bytes; then an
// online verify finds nothing different.
func TestTwoAgentsForcePrimaryResync(t *testing.T) {
	dir := t.TempDir()
	conf := testResource(t, dir, "")
	uuid := createMD(t, conf, "n1", "")
	createMD(t, conf, "n2", uuid)

	// Data only n1 has: the initial full sync must carry it to n2.
	data := make([]byte, 16<<20)
	for i := range data {
		data[i] = byte(i*7 + i>>12)
	}
	if err := os.WriteFile(filepath.Join(dir, "n1.img"), data, 0o600); err != nil {
		t.Fatal(err)
	}

	a1 := startAgent(t, "--config", conf, "--node", "n1")
	a2 := startAgent(t, "--config", conf, "--node", "n2")

	code, out, errOut := hablock("primary", "--config", conf, "--node", "n1", "--force")
	if code != 0 || !strings.Contains(out, "r0 role:Primary\n  disk:UpToDate") {
		t.Fatalf("primary --force: exit %d\n%s%s", code, out, errOut)
	}
	code, out, errOut = hablock("connect", "--config", conf, "--node", "n1", "--wait", "--timeout", "15s")
	if code != 0 || !strings.Contains(out, "connection:Connected") || !strings.Contains(out, "replication:Established") {
		t.Fatalf("connect --wait: exit %d\n%s%s", code, out, errOut)
	}
	code, out, errOut = hablock("status", "--config", conf, "--node", "n2", "--json")
	var st admin.Status
	if code != 0 || json.Unmarshal([]byte(out), &st) != nil {
		t.Fatalf("status n2: exit %d\n%s%s", code, out, errOut)
	}
	if st.Role != "Secondary" || st.Disk != "UpToDate" || st.PeerRole != "Primary" || st.OutOfSyncBytes != 0 {
		t.Fatalf("n2 after resync: %+v", st)
	}
	if !strings.Contains(a1.logText(), "exporting volume") {
		t.Errorf("the Primary does not export over iSCSI:\n%s", a1.logText())
	}

	code, out, errOut = hablock("verify", "--config", conf, "--node", "n1", "--wait", "--timeout", "15s")
	if code != 0 || !strings.Contains(out, "out-of-sync:0 B") {
		t.Fatalf("verify --wait: exit %d\n%s%s", code, out, errOut)
	}

	a2.stop(t)
	a1.stop(t)
	got, err := os.ReadFile(filepath.Join(dir, "n2.img"))
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, data) {
		t.Fatal("n2's backing file differs from n1's data after the resync")
	}

	// The metadata kept what happened: both restart Secondary (as DRBD
	// does after a clean stop: promotion is always an explicit decision),
	// UpToDate, and reconnect without a full resync; n1 is promoted again
	// without --force.
	a2 = startAgent(t, "--config", conf, "--node", "n2")
	a1 = startAgent(t, "--config", conf, "--node", "n1")
	code, out, errOut = hablock("connect", "--config", conf, "--node", "n1", "--wait", "--timeout", "15s")
	if code != 0 || !strings.HasPrefix(out, "r0 role:Secondary\n  disk:UpToDate\n") || !strings.Contains(out, "peer-disk:UpToDate replication:Established") {
		t.Fatalf("after restart: exit %d\n%s%s", code, out, errOut)
	}
	if strings.Contains(a1.logText(), "exporting volume") {
		t.Errorf("n1 exports after a restart although it starts Secondary:\n%s", a1.logText())
	}
	if strings.Contains(a1.logText(), "FullSync") {
		t.Errorf("restart caused a full sync:\n%s", a1.logText())
	}
	code, out, errOut = hablock("primary", "--config", conf, "--node", "n1")
	if code != 0 || !strings.HasPrefix(out, "r0 role:Primary\n") {
		t.Fatalf("primary after restart: exit %d\n%s%s", code, out, errOut)
	}
	a1.stop(t)
	a2.stop(t)
}

// newTestPersister creates a metadata store for a volume of size bytes
// in a temporary directory and a persister over an empty bitmap of 4 KiB
// blocks; the store closes with the test.
func newTestPersister(t *testing.T, size uint64) (*meta.Store, *persister) {
	t.Helper()
	st, err := meta.Create(t.TempDir(), meta.Identity{UUID: blockdev.NewUUID(), Size: int64(size), BlockSize: 512, Resource: "r0", Node: "n1"},
		false, meta.DefaultOptions())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	bm, _ := replication.NewBitmap(size, 4096)
	p, err := newPersister(st, bm, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	return st, p
}

// TestPersisterRoundTrip stores a bitmap of many chunks (more than one
// metadata batch) and loads it back.
func TestPersisterRoundTrip(t *testing.T) {
	st, p := newTestPersister(t, 1<<38) // 2^26 blocks: 2048 chunks, 8 MiB of chunks (several batches)
	log := slog.New(slog.DiscardHandler)
	all, _ := replication.NewBitmap(1<<38, 4096)
	all.SetAll()
	p.replace(all)
	if err := p.flushAll(); err != nil {
		t.Fatal(err)
	}
	// A write's range becomes clean, another dirty.
	p.clean(0, 1<<20)
	p.flush()
	fresh, _ := replication.NewBitmap(1<<38, 4096)
	q, err := newPersister(st, fresh, log)
	if err != nil {
		t.Fatal(err)
	}
	if got, want := q.snapshot().Count(), all.Blocks()-256; got != want {
		t.Fatalf("reloaded %d dirty blocks, want %d", got, want)
	}
	q.bm.ClearAll()
	for idx := uint64(0); idx*chunkBlocks < q.bm.Blocks(); idx++ {
		q.pending[idx] = true
	}
	if err := q.flushAll(); err != nil {
		t.Fatal(err)
	}
	q.dirty(5<<30, 8192)
	empty, _ := replication.NewBitmap(1<<38, 4096)
	r, err := newPersister(st, empty, log)
	if err != nil {
		t.Fatal(err)
	}
	if n := r.snapshot().Count(); n != 2 || !r.snapshot().Test(5<<30/4096) {
		t.Fatalf("after clear + one dirty write: %d blocks dirty", n)
	}
	// A connect-time merge of many scattered runs (OnBitmapMerged): all
	// persisted, each touched chunk written once.
	peer, _ := replication.NewBitmap(1<<38, 4096)
	for i := uint64(0); i < 3000; i++ {
		peer.Set(i*(1<<38/3000)&^4095, 4096)
	}
	r.merged(peer)
	reload, _ := replication.NewBitmap(1<<38, 4096)
	u, err := newPersister(st, reload, log)
	if err != nil {
		t.Fatal(err)
	}
	if got := u.snapshot().Count(); got != 3000+2 {
		t.Fatalf("after merging 3000 runs: %d blocks persisted dirty, want %d", got, 3000+2)
	}
}

// TestPersisterCleanOnlyAfterDurable: blocks recorded in sync reach the
// metadata only after the backing store's flush succeeded (a sync
// target's resynced data may still be in the page cache); a failed
// flush keeps them recorded out of sync, and the next flush retries.
func TestPersisterCleanOnlyAfterDurable(t *testing.T) {
	st, p := newTestPersister(t, 1<<30)
	log := slog.New(slog.DiscardHandler)
	reload := func() uint64 {
		fresh, _ := replication.NewBitmap(1<<30, 4096)
		q, err := newPersister(st, fresh, log)
		if err != nil {
			t.Fatal(err)
		}
		return q.snapshot().Count()
	}
	p.dirty(0, 1<<20) // persisted at once
	if n := reload(); n != 256 {
		t.Fatalf("%d blocks persisted dirty, want 256", n)
	}
	var flushes int
	flushErr := errors.New("injected flush failure")
	p.durable = func() error { flushes++; return flushErr }
	p.clean(0, 1<<20)
	if err := p.flushAll(); !errors.Is(err, flushErr) {
		t.Fatalf("flushAll with a failing flush: %v", err)
	}
	if n := reload(); n != 256 || flushes != 1 {
		t.Fatalf("after a failed flush: %d blocks persisted dirty (want 256), %d flushes", n, flushes)
	}
	p.durable = func() error { flushes++; return nil }
	if err := p.flushAll(); err != nil {
		t.Fatal(err)
	}
	if n := reload(); n != 0 || flushes != 2 {
		t.Fatalf("after a good flush: %d blocks persisted dirty (want 0), %d flushes", n, flushes)
	}
	// Nothing pending: no flush.
	if err := p.flushAll(); err != nil || flushes != 2 {
		t.Fatalf("idle flushAll: %v, %d flushes", err, flushes)
	}
}

// TestPersisterDiskStateHook: the disk-state flags follow Hooks.OnDiskState
// at once, and the poll (updateFlags, from an older status snapshot)
// neither undoes them nor rolls back generations the hooks persisted.
func TestPersisterDiskStateHook(t *testing.T) {
	st, p := newTestPersister(t, 1<<30)
	stored := func() meta.Generations {
		s, err := st.State()
		if err != nil {
			t.Fatal(err)
		}
		return s.Gen
	}
	p.genIDs(replication.GenIDs{Current: 0x10})
	p.diskState(replication.UpToDate)
	if g := stored(); !g.Flags.Has(meta.FlagConsistent|meta.FlagWasUpToDate) || g.Current != 0x10 {
		t.Fatalf("after UpToDate: %+v", g)
	}
	// A resync starts: new generation, then Inconsistent, both at once.
	p.genIDs(replication.GenIDs{Current: 0x20, Bitmap: 0x10})
	p.diskState(replication.Inconsistent)
	if g := stored(); g.Flags.Has(meta.FlagConsistent) || g.Flags.Has(meta.FlagWasUpToDate) || g.Current != 0x20 {
		t.Fatalf("after Inconsistent: %+v", g)
	}
	// The poll, working from a status taken before both: it may add
	// peer-outdated, never bring back UpToDate or the old generation.
	if err := p.updateFlags(meta.FlagConsistent | meta.FlagWasUpToDate | meta.FlagPeerOutdated); err != nil {
		t.Fatal(err)
	}
	if g := stored(); g.Flags.Has(meta.FlagConsistent) || !g.Flags.Has(meta.FlagPeerOutdated) || g.Current != 0x20 || g.Bitmap != 0x10 {
		t.Fatalf("after the poll: %+v", g)
	}
}

// TestPersisterStoreFailure: while the metadata store refuses writes,
// dirty fails (so the engine fails the write that needed the bits) and
// the chunk is remembered as unsaved; a later dirty of the same range,
// whose bits are already set in memory, still writes it, and so does the
// next flush. Status sees the failures.
func TestPersisterStoreFailure(t *testing.T) {
	const size = 1 << 30
	st, p := newTestPersister(t, size)
	down := errors.New("metadata device gone read-only")
	st.SetWriteFault(func() error { return down })
	if err := p.dirty(64<<20, 8192); !errors.Is(err, down) {
		t.Fatalf("dirty with the store failing: %v, want the store's error", err)
	}
	if err := p.dirty(64<<20, 4096); !errors.Is(err, down) {
		t.Fatalf("dirty of already-set bits with the store failing: %v, want the store's error", err)
	}
	if unsaved, failures, last := p.unsavedChunks(); unsaved != 1 || failures != 2 || !strings.Contains(last, down.Error()) {
		t.Fatalf("unsavedChunks = %d, %d, %q; want 1 chunk, 2 failures and the error", unsaved, failures, last)
	}
	reload := func() *replication.Bitmap {
		bm, _ := replication.NewBitmap(size, 4096)
		q, err := newPersister(st, bm, slog.New(slog.DiscardHandler))
		if err != nil {
			t.Fatal(err)
		}
		return q.snapshot()
	}
	if n := reload().Count(); n != 0 {
		t.Fatalf("store holds %d dirty blocks although every write failed", n)
	}
	st.SetWriteFault(nil)
	// The same range again: no new bit, but the chunk is unsaved.
	if err := p.dirty(64<<20, 4096); err != nil {
		t.Fatal(err)
	}
	if got := reload(); got.Count() != 2 || !got.Test(64<<20/4096) || !got.Test(64<<20/4096+1) {
		t.Fatalf("after the store recovered: %d dirty blocks stored, want the 2 of the first write", got.Count())
	}
	if unsaved, _, _ := p.unsavedChunks(); unsaved != 0 {
		t.Fatalf("%d chunks still unsaved after a successful write", unsaved)
	}

	// The flush retries an unsaved chunk by itself.
	st.SetWriteFault(func() error { return down })
	if err := p.dirty(512<<20, 4096); err == nil {
		t.Fatal("dirty with the store failing succeeded")
	}
	p.flush() // still failing: stays unsaved
	if unsaved, _, _ := p.unsavedChunks(); unsaved != 1 {
		t.Fatalf("%d chunks unsaved after a failed flush, want 1", unsaved)
	}
	st.SetWriteFault(nil)
	p.flush()
	if got := reload(); got.Count() != 3 || !got.Test(512<<20/4096) {
		t.Fatalf("after the flush: %d dirty blocks stored, want 3", got.Count())
	}
	if unsaved, _, _ := p.unsavedChunks(); unsaved != 0 {
		t.Fatalf("%d chunks unsaved after a successful flush", unsaved)
	}
}

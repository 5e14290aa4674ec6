package main

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/hablock/hablock/internal/admin"
)

// failoverTrio is a resource with a witness, all three agents on
// loopback: automatic failover without network namespaces (no VIP; the
// iSCSI portal is one loopback port that whichever node is Primary
// listens on). The rig in failover/rig does the same across namespaces
// with a VIP, PostgreSQL and ext4.
type failoverTrio struct {
	*scenarioPair
	wsock string
	w     *proc
	// wmetrics is the witness's --metrics address.
	wmetrics string
}

func newFailoverTrio(t *testing.T, size string, sizeBytes int64) *failoverTrio {
	t.Helper()
	needScenarioTools(t)
	dir := t.TempDir()
	p := &scenarioPair{dir: dir, size: sizeBytes}
	port := freePort(t)
	// Each node's address port is followed by its gossip (+1) and
	// control (+2) ports: space them out.
	base := freePort(t)
	conf := fmt.Sprintf(`resource r0 {
    size %s
    block-size 512
    iscsi { iqn %s ; listen 127.0.0.1:%d }
    net {
        ping-interval 500ms ; ping-timeout 250ms ; timeout 2s
        connect-retry-min 100ms ; connect-retry-max 300ms
        resync-rate unlimited
    }
    node n1 { address 127.0.0.1:%d ; backing %s/n1.img ; meta-dir %s/n1-meta ; admin %s/n1.sock }
    node n2 { address 127.0.0.2:%d ; backing %s/n2.img ; meta-dir %s/n2-meta ; admin %s/n2.sock }
    witness w { address 127.0.0.3:%d ; meta-dir %s/w-meta ; admin %s/w.sock }
}
`, size, scenarioIQN, port, base, dir, dir, dir, base, dir, dir, dir, base, dir, dir)
	path := filepath.Join(dir, "r0.conf")
	if err := os.WriteFile(path, []byte(conf), 0o644); err != nil {
		t.Fatal(err)
	}
	for i, n := range scenarioNodes {
		p.conf[i] = path
		p.iscsi[i] = fmt.Sprintf("127.0.0.1:%d", port)
		p.sock[i] = filepath.Join(dir, n+".sock")
		p.img[i] = filepath.Join(dir, n+".img")
	}
	return &failoverTrio{scenarioPair: p, wsock: filepath.Join(dir, "w.sock"), wmetrics: fmt.Sprintf("127.0.0.1:%d", freePort(t))}
}

// establish creates the metadata, starts the three agents, makes n1
// Primary and waits until both disks are UpToDate and the quorum record
// lists both.
func (f *failoverTrio) establish(t *testing.T) {
	t.Helper()
	f.createMD(t)
	code, out, errOut := hablock("create-md", "--config", f.conf[0], "--node", "w")
	if code != 0 {
		t.Fatalf("create-md w: %d\n%s%s", code, out, errOut)
	}
	f.w = startAgent(t, "--config", f.conf[0], "--node", "w", "--metrics", f.wmetrics)
	f.start(t, 0)
	f.start(t, 1)
	f.admin(t, 0, "primary", "--force")
	for i := range 2 {
		f.waitFor(t, i, "in sync and recorded up to date", 60*time.Second, func(st admin.Status) bool {
			return inSync(st) && st.Failover != nil && len(st.Failover.Record.UpToDate) == 2
		})
	}
}

// load runs qemu-io against the portal in the background: count 64 KiB
// writes of pattern pat, one after another (each acknowledged before the
// next), so that afterwards every one of them can be read back.
func (f *failoverTrio) load(count int, pat byte) <-chan error {
	args := []string{"--image-opts", fmt.Sprintf("driver=iscsi,transport=tcp,portal=%s,target=%s,lun=0", f.iscsi[0], scenarioIQN)}
	for i := range count {
		args = append(args, "-c", fmt.Sprintf("write -P 0x%02x %d 64k", pat, i*64<<10))
	}
	done := make(chan error, 1)
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
		defer cancel()
		b, err := exec.CommandContext(ctx, "qemu-io", args...).CombinedOutput()
		if err == nil && strings.Contains(string(b), "failed") {
			err = fmt.Errorf("qemu-io reports a failure")
		}
		if err != nil {
			err = fmt.Errorf("%w\n%s", err, lastLines(string(b), 20))
		}
		done <- err
	}()
	return done
}

// verify reads back through node i's target what load(count, pat)
// wrote, 1 MiB at a time (qemu's iscsi driver asserts on some larger
// unaligned-looking requests), and fails on any difference.
func (f *failoverTrio) verify(t *testing.T, i, count int, pat byte) {
	t.Helper()
	var cmds []string
	for off := 0; off < count*64<<10; off += 1 << 20 {
		cmds = append(cmds, fmt.Sprintf("read -P 0x%02x %d 1M", pat, off))
	}
	if out := f.qemuIO(t, i, cmds...); strings.Contains(out, "verification failed") {
		t.Fatalf("acknowledged writes missing on %s:\n%s", scenarioNodes[i], lastLines(out, 10))
	}
}

func lastLines(s string, n int) string {
	l := strings.Split(strings.TrimRight(s, "\n"), "\n")
	return strings.Join(l[max(0, len(l)-n):], "\n")
}

// waitWrites waits until node i's agent has replicated at least n writes.
func (f *failoverTrio) waitWrites(t *testing.T, i int, n uint64) {
	t.Helper()
	f.waitFor(t, i, fmt.Sprintf("%d writes in", n), 60*time.Second, func(st admin.Status) bool { return st.Counters.Writes >= n })
}

// TestFailoverAutomatic kills the Primary under a write load: the
// Secondary takes over by itself in a new epoch, the initiator sees no
// error, every acknowledged write is on the new Primary, and the old
// Primary comes back as Secondary, resyncs only what changed and ends
// byte-identical.
func TestFailoverAutomatic(t *testing.T) {
	const writes = 640 // 40 MiB of 64 MiB
	f := newFailoverTrio(t, "64M", 64<<20)
	f.establish(t)
	before := f.status(t, 1).Failover.Record.Epoch

	done := f.load(writes, 0x5a)
	f.waitWrites(t, 0, 100)
	killedAt := time.Now()
	f.agent[0].kill()
	st := f.waitFor(t, 1, "Primary by automatic failover", 30*time.Second, func(st admin.Status) bool {
		return st.Role == "Primary" && st.Failover != nil && st.Failover.Record.Primary == "n2"
	})
	t.Logf("n2 Primary in epoch %d (was %d) %v after the kill", st.Failover.Record.Epoch, before, time.Since(killedAt).Round(time.Millisecond))
	if st.Failover.Record.Epoch <= before {
		t.Fatalf("epoch %d after failover, want > %d", st.Failover.Record.Epoch, before)
	}
	if err := <-done; err != nil {
		t.Fatalf("the initiator saw an error across the failover: %v", err)
	}
	// Every acknowledged write is on the new Primary.
	f.verify(t, 1, writes, 0x5a)
	// The witness's metrics name the new Primary and epoch.
	wm := scrape(t, f.wmetrics)
	if wm[`hablock_failover_record_primary{node="w",primary="n2",resource="r0"}`] != 1 ||
		wm[`hablock_role{node="w",resource="r0",role="Witness"}`] != 1 ||
		wm[`hablock_failover_epoch{node="w",resource="r0"}`] < float64(st.Failover.Record.Epoch) {
		t.Errorf("witness metrics after the failover: primary n2 %v, role Witness %v, epoch %v (want 1, 1, >= %d)",
			wm[`hablock_failover_record_primary{node="w",primary="n2",resource="r0"}`], wm[`hablock_role{node="w",resource="r0",role="Witness"}`],
			wm[`hablock_failover_epoch{node="w",resource="r0"}`], st.Failover.Record.Epoch)
	}

	f.start(t, 0)
	st0 := f.waitFor(t, 0, "back as an UpToDate Secondary", 60*time.Second, func(st admin.Status) bool {
		return st.Role == "Secondary" && inSync(st)
	})
	if st0.Failover.Record.Primary != "n2" {
		t.Fatalf("n1 record after return: %+v", st0.Failover.Record)
	}
	f.waitFor(t, 1, "in sync with n1 readmitted", 30*time.Second, func(st admin.Status) bool {
		return inSync(st) && len(st.Failover.Record.UpToDate) == 2
	})
	if r := st0.Counters.ResyncBytes; r == 0 || r >= uint64(f.size) {
		t.Errorf("n1 resynced %d bytes: want a bitmap resync (more than 0, less than the %d-byte volume)", r, f.size)
	}
	f.stopBoth(t)
	f.assertFilesEqual(t)
}

// TestSwitchoverUnderLoad hands the role to the Secondary with `hablock
// switchover` while an initiator writes: no error, the roles swap, no
// write lost, both disks equal.
func TestSwitchoverUnderLoad(t *testing.T) {
	const writes = 640
	f := newFailoverTrio(t, "64M", 64<<20)
	f.establish(t)
	done := f.load(writes, 0xa5)
	f.waitWrites(t, 0, 100)
	start := time.Now()
	f.admin(t, 0, "switchover")
	t.Logf("switchover returned after %v", time.Since(start).Round(time.Millisecond))
	if err := <-done; err != nil {
		t.Fatalf("the initiator saw an error across the switchover: %v", err)
	}
	st := f.waitFor(t, 1, "Primary after switchover", 10*time.Second, func(st admin.Status) bool { return st.Role == "Primary" })
	if st.Failover.Record.Primary != "n2" || len(st.Failover.Record.UpToDate) != 2 {
		t.Fatalf("record after switchover: %+v", st.Failover.Record)
	}
	f.waitFor(t, 0, "Secondary in sync", 30*time.Second, func(st admin.Status) bool { return st.Role == "Secondary" && inSync(st) })
	f.verify(t, 1, writes, 0xa5)
	f.stopBoth(t)
	f.assertFilesEqual(t)
}

package main

// Real-process scenarios for the operator's recovery commands and a
// Primary crash: `hablock connect --discard-my-data` after a split brain,
// `hablock invalidate`, and a SIGKILLed Primary that comes back Secondary
// of the node promoted in its place. Same harness as
// agent_scenarios_test.go: two `hablock agent` processes on 127.0.0.1,
// written through the Primary's iSCSI target with qemu-io.

import (
	"context"
	"fmt"
	"os/exec"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hablock/hablock/internal/admin"
)

// adminErr runs an admin command that must fail; it returns stderr.
func (p *scenarioPair) adminErr(t *testing.T, i int, cmd string, args ...string) string {
	t.Helper()
	code, out, errOut := hablock(append([]string{cmd, "--socket", p.sock[i]}, args...)...)
	if code == 0 {
		t.Fatalf("%s on %s %v succeeded, want a refusal\n%s", cmd, scenarioNodes[i], args, out)
	}
	return errOut
}

func standAlone(st admin.Status) bool { return st.Connection == "StandAlone" }

// TestScenarioSplitBrainDiscardMyData: both nodes Primary while
// disconnected and both written; with the default policy (disconnect) the
// reconnect leaves both StandAlone. Manual recovery as in DRBD: the victim
// n2 is demoted and connects with --discard-my-data, the survivor n1
// connects: n2 resyncs from n1 by bitmap (only what either side changed),
// the files end up identical and only n2's changes are lost.
func TestScenarioSplitBrainDiscardMyData(t *testing.T) {
	needScenarioTools(t)
	const size = 16 << 20
	p := newScenarioPair(t, "16M", size, "")
	p.splitBrain(t, true, 1) // n1: 1 MiB of 0xa1 at 1M; n2: 0xb2 at 1M and 8M

	// On a Primary the flag is refused, with what to do.
	if msg := p.adminErr(t, 1, "connect", "--discard-my-data"); !strings.Contains(msg, "hablock secondary") {
		t.Errorf("connect --discard-my-data on a Primary: %q does not say to demote first", msg)
	}

	// Default policies: the split brain is detected, both stay StandAlone
	// with their data.
	p.admin(t, 0, "secondary")
	p.admin(t, 1, "secondary")
	p.admin(t, 0, "connect")
	p.admin(t, 1, "connect")
	var oos [2]uint64
	for i := range 2 {
		st := p.waitFor(t, i, "StandAlone after the split brain", 30*time.Second, func(st admin.Status) bool {
			return standAlone(st) && strings.Contains(strings.ToLower(st.LastError), "split brain")
		})
		oos[i] = st.OutOfSyncBytes
		if !st.SplitBrain {
			t.Errorf("%s: status --json has no split_brain: true after a split brain", scenarioNodes[i])
		}
		t.Logf("%s: connection %s, out of sync %d, last_error %q", scenarioNodes[i], st.Connection, st.OutOfSyncBytes, st.LastError)
	}
	out := p.admin(t, 1, "status")
	t.Logf("n2 status after the split brain:\n%s", out)
	if !strings.Contains(out, "split-brain:") || !strings.Contains(out, "--discard-my-data") {
		t.Errorf("status after a split brain does not say so with the way out:\n%s", out)
	}

	// Manual recovery: n2 is the victim.
	before := p.status(t, 0).Counters.ResyncBytes
	logMark := len(p.agent[1].logText())
	p.admin(t, 1, "connect", "--discard-my-data")
	p.admin(t, 0, "connect")
	for i := range 2 {
		p.waitFor(t, i, "in sync after the manual recovery", 30*time.Second, inSync)
	}
	moved := p.status(t, 0).Counters.ResyncBytes - before
	t.Logf("discard-my-data: n1 sent %d bytes (n1 had %d out of sync, n2 %d)", moved, oos[0], oos[1])
	// Both changed 1 MiB at 1M, n2 also 1 MiB at 8M: 2 MiB differ.
	if moved == 0 || moved > 2<<20 {
		t.Errorf("the resync moved %d bytes; want > 0 and <= the 2 MiB either side changed (bitmap based, not full)", moved)
	}
	lg := p.agent[1].logText()[logMark:]
	if !strings.Contains(lg, "discard-my-data cleared") {
		t.Errorf("n2 did not clear discard-my-data once connected:\n%s", lg)
	}
	if strings.Contains(lg, "FullSync") {
		t.Errorf("the recovery ran a full sync")
	}
	p.stopBoth(t)
	p.assertFilesEqual(t)
	if !holds(t, p.img[1], 1<<20, 1<<20, 0xa1) {
		t.Errorf("n2 does not hold n1's data at 1M")
	}
	if holds(t, p.img[1], 8<<20, 1<<20, 0xb2) {
		t.Errorf("n2 kept its own (discarded) data at 8M")
	}
}

// TestScenarioInvalidate: invalidate is refused while connected and on the
// Primary; on a disconnected Secondary it makes the next connect resync
// the whole volume, repairing even a block corrupted behind the agent's
// back (which a bitmap resync would not touch).
func TestScenarioInvalidate(t *testing.T) {
	needScenarioTools(t)
	const size = 32 << 20
	p := newScenarioPair(t, "32M", size, "")
	p.establish(t)
	p.qemuIO(t, 0, "write -P 0x5a 0 4M", "write -P 0xc3 20M 2M", "flush")
	p.waitFor(t, 0, "in sync", 30*time.Second, inSync)

	if msg := p.adminErr(t, 1, "invalidate"); !strings.Contains(msg, "disconnect first") {
		t.Errorf("invalidate while connected: %q does not say to disconnect first", msg)
	}
	if msg := p.adminErr(t, 0, "invalidate"); !strings.Contains(msg, "hablock secondary") {
		t.Errorf("invalidate on the Primary: %q does not say to demote first", msg)
	}

	p.admin(t, 1, "disconnect")
	p.waitFor(t, 1, "StandAlone", 30*time.Second, standAlone)
	// Corrupt one block behind n2's back: no bitmap knows of it.
	p.overwrite(t, 1, 12<<20, []byte(strings.Repeat("x", 4096)))

	out := p.admin(t, 1, "invalidate")
	st := p.status(t, 1)
	if st.Disk != "Inconsistent" || st.OutOfSyncBytes != size || !strings.Contains(out, "disk:Inconsistent out-of-sync:32.0 MiB") {
		t.Fatalf("after invalidate: disk %s, out of sync %d; want Inconsistent and %d\n%s", st.Disk, st.OutOfSyncBytes, size, out)
	}
	if msg := p.adminErr(t, 1, "primary"); !strings.Contains(msg, "not UpToDate") {
		t.Errorf("primary on an invalidated node: %q", msg)
	}

	before := p.status(t, 0).Counters.ResyncBytes
	p.admin(t, 1, "connect", "--wait", "--timeout", "60s")
	p.waitFor(t, 0, "in sync after the full resync", 60*time.Second, inSync)
	p.waitFor(t, 1, "in sync after the full resync", 30*time.Second, inSync)
	moved := p.status(t, 0).Counters.ResyncBytes - before
	t.Logf("invalidate: the resync moved %d bytes of a %d-byte volume", moved, size)
	if moved != size {
		t.Errorf("the resync after invalidate moved %d bytes; want the whole volume (%d)", moved, size)
	}
	p.stopBoth(t)
	p.assertFilesEqual(t)
}

var alLogRE = regexp.MustCompile(`activity log extents marked out of sync.* extents=(\d+)`)

// TestScenarioKillPrimaryUnderLoad: SIGKILL the Primary while qemu-io
// writes through it, promote the Secondary with `hablock primary`, write
// more there, restart the old Primary: it comes back Secondary (never
// Primary), applies its activity log, and the connect resyncs at most its
// activity-log extents plus the bitmaps, from the new Primary; both
// backing files end up identical.
func TestScenarioKillPrimaryUnderLoad(t *testing.T) {
	needScenarioTools(t)
	const size = 256 << 20
	p := newScenarioPair(t, "256M", size, "")
	p.establish(t)

	// The load: qemu-io runs rewriting an 8 MiB region at 100 MiB in
	// 256 KiB writes until n1 dies (its errors then are expected).
	const loadOff, loadLen, loadIO = 100 << 20, 8 << 20, 256 << 10
	var wg sync.WaitGroup
	runs := 0
	ctx, cancel := context.WithCancel(context.Background())
	wg.Add(1)
	go func() {
		defer wg.Done()
		for pat := byte(1); ctx.Err() == nil; pat++ {
			args := []string{"--image-opts", fmt.Sprintf("driver=iscsi,transport=tcp,portal=%s,target=%s,lun=0", p.iscsi[0], scenarioIQN)}
			for o := int64(loadOff); o < loadOff+loadLen; o += loadIO {
				args = append(args, "-c", fmt.Sprintf("write -P 0x%x %d %d", pat, o, loadIO))
			}
			// Killed with the context: once n1 is gone its initiator
			// would retry the login for a long time.
			out, err := exec.CommandContext(ctx, "qemu-io", args...).CombinedOutput()
			if err != nil || strings.Contains(string(out), "failed") {
				return
			}
			runs++
		}
	}()
	time.Sleep(1500 * time.Millisecond)
	p.agent[0].kill()
	cancel()
	wg.Wait()
	t.Logf("n1 (Primary) killed with SIGKILL after %d complete load runs", runs)

	p.waitFor(t, 1, "disconnected from the killed n1", 30*time.Second, func(st admin.Status) bool {
		return st.Connection != "Connected" && st.Disk == "UpToDate"
	})
	p.admin(t, 1, "primary")
	// n2 writes: 8 x 1 MiB at known offsets.
	var cmds []string
	for k := range 8 {
		cmds = append(cmds, fmt.Sprintf("write -P 0x%x %d %d", 0x60+k, int64(4<<20)+int64(k)*(30<<20), 1<<20))
	}
	p.qemuIO(t, 1, append(cmds, "flush")...)
	n2 := p.status(t, 1)

	// Restart n1 without connecting: it must be Secondary, with its
	// activity log applied to its bitmap.
	p.agent[0] = startAgent(t, "--config", p.conf[0], "--node", "n1", "--no-connect")
	n1 := p.status(t, 0)
	if n1.Role != "Secondary" {
		t.Fatalf("n1 restarted as %s after a crash as Primary; want Secondary", n1.Role)
	}
	m := alLogRE.FindStringSubmatch(p.agent[0].logText())
	if m == nil {
		t.Fatalf("n1 did not apply its activity log after the crash:\n%s", p.agent[0].logText())
	}
	extents, _ := strconv.Atoi(m[1])
	alBytes := uint64(extents) * (4 << 20)
	t.Logf("n1 restarted Secondary: %d activity-log extents (%d bytes), out of sync %d; n2 (new Primary) out of sync %d",
		extents, alBytes, n1.OutOfSyncBytes, n2.OutOfSyncBytes)
	if extents == 0 || n1.OutOfSyncBytes > alBytes {
		t.Errorf("n1 marks %d bytes out of sync for %d activity-log extents", n1.OutOfSyncBytes, extents)
	}
	if n2.OutOfSyncBytes < 8<<20 {
		t.Errorf("n2 marks only %d bytes out of sync after writing 8 MiB alone", n2.OutOfSyncBytes)
	}

	before := n2.Counters.ResyncBytes
	p.admin(t, 0, "connect")
	p.waitFor(t, 1, "in sync after n1's restart", 60*time.Second, inSync)
	st1 := p.waitFor(t, 0, "in sync after its restart", 30*time.Second, inSync)
	if st1.Role != "Secondary" || st1.PeerRole != "Primary" {
		t.Errorf("after the resync n1 is %s with peer %s; want Secondary of the Primary n2", st1.Role, st1.PeerRole)
	}
	moved := p.status(t, 1).Counters.ResyncBytes - before
	bound := alBytes + n2.OutOfSyncBytes
	t.Logf("primary crash: the resync moved %d bytes; bound (AL extents x 4 MiB + n2's bitmap) %d; volume %d", moved, bound, size)
	if moved == 0 || moved > bound {
		t.Errorf("the resync moved %d bytes; want > 0 and <= %d (activity log + bitmap)", moved, bound)
	}
	if strings.Contains(p.agent[0].logText(), "exporting volume") {
		t.Errorf("the restarted n1 exported the volume")
	}
	p.stopBoth(t)
	p.assertFilesEqual(t)
	for k := range 8 {
		if !holds(t, p.img[0], int64(4<<20)+int64(k)*(30<<20), 1<<20, byte(0x60+k)) {
			t.Errorf("n1 lacks n2's write %d", k)
		}
	}
}

// TestScenarioCrashedPrimaryFlagSurvivesCleanStop: a Primary SIGKILLed
// restarts Secondary with its crashed-primary flag; stopped cleanly
// before it ever connected, it must keep the flag (the handshake still
// needs it), so the third start applies the activity log again and the
// connect resyncs the hot extents from it (DRBD rule 40: with the same
// generation on both, the crashed Primary is the source).
func TestScenarioCrashedPrimaryFlagSurvivesCleanStop(t *testing.T) {
	needScenarioTools(t)
	p := newScenarioPair(t, "32M", 32<<20, "")
	p.establish(t)
	p.qemuIO(t, 0, "write -P 0x77 4M 1M", "write -P 0x78 20M 64K", "flush")
	p.waitFor(t, 0, "in sync", 30*time.Second, inSync)
	// Bits cleaned by the initial sync are persisted lazily (every
	// watchInterval); let that happen so only the AL counts below.
	time.Sleep(2 * watchInterval)
	p.agent[0].kill()
	p.waitFor(t, 1, "disconnected from the killed n1", 30*time.Second, func(st admin.Status) bool { return st.Connection != "Connected" })

	for round := 1; round <= 2; round++ {
		p.agent[0] = startAgent(t, "--config", p.conf[0], "--node", "n1", "--no-connect")
		st := p.status(t, 0)
		if st.Role != "Secondary" {
			t.Fatalf("round %d: n1 restarted %s", round, st.Role)
		}
		m := alLogRE.FindStringSubmatch(p.agent[0].logText())
		if m == nil || m[1] != "2" {
			t.Fatalf("round %d: n1 did not apply its 2 hot activity-log extents (crashed-primary flag lost?):\n%s", round, p.agent[0].logText())
		}
		if st.OutOfSyncBytes != 8<<20 {
			t.Errorf("round %d: n1 marks %d bytes out of sync, want the 2 extents (8 MiB)", round, st.OutOfSyncBytes)
		}
		if round == 1 {
			p.agent[0].stop(t) // clean stop before any connect
		}
	}
	before := p.status(t, 0).Counters.ResyncBytes
	p.admin(t, 0, "connect")
	p.waitFor(t, 0, "in sync", 30*time.Second, inSync)
	st := p.waitFor(t, 1, "in sync", 30*time.Second, inSync)
	moved := p.status(t, 0).Counters.ResyncBytes - before
	t.Logf("crashed primary after a clean stop: resync moved %d bytes from n1 (the 2 AL extents)", moved)
	if moved != 8<<20 || st.Role != "Secondary" {
		t.Errorf("resync moved %d bytes from n1 (want the 8 MiB of its 2 extents); n2 is %s", moved, st.Role)
	}
	// Connected once: the flag is gone, a clean restart applies nothing.
	time.Sleep(2 * watchInterval) // the flags are persisted by the agent's poll
	p.agent[0].stop(t)
	p.agent[0] = startAgent(t, "--config", p.conf[0], "--node", "n1", "--no-connect")
	if alLogRE.MatchString(p.agent[0].logText()) {
		t.Errorf("after a connect and a clean stop n1 still applies its activity log:\n%s", p.agent[0].logText())
	}
	p.stopBoth(t)
	p.assertFilesEqual(t)
}

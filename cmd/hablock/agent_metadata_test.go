package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/hablock/hablock/internal/admin"
)

// newFaultPair is a scenario pair whose agents (started later) fail
// every metadata write while the returned file exists.
func newFaultPair(t *testing.T, size string, sizeBytes int64) (*scenarioPair, string) {
	t.Helper()
	needScenarioTools(t)
	fault := filepath.Join(t.TempDir(), "metadata-down")
	t.Setenv("HABLOCK_FAULT_METADATA", fault)
	return newScenarioPair(t, size, sizeBytes, ""), fault
}

// TestScenarioMetadataFailure: the Primary runs without its peer and its
// metadata store stops accepting writes ($HABLOCK_FAULT_METADATA). A
// write through a real initiator that needs new out-of-sync bits must
// fail (EIO in qemu-io, nothing written), never be acknowledged with
// nothing durable saying the peer lacks it; status says so. Once the
// store works again the agent records the bitmap by itself, writes go
// on, and the returning Secondary receives everything, files equal.
func TestScenarioMetadataFailure(t *testing.T) {
	p, fault := newFaultPair(t, "64M", 64<<20)
	p.establish(t)
	p.agent[1].stop(t)
	p.waitFor(t, 0, "degraded", 10*time.Second, func(st admin.Status) bool { return st.Connection != "Connected" })

	// A degraded write: its 4 MiB activity-log extent becomes hot and
	// its bit is recorded.
	p.qemuIO(t, 0, "write -P 0x11 0 4096", "flush")
	if err := os.WriteFile(fault, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	// The same extent (no activity-log write needed), a new bitmap
	// block: the bit cannot be recorded.
	out, err := p.qemuIOErr(0, "write -P 0x22 1048576 4096")
	if err == nil || !strings.Contains(out, "write failed") {
		t.Fatalf("write needing an unrecordable bit: err %v, want qemu-io's write failure\n%s", err, out)
	}
	t.Logf("qemu-io with the metadata store failing: %s", strings.TrimSpace(out))
	if holds(t, p.img[0], 1<<20, 4096, 0x22) {
		t.Fatal("the failed write reached the Primary's disk")
	}
	st := p.status(t, 0)
	if st.Metadata == nil || st.Metadata.UnsavedChunks == 0 || st.Metadata.Failures == 0 {
		t.Fatalf("status metadata %+v, want failures and unsaved chunks", st.Metadata)
	}
	text := p.admin(t, 0, "status")
	if !strings.Contains(text, "metadata: FAILING") {
		t.Fatalf("status does not say the metadata is failing:\n%s", text)
	}
	t.Logf("status while failing:\n%s", text)

	if err := os.Remove(fault); err != nil {
		t.Fatal(err)
	}
	p.waitFor(t, 0, "metadata recovered", 10*time.Second, func(st admin.Status) bool {
		return st.Metadata != nil && st.Metadata.UnsavedChunks == 0
	})
	if text := p.admin(t, 0, "status"); !strings.Contains(text, "metadata: recovered") {
		t.Fatalf("status after recovery does not say so:\n%s", text)
	}
	p.qemuIO(t, 0, "write -P 0x22 1048576 4096", "write -P 0x33 8388608 65536", "flush")

	p.start(t, 1)
	p.waitFor(t, 0, "in sync after the Secondary returned", 30*time.Second, inSync)
	p.waitFor(t, 1, "in sync after the Secondary returned", 30*time.Second, inSync)
	p.stopBoth(t)
	if !holds(t, p.img[1], 1<<20, 4096, 0x22) || !holds(t, p.img[1], 0, 4096, 0x11) || !holds(t, p.img[1], 8<<20, 65536, 0x33) {
		t.Fatal("the returning Secondary lacks a write made while it was away")
	}
	p.assertFilesEqual(t)
}

// TestScenarioForceWithMetadataFailure: `hablock primary --force` while
// the node's metadata store cannot write is refused with the store's
// error and leaves the node as it was (Secondary, its agent serving);
// once the store works the same command makes it Primary and the peer
// is fully synced.
func TestScenarioForceWithMetadataFailure(t *testing.T) {
	p, fault := newFaultPair(t, "32M", 32<<20)
	p.createMD(t)
	p.start(t, 0)
	p.start(t, 1)
	p.waitFor(t, 0, "connected", 10*time.Second, func(st admin.Status) bool { return st.Connection == "Connected" })
	if err := os.WriteFile(fault, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	code, out, errOut := hablock("primary", "--socket", p.sock[0], "--force")
	if code == 0 || !strings.Contains(errOut, "HABLOCK_FAULT_METADATA") {
		t.Fatalf("primary --force with the store failing: exit %d, stderr %q; want a failure naming the store's error\n%s", code, errOut, out)
	}
	t.Logf("refused: %s", strings.TrimSpace(errOut))
	if st := p.status(t, 0); st.Role != "Secondary" || st.Disk != "Inconsistent" {
		t.Fatalf("after the refused force: role %s disk %s, want Secondary Inconsistent (as before)", st.Role, st.Disk)
	}
	if err := os.Remove(fault); err != nil {
		t.Fatal(err)
	}
	p.admin(t, 0, "primary", "--force")
	p.waitFor(t, 0, "in sync", 60*time.Second, inSync)
	p.waitFor(t, 1, "in sync", 30*time.Second, inSync)
	p.stopBoth(t)
	p.assertFilesEqual(t)
}

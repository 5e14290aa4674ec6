package main

import (
	"strings"
	"testing"
	"time"

	"github.com/hablock/hablock/internal/admin"
)

func TestFormatStatus(t *testing.T) {
	st := admin.Status{
		Resource: "r0", Node: "n1", Peer: "n2", Role: "Primary", Disk: "UpToDate",
		PeerRole: "Secondary", PeerDisk: "Inconsistent", Connection: "Connected", Replication: "SyncSource",
		OutOfSyncBytes: 3 << 20, Engine: true,
		Sync: admin.NewProgress(4210, 10000, 100, true, false),
	}
	want := "r0 role:Primary\n" +
		"  disk:UpToDate out-of-sync:3.0 MiB\n" +
		"  n2 connection:Connected role:Secondary\n" +
		"    peer-disk:Inconsistent replication:SyncSource done:42.10% eta:0:58\n"
	if got := formatStatus(st); got != want {
		t.Errorf("got:\n%s\nwant:\n%s", got, want)
	}

	st = admin.Status{Resource: "r0", Peer: "n2", Role: "Secondary", Disk: "UpToDate", PeerRole: "Unknown",
		PeerDisk: "DUnknown", Connection: "Unconnected", Replication: "Off", LastError: "peer gone",
		VerifyResult: &admin.VerifyResult{Finished: time.Date(2026, 11, 22, 6, 0, 0, 0, time.UTC), CheckedBytes: 1 << 30, OutOfSyncBytes: 4096}}
	got := formatStatus(st)
	for _, s := range []string{"(replication engine not running", "n2 connection:Unconnected", "last-verify:2026-11-22T06:00:00Z checked:1.0 GiB out-of-sync:4.0 KiB", "last-error: peer gone"} {
		if !strings.Contains(got, s) {
			t.Errorf("missing %q in:\n%s", s, got)
		}
	}
	if strings.Contains(got, "split-brain") {
		t.Errorf("a plain disconnect reported as split brain:\n%s", got)
	}

	// After a machine restart, before the next connect: said plainly.
	st = admin.Status{Resource: "r0", Node: "n2", Peer: "n1", Role: "Secondary", Disk: "UpToDate", PeerRole: "Unknown",
		PeerDisk: "DUnknown", Connection: "Connecting", Replication: "Off", Engine: true, OutOfSyncBytes: 32 << 20,
		LostCache: true, CrashedPrimary: true}
	got = formatStatus(st)
	for _, s := range []string{"out-of-sync:32.0 MiB", "lost-cache: the machine restarted while this node ran", "crashed-primary: this node went down as Primary"} {
		if !strings.Contains(got, s) {
			t.Errorf("missing %q in:\n%s", s, got)
		}
	}

	// After a split brain: said plainly, with what to run on which node.
	st = admin.Status{Resource: "r0", Node: "n1", Peer: "n2", Role: "Secondary", Disk: "UpToDate", PeerRole: "Unknown",
		PeerDisk: "DUnknown", Connection: "StandAlone", Replication: "Off", Engine: true, OutOfSyncBytes: 1 << 20,
		LastError: "replication: split brain: local A:B:C:D, peer E:B:C:D; resolve manually"}
	got = formatStatus(st)
	for _, s := range []string{
		"n2 connection:StandAlone",
		"last-error: replication: split brain",
		"split-brain: both nodes wrote while apart",
		"keep n1's data: on n2: hablock secondary, then hablock connect --discard-my-data; here: hablock connect",
		"keep n2's data: here: hablock secondary, then hablock connect --discard-my-data; on n2: hablock connect",
	} {
		if !strings.Contains(got, s) {
			t.Errorf("missing %q in:\n%s", s, got)
		}
	}
}

func TestAdminUsageErrors(t *testing.T) {
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"status"}, "--config and --node (or --socket) are required"},
		{[]string{"status", "--socket", "/x.sock", "--node", "n1"}, "either --socket or --config and --node"},
		{[]string{"primary", "--socket", "/x.sock", "--repair"}, "unknown flag: --repair"},
		{[]string{"secondary", "--socket", "/x.sock", "extra"}, `unexpected argument "extra"`},
	} {
		code, _, errOut := hablock(tc.args...)
		if code != 2 || !strings.Contains(errOut, tc.want) {
			t.Errorf("%v: exit %d, stderr %q; want 2 and %q", tc.args, code, errOut, tc.want)
		}
	}
	code, out, _ := hablock("connect", "--help")
	if code != 0 || !strings.Contains(out, "--discard-my-data") || !strings.Contains(out, "Split brain") {
		t.Errorf("connect --help: exit %d\n%s", code, out)
	}
	code, out, _ = hablock("verify", "--help")
	if code != 0 || !strings.Contains(out, "--repair") || !strings.Contains(out, "--wait") || !strings.Contains(out, "Examples:") {
		t.Errorf("verify --help: exit %d\n%s", code, out)
	}
}

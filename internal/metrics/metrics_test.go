package metrics

import (
	"context"
	"io"
	"net/http"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/hablock/hablock/failover"
	"github.com/hablock/hablock/internal/admin"
)

func diskNodeStatus() admin.Status {
	return admin.Status{
		Resource: "r0", Node: "n1", Peer: "n2", Role: "Primary", Disk: "UpToDate", PeerRole: "Secondary", PeerDisk: "Inconsistent",
		Connection: "Connected", Replication: "SyncSource", OutOfSyncBytes: 4096, Engine: true, Size: 1 << 30,
		Sync:     admin.NewProgress(512, 4096, 100, true, false),
		Counters: admin.Counters{Writes: 7, BytesWritten: 28672, BytesSent: 30000, ResyncBytes: 512, LocalErrors: 1},
		Metadata: &admin.MetadataHealth{Failures: 3, UnsavedChunks: 1, LastError: "down"},
		Failover: &failover.Status{Node: "n1", Quorum: true, Record: failover.Record{Epoch: 5, Primary: "n1", UpToDate: []string{"n1"}},
			Members: []failover.MemberStatus{
				{Name: "n2", Serf: "alive", HeartbeatAgeMS: 40, HeartbeatMaxGapMS: 120, Epoch: 5},
				{Name: "w", Witness: true, Serf: "failed", HeartbeatAgeMS: -1, Epoch: 4},
			}},
	}
}

// The exported series are the status snapshot's values, under the
// documented names and labels.
func TestCollectorDiskNode(t *testing.T) {
	st := diskNodeStatus()
	c := NewCollector("r0", "n1", func(context.Context) admin.Status { return st })
	want := `
# HELP hablock_disk_state The local disk state (UpToDate, Inconsistent, Outdated, ...).
# TYPE hablock_disk_state gauge
hablock_disk_state{node="n1",resource="r0",state="UpToDate"} 1
# HELP hablock_failover_heartbeat_age_seconds Age of the member's last heartbeat (absent if never heard).
# TYPE hablock_failover_heartbeat_age_seconds gauge
hablock_failover_heartbeat_age_seconds{member="n2",node="n1",resource="r0"} 0.04
# HELP hablock_failover_member_serf_state The member's serf state (alive, failed, left, unknown): 1.
# TYPE hablock_failover_member_serf_state gauge
hablock_failover_member_serf_state{member="n2",node="n1",resource="r0",state="alive"} 1
hablock_failover_member_serf_state{member="w",node="n1",resource="r0",state="failed"} 1
# HELP hablock_metadata_unsaved_chunks Bitmap chunks the metadata store may lack; writes without the peer fail while non-zero.
# TYPE hablock_metadata_unsaved_chunks gauge
hablock_metadata_unsaved_chunks{node="n1",resource="r0"} 1
# HELP hablock_out_of_sync_bytes Bytes the bitmap marks as differing from the peer.
# TYPE hablock_out_of_sync_bytes gauge
hablock_out_of_sync_bytes{node="n1",resource="r0"} 4096
# HELP hablock_resync_done_bytes Bytes of the current or last resync done.
# TYPE hablock_resync_done_bytes gauge
hablock_resync_done_bytes{node="n1",resource="r0"} 512
# HELP hablock_role This node's role (Primary, Secondary, Witness): 1 for the current one.
# TYPE hablock_role gauge
hablock_role{node="n1",resource="r0",role="Primary"} 1
# HELP hablock_writes_total Write and discard requests served by the engine.
# TYPE hablock_writes_total counter
hablock_writes_total{node="n1",resource="r0"} 7
`
	if err := testutil.CollectAndCompare(c, strings.NewReader(want),
		"hablock_disk_state", "hablock_failover_heartbeat_age_seconds", "hablock_failover_member_serf_state",
		"hablock_metadata_unsaved_chunks", "hablock_out_of_sync_bytes", "hablock_resync_done_bytes",
		"hablock_role", "hablock_writes_total"); err != nil {
		t.Fatal(err)
	}
	// The collector is consistent with its Describe (a metric whose
	// descriptor it did not announce, or a duplicate, fails here).
	if problems, err := testutil.CollectAndLint(c); err != nil || len(problems) > 0 {
		t.Fatalf("lint: %v %v", err, problems)
	}
	reg := prometheus.NewPedanticRegistry()
	if err := reg.Register(c); err != nil {
		t.Fatal(err)
	}
	if _, err := reg.Gather(); err != nil {
		t.Fatalf("pedantic gather: %v", err)
	}
}

// A witness has no disk: only its role and the failover series.
func TestCollectorWitness(t *testing.T) {
	st := admin.Status{Resource: "r0", Node: "w", Role: "Witness", Failover: &failover.Status{Node: "w", Witness: true, Quorum: true,
		Record: failover.Record{Epoch: 2, Primary: "n1", UpToDate: []string{"n1", "n2"}}}}
	c := NewCollector("r0", "w", func(context.Context) admin.Status { return st })
	if n := testutil.CollectAndCount(c, "hablock_disk_state", "hablock_writes_total", "hablock_out_of_sync_bytes"); n != 0 {
		t.Fatalf("witness exports %d disk series", n)
	}
	if n := testutil.CollectAndCount(c, "hablock_failover_record_up_to_date"); n != 2 {
		t.Fatalf("witness exports %d up-to-date members, want 2", n)
	}
	want := "# HELP hablock_failover_epoch Epoch of the quorum record this node holds.\n" +
		"# TYPE hablock_failover_epoch gauge\n" +
		`hablock_failover_epoch{node="w",resource="r0"} 2` + "\n"
	if err := testutil.CollectAndCompare(c, strings.NewReader(want), "hablock_failover_epoch"); err != nil {
		t.Fatal(err)
	}
	if n := testutil.CollectAndCount(c, "hablock_role"); n != 1 {
		t.Fatalf("witness exports %d role series, want 1 (Witness)", n)
	}
}

// Listen serves the text format on /metrics over real TCP, with the Go
// runtime's series beside ours, and refuses a bad address clearly.
func TestListen(t *testing.T) {
	st := diskNodeStatus()
	s, err := Listen("127.0.0.1:0", "r0", "n1", func(context.Context) admin.Status { return st }, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	resp, err := http.Get("http://" + s.Addr().String() + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	for _, want := range []string{`hablock_role{node="n1",resource="r0",role="Primary"} 1`, "go_goroutines ", "process_cpu_seconds_total "} {
		if !strings.Contains(string(body), want) {
			t.Errorf("/metrics lacks %q", want)
		}
	}
	if _, err := Listen("no-port", "r0", "n1", nil, nil); err == nil || !strings.Contains(err.Error(), "host:port") {
		t.Errorf("Listen(no-port): %v, want an error naming host:port", err)
	}
}

package main

import (
	"fmt"
	"io"
	"net/http"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/hablock/hablock/internal/admin"
)

// scrape fetches addr's /metrics and returns the value of every sample
// line, keyed by "name{labels}" as printed.
func scrape(t *testing.T, addr string) map[string]float64 {
	t.Helper()
	resp, err := http.Get("http://" + addr + "/metrics")
	if err != nil {
		t.Fatalf("scrape %s: %v", addr, err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil || resp.StatusCode != http.StatusOK {
		t.Fatalf("scrape %s: status %d, %v", addr, resp.StatusCode, err)
	}
	out := map[string]float64{}
	for _, line := range strings.Split(string(body), "\n") {
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		i := strings.LastIndexByte(line, ' ')
		v, err := strconv.ParseFloat(line[i+1:], 64)
		if err != nil {
			t.Fatalf("scrape %s: bad sample line %q", addr, line)
		}
		out[line[:i]] = v
	}
	return out
}

// series is the key scrape uses for a hablock series of node; extra is
// a label that sorts after resource (role, state), as the text format
// prints labels in order.
func series(name, node, extra string) string {
	if extra != "" {
		extra = "," + extra
	}
	return fmt.Sprintf(`%s{node=%q,resource="r0"%s}`, name, node, extra)
}

// TestAgentMetrics: two real agents with --metrics; a Prometheus scrape
// shows what `hablock status` shows (roles, states, counters, what is out
// of sync once the Secondary is gone), and a bad address is refused.
func TestAgentMetrics(t *testing.T) {
	needScenarioTools(t)
	p := newScenarioPair(t, "64M", 64<<20, "")
	p.createMD(t)
	maddr := [2]string{fmt.Sprintf("127.0.0.1:%d", freePort(t)), fmt.Sprintf("127.0.0.1:%d", freePort(t))}
	for i := range 2 {
		p.agent[i] = startAgent(t, "--config", p.conf[i], "--node", scenarioNodes[i], "--metrics", maddr[i])
	}
	p.admin(t, 0, "primary", "--force")
	p.waitFor(t, 0, "in sync", 60*time.Second, inSync)
	p.waitFor(t, 1, "in sync", 30*time.Second, inSync)
	p.qemuIO(t, 0, "write -P 0x5a 0 1M", "flush")

	m, st := scrape(t, maddr[0]), p.status(t, 0)
	for key, want := range map[string]float64{
		series("hablock_role", "n1", `role="Primary"`):                   1,
		series("hablock_disk_state", "n1", `state="UpToDate"`):           1,
		series("hablock_peer_disk_state", "n1", `state="UpToDate"`):      1,
		series("hablock_connection_state", "n1", `state="Connected"`):    1,
		series("hablock_replication_state", "n1", `state="Established"`): 1,
		series("hablock_out_of_sync_bytes", "n1", ""):                    0,
		series("hablock_volume_size_bytes", "n1", ""):                    64 << 20,
		series("hablock_writes_total", "n1", ""):                         float64(st.Counters.Writes),
		series("hablock_written_bytes_total", "n1", ""):                  float64(st.Counters.BytesWritten),
		series("hablock_metadata_write_failures_total", "n1", ""):        0,
	} {
		if got, ok := m[key]; !ok || got != want {
			t.Errorf("n1 %s = %v (present %v), want %v", key, got, ok, want)
		}
	}
	if st.Counters.BytesWritten < 1<<20 {
		t.Errorf("status counts %d bytes written, want at least the 1 MiB qemu-io wrote", st.Counters.BytesWritten)
	}
	if _, ok := m["go_goroutines"]; !ok {
		t.Error("n1 /metrics lacks the Go runtime's series")
	}
	if got := scrape(t, maddr[1])[series("hablock_role", "n2", `role="Secondary"`)]; got != 1 {
		t.Errorf("n2 hablock_role{role=Secondary} = %v, want 1", got)
	}

	// The Secondary goes; a write makes the Primary track changes.
	p.agent[1].stop(t)
	p.waitFor(t, 0, "degraded", 10*time.Second, func(st admin.Status) bool { return st.Connection != "Connected" })
	p.qemuIO(t, 0, "write -P 0x6b 8M 64k", "flush")
	m, st = scrape(t, maddr[0]), p.status(t, 0)
	if got := m[series("hablock_out_of_sync_bytes", "n1", "")]; got != float64(st.OutOfSyncBytes) || got < 64<<10 {
		t.Errorf("degraded: hablock_out_of_sync_bytes = %v, status says %d, want at least 64 KiB", got, st.OutOfSyncBytes)
	}
	if got := m[series("hablock_connection_state", "n1", `state="Connected"`)]; got != 0 {
		t.Error("degraded: still exports connection_state Connected")
	}
	conn := regexp.MustCompile(`^hablock_connection_state\{.*state="([A-Za-z]+)"\}$`)
	seen := ""
	for k := range m {
		if s := conn.FindStringSubmatch(k); s != nil {
			seen += s[1]
		}
	}
	if seen != st.Connection {
		t.Errorf("degraded: connection_state series %q, status says %q", seen, st.Connection)
	}

	code, _, errOut := hablock("agent", "--config", p.conf[1], "--node", "n2", "--metrics", "nowhere")
	if code != 2 || !strings.Contains(errOut, "host:port") {
		t.Errorf("agent --metrics nowhere: exit %d, stderr %q; want 2 and a message naming host:port", code, errOut)
	}
}

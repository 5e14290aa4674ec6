package main

import (
	"bufio"
	"encoding/json"
	"strings"
	"testing"
	"time"

	"github.com/hablock/hablock/internal/admin"
)

// TestAgentEvents: `hablock events` on real agents shows the state
// changes of bringing a pair up (n1 Secondary -> Primary, n2's disk
// Inconsistent -> UpToDate after the initial sync), numbered without
// gaps; `hablock events --follow` in a separate process prints a
// disconnect as it happens.
func TestAgentEvents(t *testing.T) {
	needScenarioTools(t)
	p := newScenarioPair(t, "32M", 32<<20, "")
	p.establish(t)

	var evs []admin.Event
	for _, line := range strings.Split(strings.TrimSpace(p.admin(t, 1, "events", "--json")), "\n") {
		var e admin.Event
		if err := json.Unmarshal([]byte(line), &e); err != nil {
			t.Fatalf("events --json line %q: %v", line, err)
		}
		evs = append(evs, e)
	}
	has := func(evs []admin.Event, kind, from, to string) bool {
		for _, e := range evs {
			if e.Kind == kind && e.From == from && e.To == to {
				return true
			}
		}
		return false
	}
	for i, e := range evs {
		if e.Seq != uint64(i+1) {
			t.Fatalf("n2 event %d has seq %d: numbering has a gap\n%+v", i, e.Seq, evs)
		}
	}
	if len(evs) == 0 || evs[0].Kind != "start" {
		t.Errorf("n2's first event is not the agent's start: %+v", evs)
	}
	if !has(evs, "disk", "Inconsistent", "UpToDate") || !has(evs, "peer-role", "Unknown", "Primary") || !has(evs, "connection", "Connecting", "Connected") {
		t.Errorf("n2 events lack the initial sync's transitions:\n%s", p.admin(t, 1, "events"))
	}
	text := p.admin(t, 0, "events")
	if !strings.Contains(text, "replication role: Secondary -> Primary (promote)") {
		t.Errorf("n1 events lack the promotion:\n%s", text)
	}
	t.Logf("n1 events:\n%s", text)

	// Follow in a separate process, then disconnect.
	cmd := hablockCmd(t, "events", "--socket", p.sock[0], "--follow")
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { cmd.Process.Kill(); cmd.Wait() }()
	lines := make(chan string, 256)
	go func() {
		sc := bufio.NewScanner(out)
		for sc.Scan() {
			lines <- sc.Text()
		}
		close(lines)
	}()
	kept := strings.Count(text, "\n")
	for range kept { // the kept events come first
		select {
		case <-lines:
		case <-time.After(10 * time.Second):
			t.Fatal("events --follow did not print the kept events")
		}
	}
	p.admin(t, 0, "disconnect")
	deadline := time.After(15 * time.Second)
	for {
		select {
		case l, ok := <-lines:
			if !ok {
				t.Fatal("events --follow exited")
			}
			if strings.Contains(l, "connection: Connected -> ") {
				t.Logf("followed: %s", l)
				return
			}
		case <-deadline:
			t.Fatal("events --follow printed no connection change within 15 s of the disconnect")
		}
	}
}

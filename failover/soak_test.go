package failover

import (
	"context"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"runtime"
	"strings"
	"testing"
	"time"
)

// TestClusterNoFalseFailover runs a healthy cluster with the shipped
// default timings (heartbeat 50ms, timeout 300ms, vote 1s) while every
// heartbeat is delayed by 20-50 ms of uniform jitter (a user-space delay
// line) and busy loops keep every CPU busy, with the replication link
// modelled down and no write held, so that only heartbeats keep the
// Secondary from taking over and the Primary from suspending: the worst
// case for a false failover. It asserts that nothing happens and logs the
// longest heartbeat gap seen. HABLOCK_SOAK=10m sets the duration (default
// 3s, so that ordinary test runs stay short); HABLOCK_SOAK_HOGS the
// number of busy loops (default one per CPU with HABLOCK_SOAK, none
// without).
func TestClusterNoFalseFailover(t *testing.T) {
	dur := 3 * time.Second
	if v := os.Getenv("HABLOCK_SOAK"); v != "" {
		d, err := time.ParseDuration(v)
		if err != nil {
			t.Fatalf("HABLOCK_SOAK=%q: %v", v, err)
		}
		dur = d
	}
	c := newClusterWith(t, func(cfg *Config) {
		cfg.HeartbeatInterval, cfg.HeartbeatTimeout, cfg.VoteTimeout = 50*time.Millisecond, 300*time.Millisecond, time.Second
	}, func(m *Manager) {
		m.delay = func(from, to string) time.Duration { return 20*time.Millisecond + rand.N(30*time.Millisecond) }
	})
	c.bootstrap()
	before := c.status("w").Record
	// Busy loops: one process per CPU, each an infinite shell loop
	// (HABLOCK_SOAK_HOGS=0: none, when the machine is busy anyway).
	// Ordinary runs (no HABLOCK_SOAK) add no busy loops: under -race on
	// a shared 2-CPU machine, a starved heartbeat goroutine of one node
	// in this single test process is a real silence, not a false one.
	hogs := 0
	if os.Getenv("HABLOCK_SOAK") != "" {
		hogs = runtime.NumCPU()
	}
	if v := os.Getenv("HABLOCK_SOAK_HOGS"); v != "" {
		fmt.Sscan(v, &hogs)
	}
	loadavg := func() string { b, _ := os.ReadFile("/proc/loadavg"); return strings.TrimSpace(string(b)) }
	t.Logf("soak %v with %d busy loops; load average at start: %s", dur, hogs, loadavg())
	defer func() { t.Logf("load average at the end: %s", loadavg()) }()
	for range hogs {
		hog := exec.Command("sh", "-c", "while :; do :; done")
		if err := hog.Start(); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { hog.Process.Kill(); hog.Wait() })
	}
	c.setLinkHeld(false, false)
	mark := len(c.log.snapshot())
	ctx, cancel := context.WithTimeout(context.Background(), dur)
	defer cancel()
	<-ctx.Done()
	for _, o := range c.log.snapshot()[mark:] {
		t.Errorf("false failover action under delay and load: %+v", o)
	}
	if r := c.status("w").Record; !r.Equal(before) {
		t.Errorf("record changed: %v -> %v", before, r)
	}
	for _, n := range []string{"n1", "n2", "w"} {
		st := c.status(n)
		t.Logf("soak %v: %s stalled itself %d times, longest %d ms", dur, n, st.Stalls, st.MaxStallMS)
		for _, m := range st.Members {
			t.Logf("soak %v: at %s, longest heartbeat gap from %s: %d ms (timeout 300 ms)", dur, n, m.Name, m.HeartbeatMaxGapMS)
		}
	}
}

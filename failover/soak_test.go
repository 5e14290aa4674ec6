package failover

import (
	"context"
	"math/rand/v2"
	"os"
	"os/exec"
	"runtime"
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
// 3s, so that ordinary test runs stay short).
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
	// Busy loops: one process per CPU, each an infinite shell loop.
	for range runtime.NumCPU() {
		hog := exec.Command("sh", "-c", "while :; do :; done")
		if err := hog.Start(); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { hog.Process.Kill(); hog.Wait() })
	}
	c.setLink(false)
	c.local["n1"].set(func(f *Facts) { f.Held = false })
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
		for _, m := range c.status(n).Members {
			t.Logf("soak %v: at %s, longest heartbeat gap from %s: %d ms (timeout 300 ms)", dur, n, m.Name, m.HeartbeatMaxGapMS)
		}
	}
}

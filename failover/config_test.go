package failover

import (
	"testing"
	"time"

	"github.com/hablock/hablock/internal/config"
)

func TestConfigFor(t *testing.T) {
	res, err := config.Load("../examples/hablock.conf")
	if err != nil {
		t.Fatal(err)
	}
	c, err := ConfigFor(res, "w")
	if err != nil {
		t.Fatal(err)
	}
	if len(c.Members) != 3 || c.Members[2].Name != "w" || !c.Members[2].Witness ||
		c.Members[0].Control != "10.250.0.1:7791" || c.Members[0].Gossip != "10.250.0.1:7790" {
		t.Errorf("members %+v", c.Members)
	}
	if c.HeartbeatInterval != 50*time.Millisecond || c.HeartbeatTimeout != 300*time.Millisecond || c.Serf.ProbeInterval != 200*time.Millisecond ||
		c.Serf.SuspicionMult != 3 || c.Serf.ReconnectInterval != time.Second {
		t.Errorf("timings %+v", c)
	}
	if c.peerOf("n1") != "n2" || c.peerOf("w") != "" || c.witness() != "w" {
		t.Error("peerOf/witness")
	}
	if _, err := ConfigFor(res, "n9"); err == nil {
		t.Error("unknown node accepted")
	}
	bad := c
	bad.HeartbeatTimeout = 100 * time.Millisecond
	if bad.Validate() == nil {
		t.Error("timeout below 3 x interval accepted")
	}
	bad = c
	bad.AutoFailback = "w"
	if bad.Validate() == nil {
		t.Error("failback to the witness accepted")
	}
}

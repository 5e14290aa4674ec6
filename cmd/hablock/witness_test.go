package main

import (
	"context"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/hablock/hablock/failover"
)

// TestWitnessAgent: create-md and agent for the witness node: its
// metadata has no volume, it serves status (and the failover status) on
// its admin socket, refuses disk commands, and stops on SIGTERM.
func TestWitnessAgent(t *testing.T) {
	dir, err := os.MkdirTemp("", "fo-witness-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	conf := fmt.Sprintf(`resource r0 {
    size 16M
    node n1 { address 127.0.0.1:24900 ; backing %[1]s/n1.img ; meta-dir %[1]s/n1-meta ; admin %[1]s/n1.sock }
    node n2 { address 127.0.0.1:24910 ; backing %[1]s/n2.img ; meta-dir %[1]s/n2-meta ; admin %[1]s/n2.sock }
    witness w { address 127.0.0.1:24920 ; meta-dir %[1]s/w-meta ; admin %[1]s/w.sock }
}
`, dir)
	path := filepath.Join(dir, "r0.conf")
	if err := os.WriteFile(path, []byte(conf), 0o644); err != nil {
		t.Fatal(err)
	}
	if code, _, errOut := hablock("agent", "--config", path, "--node", "w"); code == 0 || !strings.Contains(errOut, "create-md") {
		t.Errorf("agent without metadata: exit %d, %s", code, errOut)
	}
	if code, out, errOut := hablock("create-md", "--config", path, "--node", "w"); code != 0 || !strings.Contains(out, "witness metadata") {
		t.Fatalf("create-md w: exit %d\n%s%s", code, out, errOut)
	}
	if code, _, errOut := hablock("create-md", "--config", path, "--node", "w"); code == 0 || !strings.Contains(errOut, "--force") {
		t.Errorf("second create-md w: exit %d, %s", code, errOut)
	}
	if code, _, errOut := hablock("create-md", "--config", path, "--node", "w", "--uuid", "3f2a0000-0000-0000-0000-000000000001"); code != 2 {
		t.Errorf("create-md w --uuid: exit %d, %s", code, errOut)
	}
	p := startAgent(t, "--config", path, "--node", "w")
	code, out, errOut := hablock("status", "--config", path, "--node", "w", "--json")
	if code != 0 || !strings.Contains(out, `"role": "Witness"`) {
		t.Errorf("status: exit %d\n%s%s", code, out, errOut)
	}
	if code, _, errOut := hablock("primary", "--config", path, "--node", "w"); code == 0 || !strings.Contains(errOut, "witness") {
		t.Errorf("primary on the witness: exit %d, %s", code, errOut)
	}
	hc := &http.Client{Transport: &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
		var d net.Dialer
		return d.DialContext(ctx, "unix", filepath.Join(dir, "w.sock"))
	}}}
	resp, err := hc.Get("http://w/v1/failover")
	if err != nil {
		t.Fatal(err)
	}
	var st failover.Status
	err = json.NewDecoder(resp.Body).Decode(&st)
	resp.Body.Close()
	if err != nil || st.Node != "w" || !st.Witness || len(st.Members) != 2 || st.Record.Epoch != 0 {
		t.Errorf("failover status %+v, %v", st, err)
	}
	p.cmd.Process.Signal(os.Interrupt)
	<-p.exited
	if p.err != nil {
		t.Errorf("witness exit: %v\n%s", p.err, p.logText())
	}
}

package main

import (
	"context"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"time"

	"github.com/hablock/hablock/benchmarks/internal/bench"
)

const iqnPrefix = "iqn.2026-01.io.hablock.bench:"

// config is one thing qemu-img writes to: hablock export or the Primary of
// a replicated pair.
type config interface {
	name() string
	describe() string
	port() int
	iqn() string
	// serving is the process whose iSCSI target qemu-img talks to.
	serving() *bench.Server
	// secondary is the replicated configuration's other agent (nil
	// when there is none).
	secondary() *bench.Server
	// health is "" when the configuration can be measured, else why not.
	health(ctx context.Context) string
	// dead is "" while every process runs, else which one died and how.
	dead() string
	stop()
}

// ---- standalone: hablock export ----

type standalone struct {
	bin, dir, file string
	size           int64
	p              int
	srv            *bench.Server
}

func (s *standalone) name() string { return "standalone" }
func (s *standalone) describe() string {
	return fmt.Sprintf("hablock export --backing FILE --size %d --listen 127.0.0.1:%d --iqn %s --lun 0", s.size, s.p, s.iqn())
}
func (s *standalone) port() int                     { return s.p }
func (s *standalone) iqn() string                   { return iqnPrefix + "standalone" }
func (s *standalone) serving() *bench.Server        { return s.srv }
func (s *standalone) secondary() *bench.Server      { return nil }
func (s *standalone) health(context.Context) string { return "" }
func (s *standalone) dead() string                  { return deadOf(s.srv) }
func (s *standalone) stop() {
	if s.srv != nil {
		s.srv.Stop(7 * time.Second)
	}
}

func (s *standalone) start(ctx context.Context) error {
	var err error
	if s.p, err = bench.FreeLoopbackPort(); err != nil {
		return err
	}
	s.srv, err = bench.StartServer("hablock export", filepath.Join(s.dir, "export.log"), []string{s.bin, "export",
		"--backing", s.file, "--size", strconv.FormatInt(s.size, 10),
		"--listen", fmt.Sprintf("127.0.0.1:%d", s.p), "--iqn", s.iqn(), "--lun", "0"}, 0)
	if err != nil {
		return err
	}
	return bench.WaitListening(ctx, s.srv, fmt.Sprintf("127.0.0.1:%d", s.p), 15*time.Second)
}

func deadOf(s *bench.Server) string {
	if s == nil {
		return "not started"
	}
	if done, how := s.Exited(); done {
		return fmt.Sprintf("%s died (%s); log: %s", s.Name(), how, bench.LastLine(s.LogTail(3)))
	}
	return ""
}

// ---- a replicated pair ----

type pair struct {
	bin, dir, res, protocol string
	size                    int64
	iscsiPort               int
	nodePorts               [2]int
	uuid                    string
	agents                  [2]*bench.Server
}

func (p *pair) name() string { return p.protocol }
func (p *pair) describe() string {
	return fmt.Sprintf("resource %s, protocol %s, %d bytes: hablock agent n1 (127.0.0.1:%d, Primary, iSCSI 127.0.0.1:%d %s LUN 0) + n2 (127.0.0.1:%d)",
		p.res, p.protocol, p.size, p.nodePorts[0], p.iscsiPort, p.iqn(), p.nodePorts[1])
}
func (p *pair) port() int                { return p.iscsiPort }
func (p *pair) iqn() string              { return iqnPrefix + p.res }
func (p *pair) serving() *bench.Server   { return p.agents[0] }
func (p *pair) secondary() *bench.Server { return p.agents[1] }
func (p *pair) confPath() string         { return filepath.Join(p.dir, p.res+".conf") }
func (p *pair) backing(i int) string     { return filepath.Join(p.dir, fmt.Sprintf("n%d.img", i+1)) }
func (p *pair) socket(i int) string      { return filepath.Join(p.dir, fmt.Sprintf("n%d.sock", i+1)) }

func (p *pair) dead() string {
	for _, a := range p.agents {
		if d := deadOf(a); d != "" {
			return d
		}
	}
	return ""
}

func (p *pair) stop() {
	for _, a := range p.agents {
		if a != nil {
			a.Stop(8 * time.Second)
		}
	}
}

// resourceFile is the resource file of a pair (both nodes on 127.0.0.1).
func resourceFile(res, protocol string, size int64, iscsiPort int, nodePorts [2]int, dir string) string {
	var b strings.Builder
	fmt.Fprintf(&b, "resource %s {\n    size %d\n    protocol %s\n", res, size, protocol)
	fmt.Fprintf(&b, "    iscsi { iqn %s%s; listen 127.0.0.1:%d }\n", iqnPrefix, res, iscsiPort)
	fmt.Fprintf(&b, "    net { resync-rate unlimited }\n")
	for i := 0; i < 2; i++ {
		n := i + 1
		fmt.Fprintf(&b, "    node n%d { address 127.0.0.1:%d; backing %s; meta-dir %s; admin %s }\n",
			n, nodePorts[i], filepath.Join(dir, fmt.Sprintf("n%d.img", n)),
			filepath.Join(dir, fmt.Sprintf("n%d-meta", n)), filepath.Join(dir, fmt.Sprintf("n%d.sock", n)))
	}
	b.WriteString("}\n")
	return b.String()
}

var uuidRE = regexp.MustCompile(`volume UUID: ([0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12})`)

// parseUUID finds the volume UUID in create-md's output.
func parseUUID(out string) (string, error) {
	m := uuidRE.FindStringSubmatch(out)
	if m == nil {
		return "", fmt.Errorf("no \"volume UUID: ...\" in create-md output: %s", strings.TrimSpace(out))
	}
	return m[1], nil
}

// setup writes the resource file, runs create-md on both nodes and starts
// both agents (n1's backing file must already hold its data).
func (p *pair) setup(ctx context.Context, log func(string, ...any)) error {
	var err error
	if p.iscsiPort, err = bench.FreeLoopbackPort(); err != nil {
		return err
	}
	for i := range p.nodePorts {
		if p.nodePorts[i], err = bench.FreeLoopbackPort(); err != nil {
			return err
		}
	}
	if p.nodePorts[0] == p.nodePorts[1] || p.iscsiPort == p.nodePorts[0] || p.iscsiPort == p.nodePorts[1] {
		return fmt.Errorf("free port collision, try again")
	}
	if err := os.WriteFile(p.confPath(), []byte(resourceFile(p.res, p.protocol, p.size, p.iscsiPort, p.nodePorts, p.dir)), 0o644); err != nil {
		return err
	}
	out, err := bench.RunCmd(ctx, 30*time.Second, p.bin, "create-md", "--config", p.confPath(), "--node", "n1")
	if err != nil {
		return err
	}
	if p.uuid, err = parseUUID(out); err != nil {
		return err
	}
	if _, err := bench.RunCmd(ctx, 30*time.Second, p.bin, "create-md", "--config", p.confPath(), "--node", "n2", "--uuid", p.uuid); err != nil {
		return err
	}
	for i := range p.agents {
		node := fmt.Sprintf("n%d", i+1)
		p.agents[i], err = bench.StartServer("agent "+p.res+"/"+node, filepath.Join(p.dir, node+".log"),
			[]string{p.bin, "agent", "--config", p.confPath(), "--node", node}, 0)
		if err != nil {
			return err
		}
	}
	// Wait for both admin sockets.
	deadline := time.Now().Add(15 * time.Second)
	for i := range p.agents {
		for {
			if _, err := getStatus(ctx, p.socket(i)); err == nil {
				break
			} else if d := p.dead(); d != "" {
				return fmt.Errorf("%s", d)
			} else if time.Now().After(deadline) {
				return fmt.Errorf("admin socket %s not answering: %v", p.socket(i), err)
			}
			time.Sleep(50 * time.Millisecond)
		}
	}
	log("  %s: agents up (uuid %s)", p.res, p.uuid)
	return nil
}

// promote runs "hablock primary --force" on n1.
func (p *pair) promote(ctx context.Context) error {
	_, err := bench.RunCmd(ctx, 60*time.Second, p.bin, "primary", "--socket", p.socket(0), "--force")
	return err
}

func (p *pair) health(ctx context.Context) string {
	if d := p.dead(); d != "" {
		return d
	}
	st, err := getStatus(ctx, p.socket(0))
	if err != nil {
		return "status: " + err.Error()
	}
	return st.unhealthy()
}

// waitHealthy polls n1's status until it is Connected/UpToDate.
func (p *pair) waitHealthy(ctx context.Context, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	for {
		why := p.health(ctx)
		if why == "" {
			return nil
		}
		if ctx.Err() != nil {
			return ctx.Err()
		}
		if p.dead() != "" || time.Now().After(deadline) {
			return fmt.Errorf("%s not Connected/UpToDate after %v: %s", p.res, timeout, why)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// ---- the admin socket ----

// status is the part of GET /v1/status (hablock status --json) used here.
type status struct {
	Role        string `json:"role"`
	Disk        string `json:"disk"`
	PeerRole    string `json:"peer_role"`
	PeerDisk    string `json:"peer_disk"`
	Connection  string `json:"connection"`
	Replication string `json:"replication"`
	OutOfSync   int64  `json:"out_of_sync_bytes"`
	Sync        *struct {
		Done    int64   `json:"done_bytes"`
		Total   int64   `json:"total_bytes"`
		Rate    float64 `json:"rate_bytes_per_sec"`
		Running bool    `json:"running"`
	} `json:"sync"`
	LastError string `json:"last_error"`
}

// unhealthy is "" for a Primary Connected to an UpToDate peer with nothing
// out of sync, else the status in one line.
func (s status) unhealthy() string {
	if s.Role == "Primary" && s.Connection == "Connected" && s.Disk == "UpToDate" && s.PeerDisk == "UpToDate" && s.OutOfSync == 0 {
		return ""
	}
	return s.String()
}

func (s status) String() string {
	str := fmt.Sprintf("role:%s disk:%s connection:%s peer-role:%s peer-disk:%s replication:%s out-of-sync:%d",
		s.Role, s.Disk, s.Connection, s.PeerRole, s.PeerDisk, s.Replication, s.OutOfSync)
	if s.LastError != "" {
		str += " last-error: " + s.LastError
	}
	return str
}

// syncing reports whether s shows a resync under way.
func (s status) syncing() bool {
	return s.Replication == "SyncSource" || (s.Sync != nil && s.Sync.Running)
}

func getStatus(ctx context.Context, socket string) (status, error) {
	var st status
	c := http.Client{
		Timeout: 5 * time.Second,
		Transport: &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "unix", socket)
		}},
	}
	req, err := http.NewRequestWithContext(ctx, "GET", "http://hablock/v1/status", nil)
	if err != nil {
		return st, err
	}
	resp, err := c.Do(req)
	if err != nil {
		return st, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return st, fmt.Errorf("GET /v1/status: %s", resp.Status)
	}
	err = json.NewDecoder(resp.Body).Decode(&st)
	return st, err
}

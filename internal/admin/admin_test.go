package admin

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"
)

// fakeNode is an in-memory Node: a tiny state machine with the rules the
// tests need.
type fakeNode struct {
	mu     sync.Mutex
	st     Status
	calls  []string
	failOn map[string]error
}

func newFakeNode() *fakeNode {
	return &fakeNode{st: Status{
		Resource: "r0", Node: "n1", Peer: "n2", Role: "Secondary", Disk: "UpToDate",
		PeerRole: "Unknown", PeerDisk: "DUnknown", Connection: "StandAlone", Replication: "Off",
		Engine: true,
	}, failOn: map[string]error{}}
}

func (n *fakeNode) call(name string, fn func()) error {
	n.mu.Lock()
	defer n.mu.Unlock()
	n.calls = append(n.calls, name)
	if err := n.failOn[name]; err != nil {
		return err
	}
	if fn != nil {
		fn()
	}
	return nil
}

func (n *fakeNode) Status(context.Context) Status {
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.st
}
func (n *fakeNode) Connect(_ context.Context, discardMyData bool) error {
	return n.call(fmt.Sprintf("connect discard-my-data=%v", discardMyData), func() { n.st.Connection = "Connected"; n.st.Replication = "Established" })
}
func (n *fakeNode) Disconnect(context.Context) error {
	return n.call("disconnect", func() { n.st.Connection = "StandAlone"; n.st.Replication = "Off" })
}
func (n *fakeNode) Primary(_ context.Context, force bool) error {
	return n.call(fmt.Sprintf("primary force=%v", force), func() { n.st.Role = "Primary" })
}
func (n *fakeNode) Secondary(context.Context) error {
	return n.call("secondary", func() { n.st.Role = "Secondary" })
}
func (n *fakeNode) Invalidate(context.Context) error {
	return n.call("invalidate", func() { n.st.Disk = "Inconsistent" })
}
func (n *fakeNode) Verify(_ context.Context, repair bool) error {
	return n.call(fmt.Sprintf("verify repair=%v", repair), func() {
		n.st.Replication = "VerifyS"
		n.st.Verify = NewProgress(0, 1<<20, 0, true, false)
	})
}
func (n *fakeNode) PauseSync(context.Context) error  { return n.call("pause-sync", nil) }
func (n *fakeNode) ResumeSync(context.Context) error { return n.call("resume-sync", nil) }
func (n *fakeNode) Switchover(_ context.Context, to string) error {
	return n.call("switchover to="+to, func() { n.st.Role = "Secondary"; n.st.PeerRole = "Primary" })
}

func (n *fakeNode) lastCall() string {
	n.mu.Lock()
	defer n.mu.Unlock()
	if len(n.calls) == 0 {
		return ""
	}
	return n.calls[len(n.calls)-1]
}

// serve starts a Server for node on a real Unix socket in a temp dir.
func serve(t *testing.T, node Node) (*Client, string) {
	t.Helper()
	path := filepath.Join(t.TempDir(), "a.sock")
	ln, err := Listen(path)
	if err != nil {
		t.Fatal(err)
	}
	srv := NewServer(node, nil)
	done := make(chan error, 1)
	go func() { done <- srv.Serve(ln) }()
	c := NewClient(path)
	t.Cleanup(func() {
		c.Close()
		srv.Close()
		if err := <-done; !errors.Is(err, http.ErrServerClosed) {
			t.Errorf("Serve returned %v", err)
		}
	})
	return c, path
}

func TestStatusAndActions(t *testing.T) {
	node := newFakeNode()
	c, _ := serve(t, node)
	ctx := context.Background()

	st, err := c.Status(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if st.Resource != "r0" || st.Role != "Secondary" || st.Disk != "UpToDate" || st.Connection != "StandAlone" {
		t.Fatalf("status = %+v", st)
	}

	steps := []struct {
		name  string
		do    func() (Status, error)
		call  string
		check func(Status) bool
	}{
		{"connect", func() (Status, error) { return c.Connect(ctx, false) }, "connect discard-my-data=false", func(s Status) bool { return s.Connection == "Connected" }},
		{"connect --discard-my-data", func() (Status, error) { return c.Connect(ctx, true) }, "connect discard-my-data=true", func(s Status) bool { return s.Connection == "Connected" }},
		{"switchover --to n2", func() (Status, error) { return c.Switchover(ctx, "n2") }, "switchover to=n2", func(s Status) bool { return s.PeerRole == "Primary" }},
		{"switchover", func() (Status, error) { return c.Switchover(ctx, "") }, "switchover to=", func(s Status) bool { return s.Role == "Secondary" }},
		{"primary", func() (Status, error) { return c.Primary(ctx, false) }, "primary force=false", func(s Status) bool { return s.Role == "Primary" }},
		{"primary --force", func() (Status, error) { return c.Primary(ctx, true) }, "primary force=true", func(s Status) bool { return s.Role == "Primary" }},
		{"verify", func() (Status, error) { return c.Verify(ctx, false) }, "verify repair=false", func(s Status) bool { return s.Verify != nil && s.Verify.Running }},
		{"verify --repair", func() (Status, error) { return c.Verify(ctx, true) }, "verify repair=true", func(s Status) bool { return s.Replication == "VerifyS" }},
		{"pause-sync", func() (Status, error) { return c.PauseSync(ctx) }, "pause-sync", nil},
		{"resume-sync", func() (Status, error) { return c.ResumeSync(ctx) }, "resume-sync", nil},
		{"secondary", func() (Status, error) { return c.Secondary(ctx) }, "secondary", func(s Status) bool { return s.Role == "Secondary" }},
		{"invalidate", func() (Status, error) { return c.Invalidate(ctx) }, "invalidate", func(s Status) bool { return s.Disk == "Inconsistent" }},
		{"disconnect", func() (Status, error) { return c.Disconnect(ctx) }, "disconnect", func(s Status) bool { return s.Connection == "StandAlone" }},
	}
	for _, s := range steps {
		st, err := s.do()
		if err != nil {
			t.Fatalf("%s: %v", s.name, err)
		}
		if got := node.lastCall(); got != s.call {
			t.Errorf("%s: node saw %q, want %q", s.name, got, s.call)
		}
		if s.check != nil && !s.check(st) {
			t.Errorf("%s: returned status %+v", s.name, st)
		}
	}
}

func TestErrorsMapToStatusAndSentinels(t *testing.T) {
	node := newFakeNode()
	node.failOn["connect discard-my-data=false"] = fmt.Errorf("engine: %w", ErrNotImplemented)
	node.failOn["primary force=false"] = fmt.Errorf("peer n2 is Primary: %w", ErrConflict)
	node.failOn["secondary"] = errors.New("disk on fire")
	c, _ := serve(t, node)
	ctx := context.Background()

	cases := []struct {
		do       func() (Status, error)
		sentinel error
		status   int
		code     string
		msg      string
	}{
		{func() (Status, error) { return c.Connect(ctx, false) }, ErrNotImplemented, 501, CodeNotImplemented, "engine"},
		{func() (Status, error) { return c.Primary(ctx, false) }, ErrConflict, 409, CodeConflict, "peer n2 is Primary"},
		{func() (Status, error) { return c.Secondary(ctx) }, nil, 500, CodeInternal, "disk on fire"},
	}
	for _, tc := range cases {
		_, err := tc.do()
		var e *Error
		if !errors.As(err, &e) {
			t.Fatalf("error %v (%T) is not *Error", err, err)
		}
		if e.HTTPStatus != tc.status || e.Code != tc.code || !strings.Contains(e.Message, tc.msg) {
			t.Errorf("got %d %s %q, want %d %s containing %q", e.HTTPStatus, e.Code, e.Message, tc.status, tc.code, tc.msg)
		}
		if tc.sentinel != nil && !errors.Is(err, tc.sentinel) {
			t.Errorf("%v does not match %v", err, tc.sentinel)
		}
	}
}

func TestBadRequests(t *testing.T) {
	_, path := serve(t, newFakeNode())
	hc := &http.Client{Transport: &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
		return (&net.Dialer{}).DialContext(ctx, "unix", path)
	}}}
	defer hc.CloseIdleConnections()
	cases := []struct {
		method, path string
		status       int
		code         string
	}{
		{"POST", "/v1/status", 405, CodeMethodNotAllowed},
		{"GET", "/v1/primary", 405, CodeMethodNotAllowed},
		{"POST", "/v1/primary?force=maybe", 400, CodeBadRequest},
		{"POST", "/v1/connect?force=1", 400, CodeBadRequest},
		{"POST", "/v1/primary?discard-my-data=1", 400, CodeBadRequest},
		{"POST", "/v1/connect?discard-my-data=perhaps", 400, CodeBadRequest},
		{"GET", "/v1/nothing", 404, CodeNotFound},
	}
	for _, tc := range cases {
		req, _ := http.NewRequest(tc.method, "http://x"+tc.path, nil)
		resp, err := hc.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		var e Error
		decodeErr := jsonDecode(resp, &e)
		if resp.StatusCode != tc.status || decodeErr != nil || e.Code != tc.code || e.Message == "" {
			t.Errorf("%s %s: %d %+v (decode %v), want %d %s", tc.method, tc.path, resp.StatusCode, e, decodeErr, tc.status, tc.code)
		}
	}
}

func TestNoAgent(t *testing.T) {
	path := filepath.Join(t.TempDir(), "none.sock")
	c := NewClient(path)
	defer c.Close()
	_, err := c.Status(context.Background())
	if !errors.Is(err, ErrNoAgent) || !strings.Contains(err.Error(), path) {
		t.Fatalf("err = %v, want ErrNoAgent naming %s", err, path)
	}
}

func TestListenSocketHandling(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "sub", "a.sock")
	ln, err := Listen(path)
	if err != nil {
		t.Fatal(err)
	}
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	if perm := fi.Mode().Perm(); perm != 0o600 {
		t.Errorf("socket mode %o, want 600", perm)
	}
	// A live socket is not stolen.
	if _, err := Listen(path); !errors.Is(err, ErrInUse) {
		t.Errorf("second Listen: %v, want ErrInUse", err)
	}
	ln.Close()

	// A stale socket (its listener gone without unlinking) is replaced.
	stale, err := net.ListenUnix("unix", &net.UnixAddr{Name: path, Net: "unix"})
	if err != nil {
		t.Fatal(err)
	}
	stale.SetUnlinkOnClose(false)
	stale.Close()
	if _, err := os.Lstat(path); err != nil {
		t.Fatalf("stale socket should still exist: %v", err)
	}
	ln, err = Listen(path)
	if err != nil {
		t.Fatalf("Listen over a stale socket: %v", err)
	}
	ln.Close()
	if _, err := os.Lstat(path); !os.IsNotExist(err) {
		t.Errorf("socket not removed on close: %v", err)
	}

	// A regular file is never removed.
	file := filepath.Join(dir, "file")
	os.WriteFile(file, []byte("x"), 0o600)
	if _, err := Listen(file); err == nil || !strings.Contains(err.Error(), "not a socket") {
		t.Errorf("Listen on a regular file: %v", err)
	}
	if _, err := Listen("rel.sock"); err == nil {
		t.Error("relative path accepted")
	}
}

func TestProgress(t *testing.T) {
	p := NewProgress(25, 100, 5, true, false)
	if p.Percent() != 25 || p.ETA() != 15*time.Second {
		t.Errorf("percent %v eta %v", p.Percent(), p.ETA())
	}
	if NewProgress(1, 100, 0, true, false).ETA() != -1 {
		t.Error("unknown rate should give unknown ETA")
	}
	for d, want := range map[time.Duration]string{-1: "?", 0: "0:00", 72 * time.Second: "1:12", 3723 * time.Second: "1:02:03"} {
		if got := FormatETA(d); got != want {
			t.Errorf("FormatETA(%v) = %q, want %q", d, got, want)
		}
	}
}

func jsonDecode(resp *http.Response, v any) error {
	defer resp.Body.Close()
	return json.NewDecoder(resp.Body).Decode(v)
}

func TestStatusSplitBrainDerived(t *testing.T) {
	node := newFakeNode()
	c, _ := serve(t, node)
	ctx := context.Background()
	st, err := c.Status(ctx)
	if err != nil || st.SplitBrain {
		t.Fatalf("plain StandAlone: split_brain %v, err %v", st.SplitBrain, err)
	}
	node.mu.Lock()
	node.st.LastError = "replication: split brain: local A, peer B; resolve manually"
	node.mu.Unlock()
	if st, err = c.Status(ctx); err != nil || !st.SplitBrain {
		t.Fatalf("after a split brain: split_brain %v, err %v", st.SplitBrain, err)
	}
	// An action's answer carries it too; once connected it is gone.
	if st, err = c.Connect(ctx, true); err != nil || st.SplitBrain {
		t.Fatalf("connected: split_brain %v, err %v", st.SplitBrain, err)
	}
}

package iscsi

import (
	"bytes"
	"context"
	"errors"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/hablock/hablock/blockdev"
	"github.com/hablock/hablock/iscsi/scsi"
)

const (
	testIQN  = "iqn.2026-11.test:hablock"
	testInit = "iqn.2026-11.test:init"
)

// testServer is a Server on 127.0.0.1:0 exporting one in-memory LUN.
type testServer struct {
	srv  *Server
	addr string
	dev  *blockdev.Memory
	tgt  *scsi.Target
	rec  *recBackend
	errc chan error
}

// recBackend wraps the SCSI core and records NexusLost calls.
type recBackend struct {
	*scsi.Target
	lost chan scsi.Nexus
}

func (r *recBackend) NexusLost(n scsi.Nexus) {
	r.Target.NexusLost(n)
	select {
	case r.lost <- n:
	default:
	}
}

func testLogger(t testing.TB) *slog.Logger {
	if os.Getenv("ISCSI_TEST_LOG") != "" {
		return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	return slog.New(slog.NewTextHandler(testWriter{t}, &slog.HandlerOptions{Level: slog.LevelWarn}))
}

type testWriter struct{ t testing.TB }

func (w testWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimRight(string(p), "\n"))
	return len(p), nil
}

func startServer(t testing.TB, mod func(*Config)) *testServer {
	t.Helper()
	cfg := DefaultConfig()
	cfg.Logger = testLogger(t)
	if mod != nil {
		mod(&cfg)
	}
	srv, err := NewServer(cfg)
	if err != nil {
		t.Fatal(err)
	}
	dev := blockdev.NewMemory(64 << 20)
	tgt := scsi.NewTarget(testIQN, cfg.Logger)
	if err := tgt.AddLUN(0, scsi.LUConfig{Device: dev, BlockSize: 512, WriteCache: true}); err != nil {
		t.Fatal(err)
	}
	rec := &recBackend{Target: tgt, lost: make(chan scsi.Nexus, 64)}
	if err := srv.AddTarget(testIQN, rec); err != nil {
		t.Fatal(err)
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ts := &testServer{srv: srv, addr: l.Addr().String(), dev: dev, tgt: tgt, rec: rec, errc: make(chan error, 1)}
	go func() { ts.errc <- srv.Serve(l) }()
	t.Cleanup(func() {
		srv.Close()
		if err := <-ts.errc; !errors.Is(err, ErrServerClosed) {
			t.Errorf("Serve returned %v, want ErrServerClosed", err)
		}
	})
	return ts
}

func needBinary(t *testing.T, name string) string {
	t.Helper()
	p, err := exec.LookPath(name)
	if err != nil {
		t.Skipf("%s not installed (apt-get install libiscsi-bin qemu-utils qemu-block-extra); skipping real-initiator test", name)
	}
	return p
}

func runCmd(t *testing.T, timeout time.Duration, name string, args ...string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, name, args...)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Run(); err != nil {
		t.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, out.String())
	}
	return out.String()
}

func TestRealInitiatorDiscovery(t *testing.T) {
	bin := needBinary(t, "iscsi-ls")
	ts := startServer(t, nil)
	out := runCmd(t, 20*time.Second, bin, "-i", testInit, "-s", "iscsi://"+ts.addr)
	if !strings.Contains(out, "Target:"+testIQN) || !strings.Contains(out, ts.addr) {
		t.Fatalf("iscsi-ls output lacks target or portal:\n%s", out)
	}
}

func TestRealInitiatorInquiry(t *testing.T) {
	bin := needBinary(t, "iscsi-inq")
	ts := startServer(t, nil)
	out := runCmd(t, 20*time.Second, bin, "-i", testInit, "iscsi://"+ts.addr+"/"+testIQN+"/0")
	if !strings.Contains(strings.ToLower(out), "hablock") {
		t.Fatalf("iscsi-inq output:\n%s", out)
	}
}

func qemuIO(t *testing.T, addr string, extra string, cmds ...string) string {
	bin := needBinary(t, "qemu-io")
	args := []string{"--image-opts",
		"driver=iscsi,transport=tcp,portal=" + addr + ",target=" + testIQN + ",lun=0,initiator-name=" + testInit + extra}
	for _, c := range cmds {
		args = append(args, "-c", c)
	}
	out := runCmd(t, 60*time.Second, bin, args...)
	t.Logf("qemu-io:\n%s", out)
	if strings.Contains(out, "Pattern verification failed") || strings.Contains(out, "error") {
		t.Fatalf("qemu-io: %s", out)
	}
	return out
}

func TestRealInitiatorQemuIO(t *testing.T) {
	ts := startServer(t, nil)
	qemuIO(t, ts.addr, "", "write -P 0xab 0 1M", "read -P 0xab 0 1M", "write -P 0x5c 4096 4096", "read -P 0x5c 4096 4096", "read -P 0xab 8192 1040384")
	got := make([]byte, 4096)
	ts.dev.ReadAt(got, 4096)
	if !bytes.Equal(got, bytes.Repeat([]byte{0x5c}, 4096)) {
		t.Fatalf("device content at 4096 not 0x5c")
	}
}

func TestRealInitiatorHeaderDigest(t *testing.T) {
	ts := startServer(t, nil)
	qemuIO(t, ts.addr, ",header-digest=crc32c", "write -P 0x11 0 256k", "read -P 0x11 0 256k")
}

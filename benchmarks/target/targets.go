package main

import (
	"context"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// target is one thing qemu-img bench is pointed at.
type target interface {
	name() string
	// describe says what runs and how it is reached, for the report.
	describe() string
	start(ctx context.Context) error
	// argv is the full qemu-img command line for w.
	argv(w workload) []string
	// proc is the serving process (nil for the raw file).
	proc() *server
	stop()
}

const startTimeout = 15 * time.Second

// ---- raw file ----

type rawTarget struct{ file string }

func (t *rawTarget) name() string { return "raw" }
func (t *rawTarget) describe() string {
	return "the backing file itself: qemu-img -f raw -t none -i native (O_DIRECT, Linux AIO)"
}
func (t *rawTarget) start(context.Context) error { return nil }
func (t *rawTarget) proc() *server               { return nil }
func (t *rawTarget) stop()                       {}
func (t *rawTarget) argv(w workload) []string {
	return append(append([]string{"qemu-img"}, w.BenchArgs()...),
		"-f", "raw", "-t", "none", "-i", "native", t.file)
}

// ---- tgt (Debian's tgtd) ----

type tgtTarget struct {
	file, dir, iqn string
	port, ctl      int
	srv            *server
}

func (t *tgtTarget) name() string { return "tgt" }
func (t *tgtTarget) describe() string {
	return fmt.Sprintf("tgtd -f -C %d --iscsi portal=127.0.0.1:%d; LUN 1 = backing file (bs=rdwr, defaults)", t.ctl, t.port)
}
func (t *tgtTarget) proc() *server { return t.srv }
func (t *tgtTarget) argv(w workload) []string {
	return iscsiArgv(w, t.port, t.iqn, 1) // LUN 0 is tgt's controller
}

// pickControlPort returns a tgtd control port (-C) other than 7 (the lead's
// baseline) whose socket does not exist yet.
func pickControlPort() int {
	for {
		n := 100 + rand.IntN(9000)
		if n == 7 {
			continue
		}
		if _, err := os.Stat(fmt.Sprintf("/var/run/tgtd/socket.%d", n)); os.IsNotExist(err) {
			return n
		}
	}
}

func (t *tgtTarget) start(ctx context.Context) error {
	port, err := freeLoopbackPort()
	if err != nil {
		return err
	}
	t.port, t.ctl = port, pickControlPort()
	t.srv, err = startServer("tgtd", filepath.Join(t.dir, "tgtd.log"),
		[]string{"tgtd", "-f", "-C", strconv.Itoa(t.ctl), "--iscsi", fmt.Sprintf("portal=127.0.0.1:%d", t.port)}, 0)
	if err != nil {
		return err
	}
	adm := func(args ...string) error {
		_, err := runCmd(ctx, 10*time.Second, append([]string{"tgtadm", "-C", strconv.Itoa(t.ctl), "--lld", "iscsi"}, args...)...)
		return err
	}
	// Wait for the control socket.
	deadline := time.Now().Add(startTimeout)
	for {
		if err = adm("--op", "show", "--mode", "sys"); err == nil {
			break
		}
		if done, how := t.srv.Exited(); done {
			return fmt.Errorf("tgtd exited (%s); log:\n%s", how, t.srv.LogTail(15))
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("tgtd control port %d not ready: %v", t.ctl, err)
		}
		time.Sleep(100 * time.Millisecond)
	}
	steps := [][]string{
		{"--op", "new", "--mode", "target", "--tid", "1", "-T", t.iqn},
		{"--op", "new", "--mode", "logicalunit", "--tid", "1", "--lun", "1", "-b", t.file},
		{"--op", "bind", "--mode", "target", "--tid", "1", "-I", "ALL"},
	}
	for _, s := range steps {
		if err := adm(s...); err != nil {
			return err
		}
	}
	return waitListening(ctx, t.srv, fmt.Sprintf("127.0.0.1:%d", t.port), startTimeout)
}

func (t *tgtTarget) stop() {
	if t.srv == nil {
		return
	}
	t.srv.Stop(3 * time.Second)
	for _, p := range []string{"", ".lock"} {
		_ = os.Remove(fmt.Sprintf("/var/run/tgtd/socket.%d%s", t.ctl, p))
	}
	t.srv = nil
}

// ---- gotgt v0.2.2 ----

// gotgtTarget runs gotgt in a child process (this binary in --gotgt-serve
// mode) inside a fresh network namespace: gotgt v0.2.2 can only listen on
// the wildcard address (":PORT"), and in a namespace whose only interface
// is lo that wildcard is loopback-only. qemu-img joins the namespace with
// nsenter --net.
type gotgtTarget struct {
	self, file, dir, iqn string
	port                 int
	srv                  *server
}

func (t *gotgtTarget) name() string { return "gotgt" }
func (t *gotgtTarget) describe() string {
	return fmt.Sprintf("gotgt v0.2.2 (github.com/gostor/gotgt, file backing store, LUN 0) in a child process in its own network namespace (lo only), 127.0.0.1:%d; qemu-img runs under nsenter --net", t.port)
}
func (t *gotgtTarget) proc() *server { return t.srv }
func (t *gotgtTarget) argv(w workload) []string {
	return append([]string{"nsenter", "--net=/proc/" + strconv.Itoa(t.srv.Pid()) + "/ns/net", "--"},
		iscsiArgv(w, t.port, t.iqn, 0)...)
}

const gotgtReady = "GOTGT-READY"

func (t *gotgtTarget) start(ctx context.Context) error {
	t.port = 3260 // the namespace is new and empty
	logPath := filepath.Join(t.dir, "gotgt.log")
	readyPath := filepath.Join(t.dir, "gotgt.ready")
	_ = os.Remove(readyPath)
	var err error
	t.srv, err = startServer("gotgt", logPath, []string{t.self, "--gotgt-serve",
		"--gotgt-backing", t.file, "--gotgt-iqn", t.iqn, "--gotgt-port", strconv.Itoa(t.port),
		"--gotgt-ready-file", readyPath}, syscall.CLONE_NEWNET)
	if err != nil {
		return err
	}
	deadline := time.Now().Add(startTimeout)
	for {
		if b, err := os.ReadFile(readyPath); err == nil && strings.TrimSpace(string(b)) == gotgtReady {
			return nil
		}
		if done, how := t.srv.Exited(); done {
			return fmt.Errorf("gotgt helper exited (%s); log:\n%s", how, t.srv.LogTail(15))
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("gotgt helper not ready after %v; log:\n%s", startTimeout, t.srv.LogTail(15))
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(50 * time.Millisecond):
		}
	}
}

func (t *gotgtTarget) stop() {
	if t.srv != nil {
		t.srv.Stop(2 * time.Second)
		t.srv = nil
	}
}

// ---- hablock export ----

type hablockTarget struct {
	bin, file, dir, iqn string
	size                int64
	port                int
	srv                 *server
}

func (t *hablockTarget) name() string { return "hablock" }
func (t *hablockTarget) describe() string {
	return fmt.Sprintf("hablock export --backing FILE --size %d --listen 127.0.0.1:%d --iqn %s --lun 0", t.size, t.port, t.iqn)
}
func (t *hablockTarget) proc() *server { return t.srv }
func (t *hablockTarget) argv(w workload) []string {
	return iscsiArgv(w, t.port, t.iqn, 0)
}

func (t *hablockTarget) start(ctx context.Context) error {
	port, err := freeLoopbackPort()
	if err != nil {
		return err
	}
	t.port = port
	t.srv, err = startServer("hablock", filepath.Join(t.dir, "hablock.log"), []string{t.bin, "export",
		"--backing", t.file, "--size", strconv.FormatInt(t.size, 10),
		"--listen", fmt.Sprintf("127.0.0.1:%d", t.port), "--iqn", t.iqn, "--lun", "0"}, 0)
	if err != nil {
		return err
	}
	return waitListening(ctx, t.srv, fmt.Sprintf("127.0.0.1:%d", t.port), startTimeout)
}

func (t *hablockTarget) stop() {
	if t.srv != nil {
		t.srv.Stop(7 * time.Second) // export's default --shutdown-grace is 5 s
		t.srv = nil
	}
}

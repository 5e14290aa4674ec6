package main

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"io"
	"os"
	"os/exec"
	"regexp"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// The test binary doubles as the hablock binary: when HABLOCK_TEST_MAIN is
// set it runs main() instead of the tests. Integration tests start it as a
// real separate process, so a crash, SIGKILL or restart is the real thing.
func TestMain(m *testing.M) {
	if os.Getenv("HABLOCK_TEST_MAIN") == "1" {
		os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
	}
	os.Exit(m.Run())
}

// proc is a running hablock process started by a test.
type proc struct {
	t      *testing.T
	cmd    *exec.Cmd
	addr   string // the address it listens on, parsed from its log
	mu     sync.Mutex
	log    bytes.Buffer
	exited chan struct{}
	err    error
}

var listenRE = regexp.MustCompile(`listen=(\S+)`)

// hablockCmd is "hablock args..." as a separate process: the test binary
// run as main (HABLOCK_TEST_MAIN).
func hablockCmd(t *testing.T, args ...string) *exec.Cmd {
	t.Helper()
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(exe, args...)
	cmd.Env = append(os.Environ(), "HABLOCK_TEST_MAIN=1")
	return cmd
}

// startHablock runs "hablock args..." and waits until it logs its listen
// address. The process is killed when the test ends.
func startHablock(t *testing.T, args ...string) *proc {
	t.Helper()
	cmd := hablockCmd(t, args...)
	stderr, err := cmd.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stdout = io.Discard
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	p := &proc{t: t, cmd: cmd, exited: make(chan struct{})}
	ready := make(chan string, 1)
	go func() {
		sc := bufio.NewScanner(stderr)
		sc.Buffer(make([]byte, 64<<10), 1<<20)
		for sc.Scan() {
			line := sc.Text()
			p.mu.Lock()
			p.log.WriteString(line + "\n")
			p.mu.Unlock()
			if m := listenRE.FindStringSubmatch(line); m != nil && strings.Contains(line, "exporting") {
				select {
				case ready <- m[1]:
				default:
				}
			}
		}
		p.err = cmd.Wait()
		close(p.exited)
	}()
	t.Cleanup(func() {
		p.kill()
		if t.Failed() {
			t.Logf("hablock %s log:\n%s", args[0], p.logText())
		}
	})
	select {
	case p.addr = <-ready:
		return p
	case <-p.exited:
		t.Fatalf("hablock %v exited before listening: %v\n%s", args, p.err, p.logText())
	case <-time.After(30 * time.Second):
		t.Fatalf("hablock %v did not report its listen address in 30s\n%s", args, p.logText())
	}
	return nil
}

func (p *proc) logText() string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.log.String()
}

// kill sends SIGKILL and waits for the process to be gone.
func (p *proc) kill() {
	select {
	case <-p.exited:
		return
	default:
	}
	_ = p.cmd.Process.Kill()
	<-p.exited
}

// alive reports whether the process is still running.
func (p *proc) alive() bool {
	select {
	case <-p.exited:
		return false
	default:
		return true
	}
}

// stop sends SIGTERM and waits for a clean exit.
func (p *proc) stop(t *testing.T) {
	t.Helper()
	_ = p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.exited:
		if p.err != nil {
			t.Errorf("hablock exited with %v after SIGTERM\n%s", p.err, p.logText())
		}
	case <-time.After(20 * time.Second):
		// A goroutine dump (Go prints it on SIGQUIT) into the log that
		// the test prints when it fails.
		_ = p.cmd.Process.Signal(syscall.SIGQUIT)
		select {
		case <-p.exited:
		case <-time.After(2 * time.Second):
		}
		t.Errorf("hablock did not exit within 20s of SIGTERM")
		p.kill()
	}
}

// needTools skips the test when an external program is missing.
func needTools(t *testing.T, tools ...string) {
	t.Helper()
	for _, tool := range tools {
		if _, err := exec.LookPath(tool); err != nil {
			t.Skipf("%s not installed (run scripts/deps.sh): skipping", tool)
		}
	}
}

// runTool runs an external program with a timeout and returns its output.
func runTool(t *testing.T, timeout time.Duration, name string, args ...string) (string, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	out, err := exec.CommandContext(ctx, name, args...).CombinedOutput()
	if ctx.Err() != nil {
		return string(out), fmt.Errorf("%s timed out after %v: %w", name, timeout, ctx.Err())
	}
	return string(out), err
}

func mustTool(t *testing.T, timeout time.Duration, name string, args ...string) string {
	t.Helper()
	out, err := runTool(t, timeout, name, args...)
	if err != nil {
		t.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, out)
	}
	return out
}

package main

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"strings"
	"syscall"
	"time"
)

// server is a long-running target process started by the benchmark.
type server struct {
	name    string
	cmd     *exec.Cmd
	done    chan struct{}
	waitErr error
	logPath string
	logFile *os.File
}

// startServer starts argv with stdout and stderr appended to logPath. The
// child gets its own process group (so a terminal ^C reaches only the
// benchmark, which then stops it in order) and is killed if the benchmark
// dies without cleaning up.
func startServer(name, logPath string, argv []string, cloneflags uintptr) (*server, error) {
	lf, err := os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return nil, err
	}
	fmt.Fprintf(lf, "=== %s: %s\n", time.Now().Format(time.RFC3339), strings.Join(argv, " "))
	cmd := exec.Command(argv[0], argv[1:]...)
	cmd.Stdout = lf
	cmd.Stderr = lf
	cmd.SysProcAttr = &syscall.SysProcAttr{
		Setpgid:    true,
		Pdeathsig:  syscall.SIGKILL,
		Cloneflags: cloneflags,
	}
	if err := cmd.Start(); err != nil {
		lf.Close()
		return nil, fmt.Errorf("start %s: %w", name, err)
	}
	s := &server{name: name, cmd: cmd, done: make(chan struct{}), logPath: logPath, logFile: lf}
	go func() {
		s.waitErr = cmd.Wait()
		close(s.done)
	}()
	return s, nil
}

func (s *server) pid() int { return s.cmd.Process.Pid }

// exited reports whether the process has ended, and how.
func (s *server) exited() (bool, string) {
	select {
	case <-s.done:
		if s.waitErr == nil {
			return true, "exited with status 0"
		}
		return true, s.waitErr.Error()
	default:
		return false, ""
	}
}

// stop sends SIGTERM, waits up to grace, then SIGKILLs the process group.
func (s *server) stop(grace time.Duration) {
	if done, _ := s.exited(); !done {
		_ = s.cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-s.done:
		case <-time.After(grace):
			_ = syscall.Kill(-s.cmd.Process.Pid, syscall.SIGKILL)
			<-s.done
		}
	}
	// Anything left in the group (there should be nothing).
	_ = syscall.Kill(-s.cmd.Process.Pid, syscall.SIGKILL)
	s.logFile.Close()
}

// logTail returns the last n lines of the server's log.
func (s *server) logTail(n int) string {
	b, err := os.ReadFile(s.logPath)
	if err != nil {
		return ""
	}
	lines := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

// waitListening dials addr until it accepts a connection (then closes it),
// the server exits, or timeout passes.
func waitListening(ctx context.Context, s *server, addr string, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	for {
		c, err := net.DialTimeout("tcp", addr, 200*time.Millisecond)
		if err == nil {
			c.Close()
			return nil
		}
		if s != nil {
			if done, how := s.exited(); done {
				return fmt.Errorf("%s exited before listening on %s (%s); log:\n%s", s.name, addr, how, s.logTail(15))
			}
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%s not listening on %s after %v: %v", s.name, addr, timeout, err)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// freeLoopbackPort asks the kernel for an unused 127.0.0.1 port.
func freeLoopbackPort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

// runCmd runs a short helper command and returns its combined output.
func runCmd(ctx context.Context, timeout time.Duration, argv ...string) (string, error) {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	out, err := exec.CommandContext(ctx, argv[0], argv[1:]...).CombinedOutput()
	if err != nil {
		return string(out), fmt.Errorf("%s: %w: %s", strings.Join(argv, " "), err, strings.TrimSpace(string(out)))
	}
	return string(out), nil
}

// qemuResult is the outcome of one qemu-img invocation.
type qemuResult struct {
	out     string
	timeout bool
	err     error
}

// runQemu runs argv with a hard timeout; on timeout the whole process group
// is killed, so a target that stops answering cannot block the benchmark.
func runQemu(ctx context.Context, argv []string, timeout time.Duration) qemuResult {
	rctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	cmd := exec.CommandContext(rctx, argv[0], argv[1:]...)
	var buf strings.Builder
	cmd.Stdout = &buf
	cmd.Stderr = &buf
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	cmd.Cancel = func() error { return syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) }
	cmd.WaitDelay = 5 * time.Second
	err := cmd.Run()
	r := qemuResult{out: buf.String(), err: err}
	if err != nil && errors.Is(rctx.Err(), context.DeadlineExceeded) && ctx.Err() == nil {
		r.timeout = true
	}
	return r
}

package bench

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

// Server is a long-running target process started by the benchmark.
type Server struct {
	name    string
	cmd     *exec.Cmd
	done    chan struct{}
	waitErr error
	logPath string
	logFile *os.File
}

// StartServer starts argv with stdout and stderr appended to logPath. The
// child gets its own process group (so a terminal ^C reaches only the
// benchmark, which then stops it in order) and is killed if the benchmark
// dies without cleaning up.
func StartServer(name, logPath string, argv []string, cloneflags uintptr) (*Server, error) {
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
	s := &Server{name: name, cmd: cmd, done: make(chan struct{}), logPath: logPath, logFile: lf}
	go func() {
		s.waitErr = cmd.Wait()
		close(s.done)
	}()
	return s, nil
}

func (s *Server) Pid() int { return s.cmd.Process.Pid }

// Exited reports whether the process has ended, and how.
func (s *Server) Exited() (bool, string) {
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

// Stop sends SIGTERM, waits up to grace, then SIGKILLs the process group.
func (s *Server) Stop(grace time.Duration) {
	if done, _ := s.Exited(); !done {
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

// LogTail returns the last n lines of the server's log.
func (s *Server) LogTail(n int) string {
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

// WaitListening dials addr until it accepts a connection (then closes it),
// the server exits, or timeout passes.
func WaitListening(ctx context.Context, s *Server, addr string, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	for {
		c, err := net.DialTimeout("tcp", addr, 200*time.Millisecond)
		if err == nil {
			c.Close()
			return nil
		}
		if s != nil {
			if done, how := s.Exited(); done {
				return fmt.Errorf("%s exited before listening on %s (%s); log:\n%s", s.name, addr, how, s.LogTail(15))
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

// FreeLoopbackPort asks the kernel for an unused 127.0.0.1 port.
func FreeLoopbackPort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

// RunCmd runs a short helper command and returns its combined output.
func RunCmd(ctx context.Context, timeout time.Duration, argv ...string) (string, error) {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	out, err := exec.CommandContext(ctx, argv[0], argv[1:]...).CombinedOutput()
	if err != nil {
		return string(out), fmt.Errorf("%s: %w: %s", strings.Join(argv, " "), err, strings.TrimSpace(string(out)))
	}
	return string(out), nil
}

// QemuResult is the outcome of one qemu-img invocation.
type QemuResult struct {
	Out     string
	Timeout bool
	Err     error
	// CPU is the CPU time (user + system) qemu-img used, from its
	// rusage; zero when it could not be run.
	CPU time.Duration
}

// RunQemu runs argv with a hard timeout; on timeout the whole process group
// is killed, so a target that stops answering cannot block the benchmark.
func RunQemu(ctx context.Context, argv []string, timeout time.Duration) QemuResult {
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
	r := QemuResult{Out: buf.String(), Err: err}
	if ps := cmd.ProcessState; ps != nil {
		r.CPU = ps.UserTime() + ps.SystemTime()
	}
	if err != nil && errors.Is(rctx.Err(), context.DeadlineExceeded) && ctx.Err() == nil {
		r.Timeout = true
	}
	return r
}

// Name is the name the server was started with.
func (s *Server) Name() string { return s.name }

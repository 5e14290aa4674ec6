package bench

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"math"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"syscall"
	"time"
)

// IscsiOpts is the --image-opts string for an iSCSI LUN on 127.0.0.1.
func IscsiOpts(port int, iqn string, lun int) string {
	return fmt.Sprintf("driver=iscsi,transport=tcp,portal=127.0.0.1:%d,target=%s,lun=%d", port, iqn, lun)
}

// IscsiArgv is the qemu-img bench command line running w against an iSCSI
// LUN on 127.0.0.1 (-t none: qemu's iscsi driver then sends no flushes).
func IscsiArgv(w Workload, port int, iqn string, lun int) []string {
	return append(append([]string{"qemu-img"}, w.BenchArgs()...),
		"-t", "none", "--image-opts", IscsiOpts(port, iqn, lun))
}

// Prefill writes size bytes of pseudo-random data (one block, repeated) to
// path and fdatasyncs it, so that every target starts from a fully
// allocated, identically written file and reads return written data.
func Prefill(path string, size int64, block []byte) error {
	f, err := os.OpenFile(path, os.O_CREATE|os.O_TRUNC|os.O_WRONLY, 0o644)
	if err != nil {
		return err
	}
	w := bufio.NewWriterSize(f, len(block))
	for off := int64(0); off < size; off += int64(len(block)) {
		n := int64(len(block))
		if size-off < n {
			n = size - off
		}
		if _, err := w.Write(block[:n]); err != nil {
			f.Close()
			return err
		}
	}
	if err := w.Flush(); err != nil {
		f.Close()
		return err
	}
	if err := syscall.Fdatasync(int(f.Fd())); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}

// Num turns NaN and ±Inf into nil (a JSON null).
func Num(f float64) *float64 {
	if math.IsNaN(f) || math.IsInf(f, 0) {
		return nil
	}
	return &f
}

// Thousands prints f rounded, with comma separators: 12,345.
func Thousands(f float64) string {
	s := fmt.Sprintf("%.0f", f)
	neg := strings.HasPrefix(s, "-")
	s = strings.TrimPrefix(s, "-")
	var b strings.Builder
	if neg {
		b.WriteByte('-')
	}
	for i, ch := range s {
		if i > 0 && (len(s)-i)%3 == 0 {
			b.WriteByte(',')
		}
		b.WriteRune(ch)
	}
	return b.String()
}

// CommandLine is the command a reader would type to reproduce a run of
// "go run ./benchmarks/NAME ARGS".
func CommandLine(name string, args []string) string {
	parts := []string{"go", "run", "./benchmarks/" + name}
	for _, a := range args {
		parts = append(parts, ShellQuote(a))
	}
	return strings.Join(parts, " ")
}

// ShellQuote quotes s for a POSIX shell when it needs it.
func ShellQuote(s string) string {
	if s != "" && strings.IndexFunc(s, func(r rune) bool {
		return !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || strings.ContainsRune("-_./=,:@+", r))
	}) < 0 {
		return s
	}
	return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'"
}

// Machine is what the reports say about the machine a run happened on.
type Machine struct {
	NProc    int
	CPU      string
	MemTotal string
	Kernel   string
	Go       string
	Qemu     string
}

// DescribeMachine reads /proc and qemu-img --version.
func DescribeMachine() Machine {
	m := Machine{NProc: runtime.NumCPU(), Go: runtime.Version()}
	m.Kernel = strings.TrimSpace(ReadFile("/proc/sys/kernel/osrelease"))
	for _, line := range strings.Split(ReadFile("/proc/cpuinfo"), "\n") {
		if strings.HasPrefix(line, "model name") {
			if i := strings.IndexByte(line, ':'); i >= 0 {
				m.CPU = strings.TrimSpace(line[i+1:])
			}
			break
		}
	}
	for _, line := range strings.Split(ReadFile("/proc/meminfo"), "\n") {
		if f := strings.Fields(line); len(f) >= 2 && f[0] == "MemTotal:" {
			var kib int64
			fmt.Sscan(f[1], &kib)
			m.MemTotal = fmt.Sprintf("%.1f GiB", float64(kib)/(1<<20))
		}
	}
	m.Qemu = FirstLine(CmdOut("qemu-img", "--version"))
	return m
}

// HablockVersion is "hablock version" plus the git commit of the work tree.
func HablockVersion(ctx context.Context, bin string) string {
	v := FirstLine(CmdOut(bin, "version"))
	if v == "" {
		v = "hablock"
	}
	if out, err := RunCmd(ctx, 5*time.Second, "git", "rev-parse", "--short", "HEAD"); err == nil {
		v += " (git " + strings.TrimSpace(out)
		if st, err := RunCmd(ctx, 5*time.Second, "git", "status", "--porcelain", "--untracked-files=no"); err == nil && strings.TrimSpace(st) != "" {
			v += ", dirty"
		}
		v += ")"
	}
	return v
}

// BuildHablock returns the hablock binary to run: bin if set, else
// ./cmd/hablock built into dir from repo (default: the module root found
// with go env GOMOD). hint is appended to a build error.
func BuildHablock(ctx context.Context, bin, repo, dir string, log io.Writer, hint string) (string, error) {
	if bin != "" {
		return filepath.Abs(bin)
	}
	if repo == "" {
		out, err := RunCmd(ctx, 30*time.Second, "go", "env", "GOMOD")
		if err != nil {
			return "", err
		}
		gomod := strings.TrimSpace(out)
		if gomod == "" || gomod == os.DevNull {
			return "", fmt.Errorf("not inside a Go module; pass --repo or --hablock-bin")
		}
		repo = filepath.Dir(gomod)
	}
	out := filepath.Join(dir, "hablock")
	fmt.Fprintf(log, "building hablock: go build -o %s ./cmd/hablock (in %s)\n", out, repo)
	cmd := exec.CommandContext(ctx, "go", "build", "-o", out, "./cmd/hablock")
	cmd.Dir = repo
	if b, err := cmd.CombinedOutput(); err != nil {
		return "", fmt.Errorf("building hablock: %v\n%s%s", err, b, hint)
	}
	return out, nil
}

// Busy reports whether a "1m 5m 15m" load average string has a 1-minute
// load above nproc.
func Busy(load string, nproc int) bool {
	var l1 float64
	if _, err := fmt.Sscan(load, &l1); err != nil {
		return false
	}
	return l1 > float64(nproc)
}

// Loadavg is the first three fields of /proc/loadavg.
func Loadavg() string {
	f := strings.Fields(ReadFile("/proc/loadavg"))
	if len(f) < 3 {
		return "?"
	}
	return strings.Join(f[:3], " ")
}

// ReadFile returns the file's contents, or "" when it cannot be read.
func ReadFile(p string) string {
	b, _ := os.ReadFile(p)
	return string(b)
}

// CmdOut runs argv for at most 5 s and returns its combined output.
func CmdOut(argv ...string) string {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	out, _ := exec.CommandContext(ctx, argv[0], argv[1:]...).CombinedOutput()
	return string(out)
}

// FirstLine is the first line of s, trimmed.
func FirstLine(s string) string {
	s = strings.TrimSpace(s)
	if i := strings.IndexByte(s, '\n'); i >= 0 {
		s = s[:i]
	}
	return s
}

// LastLine is the last line of s, trimmed and cut to 300 bytes.
func LastLine(s string) string {
	s = strings.TrimSpace(s)
	if i := strings.LastIndexByte(s, '\n'); i >= 0 {
		s = s[i+1:]
	}
	if len(s) > 300 {
		s = s[:300] + "..."
	}
	return s
}

package rig

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/signal"
	"path/filepath"
	"sync"
	"syscall"
	"time"
)

// The client workload runs in a child process inside the client's network
// namespace: the rig re-executes its own binary (the test binary or the
// benchmark command) under `nsenter --net=...` with RoleEnv set, and the
// binary's main or TestMain calls RunRoleIfRequested first thing. nsenter
// enters only the network namespace, so the child sees the same mounts as
// the rig (the FUSE LUN and the ext4 on it).
const (
	RoleEnv   = "HABLOCK_RIG_ROLE"
	roleDir   = "HABLOCK_RIG_DIR" // the mounted file system
	roleHTTP  = "HABLOCK_RIG_HTTP"
	roleWork  = "client"
	httpPort  = "127.0.0.1:8080"
	webFile   = "www/index.txt"
	writeFile = "writer.dat"
)

// Workload timing: the numbers.
const (
	pollEvery    = 10 * time.Millisecond
	pollTimeout  = 5 * time.Second
	rewriteEvery = time.Second
	writeSize    = 4096
	writeSpan    = 256 // the writer cycles over this many blocks
)

// event is one line the client role prints. Kinds: "w" a write+fsync
// completed at T after D; "werr" it failed; "poll" an HTTP poll failed
// (Err) or was slow (D over 100 ms); "rw" the web file rewrite failed;
// "ready" the HTTP server serves.
type event struct {
	Kind string `json:"k"`
	T    int64  `json:"t"` // unix nanoseconds at completion
	D    int64  `json:"d,omitempty"`
	Err  string `json:"e,omitempty"`
}

// RunRoleIfRequested runs the rig's child role and exits when RoleEnv is
// set; it returns at once otherwise. Call it first in main or TestMain of
// any binary that uses the rig.
func RunRoleIfRequested() {
	role := os.Getenv(RoleEnv)
	if role == "" {
		return
	}
	var err error
	switch role {
	case roleWork:
		err = runClientRole(os.Getenv(roleDir))
	default:
		err = fmt.Errorf("unknown %s=%q", RoleEnv, role)
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "rig role:", err)
		os.Exit(1)
	}
	os.Exit(0)
}

// runClientRole serves dir/www/index.txt over HTTP, rewrites it every
// second, polls it every 10 ms, and writes 4 KiB + fdatasync to
// dir/writer.dat in a loop, until SIGTERM.
func runClientRole(dir string) error {
	if dir == "" {
		return fmt.Errorf("%s is not set", roleDir)
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	var outMu sync.Mutex
	enc := json.NewEncoder(os.Stdout)
	emit := func(e event) {
		outMu.Lock()
		defer outMu.Unlock()
		_ = enc.Encode(e)
	}

	web := filepath.Join(dir, webFile)
	if err := os.MkdirAll(filepath.Dir(web), 0o755); err != nil {
		return err
	}
	if err := rewrite(web, 0); err != nil {
		return err
	}
	ln, err := net.Listen("tcp4", httpPort)
	if err != nil {
		return err
	}
	srv := &http.Server{
		Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			http.ServeFile(w, r, web)
		}),
		ReadHeaderTimeout: 5 * time.Second,
	}
	go func() { _ = srv.Serve(ln) }()
	defer srv.Close()

	var wg sync.WaitGroup
	wg.Add(3)
	go func() { // the rewriter
		defer wg.Done()
		t := time.NewTicker(rewriteEvery)
		defer t.Stop()
		for n := 1; ; n++ {
			select {
			case <-ctx.Done():
				return
			case <-t.C:
			}
			if err := rewrite(web, n); err != nil {
				emit(event{Kind: "rw", T: time.Now().UnixNano(), Err: err.Error()})
			}
		}
	}()
	go func() { // the poller
		defer wg.Done()
		cl := &http.Client{Timeout: pollTimeout}
		url := "http://" + httpPort + "/"
		t := time.NewTicker(pollEvery)
		defer t.Stop()
		emit(event{Kind: "ready", T: time.Now().UnixNano()})
		for {
			select {
			case <-ctx.Done():
				return
			case <-t.C:
			}
			start := time.Now()
			err := poll(cl, url)
			d := time.Since(start)
			switch {
			case err != nil:
				emit(event{Kind: "poll", T: time.Now().UnixNano(), D: int64(d), Err: err.Error()})
			case d > 100*time.Millisecond:
				emit(event{Kind: "poll", T: time.Now().UnixNano(), D: int64(d)})
			}
		}
	}()
	go func() { // the writer
		defer wg.Done()
		f, err := os.OpenFile(filepath.Join(dir, writeFile), os.O_CREATE|os.O_RDWR, 0o644)
		if err != nil {
			emit(event{Kind: "werr", T: time.Now().UnixNano(), Err: err.Error()})
			return
		}
		defer f.Close()
		buf := make([]byte, writeSize)
		for i := 0; ctx.Err() == nil; i++ {
			for j := range buf {
				buf[j] = byte(i)
			}
			start := time.Now()
			_, err := f.WriteAt(buf, int64(i%writeSpan)*writeSize)
			if err == nil {
				err = syscall.Fdatasync(int(f.Fd()))
			}
			now := time.Now()
			if err != nil {
				emit(event{Kind: "werr", T: now.UnixNano(), Err: err.Error()})
				time.Sleep(10 * time.Millisecond)
				continue
			}
			emit(event{Kind: "w", T: now.UnixNano(), D: int64(now.Sub(start))})
		}
	}()
	<-ctx.Done()
	wg.Wait()
	return nil
}

// rewrite replaces path atomically with a new version n (write to a
// temporary file, fsync, rename).
func rewrite(path string, n int) error {
	tmp := path + ".tmp"
	f, err := os.Create(tmp)
	if err != nil {
		return err
	}
	_, err = fmt.Fprintf(f, "version %d written %s\n", n, time.Now().UTC().Format(time.RFC3339Nano))
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return err
	}
	return os.Rename(tmp, path)
}

// poll GETs url and checks the answer is a version line.
func poll(cl *http.Client, url string) error {
	resp, err := cl.Get(url)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, 4096))
	if err != nil {
		return err
	}
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("HTTP %d: %s", resp.StatusCode, body)
	}
	if len(body) < len("version ") || string(body[:8]) != "version " {
		return errors.New("unexpected body: " + string(body))
	}
	return nil
}

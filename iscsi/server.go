package iscsi

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"slices"
	"strings"
	"sync"
	"syscall"
	"time"
)

// Server errors.
var (
	// ErrServerClosed is returned by Serve after Close or Shutdown.
	ErrServerClosed = errors.New("iscsi: server closed")
	// ErrTargetExists: AddTarget was called twice with one name.
	ErrTargetExists = errors.New("iscsi: target already exists")
	// ErrBadName: a target name is not a valid iSCSI name.
	ErrBadName = errors.New("iscsi: invalid iSCSI name")
)

// ConnInfo describes one live connection.
type ConnInfo struct {
	TargetName    string // empty for discovery sessions and during login
	InitiatorName string // empty until the first Login Request is read
	ISID          [6]byte
	TSIH          uint16 // 0 until login completes
	CID           uint16
	Discovery     bool
	LocalAddr     net.Addr
	RemoteAddr    net.Addr
}

type target struct {
	name    string // lower case
	backend Backend
}

// sessKey identifies a session for reinstatement (RFC 7143 4.4.3): the
// initiator port (name + ISID) and the target.
type sessKey struct {
	initiator string
	isid      [6]byte
	target    string
}

// Server is an iSCSI target: it accepts connections on any number of
// listeners and runs login and sessions for the targets added to it.
type Server struct {
	cfg Config
	log *slog.Logger

	mu         sync.Mutex
	targets    map[string]*target
	targetCHAP map[string]CHAPConfig
	listeners  map[net.Listener]struct{}
	conns      map[*conn]struct{}
	sessions   map[sessKey]*session
	tsihs      map[uint16]*session
	nextTSIH   uint16
	closed     bool
	connWG     sync.WaitGroup
}

// NewServer validates cfg and returns a Server with no targets.
func NewServer(cfg Config) (*Server, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	s := &Server{
		cfg: cfg, log: log,
		targets:    make(map[string]*target),
		targetCHAP: make(map[string]CHAPConfig),
		listeners:  make(map[net.Listener]struct{}),
		conns:      make(map[*conn]struct{}),
		sessions:   make(map[sessKey]*session),
		tsihs:      make(map[uint16]*session),
	}
	for iqn, c := range cfg.TargetCHAP {
		s.targetCHAP[strings.ToLower(iqn)] = c
	}
	return s, nil
}

// validName checks an iSCSI name (RFC 7143 4.2.7): iqn., eui. or naa.
// form, at most 223 bytes, no spaces or control characters.
func validName(n string) bool {
	if len(n) < 5 || len(n) > 223 {
		return false
	}
	l := strings.ToLower(n)
	if !strings.HasPrefix(l, "iqn.") && !strings.HasPrefix(l, "eui.") && !strings.HasPrefix(l, "naa.") {
		return false
	}
	for _, c := range []byte(n) {
		if c <= ' ' || c >= 0x7f || c == ',' {
			return false
		}
	}
	return true
}

// AddTarget makes b reachable as target iqn. Names compare case-
// insensitively (RFC 7143 4.2.7.1).
func (s *Server) AddTarget(iqn string, b Backend) error {
	if !validName(iqn) {
		return fmt.Errorf("%w: %q", ErrBadName, iqn)
	}
	if b == nil {
		return fmt.Errorf("iscsi: AddTarget %q: nil backend", iqn)
	}
	key := strings.ToLower(iqn)
	s.mu.Lock()
	defer s.mu.Unlock()
	if _, ok := s.targets[key]; ok {
		return fmt.Errorf("%w: %q", ErrTargetExists, iqn)
	}
	s.targets[key] = &target{name: key, backend: b}
	return nil
}

func (s *Server) lookupTarget(name string) *target {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.targets[strings.ToLower(name)]
}

// targetNames returns the target names in order (for SendTargets).
func (s *Server) targetNames() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	names := make([]string, 0, len(s.targets))
	for n := range s.targets {
		names = append(names, n)
	}
	slices.Sort(names)
	return names
}

// chapFor returns the CHAP credentials a login must pass, or nil.
func (s *Server) chapFor(tgt string, discovery bool) *CHAPConfig {
	if discovery {
		return s.cfg.DiscoveryCHAP
	}
	if c, ok := s.targetCHAP[strings.ToLower(tgt)]; ok {
		return &c
	}
	return s.cfg.CHAP
}

// Serve accepts connections on l until Close or Shutdown, then returns
// ErrServerClosed. Temporary accept errors (out of file descriptors, an
// aborted connection) are retried with backoff, as net/http does.
func (s *Server) Serve(l net.Listener) error {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		l.Close()
		return ErrServerClosed
	}
	s.listeners[l] = struct{}{}
	s.mu.Unlock()
	defer func() {
		s.mu.Lock()
		delete(s.listeners, l)
		s.mu.Unlock()
		l.Close()
	}()
	var backoff time.Duration
	for {
		nc, err := l.Accept()
		if err != nil {
			if s.isClosed() {
				return ErrServerClosed
			}
			if temporaryAcceptError(err) {
				backoff = min(max(2*backoff, 5*time.Millisecond), time.Second)
				s.log.Warn("iscsi: accept error; retrying", "err", err, "delay", backoff)
				time.Sleep(backoff)
				continue
			}
			return fmt.Errorf("iscsi: accept: %w", err)
		}
		backoff = 0
		c := newConn(s, nc)
		s.mu.Lock()
		if s.closed {
			s.mu.Unlock()
			nc.Close()
			return ErrServerClosed
		}
		s.conns[c] = struct{}{}
		s.connWG.Add(1)
		s.mu.Unlock()
		go c.serve()
	}
}

func temporaryAcceptError(err error) bool {
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() {
		return true
	}
	for _, e := range []error{syscall.EMFILE, syscall.ENFILE, syscall.ECONNABORTED, syscall.ENOBUFS, syscall.ENOMEM, syscall.EAGAIN, syscall.EINTR} {
		if errors.Is(err, e) {
			return true
		}
	}
	return false
}

func (s *Server) isClosed() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.closed
}

func (s *Server) removeConn(c *conn) {
	s.mu.Lock()
	delete(s.conns, c)
	s.mu.Unlock()
	s.connWG.Done()
}

// Connections lists the live connections.
func (s *Server) Connections() []ConnInfo {
	s.mu.Lock()
	cs := make([]*conn, 0, len(s.conns))
	for c := range s.conns {
		cs = append(cs, c)
	}
	s.mu.Unlock()
	out := make([]ConnInfo, 0, len(cs))
	for _, c := range cs {
		out = append(out, c.info())
	}
	return out
}

// stopAccepting marks the server closed and closes its listeners.
func (s *Server) stopAccepting() []*conn {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.closed = true
	for l := range s.listeners {
		l.Close()
	}
	cs := make([]*conn, 0, len(s.conns))
	for c := range s.conns {
		cs = append(cs, c)
	}
	return cs
}

// StopAccepting closes the listeners and refuses new connections but
// leaves the live ones alone, until Close or Shutdown drops them. A node
// demoted in a planned switchover uses it: its initiators must not
// reconnect to it, and must not be told to reconnect before the new
// Primary holds the address.
func (s *Server) StopAccepting() { s.stopAccepting() }

// Close stops accepting, drops every connection at once and waits for
// their goroutines (and the Backend's NexusLost calls) to finish.
func (s *Server) Close() error {
	for _, c := range s.stopAccepting() {
		c.close("server closed")
	}
	s.connWG.Wait()
	return nil
}

// Shutdown stops accepting, asks every full-feature session to log out
// (Async Message "target requests logout", RFC 7143 11.9.1), waits up to
// Config.ShutdownGrace or until ctx is done for the initiators to leave,
// then drops what is left. It returns ctx.Err() if ctx ended first.
func (s *Server) Shutdown(ctx context.Context) error {
	cs := s.stopAccepting()
	grace := s.cfg.ShutdownGrace
	if dl, ok := ctx.Deadline(); ok && time.Until(dl) < grace {
		grace = max(time.Until(dl), 0)
	}
	secs := uint16(min(max((grace+time.Second-1)/time.Second, 1), 3600))
	for _, c := range cs {
		if !c.requestLogout(secs) {
			c.close("shutdown")
		}
	}
	done := make(chan struct{})
	go func() {
		s.connWG.Wait()
		close(done)
	}()
	t := time.NewTimer(grace)
	defer t.Stop()
	var err error
	select {
	case <-done:
		return nil
	case <-t.C:
	case <-ctx.Done():
		err = ctx.Err()
	}
	s.Close()
	return err
}

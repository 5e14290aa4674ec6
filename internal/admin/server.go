package admin

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"time"
)

// Server serves a Node on a listener (normally from Listen).
type Server struct {
	node Node
	log  *slog.Logger
	http *http.Server
}

// Bounds on every request: the API is tiny and local, so anything slow is
// a stuck client that must not hold a goroutine forever.
const (
	readHeaderTimeout = 5 * time.Second
	readTimeout       = 10 * time.Second
	// writeTimeout bounds one request's handling, including a Node call
	// (Primary waits for a flush, Disconnect for the link to close).
	writeTimeout   = 60 * time.Second
	idleTimeout    = 60 * time.Second
	maxHeaderBytes = 16 << 10
)

// NewServer returns a Server for node; log may be nil.
func NewServer(node Node, log *slog.Logger) *Server {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	s := &Server{node: node, log: log}
	mux := http.NewServeMux()
	mux.HandleFunc("GET /v1/status", func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, http.StatusOK, s.status(r.Context()))
	})
	s.action(mux, "connect", func(ctx context.Context, f flags) error { return node.Connect(ctx, f.discardMyData) }, "discard-my-data")
	s.action(mux, "disconnect", func(ctx context.Context, _ flags) error { return node.Disconnect(ctx) })
	s.action(mux, "primary", func(ctx context.Context, f flags) error { return node.Primary(ctx, f.force) }, "force")
	s.action(mux, "secondary", func(ctx context.Context, _ flags) error { return node.Secondary(ctx) })
	s.action(mux, "invalidate", func(ctx context.Context, _ flags) error { return node.Invalidate(ctx) })
	s.action(mux, "verify", func(ctx context.Context, f flags) error { return node.Verify(ctx, f.repair) }, "repair")
	s.action(mux, "pause-sync", func(ctx context.Context, _ flags) error { return node.PauseSync(ctx) })
	s.action(mux, "resume-sync", func(ctx context.Context, _ flags) error { return node.ResumeSync(ctx) })
	s.action(mux, "switchover", func(ctx context.Context, f flags) error { return node.Switchover(ctx, f.to) }, "to")
	mux.HandleFunc("GET /v1/events", s.events)
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		writeError(w, &Error{HTTPStatus: http.StatusNotFound, Code: CodeNotFound,
			Message: fmt.Sprintf("no endpoint %s %s (see GET /v1/status)", r.Method, r.URL.Path)})
	})
	s.http = &http.Server{
		Handler:           s.recoverer(methodCheck(mux)),
		ReadHeaderTimeout: readHeaderTimeout,
		ReadTimeout:       readTimeout,
		WriteTimeout:      writeTimeout,
		IdleTimeout:       idleTimeout,
		MaxHeaderBytes:    maxHeaderBytes,
		ErrorLog:          slog.NewLogLogger(log.Handler(), slog.LevelWarn),
	}
	return s
}

type flags struct {
	force, repair, discardMyData bool
	to                           string // switchover's target node
}

// action registers POST /v1/NAME; allowed lists the boolean query
// parameters it takes ("to" is the one string parameter).
func (s *Server) action(mux *http.ServeMux, name string, fn func(context.Context, flags) error, allowed ...string) {
	mux.HandleFunc("POST /v1/"+name, func(w http.ResponseWriter, r *http.Request) {
		var f flags
		q := r.URL.Query()
		for k, vs := range q {
			ok := false
			for _, a := range allowed {
				ok = ok || a == k
			}
			if !ok {
				writeError(w, &Error{HTTPStatus: http.StatusBadRequest, Code: CodeBadRequest,
					Message: fmt.Sprintf("%s: unknown parameter %q", name, k)})
				return
			}
			if k == "to" {
				f.to = vs[len(vs)-1]
				continue
			}
			b, err := strconv.ParseBool(vs[len(vs)-1])
			if err != nil {
				writeError(w, &Error{HTTPStatus: http.StatusBadRequest, Code: CodeBadRequest,
					Message: fmt.Sprintf("%s: parameter %s=%q is not a boolean", name, k, vs[len(vs)-1])})
				return
			}
			switch k {
			case "force":
				f.force = b
			case "repair":
				f.repair = b
			case "discard-my-data":
				f.discardMyData = b
			}
		}
		if err := fn(r.Context(), f); err != nil {
			e := errorFor(err)
			s.log.Warn("admin request failed", "op", name, "err", err, "code", e.Code)
			writeError(w, e)
			return
		}
		s.log.Info("admin request", "op", name, "force", f.force, "repair", f.repair, "discard_my_data", f.discardMyData, "to", f.to)
		writeJSON(w, http.StatusOK, s.status(r.Context()))
	})
}

// status is the node's Status with the derived fields filled in.
// EventSource is implemented by a Node that keeps an event stream
// (GET /v1/events answers 404 for one that does not).
type EventSource interface {
	Events() *EventLog
}

// EventsReply is the answer of GET /v1/events.
type EventsReply struct {
	Events []Event `json:"events"`
	// Next is the Seq to pass as after in the next request.
	Next uint64 `json:"next"`
}

// events serves GET /v1/events?after=SEQ&wait=DURATION: the events with
// Seq > after (0: all that are kept), waiting up to wait (at most
// MaxEventWait) for one if there is none.
func (s *Server) events(w http.ResponseWriter, r *http.Request) {
	src, ok := s.node.(EventSource)
	if !ok || src.Events() == nil {
		writeError(w, &Error{HTTPStatus: http.StatusNotFound, Code: CodeNotFound, Message: "this node keeps no event stream"})
		return
	}
	var after uint64
	var wait time.Duration
	for k, vs := range r.URL.Query() {
		v := vs[len(vs)-1]
		var err error
		switch k {
		case "after":
			after, err = strconv.ParseUint(v, 10, 64)
		case "wait":
			wait, err = time.ParseDuration(v)
			if err == nil && (wait < 0 || wait > MaxEventWait) {
				err = fmt.Errorf("not in [0, %v]", MaxEventWait)
			}
		default:
			err = errors.New("unknown parameter")
		}
		if err != nil {
			writeError(w, &Error{HTTPStatus: http.StatusBadRequest, Code: CodeBadRequest,
				Message: fmt.Sprintf("events: parameter %s=%q: %v", k, v, err)})
			return
		}
	}
	evs, next := src.Events().Wait(r.Context(), after, wait)
	if evs == nil {
		evs = []Event{}
	}
	writeJSON(w, http.StatusOK, EventsReply{Events: evs, Next: next})
}

func (s *Server) status(ctx context.Context) Status {
	st := s.node.Status(ctx)
	st.SplitBrain = st.IsSplitBrain()
	return st
}

// methodCheck answers 405 for a known path with the wrong method (the
// mux would, but without our JSON body).
func methodCheck(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		want := http.MethodPost
		if r.URL.Path == "/v1/status" || r.URL.Path == "/v1/events" {
			want = http.MethodGet
		}
		known := want == http.MethodGet
		for _, n := range []string{"connect", "disconnect", "primary", "secondary", "invalidate", "verify", "pause-sync", "resume-sync", "switchover"} {
			known = known || r.URL.Path == "/v1/"+n
		}
		if known && r.Method != want && !(want == http.MethodGet && r.Method == http.MethodHead) {
			w.Header().Set("Allow", want)
			writeError(w, &Error{HTTPStatus: http.StatusMethodNotAllowed, Code: CodeMethodNotAllowed,
				Message: fmt.Sprintf("%s wants %s, not %s", r.URL.Path, want, r.Method)})
			return
		}
		next.ServeHTTP(w, r)
	})
}

func (s *Server) recoverer(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		defer func() {
			if p := recover(); p != nil {
				if p == http.ErrAbortHandler {
					panic(p)
				}
				s.log.Error("admin handler panicked", "path", r.URL.Path, "panic", p)
				writeError(w, &Error{HTTPStatus: http.StatusInternalServerError, Code: CodeInternal,
					Message: fmt.Sprintf("internal error: %v", p)})
			}
		}()
		next.ServeHTTP(w, r)
	})
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	enc.Encode(v)
}

func writeError(w http.ResponseWriter, e *Error) {
	writeJSON(w, e.HTTPStatus, e)
}

// Serve serves on ln until Shutdown or Close; it returns
// http.ErrServerClosed then.
func (s *Server) Serve(ln net.Listener) error { return s.http.Serve(ln) }

// Shutdown stops accepting and waits for requests in progress, up to ctx.
func (s *Server) Shutdown(ctx context.Context) error { return s.http.Shutdown(ctx) }

// Close closes the listener and every connection at once.
func (s *Server) Close() error { return s.http.Close() }

// Handler returns the HTTP handler (for tests).
func (s *Server) Handler() http.Handler { return s.http.Handler }

// ErrInUse: Listen found another agent answering on the socket.
var ErrInUse = errors.New("admin: socket in use")

// Listen creates the Unix socket at path, mode 0600, creating its
// directory (mode 0755) if needed. A stale socket left by an agent that
// died is removed; one that still answers is ErrInUse (another agent for
// the same node runs). A path that exists and is not a socket is refused.
// Closing the listener removes the socket.
func Listen(path string) (*net.UnixListener, error) {
	if !filepath.IsAbs(path) {
		return nil, fmt.Errorf("admin socket %q: must be an absolute path", path)
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return nil, fmt.Errorf("admin socket: %w", err)
	}
	if fi, err := os.Lstat(path); err == nil {
		if fi.Mode()&fs.ModeSocket == 0 {
			return nil, fmt.Errorf("admin socket %s: exists and is not a socket; refusing to remove it", path)
		}
		c, err := net.DialTimeout("unix", path, time.Second)
		if err == nil {
			c.Close()
			return nil, fmt.Errorf("admin socket %s: %w: another agent answers on it", path, ErrInUse)
		}
		if err := os.Remove(path); err != nil {
			return nil, fmt.Errorf("admin socket %s: remove stale socket: %w", path, err)
		}
	}
	ln, err := net.ListenUnix("unix", &net.UnixAddr{Name: path, Net: "unix"})
	if err != nil {
		return nil, fmt.Errorf("admin socket: %w", err)
	}
	// The socket is created with the process umask; tighten it before
	// anyone is told it exists (the agent logs the path after this).
	if err := os.Chmod(path, 0o600); err != nil {
		ln.Close()
		return nil, fmt.Errorf("admin socket %s: %w", path, err)
	}
	ln.SetUnlinkOnClose(true)
	return ln, nil
}

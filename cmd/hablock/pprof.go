package main

import (
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/http/pprof"
)

// servePprof serves Go's profiling handlers (net/http/pprof) on addr
// until the returned function is called. Opt-in through $HABLOCK_PPROF:
// the handlers have no authentication.
func servePprof(addr string, log *slog.Logger) (func(), error) {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("HABLOCK_PPROF=%s: %w (unset it, or pick a free loopback address such as 127.0.0.1:6060)", addr, err)
	}
	mux := http.NewServeMux()
	mux.HandleFunc("/debug/pprof/", pprof.Index)
	mux.HandleFunc("/debug/pprof/cmdline", pprof.Cmdline)
	mux.HandleFunc("/debug/pprof/profile", pprof.Profile)
	mux.HandleFunc("/debug/pprof/symbol", pprof.Symbol)
	mux.HandleFunc("/debug/pprof/trace", pprof.Trace)
	srv := &http.Server{Handler: mux}
	go srv.Serve(ln)
	log.Warn("serving pprof (HABLOCK_PPROF); unauthenticated, keep it on loopback", "addr", ln.Addr().String())
	return func() { srv.Close() }, nil
}

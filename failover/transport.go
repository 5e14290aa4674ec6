package failover

import (
	"context"
	"fmt"
	"io"
	"net"
	"time"
)

// call sends one request frame to addr over a new TCP connection and
// reads one reply frame, within ctx.
func call(ctx context.Context, addr string, req any) (any, error) {
	b, err := encodeFrame(req)
	if err != nil {
		return nil, err
	}
	var d net.Dialer
	c, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		return nil, err
	}
	defer c.Close()
	if dl, ok := ctx.Deadline(); ok {
		c.SetDeadline(dl)
	}
	stop := context.AfterFunc(ctx, func() { c.SetDeadline(time.Now()) })
	defer stop()
	if _, err := c.Write(b); err != nil {
		return nil, err
	}
	return readFrame(c)
}

// readFrame reads one frame, checking the length before allocating.
func readFrame(r io.Reader) (any, error) {
	var h [headerLen]byte
	if _, err := io.ReadFull(r, h[:]); err != nil {
		return nil, err
	}
	n, err := frameLen(h[:])
	if err != nil {
		return nil, err
	}
	b := make([]byte, headerLen+n)
	copy(b, h[:])
	if _, err := io.ReadFull(r, b[headerLen:]); err != nil {
		return nil, fmt.Errorf("%w: %v", ErrWire, err)
	}
	return decodeFrame(b)
}

// maxConns caps the control connections served at once; a vote takes at
// most VoteTimeout, and a cluster has two other members.
const maxConns = 16

// serveTCP accepts control connections until ln is closed, each
// answered by handle within limit.
func serveTCP(ln net.Listener, limit time.Duration, handle func(req any) any, logf func(msg string, args ...any)) {
	sem := make(chan struct{}, maxConns)
	backoff := 5 * time.Millisecond
	for {
		c, err := ln.Accept()
		if err != nil {
			if ne, ok := err.(net.Error); ok && ne.Timeout() {
				time.Sleep(backoff)
				continue
			}
			return // closed
		}
		select {
		case sem <- struct{}{}:
		default:
			logf("control connection refused: too many in progress", "remote", c.RemoteAddr().String())
			c.Close()
			continue
		}
		go func() {
			defer func() {
				if p := recover(); p != nil {
					logf("control connection panicked", "panic", p)
				}
				c.Close()
				<-sem
			}()
			c.SetDeadline(time.Now().Add(limit))
			req, err := readFrame(c)
			if err != nil {
				logf("bad control request", "remote", c.RemoteAddr().String(), "err", err)
				return
			}
			reply := handle(req)
			if reply == nil {
				return
			}
			b, err := encodeFrame(reply)
			if err != nil {
				logf("encode control reply", "err", err)
				return
			}
			c.Write(b)
		}()
	}
}

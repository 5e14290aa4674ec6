package admin

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"time"
)

// Event is one entry of a node's event stream (`hablock events`, like
// drbdsetup events2): a state change of the replication engine, a step
// of the failover manager, or something the agent did.
type Event struct {
	// Seq numbers the node's events from 1, without gaps, since the
	// agent started.
	Seq uint64    `json:"seq"`
	At  time.Time `json:"at"`
	// Source is "replication", "failover" or "agent".
	Source string `json:"source"`
	// Kind is what changed: role, peer-role, disk, peer-disk,
	// connection, replication, generation (replication); failover; or
	// the agent's own (metadata ...).
	Kind string `json:"kind"`
	// From and To are the old and new state, where the event is a
	// transition.
	From string `json:"from,omitempty"`
	To   string `json:"to,omitempty"`
	// Reason says why (or, for failover events, what happened).
	Reason string `json:"reason,omitempty"`
}

// String renders e on one line, as `hablock events` prints it:
// "2026-12-04T20:32:38.585Z #5 replication role: Secondary -> Primary (promote)".
func (e Event) String() string {
	var b strings.Builder
	fmt.Fprintf(&b, "%s #%d %s", e.At.UTC().Format("2006-01-02T15:04:05.000Z"), e.Seq, e.Source)
	if e.Kind != "" && e.Kind != e.Source {
		fmt.Fprintf(&b, " %s", e.Kind)
	}
	transition := e.From != "" || e.To != ""
	if transition {
		fmt.Fprintf(&b, ": %s -> %s", e.From, e.To)
	}
	switch {
	case e.Reason == "":
	case transition:
		fmt.Fprintf(&b, " (%s)", e.Reason)
	default:
		fmt.Fprintf(&b, ": %s", e.Reason)
	}
	return b.String()
}

// DefaultEventLogSize is how many events an EventLog keeps.
const DefaultEventLogSize = 1024

// MaxEventWait bounds the long poll of GET /v1/events (below the
// server's write timeout).
const MaxEventWait = 30 * time.Second

// EventLog is a bounded, numbered log of events that readers can wait
// on. Safe for concurrent use; Append never blocks, so it may be called
// under other locks (the engine calls it under its state lock).
type EventLog struct {
	mu     sync.Mutex
	buf    []Event // ring: the last len(buf) events
	size   int
	next   uint64        // Seq of the next event
	notify chan struct{} // closed and replaced at each Append
}

// NewEventLog returns an empty log keeping the last size events
// (DefaultEventLogSize if size <= 0).
func NewEventLog(size int) *EventLog {
	if size <= 0 {
		size = DefaultEventLogSize
	}
	return &EventLog{size: size, next: 1, notify: make(chan struct{})}
}

// Append numbers e, stamps it if At is zero, and keeps it.
func (l *EventLog) Append(e Event) {
	l.mu.Lock()
	defer l.mu.Unlock()
	e.Seq = l.next
	l.next++
	if e.At.IsZero() {
		e.At = time.Now()
	}
	if len(l.buf) < l.size {
		l.buf = append(l.buf, e)
	} else {
		l.buf[(e.Seq-1)%uint64(l.size)] = e
	}
	close(l.notify)
	l.notify = make(chan struct{})
}

// Since returns the kept events with Seq > after, oldest first, and the
// Seq to ask for next time. Events older than the log's size are gone:
// the first returned Seq may then be above after+1.
func (l *EventLog) Since(after uint64) ([]Event, uint64) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.sinceLocked(after), l.next - 1
}

func (l *EventLog) sinceLocked(after uint64) []Event {
	last := l.next - 1
	if after >= last {
		return nil
	}
	first := last - uint64(len(l.buf)) + 1 // oldest kept
	from := max(after+1, first)
	out := make([]Event, 0, last-from+1)
	for s := from; s <= last; s++ {
		out = append(out, l.buf[(s-1)%uint64(l.size)])
	}
	return out
}

// Wait returns the events after after, waiting up to wait (at most
// MaxEventWait) for the first one if there is none yet; the second
// result is the Seq to ask for next time. It returns early, with what
// it has, when ctx ends.
func (l *EventLog) Wait(ctx context.Context, after uint64, wait time.Duration) ([]Event, uint64) {
	wait = min(wait, MaxEventWait)
	var timer <-chan time.Time
	if wait > 0 {
		t := time.NewTimer(wait)
		defer t.Stop()
		timer = t.C
	}
	for {
		l.mu.Lock()
		evs, ch, last := l.sinceLocked(after), l.notify, l.next-1
		l.mu.Unlock()
		if len(evs) > 0 || timer == nil {
			return evs, last
		}
		select {
		case <-ch:
		case <-timer:
			return nil, last
		case <-ctx.Done():
			return nil, last
		}
	}
}

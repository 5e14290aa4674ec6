package admin

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"testing"
	"time"
)

func TestEventLogNumbersAndDropsOldest(t *testing.T) {
	l := NewEventLog(4)
	if evs, next := l.Since(0); len(evs) != 0 || next != 0 {
		t.Fatalf("empty log: %v, next %d", evs, next)
	}
	for i := range 6 {
		l.Append(Event{Source: "agent", Kind: fmt.Sprint(i)})
	}
	evs, next := l.Since(0)
	if next != 6 || len(evs) != 4 || evs[0].Seq != 3 || evs[3].Seq != 6 || evs[0].Kind != "2" || evs[0].At.IsZero() {
		t.Fatalf("after 6 appends to a log of 4: %+v, next %d; want seqs 3..6, next 6", evs, next)
	}
	if evs, _ := l.Since(4); len(evs) != 2 || evs[0].Seq != 5 {
		t.Fatalf("Since(4) = %+v, want seqs 5 and 6", evs)
	}
	// A reader from a previous run of the agent (after beyond the last)
	// gets nothing and the last seq to resume from.
	if evs, next := l.Since(100); len(evs) != 0 || next != 6 {
		t.Fatalf("Since(100) = %v, next %d; want none, next 6", evs, next)
	}
}

func TestEventLogWait(t *testing.T) {
	l := NewEventLog(0)
	l.Append(Event{Kind: "a"})
	// An event already kept is returned without waiting (a long wait
	// that ran out would return none).
	if evs, next := l.Wait(context.Background(), 0, MaxEventWait); len(evs) != 1 || next != 1 {
		t.Fatalf("Wait with an event kept: %v, next %d; want it", evs, next)
	}
	go func() {
		time.Sleep(50 * time.Millisecond)
		l.Append(Event{Kind: "b"})
	}()
	if evs, next := l.Wait(context.Background(), 1, 10*time.Second); len(evs) != 1 || evs[0].Kind != "b" || next != 2 {
		t.Fatalf("Wait for the next event: %v, next %d", evs, next)
	}
	if evs, next := l.Wait(context.Background(), 2, 20*time.Millisecond); len(evs) != 0 || next != 2 {
		t.Fatalf("Wait that times out: %v, next %d", evs, next)
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if evs, _ := l.Wait(ctx, 2, time.Minute); len(evs) != 0 {
		t.Fatalf("Wait with a cancelled context: %v", evs)
	}
}

// eventNode is a fakeNode with an event stream.
type eventNode struct {
	*fakeNode
	log *EventLog
}

func (n eventNode) Events() *EventLog { return n.log }

func TestEventsEndpoint(t *testing.T) {
	n := eventNode{fakeNode: newFakeNode(), log: NewEventLog(0)}
	n.log.Append(Event{Source: "replication", Kind: "disk", From: "Inconsistent", To: "UpToDate", Reason: "resync finished"})
	c, _ := serve(t, n)
	ctx := context.Background()
	evs, next, err := c.Events(ctx, 0, 0)
	if err != nil || len(evs) != 1 || next != 1 || evs[0].To != "UpToDate" || evs[0].Seq != 1 {
		t.Fatalf("Events(0) = %+v, %d, %v", evs, next, err)
	}
	// The long poll returns when an event arrives.
	go func() {
		time.Sleep(50 * time.Millisecond)
		n.log.Append(Event{Source: "failover", Kind: "failover", Reason: "promoted in epoch 3"})
	}()
	evs, next, err = c.Events(ctx, 1, 10*time.Second)
	if err != nil || len(evs) != 1 || next != 2 || evs[0].Reason != "promoted in epoch 3" {
		t.Fatalf("long poll = %+v, %d, %v", evs, next, err)
	}
	// Bad parameters are refused with the parameter named.
	for _, q := range []string{"after=x", "wait=1h", "wait=-1s", "bogus=1"} {
		var r EventsReply
		err := c.call(ctx, http.MethodGet, "events?"+q, nil, &r)
		var e *Error
		if !errors.As(err, &e) || e.HTTPStatus != http.StatusBadRequest {
			t.Errorf("events?%s: %v, want 400", q, err)
		}
	}
	// A node without an event stream answers 404.
	c2, _ := serve(t, newFakeNode())
	if _, _, err := c2.Events(ctx, 0, 0); err == nil {
		t.Error("events from a node without a stream succeeded")
	}
}

func TestEventString(t *testing.T) {
	at := time.Date(2026, 12, 4, 20, 32, 38, 585e6, time.UTC)
	for _, c := range []struct {
		e    Event
		want string
	}{
		{Event{Seq: 5, At: at, Source: "replication", Kind: "role", From: "Secondary", To: "Primary", Reason: "promote"},
			"2026-12-04T20:32:38.585Z #5 replication role: Secondary -> Primary (promote)"},
		{Event{Seq: 6, At: at, Source: "replication", Kind: "peer-disk", From: "DUnknown", To: "Inconsistent"},
			"2026-12-04T20:32:38.585Z #6 replication peer-disk: DUnknown -> Inconsistent"},
		{Event{Seq: 7, At: at, Source: "failover", Kind: "failover", Reason: "promoted in epoch 3"},
			"2026-12-04T20:32:38.585Z #7 failover: promoted in epoch 3"},
		{Event{Seq: 1, At: at, Source: "agent", Kind: "start", Reason: "agent running"},
			"2026-12-04T20:32:38.585Z #1 agent start: agent running"},
	} {
		if got := c.e.String(); got != c.want {
			t.Errorf("got  %q\nwant %q", got, c.want)
		}
	}
}

// A kind named like its source is not repeated.
func TestEventStringKindLikeSource(t *testing.T) {
	e := Event{Seq: 9, At: time.Date(2026, 12, 4, 0, 0, 0, 0, time.UTC), Source: "replication", Kind: "replication", From: "Off", To: "SyncSource"}
	if got, want := e.String(), "2026-12-04T00:00:00.000Z #9 replication: Off -> SyncSource"; got != want {
		t.Errorf("got %q, want %q", got, want)
	}
}

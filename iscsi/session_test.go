package iscsi

import (
	"testing"
)

func TestSerialArithmetic(t *testing.T) {
	cases := []struct {
		a, b uint32
		less bool
	}{
		{1, 2, true},
		{2, 1, false},
		{5, 5, false},
		{0xffffffff, 0, true}, // wrap-around
		{0xfffffff0, 0x10, true},
		{0x10, 0xfffffff0, false},
		{0, 0x7fffffff, true},
	}
	for _, c := range cases {
		if got := snLess(c.a, c.b); got != c.less {
			t.Errorf("snLess(%#x, %#x) = %v", c.a, c.b, got)
		}
	}
	if !snInWindow(0, 0xfffffffe, 5) || snInWindow(6, 0xfffffffe, 5) || snInWindow(0xfffffffd, 0xfffffffe, 5) {
		t.Fatal("window across the wrap")
	}
	// An empty window (MaxCmdSN = ExpCmdSN - 1) admits nothing.
	if snInWindow(10, 10, 9) || snInWindow(9, 10, 9) {
		t.Fatal("empty window admitted a CmdSN")
	}
}

func newTestSession(window int, exp uint32) *session {
	srv := &Server{cfg: DefaultConfig()}
	srv.cfg.MaxOutstandingCommands = window
	return newSession(srv, nil, sessKey{}, 1, nil, false, exp)
}

// TestCmdSNWindow drives the sequencing core across the 32-bit wrap:
// in-order commands run at once, a gap holds later ones, filling it
// releases them in order, CmdSNs outside the window are refused, and
// MaxCmdSN = ExpCmdSN + window - outstanding - 1 never moves backwards.
func TestCmdSNWindow(t *testing.T) {
	const window = 4
	start := uint32(0xfffffffe)
	s := newTestSession(window, start)
	exp, maxSN := s.window()
	if exp != start || maxSN != start+window-1 {
		t.Fatalf("initial window [%#x, %#x]", exp, maxSN)
	}
	tasks := map[uint32]*task{}
	arrive := func(sn uint32) (bool, []seqItem) {
		t.Helper()
		if !s.admitLocked(sn) {
			t.Fatalf("CmdSN %#x refused in window [%#x, %#x]", sn, s.expCmdSN, s.maxCmdSN)
		}
		tk := &task{cmdSN: sn}
		tasks[sn] = tk
		return s.insertLocked(sn, seqItem{t: tk})
	}
	// start+0 in order.
	if now, more := arrive(start); !now || len(more) != 0 {
		t.Fatal("in-order command held")
	}
	// start+2 and start+3 (wraps to 0, 1) arrive before start+1: held.
	if now, _ := arrive(start + 2); now {
		t.Fatal("command after a gap ran")
	}
	if now, _ := arrive(start + 3); now {
		t.Fatal("command after a gap ran")
	}
	if s.admitLocked(start + 2) {
		t.Fatal("duplicate held CmdSN admitted")
	}
	if s.admitLocked(start + 4) {
		t.Fatal("CmdSN beyond MaxCmdSN admitted") // window: 4 - 1 outstanding
	}
	// The gap fills: all three are released in CmdSN order.
	now, more := arrive(start + 1)
	if !now || len(more) != 2 || more[0].t.cmdSN != start+2 || more[1].t.cmdSN != start+3 {
		t.Fatalf("gap fill released %v", more)
	}
	exp, maxSN = s.window()
	if exp != start+4 || s.outstanding != 4 || maxSN != start+3 {
		t.Fatalf("after 4 commands: exp %#x max %#x outstanding %d", exp, maxSN, s.outstanding)
	}
	if s.admitLocked(start + 4) {
		t.Fatal("closed window admitted a command")
	}
	// Below ExpCmdSN: a duplicate of a command already taken.
	if s.admitLocked(start + 1) {
		t.Fatal("old CmdSN admitted")
	}
	// Completing one command opens one slot.
	s.finishLocked(tasks[start+1])
	exp, maxSN = s.window()
	if maxSN != start+4 || !s.admitLocked(start+4) {
		t.Fatalf("after a completion: exp %#x max %#x", exp, maxSN)
	}
	// A non-SCSI item (e.g. a NOP-Out) consumes a CmdSN but not a slot.
	s.insertLocked(start+4, seqItem{pdu: &pendingPDU{}})
	exp, maxSN = s.window()
	if exp != start+5 || maxSN != start+5 {
		t.Fatalf("after a NOP-Out: exp %#x max %#x", exp, maxSN)
	}
	// MaxCmdSN never decreases, even if the arithmetic would.
	s.outstanding += 10
	s.publishLocked()
	if _, m := s.window(); m != maxSN {
		t.Fatalf("MaxCmdSN moved back to %#x from %#x", m, maxSN)
	}
}

// TestCmdSNTombstone: ABORT TASK's RefCmdSN rule consumes a CmdSN that
// never arrived, releasing what was held behind it.
func TestCmdSNTombstone(t *testing.T) {
	s := newTestSession(8, 100)
	tk := &task{cmdSN: 101}
	if now, _ := s.insertLocked(101, seqItem{t: tk}); now {
		t.Fatal("held command ran")
	}
	now, more := s.insertLocked(100, seqItem{})
	if !now || len(more) != 1 || more[0].t != tk || s.expCmdSN != 102 {
		t.Fatalf("tombstone: now=%v more=%v exp=%d", now, more, s.expCmdSN)
	}
	if s.admitLocked(100) {
		t.Fatal("the aborted CmdSN was admitted after being declared received")
	}
}

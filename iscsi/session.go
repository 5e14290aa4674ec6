package iscsi

import (
	"io"
	"runtime/debug"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hablock/hablock/iscsi/scsi"
)

// Serial number arithmetic on 32-bit sequence numbers (RFC 1982, as
// RFC 7143 4.2.2.1 requires for CmdSN, StatSN, DataSN, R2TSN).

// snLess reports a < b.
func snLess(a, b uint32) bool { return a != b && int32(a-b) < 0 }

// snLessEq reports a <= b.
func snLessEq(a, b uint32) bool { return a == b || snLess(a, b) }

// snInWindow reports lo <= sn <= hi. An empty window is hi == lo-1.
func snInWindow(sn, lo, hi uint32) bool { return snLessEq(lo, sn) && snLessEq(sn, hi) }

// session is one iSCSI session with its single connection (we negotiate
// MaxConnections=1 and ErrorRecoveryLevel=0).
type session struct {
	srv       *Server
	key       sessKey
	tsih      uint16
	nexus     scsi.Nexus
	target    *target // nil for discovery sessions
	discovery bool
	conn      *conn
	maxOut    int

	// sn publishes ExpCmdSN<<32 | MaxCmdSN for the writer, which stamps
	// them into every PDU it sends; updated under mu, read lock-free.
	sn atomic.Uint64

	mu sync.Mutex
	// INVARIANT: maxCmdSN never decreases (serially); every CmdSN in
	// [expCmdSN, maxCmdSN] is accepted.
	expCmdSN, maxCmdSN uint32
	outstanding        int // non-immediate commands past their CmdSN turn, not yet answered
	immOutstanding     int
	held               map[uint32]seqItem // PDUs that arrived ahead of a CmdSN gap
	tasks              map[uint32]*task   // by ITT
	submitQ            []*task            // in CmdSN order, waiting for data or for the head
	r2ts               map[uint32]*r2tState
	writeBytes         int64
	closed             bool

	teardownOnce sync.Once
	done         chan struct{} // closed once torn down and NexusLost returned
}

func newSession(srv *Server, c *conn, key sessKey, tsih uint16, tgt *target, discovery bool, cmdSN uint32) *session {
	s := &session{
		srv: srv, key: key, tsih: tsih, target: tgt, discovery: discovery, conn: c,
		maxOut:   srv.cfg.MaxOutstandingCommands,
		expCmdSN: cmdSN,
		maxCmdSN: cmdSN + uint32(srv.cfg.MaxOutstandingCommands) - 1,
		held:     make(map[uint32]seqItem),
		tasks:    make(map[uint32]*task),
		r2ts:     make(map[uint32]*r2tState),
		done:     make(chan struct{}),
	}
	s.nexus = scsi.Nexus{InitiatorName: key.initiator, ISID: key.isid, TPGT: TPGT}
	if tgt != nil {
		s.nexus.TargetName = tgt.name
	}
	s.publishLocked()
	return s
}

// stateAttrs describes the session's queues for a log line.
func (s *session) stateAttrs() []any {
	s.mu.Lock()
	defer s.mu.Unlock()
	submitted, waiting := 0, 0
	for _, t := range s.tasks {
		if t.submitted {
			submitted++
		} else {
			waiting++
		}
	}
	return []any{"exp_cmdsn", s.expCmdSN, "max_cmdsn", s.maxCmdSN, "outstanding", s.outstanding,
		"held", len(s.held), "submit_queue", len(s.submitQ), "tasks_submitted", submitted, "tasks_waiting", waiting}
}

// window returns the ExpCmdSN and MaxCmdSN to stamp into a PDU.
func (s *session) window() (exp, maxSN uint32) {
	v := s.sn.Load()
	return uint32(v >> 32), uint32(v)
}

// publishLocked recomputes MaxCmdSN = ExpCmdSN + (window - outstanding) - 1
// without ever moving it backwards, and publishes both numbers.
func (s *session) publishLocked() {
	free := max(s.maxOut-s.outstanding, 0)
	m := s.expCmdSN + uint32(free) - 1
	if snLess(m, s.maxCmdSN) {
		m = s.maxCmdSN
	}
	s.maxCmdSN = m
	s.sn.Store(uint64(s.expCmdSN)<<32 | uint64(m))
}

// seqItem is a PDU waiting in the CmdSN sequence: a SCSI command (t), a
// non-SCSI request (pdu), or neither: a CmdSN that ABORT TASK declared
// received (RFC 7143 11.5.1 RefCmdSN rule).
type seqItem struct {
	t   *task
	pdu *pendingPDU
}

// admitLocked reports whether a non-immediate PDU with cmdSN is accepted:
// inside [ExpCmdSN, MaxCmdSN] and not a duplicate of one held. Others are
// dropped silently (RFC 7143 4.2.2.1).
func (s *session) admitLocked(cmdSN uint32) bool {
	if !snInWindow(cmdSN, s.expCmdSN, s.maxCmdSN) {
		return false
	}
	_, dup := s.held[cmdSN]
	return !dup
}

// insertLocked places an admitted item in the sequence. now reports
// whether it is itself next in line; more are held items its arrival
// released, in order. SCSI commands among them are counted as
// outstanding here, so the window never opens wider than configured.
func (s *session) insertLocked(cmdSN uint32, it seqItem) (now bool, more []seqItem) {
	if cmdSN != s.expCmdSN {
		s.held[cmdSN] = it
		return false, nil
	}
	s.expCmdSN++
	s.countLocked(it)
	for len(s.held) > 0 {
		nx, ok := s.held[s.expCmdSN]
		if !ok {
			break
		}
		delete(s.held, s.expCmdSN)
		s.expCmdSN++
		s.countLocked(nx)
		more = append(more, nx)
	}
	s.publishLocked()
	return true, more
}

func (s *session) countLocked(it seqItem) {
	if it.t != nil && !it.t.finished {
		it.t.counted = true
		s.outstanding++
	}
}

// task is one SCSI command from arrival to response.
type task struct {
	itt       uint32
	cmdSN     uint32
	immediate bool
	lunRaw    [8]byte
	cmd       scsi.Command
	edtl      uint32
	buf       []byte // data-out buffer, len edtl (writes only)
	recv      uint32 // data-out bytes received

	unsolOpen   bool // an unsolicited Data-Out sequence is expected
	unsolNext   uint32
	unsolEnd    uint32
	unsolDataSN uint32
	nextR2TOff  uint32
	r2tSN       uint32
	r2tOut      int

	writeBytes int64 // charged against MaxSessionWriteBytes
	counted    bool  // in session.outstanding
	queued     bool  // reached its CmdSN turn (in submitQ or beyond)
	submitted  bool  // handed to the Backend
	finished   bool  // answered, aborted or dropped
}

func (t *task) dataComplete() bool { return t.buf == nil || t.recv == t.edtl }

// r2tState is one outstanding R2T and its solicited Data-Out sequence.
type r2tState struct {
	t         *task
	next, end uint32
	dataSN    uint32
	ttt       uint32
}

// finishLocked retires t: no more data is accepted for it and its
// resources return to the session.
func (s *session) finishLocked(t *task) {
	t.finished = true
	if s.tasks[t.itt] == t {
		delete(s.tasks, t.itt)
	}
	s.writeBytes -= t.writeBytes
	t.writeBytes = 0
	if t.counted {
		t.counted = false
		s.outstanding--
	}
	if t.immediate {
		s.immOutstanding--
	}
	if t.r2tOut > 0 {
		for ttt, r := range s.r2ts {
			if r.t == t {
				delete(s.r2ts, ttt)
			}
		}
		t.r2tOut = 0
	}
	s.publishLocked()
}

// abortPendingLocked retires, without a response, the tasks that match
// and have not reached the Backend yet. Tasks already submitted are the
// Backend's to abort.
func (s *session) abortPendingLocked(match func(*task) bool) {
	for _, t := range s.tasks {
		if !t.submitted && !t.finished && match(t) {
			s.finishLocked(t)
		}
	}
}

// teardown ends the session once its connection is gone: pending tasks
// are dropped and the Backend told that the nexus is lost. Idempotent.
func (s *session) teardown() {
	s.teardownOnce.Do(func() {
		defer close(s.done)
		s.mu.Lock()
		s.closed = true
		s.abortPendingLocked(func(*task) bool { return true })
		clear(s.held)
		s.submitQ = nil
		s.mu.Unlock()
		s.srv.removeSession(s)
		if s.target != nil {
			func() {
				defer func() {
					if r := recover(); r != nil {
						s.conn.log.Error("iscsi: NexusLost panic", "panic", r, "stack", string(debug.Stack()))
					}
				}()
				s.target.backend.NexusLost(s.nexus)
			}()
		}
		s.conn.log.Info("iscsi: session ended", "initiator", s.key.initiator, "target", s.key.target, "tsih", s.tsih)
	})
}

func (srv *Server) removeSession(s *session) {
	srv.mu.Lock()
	defer srv.mu.Unlock()
	if srv.sessions[s.key] == s {
		delete(srv.sessions, s.key)
	}
	if srv.tsihs[s.tsih] == s {
		delete(srv.tsihs, s.tsih)
	}
}

// sessionsOf lists the live sessions of a target.
func (srv *Server) sessionsOf(t *target) []*session {
	srv.mu.Lock()
	defer srv.mu.Unlock()
	var out []*session
	for _, s := range srv.sessions {
		if s.target == t {
			out = append(out, s)
		}
	}
	return out
}

// ---- SCSI command path (reader goroutine) ----

// senseFixed builds fixed-format sense data (SPC-4 4.5.3).
func senseFixed(key, asc, ascq byte) []byte {
	return []byte{0x70, 0, key, 0, 0, 0, 0, 10, 0, 0, 0, 0, asc, ascq, 0, 0, 0, 0}
}

// Sense data the transport produces itself (all else comes from the core).
var (
	senseInvalidField    = senseFixed(0x05, 0x24, 0x00) // ILLEGAL REQUEST, INVALID FIELD IN CDB
	senseDataSNError     = senseFixed(0x0b, 0x4b, 0x00) // ABORTED COMMAND, DATA PHASE ERROR
	senseDataOffsetError = senseFixed(0x0b, 0x4b, 0x05) // ABORTED COMMAND, DATA OFFSET ERROR
)

func (c *conn) handleSCSICmd(h *BHS, ahs []byte) error {
	s := c.sess
	dsl := h.DataSegLen()
	flags := h[1]
	final, read, write := flags&0x80 != 0, flags&0x40 != 0, flags&0x20 != 0
	itt, edtl, cmdSN := h.ITT(), h.u32(offTTT), h.u32(offCmdSN)
	if s.discovery {
		return c.fatal(h, rejectProtocol, "SCSI command in a discovery session")
	}
	ext, _, _, err := parseAHS(ahs)
	if err != nil {
		return c.fatal(h, rejectProtocol, err.Error())
	}
	if 16+len(ext) > 260 {
		return c.fatal(h, rejectProtocol, "CDB longer than 260 bytes")
	}
	immediate := h.Immediate()
	if !immediate {
		s.mu.Lock()
		ok := s.admitLocked(cmdSN)
		s.mu.Unlock()
		if !ok {
			c.log.Debug("iscsi: dropping command outside the CmdSN window", "cmdsn", cmdSN)
			return c.discard(h, dsl)
		}
	}
	switch {
	case dsl > 0 && !write:
		return c.fatal(h, rejectProtocol, "immediate data without the W bit")
	case dsl > 0 && !c.params.ImmediateData:
		return c.fatal(h, rejectProtocol, "immediate data with ImmediateData=No")
	case uint32(dsl) > edtl || uint32(dsl) > c.params.FirstBurstLength:
		return c.fatal(h, rejectProtocol, "immediate data beyond EDTL or FirstBurstLength")
	case write && !final && c.params.InitialR2T:
		return c.fatal(h, rejectProtocol, "unsolicited data with InitialR2T=Yes")
	}
	s.mu.Lock()
	_, dup := s.tasks[itt]
	s.mu.Unlock()
	if dup {
		return c.fatal(h, rejectProtocol, "initiator task tag already in use")
	}

	cdb := make([]byte, 16+len(ext))
	copy(cdb, h[32:48])
	copy(cdb[16:], ext)
	attr := scsi.TaskAttr(flags & 0x07)
	if attr <= 1 || attr > scsi.AttrACA {
		attr = scsi.AttrSimple
	}
	t := &task{itt: itt, cmdSN: cmdSN, immediate: immediate, lunRaw: h.LUN(), edtl: edtl}
	t.cmd = scsi.Command{
		Nexus: s.nexus, LUN: decodeLUN(t.lunRaw), Tag: itt, Attr: attr, CDB: cdb,
		ExpectedLength: edtl, Read: read, Write: write,
	}
	var early *scsi.Response
	if write && edtl > 0 {
		switch {
		case edtl > c.srv.cfg.MaxTransferLength:
			early = &scsi.Response{Status: scsi.StatusCheckCondition, Sense: senseInvalidField, Residual: int64(edtl)}
		default:
			s.mu.Lock()
			if s.writeBytes+int64(edtl) > c.srv.cfg.MaxSessionWriteBytes {
				early = &scsi.Response{Status: scsi.StatusTaskSetFull, Residual: int64(edtl)}
			} else {
				s.writeBytes += int64(edtl)
				t.writeBytes = int64(edtl)
			}
			s.mu.Unlock()
			if early == nil {
				t.buf = make([]byte, edtl)
			}
		}
	}
	if dsl > 0 {
		if t.buf != nil {
			err = c.rd.readData(t.buf[:dsl])
		} else {
			err = c.rd.discardData(dsl)
		}
		if err != nil {
			s.mu.Lock()
			s.writeBytes -= t.writeBytes
			s.mu.Unlock()
			if err == ErrDataDigest {
				return c.fatal(h, rejectDataDigest, "data digest error")
			}
			return err
		}
		t.recv = uint32(dsl)
	}
	if write && !final && edtl > uint32(dsl) {
		t.unsolOpen = true
		t.unsolNext = uint32(dsl)
		t.unsolEnd = min(c.params.FirstBurstLength, edtl)
		if t.unsolEnd <= t.unsolNext {
			t.unsolOpen = false
		}
	}
	t.nextR2TOff = uint32(dsl)

	s.mu.Lock()
	s.tasks[itt] = t
	if immediate {
		s.immOutstanding++
		if s.immOutstanding > maxImmediateCmds && early == nil {
			early = &scsi.Response{Status: scsi.StatusBusy}
		}
	}
	s.mu.Unlock()
	if early != nil {
		c.finish(t, early, false)
	}
	if immediate {
		c.issueR2Ts(t)
		c.submitImmediate(t)
		return nil
	}
	s.mu.Lock()
	now, more := s.insertLocked(cmdSN, seqItem{t: t})
	s.mu.Unlock()
	c.issueR2Ts(t)
	if now {
		c.queueTask(t)
	}
	return c.runReady(more)
}

// discard skips a data segment the connection does not want; a digest
// error still ends the connection.
func (c *conn) discard(h *BHS, n int) error {
	err := c.rd.discardData(n)
	if err == ErrDataDigest {
		return c.fatal(h, rejectDataDigest, "data digest error")
	}
	return err
}

// sequence runs (or holds) a non-SCSI, non-immediate PDU in CmdSN order.
func (c *conn) sequence(cmdSN uint32, it seqItem) error {
	s := c.sess
	s.mu.Lock()
	if !s.admitLocked(cmdSN) {
		s.mu.Unlock()
		c.log.Debug("iscsi: dropping PDU outside the CmdSN window", "cmdsn", cmdSN, "opcode", it.pdu.hdr.Opcode().String())
		return nil
	}
	now, more := s.insertLocked(cmdSN, it)
	s.mu.Unlock()
	if now {
		if err := c.runReady([]seqItem{it}); err != nil {
			return err
		}
	}
	return c.runReady(more)
}

// runReady processes items whose CmdSN turn has come, in order.
func (c *conn) runReady(items []seqItem) error {
	for _, it := range items {
		switch {
		case it.t != nil:
			c.queueTask(it.t)
		case it.pdu != nil:
			if err := c.execute(it.pdu); err != nil {
				return err
			}
		}
	}
	return nil
}

// queueTask appends t to the submit queue (its CmdSN turn has come).
func (c *conn) queueTask(t *task) {
	s := c.sess
	s.mu.Lock()
	if !t.finished {
		t.queued = true
		s.submitQ = append(s.submitQ, t)
	}
	s.mu.Unlock()
	c.trySubmit()
}

// trySubmit hands the Backend every command at the head of the submit
// queue whose data is complete, preserving CmdSN order.
func (c *conn) trySubmit() {
	s := c.sess
	for {
		s.mu.Lock()
		if len(s.submitQ) == 0 {
			s.mu.Unlock()
			return
		}
		t := s.submitQ[0]
		if !t.finished && !t.dataComplete() {
			s.mu.Unlock()
			return
		}
		n := copy(s.submitQ, s.submitQ[1:])
		s.submitQ[n] = nil
		s.submitQ = s.submitQ[:n]
		if t.finished {
			s.mu.Unlock()
			continue
		}
		t.submitted = true
		s.mu.Unlock()
		c.submit(t)
	}
}

func (c *conn) submitImmediate(t *task) {
	s := c.sess
	s.mu.Lock()
	ok := !t.finished && !t.submitted && t.dataComplete()
	if ok {
		t.submitted = true
	}
	s.mu.Unlock()
	if ok {
		c.submit(t)
	}
}

func (c *conn) submit(t *task) {
	if t.buf != nil {
		t.cmd.Data = t.buf[:t.recv]
	}
	c.sess.target.backend.Submit(&t.cmd, func(r *scsi.Response) { c.finish(t, r, true) })
}

// finish retires t and queues its response unless it was aborted. It is
// the Backend's done callback (inline: any goroutine, which then writes
// the response itself if the socket is free) and the reader's way to
// answer a command early (not inline: the reader never writes).
func (c *conn) finish(t *task, r *scsi.Response, inline bool) {
	defer func() {
		if p := recover(); p != nil {
			c.log.Error("iscsi: completion panic", "panic", p, "stack", string(debug.Stack()))
			c.close("completion panic")
		}
	}()
	s := c.sess
	s.mu.Lock()
	if t.finished {
		s.mu.Unlock()
		return
	}
	s.finishLocked(t)
	send := r != nil && !r.Aborted && !s.closed
	if send {
		// Queued under s.mu, after the window update, so the response
		// carries a MaxCmdSN that already counts this slot as free.
		c.push(outItem{kind: outSCSIResp, t: t, resp: r})
	}
	s.mu.Unlock()
	if send {
		c.kick(inline)
	}
}

// issueR2Ts solicits the data t still needs, within MaxBurstLength per
// R2T and MaxOutstandingR2T at a time, once unsolicited data is over.
func (c *conn) issueR2Ts(t *task) {
	s := c.sess
	s.mu.Lock()
	defer s.mu.Unlock()
	if t.finished || t.buf == nil || t.unsolOpen {
		return
	}
	for t.r2tOut < int(c.params.MaxOutstandingR2T) && t.nextR2TOff < t.edtl {
		l := min(c.params.MaxBurstLength, t.edtl-t.nextR2TOff)
		ttt := c.newTTT()
		s.r2ts[ttt] = &r2tState{t: t, next: t.nextR2TOff, end: t.nextR2TOff + l, ttt: ttt}
		t.r2tOut++
		var h BHS
		h.SetOpcode(OpR2T, false)
		h[1] = 0x80
		copy(h[8:16], t.lunRaw[:])
		h.setU32(offITT, t.itt)
		h.setU32(offTTT, ttt)
		h.setU32(offDataSN, t.r2tSN)
		h.setU32(offBufOff, t.nextR2TOff)
		h.setU32(offResidual, l)
		c.enqueue(outItem{hdr: h, sn: snPeek})
		t.r2tSN++
		t.nextR2TOff += l
	}
}

// handleDataOut places a Data-Out PDU's payload directly in its task's
// buffer after checking ITT, TTT, DataSN and offsets; anything outside
// what was solicited (or allowed unsolicited) ends the connection.
func (c *conn) handleDataOut(h *BHS) error {
	s := c.sess
	dsl := uint32(h.DataSegLen())
	itt, ttt := h.ITT(), h.u32(offTTT)
	dataSN, off := h.u32(offDataSN), h.u32(offBufOff)
	final := h.Final()
	if s.discovery {
		return c.fatal(h, rejectProtocol, "Data-Out in a discovery session")
	}
	s.mu.Lock()
	t := s.tasks[itt]
	if t == nil || t.finished || t.submitted || t.buf == nil {
		s.mu.Unlock()
		// Aborted, answered early or unknown: RFC 7143 lets us drop it.
		c.log.Debug("iscsi: discarding Data-Out for no pending task", "itt", itt)
		return c.discard(h, int(dsl))
	}
	var r *r2tState
	var why string   // a protocol error: the connection ends
	var sense []byte // a sequence error: only this command fails
	if ttt == reservedTag {
		switch {
		case !t.unsolOpen:
			why = "unsolicited Data-Out not expected"
		case uint64(off)+uint64(dsl) > uint64(t.unsolEnd):
			why = "unsolicited data beyond FirstBurstLength or EDTL"
		case dataSN != t.unsolDataSN:
			sense = senseDataSNError
		case off != t.unsolNext:
			sense = senseDataOffsetError
		}
	} else {
		r = s.r2ts[ttt]
		switch {
		case r == nil || r.t != t:
			why = "Data-Out for an unknown target transfer tag"
		case uint64(off)+uint64(dsl) > uint64(r.end):
			why = "Data-Out beyond the R2T's desired length"
		case dataSN != r.dataSN:
			sense = senseDataSNError
		case off != r.next:
			sense = senseDataOffsetError
		}
	}
	s.mu.Unlock()
	if why != "" {
		return c.fatal(h, rejectProtocol, why)
	}
	if sense != nil {
		// ErrorRecoveryLevel 0 cannot recover the sequence: end the
		// command with CHECK CONDITION and ignore the rest of its data.
		// The connection stays in step because every PDU is read whole.
		c.log.Info("iscsi: Data-Out sequence error; failing the command", "itt", itt,
			"datasn", dataSN, "offset", off)
		if err := c.discard(h, int(dsl)); err != nil {
			return err
		}
		c.finish(t, &scsi.Response{Status: scsi.StatusCheckCondition, Sense: sense, Residual: int64(t.edtl)}, false)
		return nil
	}
	// Only this goroutine writes t.buf before submission; safe unlocked.
	if err := c.rd.readData(t.buf[off : off+dsl]); err != nil {
		if err == ErrDataDigest {
			return c.fatal(h, rejectDataDigest, "data digest error")
		}
		return err
	}
	s.mu.Lock()
	if t.finished {
		s.mu.Unlock()
		return nil
	}
	t.recv += dsl
	if r == nil {
		t.unsolNext += dsl
		t.unsolDataSN++
		if final || t.unsolNext == t.unsolEnd {
			t.unsolOpen = false
			t.nextR2TOff = t.unsolNext
		}
	} else {
		r.next += dsl
		r.dataSN++
		if r.next == r.end {
			delete(s.r2ts, ttt)
			t.r2tOut--
		} else if final {
			why = "F bit before the end of the R2T sequence"
		}
	}
	s.mu.Unlock()
	if why != "" {
		return c.fatal(h, rejectProtocol, why)
	}
	c.issueR2Ts(t)
	if t.immediate {
		c.submitImmediate(t)
	} else {
		c.trySubmit()
	}
	return nil
}

// ---- Task management (RFC 7143 11.5) ----

const (
	tmfAbortTask    = 1
	tmfAbortTaskSet = 2
	tmfClearACA     = 3
	tmfClearTaskSet = 4
	tmfLUNReset     = 5
	tmfTargetWarm   = 6
	tmfTargetCold   = 7
	tmfTaskReassign = 8
)

// handleTMF runs a task management function on the reader goroutine,
// so commands behind it in CmdSN order wait, and answers only after the
// affected tasks are gone (the Backend's TMF calls return then).
func (c *conn) handleTMF(p *pendingPDU) error {
	h := &p.hdr
	s := c.sess
	fn := h[1] & 0x7f
	lun := decodeLUN(h.LUN())
	b := s.target.backend
	var resp scsi.TMFResponse
	sameLUN := func(t *task) bool { return t.cmd.LUN == lun && (t.queued || t.immediate) }
	all := func(t *task) bool { return t.queued || t.immediate }
	cold := false
	switch fn {
	case tmfAbortTask:
		var more []seqItem
		resp, more = c.abortTask(lun, h.u32(offTTT), h.u32(offCmdSN), h.u32(offRefCmdSN))
		if err := c.runReady(more); err != nil {
			return err
		}
	case tmfAbortTaskSet:
		s.mu.Lock()
		s.abortPendingLocked(sameLUN)
		s.mu.Unlock()
		resp = b.AbortTaskSet(s.nexus, lun)
	case tmfClearTaskSet:
		c.abortPendingAll(sameLUN)
		resp = b.ClearTaskSet(s.nexus, lun)
	case tmfLUNReset:
		c.abortPendingAll(sameLUN)
		resp = b.LogicalUnitReset(s.nexus, lun)
	case tmfTargetWarm, tmfTargetCold:
		c.abortPendingAll(all)
		cold = fn == tmfTargetCold
		resp = b.TargetReset(s.nexus, cold)
	case tmfTaskReassign:
		resp = scsi.TMFReassignNotSupp
	default: // CLEAR ACA, QUERY TASK, ... : not supported
		resp = scsi.TMFNotSupported
	}
	c.log.Info("iscsi: task management", "function", fn, "lun", lun, "response", resp)
	var r BHS
	r.SetOpcode(OpTaskMgmtResp, false)
	r[1] = 0x80
	r[2] = byte(resp)
	r.setU32(offITT, h.ITT())
	if !cold || resp != scsi.TMFComplete {
		c.enqueue(outItem{hdr: r, sn: snAdvance})
		return nil
	}
	// TARGET COLD RESET: answer, then drop every session of the target.
	for _, o := range c.srv.sessionsOf(s.target) {
		if o != s {
			o.conn.close("target cold reset")
		}
	}
	c.enqueue(outItem{hdr: r, sn: snAdvance, closeAfter: true})
	select {
	case <-c.closed:
	case <-time.After(closeDrainTimeout):
	}
	return io.EOF
}

// abortPendingAll retires matching not-yet-submitted tasks of every
// session of this target (for the functions that act on the whole LU or
// target, not only this nexus).
func (c *conn) abortPendingAll(match func(*task) bool) {
	for _, o := range c.srv.sessionsOf(c.sess.target) {
		o.mu.Lock()
		o.abortPendingLocked(match)
		o.mu.Unlock()
	}
}

// abortTask implements ABORT TASK including the RefCmdSN rule of
// RFC 7143 11.5.1: a task we never saw whose RefCmdSN lies in the window
// and before the TMF's own CmdSN is considered received (its CmdSN slot
// is consumed) and the answer is Function Complete; otherwise Task Does
// Not Exist.
func (c *conn) abortTask(lun uint64, rtt, tmfCmdSN, refCmdSN uint32) (scsi.TMFResponse, []seqItem) {
	s := c.sess
	s.mu.Lock()
	if t := s.tasks[rtt]; t != nil && !t.finished {
		if !t.submitted {
			s.finishLocked(t)
			s.mu.Unlock()
			return scsi.TMFComplete, nil
		}
		s.mu.Unlock()
		return s.target.backend.AbortTask(s.nexus, t.cmd.LUN, rtt), nil
	}
	defer s.mu.Unlock()
	if snInWindow(refCmdSN, s.expCmdSN, s.maxCmdSN) && snLess(refCmdSN, tmfCmdSN) {
		if _, held := s.held[refCmdSN]; !held {
			now, more := s.insertLocked(refCmdSN, seqItem{})
			_ = now
			return scsi.TMFComplete, more
		}
	}
	return scsi.TMFTaskNotExist, nil
}

package iscsi

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"runtime"
	"runtime/debug"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hablock/hablock/iscsi/scsi"
)

const (
	readBufSize  = 256 << 10
	writeBufSize = 256 << 10
	// closeDrainTimeout bounds how long a connection waits for its writer
	// to flush a final PDU (Logout Response, Reject) before closing.
	closeDrainTimeout = 5 * time.Second
	// maxImmediateCmds caps immediate (I bit) SCSI commands in flight per
	// session; they sit outside the CmdSN window. Beyond it: BUSY.
	maxImmediateCmds = 16
)

// Reject reasons (RFC 7143 11.17.1).
const (
	rejectDataDigest    = 0x02
	rejectSNACK         = 0x03
	rejectProtocol      = 0x04
	rejectNotSupported  = 0x05
	rejectImmediateFull = 0x06
	rejectInvalidField  = 0x09
)

// errProtocol: the initiator broke the protocol; the connection closes.
var errProtocol = errors.New("iscsi: protocol error")

// snMode says what the writer puts in a target PDU's StatSN field.
type snMode uint8

const (
	snNone    snMode = iota // field reserved (Data-In without status)
	snPeek                  // current StatSN, not advanced (R2T, NOP-In ping, ...)
	snAdvance               // a status-carrying PDU: StatSN++ after it
)

type outKind uint8

const (
	outPDU      outKind = iota // hdr + data, as built
	outSCSIResp                // Data-In PDUs and/or SCSI Response for t
)

// outItem is one entry of a connection's send queue.
type outItem struct {
	kind       outKind
	sn         snMode
	hdr        BHS
	data       []byte
	t          *task
	resp       *scsi.Response
	closeAfter bool // close the connection once this is on the wire
}

// conn is one TCP connection: login, then the full feature phase of its
// session. The reader runs on the serve goroutine; one writer goroutine
// owns the socket's write side; a pinger sends NOP-Ins on idle links.
type conn struct {
	srv *Server
	nc  net.Conn
	log *slog.Logger
	rd  *pduReader
	pw  pduWriter

	infoMu sync.Mutex
	ci     ConnInfo

	// Set by login, read-only afterwards.
	sess   *session
	params Params
	cid    uint16

	wmu     sync.Mutex
	wq      []outItem
	writing bool      // a goroutine is draining wq (guarded by wmu)
	wspare  []outItem // owned by the goroutine draining
	wake    chan struct{}

	closed     chan struct{}
	closeOnce  sync.Once
	writerDone chan struct{}

	ffp      atomic.Bool // login done; sess, params and the writer are set up
	statSN   uint32      // login goroutine, then the writer goroutine only
	nextTTT  atomic.Uint32
	lastRecv atomic.Int64 // unix nanos of the last PDU header read
	pingTTT  atomic.Uint32
	pingAt   atomic.Int64

	// Reader-only state of a Text Request exchange.
	textIn  []byte // accumulated C-bit request data
	textOut []byte // response bytes not yet sent (C-bit continuation)
	textTTT uint32
}

func newConn(s *Server, nc net.Conn) *conn {
	c := &conn{
		srv:    s,
		nc:     nc,
		log:    s.log.With("remote", nc.RemoteAddr().String()),
		wake:   make(chan struct{}, 1),
		closed: make(chan struct{}),
	}
	c.ci.LocalAddr, c.ci.RemoteAddr = nc.LocalAddr(), nc.RemoteAddr()
	c.rd = newPDUReader(nc, readBufSize, Limits{
		MaxDataSegment: int(max(s.cfg.MaxRecvDataSegmentLength, defaultMRDSL)),
		MaxAHS:         MaxAHSLen,
	})
	c.pw.w = bufio.NewWriterSize(nc, writeBufSize)
	return c
}

func (c *conn) info() ConnInfo {
	c.infoMu.Lock()
	defer c.infoMu.Unlock()
	return c.ci
}

func (c *conn) setInfo(f func(*ConnInfo)) {
	c.infoMu.Lock()
	f(&c.ci)
	c.infoMu.Unlock()
}

// close drops the connection; safe from any goroutine, idempotent.
func (c *conn) close(reason string) {
	c.closeOnce.Do(func() {
		c.log.Debug("iscsi: closing connection", "reason", reason)
		// Mark closed first, so a reader that fails on the closed socket
		// knows the close was ours and does not log it as an error.
		close(c.closed)
		c.nc.Close()
	})
}

func (c *conn) isClosed() bool {
	select {
	case <-c.closed:
		return true
	default:
		return false
	}
}

// serve runs the connection to its end. A panic anywhere on this
// goroutine ends only this connection.
func (c *conn) serve() {
	defer c.srv.removeConn(c)
	defer func() {
		if r := recover(); r != nil {
			c.log.Error("iscsi: connection panic", "panic", r, "stack", string(debug.Stack()))
		}
		c.close("connection ended")
		if c.writerDone != nil {
			<-c.writerDone
		}
		if c.sess != nil {
			c.sess.teardown()
		}
	}()
	if err := c.login(); err != nil {
		c.log.Info("iscsi: login failed", "err", err)
		return
	}
	c.writerDone = make(chan struct{})
	go c.writer()
	c.ffp.Store(true)
	if c.srv.cfg.NopInInterval > 0 {
		go c.pinger()
	}
	err := c.readLoop()
	switch {
	case errors.Is(err, io.EOF), c.isClosed():
		c.log.Debug("iscsi: connection closed", "err", err)
	default:
		c.log.Warn("iscsi: dropping connection", "err", err)
	}
}

// ---- writer ----

// enqueue queues a PDU and lets the writer goroutine send it. It never
// blocks: the queue is bounded by the CmdSN window (each command produces
// at most a response and MaxOutstandingR2T R2Ts) plus the replies to
// immediate PDUs. The reader uses this, so it never waits on the socket.
func (c *conn) enqueue(it outItem) {
	c.push(it)
	c.kick(false)
}

func (c *conn) push(it outItem) {
	c.wmu.Lock()
	c.wq = append(c.wq, it)
	c.wmu.Unlock()
}

// kick gets queued PDUs onto the wire. inline (used by Backend
// completions, whose goroutines hold nothing) drains the queue on the
// calling goroutine when no one else is writing, which saves a goroutine
// hand-off per response; otherwise the writer goroutine is woken. At most
// one goroutine drains at a time (c.writing).
func (c *conn) kick(inline bool) {
	if !inline {
		select {
		case c.wake <- struct{}{}:
		default:
		}
		return
	}
	c.wmu.Lock()
	if c.writing || len(c.wq) == 0 {
		c.wmu.Unlock()
		return
	}
	c.writing = true
	c.wmu.Unlock()
	c.drain()
}

// writer is the connection's writer goroutine: it drains the queue when
// woken and no completion is already draining it.
func (c *conn) writer() {
	defer close(c.writerDone)
	for {
		select {
		case <-c.wake:
		case <-c.closed:
			return
		}
		c.wmu.Lock()
		if c.writing || len(c.wq) == 0 {
			c.wmu.Unlock()
			continue
		}
		c.writing = true
		c.wmu.Unlock()
		if !c.drain() {
			return
		}
	}
}

// drain writes queued PDUs until the queue is empty, flushing the
// buffered writer only then (one flush per burst of responses). The
// caller set c.writing. It reports false once the connection is done.
func (c *conn) drain() (ok bool) {
	defer func() {
		if r := recover(); r != nil {
			c.log.Error("iscsi: writer panic", "panic", r, "stack", string(debug.Stack()))
			c.close("writer panic")
			ok = false
		}
	}()
	yielded := false
	for {
		c.wmu.Lock()
		if len(c.wq) == 0 && !yielded {
			// Give completions that are runnable right now (several
			// commands finished by one event, such as one replication
			// ack for many writes) one chance to queue their
			// responses before the system call, so they share it.
			c.wmu.Unlock()
			yielded = true
			runtime.Gosched()
			continue
		}
		if len(c.wq) == 0 {
			c.wmu.Unlock()
			if err := c.pw.w.Flush(); err != nil {
				c.close("write: " + err.Error())
				return false // c.writing stays set: nobody writes again
			}
			c.wmu.Lock()
			if len(c.wq) == 0 {
				c.writing = false
				c.wmu.Unlock()
				return true
			}
		}
		// Swap the queue with the spare slice: producers append to the
		// other array while this batch is written.
		batch := c.wq
		c.wq = c.wspare[:0]
		c.wmu.Unlock()
		for i := range batch {
			it := &batch[i]
			if err := c.writeItem(it); err != nil {
				c.close("write: " + err.Error())
				return false
			}
			if it.closeAfter {
				c.pw.w.Flush()
				c.close("final PDU sent")
				return false
			}
			*it = outItem{} // drop references
		}
		c.wspare = batch[:0]
	}
}

// stamp fills StatSN, ExpCmdSN and MaxCmdSN (offsets 24, 28, 32 in every
// target PDU).
func (c *conn) stamp(h *BHS, mode snMode) {
	switch mode {
	case snPeek:
		h.setU32(offCmdSN, c.statSN)
	case snAdvance:
		h.setU32(offCmdSN, c.statSN)
		c.statSN++
	}
	exp, maxSN := c.sess.window()
	h.setU32(offExpStat, exp)
	h.setU32(offMaxCmdSN, maxSN)
}

func (c *conn) writeItem(it *outItem) error {
	switch it.kind {
	case outSCSIResp:
		return c.writeSCSIResponse(it.t, it.resp)
	default:
		c.stamp(&it.hdr, it.sn)
		return c.pw.writePDU(&it.hdr, it.data)
	}
}

// writeSCSIResponse sends the Data-In PDUs of a read and its status:
// folded into the last Data-In (S bit) when the status is GOOD without
// sense, otherwise as a SCSI Response PDU (RFC 7143 11.4, 11.7).
func (c *conn) writeSCSIResponse(t *task, r *scsi.Response) error {
	data := r.Data
	residual := r.Residual
	if uint64(len(data)) > uint64(t.edtl) {
		// The core promised not to; never send more than asked for.
		residual = -int64(len(data) - int(t.edtl))
		data = data[:t.edtl]
	}
	resFlags, resCount := residualFields(residual)
	var dataSN uint32
	if len(data) > 0 && t.cmd.Read {
		statusInData := r.Status == scsi.StatusGood && len(r.Sense) == 0
		mrdsl := int(c.params.MaxRecvDSLInitiator)
		burst := int(c.params.MaxBurstLength)
		inBurst := 0
		for off := 0; off < len(data); {
			n := min(mrdsl, len(data)-off, burst-inBurst)
			last := off+n == len(data)
			var h BHS
			h.SetOpcode(OpSCSIDataIn, false)
			inBurst += n
			if last || inBurst == burst {
				h[1] |= 0x80 // F: end of this sequence
				inBurst = 0
			}
			mode := snNone
			if last && statusInData {
				h[1] |= 0x01 | resFlags // S
				h[3] = byte(r.Status)
				h.setU32(offResidual, resCount)
				mode = snAdvance
			}
			copy(h[8:16], t.lunRaw[:])
			h.setU32(offITT, t.itt)
			h.setU32(offTTT, reservedTag)
			h.setU32(offDataSN, dataSN)
			h.setU32(offBufOff, uint32(off))
			c.stamp(&h, mode)
			if err := c.pw.writePDU(&h, data[off:off+n]); err != nil {
				return err
			}
			dataSN++
			off += n
		}
		if statusInData {
			return nil
		}
	}
	var h BHS
	h.SetOpcode(OpSCSIResp, false)
	h[1] = 0x80 | resFlags
	h[2] = 0x00 // command completed at target
	h[3] = byte(r.Status)
	h.setU32(offITT, t.itt)
	if t.cmd.Write {
		dataSN = t.r2tSN // ExpDataSN counts R2Ts for writes
	}
	h.setU32(offDataSN, dataSN)
	h.setU32(offResidual, resCount)
	c.stamp(&h, snAdvance)
	var seg []byte
	if len(r.Sense) > 0 {
		sense := r.Sense[:min(len(r.Sense), 252)]
		seg = make([]byte, 2+len(sense))
		seg[0], seg[1] = byte(len(sense)>>8), byte(len(sense))
		copy(seg[2:], sense)
	}
	return c.pw.writePDU(&h, seg)
}

// residualFields maps Response.Residual to the U/O flag bits and the
// ResidualCount field.
func residualFields(res int64) (flags byte, count uint32) {
	switch {
	case res > 0:
		return 0x02, uint32(min(res, 0xffffffff))
	case res < 0:
		return 0x04, uint32(min(-res, 0xffffffff))
	}
	return 0, 0
}

// ---- pinger ----

// pinger sends a NOP-In (TTT != 0xffffffff) when nothing was received for
// NopInInterval, and drops the connection when the NOP-Out answer does
// not arrive within NopInTimeout.
func (c *conn) pinger() {
	defer func() {
		if r := recover(); r != nil {
			c.log.Error("iscsi: pinger panic", "panic", r, "stack", string(debug.Stack()))
			c.close("pinger panic")
		}
	}()
	interval, timeout := c.srv.cfg.NopInInterval, c.srv.cfg.NopInTimeout
	t := time.NewTimer(interval)
	defer t.Stop()
	for {
		select {
		case <-c.closed:
			return
		case <-t.C:
		}
		now := time.Now()
		if c.pingTTT.Load() != 0 {
			waited := now.Sub(time.Unix(0, c.pingAt.Load()))
			if waited >= timeout {
				c.log.Warn("iscsi: NOP-In ping not answered; dropping connection", append([]any{"timeout", timeout}, c.sess.stateAttrs()...)...)
				c.close("nop timeout")
				return
			}
			t.Reset(timeout - waited)
			continue
		}
		idle := now.Sub(time.Unix(0, c.lastRecv.Load()))
		if idle < interval {
			t.Reset(interval - idle)
			continue
		}
		ttt := c.newTTT()
		c.pingAt.Store(now.UnixNano())
		c.pingTTT.Store(ttt)
		var h BHS
		h.SetOpcode(OpNOPIn, false)
		h[1] = 0x80
		h.setU32(offITT, reservedTag)
		h.setU32(offTTT, ttt)
		c.enqueue(outItem{hdr: h, sn: snPeek})
		t.Reset(timeout)
	}
}

// newTTT returns a target transfer tag unique on this connection (never
// 0 or 0xffffffff).
func (c *conn) newTTT() uint32 {
	for {
		v := c.nextTTT.Add(1)
		if v != 0 && v != reservedTag {
			return v
		}
	}
}

// ---- reader ----

func (c *conn) readLoop() error {
	var h BHS
	for {
		ahs, err := c.rd.readHeader(&h)
		if err != nil {
			return err
		}
		c.lastRecv.Store(time.Now().UnixNano())
		if err := c.dispatch(&h, ahs); err != nil {
			return err
		}
	}
}

// readSegment reads the data segment of h into a new buffer (bounded by
// the reader's limit, already checked against the header).
func (c *conn) readSegment(h *BHS) ([]byte, error) {
	n := h.DataSegLen()
	if n == 0 {
		return nil, nil
	}
	b := make([]byte, n)
	return b, c.rd.readData(b)
}

// fatal sends a Reject (when reason != 0) and then closes the connection
// once it is on the wire. It returns errProtocol wrapped with why, ending
// the read loop.
func (c *conn) fatal(h *BHS, reason byte, why string) error {
	if reason != 0 {
		c.enqueue(c.rejectItem(h, reason, true))
		select {
		case <-c.closed:
		case <-time.After(closeDrainTimeout):
		}
	}
	return fmt.Errorf("%w: %s (%v)", errProtocol, why, h.Opcode())
}

func (c *conn) rejectItem(h *BHS, reason byte, closeAfter bool) outItem {
	var r BHS
	r.SetOpcode(OpReject, false)
	r[1] = 0x80
	r[2] = reason
	r.setU32(offITT, reservedTag)
	hdr := *h
	return outItem{hdr: r, data: hdr[:], sn: snAdvance, closeAfter: closeAfter}
}

func (c *conn) dispatch(h *BHS, ahs []byte) error {
	op := h.Opcode()
	switch op {
	case OpSCSIDataOut:
		return c.handleDataOut(h)
	case OpSCSICmd:
		return c.handleSCSICmd(h, ahs)
	}
	data, err := c.readSegment(h)
	if errors.Is(err, ErrDataDigest) {
		return c.fatal(h, rejectDataDigest, "data digest error")
	}
	if err != nil {
		return err
	}
	switch op {
	case OpNOPOut, OpTaskMgmtReq, OpTextReq, OpLogoutReq:
		if op == OpNOPOut {
			if ttt := h.u32(offTTT); ttt != reservedTag {
				c.pingTTT.CompareAndSwap(ttt, 0)
			}
		}
		if c.sess.discovery && (op == OpTaskMgmtReq) {
			c.enqueue(c.rejectItem(h, rejectProtocol, false))
			return nil
		}
		p := &pendingPDU{hdr: *h, data: data}
		if h.Immediate() {
			return c.execute(p)
		}
		return c.sequence(h.u32(offCmdSN), seqItem{pdu: p})
	case OpSNACKReq:
		// ErrorRecoveryLevel 0: SNACK is not supported.
		c.enqueue(c.rejectItem(h, rejectSNACK, false))
		return nil
	case OpLoginReq:
		c.enqueue(c.rejectItem(h, rejectProtocol, false))
		return nil
	default:
		c.log.Info("iscsi: rejecting unsupported opcode", "opcode", op.String())
		c.enqueue(c.rejectItem(h, rejectNotSupported, false))
		return nil
	}
}

// pendingPDU is a non-SCSI initiator PDU waiting for its CmdSN turn.
type pendingPDU struct {
	hdr  BHS
	data []byte
}

// execute runs a NOP-Out, TMF, Text or Logout request in CmdSN order (or
// at once if immediate).
func (c *conn) execute(p *pendingPDU) error {
	switch p.hdr.Opcode() {
	case OpNOPOut:
		return c.handleNOPOut(p)
	case OpTaskMgmtReq:
		return c.handleTMF(p)
	case OpTextReq:
		return c.handleText(p)
	case OpLogoutReq:
		return c.handleLogout(p)
	}
	return nil
}

func (c *conn) handleNOPOut(p *pendingPDU) error {
	itt := p.hdr.ITT()
	if itt == reservedTag {
		return nil // a ping answer or a bare CmdSN carrier: no reply
	}
	var h BHS
	h.SetOpcode(OpNOPIn, false)
	h[1] = 0x80
	copy(h[8:16], p.hdr[8:16])
	h.setU32(offITT, itt)
	h.setU32(offTTT, reservedTag)
	data := p.data
	if len(data) > int(c.params.MaxRecvDSLInitiator) {
		data = data[:c.params.MaxRecvDSLInitiator]
	}
	c.enqueue(outItem{hdr: h, data: data, sn: snAdvance})
	return nil
}

func (c *conn) handleLogout(p *pendingPDU) error {
	reason := p.hdr[1] & 0x7f
	cid := p.hdr.u16(offTTT)
	var resp byte
	switch {
	case reason == 0: // close the session
	case reason == 1 && cid == c.cid: // close this connection (= the session here)
	case reason == 1:
		resp = 1 // CID not found
	case reason == 2:
		resp = 2 // connection recovery is not supported
	default:
		c.enqueue(c.rejectItem(&p.hdr, rejectInvalidField, false))
		return nil
	}
	var h BHS
	h.SetOpcode(OpLogoutResp, false)
	h[1] = 0x80
	h[2] = resp
	h.setU32(offITT, p.hdr.ITT())
	if resp != 0 {
		c.enqueue(outItem{hdr: h, sn: snAdvance})
		return nil
	}
	c.log.Debug("iscsi: logout", "reason", reason)
	c.enqueue(outItem{hdr: h, sn: snAdvance, closeAfter: true})
	select {
	case <-c.closed:
	case <-time.After(closeDrainTimeout):
	}
	return io.EOF
}

// requestLogout sends the Async Message "target requests logout" with
// Parameter3 = secs (RFC 7143 11.9.1). It reports false when the
// connection is not in the full feature phase.
func (c *conn) requestLogout(secs uint16) bool {
	if !c.ffp.Load() {
		return false
	}
	var h BHS
	h.SetOpcode(OpAsyncMsg, false)
	h[1] = 0x80
	h.setU32(offITT, reservedTag)
	h[36] = 1 // AsyncEvent: target requests logout
	h.setU16(42, secs)
	c.enqueue(outItem{hdr: h, sn: snAdvance})
	return true
}

// ---- Text Request (full feature phase) ----

func (c *conn) handleText(p *pendingPDU) error {
	h := &p.hdr
	itt, ttt := h.ITT(), h.u32(offTTT)
	cont := h[1]&0x40 != 0
	if ttt != reservedTag {
		// The initiator asks for the next part of our response.
		if ttt != c.textTTT || c.textOut == nil {
			c.enqueue(c.rejectItem(h, rejectInvalidField, false))
			return nil
		}
		c.sendTextChunk(itt, h)
		return nil
	}
	c.textOut = nil
	if len(c.textIn)+len(p.data) > MaxTextLen {
		c.textIn = nil
		return c.fatal(h, rejectProtocol, "text request too long")
	}
	c.textIn = append(c.textIn, p.data...)
	if cont {
		c.textTTT = c.newTTT()
		var r BHS
		r.SetOpcode(OpTextResp, false)
		copy(r[8:16], h[8:16])
		r.setU32(offITT, itt)
		r.setU32(offTTT, c.textTTT)
		c.enqueue(outItem{hdr: r, sn: snAdvance})
		return nil
	}
	in := c.textIn
	c.textIn = nil
	kvs, err := ParseText(in)
	if err != nil {
		return c.fatal(h, rejectProtocol, err.Error())
	}
	var out []KV
	neg := NewNegState(c.srv.cfg.offer(), c.sess.discovery, PhaseFullFeature)
	neg.Params = c.params
	for _, kv := range kvs {
		if kv.Key == "SendTargets" {
			out = append(out, c.sendTargets(kv.Value)...)
			continue
		}
		out = append(out, neg.Negotiate([]KV{kv})...)
	}
	c.textOut = AppendText(make([]byte, 0, 256), out)
	c.textTTT = c.newTTT()
	c.sendTextChunk(itt, h)
	return nil
}

// sendTextChunk sends as much of c.textOut as fits in the initiator's
// MaxRecvDataSegmentLength, with C=1 and a TTT when more follows.
func (c *conn) sendTextChunk(itt uint32, req *BHS) {
	var r BHS
	r.SetOpcode(OpTextResp, false)
	copy(r[8:16], req[8:16])
	r.setU32(offITT, itt)
	chunk := c.textOut
	if max := int(c.params.MaxRecvDSLInitiator); len(chunk) > max {
		chunk = chunk[:max]
		c.textOut = c.textOut[max:]
		r[1] = 0x40 // C
		r.setU32(offTTT, c.textTTT)
	} else {
		c.textOut = nil
		r[1] = 0x80 // F
		r.setU32(offTTT, reservedTag)
	}
	c.enqueue(outItem{hdr: r, data: chunk, sn: snAdvance})
}

// sendTargets answers SendTargets=All|<name>|"" (RFC 7143 Appendix C)
// with TargetName and TargetAddress=<local ip>:<port>,<tpgt> pairs.
func (c *conn) sendTargets(v string) []KV {
	var names []string
	switch {
	case v == "All":
		names = c.srv.targetNames()
	case v == "" && c.sess.target != nil:
		names = []string{c.sess.target.name}
	case v != "":
		if t := c.srv.lookupTarget(v); t != nil {
			names = []string{t.name}
		}
	}
	addr := c.nc.LocalAddr().String()
	if ta, ok := c.nc.LocalAddr().(*net.TCPAddr); ok {
		addr = net.JoinHostPort(ta.IP.String(), fmt.Sprint(ta.Port))
	}
	out := make([]KV, 0, 2*len(names))
	for _, n := range names {
		out = append(out, KV{"TargetName", n}, KV{"TargetAddress", fmt.Sprintf("%s,%d", addr, TPGT)})
	}
	return out
}

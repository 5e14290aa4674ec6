package replication

import (
	"bufio"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"runtime"
	"sync"
	"sync/atomic"
	"time"
)

// Request ID spaces on one link: plain writes count up from 1; resync
// data and remote reads set a high bit so their acks cannot be confused.
const (
	idResync uint64 = 1 << 63
	idRead   uint64 = 1 << 62
)

// link is one established (or establishing) connection to the peer.
//
// Goroutines, all started by activate and waited for by Attach: reader
// (owns reads from conn and dispatch), writer (owns writes to conn after
// the handshake), pinger (liveness, barriers, request timeouts),
// resyncer (sweeps the bitmap when this side is sync source), watcher
// (ctx and Stop), plus the receiver's appliers. Every one of them exits
// once dead is closed.
type link struct {
	v     *Volume
	conn  net.Conn
	br    *bufio.Reader // buffers reads from conn: one syscall for many frames
	log   *slog.Logger
	proto Protocol

	sendMu  sync.Mutex // orders seq numbers, epochs and the send queue
	sendSeq uint64
	// slots bounds the frames queued but not yet written: a sender
	// takes one (blocking while the queue is full), the drainer gives
	// it back once the frame is in the socket buffer.
	slots   chan struct{}
	recvSeq uint64 // reader goroutine only

	// The send queue (see kickSend and drain): frames in sequence order,
	// written by whoever sets writing, either the writer goroutine or
	// a sender draining inline.
	wmu     sync.Mutex
	wq      [][]byte
	wspare  [][]byte // the previous batch's slice, reused
	writing bool
	wake    chan struct{} // wakes the writer goroutine
	bw      *bufio.Writer // owned by whoever set writing
	sentSeq atomic.Uint64 // sequence number of the last frame flushed

	// acks collects WriteAck IDs of writes and resync data the reader
	// applied inline (protocol C), sent as one frame when no further
	// frame is buffered (see flushAcks). Reader goroutine only.
	acks []uint64

	dead     chan struct{} // closed by fail
	failOnce sync.Once
	err      error         // why; written before dead is closed
	finished chan struct{} // closed by Attach after teardown

	wg        sync.WaitGroup
	kick      chan struct{} // wakes the resyncer
	resyncSem chan struct{} // unacked ResyncData / VerifyRequest
	recv      receiver
	nextSync  time.Time // resyncer only: rate limiter

	mu sync.Mutex // guards the fields below
	// INVARIANT: once closed, nothing is added to the maps.
	closed   bool
	nextID   uint64
	writes   map[uint64]*pendingWrite // writes not yet known on the peer's disk
	epoch    uint64
	epochIDs map[uint64][]uint64 // protocols A/B: write IDs per open epoch
	epochN   int
	flushes  map[uint64]*pendingFlush
	resyncs  map[uint64]resyncReq
	// forceData marks ranges whose checksums differed: the next pass
	// sends their data (ResyncChecksums). Nil until needed.
	forceData *Bitmap
	verifies  map[uint64]chan *VerifyReply
	reads     map[uint64]*pendingRead
	// resyncFailures counts ResyncData the peer failed to write.
	resyncFailures int
}

type pendingWrite struct {
	off, n    uint64
	start     time.Time
	done      chan error // buffered 1; sent to once
	signalled bool       // under link.mu
	// al is released once the write leaves writes: acked on the peer's
	// disk, or marked out of sync (nil without an activity log).
	al *alRef
}

type pendingFlush struct {
	start time.Time
	done  chan error
}

type pendingRead struct {
	buf  []byte
	done chan error
}

func newLink(v *Volume, conn net.Conn) *link {
	l := &link{
		v: v, conn: conn, proto: v.cfg.Protocol,
		br:        bufio.NewReaderSize(conn, 64<<10),
		log:       v.log.With("peer", conn.RemoteAddr().String()),
		slots:     make(chan struct{}, v.cfg.MaxInflightWrites+2*v.cfg.ResyncInflight+64),
		wake:      make(chan struct{}, 1),
		dead:      make(chan struct{}),
		finished:  make(chan struct{}),
		kick:      make(chan struct{}, 1),
		resyncSem: make(chan struct{}, v.cfg.ResyncInflight),
		writes:    make(map[uint64]*pendingWrite),
		epochIDs:  make(map[uint64][]uint64),
		flushes:   make(map[uint64]*pendingFlush),
		resyncs:   make(map[uint64]resyncReq),
		verifies:  make(map[uint64]chan *VerifyReply),
		reads:     make(map[uint64]*pendingRead),
	}
	l.bw = bufio.NewWriterSize(conn, 256<<10)
	l.recv.l = l
	l.recv.sem = make(chan struct{}, v.cfg.MaxInflightWrites+v.cfg.ResyncInflight)
	return l
}

// fail marks the link dead (first reason wins) and closes the socket,
// which unblocks the reader and writer.
func (l *link) fail(err error) {
	l.failOnce.Do(func() {
		l.err = err
		close(l.dead)
		l.conn.Close()
	})
}

func (l *link) isDead() bool {
	select {
	case <-l.dead:
		return true
	default:
		return false
	}
}

// ---- framing ----

// writeDirect sends m on the socket; only before the writer runs.
func (l *link) writeDirect(m Message) error {
	l.sendSeq++
	b, err := AppendFrame(nil, l.sendSeq, 0, m)
	if err != nil {
		return err
	}
	_, err = l.conn.Write(b)
	return err
}

// readFrame reads one frame and checks its sequence number; only one
// goroutine reads at a time (Attach, then the reader).
func (l *link) readFrame() (Frame, error) {
	f, _, err := l.readFrameBuf()
	return f, err
}

// readFrameBuf is readFrame that also returns the buffer f aliases; a
// data frame's buffer comes from the frame pools (see putFrameBuf).
func (l *link) readFrameBuf() (Frame, []byte, error) {
	var buf []byte
	// Only a size hint: ReadFrame checks the header (CRC, length
	// bound) before using the buffer.
	if hdr, err := l.br.Peek(HeaderSize); err == nil {
		if n := int(binary.BigEndian.Uint32(hdr[20:24])); n <= MaxPayload {
			buf = getFrameBuf(HeaderSize + n)
		}
	}
	f, buf, err := ReadFrame(l.br, MaxPayload, buf)
	if err != nil {
		return f, buf, err
	}
	if f.Seq != l.recvSeq+1 {
		return f, buf, fmt.Errorf("%w: sequence %d, want %d", ErrMalformed, f.Seq, l.recvSeq+1)
	}
	l.recvSeq = f.Seq
	return f, buf, nil
}

// send queues m for the writer. It fails only when the link is dead.
func (l *link) send(m Message) error {
	l.sendMu.Lock()
	err := l.sendLocked(m)
	l.sendMu.Unlock()
	l.kickSend(false)
	return err
}

// trySend queues m unless the queue is full.
func (l *link) trySend(m Message) {
	l.sendMu.Lock()
	if l.isDead() || len(l.slots) == cap(l.slots) {
		l.sendMu.Unlock()
		return
	}
	l.sendLocked(m) // cannot block: sendMu is held and there is room
	l.sendMu.Unlock()
	l.kickSend(false)
}

// sendLocked encodes m and queues it; the caller kicks the queue once
// it released sendMu.
func (l *link) sendLocked(m Message) error {
	if l.isDead() {
		return fmt.Errorf("send %v: %w", m.Type(), ErrPeerGone)
	}
	b, err := AppendFrame(getFrameBuf(frameSizeHint(m)), l.sendSeq+1, 0, m)
	if err != nil {
		l.fail(fmt.Errorf("encode %v: %w", m.Type(), err))
		return err
	}
	return l.enqueueLocked(b, m.Type())
}

// enqueueLocked appends a sealed frame to the send queue (sendMu held,
// which keeps the queue in sequence order), waiting for a slot.
func (l *link) enqueueLocked(b []byte, t MsgType) error {
	select {
	case l.slots <- struct{}{}:
	case <-l.dead:
		return fmt.Errorf("send %v: %w", t, ErrPeerGone)
	}
	l.sendSeq++
	l.wmu.Lock()
	l.wq = append(l.wq, b)
	l.wmu.Unlock()
	return nil
}

// sendFrame queues a frame prepared with sealPayload, setting its
// sequence number; like send, it fails only when the link is dead.
func (l *link) sendFrame(b []byte, t MsgType) error {
	l.sendMu.Lock()
	if l.isDead() {
		l.sendMu.Unlock()
		return fmt.Errorf("send %v: %w", t, ErrPeerGone)
	}
	sealHeader(b, l.sendSeq+1)
	err := l.enqueueLocked(b, t)
	l.sendMu.Unlock()
	l.kickSend(false)
	return err
}

// kickSend gets queued frames onto the wire. With inline set the caller
// drains the queue itself when no one else is writing, which saves a
// goroutine hand-off (and, for a replicated write, puts the frame on the
// wire before the local write is issued rather than after); otherwise
// the writer goroutine is woken. At most one goroutine writes at a time
// (l.writing); a frame queued while someone writes is written by that
// drainer before it stops, so nothing waits for a later kickSend.
func (l *link) kickSend(inline bool) {
	l.wmu.Lock()
	if l.writing || len(l.wq) == 0 {
		l.wmu.Unlock()
		return
	}
	if !inline {
		l.wmu.Unlock()
		select {
		case l.wake <- struct{}{}:
		default:
		}
		return
	}
	l.writing = true
	l.wmu.Unlock()
	l.drain()
}

// drain writes queued frames through the buffered writer until the
// queue is empty, flushing only then (or every MiB), so that frames
// queued meanwhile by concurrent senders share a system call. The caller
// set l.writing; drain clears it. It reports false once the link failed.
func (l *link) drain() bool {
	l.conn.SetWriteDeadline(time.Now().Add(l.v.cfg.Timeout))
	n, yielded := 0, false
	var last uint64 // sequence number of the last frame written to bw
	for {
		l.wmu.Lock()
		batch := l.wq
		if len(batch) > 0 {
			l.wq, l.wspare = l.wspare[:0], nil
		}
		l.wmu.Unlock()
		if len(batch) == 0 {
			if n > 0 && !yielded {
				// Give concurrent senders (other writers, acks
				// being produced right now) one chance to queue
				// before the system call, so their frames share it.
				yielded = true
				runtime.Gosched()
				continue
			}
			if err := l.bw.Flush(); err != nil {
				return l.drainFailed(err)
			}
			l.sentSeq.Store(last)
			l.v.bytesSent.Add(uint64(n))
			l.wmu.Lock()
			if len(l.wq) > 0 {
				// Queued between the flush and now: ours to write.
				l.wmu.Unlock()
				n, yielded = 0, true
				continue
			}
			l.writing = false
			l.wmu.Unlock()
			return true
		}
		for i, b := range batch {
			last = binary.BigEndian.Uint64(b[12:20])
			if _, err := l.bw.Write(b); err != nil {
				return l.drainFailed(err)
			}
			n += len(b)
			putFrameBuf(b) // bw copied it or wrote it out
			batch[i] = nil
			<-l.slots
		}
		l.wmu.Lock()
		l.wspare = batch[:0]
		l.wmu.Unlock()
		if n >= 1<<20 {
			if err := l.bw.Flush(); err != nil {
				return l.drainFailed(err)
			}
			l.v.bytesSent.Add(uint64(n))
			n = 0
		}
	}
}

// drainFailed fails the link after a write error; l.writing stays set,
// so nothing writes to the connection again.
func (l *link) drainFailed(err error) bool {
	l.fail(fmt.Errorf("%w: send: %w", ErrPeerGone, err))
	return false
}

// ---- primary-side requests ----

// startWrite registers and queues a replicated write; nil if the link
// is gone (the caller then marks the range out of sync).
func (l *link) startWrite(off, n uint64, data []byte, discard bool, al *alRef) *pendingWrite {
	l.sendMu.Lock()
	l.mu.Lock()
	if l.closed || l.isDead() {
		l.mu.Unlock()
		l.sendMu.Unlock()
		return nil
	}
	l.nextID++
	id := l.nextID
	pw := &pendingWrite{off: off, n: n, start: time.Now(), done: make(chan error, 1), al: al}
	l.writes[id] = pw
	if l.proto != ProtocolC {
		l.epochIDs[l.epoch] = append(l.epochIDs[l.epoch], id)
		l.epochN++
	}
	l.mu.Unlock()
	// An error here means the link died; teardown finds pw in the map.
	if discard {
		l.sendLocked(&Discard{ID: id, Offset: off, Length: uint32(n)})
	} else {
		l.sendLocked(&Write{Offset: off, ID: id, Data: data})
	}
	l.sendMu.Unlock()
	// A small write goes on the wire before the caller's local write
	// starts, so that both run at once (the caller holds nothing that
	// a drain could need); a large one is left to the writer goroutine,
	// whose socket write then overlaps the caller's local write.
	l.kickSend(discard || len(data) <= inlineSendMax)
	return pw
}

// inlineSendMax is the largest write whose frame the writing goroutine
// sends itself (see startWrite).
const inlineSendMax = 64 << 10

// waitWrite waits for the peer's side of a write: nil once it is on the
// peer (C) or received (B); with A at once. An error wrapping
// ErrMetadata says the peer lost it and the range could not be recorded
// out of sync.
func (l *link) waitWrite(pw *pendingWrite) error {
	if l.proto == ProtocolA {
		return nil
	}
	return <-pw.done
}

// sendBarrier closes the current epoch if it holds writes (A and B).
func (l *link) sendBarrier() {
	l.sendMu.Lock()
	l.mu.Lock()
	if l.epochN == 0 || l.closed {
		l.mu.Unlock()
		l.sendMu.Unlock()
		return
	}
	nr := l.epoch
	l.epoch++
	l.epochN = 0
	l.mu.Unlock()
	l.sendLocked(&Barrier{Nr: nr})
	l.sendMu.Unlock()
	l.kickSend(false)
}

func (l *link) startFlush() chan error {
	l.sendMu.Lock()
	l.mu.Lock()
	if l.closed || l.isDead() {
		l.mu.Unlock()
		l.sendMu.Unlock()
		return nil
	}
	l.nextID++
	id := l.nextID
	pf := &pendingFlush{start: time.Now(), done: make(chan error, 1)}
	l.flushes[id] = pf
	l.mu.Unlock()
	l.sendLocked(&Flush{ID: id})
	l.sendMu.Unlock()
	l.kickSend(true)
	return pf.done
}

func (l *link) remoteRead(p []byte, off uint64) error {
	l.mu.Lock()
	if l.closed {
		l.mu.Unlock()
		return ErrPeerGone
	}
	l.nextID++
	id := idRead | l.nextID
	pr := &pendingRead{buf: p, done: make(chan error, 1)}
	l.reads[id] = pr
	l.mu.Unlock()
	if err := l.send(&ResyncRequest{ID: id, Offset: off, Length: uint32(len(p))}); err != nil {
		return err
	}
	return <-pr.done
}

func statusErr(s Status) error {
	if s == StatusOK {
		return nil
	}
	return fmt.Errorf("peer status %v", s)
}

func (l *link) handleWriteAck(m *WriteAck) error {
	for _, id := range m.IDs {
		if id&idResync != 0 {
			if err := l.resyncAcked(id, m.Status); err != nil {
				return err
			}
			continue
		}
		l.mu.Lock()
		pw := l.writes[id]
		if pw == nil || (l.proto == ProtocolA && m.Status == StatusOK) {
			l.mu.Unlock()
			return fmt.Errorf("ack for unknown write %d", id)
		}
		done := l.proto == ProtocolC || m.Status != StatusOK
		if done {
			delete(l.writes, id)
		}
		sig := !pw.signalled
		pw.signalled = true
		l.mu.Unlock()
		res := statusErr(m.Status)
		if m.Status != StatusOK {
			l.log.Warn("peer failed a write; marking out of sync", "off", pw.off, "len", pw.n, "status", m.Status.String())
			if err := l.v.markDirty(pw.off, pw.n); err != nil {
				res = err
			}
		}
		if done && !errors.Is(res, ErrMetadata) {
			// Not recorded: the extent stays hot, so that a crash before
			// the bitmap is recorded still resyncs the range (Hooks).
			pw.al.release()
		}
		if sig {
			pw.done <- res
		}
	}
	return nil
}

func (l *link) handleBarrierAck(m *BarrierAck) {
	var stable []*pendingWrite
	l.mu.Lock()
	for e, ids := range l.epochIDs {
		if e <= m.Nr {
			for _, id := range ids {
				if pw := l.writes[id]; pw != nil {
					if pw.al != nil {
						stable = append(stable, pw)
					}
					delete(l.writes, id)
				}
			}
			delete(l.epochIDs, e)
		}
	}
	l.mu.Unlock()
	for _, pw := range stable {
		pw.al.release()
	}
}

func (l *link) handleFlushAck(m *FlushAck) error {
	l.mu.Lock()
	pf := l.flushes[m.ID]
	delete(l.flushes, m.ID)
	l.mu.Unlock()
	if pf == nil {
		return fmt.Errorf("ack for unknown flush %d", m.ID)
	}
	pf.done <- statusErr(m.Status)
	return nil
}

func (l *link) handleReadReply(m *ResyncData) error {
	l.mu.Lock()
	pr := l.reads[m.ID]
	delete(l.reads, m.ID)
	l.mu.Unlock()
	if pr == nil {
		return fmt.Errorf("data for unknown read %d", m.ID)
	}
	if m.Status == StatusOK && len(m.Data) != len(pr.buf) {
		pr.done <- fmt.Errorf("read reply of %d bytes, want %d", len(m.Data), len(pr.buf))
		return fmt.Errorf("read reply of %d bytes, want %d", len(m.Data), len(pr.buf))
	}
	copy(pr.buf, m.Data)
	pr.done <- statusErr(m.Status)
	return nil
}

func (l *link) handleStateChange(m *StateChange) error {
	v := l.v
	v.mu.Lock()
	defer v.mu.Unlock()
	if m.Role == RolePrimary && v.role == RolePrimary {
		l.log.Error("split brain detected: peer became primary while we are; disconnecting", "gen", v.gi.String(), "peer_gen", m.GI.String())
		return fmt.Errorf("%w: peer became primary while we are", ErrSplitBrain)
	}
	v.setPeerRoleLocked(m.Role, "peer state change")
	v.peerGI = m.GI
	v.setPeerDiskLocked(m.Disk)
	if (v.repl == SyncTarget || v.repl == PausedSyncT) && m.Repl == Established {
		g := v.gi
		g.FinishResyncTarget(m.GI)
		v.setGILocked(g, "resync finished (target)")
		v.clearLocked(0, v.size)
		v.setDiskLocked(UpToDate, "resync finished")
		v.resyncEnd = time.Now()
		if v.repl == PausedSyncT {
			v.setReplLocked(SyncTarget, "resync finished")
		}
		v.setReplLocked(Established, "resync finished")
	}
	return nil
}

// ---- goroutines ----

func (l *link) reader() {
	defer l.wg.Done()
	v := l.v
	for {
		if !l.frameBuffered() {
			// The next read may block: nothing may wait for it.
			l.flushAcks()
			l.conn.SetReadDeadline(time.Now().Add(v.cfg.PingInterval + v.cfg.PingTimeout))
		}
		f, buf, err := l.readFrameBuf()
		if err == nil {
			if f.Type != MsgWrite {
				// Acks go out in the order their writes arrived,
				// before any other reply.
				l.flushAcks()
			}
			if err = l.dispatch(f, buf); err != nil && !errors.Is(err, ErrPeerGone) {
				err = fmt.Errorf("%w: %v message: %w", ErrProtocol, f.Type, err)
			}
		} else {
			err = classifyReadErr(err)
		}
		if err != nil {
			if errors.Is(err, ErrProtocol) {
				l.log.Error("peer protocol violation; disconnecting, nothing applied from it", "err", err)
			}
			l.fail(err)
			return
		}
	}
}

// frameBuffered reports whether a whole frame is already buffered, so
// that reading it needs no system call (reader goroutine only).
func (l *link) frameBuffered() bool {
	if l.br.Buffered() < HeaderSize {
		return false
	}
	hdr, err := l.br.Peek(HeaderSize)
	if err != nil {
		return false
	}
	return l.br.Buffered() >= HeaderSize+int(binary.BigEndian.Uint32(hdr[20:24]))
}

// queueAck adds a successful write's ID to the acks the reader sends
// as one WriteAck (reader goroutine only): a burst of writes applied
// from one buffer costs the peer one ack frame, not one per write
// (protocol C, and resync data). They are
// sent once no further whole frame is buffered, before anything other
// than a write is handled, and every MaxAckIDs.
func (l *link) queueAck(id uint64) {
	l.acks = append(l.acks, id)
	if len(l.acks) == MaxAckIDs {
		l.flushAcks()
	}
}

// flushAcks sends the queued acks (reader goroutine only).
func (l *link) flushAcks() {
	if len(l.acks) == 0 {
		return
	}
	l.send(&WriteAck{Status: StatusOK, IDs: l.acks})
	l.acks = l.acks[:0] // send encoded them
}

func classifyReadErr(err error) error {
	var ne net.Error
	switch {
	case errors.Is(err, ErrBadMagic), errors.Is(err, ErrCorrupt), errors.Is(err, ErrUnknownType),
		errors.Is(err, ErrVersion), errors.Is(err, ErrTooLarge), errors.Is(err, ErrMalformed):
		return fmt.Errorf("%w: %w", ErrProtocol, err)
	case errors.As(err, &ne) && ne.Timeout():
		return fmt.Errorf("%w: no frame within ping timeout: %w", ErrPeerGone, err)
	case errors.Is(err, io.EOF), errors.Is(err, io.ErrUnexpectedEOF):
		return fmt.Errorf("%w: connection closed: %w", ErrPeerGone, err)
	}
	return fmt.Errorf("%w: %w", ErrPeerGone, err)
}

// dispatch handles one frame; buf is the buffer f aliases, which the
// data paths return to the frame pools once applied.
func (l *link) dispatch(f Frame, buf []byte) error {
	m, err := NewMessage(f.Type)
	if err != nil {
		return err
	}
	if err := m.Unmarshal(f.Payload); err != nil {
		return err
	}
	v := l.v
	switch m := m.(type) {
	case *Write:
		if v.isPrimary() {
			return errors.New("write sent to a primary")
		}
		if l.proto == ProtocolB {
			// Received: acked at once, not after the local write
			// (which queueAck's batching would wait for).
			l.send(&WriteAck{Status: StatusOK, IDs: []uint64{m.ID}})
		}
		l.recv.submitWrite(m, buf)
	case *Discard:
		if v.isPrimary() {
			return errors.New("discard sent to a primary")
		}
		if l.proto == ProtocolB {
			l.send(&WriteAck{Status: StatusOK, IDs: []uint64{m.ID}})
		}
		l.recv.submitDiscard(m)
	case *WriteAck:
		return l.handleWriteAck(m)
	case *Barrier:
		l.recv.submitBarrier(m.Nr)
	case *BarrierAck:
		l.handleBarrierAck(m)
	case *Flush:
		l.recv.submitFlush(m.ID)
	case *FlushAck:
		return l.handleFlushAck(m)
	case *Ping:
		// Never block the reader on a full send queue: a reader that
		// stops reading can deadlock both nodes through TCP. A dropped
		// PingAck is harmless (any frame proves liveness).
		l.trySend(&PingAck{Nonce: m.Nonce})
	case *PingAck:
	case *ResyncRequest:
		l.recv.submitRead(m)
	case *ResyncData:
		if m.ID&idRead != 0 {
			return l.handleReadReply(m)
		}
		if v.isPrimary() {
			return errors.New("resync data sent to a primary")
		}
		l.recv.submitResync(m, buf)
	case *VerifyRequest:
		l.recv.submitVerify(m)
	case *ChecksumRequest:
		if v.isPrimary() {
			return errors.New("resync checksum sent to a primary")
		}
		l.recv.submitChecksum(m)
	case *ChecksumReply:
		return l.handleChecksumReply(m)
	case *VerifyReply:
		l.mu.Lock()
		ch := l.verifies[m.ID]
		delete(l.verifies, m.ID)
		l.mu.Unlock()
		if ch == nil {
			return fmt.Errorf("reply for unknown verify %d", m.ID)
		}
		ch <- m
	case *StateChange:
		return l.handleStateChange(m)
	case *Disconnect:
		if m.Code == DisconnectShutdown {
			// Closed on purpose (see goodbye): reconnect at once.
			return fmt.Errorf("%w: peer disconnected: %s%w", ErrPeerGone, m.Reason, errRetryNow)
		}
		return fmt.Errorf("%w: peer disconnected (code %d): %s", ErrPeerGone, m.Code, m.Reason)
	default:
		return fmt.Errorf("unexpected %v after handshake", f.Type)
	}
	return nil
}

// writer drains the send queue when woken and no sender is already
// draining it inline.
func (l *link) writer() {
	defer l.wg.Done()
	for {
		select {
		case <-l.wake:
		case <-l.dead:
			return
		}
		l.wmu.Lock()
		if l.writing || len(l.wq) == 0 {
			l.wmu.Unlock()
			continue
		}
		l.writing = true
		l.wmu.Unlock()
		if !l.drain() {
			return
		}
	}
}

func (l *link) pinger() {
	defer l.wg.Done()
	cfg := l.v.cfg
	ping := time.NewTicker(cfg.PingInterval)
	defer ping.Stop()
	var barrier <-chan time.Time
	if l.proto != ProtocolC {
		t := time.NewTicker(cfg.BarrierInterval)
		defer t.Stop()
		barrier = t.C
	}
	var nonce uint64
	for {
		select {
		case <-l.dead:
			return
		case <-barrier:
			l.sendBarrier()
		case <-ping.C:
			nonce++
			l.send(&Ping{Nonce: nonce})
			if ko := time.Duration(cfg.KoCount) * cfg.Timeout; ko > 0 {
				if age := l.oldestRequest(); age > ko {
					l.fail(fmt.Errorf("%w: request unacknowledged for %v (ko-count %d x timeout %v): peer expelled",
						ErrPeerGone, age.Round(time.Millisecond), cfg.KoCount, cfg.Timeout))
					return
				}
			}
		}
	}
}

func (l *link) oldestRequest() time.Duration {
	now := time.Now()
	var oldest time.Duration
	l.mu.Lock()
	defer l.mu.Unlock()
	for _, pw := range l.writes {
		oldest = max(oldest, now.Sub(pw.start))
	}
	for _, pf := range l.flushes {
		oldest = max(oldest, now.Sub(pf.start))
	}
	return oldest
}

func (l *link) watch(ctx context.Context) {
	defer l.wg.Done()
	var err error
	select {
	case <-ctx.Done():
		err = fmt.Errorf("%w: %w", ErrClosed, ctx.Err())
	case <-l.v.stop:
		err = fmt.Errorf("volume stopped: %w", ErrClosed)
	case <-l.dead:
		return
	}
	l.goodbye()
	l.fail(err)
}

// goodbyeWait bounds how long closing a link waits for its Disconnect
// to reach the socket.
const goodbyeWait = 100 * time.Millisecond

// goodbye tells the peer that this side closes the link on purpose (an
// operator's disconnect or role change, a restart of the volume, a
// shutdown): a Disconnect with DisconnectShutdown after everything
// already queued, given up to goodbyeWait to be written. The peer then
// reconnects at once instead of backing off as after a network failure,
// so that, for example, 'primary --force' (which restarts the local
// volume) does not wait out the peer's ConnectRetryMin.
func (l *link) goodbye() {
	l.sendMu.Lock()
	err := l.sendLocked(&Disconnect{Code: DisconnectShutdown, Reason: "closed by the peer's operator or agent; reconnect"})
	seq := l.sendSeq
	l.sendMu.Unlock()
	if err != nil {
		return
	}
	l.kickSend(false)
	deadline := time.Now().Add(goodbyeWait)
	for l.sentSeq.Load() < seq && time.Now().Before(deadline) {
		select {
		case <-l.dead:
			return
		case <-time.After(time.Millisecond):
		}
	}
}

// teardown runs once every goroutine of the link has exited: whatever
// the peer may not have on disk is marked out of sync before waiters are
// released, and the volume goes degraded.
func (l *link) teardown() {
	l.mu.Lock()
	l.closed = true
	writes, flushes, reads, verifies := l.writes, l.flushes, l.reads, l.verifies
	l.writes, l.flushes, l.reads, l.verifies = nil, nil, nil, nil
	l.mu.Unlock()

	v := l.v
	v.mu.Lock()
	v.link = nil
	var dirty uint64
	var unrecorded map[*pendingWrite]error // nil unless a mark failed
	for _, pw := range writes {
		if err := v.markDirtyLocked(pw.off, pw.n); err != nil {
			if unrecorded == nil {
				unrecorded = map[*pendingWrite]error{}
			}
			unrecorded[pw] = err
		}
		dirty += pw.n
	}
	if v.role == RolePrimary && v.disk >= UpToDate && !v.closed {
		// Not recorded: the old generation stays, and the next write
		// without the peer tries again (markDirtyLocked) or fails.
		_ = v.peerLostLocked("peer lost as primary")
	}
	v.setReplLocked(ReplOff, "connection lost")
	v.setPeerDiskLocked(DUnknown)
	v.setPeerRoleLocked(RoleUnknown, "connection lost")
	v.setConnLocked(Unconnected, "connection lost")
	v.lastErr = l.err.Error()
	peerLost := v.fenceLinkLostLocked()
	v.mu.Unlock()
	l.log.Warn("peer connection lost; volume degraded", "err", l.err, "unacked_bytes", dirty)
	if peerLost != nil {
		peerLost()
	}

	for _, pw := range writes {
		res := ErrPeerGone
		if err := unrecorded[pw]; err != nil {
			res = err // its extent stays hot (see Hooks.OnBitmapDirty)
		} else {
			pw.al.release() // marked out of sync above
		}
		if !pw.signalled {
			pw.done <- res
		}
	}
	for _, pf := range flushes {
		pf.done <- ErrPeerGone
	}
	for _, pr := range reads {
		pr.done <- ErrPeerGone
	}
	for _, ch := range verifies {
		ch <- nil
	}
}

// ---- connecting ----

// errRetryNow marks (with an empty message, appended to the reason) a
// handshake refused only because one side's state changed while it ran:
// Run reconnects once without backing off.
var errRetryNow = errors.New("")

// fatal reports whether err means reconnecting cannot help until an
// operator acts.
func fatal(err error) bool {
	for _, e := range []error{ErrSplitBrain, ErrUnrelated, ErrVolumeMismatch, ErrIncompatible, ErrRRConflict, ErrClosed, ErrPeerStandAlone} {
		if errors.Is(err, e) {
			return true
		}
	}
	return false
}

// Attach runs the protocol over conn until the connection ends and
// returns why (never nil). It owns conn and closes it. Only one
// connection is attached at a time (ErrBusy).
func (v *Volume) Attach(ctx context.Context, conn net.Conn) error {
	v.mu.Lock()
	if v.closed {
		v.mu.Unlock()
		conn.Close()
		return ErrClosed
	}
	if v.conn == Connecting || v.conn == Connected {
		v.mu.Unlock()
		conn.Close()
		return fmt.Errorf("replication: attach %v: %w", conn.RemoteAddr(), ErrBusy)
	}
	if v.conn != Unconnected {
		v.setConnLocked(Unconnected, "attach")
	}
	v.setConnLocked(Connecting, "attach")
	v.mu.Unlock()

	l := newLink(v, conn)
	if err := l.connect(ctx); err != nil {
		conn.Close()
		v.mu.Lock()
		v.lastErr = err.Error()
		v.setReplLocked(ReplOff, "connect failed")
		v.setPeerDiskLocked(DUnknown)
		if fatal(err) {
			v.setConnLocked(Disconnecting, "refused")
			v.setConnLocked(StandAlone, "refused")
		} else {
			v.setConnLocked(Unconnected, "connect failed")
		}
		v.mu.Unlock()
		l.log.Error("peer connection refused", "err", err)
		return err
	}
	<-l.dead
	l.wg.Wait()
	l.teardown()
	close(l.finished)
	return l.err
}

func (l *link) refuse(code DisconnectCode, err error) error {
	reason := err.Error()
	if len(reason) > MaxReason {
		reason = reason[:MaxReason]
	}
	l.writeDirect(&Disconnect{Code: code, Reason: reason})
	return err
}

// connect runs the handshake, the decision and the resync setup, then
// activates the link. New writes wait (gate) while it runs.
func (l *link) connect(ctx context.Context) error {
	v := l.v
	l.conn.SetDeadline(time.Now().Add(v.cfg.HandshakeTimeout))
	stop := context.AfterFunc(ctx, func() { l.conn.SetDeadline(time.Now()) })
	defer stop()

	v.mu.Lock()
	hs := Handshake{
		VolumeUUID: v.uuid, NodeName: v.name, MinProto: ProtoVersion, MaxProto: ProtoVersion,
		Features: uint64(v.cfg.Protocol) & featureProtoMask, GI: v.gi, Disk: v.disk, Role: v.role,
		Flags: v.flags, VolumeSize: v.size, BlockSize: v.cfg.blockSize(), DirtyBlocks: v.bm.Count(),
	}
	v.mu.Unlock()
	// Send ours while reading theirs (an unbuffered conn would deadlock
	// two sequential writers).
	errc := make(chan error, 1)
	go func() { errc <- l.writeDirect(&hs) }()
	var peer Handshake
	if err := l.expect(&peer); err != nil {
		l.conn.Close()
		<-errc
		return err
	}
	if err := <-errc; err != nil {
		return fmt.Errorf("%w: send handshake: %w", ErrPeerGone, err)
	}

	// Another volume is fatal whatever changed here meanwhile: checked
	// first so that a concurrent promote cannot turn it into a retry.
	if peer.VolumeUUID != hs.VolumeUUID {
		return l.refuse(DisconnectUnrelated, fmt.Errorf("%w: local volume %v, peer %q has volume %v",
			ErrVolumeMismatch, v.uuid, peer.NodeName, uuidString(peer.VolumeUUID)))
	}

	// Only a peer that sent a valid handshake makes new writes wait: a
	// stray client on the port cannot stall the volume. If our GIs or
	// disk moved since we sent them (a degraded write started a new
	// generation), the peer decided on stale facts: start over.
	v.gate.Lock()
	defer v.gate.Unlock()
	v.mu.Lock()
	moved := v.gi != hs.GI || v.disk != hs.Disk || v.role != hs.Role
	v.mu.Unlock()
	if moved {
		return l.refuse(DisconnectShutdown, fmt.Errorf("%w: local state changed during handshake; retrying%w", ErrPeerGone, errRetryNow))
	}
	switch {
	case max(peer.MinProto, hs.MinProto) > min(peer.MaxProto, hs.MaxProto):
		return l.refuse(DisconnectProtocol, fmt.Errorf("%w: protocol versions %d..%d vs peer %d..%d",
			ErrIncompatible, hs.MinProto, hs.MaxProto, peer.MinProto, peer.MaxProto))
	case peer.Features&featureProtoMask != hs.Features&featureProtoMask:
		return l.refuse(DisconnectProtocol, fmt.Errorf("%w: replication protocol %v vs peer %v",
			ErrIncompatible, v.cfg.Protocol, Protocol(peer.Features&featureProtoMask)))
	case peer.VolumeSize != hs.VolumeSize || peer.BlockSize != hs.BlockSize:
		return l.refuse(DisconnectProtocol, fmt.Errorf("%w: size %d/%d vs peer %d/%d",
			ErrIncompatible, hs.VolumeSize, hs.BlockSize, peer.VolumeSize, peer.BlockSize))
	case peer.NodeName == hs.NodeName:
		return l.refuse(DisconnectProtocol, fmt.Errorf("%w: both nodes are named %q", ErrIncompatible, peer.NodeName))
	}
	l.log = l.log.With("peer_name", peer.NodeName)

	local := Node{Name: hs.NodeName, GI: hs.GI, Disk: hs.Disk, Role: hs.Role,
		CrashedPrimary: hs.Flags&FlagCrashedPrimary != 0, LostCache: hs.Flags&FlagLostCache != 0}
	pn := Node{Name: peer.NodeName, GI: peer.GI, Disk: peer.Disk, Role: peer.Role,
		CrashedPrimary: peer.Flags&FlagCrashedPrimary != 0, LostCache: peer.Flags&FlagLostCache != 0}
	res := Decide(local, pn)
	d := res.Decision
	if hs.Role == RolePrimary && peer.Role == RolePrimary && d != Unrelated {
		// Both served I/O on their own: DRBD's after-sb-2pri disconnect.
		return l.refuseSplitBrain(&hs, &peer, "both nodes are primary")
	}
	switch d {
	case Unrelated:
		return l.refuse(DisconnectUnrelated, fmt.Errorf("%w: local %v, peer %v (rule %d)", ErrUnrelated, hs.GI, peer.GI, res.Rule))
	case NoUpToDateSource:
		return l.refuse(DisconnectNoUpToDateDisk, fmt.Errorf("%w: local %v, peer %v", ErrNoUpToDateSource, hs.Disk, peer.Disk))
	case SplitBrain:
		out := ResolveSplitBrain(v.cfg.SplitBrain, res.SplitBrainFull,
			SBSide{Name: hs.NodeName, Role: hs.Role, PrimaryAtSplit: hs.GI.PrimaryAtSplit(), Changes: hs.DirtyBlocks, DiscardMyData: hs.Flags&FlagDiscardMyData != 0},
			SBSide{Name: peer.NodeName, Role: peer.Role, PrimaryAtSplit: peer.GI.PrimaryAtSplit(), Changes: peer.DirtyBlocks, DiscardMyData: peer.Flags&FlagDiscardMyData != 0})
		d = out.Decision(res.SplitBrainFull)
		if d == SplitBrain {
			return l.refuseSplitBrain(&hs, &peer, "both nodes changed data since they last agreed; no policy resolves it")
		}
		l.log.Warn("split brain resolved by policy", "outcome", out.String())
	}
	// A Primary whose disk is detached (failed) runs through its peer
	// (DRBD's diskless primary): nothing is resynced into the dead
	// disk, and both bitmaps are kept as they are.
	localDetached := hs.Role == RolePrimary && hs.Disk <= Failed
	peerDetached := peer.Role == RolePrimary && peer.Disk <= Failed
	detached := (d.PeerIsSource() && localDetached) || (d.LocalIsSource() && peerDetached)
	if detached {
		d = NoSync
	}
	if (d.PeerIsSource() && hs.Disk <= Failed) || (d.LocalIsSource() && peer.Disk <= Failed) {
		// A detached (failed) disk cannot take a resync until the
		// operator re-attaches it.
		return l.refuse(DisconnectNoUpToDateDisk, fmt.Errorf("%w: sync target's disk is detached (local %v, peer %v)",
			ErrNoGoodDisk, hs.Disk, peer.Disk))
	}
	if (d.PeerIsSource() && hs.Role == RolePrimary) || (d.LocalIsSource() && peer.Role == RolePrimary) {
		return l.refuse(DisconnectProtocol, fmt.Errorf("%w: decision %v", ErrRRConflict, d))
	}
	l.log.Info("connect decision", "decision", d.String(), "rule", res.Rule, "gen", hs.GI.String(), "peer_gen", peer.GI.String())

	v.mu.Lock()
	v.setGILocked(res.Local, "connect-time correction")
	v.peerGI = res.Peer
	v.setPeerDiskLocked(peer.Disk)
	v.mu.Unlock()

	switch {
	case d == NoSync && detached:
	case d == NoSync:
		v.mu.Lock()
		v.clearLocked(0, v.size)
		v.mu.Unlock()
	case d.IsFull():
		v.mu.Lock()
		v.bm.SetAll()
		v.mu.Unlock()
	default:
		if err := l.exchangeBitmaps(); err != nil {
			return err
		}
	}
	v.mu.Lock()
	err := v.reportDirtyLocked()
	v.mu.Unlock()
	if err != nil {
		// Syncing on a bitmap that is not recorded could, after a crash,
		// leave blocks out of sync that nothing remembers.
		return fmt.Errorf("connect: %w", err)
	}

	v.mu.Lock()
	switch {
	case d.LocalIsSource():
		g := v.gi
		sync := g.StartResyncSource(freshUUID())
		v.setGILocked(g, "resync start (source)")
		v.setReplLocked(WFBitMapS, d.String())
		v.setReplLocked(SyncSource, d.String())
		if v.peerDisk > Inconsistent {
			v.setPeerDiskLocked(Inconsistent)
		}
		v.startResyncStatsLocked()
		v.mu.Unlock()
		if err := l.writeDirect(&SyncUUID{UUID: sync}); err != nil {
			return fmt.Errorf("%w: send sync uuid: %w", ErrPeerGone, err)
		}
		v.mu.Lock()
	case d.PeerIsSource():
		v.mu.Unlock()
		var su SyncUUID
		if err := l.expect(&su); err != nil {
			return err
		}
		v.mu.Lock()
		g := v.gi
		g.StartResyncTarget(su.UUID)
		err := v.setGILocked(g, "resync start (target)")
		if err == nil {
			err = v.setDiskLocked(Inconsistent, "sync target")
		}
		if err != nil {
			// Nothing resynced yet: what the metadata says still holds.
			v.mu.Unlock()
			return fmt.Errorf("connect as sync target: %w", err)
		}
		v.setReplLocked(WFBitMapT, d.String())
		v.setReplLocked(SyncTarget, d.String())
		v.startResyncStatsLocked()
	default:
		v.setReplLocked(Established, "in sync")
	}
	// Activate.
	l.conn.SetDeadline(time.Time{})
	v.link = l
	v.peerName = peer.NodeName
	v.setPeerRoleLocked(peer.Role, "connected")
	v.setConnLocked(Connected, d.String())
	v.linkUpLocked()
	source := v.repl == SyncSource
	v.mu.Unlock()

	l.wg.Add(5)
	go l.reader()
	go l.writer()
	go l.pinger()
	go l.resyncer()
	go l.watch(ctx)
	if source {
		l.kickResync()
	}
	return nil
}

// expect reads the next frame into m, which must be of m's type; a
// Disconnect from the peer is returned as its reason.
func (l *link) expect(m Message) error {
	f, err := l.readFrame()
	if err != nil {
		err = classifyReadErr(err)
		l.log.Error("peer handshake failed, disconnecting", "err", err)
		return err
	}
	if f.Type == MsgDisconnect {
		var d Disconnect
		if err := d.Unmarshal(f.Payload); err != nil {
			return fmt.Errorf("%w: %w", ErrProtocol, err)
		}
		base := ErrPeerGone
		switch d.Code {
		case DisconnectShutdown:
			// Sent when the peer's state moved during the handshake
			// (it redials at once, so should we) or when it closed
			// the link on purpose (see goodbye).
			return fmt.Errorf("%w: peer refused: %s%w", base, d.Reason, errRetryNow)
		case DisconnectSplitBrain:
			base = ErrSplitBrain
		case DisconnectUnrelated:
			base = ErrUnrelated
		case DisconnectProtocol:
			base = ErrIncompatible
		case DisconnectNoUpToDateDisk:
			base = ErrNoUpToDateSource
		case DisconnectStandAlone:
			base = ErrPeerStandAlone
		}
		return fmt.Errorf("%w: peer refused: %s", base, d.Reason)
	}
	if f.Type != m.Type() {
		return fmt.Errorf("%w: got %v, want %v", ErrProtocol, f.Type, m.Type())
	}
	if err := m.Unmarshal(f.Payload); err != nil {
		return fmt.Errorf("%w: %v: %w", ErrProtocol, f.Type, err)
	}
	return nil
}

// exchangeBitmaps sends our bitmap while reading the peer's and merges
// it: the union is what differs.
func (l *link) exchangeBitmaps() error {
	v := l.v
	snap := v.Bitmap()
	errc := make(chan error, 1)
	go func() {
		for c := range snap.Chunks(MaxBitmapChunkData) {
			if err := l.writeDirect(&c); err != nil {
				errc <- fmt.Errorf("%w: send bitmap: %w", ErrPeerGone, err)
				return
			}
		}
		errc <- nil
	}()
	var rerr error
	for {
		var c BitmapChunk
		if rerr = l.expect(&c); rerr != nil {
			break
		}
		v.mu.Lock()
		err := v.bm.ApplyChunk(&c)
		v.mu.Unlock()
		if err != nil {
			rerr = fmt.Errorf("%w: bitmap chunk: %w", ErrProtocol, err)
			break
		}
		if c.Flags&BitmapLast != 0 {
			break
		}
	}
	if rerr != nil {
		l.conn.Close()
		<-errc
		return rerr
	}
	return <-errc
}

func uuidString(b [16]byte) string {
	return fmt.Sprintf("%x-%x-%x-%x-%x", b[0:4], b[4:6], b[6:8], b[8:10], b[10:16])
}

// ---- reconnecting ----

// Dialer returns a connect function for Run that dials addr over TCP.
//
// A dial gives up after dialTimeout: a peer whose host is down drops the
// SYN, and the kernel's own retransmissions (1 s, 3 s, 7 s ...) would
// hold the attempt, and the resync of a revived peer, for seconds.
func Dialer(addr string) func(context.Context) (net.Conn, error) {
	return func(ctx context.Context) (net.Conn, error) {
		d := net.Dialer{Timeout: dialTimeout}
		return d.DialContext(ctx, "tcp", addr)
	}
}

const dialTimeout = 1500 * time.Millisecond

// Acceptor returns a connect function for Run that accepts the next
// connection on ln; ctx cancellation interrupts the Accept.
func Acceptor(ln *net.TCPListener) func(context.Context) (net.Conn, error) {
	return func(ctx context.Context) (net.Conn, error) {
		ln.SetDeadline(time.Time{})
		stop := context.AfterFunc(ctx, func() { ln.SetDeadline(time.Now()) })
		defer stop()
		c, err := ln.Accept()
		if err != nil && ctx.Err() != nil {
			return nil, ctx.Err()
		}
		return c, err
	}
}

// PeerConnector returns a connect function for Run on a node named
// local whose peer is named peer: of the two, the node with the smaller
// name dials peerAddr and the other accepts on ln, so both sides can be
// configured alike and exactly one connection forms.
func PeerConnector(local, peer, peerAddr string, ln *net.TCPListener) func(context.Context) (net.Conn, error) {
	if local < peer {
		return Dialer(peerAddr)
	}
	return Acceptor(ln)
}

// Run keeps a connection to the peer: connect, Attach, and on loss
// reconnect with exponential backoff between ConnectRetryMin and
// ConnectRetryMax. It returns when ctx ends, the volume is stopped, or
// the peer is refused for a reason reconnecting cannot fix (split
// brain, unrelated data, wrong volume, incompatible configuration): the
// volume is then StandAlone and keeps serving degraded.
func (v *Volume) Run(ctx context.Context, connect func(context.Context) (net.Conn, error)) error {
	return v.run(ctx, connect, true)
}

// RunAccepting is Run on the accepting side: it takes the peer's
// connections from ln and never waits between attempts. Accept itself
// waits for the peer; a pause after a failed handshake would leave the
// dialer's next connection unanswered in the listen backlog until its
// handshake timed out, and the two sides' backoffs would then keep
// missing each other.
func (v *Volume) RunAccepting(ctx context.Context, ln *net.TCPListener) error {
	return v.run(ctx, Acceptor(ln), false)
}

func (v *Volume) run(ctx context.Context, connect func(context.Context) (net.Conn, error), backOff bool) error {
	backoff := v.cfg.ConnectRetryMin
	retried := false
	v.mu.Lock()
	v.setConnLocked(Unconnected, "run")
	v.mu.Unlock()
	for {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-v.stop:
			return ErrClosed
		default:
		}
		conn, err := connect(ctx)
		retryNow := false
		if err == nil {
			start := time.Now()
			err = v.Attach(ctx, conn)
			if fatal(err) || ctx.Err() != nil {
				if !errors.Is(err, ErrClosed) && ctx.Err() == nil {
					v.log.Error("giving up on peer; standalone", "err", err)
				}
				return err
			}
			if time.Since(start) > v.cfg.ConnectRetryMax {
				backoff = v.cfg.ConnectRetryMin
			}
			retryNow = errors.Is(err, errRetryNow) && !retried
		}
		// A handshake that only raced a local state change (promote,
		// a degraded write) is retried once without waiting; both
		// sides know, so the acceptor is listening again.
		retried = retryNow
		if retryNow || !backOff && ctx.Err() == nil && err != nil && !errors.Is(err, net.ErrClosed) {
			v.log.Info("reconnecting at once", "err", err)
			continue
		}
		v.log.Info("reconnecting", "err", err, "backoff", backoff)
		t := time.NewTimer(backoff)
		select {
		case <-ctx.Done():
			t.Stop()
			return ctx.Err()
		case <-v.stop:
			t.Stop()
			return ErrClosed
		case <-t.C:
		}
		backoff = min(2*backoff, v.cfg.ConnectRetryMax)
	}
}

// frameSizeHint is the encoded size of m's frame for the common data
// messages (so AppendFrame allocates once), or a small default.
func frameSizeHint(m Message) int {
	switch m := m.(type) {
	case *Write:
		return HeaderSize + maxFixed + len(m.Data)
	case *ResyncData:
		return HeaderSize + maxFixed + len(m.Data)
	case *WriteAck:
		return HeaderSize + maxFixed + 8*len(m.IDs)
	}
	return HeaderSize + 2*maxFixed
}

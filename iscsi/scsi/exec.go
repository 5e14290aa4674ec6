package scsi

import (
	"bytes"
	"encoding/binary"
)

// residual computes Response.Residual for a command that wanted to move
// wantIn bytes of data-in and wantOut bytes of data-out.
func residual(cmd *Command, wantIn, wantOut uint32) int64 {
	switch {
	case cmd.Read:
		return int64(cmd.ExpectedLength) - int64(wantIn)
	case cmd.Write:
		return int64(cmd.ExpectedLength) - int64(wantOut)
	}
	return -int64(wantIn) - int64(wantOut)
}

func (l *lu) dsense() bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.mode.DSense
}

func (l *lu) checkCondition(cmd *Command, se *SenseError) *Response {
	r := &Response{Status: StatusCheckCondition, Sense: se.Bytes(l.dsense())}
	if cmd.Read {
		r.Residual = int64(cmd.ExpectedLength)
	}
	return r
}

func conflictResponse(cmd *Command) *Response {
	r := &Response{Status: StatusReservationConflict}
	if cmd.Read {
		r.Residual = int64(cmd.ExpectedLength)
	}
	return r
}

// dataIn returns a GOOD response carrying data cut to alloc and to the
// transport's ExpectedLength.
func dataIn(cmd *Command, data []byte, alloc uint32) *Response {
	want := uint32(len(data))
	if want > alloc {
		want = alloc
	}
	send := want
	if !cmd.Read {
		send = 0
	} else if send > cmd.ExpectedLength {
		send = cmd.ExpectedLength
	}
	return &Response{Status: StatusGood, Data: data[:send], Residual: residual(cmd, want, 0)}
}

func good(cmd *Command, c *CDB) *Response {
	var out uint32
	if c != nil {
		out = c.DataOut
	}
	return &Response{Status: StatusGood, Residual: residual(cmd, 0, out)}
}

// outData returns the data-out bytes usable for a command wanting want
// bytes: what the initiator sent, cut to want.
func outData(cmd *Command, want uint32) []byte {
	d := cmd.Data
	if uint32(len(d)) > want {
		d = d[:want]
	}
	return d
}

// noSuchLU answers a command addressed to a LUN that does not exist.
func (t *Target) noSuchLU(cmd *Command) *Response {
	c, se := DecodeCDB(cmd.CDB, 512)
	if se == nil {
		switch c.Op {
		case opInquiry:
			if !c.EVPD {
				return dataIn(cmd, noLUInquiry(), c.AllocLen)
			}
		case opReportLUNs:
			return dataIn(cmd, t.reportLUNs(c), c.AllocLen)
		case opRequestSense:
			return dataIn(cmd, errLUNotSupported().Bytes(c.Desc), c.AllocLen)
		}
	}
	r := &Response{Status: StatusCheckCondition, Sense: errLUNotSupported().Bytes(false)}
	if cmd.Read {
		r.Residual = int64(cmd.ExpectedLength)
	}
	return r
}

func (t *Target) reportLUNs(c *CDB) []byte {
	luns := t.lunList()
	if c.Select == 1 { // well-known LUs only: we have none
		luns = nil
	}
	out := make([]byte, 8, 8+8*len(luns))
	for _, n := range luns {
		e := make([]byte, 8)
		if n < 256 {
			e[1] = byte(n)
		} else {
			e[0] = 0x40 | byte(n>>8)
			e[1] = byte(n)
		}
		out = append(out, e...)
	}
	binary.BigEndian.PutUint32(out[0:], uint32(len(out)-8))
	return out
}

func (l *lu) readOnly() bool {
	l.mu.Lock()
	swp := l.mode.SWP
	l.mu.Unlock()
	return swp || l.cfg.ReadOnly || l.dev.ReadOnly()
}

// errReadOnly is the sense for a write to a write-protected unit:
// SOFTWARE WRITE PROTECTED when the control page's SWP is set.
func (l *lu) errReadOnly() *SenseError {
	l.mu.Lock()
	swp := l.mode.SWP
	l.mu.Unlock()
	if swp && !l.cfg.ReadOnly && !l.dev.ReadOnly() {
		return newSense(KeyDataProtect, ascSoftWriteProtected)
	}
	return errWriteProtected()
}

// checkRange validates [lba, lba+blocks) against the capacity. A zero
// length is valid up to and including the capacity.
func (l *lu) checkRange(lba uint64, blocks uint64) *SenseError {
	if lba > l.nblocks || blocks > l.nblocks-lba {
		return errLBAOutOfRange()
	}
	return nil
}

func (l *lu) writeCacheOn() bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.mode.WCE
}

// flushIf flushes the device when fua is set or the write cache is off.
func (l *lu) flushIf(fua bool) *SenseError {
	if fua || !l.writeCacheOn() {
		if err := l.dev.Flush(); err != nil {
			return senseForIOError(err, true)
		}
	}
	return nil
}

func (l *lu) readBlocks(lba uint64, n int) ([]byte, *SenseError) {
	buf := make([]byte, n)
	if n == 0 {
		return buf, nil
	}
	if _, err := l.dev.ReadAt(buf, int64(lba)*int64(l.bs)); err != nil {
		return nil, senseForIOError(err, false)
	}
	return buf, nil
}

func (l *lu) writeAt(p []byte, lba uint64) *SenseError {
	if len(p) == 0 {
		return nil
	}
	if _, err := l.dev.WriteAt(p, int64(lba)*int64(l.bs)); err != nil {
		return senseForIOError(err, true)
	}
	return nil
}

// checkReservations returns true when the command conflicts with a
// RESERVE(6)/(10) or a persistent reservation held by another nexus.
func (l *lu) checkReservations(n Nexus, c *CDB) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.reserve6 != nil && *l.reserve6 != n {
		switch c.Op {
		case opInquiry, opReportLUNs, opRequestSense, opRelease6, opRelease10:
		default:
			return true
		}
	}
	return l.pr.conflict(n, prAccess(c))
}

// execute runs one task and returns its response.
func (l *lu) execute(tk *task) *Response {
	cmd := tk.cmd
	n := cmd.Nexus
	var op byte
	if len(cmd.CDB) > 0 {
		op = cmd.CDB[0]
	}
	// Unit attentions are reported to every command but INQUIRY, REPORT
	// LUNS and REQUEST SENSE (SPC-4 5.14).
	if op != opInquiry && op != opReportLUNs && op != opRequestSense {
		l.mu.Lock()
		if q := l.ua[n]; len(q) > 0 {
			code := q[0]
			l.ua[n] = q[1:]
			l.mu.Unlock()
			return l.checkCondition(cmd, newSense(KeyUnitAttention, code))
		}
		l.mu.Unlock()
	}
	if tk.decErr != nil {
		return l.checkCondition(cmd, tk.decErr)
	}
	c := tk.dec
	if l.checkReservations(n, c) {
		return conflictResponse(cmd)
	}
	resp, se := l.dispatch(tk, c)
	if se == errAbandoned {
		// The device gave the command up (a demoted node): no answer at
		// all, so the initiator retries it where the volume moved.
		return &Response{Aborted: true}
	}
	if se != nil {
		return l.checkCondition(cmd, se)
	}
	return resp
}

func (l *lu) dispatch(tk *task, c *CDB) (*Response, *SenseError) {
	cmd := tk.cmd
	switch c.Op {
	case opTestUnitReady:
		return good(cmd, c), nil
	case opRequestSense:
		l.mu.Lock()
		var se *SenseError
		if q := l.ua[cmd.Nexus]; len(q) > 0 {
			se = newSense(KeyUnitAttention, q[0])
			l.ua[cmd.Nexus] = q[1:]
		}
		l.mu.Unlock()
		if se == nil {
			se = newSense(KeyNoSense, ascNoAdditional)
		}
		return dataIn(cmd, se.Bytes(c.Desc), c.AllocLen), nil
	case opInquiry:
		if !c.EVPD {
			return dataIn(cmd, l.standardInquiry(), c.AllocLen), nil
		}
		p, se := l.vpdPage(c.PageCode)
		if se != nil {
			return nil, se
		}
		return dataIn(cmd, p, c.AllocLen), nil
	case opReportLUNs:
		return dataIn(cmd, l.t.reportLUNs(c), c.AllocLen), nil
	case opModeSense6, opModeSense10:
		l.mu.Lock()
		cur, def := l.mode, l.def
		l.mu.Unlock()
		d, se := modeSense(c, cur, def, l.readOnly(), l.nblocks, l.bs)
		if se != nil {
			return nil, se
		}
		return dataIn(cmd, d, c.AllocLen), nil
	case opModeSelect6, opModeSelect10:
		param := outData(cmd, c.ParamLen)
		if uint32(len(param)) < c.ParamLen {
			return nil, errParamListLength()
		}
		l.mu.Lock()
		defer l.mu.Unlock()
		np, se := modeSelect(c, param, l.mode, l.def, l.nblocks, l.bs)
		if se != nil {
			return nil, se
		}
		if np != l.mode {
			l.mode = np
			n := cmd.Nexus
			l.addUAOthers(&n, ascModeParamsChanged)
		}
		return good(cmd, c), nil
	case opReserve6, opReserve10:
		l.mu.Lock()
		defer l.mu.Unlock()
		if len(l.pr.Registrations) > 0 {
			return conflictResponse(cmd), nil
		}
		if l.reserve6 != nil && *l.reserve6 != cmd.Nexus {
			return conflictResponse(cmd), nil
		}
		n := cmd.Nexus
		l.reserve6 = &n
		return good(cmd, c), nil
	case opRelease6, opRelease10:
		l.mu.Lock()
		defer l.mu.Unlock()
		if len(l.pr.Registrations) > 0 {
			return conflictResponse(cmd), nil
		}
		if l.reserve6 != nil && *l.reserve6 == cmd.Nexus {
			l.reserve6 = nil
		}
		return good(cmd, c), nil
	case opStartStopUnit:
		if c.LoEj && !c.Start && c.PowerCnd == 0 {
			// Not removable: ejecting is refused.
			return nil, errInvalidCDB(4, 1)
		}
		return good(cmd, c), nil
	case opPreventAllow:
		return good(cmd, c), nil
	case opReadCapacity10:
		d := make([]byte, 8)
		last := l.nblocks - 1
		if last > 0xffffffff {
			last = 0xffffffff
		}
		binary.BigEndian.PutUint32(d[0:], uint32(last))
		binary.BigEndian.PutUint32(d[4:], l.bs)
		return dataIn(cmd, d, 8), nil
	case opServiceActionIn:
		switch c.SA {
		case saReadCapacity16:
			d := make([]byte, 32)
			binary.BigEndian.PutUint64(d[0:], l.nblocks-1)
			binary.BigEndian.PutUint32(d[8:], l.bs)
			d[14] = 0x80 | 0x40 // LBPME, LBPRZ
			return dataIn(cmd, d, c.AllocLen), nil
		case saGetLBAStatus:
			if c.LBA >= l.nblocks {
				return nil, errLBAOutOfRange()
			}
			// Without a cheap way to learn the allocation, report the rest
			// of the medium as one mapped extent.
			d := make([]byte, 24)
			binary.BigEndian.PutUint32(d[0:], 20)
			binary.BigEndian.PutUint64(d[8:], c.LBA)
			cnt := l.nblocks - c.LBA
			if cnt > 0xffffffff {
				cnt = 0xffffffff
			}
			binary.BigEndian.PutUint32(d[16:], uint32(cnt))
			d[20] = 0x00 // mapped
			return dataIn(cmd, d, c.AllocLen), nil
		}
	case opMaintenanceIn:
		switch c.SA {
		case saReportOpcodes:
			d, se := reportSupportedOpcodes(c)
			if se != nil {
				return nil, se
			}
			return dataIn(cmd, d, c.AllocLen), nil
		case saReportTMFs:
			// ABORT TASK, ABORT TASK SET, CLEAR TASK SET, LU RESET, TARGET RESET.
			return dataIn(cmd, []byte{0x80 | 0x40 | 0x10 | 0x08 | 0x02, 0, 0, 0}, c.AllocLen), nil
		}
	case opRead6, opRead10, opRead12, opRead16:
		return l.doRead(cmd, c)
	case opWrite6, opWrite10, opWrite12, opWrite16, opWriteVerify10, opWriteVerify12, opWriteVerify16:
		return l.doWrite(cmd, c)
	case opVerify10, opVerify12, opVerify16:
		return l.doVerify(cmd, c)
	case opPrefetch10, opPrefetch16:
		if se := l.checkRange(c.LBA, uint64(c.Blocks)); se != nil {
			return nil, se
		}
		return good(cmd, c), nil
	case opSyncCache10, opSyncCache16:
		if se := l.checkRange(c.LBA, uint64(c.Blocks)); se != nil {
			return nil, se
		}
		if err := l.dev.Flush(); err != nil {
			return nil, senseForIOError(err, true)
		}
		return good(cmd, c), nil
	case opWriteSame10, opWriteSame16:
		return l.doWriteSame(cmd, c)
	case opUnmap:
		return l.doUnmap(cmd, c)
	case opCompareAndWrite:
		return l.doCompareAndWrite(cmd, c)
	case opOrWrite:
		return l.doOrWrite(cmd, c)
	case opPRIn:
		l.mu.Lock()
		d, se := l.pr.prIn(c)
		l.mu.Unlock()
		if se != nil {
			return nil, se
		}
		return dataIn(cmd, d, c.AllocLen), nil
	case opPROut:
		return l.doPROut(tk, c)
	}
	return nil, errInvalidOpcode()
}

func (l *lu) doRead(cmd *Command, c *CDB) (*Response, *SenseError) {
	if se := l.checkRange(c.LBA, uint64(c.Blocks)); se != nil {
		return nil, se
	}
	want := c.Blocks * l.bs
	// Read no more than the initiator can receive (whole blocks).
	n := want
	if cmd.ExpectedLength < n {
		n = (cmd.ExpectedLength + l.bs - 1) / l.bs * l.bs
	}
	if !cmd.Read {
		n = 0
	}
	buf, se := l.readBlocks(c.LBA, int(n))
	if se != nil {
		return nil, se
	}
	send := uint32(len(buf))
	if send > cmd.ExpectedLength {
		send = cmd.ExpectedLength
	}
	return &Response{Status: StatusGood, Data: buf[:send], Residual: residual(cmd, want, 0)}, nil
}

func (l *lu) doWrite(cmd *Command, c *CDB) (*Response, *SenseError) {
	if se := l.checkRange(c.LBA, uint64(c.Blocks)); se != nil {
		return nil, se
	}
	if l.readOnly() {
		return nil, l.errReadOnly()
	}
	data := outData(cmd, c.DataOut)
	data = data[:len(data)/int(l.bs)*int(l.bs)] // whole blocks only
	if se := l.writeAt(data, c.LBA); se != nil {
		return nil, se
	}
	verify := c.Op == opWriteVerify10 || c.Op == opWriteVerify12 || c.Op == opWriteVerify16
	if se := l.flushIf(c.FUA || verify); se != nil {
		return nil, se
	}
	return good(cmd, c), nil
}

func (l *lu) doVerify(cmd *Command, c *CDB) (*Response, *SenseError) {
	if se := l.checkRange(c.LBA, uint64(c.Blocks)); se != nil {
		return nil, se
	}
	if c.BytChk == 0 || c.Blocks == 0 {
		return good(cmd, c), nil
	}
	data := outData(cmd, c.DataOut)
	if uint32(len(data)) < c.DataOut {
		return nil, errParamListLength()
	}
	medium, se := l.readBlocks(c.LBA, int(c.Blocks*l.bs))
	if se != nil {
		return nil, se
	}
	if c.BytChk == 1 {
		if i := firstDiff(medium, data); i >= 0 {
			return nil, errMiscompare(uint64(i))
		}
		return good(cmd, c), nil
	}
	for off := 0; off < len(medium); off += int(l.bs) {
		if i := firstDiff(medium[off:off+int(l.bs)], data); i >= 0 {
			return nil, errMiscompare(uint64(off + i))
		}
	}
	return good(cmd, c), nil
}

func firstDiff(a, b []byte) int {
	if bytes.Equal(a, b) {
		return -1
	}
	for i := range a {
		if i >= len(b) || a[i] != b[i] {
			return i
		}
	}
	return len(a)
}

func allZero(b []byte) bool {
	for _, x := range b {
		if x != 0 {
			return false
		}
	}
	return true
}

func (l *lu) doWriteSame(cmd *Command, c *CDB) (*Response, *SenseError) {
	if c.LBA > l.nblocks {
		return nil, errLBAOutOfRange()
	}
	blocks := uint64(c.Blocks)
	if blocks == 0 {
		blocks = l.nblocks - c.LBA
		if blocks > MaxWriteSameBlocks(l.bs) {
			return nil, errInvalidCDB(tlField(c.Len), -1)
		}
	}
	if se := l.checkRange(c.LBA, blocks); se != nil {
		return nil, se
	}
	if l.readOnly() {
		return nil, l.errReadOnly()
	}
	var pattern []byte
	if !c.NDOB {
		if uint32(len(cmd.Data)) != l.bs || (cmd.Write && cmd.ExpectedLength != l.bs) {
			return nil, errInvalidCDB(tlField(c.Len), -1)
		}
		pattern = cmd.Data
	}
	if blocks == 0 {
		return good(cmd, c), nil
	}
	off := int64(c.LBA) * int64(l.bs)
	length := int64(blocks) * int64(l.bs)
	// With UNMAP set the blocks are deallocated whatever the data (they
	// read back as zeros: LBPRZ=1), as other targets do and libiscsi
	// expects; without it the pattern is really written.
	if c.Unmap || c.Anchor {
		if err := l.dev.Discard(off, length); err != nil {
			return nil, senseForIOError(err, true)
		}
	} else {
		if pattern == nil {
			pattern = make([]byte, l.bs)
		}
		const chunk = 1 << 20
		n := int64(chunk)
		if n > length {
			n = length
		}
		buf := bytes.Repeat(pattern, int(n/int64(l.bs)))
		for done := int64(0); done < length; {
			w := int64(len(buf))
			if w > length-done {
				w = length - done
			}
			if _, err := l.dev.WriteAt(buf[:w], off+done); err != nil {
				return nil, senseForIOError(err, true)
			}
			done += w
		}
	}
	if se := l.flushIf(false); se != nil {
		return nil, se
	}
	return good(cmd, c), nil
}

// parseUnmapList parses UNMAP parameter data (SBC-3 5.28.2). It is pure.
func parseUnmapList(data []byte, paramLen uint32) ([]extent, *SenseError) {
	if uint32(len(data)) > paramLen {
		data = data[:paramLen]
	}
	if paramLen == 0 {
		return nil, nil
	}
	if paramLen < 8 || len(data) < 8 {
		return nil, errParamListLength()
	}
	bddl := int(be16(data[2:4]))
	if bddl > len(data)-8 {
		bddl = (len(data) - 8) / 16 * 16
	}
	n := bddl / 16
	if n > MaxUnmapDescriptors {
		return nil, errInvalidParam(2, -1)
	}
	out := make([]extent, 0, n)
	for i := 0; i < n; i++ {
		d := data[8+16*i:]
		lba := be64(d[0:8])
		cnt := uint64(be32(d[8:12]))
		end := lba + cnt
		if end < lba {
			end = ^uint64(0)
		}
		out = append(out, extent{lba, end})
	}
	return out, nil
}

func (l *lu) doUnmap(cmd *Command, c *CDB) (*Response, *SenseError) {
	// ANCHOR: anchored and deallocated blocks both read back zeros here,
	// so both are a discard.
	exts, se := parseUnmapList(outData(cmd, c.ParamLen), c.ParamLen)
	if se != nil {
		return nil, se
	}
	if uint32(len(cmd.Data)) < c.ParamLen {
		return nil, errParamListLength()
	}
	var total uint64
	for _, e := range exts {
		cnt := e.end - e.start
		if se := l.checkRange(e.start, cnt); se != nil {
			return nil, se
		}
		total += cnt
	}
	if total > MaxUnmapBlocks {
		return nil, errInvalidParam(8, -1)
	}
	if l.readOnly() {
		return nil, l.errReadOnly()
	}
	for _, e := range exts {
		if e.end == e.start {
			continue
		}
		if err := l.dev.Discard(int64(e.start)*int64(l.bs), int64(e.end-e.start)*int64(l.bs)); err != nil {
			return nil, senseForIOError(err, true)
		}
	}
	if se := l.flushIf(false); se != nil {
		return nil, se
	}
	return good(cmd, c), nil
}

func (l *lu) doCompareAndWrite(cmd *Command, c *CDB) (*Response, *SenseError) {
	if c.Blocks == 0 {
		if cmd.ExpectedLength != 0 || len(cmd.Data) != 0 {
			return nil, errInvalidCDB(13, -1)
		}
		if se := l.checkRange(c.LBA, 0); se != nil {
			return nil, se
		}
		return good(cmd, c), nil
	}
	if se := l.checkRange(c.LBA, uint64(c.Blocks)); se != nil {
		return nil, se
	}
	if l.readOnly() {
		return nil, l.errReadOnly()
	}
	if (cmd.Write && cmd.ExpectedLength != c.DataOut) || uint32(len(cmd.Data)) < c.DataOut {
		return nil, errInvalidCDB(13, -1)
	}
	n := int(c.Blocks * l.bs)
	// The task set never runs an overlapping write concurrently with this
	// task (it is a write over its range), so read-compare-write is atomic.
	cur, se := l.readBlocks(c.LBA, n)
	if se != nil {
		return nil, se
	}
	if i := firstDiff(cur, cmd.Data[:n]); i >= 0 {
		return nil, errMiscompare(uint64(i))
	}
	if se := l.writeAt(cmd.Data[n:2*n], c.LBA); se != nil {
		return nil, se
	}
	if se := l.flushIf(c.FUA); se != nil {
		return nil, se
	}
	return good(cmd, c), nil
}

func (l *lu) doOrWrite(cmd *Command, c *CDB) (*Response, *SenseError) {
	if se := l.checkRange(c.LBA, uint64(c.Blocks)); se != nil {
		return nil, se
	}
	if l.readOnly() {
		return nil, l.errReadOnly()
	}
	data := outData(cmd, c.DataOut)
	data = data[:len(data)/int(l.bs)*int(l.bs)]
	cur, se := l.readBlocks(c.LBA, len(data))
	if se != nil {
		return nil, se
	}
	for i := range cur {
		cur[i] |= data[i]
	}
	if se := l.writeAt(cur, c.LBA); se != nil {
		return nil, se
	}
	if se := l.flushIf(c.FUA); se != nil {
		return nil, se
	}
	return good(cmd, c), nil
}

func (l *lu) doPROut(tk *task, c *CDB) (*Response, *SenseError) {
	cmd := tk.cmd
	param := outData(cmd, c.ParamLen)
	l.mu.Lock()
	conflict, uas, abort, changed, se := l.pr.prOut(cmd.Nexus, c, param)
	for _, ua := range uas {
		l.addUA(ua.n, ua.code)
	}
	var snap PRState
	if changed {
		snap = l.pr.Clone()
	}
	cb := l.cfg.OnPRChange
	l.mu.Unlock()
	if len(abort) > 0 {
		l.abortTasks(func(o *task) bool {
			if o == tk {
				return false
			}
			for _, n := range abort {
				if o.cmd.Nexus == n {
					return true
				}
			}
			return false
		})
	}
	if changed && cb != nil {
		cb(l.num, snap)
	}
	if se != nil {
		return nil, se
	}
	if conflict {
		return conflictResponse(cmd), nil
	}
	return good(cmd, c), nil
}

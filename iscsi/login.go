package iscsi

import (
	"errors"
	"fmt"
	"strings"
	"time"
)

// Login status class/detail (RFC 7143 11.13.5), class in the high byte.
const (
	statusSuccess          = 0x0000
	statusInitiatorError   = 0x0200
	statusAuthFailure      = 0x0201
	statusNotFound         = 0x0203
	statusBadVersion       = 0x0205
	statusTooManyConns     = 0x0206
	statusMissingParam     = 0x0207
	statusBadSessionType   = 0x0209
	statusNoSession        = 0x020a
	statusInvalidDuringLog = 0x020b
	statusUnavailable      = 0x0301
	statusNoResources      = 0x0302
)

// Login stages (CSG/NSG values).
const (
	stageSecurity    = 0
	stageOperational = 1
	stageFullFeature = 3
)

// ErrLogin: a login was refused; the wrapped message says why and the
// initiator got a Login Response with a failure status.
var ErrLogin = errors.New("iscsi: login refused")

type loginError struct {
	status uint16
	msg    string
	kvs    []KV // keys to send with the failure (e.g. AuthMethod=Reject)
}

func (e *loginError) Error() string {
	return fmt.Sprintf("status 0x%04x: %s", e.status, e.msg)
}

func (e *loginError) Unwrap() error { return ErrLogin }

func loginFail(status uint16, format string, args ...any) error {
	return &loginError{status: status, msg: fmt.Sprintf(format, args...)}
}

// loginState is the target side of one connection's login phase
// (RFC 7143 6.3): security and operational stages, CHAP, negotiation.
type loginState struct {
	c       *conn
	started bool
	stage   int // current stage (CSG the next request must carry)

	isid  [6]byte
	tsih  uint16
	cid   uint16
	cmdSN uint32
	text  []byte // C-bit continuation buffer

	initiator string
	discovery bool
	target    *target

	authRequired  bool
	authMethod    string // chosen AuthMethod, "" until negotiated
	authDone      bool
	chap          *chapState
	neg           *NegState
	declaredMRDSL bool
}

// login runs the login phase. On success c.sess and c.params are set
// and the connection is in the full feature phase.
func (c *conn) login() error {
	deadline := time.Now().Add(c.srv.cfg.LoginTimeout)
	if err := c.nc.SetDeadline(deadline); err != nil {
		return err
	}
	ls := &loginState{c: c}
	for {
		var h BHS
		ahs, err := c.rd.readHeader(&h)
		if err != nil {
			return err
		}
		if h.Opcode() != OpLoginReq {
			return fmt.Errorf("%w: %v during login", errProtocol, h.Opcode())
		}
		if len(ahs) != 0 {
			return fmt.Errorf("%w: AHS in a Login Request", errProtocol)
		}
		data, err := c.readSegment(&h)
		if err != nil {
			return err
		}
		done, err := ls.step(&h, data)
		if err != nil {
			var le *loginError
			if errors.As(err, &le) {
				ls.respond(&h, le.status, false, 0, le.kvs)
			}
			return err
		}
		if done {
			break
		}
	}
	return c.nc.SetDeadline(time.Time{})
}

// respond sends one Login Response.
func (ls *loginState) respond(req *BHS, status uint16, transit bool, nsg int, kvs []KV) error {
	c := ls.c
	var h BHS
	h.SetOpcode(OpLoginResp, false)
	csg := int(req[1]>>2) & 3
	if status == statusSuccess {
		h[1] = byte(csg<<2 | nsg&3)
		if transit {
			h[1] |= 0x80
		}
	}
	h[2], h[3] = 0, 0 // VersionMax, VersionActive
	copy(h[8:14], req[8:14])
	h.setU16(14, req.u16(14))
	if transit && nsg == stageFullFeature && status == statusSuccess {
		h.setU16(14, ls.tsih)
	}
	h.setU32(offITT, req.ITT())
	h.setU32(offCmdSN, c.statSN)
	c.statSN++
	h.setU32(offExpStat, ls.cmdSN)
	h.setU32(offMaxCmdSN, ls.cmdSN+uint32(c.srv.cfg.MaxOutstandingCommands)-1)
	h[36], h[37] = byte(status>>8), byte(status)
	data := AppendText(nil, kvs)
	if err := c.pw.writePDU(&h, data); err != nil {
		return err
	}
	return c.pw.w.Flush()
}

// step handles one Login Request; done reports the login is complete.
func (ls *loginState) step(h *BHS, data []byte) (done bool, err error) {
	c := ls.c
	flags := h[1]
	transit, cont := flags&0x80 != 0, flags&0x40 != 0
	csg, nsg := int(flags>>2)&3, int(flags)&3
	isid := [6]byte(h[8:14])
	tsih, cid := h.u16(14), h.u16(offTTT)
	if !ls.started {
		ls.started = true
		ls.isid, ls.tsih, ls.cid, ls.cmdSN = isid, tsih, cid, h.u32(offCmdSN)
		c.statSN = h.u32(offExpStat)
		if h[3] > 0 { // VersionMin: we speak version 0 only
			return false, loginFail(statusBadVersion, "VersionMin %d", h[3])
		}
		if csg != stageSecurity && csg != stageOperational {
			return false, loginFail(statusInitiatorError, "first login request in stage %d", csg)
		}
		ls.stage = csg
	} else if isid != ls.isid || tsih != ls.tsih || cid != ls.cid {
		return false, loginFail(statusInitiatorError, "ISID/TSIH/CID changed during login")
	}
	if csg != ls.stage {
		return false, loginFail(statusInitiatorError, "CSG %d, expected stage %d", csg, ls.stage)
	}
	if transit && !(nsg > csg && (nsg == stageOperational || nsg == stageFullFeature)) {
		return false, loginFail(statusInitiatorError, "transit from stage %d to %d", csg, nsg)
	}
	if cont {
		if transit {
			return false, loginFail(statusInitiatorError, "T and C both set")
		}
		if len(ls.text)+len(data) > MaxTextLen {
			return false, loginFail(statusInitiatorError, "login text longer than %d bytes", MaxTextLen)
		}
		ls.text = append(ls.text, data...)
		return false, ls.respond(h, statusSuccess, false, 0, nil)
	}
	text := data
	if ls.text != nil {
		if len(ls.text)+len(data) > MaxTextLen {
			return false, loginFail(statusInitiatorError, "login text longer than %d bytes", MaxTextLen)
		}
		text = append(ls.text, data...)
		ls.text = nil
	}
	kvs, err := ParseText(text)
	if err != nil {
		return false, loginFail(statusInitiatorError, "%v", err)
	}
	keys := make(map[string]string, len(kvs))
	for _, kv := range kvs {
		if _, ok := keys[kv.Key]; !ok {
			keys[kv.Key] = kv.Value
		}
	}
	var out []KV
	if ls.initiator == "" {
		if err := ls.identify(keys); err != nil {
			return false, err
		}
		if !ls.discovery {
			out = append(out, KV{"TargetPortalGroupTag", fmt.Sprint(TPGT)})
		}
	}

	var ops []KV // keys for the negotiator
	for _, kv := range kvs {
		if !loginKeys[kv.Key] {
			ops = append(ops, kv)
		}
	}
	switch csg {
	case stageSecurity:
		sec, err := ls.security(keys, transit)
		out = append(out, sec...)
		if err != nil {
			var le *loginError
			if errors.As(err, &le) {
				le.kvs = out
			}
			return false, err
		}
	case stageOperational:
		if ls.authRequired && !ls.authDone {
			return false, loginFail(statusAuthFailure, "operational stage without authentication")
		}
		if !ls.declaredMRDSL {
			ls.declaredMRDSL = true
			out = append(out, KV{"MaxRecvDataSegmentLength", fmt.Sprint(c.srv.cfg.MaxRecvDataSegmentLength)})
		}
	}
	out = append(out, ls.neg.Negotiate(ops)...)

	respTransit := transit
	if csg == stageSecurity && ls.authRequired && !ls.authDone {
		respTransit = false // CHAP still running
	}
	if !respTransit {
		return false, ls.respond(h, statusSuccess, false, nsg, out)
	}
	if nsg == stageFullFeature {
		if err := ls.finish(); err != nil {
			return false, err
		}
	}
	if err := ls.respond(h, statusSuccess, true, nsg, out); err != nil {
		return false, err
	}
	ls.stage = nsg
	if nsg != stageFullFeature {
		return false, nil
	}
	// Digests apply from the first PDU after the final Login Response.
	c.pw.hdrDigest, c.pw.dataDigest = c.params.HeaderDigest, c.params.DataDigest
	c.rd.lim = Limits{
		MaxDataSegment: int(c.srv.cfg.MaxRecvDataSegmentLength),
		MaxAHS:         MaxAHSLen,
		HeaderDigest:   c.params.HeaderDigest,
		DataDigest:     c.params.DataDigest,
	}
	c.lastRecv.Store(time.Now().UnixNano())
	c.log.Info("iscsi: login complete", "initiator", ls.initiator, "target", c.sess.key.target,
		"discovery", ls.discovery, "tsih", ls.tsih, "header_digest", c.params.HeaderDigest,
		"data_digest", c.params.DataDigest, "mrdsl", c.params.MaxRecvDSLInitiator,
		"max_burst", c.params.MaxBurstLength, "first_burst", c.params.FirstBurstLength,
		"immediate_data", c.params.ImmediateData, "initial_r2t", c.params.InitialR2T)
	return true, nil
}

// identify processes the first request's names and session type.
func (ls *loginState) identify(keys map[string]string) error {
	c := ls.c
	name := keys["InitiatorName"]
	if name == "" {
		return loginFail(statusMissingParam, "no InitiatorName")
	}
	if len(name) > 223 {
		return loginFail(statusInitiatorError, "InitiatorName too long")
	}
	ls.initiator = strings.ToLower(name)
	switch st := keys["SessionType"]; st {
	case "", "Normal":
	case "Discovery":
		ls.discovery = true
	default:
		return loginFail(statusBadSessionType, "SessionType %q", st)
	}
	tname := ""
	if !ls.discovery {
		tname = keys["TargetName"]
		if tname == "" {
			return loginFail(statusMissingParam, "no TargetName")
		}
		ls.target = c.srv.lookupTarget(tname)
		if ls.target == nil {
			return loginFail(statusNotFound, "unknown target %q", tname)
		}
		tname = ls.target.name
	}
	c.setInfo(func(ci *ConnInfo) {
		ci.InitiatorName, ci.TargetName, ci.ISID, ci.CID, ci.Discovery = ls.initiator, tname, ls.isid, ls.cid, ls.discovery
	})
	if ls.tsih != 0 {
		// Adding a connection to (or reinstating a connection of) an
		// existing session. We run one connection per session at
		// ErrorRecoveryLevel 0, so this only ever ends an old session.
		c.srv.mu.Lock()
		old := c.srv.tsihs[ls.tsih]
		c.srv.mu.Unlock()
		if old == nil || old.key != (sessKey{ls.initiator, ls.isid, tname}) {
			return loginFail(statusNoSession, "TSIH %d does not exist", ls.tsih)
		}
		if old.conn.cid != ls.cid {
			return loginFail(statusTooManyConns, "session %d already has its connection", ls.tsih)
		}
		old.conn.close("connection reinstatement")
		return loginFail(statusNoSession, "connection reinstatement of TSIH %d ends the session at ErrorRecoveryLevel 0", ls.tsih)
	}
	cred := c.srv.chapFor(tname, ls.discovery)
	if cred != nil {
		ls.authRequired = true
		ls.chap = newCHAPState(*cred)
	}
	ls.neg = NewNegState(c.srv.cfg.offer(), ls.discovery, PhaseOperational)
	return nil
}

// security handles AuthMethod and the CHAP exchange.
func (ls *loginState) security(keys map[string]string, transit bool) ([]KV, error) {
	var out []KV
	if am, ok := keys["AuthMethod"]; ok && ls.authMethod == "" {
		want := "None"
		if ls.authRequired {
			want = "CHAP"
		}
		choice, ok := pickFromList(am, []string{want})
		if !ok {
			return []KV{{"AuthMethod", valReject}}, loginFail(statusAuthFailure, "AuthMethod %q, need %s", am, want)
		}
		ls.authMethod = choice
		out = append(out, KV{"AuthMethod", choice})
		if choice == "None" {
			ls.authDone = true
		}
	}
	if ls.authMethod == "CHAP" && !ls.authDone {
		chapKeys := make(map[string]string)
		for k, v := range keys {
			if strings.HasPrefix(k, "CHAP_") {
				chapKeys[k] = v
			}
		}
		if len(chapKeys) > 0 {
			kv, err := ls.chap.handle(chapKeys)
			out = append(out, kv...)
			if err != nil {
				return out, loginFail(statusAuthFailure, "%v", err)
			}
			if ls.chap.step == chapDone {
				ls.authDone = true
			}
		}
	}
	if ls.authMethod == "" && !ls.authRequired {
		ls.authDone = true // no AuthMethod offered and none needed
	}
	if transit && ls.authRequired && ls.authMethod == "" {
		return out, loginFail(statusAuthFailure, "authentication required, no AuthMethod offered")
	}
	return out, nil
}

// finish creates the session: reinstatement of a session with the same
// initiator port and target (the old one is torn down, its nexus
// reported lost, before the new one starts), MaxSessions, TSIH.
func (ls *loginState) finish() error {
	c := ls.c
	srv := c.srv
	if ls.authRequired && !ls.authDone {
		return loginFail(statusAuthFailure, "login completed without authentication")
	}
	tname := ""
	if ls.target != nil {
		tname = ls.target.name
	}
	key := sessKey{ls.initiator, ls.isid, tname}
	c.cid = ls.cid // before the session is visible to other logins
	srv.mu.Lock()
	if srv.closed {
		srv.mu.Unlock()
		return loginFail(statusUnavailable, "server shutting down")
	}
	old := srv.sessions[key]
	n := len(srv.sessions)
	if old != nil {
		n--
	}
	if n >= srv.cfg.MaxSessions {
		srv.mu.Unlock()
		return loginFail(statusNoResources, "MaxSessions (%d) reached", srv.cfg.MaxSessions)
	}
	tsih := srv.allocTSIHLocked()
	s := newSession(srv, c, key, tsih, ls.target, ls.discovery, ls.cmdSN)
	srv.sessions[key] = s
	srv.tsihs[tsih] = s
	srv.mu.Unlock()
	c.sess = s
	c.params = ls.neg.Finish()
	ls.tsih = tsih
	c.setInfo(func(ci *ConnInfo) { ci.TSIH = tsih })
	if old != nil {
		c.log.Info("iscsi: session reinstatement", "initiator", ls.initiator, "target", tname, "old_tsih", old.tsih)
		old.conn.close("session reinstatement")
		select {
		case <-old.done:
		case <-time.After(srv.cfg.LoginTimeout):
			return loginFail(statusUnavailable, "old session %d did not end", old.tsih)
		}
	}
	return nil
}

func (srv *Server) allocTSIHLocked() uint16 {
	// MaxSessions <= 65000 leaves free values, so this terminates.
	for {
		srv.nextTSIH++
		if srv.nextTSIH == 0 {
			continue
		}
		if _, used := srv.tsihs[srv.nextTSIH]; !used {
			return srv.nextTSIH
		}
	}
}

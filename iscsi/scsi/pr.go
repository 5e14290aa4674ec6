package scsi

import (
	"encoding/binary"
	"encoding/json"
	"slices"
)

// Persistent reservation types (SPC-4 table 171).
const (
	PRTypeWriteExclusive        = 0x1
	PRTypeExclusiveAccess       = 0x3
	PRTypeWriteExclusiveRegOnly = 0x5
	PRTypeExclAccessRegOnly     = 0x6
	PRTypeWriteExclusiveAllReg  = 0x7
	PRTypeExclAccessAllReg      = 0x8
)

// PR OUT service actions.
const (
	prOutRegister       = 0x0
	prOutReserve        = 0x1
	prOutRelease        = 0x2
	prOutClear          = 0x3
	prOutPreempt        = 0x4
	prOutPreemptAbort   = 0x5
	prOutRegisterIgnore = 0x6
)

// PR IN service actions.
const (
	prInReadKeys        = 0x0
	prInReadReservation = 0x1
	prInReportCaps      = 0x2
	prInReadFullStatus  = 0x3
)

// PRRegistration is one registered I_T nexus. With AllTgPt the
// registration covers the initiator port through every target port.
type PRRegistration struct {
	Key     uint64 `json:"key"`
	Nexus   Nexus  `json:"nexus"`
	AllTgPt bool   `json:"all_tg_pt,omitempty"`
}

func (r *PRRegistration) matches(n Nexus) bool {
	if r.Nexus == n {
		return true
	}
	return r.AllTgPt && r.Nexus.InitiatorName == n.InitiatorName && r.Nexus.ISID == n.ISID
}

// PRReservation is the persistent reservation, if any. For the "all
// registrants" types every registrant is a holder and Holder is the nexus
// that created it (informational).
type PRReservation struct {
	Type   uint8 `json:"type"`
	Scope  uint8 `json:"scope"`
	Holder Nexus `json:"holder"`
}

// PRState is the persistent reservation state of one logical unit. It is
// plain data and serialises to JSON, so replication can carry it.
type PRState struct {
	Generation    uint32           `json:"generation"`
	Registrations []PRRegistration `json:"registrations,omitempty"`
	Reservation   *PRReservation   `json:"reservation,omitempty"`
}

// Clone returns a deep copy.
func (s *PRState) Clone() PRState {
	c := PRState{Generation: s.Generation, Registrations: slices.Clone(s.Registrations)}
	if s.Reservation != nil {
		r := *s.Reservation
		c.Reservation = &r
	}
	return c
}

// EncodePRState serialises s as JSON.
func EncodePRState(s PRState) ([]byte, error) { return json.Marshal(s) }

// DecodePRState parses JSON produced by EncodePRState.
func DecodePRState(b []byte) (PRState, error) {
	var s PRState
	err := json.Unmarshal(b, &s)
	return s, err
}

func allRegistrants(t uint8) bool {
	return t == PRTypeWriteExclusiveAllReg || t == PRTypeExclAccessAllReg
}

func regOnlyOrAll(t uint8) bool {
	return t == PRTypeWriteExclusiveRegOnly || t == PRTypeExclAccessRegOnly || allRegistrants(t)
}

func validPRType(t uint8) bool {
	switch t {
	case PRTypeWriteExclusive, PRTypeExclusiveAccess, PRTypeWriteExclusiveRegOnly,
		PRTypeExclAccessRegOnly, PRTypeWriteExclusiveAllReg, PRTypeExclAccessAllReg:
		return true
	}
	return false
}

func (s *PRState) find(n Nexus) int {
	for i := range s.Registrations {
		if s.Registrations[i].matches(n) {
			return i
		}
	}
	return -1
}

func (s *PRState) isHolder(n Nexus) bool {
	r := s.Reservation
	if r == nil {
		return false
	}
	if allRegistrants(r.Type) {
		return s.find(n) >= 0
	}
	if r.Holder == n {
		return true
	}
	i := s.find(r.Holder)
	return i >= 0 && s.Registrations[i].matches(n)
}

// holderKey is the reservation key reported by READ RESERVATION.
func (s *PRState) holderKey() uint64 {
	r := s.Reservation
	if r == nil || allRegistrants(r.Type) {
		return 0
	}
	if i := s.find(r.Holder); i >= 0 {
		return s.Registrations[i].Key
	}
	return 0
}

// conflict reports whether a command of kind k (after mapping through
// prAccess) from nexus n conflicts with the persistent reservation
// (SPC-4 5.12.1 table 63, simplified to read/write classes).
func (s *PRState) conflict(n Nexus, access prAccessClass) bool {
	r := s.Reservation
	if r == nil || access == prAllowed || s.isHolder(n) {
		return false
	}
	registered := s.find(n) >= 0
	switch r.Type {
	case PRTypeWriteExclusive:
		return access == prWrite
	case PRTypeExclusiveAccess:
		return true
	case PRTypeWriteExclusiveRegOnly, PRTypeWriteExclusiveAllReg:
		return !registered && access == prWrite
	case PRTypeExclAccessRegOnly, PRTypeExclAccessAllReg:
		return !registered
	}
	return false
}

type prAccessClass uint8

const (
	prAllowed prAccessClass = iota
	prRead
	prWrite
)

// prAccess classifies a command for reservation checks.
func prAccess(c *CDB) prAccessClass {
	switch c.Op {
	case opInquiry, opReportLUNs, opRequestSense, opTestUnitReady, opReadCapacity10,
		opPRIn, opPROut, opMaintenanceIn:
		return prAllowed
	case opServiceActionIn:
		if c.SA == saReadCapacity16 {
			return prAllowed
		}
		return prRead
	case opModeSense6, opModeSense10:
		return prRead
	}
	switch c.Kind {
	case KindRead:
		return prRead
	}
	return prWrite
}

// uaEvent is a unit attention to establish for a nexus.
type uaEvent struct {
	n    Nexus
	code uint16
}

// prOut executes a PERSISTENT RESERVE OUT. It returns the status (GOOD,
// RESERVATION CONFLICT or CHECK CONDITION via err), the unit attentions to
// establish, the nexuses whose tasks are to be aborted (PREEMPT AND ABORT)
// and whether the state changed.
func (s *PRState) prOut(n Nexus, c *CDB, param []byte) (conflict bool, uas []uaEvent, abort []Nexus, changed bool, err *SenseError) {
	if c.ParamLen != 24 {
		// We support neither SPEC_I_PT nor REGISTER AND MOVE, so the list is
		// always 24 bytes.
		return false, nil, nil, false, errParamListLength()
	}
	if len(param) < 24 {
		return false, nil, nil, false, errParamListLength()
	}
	key := be64(param[0:8])
	sark := be64(param[8:16])
	flags := param[20]
	if flags&0x08 != 0 { // SPEC_I_PT
		return false, nil, nil, false, errInvalidParam(20, 3)
	}
	if flags&0x01 != 0 {
		// APTPL: persisting through power loss is not promised
		// (REPORT CAPABILITIES has PTPL_C=0).
		return false, nil, nil, false, errInvalidParam(20, 0)
	}
	allTgPt := flags&0x04 != 0
	idx := s.find(n)

	switch c.SA {
	case prOutRegister, prOutRegisterIgnore:
		if c.SA == prOutRegister {
			if idx < 0 && key != 0 {
				return true, nil, nil, false, nil
			}
			if idx >= 0 && s.Registrations[idx].Key != key {
				return true, nil, nil, false, nil
			}
		}
		if idx < 0 {
			if sark == 0 {
				return false, nil, nil, false, nil
			}
			s.Registrations = append(s.Registrations, PRRegistration{Key: sark, Nexus: n, AllTgPt: allTgPt})
			s.Generation++
			return false, nil, nil, true, nil
		}
		if sark != 0 {
			s.Registrations[idx].Key = sark
			s.Generation++
			return false, nil, nil, true, nil
		}
		// Unregister.
		uas = s.unregister(idx, n)
		s.Generation++
		return false, uas, nil, true, nil

	case prOutReserve:
		if idx < 0 || s.Registrations[idx].Key != key {
			return true, nil, nil, false, nil
		}
		if c.Scope != 0 {
			return false, nil, nil, false, errInvalidCDB(2, 7)
		}
		if !validPRType(c.PRType) {
			return false, nil, nil, false, errInvalidCDB(2, 3)
		}
		if r := s.Reservation; r != nil {
			if !s.isHolder(n) {
				return true, nil, nil, false, nil
			}
			if r.Type != c.PRType || r.Scope != c.Scope {
				return true, nil, nil, false, nil
			}
			return false, nil, nil, false, nil
		}
		s.Reservation = &PRReservation{Type: c.PRType, Scope: c.Scope, Holder: n}
		return false, nil, nil, true, nil

	case prOutRelease:
		if idx < 0 || s.Registrations[idx].Key != key {
			return true, nil, nil, false, nil
		}
		r := s.Reservation
		if r == nil || !s.isHolder(n) {
			return false, nil, nil, false, nil
		}
		if r.Scope != c.Scope || r.Type != c.PRType {
			return false, nil, nil, false, newSense(KeyIllegalRequest, ascInvalidReleasePR)
		}
		s.Reservation = nil
		if regOnlyOrAll(r.Type) {
			for _, reg := range s.Registrations {
				if !reg.matches(n) {
					uas = append(uas, uaEvent{reg.Nexus, ascReservationsReleased})
				}
			}
		}
		return false, uas, nil, true, nil

	case prOutClear:
		if idx < 0 || s.Registrations[idx].Key != key {
			return true, nil, nil, false, nil
		}
		for _, reg := range s.Registrations {
			if !reg.matches(n) {
				uas = append(uas, uaEvent{reg.Nexus, ascReservationsPreempted})
			}
		}
		s.Registrations = nil
		s.Reservation = nil
		s.Generation++
		return false, uas, nil, true, nil

	case prOutPreempt, prOutPreemptAbort:
		if idx < 0 || s.Registrations[idx].Key != key {
			return true, nil, nil, false, nil
		}
		r := s.Reservation
		removeKey := func(k uint64, all bool) (removed []Nexus) {
			kept := s.Registrations[:0]
			for _, reg := range s.Registrations {
				if (all && !reg.matches(n)) || (!all && reg.Key == k) {
					removed = append(removed, reg.Nexus)
					continue
				}
				kept = append(kept, reg)
			}
			s.Registrations = kept
			return removed
		}
		var removed []Nexus
		switch {
		case r == nil:
			if sark == 0 {
				return false, nil, nil, false, errInvalidParam(8, -1)
			}
			removed = removeKey(sark, false)
			if len(removed) == 0 {
				return true, nil, nil, false, nil
			}
		case allRegistrants(r.Type):
			if sark == 0 {
				if !validPRType(c.PRType) || c.Scope != 0 {
					return false, nil, nil, false, errInvalidCDB(2, -1)
				}
				removed = removeKey(0, true)
				s.Reservation = &PRReservation{Type: c.PRType, Scope: c.Scope, Holder: n}
			} else {
				removed = removeKey(sark, false)
				if len(removed) == 0 {
					return true, nil, nil, false, nil
				}
			}
		case sark == s.holderKey():
			if !validPRType(c.PRType) || c.Scope != 0 {
				return false, nil, nil, false, errInvalidCDB(2, -1)
			}
			oldType, oldScope := r.Type, r.Scope
			removed = removeKey(sark, false)
			// The preempting nexus may have removed its own registration
			// when it holds the same key; re-add it.
			if s.find(n) < 0 {
				s.Registrations = append(s.Registrations, PRRegistration{Key: key, Nexus: n})
				removed = slices.DeleteFunc(removed, func(x Nexus) bool { return x == n })
			}
			s.Reservation = &PRReservation{Type: c.PRType, Scope: c.Scope, Holder: n}
			if oldType != c.PRType || oldScope != c.Scope {
				for _, reg := range s.Registrations {
					if reg.Nexus != n && !slices.Contains(removed, reg.Nexus) {
						uas = append(uas, uaEvent{reg.Nexus, ascReservationsReleased})
					}
				}
			}
		default:
			if sark == 0 {
				return false, nil, nil, false, errInvalidParam(8, -1)
			}
			removed = removeKey(sark, false)
			if len(removed) == 0 {
				return true, nil, nil, false, nil
			}
		}
		for _, x := range removed {
			if x != n {
				uas = append(uas, uaEvent{x, ascRegistrationsPreempt})
			}
		}
		s.Generation++
		if c.SA == prOutPreemptAbort {
			abort = removed
		}
		return false, uas, abort, true, nil
	}
	return false, nil, nil, false, errInvalidCDB(1, 4)
}

// unregister removes registration idx (of nexus n) and releases the
// reservation as SPC-4 5.12.11.2.3 says, returning the UAs to establish.
func (s *PRState) unregister(idx int, n Nexus) (uas []uaEvent) {
	s.Registrations = slices.Delete(s.Registrations, idx, idx+1)
	r := s.Reservation
	if r == nil {
		return nil
	}
	if allRegistrants(r.Type) {
		if len(s.Registrations) == 0 {
			s.Reservation = nil
		}
		return nil
	}
	if r.Holder != n {
		return nil
	}
	s.Reservation = nil
	if r.Type == PRTypeWriteExclusiveRegOnly || r.Type == PRTypeExclAccessRegOnly {
		for _, reg := range s.Registrations {
			uas = append(uas, uaEvent{reg.Nexus, ascReservationsReleased})
		}
	}
	return uas
}

// prIn builds PERSISTENT RESERVE IN parameter data.
func (s *PRState) prIn(c *CDB) ([]byte, *SenseError) {
	switch c.SA {
	case prInReadKeys:
		out := make([]byte, 8, 8+8*len(s.Registrations))
		binary.BigEndian.PutUint32(out[0:], s.Generation)
		for _, r := range s.Registrations {
			out = binary.BigEndian.AppendUint64(out, r.Key)
		}
		binary.BigEndian.PutUint32(out[4:], uint32(len(out)-8))
		return out, nil
	case prInReadReservation:
		out := make([]byte, 8, 24)
		binary.BigEndian.PutUint32(out[0:], s.Generation)
		if r := s.Reservation; r != nil {
			d := make([]byte, 16)
			binary.BigEndian.PutUint64(d[0:], s.holderKey())
			d[13] = r.Scope<<4 | r.Type&0x0f
			out = append(out, d...)
			binary.BigEndian.PutUint32(out[4:], 16)
		}
		return out, nil
	case prInReportCaps:
		out := make([]byte, 8)
		binary.BigEndian.PutUint16(out[0:], 8)
		out[2] = 0x10 | 0x04                      // CRH, ATP_C
		out[3] = 0x80 | 0x10                      // TMV, ALLOW COMMANDS = 001b
		out[4] = 0x80 | 0x40 | 0x20 | 0x08 | 0x02 // WR_EX_AR, EX_AC_RO, WR_EX_RO, EX_AC, WR_EX
		out[5] = 0x01                             // EX_AC_AR
		return out, nil
	case prInReadFullStatus:
		out := make([]byte, 8)
		binary.BigEndian.PutUint32(out[0:], s.Generation)
		for _, reg := range s.Registrations {
			tid := transportID(reg.Nexus)
			d := make([]byte, 24, 24+len(tid))
			binary.BigEndian.PutUint64(d[0:], reg.Key)
			if reg.AllTgPt {
				d[12] |= 0x02 // ALL_TG_PT
			}
			if s.isHolder(reg.Nexus) {
				d[12] |= 0x01 // R_HOLDER
				d[13] = s.Reservation.Scope<<4 | s.Reservation.Type&0x0f
			}
			binary.BigEndian.PutUint16(d[18:], reg.Nexus.TPGT)
			binary.BigEndian.PutUint32(d[20:], uint32(len(tid)))
			d = append(d, tid...)
			out = append(out, d...)
		}
		binary.BigEndian.PutUint32(out[4:], uint32(len(out)-8))
		return out, nil
	}
	return nil, errInvalidCDB(1, 4)
}

// transportID is the iSCSI TransportID (SPC-4 7.6.4.6, format 01b) of the
// initiator port of n.
func transportID(n Nexus) []byte {
	name := n.InitiatorName + ",i,0x" + hexString(n.ISID[:])
	l := len(name) + 1 // NUL terminated
	if r := l % 4; r != 0 {
		l += 4 - r
	}
	if l < 20 {
		l = 20
	}
	b := make([]byte, 4+l)
	b[0] = 0x40 | 0x05 // FORMAT CODE 01b, PROTOCOL IDENTIFIER iSCSI
	binary.BigEndian.PutUint16(b[2:], uint16(l))
	copy(b[4:], name)
	return b
}

func hexString(b []byte) string {
	const digits = "0123456789abcdef"
	out := make([]byte, 2*len(b))
	for i, x := range b {
		out[2*i] = digits[x>>4]
		out[2*i+1] = digits[x&0x0f]
	}
	return string(out)
}

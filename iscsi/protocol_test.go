package iscsi

import (
	"bytes"
	"context"
	"encoding/hex"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/hablock/hablock/iscsi/scsi"
)

// fastKeys negotiates what libiscsi/qemu negotiate.
var fastKeys = []KV{
	{"InitialR2T", "No"}, {"ImmediateData", "Yes"}, {"MaxBurstLength", "262144"},
	{"FirstBurstLength", "65536"}, {"MaxRecvDataSegmentLength", "8192"},
}

func TestConfigDefaultsValidate(t *testing.T) {
	c := DefaultConfig()
	if err := c.Validate(); err != nil {
		t.Fatal(err)
	}
	bad := map[string]func(*Config){
		"MaxSessions":              func(c *Config) { c.MaxSessions = 0 },
		"MaxOutstandingCommands":   func(c *Config) { c.MaxOutstandingCommands = 1025 },
		"MaxRecvDataSegmentLength": func(c *Config) { c.MaxRecvDataSegmentLength = 16 << 20 },
		"FirstBurstLength":         func(c *Config) { c.FirstBurstLength = c.MaxBurstLength + 1 },
		"LoginTimeout":             func(c *Config) { c.LoginTimeout = 0 },
		"NopInTimeout":             func(c *Config) { c.NopInTimeout = 0 },
		"HeaderDigests":            func(c *Config) { c.HeaderDigests = []string{"MD5"} },
		"CHAP.Secret":              func(c *Config) { c.CHAP = &CHAPConfig{User: "u", Secret: "short"} },
		"MutualSecret": func(c *Config) {
			c.CHAP = &CHAPConfig{User: "u", Secret: "0123456789ab", MutualUser: "t", MutualSecret: "0123456789ab"}
		},
	}
	for field, mod := range bad {
		c := DefaultConfig()
		mod(&c)
		err := c.Validate()
		if !errors.Is(err, ErrConfig) || !strings.Contains(err.Error(), field) {
			t.Errorf("%s: Validate() = %v", field, err)
		}
	}
}

func TestLoginFailures(t *testing.T) {
	ts := startServer(t, nil)
	cases := []struct {
		name   string
		tweak  func(*BHS)
		tsih   uint16
		kvs    []KV
		status uint16
	}{
		{"unknown target", nil, 0, []KV{{"InitiatorName", testInit}, {"TargetName", "iqn.2026-11.test:nope"}}, statusNotFound},
		{"no initiator name", nil, 0, []KV{{"TargetName", testIQN}}, statusMissingParam},
		{"no target name", nil, 0, []KV{{"InitiatorName", testInit}}, statusMissingParam},
		{"unknown TSIH", nil, 77, []KV{{"InitiatorName", testInit}, {"TargetName", testIQN}}, statusNoSession},
		{"bad session type", nil, 0, []KV{{"InitiatorName", testInit}, {"SessionType", "Bogus"}}, statusBadSessionType},
		{"version", func(h *BHS) { h[3] = 1 }, 0, []KV{{"InitiatorName", testInit}, {"TargetName", testIQN}}, statusBadVersion},
		{"bad transit", func(h *BHS) { h[1] = 0x80 | 1<<2 | 1 }, 0, []KV{{"InitiatorName", testInit}, {"TargetName", testIQN}}, statusInitiatorError},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			ri := dialRaw(t, ts.addr)
			ri.tsih = c.tsih
			h := ri.loginReq(true, stageOperational, stageFullFeature)
			if c.tweak != nil {
				c.tweak(&h)
			}
			ri.send(h, nil, AppendText(nil, c.kvs))
			p := ri.mustRecv()
			st := uint16(p.BHS[36])<<8 | uint16(p.BHS[37])
			if p.BHS.Opcode() != OpLoginResp || st != c.status {
				t.Fatalf("got %v status 0x%04x, want 0x%04x", p.BHS.Opcode(), st, c.status)
			}
			ri.expectClosed()
		})
	}
	t.Run("non-login first PDU", func(t *testing.T) {
		ri := dialRaw(t, ts.addr)
		var h BHS
		h.SetOpcode(OpNOPOut, true)
		ri.send(h, nil, nil)
		ri.expectClosed()
	})
}

// TestLoginStages walks security -> operational -> full feature with a
// C-bit continuation in the operational stage.
func TestLoginStages(t *testing.T) {
	ts := startServer(t, nil)
	ri := dialRaw(t, ts.addr)
	st, resp, keys := ri.loginStep(true, stageSecurity, stageOperational,
		KV{"InitiatorName", testInit}, KV{"TargetName", testIQN}, KV{"AuthMethod", "CHAP,None"})
	if st != 0 || keys["AuthMethod"] != "None" || keys["TargetPortalGroupTag"] != "1" {
		t.Fatalf("security stage: 0x%04x %v", st, keys)
	}
	if resp.BHS[1] != 0x80|stageOperational {
		t.Fatalf("security response flags %#x", resp.BHS[1])
	}
	// Operational keys split over two PDUs (C bit).
	text := AppendText(nil, []KV{{"HeaderDigest", "None"}, {"MaxBurstLength", "65536"}, {"X-vendor.key", "1"}})
	h := ri.loginReq(false, stageOperational, stageFullFeature)
	h[1] |= 0x40
	ri.send(h, nil, text[:10])
	if p := ri.mustRecv(); p.BHS.Opcode() != OpLoginResp || p.BHS[1]&0xc0 != 0 || len(p.Data) != 0 {
		t.Fatalf("continuation response: flags %#x data %q", p.BHS[1], p.Data)
	}
	ri.send(ri.loginReq(true, stageOperational, stageFullFeature), nil, text[10:])
	resp = ri.mustRecv()
	list, _ := ParseText(resp.Data)
	got := map[string]string{}
	for _, kv := range list {
		got[kv.Key] = kv.Value
	}
	if got["MaxBurstLength"] != "65536" || got["X-vendor.key"] != valNotUnderstood || got["MaxRecvDataSegmentLength"] != "262144" {
		t.Fatalf("operational keys: %v", got)
	}
	if resp.BHS[1]&0x80 == 0 || resp.BHS[1]&3 != stageFullFeature || resp.BHS.u16(14) == 0 {
		t.Fatalf("final response flags %#x TSIH %d", resp.BHS[1], resp.BHS.u16(14))
	}
	ri.cmdSN = resp.BHS.u32(offExpStat)
	ri.tur()
}

func chapHex(id byte, secret string, challenge []byte) string {
	r := chapResponse(id, secret, challenge)
	return "0x" + hex.EncodeToString(r[:])
}

func TestLoginCHAP(t *testing.T) {
	const user, secret = "alice", "alice-secret-123"
	const tuser, tsecret = "target", "target-secret-456"
	ts := startServer(t, func(c *Config) {
		c.CHAP = &CHAPConfig{User: user, Secret: secret, MutualUser: tuser, MutualSecret: tsecret}
	})
	// start runs AuthMethod and CHAP_A and returns the target's challenge.
	start := func(t *testing.T) (*rawInit, byte, []byte) {
		ri := dialRaw(t, ts.addr)
		st, _, keys := ri.loginStep(false, stageSecurity, stageOperational,
			KV{"InitiatorName", testInit}, KV{"TargetName", testIQN}, KV{"AuthMethod", "None,CHAP"})
		if st != 0 || keys["AuthMethod"] != "CHAP" {
			t.Fatalf("AuthMethod: 0x%04x %v", st, keys)
		}
		st, _, keys = ri.loginStep(false, stageSecurity, stageOperational, KV{"CHAP_A", "7,5"})
		if st != 0 || keys["CHAP_A"] != "5" {
			t.Fatalf("CHAP_A: 0x%04x %v", st, keys)
		}
		var id int
		fmt.Sscan(keys["CHAP_I"], &id)
		c, err := decodeBinary(keys["CHAP_C"])
		if err != nil || len(c) < 16 {
			t.Fatalf("challenge %q: %v", keys["CHAP_C"], err)
		}
		return ri, byte(id), c
	}
	t.Run("one-way", func(t *testing.T) {
		ri, id, c := start(t)
		st, resp, _ := ri.loginStep(true, stageSecurity, stageOperational,
			KV{"CHAP_N", user}, KV{"CHAP_R", chapHex(id, secret, c)})
		if st != 0 || resp.BHS[1]&0x80 == 0 {
			t.Fatalf("CHAP response: 0x%04x flags %#x", st, resp.BHS[1])
		}
		st, resp, _ = ri.loginStep(true, stageOperational, stageFullFeature)
		if st != 0 || resp.BHS.u16(14) == 0 {
			t.Fatalf("operational: 0x%04x", st)
		}
		ri.cmdSN = resp.BHS.u32(offExpStat)
		ri.tur()
	})
	t.Run("mutual", func(t *testing.T) {
		ri, id, c := start(t)
		myC := []byte("initiator-challenge!")
		st, _, keys := ri.loginStep(true, stageSecurity, stageOperational,
			KV{"CHAP_N", user}, KV{"CHAP_R", chapHex(id, secret, c)},
			KV{"CHAP_I", "9"}, KV{"CHAP_C", "0x" + hex.EncodeToString(myC)})
		if st != 0 || keys["CHAP_N"] != tuser || keys["CHAP_R"] != chapHex(9, tsecret, myC) {
			t.Fatalf("mutual: 0x%04x %v", st, keys)
		}
	})
	t.Run("wrong secret", func(t *testing.T) {
		ri, id, c := start(t)
		st, _, _ := ri.loginStep(true, stageSecurity, stageOperational,
			KV{"CHAP_N", user}, KV{"CHAP_R", chapHex(id, "not-the-secret", c)})
		if st != statusAuthFailure {
			t.Fatalf("status 0x%04x", st)
		}
		ri.expectClosed()
	})
	t.Run("reflected challenge", func(t *testing.T) {
		ri, id, c := start(t)
		st, _, _ := ri.loginStep(true, stageSecurity, stageOperational,
			KV{"CHAP_N", user}, KV{"CHAP_R", chapHex(id, secret, c)},
			KV{"CHAP_I", fmt.Sprint(id)}, KV{"CHAP_C", "0x" + hex.EncodeToString(c)})
		if st != statusAuthFailure {
			t.Fatalf("status 0x%04x", st)
		}
	})
	t.Run("skip security", func(t *testing.T) {
		ri := dialRaw(t, ts.addr)
		st, _, _ := ri.loginStep(true, stageOperational, stageFullFeature,
			KV{"InitiatorName", testInit}, KV{"TargetName", testIQN})
		if st != statusAuthFailure {
			t.Fatalf("status 0x%04x", st)
		}
	})
	t.Run("AuthMethod None", func(t *testing.T) {
		ri := dialRaw(t, ts.addr)
		st, _, keys := ri.loginStep(true, stageSecurity, stageOperational,
			KV{"InitiatorName", testInit}, KV{"TargetName", testIQN}, KV{"AuthMethod", "None"})
		if st != statusAuthFailure || keys["AuthMethod"] != valReject {
			t.Fatalf("status 0x%04x %v", st, keys)
		}
	})
}

func TestDiscoverySendTargets(t *testing.T) {
	ts := startServer(t, nil)
	ri := dialRaw(t, ts.addr)
	ri.login("")
	for _, v := range []string{"All", testIQN} {
		var h BHS
		h.SetOpcode(OpTextReq, true)
		h[1] = 0x80
		h.setU32(offITT, ri.nextITT())
		h.setU32(offTTT, reservedTag)
		h.setU32(offCmdSN, ri.cmdSN)
		ri.send(h, nil, AppendText(nil, []KV{{"SendTargets", v}}))
		p := ri.mustRecv()
		kvs, err := ParseText(p.Data)
		if p.BHS.Opcode() != OpTextResp || !p.BHS.Final() || err != nil {
			t.Fatalf("%v final=%v %v", p.BHS.Opcode(), p.BHS.Final(), err)
		}
		want := []KV{{"TargetName", testIQN}, {"TargetAddress", ts.addr + ",1"}}
		if len(kvs) != 2 || kvs[0] != want[0] || kvs[1] != want[1] {
			t.Fatalf("SendTargets=%s: %v", v, kvs)
		}
	}
	// SCSI commands are refused in a discovery session.
	h := ri.scsiCmd(cdbTUR, 0, false, false, true)
	ri.send(h, nil, nil)
	if p := ri.mustRecv(); p.BHS.Opcode() != OpReject {
		t.Fatalf("SCSI command in discovery: %v", p.BHS.Opcode())
	}
	ri.expectClosed()
}

func TestSessionReinstatement(t *testing.T) {
	ts := startServer(t, nil)
	a := dialRaw(t, ts.addr)
	a.login(testIQN)
	a.tur()
	b := dialRaw(t, ts.addr)
	b.isid = a.isid
	b.login(testIQN)
	// By the time the new login completed, the old nexus was reported lost.
	select {
	case n := <-ts.rec.lost:
		if n.ISID != a.isid || n.InitiatorName != testInit || n.TargetName != testIQN || n.TPGT != 1 {
			t.Fatalf("NexusLost(%v)", n)
		}
	default:
		t.Fatal("old session's nexus not reported lost before the new login completed")
	}
	a.expectClosed()
	b.tur()
	if n := len(ts.srv.Connections()); n != 1 {
		t.Fatalf("%d connections, want 1", n)
	}
	ci := ts.srv.Connections()[0]
	if ci.InitiatorName != testInit || ci.TargetName != testIQN || ci.ISID != b.isid || ci.TSIH == 0 || ci.RemoteAddr.String() != b.nc.LocalAddr().String() {
		t.Fatalf("ConnInfo %+v", ci)
	}
}

func TestMaxSessions(t *testing.T) {
	ts := startServer(t, func(c *Config) { c.MaxSessions = 1 })
	a := dialRaw(t, ts.addr)
	a.login(testIQN)
	b := dialRaw(t, ts.addr)
	b.isid[5] = 9
	st, _, _ := b.loginStep(true, stageOperational, stageFullFeature, KV{"InitiatorName", testInit}, KV{"TargetName", testIQN})
	if st != statusNoResources {
		t.Fatalf("status 0x%04x", st)
	}
	a.tur()
}

// TestMalformedPDUs sends hostile PDUs on one session; each closes only
// that connection while a bystander session keeps working.
func TestMalformedPDUs(t *testing.T) {
	ts := startServer(t, nil)
	by := dialRaw(t, ts.addr)
	by.isid[5] = 0xee
	by.login(testIQN)
	cases := map[string]func(ri *rawInit){
		"oversized DataSegmentLength": func(ri *rawInit) {
			var h BHS
			h.SetOpcode(OpNOPOut, true)
			h.setU32(offITT, 5)
			h.setU32(offTTT, reservedTag)
			h.SetDataSegLen(MaxDataSegmentLength)
			ri.nc.Write(h[:])
		},
		"garbage AHS": func(ri *rawInit) {
			h := ri.scsiCmd(cdbTUR, 0, false, false, true)
			ri.send(h, bytes.Repeat([]byte{0xff}, 12), nil)
		},
		"Data-Out past expected length": func(ri *rawInit) {
			h := ri.scsiCmd(cdbWrite10(0, 1), 512, false, true, false)
			ri.send(h, nil, nil)
			var d BHS
			d.SetOpcode(OpSCSIDataOut, false)
			d[1] = 0x80
			d.setU32(offITT, h.ITT())
			d.setU32(offTTT, reservedTag)
			ri.send(d, nil, make([]byte, 1024))
		},
		"Data-Out beyond R2T": func(ri *rawInit) {
			h := ri.scsiCmd(cdbWrite10(0, 256), 128<<10, false, true, true)
			ri.send(h, nil, nil)
			r := ri.mustRecv()
			if r.BHS.Opcode() != OpR2T {
				ri.t.Fatalf("want R2T, got %v", r.BHS.Opcode())
			}
			var d BHS
			d.SetOpcode(OpSCSIDataOut, false)
			d[1] = 0x80
			d.setU32(offITT, h.ITT())
			d.setU32(offTTT, r.BHS.u32(offTTT))
			d.setU32(offBufOff, r.BHS.u32(offBufOff)+r.BHS.u32(offResidual)-512)
			ri.send(d, nil, make([]byte, 1024))
		},
		"immediate data without W": func(ri *rawInit) {
			h := ri.scsiCmd(cdbTUR, 0, false, false, true)
			ri.send(h, nil, make([]byte, 8))
		},
		"truncated header": func(ri *rawInit) {
			ri.nc.Write(make([]byte, 20))
			ri.nc.(interface{ CloseWrite() error }).CloseWrite()
		},
		"header digest error": func(ri *rawInit) {
			var h BHS
			h.SetOpcode(OpNOPOut, true)
			h.setU32(offITT, 5)
			b, _ := AppendPDU(nil, &PDU{BHS: h}, true, false)
			b[BHSLen] ^= 1
			ri.nc.Write(b)
		},
		"data digest error": func(ri *rawInit) {
			var h BHS
			h.SetOpcode(OpNOPOut, true)
			h.setU32(offITT, 5)
			h.setU32(offTTT, reservedTag)
			b, _ := AppendPDU(nil, &PDU{BHS: h, Data: []byte("ping")}, true, true)
			b[len(b)-1] ^= 1
			ri.nc.Write(b)
			if p := ri.mustRecv(); p.BHS.Opcode() != OpReject || p.BHS[2] != rejectDataDigest {
				ri.t.Fatalf("want Reject 0x02, got %v %#x", p.BHS.Opcode(), p.BHS[2])
			}
		},
		"duplicate ITT": func(ri *rawInit) {
			h := ri.scsiCmd(cdbWrite10(0, 256), 128<<10, false, true, true)
			ri.send(h, nil, nil)
			ri.mustRecv() // R2T
			ri.cmdSN++
			h.setU32(offCmdSN, ri.cmdSN)
			ri.send(h, nil, nil)
		},
	}
	for name, attack := range cases {
		t.Run(name, func(t *testing.T) {
			ri := dialRaw(t, ts.addr)
			extra := fastKeys
			if strings.Contains(name, "digest") {
				extra = append(extra, KV{"HeaderDigest", "CRC32C"}, KV{"DataDigest", "CRC32C"})
			}
			ri.login(testIQN, extra...)
			ri.hd, ri.dd = false, false
			if strings.Contains(name, "digest") {
				ri.hd, ri.dd = true, true
			}
			ri.tur()
			ri.hd, ri.dd = false, false
			attack(ri)
			if strings.Contains(name, "digest") {
				ri.hd, ri.dd = true, true
			}
			ri.expectClosed()
			by.tur()
		})
	}
}

func TestRejectUnknownOpcode(t *testing.T) {
	ts := startServer(t, nil)
	ri := dialRaw(t, ts.addr)
	ri.login(testIQN)
	for _, op := range []Opcode{0x1d, OpSNACKReq, OpSCSIResp} {
		var h BHS
		h.SetOpcode(op, true)
		ri.send(h, nil, nil)
		p := ri.mustRecv()
		if p.BHS.Opcode() != OpReject || !bytes.Equal(p.Data[:1], h[:1]) {
			t.Fatalf("opcode %v: got %v", op, p.BHS.Opcode())
		}
	}
	ri.tur() // the connection survives
}

// TestWriteR2T: InitialR2T=Yes, ImmediateData=No; every byte is
// solicited, honouring MaxBurstLength and MaxOutstandingR2T.
func TestWriteR2T(t *testing.T) {
	ts := startServer(t, nil)
	ri := dialRaw(t, ts.addr)
	ri.login(testIQN, KV{"InitialR2T", "Yes"}, KV{"ImmediateData", "No"}, KV{"MaxBurstLength", "65536"},
		KV{"MaxOutstandingR2T", "2"})
	const size = 512 << 10
	data := bytes.Repeat([]byte("0123456789abcdef"), size/16)
	h := ri.scsiCmd(cdbWrite10(8, size/512), size, false, true, true)
	ri.cmdSN++
	ri.send(h, nil, nil)
	outstanding, r2tsn, next := 0, uint32(0), uint32(0)
	var pending []PDU
	for {
		for len(pending) == 0 || outstanding < 2 && next < size {
			p := ri.mustRecv()
			if p.BHS.Opcode() == OpSCSIResp {
				if next != size || p.BHS[3] != 0 {
					t.Fatalf("response after %d bytes, status %#x", next, p.BHS[3])
				}
				got := make([]byte, size)
				ts.dev.ReadAt(got, 8*512)
				if !bytes.Equal(got, data) {
					t.Fatal("device content differs")
				}
				return
			}
			if p.BHS.Opcode() != OpR2T {
				t.Fatalf("got %v", p.BHS.Opcode())
			}
			off, l := p.BHS.u32(offBufOff), p.BHS.u32(offResidual)
			if p.BHS.u32(offDataSN) != r2tsn || off != next || l > 65536 {
				t.Fatalf("R2T sn %d off %d len %d; want sn %d off %d", p.BHS.u32(offDataSN), off, l, r2tsn, next)
			}
			r2tsn++
			next += l
			outstanding++
			if outstanding > 2 {
				t.Fatalf("%d R2Ts outstanding, MaxOutstandingR2T=2", outstanding)
			}
			pending = append(pending, p)
		}
		r := pending[0]
		pending = pending[1:]
		off, l := r.BHS.u32(offBufOff), r.BHS.u32(offResidual)
		for sn, o := uint32(0), off; o < off+l; sn, o = sn+1, o+8192 {
			var d BHS
			d.SetOpcode(OpSCSIDataOut, false)
			if o+8192 >= off+l {
				d[1] = 0x80
			}
			d.setU32(offITT, h.ITT())
			d.setU32(offTTT, r.BHS.u32(offTTT))
			d.setU32(offDataSN, sn)
			d.setU32(offBufOff, o)
			ri.send(d, nil, data[o:o+8192])
		}
		outstanding--
	}
}

// TestWriteUnsolicited: immediate data plus unsolicited Data-Out up to
// FirstBurstLength, then an R2T for the rest.
func TestWriteUnsolicited(t *testing.T) {
	ts := startServer(t, nil)
	ri := dialRaw(t, ts.addr)
	ri.login(testIQN, fastKeys...)
	const size = 128 << 10
	data := bytes.Repeat([]byte{0xa5, 0x5a, 1, 2}, size/4)
	h := ri.scsiCmd(cdbWrite10(0, size/512), size, false, true, false)
	ri.cmdSN++
	ri.send(h, nil, data[:8192])
	for o, sn := uint32(8192), uint32(0); o < 65536; o, sn = o+8192, sn+1 {
		var d BHS
		d.SetOpcode(OpSCSIDataOut, false)
		if o+8192 == 65536 {
			d[1] = 0x80
		}
		d.setU32(offITT, h.ITT())
		d.setU32(offTTT, reservedTag)
		d.setU32(offDataSN, sn)
		d.setU32(offBufOff, o)
		ri.send(d, nil, data[o:o+8192])
	}
	r := ri.mustRecv()
	if r.BHS.Opcode() != OpR2T || r.BHS.u32(offBufOff) != 65536 || r.BHS.u32(offResidual) != 65536 {
		t.Fatalf("want R2T for [64K,128K), got %v off %d len %d", r.BHS.Opcode(), r.BHS.u32(offBufOff), r.BHS.u32(offResidual))
	}
	var d BHS
	d.SetOpcode(OpSCSIDataOut, false)
	d[1] = 0x80
	d.setU32(offITT, h.ITT())
	d.setU32(offTTT, r.BHS.u32(offTTT))
	d.setU32(offBufOff, 65536)
	ri.send(d, nil, data[65536:])
	p := ri.mustRecv()
	if p.BHS.Opcode() != OpSCSIResp || p.BHS[3] != 0 {
		t.Fatalf("got %v status %#x", p.BHS.Opcode(), p.BHS[3])
	}
	got, _ := ri.read10(0, size/512)
	if !bytes.Equal(got, data) {
		t.Fatal("read-back differs")
	}
}

// TestDataInSplit: a read is cut into PDUs of the initiator's
// MaxRecvDataSegmentLength and sequences of MaxBurstLength.
func TestDataInSplit(t *testing.T) {
	ts := startServer(t, nil)
	data := make([]byte, 256<<10)
	for i := range data {
		data[i] = byte(i * 7)
	}
	ts.dev.WriteAt(data, 0)
	ri := dialRaw(t, ts.addr)
	ri.login(testIQN, KV{"MaxRecvDataSegmentLength", "8192"}, KV{"MaxBurstLength", "65536"})
	ri.tur()
	got, pdus := ri.read10(0, uint16(len(data)/512))
	if !bytes.Equal(got, data) {
		t.Fatal("read data differs")
	}
	if len(pdus) != 32 {
		t.Fatalf("%d Data-In PDUs, want 32", len(pdus))
	}
	for i, p := range pdus {
		last := i == len(pdus)-1
		if p.BHS.Opcode() != OpSCSIDataIn || len(p.Data) != 8192 || p.BHS.u32(offDataSN) != uint32(i) || p.BHS.u32(offBufOff) != uint32(i*8192) {
			t.Fatalf("PDU %d: %v len %d DataSN %d offset %d", i, p.BHS.Opcode(), len(p.Data), p.BHS.u32(offDataSN), p.BHS.u32(offBufOff))
		}
		if f := p.BHS.Final(); f != ((i+1)%8 == 0) {
			t.Fatalf("PDU %d: F=%v (MaxBurstLength 64K)", i, f)
		}
		if s := p.BHS[1]&1 != 0; s != last {
			t.Fatalf("PDU %d: S=%v", i, s)
		}
	}
}

func TestNOPOut(t *testing.T) {
	ts := startServer(t, nil)
	ri := dialRaw(t, ts.addr)
	ri.login(testIQN)
	// A non-immediate NOP-Out consumes a CmdSN: ExpCmdSN advances.
	var h BHS
	h.SetOpcode(OpNOPOut, false)
	h[1] = 0x80
	copy(h[8:16], []byte{0, 3})
	h.setU32(offITT, ri.nextITT())
	h.setU32(offTTT, reservedTag)
	h.setU32(offCmdSN, ri.cmdSN)
	ri.send(h, nil, []byte("hello"))
	p := ri.mustRecv()
	if p.BHS.Opcode() != OpNOPIn || p.BHS.ITT() != h.ITT() || string(p.Data) != "hello" || p.BHS.u32(offTTT) != reservedTag {
		t.Fatalf("NOP-In: %v itt %d data %q", p.BHS.Opcode(), p.BHS.ITT(), p.Data)
	}
	if !bytes.Equal(p.BHS[8:16], h[8:16]) {
		t.Fatal("LUN not echoed")
	}
	if exp := p.BHS.u32(offExpStat); exp != ri.cmdSN+1 {
		t.Fatalf("ExpCmdSN %d after a non-immediate NOP-Out with CmdSN %d", exp, ri.cmdSN)
	}
	ri.cmdSN++
	ri.tur()
}

// TestCmdSNOnWire: a command beyond a gap waits for the gap; one outside
// the window gets no answer at all.
func TestCmdSNOnWire(t *testing.T) {
	ts := startServer(t, func(c *Config) { c.MaxOutstandingCommands = 8 })
	ri := dialRaw(t, ts.addr)
	ri.login(testIQN)
	ri.tur()
	base := ri.cmdSN
	late := ri.scsiCmd(cdbTUR, 0, false, false, true)
	late.setU32(offCmdSN, base+1)
	ri.send(late, nil, nil)
	outside := ri.scsiCmd(cdbTUR, 0, false, false, true)
	outside.setU32(offCmdSN, base+100)
	ri.send(outside, nil, nil)
	if p, err := ri.recvTimeout(200 * time.Millisecond); err == nil {
		t.Fatalf("answer %v before the gap filled", p.BHS.Opcode())
	}
	first := ri.scsiCmd(cdbTUR, 0, false, false, true)
	first.setU32(offCmdSN, base)
	ri.send(first, nil, nil)
	seen := map[uint32]bool{}
	for i := 0; i < 2; i++ {
		p := ri.mustRecv()
		seen[p.BHS.ITT()] = true
		if exp := p.BHS.u32(offExpStat); exp != base+2 {
			// the first response may go out before the second is queued
			if exp != base+1 && exp != base+2 {
				t.Fatalf("ExpCmdSN %d", exp)
			}
		}
	}
	if !seen[first.ITT()] || !seen[late.ITT()] || seen[outside.ITT()] {
		t.Fatalf("answered %v", seen)
	}
	if p, err := ri.recvTimeout(200 * time.Millisecond); err == nil {
		t.Fatalf("out-of-window command answered: itt %d", p.BHS.ITT())
	}
}

func TestTMF(t *testing.T) {
	ts := startServer(t, nil)
	ri := dialRaw(t, ts.addr)
	ri.login(testIQN)
	ri.tur()
	tmf := func(fn byte, rtt, ref uint32) PDU {
		var h BHS
		h.SetOpcode(OpTaskMgmtReq, true)
		h[1] = 0x80 | fn
		h.setU32(offITT, ri.nextITT())
		h.setU32(offTTT, rtt)
		h.setU32(offCmdSN, ri.cmdSN+1)
		h.setU32(offRefCmdSN, ref)
		ri.send(h, nil, nil)
		p := ri.mustRecv()
		if p.BHS.Opcode() != OpTaskMgmtResp || p.BHS.ITT() != h.ITT() {
			t.Fatalf("got %v", p.BHS.Opcode())
		}
		return p
	}
	// RefCmdSN in the window, before the TMF's CmdSN, task never seen:
	// Function Complete, and that CmdSN counts as received.
	p := tmf(tmfAbortTask, 0x1234, ri.cmdSN)
	if p.BHS[2] != 0 || p.BHS.u32(offExpStat) != ri.cmdSN+1 {
		t.Fatalf("ABORT TASK (gap): response %d ExpCmdSN %d", p.BHS[2], p.BHS.u32(offExpStat))
	}
	ri.cmdSN++
	// RefCmdSN outside the window: Task Does Not Exist.
	if p := tmf(tmfAbortTask, 0x1235, ri.cmdSN-10); p.BHS[2] != 1 {
		t.Fatalf("ABORT TASK (old): response %d", p.BHS[2])
	}
	if p := tmf(tmfClearACA, 0, 0); p.BHS[2] != 5 {
		t.Fatalf("CLEAR ACA: response %d, want 5 (not supported)", p.BHS[2])
	}
	if p := tmf(tmfLUNReset, 0, 0); p.BHS[2] != 0 {
		t.Fatalf("LUN RESET: response %d", p.BHS[2])
	}
	ri.tur()
	// A write waiting for its R2T data is aborted without a response.
	h := ri.scsiCmd(cdbWrite10(0, 256), 128<<10, false, true, true)
	ri.cmdSN++
	ri.send(h, nil, nil)
	if r := ri.mustRecv(); r.BHS.Opcode() != OpR2T {
		t.Fatalf("want R2T, got %v", r.BHS.Opcode())
	}
	if p := tmf(tmfAbortTask, h.ITT(), h.u32(offCmdSN)); p.BHS[2] != 0 {
		t.Fatalf("ABORT TASK (pending write): response %d", p.BHS[2])
	}
	ri.tur()
}

func TestNopInTimeout(t *testing.T) {
	ts := startServer(t, func(c *Config) {
		c.NopInInterval = 50 * time.Millisecond
		c.NopInTimeout = 200 * time.Millisecond
	})
	// Answered pings keep the connection.
	ri := dialRaw(t, ts.addr)
	ri.login(testIQN)
	for i := 0; i < 3; i++ {
		p := ri.mustRecv()
		if p.BHS.Opcode() != OpNOPIn || p.BHS.u32(offTTT) == reservedTag || p.BHS.ITT() != reservedTag {
			t.Fatalf("want a NOP-In ping, got %v ttt %#x", p.BHS.Opcode(), p.BHS.u32(offTTT))
		}
		var h BHS
		h.SetOpcode(OpNOPOut, true)
		h[1] = 0x80
		h.setU32(offITT, reservedTag)
		h.setU32(offTTT, p.BHS.u32(offTTT))
		h.setU32(offCmdSN, ri.cmdSN)
		ri.send(h, nil, nil)
	}
	ri.tur()
	// Unanswered: dropped.
	quiet := dialRaw(t, ts.addr)
	quiet.isid[5] = 7
	quiet.login(testIQN)
	if p := quiet.mustRecv(); p.BHS.Opcode() != OpNOPIn {
		t.Fatalf("got %v", p.BHS.Opcode())
	}
	quiet.expectClosed()
}

func TestShutdownAsyncLogout(t *testing.T) {
	ts := startServer(t, func(c *Config) { c.ShutdownGrace = 10 * time.Second })
	ri := dialRaw(t, ts.addr)
	ri.login(testIQN)
	ri.tur()
	done := make(chan error, 1)
	go func() { done <- ts.srv.Shutdown(context.Background()) }()
	p := ri.mustRecv()
	if p.BHS.Opcode() != OpAsyncMsg || p.BHS[36] != 1 || p.BHS.u16(42) != 10 {
		t.Fatalf("want Async logout request, got %v event %d param3 %d", p.BHS.Opcode(), p.BHS[36], p.BHS.u16(42))
	}
	var h BHS
	h.SetOpcode(OpLogoutReq, true)
	h[1] = 0x80
	h.setU32(offITT, ri.nextITT())
	h.setU32(offCmdSN, ri.cmdSN)
	ri.send(h, nil, nil)
	p = ri.mustRecv()
	if p.BHS.Opcode() != OpLogoutResp || p.BHS[2] != 0 {
		t.Fatalf("got %v response %d", p.BHS.Opcode(), p.BHS[2])
	}
	ri.expectClosed()
	select {
	case err := <-done:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Shutdown did not return after the last session logged out")
	}
	select {
	case <-ts.rec.lost:
	default:
		t.Fatal("logout did not report the nexus lost")
	}
}

func TestLoginTimeout(t *testing.T) {
	ts := startServer(t, func(c *Config) { c.LoginTimeout = 100 * time.Millisecond })
	ri := dialRaw(t, ts.addr)
	ri.nc.Write(make([]byte, 10)) // half a header, then silence
	ri.expectClosed()
}

func TestTargetColdReset(t *testing.T) {
	ts := startServer(t, nil)
	a := dialRaw(t, ts.addr)
	a.login(testIQN)
	b := dialRaw(t, ts.addr)
	b.isid[5] = 0x42
	b.login(testIQN)
	var h BHS
	h.SetOpcode(OpTaskMgmtReq, true)
	h[1] = 0x80 | tmfTargetCold
	h.setU32(offITT, a.nextITT())
	h.setU32(offTTT, reservedTag)
	h.setU32(offCmdSN, a.cmdSN)
	a.send(h, nil, nil)
	p := a.mustRecv()
	if p.BHS.Opcode() != OpTaskMgmtResp || p.BHS[2] != 0 {
		t.Fatalf("got %v response %d", p.BHS.Opcode(), p.BHS[2])
	}
	a.expectClosed()
	b.expectClosed()
}

func TestLogoutVariants(t *testing.T) {
	ts := startServer(t, nil)
	ri := dialRaw(t, ts.addr)
	ri.login(testIQN)
	logout := func(reason byte, cid uint16) PDU {
		var h BHS
		h.SetOpcode(OpLogoutReq, true)
		h[1] = 0x80 | reason
		h.setU32(offITT, ri.nextITT())
		h.setU16(offTTT, cid)
		h.setU32(offCmdSN, ri.cmdSN)
		ri.send(h, nil, nil)
		p := ri.mustRecv()
		if p.BHS.Opcode() != OpLogoutResp {
			t.Fatalf("got %v", p.BHS.Opcode())
		}
		return p
	}
	if p := logout(2, 0); p.BHS[2] != 2 {
		t.Fatalf("remove connection for recovery: response %d, want 2", p.BHS[2])
	}
	if p := logout(1, 99); p.BHS[2] != 1 {
		t.Fatalf("close unknown CID: response %d, want 1", p.BHS[2])
	}
	ri.tur()
	if p := logout(1, 0); p.BHS[2] != 0 {
		t.Fatalf("close connection: response %d", p.BHS[2])
	}
	ri.expectClosed()
}

func TestSendTargetsNormalSession(t *testing.T) {
	ts := startServer(t, nil)
	ri := dialRaw(t, ts.addr)
	ri.login(testIQN)
	var h BHS
	h.SetOpcode(OpTextReq, false)
	h[1] = 0x80
	h.setU32(offITT, ri.nextITT())
	h.setU32(offTTT, reservedTag)
	h.setU32(offCmdSN, ri.cmdSN)
	ri.send(h, nil, AppendText(nil, []KV{{"SendTargets", ""}, {"X-foo", "1"}}))
	p := ri.mustRecv()
	kvs, _ := ParseText(p.Data)
	if p.BHS.Opcode() != OpTextResp || len(kvs) != 3 || kvs[0].Value != testIQN || kvs[2] != (KV{"X-foo", valNotUnderstood}) {
		t.Fatalf("%v %v", p.BHS.Opcode(), kvs)
	}
	if p.BHS.u32(offExpStat) != ri.cmdSN+1 {
		t.Fatal("non-immediate Text Request did not consume a CmdSN")
	}
	ri.cmdSN++
	ri.tur()
}

// TestSendTargetsContinuation: a SendTargets answer larger than the
// initiator's MaxRecvDataSegmentLength comes in C-bit pieces.
func TestSendTargetsContinuation(t *testing.T) {
	ts := startServer(t, nil)
	for i := 0; i < 300; i++ {
		if err := ts.srv.AddTarget(fmt.Sprintf("iqn.2026-11.test:extra-target-with-a-long-name-%03d", i), ts.rec); err != nil {
			t.Fatal(err)
		}
	}
	ri := dialRaw(t, ts.addr)
	ri.login("", KV{"MaxRecvDataSegmentLength", "4096"})
	var all []byte
	ttt := uint32(reservedTag)
	data := AppendText(nil, []KV{{"SendTargets", "All"}})
	for i := 0; ; i++ {
		var h BHS
		h.SetOpcode(OpTextReq, true)
		h[1] = 0x80
		h.setU32(offITT, 77)
		h.setU32(offTTT, ttt)
		h.setU32(offCmdSN, ri.cmdSN)
		ri.send(h, nil, data)
		data = nil
		p := ri.mustRecv()
		if p.BHS.Opcode() != OpTextResp || len(p.Data) > 4096 {
			t.Fatalf("piece %d: %v, %d bytes", i, p.BHS.Opcode(), len(p.Data))
		}
		all = append(all, p.Data...)
		if p.BHS.Final() {
			break
		}
		if p.BHS[1]&0x40 == 0 || p.BHS.u32(offTTT) == reservedTag {
			t.Fatalf("piece %d: neither F nor C with a TTT", i)
		}
		ttt = p.BHS.u32(offTTT)
	}
	// More pairs than ParseText accepts from a peer; count them instead.
	if n := bytes.Count(all, []byte{0}); n != 2*301 || !bytes.HasPrefix(all, []byte("TargetName=iqn.2026-11.test:extra")) {
		t.Fatalf("%d pairs", n)
	}
}

// panicBackend panics in Submit for CDB opcode 0xee.
type panicBackend struct{ *recBackend }

func (p panicBackend) Submit(cmd *scsi.Command, done func(*scsi.Response)) {
	if cmd.CDB[0] == 0xee {
		panic("backend bug")
	}
	p.recBackend.Submit(cmd, done)
}

func TestPanicEndsOnlyThatConnection(t *testing.T) {
	ts := startServer(t, nil)
	const iqn2 = "iqn.2026-11.test:panicky"
	if err := ts.srv.AddTarget(iqn2, panicBackend{ts.rec}); err != nil {
		t.Fatal(err)
	}
	by := dialRaw(t, ts.addr)
	by.login(testIQN)
	ri := dialRaw(t, ts.addr)
	ri.login(iqn2)
	h := ri.scsiCmd([]byte{0xee}, 0, false, false, true)
	ri.send(h, nil, nil)
	ri.expectClosed()
	by.tur()
}

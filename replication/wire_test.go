package replication

import (
	"bytes"
	"encoding/binary"
	"errors"
	"hash/crc32"
	"io"
	"reflect"
	"runtime"
	"strings"
	"testing"
)

// sampleMessages returns one populated message of every type, reused by
// the round-trip tests and the fuzz seed corpus.
func sampleMessages() []Message {
	data := bytes.Repeat([]byte("hablock!"), 512) // 4 KiB
	sha := bytes.Repeat([]byte{0xab}, 32)
	return []Message{
		&Handshake{
			VolumeUUID: [16]byte{1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16},
			NodeName:   "node-a", MinProto: 1, MaxProto: 3, Features: 0x5,
			GI:   GenIDs{Current: 0x1234_5678_9abc_def1, Bitmap: 0x42, History: [2]uint64{7, 9}},
			Disk: UpToDate, Role: RolePrimary, Flags: FlagCrashedPrimary,
			VolumeSize: 1 << 30, BlockSize: 4096, DirtyBlocks: 17,
		},
		&Write{Offset: 8192, ID: 99, Flags: WriteFUA | WriteFlushBefore, Data: data},
		&WriteAck{Status: StatusOK, IDs: []uint64{1, 2, 3, 1 << 60}},
		&Barrier{Nr: 12},
		&BarrierAck{Nr: 12, Writes: 77},
		&Flush{ID: 5},
		&FlushAck{ID: 5, Status: StatusIOError},
		&Ping{Nonce: 0xfeed},
		&PingAck{Nonce: 0xfeed},
		&ResyncRequest{ID: 3, Offset: 1 << 20, Length: 65536},
		&ResyncData{ID: 3, Offset: 1 << 20, Status: StatusOK, Data: data[:512]},
		&ResyncData{ID: 4, Offset: 0, Status: StatusIOError},
		&ChecksumRequest{ID: 8, Offset: 4096, Length: 4096, Algo: ChecksumSHA256, Sum: sha},
		&ChecksumRequest{ID: 8, Offset: 4096, Length: 4096, Algo: ChecksumCRC32C},
		&ChecksumReply{ID: 8, Offset: 4096, Length: 4096, Algo: ChecksumCRC32C, Status: StatusOK, Sum: []byte{1, 2, 3, 4}},
		&VerifyRequest{ChecksumRequest{ID: 9, Offset: 0, Length: 1 << 20, Algo: ChecksumSHA256}},
		&VerifyReply{ChecksumReply{ID: 9, Offset: 0, Length: 1 << 20, Algo: ChecksumSHA256, Status: StatusOK, Sum: sha}},
		&BitmapChunk{StartBlock: 64, Blocks: 20, Encoding: BitmapRaw, Data: []byte{0xff, 0x01, 0x0f}},
		&BitmapChunk{StartBlock: 0, Blocks: 300, Encoding: BitmapRLE, Flags: BitmapLast, Data: []byte{10, 5, 0x80 | 29, 1}},
		&StateChange{Role: RoleSecondary, Disk: Inconsistent, Repl: SyncTarget, GI: GenIDs{Current: 10, History: [2]uint64{8, 6}}},
		&SyncUUID{UUID: 0x0001_0000_0000_0042},
		&Disconnect{Code: DisconnectSplitBrain, Reason: "split brain detected"},
		&Discard{ID: 7, Offset: 4096, Length: 1 << 20},
	}
}

func TestRoundTripAllMessages(t *testing.T) {
	covered := map[MsgType]bool{}
	var stream []byte
	for i, m := range sampleMessages() {
		covered[m.Type()] = true
		frame, err := AppendFrame(nil, uint64(i), 0, m)
		if err != nil {
			t.Fatalf("%v: %v", m.Type(), err)
		}
		stream = append(stream, frame...)
		f, n, err := Decode(frame)
		if err != nil || n != len(frame) {
			t.Fatalf("%v: Decode n=%d/%d err=%v", m.Type(), n, len(frame), err)
		}
		if f.Type != m.Type() || f.Seq != uint64(i) || f.Version != FrameVersion {
			t.Errorf("%v: header %+v", m.Type(), f.Header)
		}
		got, err := ParseMessage(f)
		if err != nil {
			t.Fatalf("%v: %v", m.Type(), err)
		}
		if !reflect.DeepEqual(got, m) {
			t.Errorf("%v: round trip\n got %+v\nwant %+v", m.Type(), got, m)
		}
		// Re-encoding is byte-identical (the encoding is canonical).
		again, _ := AppendFrame(nil, uint64(i), 0, got)
		if !bytes.Equal(again, frame) {
			t.Errorf("%v: re-encoding differs", m.Type())
		}
	}
	for ty := MsgHandshake; ty < numMsgTypes; ty++ {
		if !covered[ty] {
			t.Errorf("no sample for %v", ty)
		}
	}
	// The same frames back to back through ReadFrame, reusing one buffer.
	r := bytes.NewReader(stream)
	var buf []byte
	for i, m := range sampleMessages() {
		f, b, err := ReadFrame(r, MaxPayload, buf)
		if err != nil {
			t.Fatalf("ReadFrame %d: %v", i, err)
		}
		buf = b
		got, err := ParseMessage(f)
		if err != nil || !reflect.DeepEqual(got, m) {
			t.Fatalf("ReadFrame %d: %v %+v", i, err, got)
		}
	}
	if _, _, err := ReadFrame(r, MaxPayload, buf); err != io.EOF {
		t.Errorf("at end: %v, want io.EOF", err)
	}
}

func TestMaxSizedWrite(t *testing.T) {
	w := &Write{Offset: 0, ID: 1, Data: make([]byte, MaxData)}
	frame, err := AppendFrame(nil, 1, 0, w)
	if err != nil {
		t.Fatal(err)
	}
	if len(frame) > MaxFrame {
		t.Fatalf("frame %d > MaxFrame %d", len(frame), MaxFrame)
	}
	if _, _, err := Decode(frame); err != nil {
		t.Fatal(err)
	}
	w.Data = make([]byte, MaxData+1)
	if _, err := AppendFrame(nil, 1, 0, w); !errors.Is(err, ErrMalformed) {
		t.Errorf("oversized write: %v", err)
	}
}

// reheader rewrites header fields of a valid frame and fixes the header
// CRC, to reach the checks behind it.
func reheader(frame []byte, edit func(h []byte)) []byte {
	f := bytes.Clone(frame)
	edit(f[:HeaderSize])
	binary.BigEndian.PutUint32(f[28:32], crc32.Checksum(f[:28], castagnoli))
	return f
}

func TestDecodeErrors(t *testing.T) {
	good, _ := AppendFrame(nil, 7, 0, &Ping{Nonce: 1})
	cases := []struct {
		name  string
		frame []byte
		want  error
	}{
		{"bad magic", reheader(good, func(h []byte) { h[0] = 'X' }), ErrBadMagic},
		{"header crc", func() []byte { f := bytes.Clone(good); f[13] ^= 1; return f }(), ErrCorrupt},
		{"payload crc", func() []byte { f := bytes.Clone(good); f[HeaderSize] ^= 0x80; return f }(), ErrCorrupt},
		{"version", reheader(good, func(h []byte) { binary.BigEndian.PutUint16(h[4:], 2) }), ErrVersion},
		{"reserved", reheader(good, func(h []byte) { h[11] = 1 }), ErrMalformed},
		{"type 0", reheader(good, func(h []byte) { binary.BigEndian.PutUint16(h[6:], 0) }), ErrUnknownType},
		{"type unknown", reheader(good, func(h []byte) { binary.BigEndian.PutUint16(h[6:], uint16(numMsgTypes)) }), ErrUnknownType},
		{"too large", reheader(good, func(h []byte) { binary.BigEndian.PutUint32(h[20:], MaxPayload+1) }), ErrTooLarge},
		{"huge", reheader(good, func(h []byte) { binary.BigEndian.PutUint32(h[20:], 0xffffffff) }), ErrTooLarge},
		{"short header", good[:HeaderSize-1], ErrShortBuffer},
		{"short payload", good[:len(good)-1], ErrShortBuffer},
		{"longer length", reheader(good, func(h []byte) { binary.BigEndian.PutUint32(h[20:], 9) }), ErrShortBuffer},
	}
	for _, c := range cases {
		if _, _, err := Decode(c.frame); !errors.Is(err, c.want) {
			t.Errorf("%s: %v, want %v", c.name, err, c.want)
		}
	}
	// Every single-bit flip anywhere in a frame is detected.
	for i := range good {
		for bit := range 8 {
			f := bytes.Clone(good)
			f[i] ^= 1 << bit
			if _, _, err := Decode(f); err == nil {
				t.Fatalf("bit flip at byte %d bit %d undetected", i, bit)
			}
		}
	}
	// Trailing bytes after a frame are left for the next Decode.
	two := append(bytes.Clone(good), good...)
	if _, n, err := Decode(two); err != nil || n != len(good) {
		t.Errorf("two frames: n=%d err=%v", n, err)
	}
}

func TestReadFrameBounds(t *testing.T) {
	big, _ := AppendFrame(nil, 1, 0, &Write{ID: 1, Data: make([]byte, 4096)})
	// A per-call max below the frame's length is refused before the
	// payload is read or a buffer allocated.
	buf := make([]byte, 0, 64)
	_, out, err := ReadFrame(bytes.NewReader(big), 1024, buf)
	if !errors.Is(err, ErrTooLarge) || cap(out) != 64 {
		t.Errorf("max 1024: err=%v cap=%d", err, cap(out))
	}
	// A lying header costs no allocation beyond the header.
	lie := reheader(big, func(h []byte) { binary.BigEndian.PutUint32(h[20:], 0xfffffff0) })
	var before, after runtime.MemStats
	runtime.ReadMemStats(&before)
	for range 20 {
		_, _, err = ReadFrame(bytes.NewReader(lie[:HeaderSize]), MaxPayload, buf)
	}
	runtime.ReadMemStats(&after)
	if !errors.Is(err, ErrTooLarge) || after.TotalAlloc-before.TotalAlloc > 64<<10 {
		t.Errorf("lying header: err=%v allocated %d bytes", err, after.TotalAlloc-before.TotalAlloc)
	}
	// A max above MaxPayload is capped.
	if _, _, err := ReadFrame(bytes.NewReader(lie), 0xffffffff, nil); !errors.Is(err, ErrTooLarge) {
		t.Errorf("max capped: %v", err)
	}
	// Truncated payload.
	if _, _, err := ReadFrame(bytes.NewReader(big[:len(big)-10]), MaxPayload, nil); err != io.ErrUnexpectedEOF {
		t.Errorf("truncated: %v", err)
	}
	// Corrupt payload.
	bad := bytes.Clone(big)
	bad[len(bad)-1] ^= 1
	if _, _, err := ReadFrame(bytes.NewReader(bad), MaxPayload, nil); !errors.Is(err, ErrCorrupt) {
		t.Errorf("corrupt: %v", err)
	}
	// Buffer reuse: a big-enough buffer is not reallocated.
	buf = make([]byte, 0, len(big))
	_, out, err = ReadFrame(bytes.NewReader(big), MaxPayload, buf)
	if err != nil || &out[:1][0] != &buf[:1][0] {
		t.Errorf("buffer not reused: %v", err)
	}
}

// Every strict prefix of every sample payload, and every payload with one
// trailing byte, must be refused.
func TestUnmarshalStrict(t *testing.T) {
	for _, m := range sampleMessages() {
		p, err := m.Marshal(nil)
		if err != nil {
			t.Fatal(err)
		}
		for n := range len(p) {
			fresh, _ := NewMessage(m.Type())
			if err := fresh.Unmarshal(p[:n]); err == nil {
				// A shorter payload can be valid only for messages whose
				// tail is variable-length data. Their re-encoding must
				// then be that prefix exactly.
				q, _ := fresh.Marshal(nil)
				if !bytes.Equal(q, p[:n]) {
					t.Errorf("%v: prefix %d accepted but not canonical", m.Type(), n)
				}
				switch m.(type) {
				case *Write, *WriteAck, *Handshake, *Disconnect, *Barrier, *Ping:
					t.Errorf("%v: prefix %d/%d accepted", m.Type(), n, len(p))
				}
			} else if !errors.Is(err, ErrMalformed) {
				t.Errorf("%v: prefix %d: %v is not ErrMalformed", m.Type(), n, err)
			}
		}
		fresh, _ := NewMessage(m.Type())
		if err := fresh.Unmarshal(append(bytes.Clone(p), 0)); err == nil {
			switch m.(type) {
			case *ResyncData, *ChecksumRequest, *ChecksumReply, *VerifyRequest, *VerifyReply, *BitmapChunk:
				// variable tail: one more byte is a different (checked) length
				q, _ := fresh.Marshal(nil)
				if !bytes.Equal(q, append(bytes.Clone(p), 0)) {
					t.Errorf("%v: trailing byte accepted, not canonical", m.Type())
				}
			default:
				t.Errorf("%v: trailing byte accepted", m.Type())
			}
		}
	}
}

func TestMarshalRefusesOutOfBounds(t *testing.T) {
	hs := sampleMessages()[0].(*Handshake)
	bad := []Message{
		&Write{Data: nil},
		&Write{Data: []byte{1}, Flags: 1 << 7},
		&WriteAck{IDs: nil},
		&WriteAck{IDs: make([]uint64, MaxAckIDs+1)},
		&WriteAck{IDs: []uint64{1}, Status: numStatus},
		&FlushAck{Status: 99},
		&ResyncRequest{Length: 0},
		&ResyncRequest{Length: MaxData + 1},
		&ResyncData{Status: StatusOK},
		&ResyncData{Status: StatusIOError, Data: []byte{1}},
		&ChecksumRequest{Length: 1, Algo: 9},
		&ChecksumRequest{Length: 1, Algo: ChecksumCRC32C, Sum: make([]byte, 32)},
		&ChecksumReply{Length: 1, Algo: ChecksumSHA256, Sum: make([]byte, 4)},
		&BitmapChunk{Encoding: BitmapRaw, Blocks: 9, Data: []byte{1}},
		&BitmapChunk{Encoding: 7},
		&BitmapChunk{Encoding: BitmapRLE, Data: make([]byte, MaxBitmapChunkData+1)},
		&StateChange{Role: 9},
		&Disconnect{Reason: strings.Repeat("x", MaxReason+1)},
	}
	for _, f := range []func(h *Handshake){
		func(h *Handshake) { h.NodeName = "" },
		func(h *Handshake) { h.NodeName = strings.Repeat("n", MaxNodeName+1) },
		func(h *Handshake) { h.MinProto = 0 },
		func(h *Handshake) { h.MinProto, h.MaxProto = 3, 2 },
		func(h *Handshake) { h.Disk = numDiskStates },
		func(h *Handshake) { h.Role = numRoles },
		func(h *Handshake) { h.Flags = 1 << 20 },
		func(h *Handshake) { h.BlockSize = 3000 },
		func(h *Handshake) { h.BlockSize = 256 },
		func(h *Handshake) { h.VolumeSize = 1<<30 + 1 },
	} {
		c := *hs
		f(&c)
		bad = append(bad, &c)
	}
	for _, m := range bad {
		if out, err := m.Marshal([]byte{9}); !errors.Is(err, ErrMalformed) || !bytes.Equal(out, []byte{9}) {
			t.Errorf("%v %+v: err=%v out=%v", m.Type(), m, err, out)
		}
		if _, err := AppendFrame(nil, 0, 0, m); err == nil {
			t.Errorf("%v: AppendFrame accepted", m.Type())
		}
	}
}

func TestNewMessageUnknown(t *testing.T) {
	if _, err := NewMessage(0); !errors.Is(err, ErrUnknownType) {
		t.Error(err)
	}
	if _, err := NewMessage(numMsgTypes); !errors.Is(err, ErrUnknownType) {
		t.Error(err)
	}
	for ty := MsgHandshake; ty < numMsgTypes; ty++ {
		m, err := NewMessage(ty)
		if err != nil || m.Type() != ty {
			t.Errorf("%v: %v", ty, err)
		}
		if strings.Contains(ty.String(), "(") {
			t.Errorf("%d has no name", ty)
		}
	}
}

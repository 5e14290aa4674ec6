package replication

import (
	"bytes"
	"testing"
)

// The zero-copy ResyncData frame used by the resync source must be
// byte-identical to AppendFrame's encoding.
func TestPreparedResyncDataFrame(t *testing.T) {
	data := bytes.Repeat([]byte{0xA5, 1, 2, 3}, 1024)
	want, err := AppendFrame(nil, 42, 0, &ResyncData{ID: idResync | 7, Offset: 8192, Status: StatusOK, Data: data})
	if err != nil {
		t.Fatal(err)
	}
	frame, buf := newResyncDataFrame(idResync|7, 8192, len(data))
	copy(buf, data)
	if err := sealPayload(frame, MsgResyncData, 0); err != nil {
		t.Fatal(err)
	}
	sealHeader(frame, 42)
	if !bytes.Equal(frame, want) {
		t.Fatalf("prepared frame differs from AppendFrame's")
	}
	f, n, err := Decode(frame)
	if err != nil || n != len(frame) {
		t.Fatalf("decode: %v (n %d)", err, n)
	}
	m, err := ParseMessage(f)
	if err != nil {
		t.Fatal(err)
	}
	if rd := m.(*ResyncData); rd.ID != idResync|7 || rd.Offset != 8192 || !bytes.Equal(rd.Data, data) {
		t.Fatalf("decoded %+v", rd)
	}
}

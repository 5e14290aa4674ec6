package scsi

import (
	"testing"

	"github.com/hablock/hablock/blockdev"
)

// FuzzDecodeCDB feeds arbitrary CDBs (with arbitrary data-out and expected
// lengths) to the pure decoder and then to a small logical unit. Neither
// may panic, the decoder's transfer sizes stay within MaxTransferBytes and
// no response carries more data than the initiator can receive.
func FuzzDecodeCDB(f *testing.F) {
	f.Add([]byte{opRead10, 0, 0, 0, 0, 0, 0, 0, 1, 0}, []byte{}, uint32(512), false)
	f.Add([]byte{opInquiry, 1, 0x83, 0, 255, 0}, []byte{}, uint32(255), false)
	tgt := NewTarget("iqn.2026-11.test:fuzz", nil)
	dev := blockdev.NewMemory(1 << 20)
	if err := tgt.AddLUN(0, LUConfig{Device: dev, BlockSize: 512, WriteCache: true}); err != nil {
		f.Fatal(err)
	}
	dev4k := blockdev.NewMemory(1 << 20)
	if err := tgt.AddLUN(1, LUConfig{Device: dev4k, BlockSize: 4096}); err != nil {
		f.Fatal(err)
	}
	f.Fuzz(func(t *testing.T, cdb []byte, data []byte, edtl uint32, big bool) {
		bs := uint32(512)
		if big {
			bs = 4096
		}
		c, se := DecodeCDB(cdb, bs)
		if (c == nil) == (se == nil) {
			t.Fatalf("DecodeCDB returned %v and %v", c, se)
		}
		if c != nil {
			if c.Len > len(cdb) || c.Op != cdb[0] {
				t.Fatalf("bad length/opcode: %+v", c)
			}
			if c.DataOut > MaxTransferBytes {
				t.Fatalf("data-out %d above the cap", c.DataOut)
			}
			if c.Kind == KindRead && c.DataIn > MaxTransferBytes {
				t.Fatalf("data-in %d above the cap", c.DataIn)
			}
		} else {
			_ = se.Bytes(false)
			_ = se.Bytes(true)
		}
		if len(data) > int(edtl) {
			data = data[:edtl]
		}
		// Keep executed writes small so the fuzzer stays fast.
		if edtl > 1<<20 {
			edtl = 1 << 20
		}
		cmd := &Command{Nexus: nexA, LUN: 0, CDB: cdb, ExpectedLength: edtl, Read: len(data) == 0, Write: len(data) > 0, Data: data}
		if big {
			cmd.LUN = 1
		}
		ch := make(chan *Response, 1)
		tgt.Submit(cmd, func(r *Response) { ch <- r })
		r := <-ch
		if r.Status == StatusCheckCondition {
			if k, a := senseKeyASC(r); k == KeyHardwareError && a == ascInternalTargetFailure {
				t.Fatalf("internal failure (panic) for CDB % x", cdb)
			}
		}
		if uint32(len(r.Data)) > cmd.ExpectedLength {
			t.Fatalf("%d bytes of data-in for expected length %d", len(r.Data), cmd.ExpectedLength)
		}
	})
}

package replication

import (
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hablock/hablock/blockdev"
)

// BenchmarkReplicatedWrite measures WriteAt over loopback TCP with
// in-memory devices on both sides: the engine's own overhead.
func BenchmarkReplicatedWrite(b *testing.B) {
	for _, proto := range []Protocol{ProtocolC, ProtocolA} {
		for _, qd := range []int{1, 16} {
			b.Run(fmt.Sprintf("proto=%v/bs=4k/qd=%d", proto, qd), func(b *testing.B) {
				cfg := testConfig()
				cfg.Protocol = proto
				pr := newPair(b, cfg, syncedState("a", RolePrimary), syncedState("b", RoleSecondary), nil, nil, nil)
				pr.waitInSync(5 * time.Second)
				buf := make([]byte, 4096)
				b.SetBytes(4096)
				b.ReportAllocs()
				b.ResetTimer()
				var next atomic.Int64
				var wg sync.WaitGroup
				for w := 0; w < qd; w++ {
					wg.Add(1)
					go func() {
						defer wg.Done()
						for {
							i := next.Add(1)
							if i > int64(b.N) {
								return
							}
							if _, err := pr.p.v.WriteAt(buf, (i%1024)*4096); err != nil {
								b.Error(err)
								return
							}
						}
					}()
				}
				wg.Wait()
			})
		}
	}
}

// BenchmarkFullSync measures a full initial sync of a 64 MiB volume over
// loopback TCP with in-memory devices and an unlimited resync rate.
func BenchmarkFullSync(b *testing.B) {
	const size = 64 << 20
	cfg := testConfig()
	cfg.ResyncRate = 1 << 50
	pmem := blockdev.NewMemory(size)
	b.SetBytes(size)
	for i := 0; i < b.N; i++ {
		fresh := State{VolumeUUID: testVolUUID, NodeName: "b", Role: RoleSecondary, Disk: Inconsistent, GI: NewGenIDs()}
		pr := newPair(b, cfg, syncedState("a", RolePrimary), fresh, nil, pmem, blockdev.NewMemory(size))
		pr.waitInSync(60 * time.Second)
		b.StopTimer()
		pr.close()
		b.StartTimer()
	}
}

// BenchmarkReplicatedWriteLarge: 1 MiB writes at queue depth 4 (the
// volume is 4 MiB, so each worker rewrites one quarter of it).
func BenchmarkReplicatedWriteLarge(b *testing.B) {
	const bs, qd = 1 << 20, 4
	cfg := testConfig()
	pr := newPair(b, cfg, syncedState("a", RolePrimary), syncedState("b", RoleSecondary), nil, nil, nil)
	pr.waitInSync(5 * time.Second)
	b.SetBytes(bs)
	b.ReportAllocs()
	b.ResetTimer()
	var next atomic.Int64
	var wg sync.WaitGroup
	for w := 0; w < qd; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			buf := make([]byte, bs)
			for {
				i := next.Add(1)
				if i > int64(b.N) {
					return
				}
				if _, err := pr.p.v.WriteAt(buf, (i%4)*bs); err != nil {
					b.Error(err)
					return
				}
			}
		}()
	}
	wg.Wait()
}

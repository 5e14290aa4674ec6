package replication

import (
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"
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

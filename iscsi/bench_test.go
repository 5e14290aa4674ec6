package iscsi

import (
	"fmt"
	"os/exec"
	"testing"
)

// BenchmarkQemuImg drives the in-process server with qemu-img bench (a
// real initiator: qemu's iscsi driver on libiscsi), one b.N-sized run per
// case. The LUN is in memory, so this measures the transport and the SCSI
// core. Profile with -cpuprofile.
func BenchmarkQemuImg(b *testing.B) {
	bin, err := exec.LookPath("qemu-img")
	if err != nil {
		b.Skip("qemu-img not installed")
	}
	cases := []struct {
		name  string
		write bool
		size  int
		depth int
	}{
		{"write/bs=4k/qd=1", true, 4096, 1},
		{"read/bs=4k/qd=1", false, 4096, 1},
		{"write/bs=4k/qd=16", true, 4096, 16},
		{"read/bs=4k/qd=16", false, 4096, 16},
		{"write/bs=1M/qd=4", true, 1 << 20, 4},
	}
	ts := startServer(b, nil)
	for _, c := range cases {
		b.Run(c.name, func(b *testing.B) {
			args := []string{"bench", "-c", fmt.Sprint(b.N), "-d", fmt.Sprint(c.depth),
				"-s", fmt.Sprint(c.size), "-S", fmt.Sprint(c.size)}
			if c.write {
				args = append(args, "-w")
			}
			if c.size*b.N > 48<<20 {
				args = append(args, "-o", "0", "-S", "0") // stay inside the 64 MiB LUN
			}
			args = append(args, "--image-opts", "driver=iscsi,transport=tcp,portal="+ts.addr+",target="+testIQN+",lun=0")
			b.SetBytes(int64(c.size))
			b.ResetTimer()
			if out, err := exec.Command(bin, args...).CombinedOutput(); err != nil {
				b.Fatalf("qemu-img bench: %v\n%s", err, out)
			}
		})
	}
}

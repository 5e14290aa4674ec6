package main

import (
	"bytes"
	"crypto/sha256"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"syscall"
	"testing"
	"time"
)

// fuseLUN is the LUN exported as a plain file through qemu-storage-daemon's
// FUSE export: the user-space stand-in for a kernel iSCSI initiator.
type fuseLUN struct {
	cmd      *exec.Cmd
	path     string
	done     chan error
	detached bool
}

func needRootFUSE(t *testing.T) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root for loop mounts: skipping")
	}
	if _, err := os.Stat("/dev/fuse"); err != nil {
		t.Skip("no /dev/fuse: skipping")
	}
	needTools(t, "qemu-storage-daemon", "mkfs.ext4", "e2fsck", "mount", "umount")
}

// attachFUSE starts qemu-storage-daemon connected to the target at addr and
// waits until path is the LUN (a FUSE file of the LUN's size).
func attachFUSE(t *testing.T, addr, path string, size int64) *fuseLUN {
	t.Helper()
	if f, err := os.Create(path); err == nil {
		f.Close()
	}
	cmd := exec.Command("qemu-storage-daemon",
		"--blockdev", fmt.Sprintf("driver=iscsi,node-name=lun,transport=tcp,portal=%s,target=%s,lun=0,initiator-name=iqn.2026-11.test:fuse", addr, testIQN),
		"--export", fmt.Sprintf("type=fuse,id=exp,node-name=lun,mountpoint=%s,writable=on", path))
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	l := &fuseLUN{cmd: cmd, path: path, done: make(chan error, 1)}
	go func() { l.done <- cmd.Wait() }()
	deadline := time.Now().Add(30 * time.Second)
	for {
		if fi, err := os.Stat(path); err == nil && fi.Size() == size {
			return l
		}
		select {
		case err := <-l.done:
			t.Fatalf("qemu-storage-daemon exited: %v\n%s", err, out.String())
		default:
		}
		if time.Now().After(deadline) {
			_ = cmd.Process.Kill()
			t.Fatalf("FUSE export did not appear at %s\n%s", path, out.String())
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func (l *fuseLUN) detach(t *testing.T) {
	t.Helper()
	if l.detached {
		return
	}
	l.detached = true
	_ = l.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-l.done:
	case <-time.After(20 * time.Second):
		_ = l.cmd.Process.Kill()
		<-l.done
		t.Errorf("qemu-storage-daemon ignored SIGTERM")
	}
	_ = exec.Command("umount", "-l", l.path).Run() // in case FUSE stayed mounted
}

// TestExportExt4SurvivesTargetRestart is the filesystem scenario:
// ext4 on the exported LUN through qemu-storage-daemon + FUSE + loop, 1,000
// files written with fsync, the target SIGKILLed and started again on the
// same port in the middle, and the writer must see no error. Then unmount,
// remount, check every file, and e2fsck -fn the backing file.
func TestExportExt4SurvivesTargetRestart(t *testing.T) {
	needRootFUSE(t)
	const size = 256 << 20
	const files = 1000
	const killAt = 300
	dir := t.TempDir()
	backing := filepath.Join(dir, "vol.img")
	p := startHablock(t, exportArgs(backing, "256M", "--nop-interval", "1s", "--nop-timeout", "3s")...)
	addr := p.addr

	lunPath := filepath.Join(dir, "lun")
	lun := attachFUSE(t, addr, lunPath, size)
	defer func() { lun.detach(t) }()
	mustTool(t, 2*time.Minute, "mkfs.ext4", "-q", "-F", lunPath)
	mnt := filepath.Join(dir, "mnt")
	if err := os.Mkdir(mnt, 0o755); err != nil {
		t.Fatal(err)
	}
	mustTool(t, time.Minute, "mount", "-o", "loop", lunPath, mnt)
	mounted := true
	defer func() {
		if mounted {
			_ = exec.Command("umount", mnt).Run()
		}
	}()

	rng := rand.New(rand.NewPCG(1, 2))
	sums := make(map[string][32]byte, files)
	var lat []time.Duration
	for i := 0; i < files; i++ {
		if i == killAt {
			p.kill()
			// Same port, so the initiator's reconnect finds it.
			p = startHablock(t, "export", "--backing", backing, "--listen", addr, "--iqn", testIQN,
				"--shutdown-grace", "2s", "--nop-interval", "1s", "--nop-timeout", "3s")
		}
		name := fmt.Sprintf("f%04d", i)
		data := make([]byte, 4096+rng.IntN(60<<10))
		for j := range data {
			data[j] = byte(rng.Uint32())
		}
		start := time.Now()
		f, err := os.Create(filepath.Join(mnt, name))
		if err != nil {
			t.Fatalf("file %d: create: %v", i, err)
		}
		if _, err := f.Write(data); err != nil {
			t.Fatalf("file %d: write: %v", i, err)
		}
		if err := f.Sync(); err != nil {
			t.Fatalf("file %d: fsync: %v", i, err)
		}
		if err := f.Close(); err != nil {
			t.Fatalf("file %d: close: %v", i, err)
		}
		lat = append(lat, time.Since(start))
		sums[name] = sha256.Sum256(data)
	}
	sort.Slice(lat, func(i, j int) bool { return lat[i] < lat[j] })
	t.Logf("%d files written with fsync across a target SIGKILL+restart; write+fsync latency median %v, max %v (the restart stall)",
		files, lat[len(lat)/2], lat[len(lat)-1])

	mustTool(t, time.Minute, "umount", mnt)
	mounted = false
	lun.detach(t)

	// Remount through a fresh initiator and check every file.
	lun = attachFUSE(t, addr, lunPath, size)
	mustTool(t, time.Minute, "mount", "-o", "loop", lunPath, mnt)
	mounted = true
	for name, want := range sums {
		data, err := os.ReadFile(filepath.Join(mnt, name))
		if err != nil {
			t.Fatalf("after remount: %v", err)
		}
		if sha256.Sum256(data) != want {
			t.Fatalf("after remount: %s has the wrong content", name)
		}
	}
	mustTool(t, time.Minute, "umount", mnt)
	mounted = false
	lun.detach(t)
	p.stop(t)

	out, err := runTool(t, 2*time.Minute, "e2fsck", "-fn", backing)
	if err != nil {
		t.Fatalf("e2fsck -fn on the backing file: %v\n%s", err, out)
	}
	t.Logf("e2fsck -fn: %s", strings.TrimSpace(out))
}

package blockdev

import (
	"bytes"
	"errors"
	"fmt"
	"io/fs"
	"math"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
)

const testSize = 1 << 20

// modes lists the I/O modes every data-path test runs in.
var modes = []struct {
	name   string
	direct bool
}{{"buffered", false}, {"direct", true}}

// openTemp creates a volume of size bytes in a fresh temporary directory.
// It skips the test when Direct is asked for and the file system refuses it.
func openTemp(t testing.TB, size int64, direct bool) (*File, string) {
	t.Helper()
	path := filepath.Join(t.TempDir(), "vol")
	d, err := OpenFile(path, FileOptions{Size: size, Create: true, Direct: direct})
	if errors.Is(err, ErrDirectUnsupported) {
		t.Skipf("skipping: the file system under %s does not support O_DIRECT: %v", path, err)
	}
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { d.Close() })
	return d, path
}

func pattern(seed uint64, n int) []byte {
	b := make([]byte, n)
	r := rand.New(rand.NewPCG(seed, seed^0x9e3779b97f4a7c15))
	for i := range b {
		b[i] = byte(r.Uint32())
	}
	return b
}

func TestFileOptionsValidate(t *testing.T) {
	for _, tc := range []struct {
		opts FileOptions
		want string // substring of the error; "" means valid
	}{
		{FileOptions{}, ""},
		{FileOptions{Size: 4096, Create: true}, ""},
		{FileOptions{Size: 512}, ""},
		{FileOptions{Size: 8192, Direct: true}, ""},
		{FileOptions{Size: -512}, "negative"},
		{FileOptions{Size: 1000}, "multiple of 512"},
		{FileOptions{Size: 512, Direct: true}, "multiple of 4096"},
		{FileOptions{Create: true}, "Size is required"},
		{FileOptions{Size: 4096, Create: true, ReadOnly: true}, "mutually exclusive"},
	} {
		err := tc.opts.Validate()
		if tc.want == "" {
			if err != nil {
				t.Errorf("%+v: unexpected error %v", tc.opts, err)
			}
			continue
		}
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%+v: error %v, want one containing %q", tc.opts, err, tc.want)
		}
	}
}

func TestOpenFileCreateIsSparse(t *testing.T) {
	d, path := openTemp(t, 64<<20, false)
	if d.Size() != 64<<20 || d.ReadOnly() || d.IsBlockDevice() {
		t.Fatalf("Size %d ReadOnly %v IsBlockDevice %v", d.Size(), d.ReadOnly(), d.IsBlockDevice())
	}
	st, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	if st.Size() != 64<<20 {
		t.Errorf("file is %d bytes, want %d", st.Size(), 64<<20)
	}
	if st.Mode().Perm() != 0o600 {
		t.Errorf("mode %v, want 0600", st.Mode().Perm())
	}
	if blocks := st.Sys().(*syscall.Stat_t).Blocks; blocks != 0 {
		t.Errorf("new volume has %d blocks allocated, want a sparse file", blocks)
	}
	buf := make([]byte, 4096)
	buf[0] = 1
	if _, err := d.ReadAt(buf, 32<<20); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(buf, make([]byte, 4096)) {
		t.Error("sparse region did not read as zeros")
	}
}

func TestOpenFileExisting(t *testing.T) {
	d, path := openTemp(t, testSize, false)
	want := pattern(1, 4096)
	if _, err := d.WriteAt(want, 8192); err != nil {
		t.Fatal(err)
	}
	if err := d.Close(); err != nil {
		t.Fatal(err)
	}

	// Size 0 takes the existing size; Create on an existing file is a no-op.
	for _, opts := range []FileOptions{{}, {Size: testSize}, {Size: testSize, Create: true}} {
		d, err := OpenFile(path, opts)
		if err != nil {
			t.Fatalf("%+v: %v", opts, err)
		}
		got := make([]byte, 4096)
		if _, err := d.ReadAt(got, 8192); err != nil {
			t.Fatal(err)
		}
		if d.Size() != testSize || !bytes.Equal(got, want) {
			t.Errorf("%+v: size %d, data preserved %v", opts, d.Size(), bytes.Equal(got, want))
		}
		d.Close()
	}

	_, err := OpenFile(path, FileOptions{Size: 2 * testSize, Create: true})
	if !errors.Is(err, ErrSizeMismatch) {
		t.Fatalf("open with a different size: %v, want ErrSizeMismatch", err)
	}
	for _, s := range []string{path, strconv.Itoa(testSize), strconv.Itoa(2 * testSize)} {
		if !strings.Contains(err.Error(), s) {
			t.Errorf("error %q does not mention %q", err, s)
		}
	}
	if st, _ := os.Stat(path); st.Size() != testSize {
		t.Errorf("failed open changed the file's size to %d", st.Size())
	}
}

func TestOpenFileNotFound(t *testing.T) {
	path := filepath.Join(t.TempDir(), "missing")
	_, err := OpenFile(path, FileOptions{Size: testSize})
	if !errors.Is(err, ErrNotFound) {
		t.Fatalf("got %v, want ErrNotFound", err)
	}
	if !strings.Contains(err.Error(), path) || !strings.Contains(err.Error(), "--size") {
		t.Errorf("error %q should name the path and say how to create it", err)
	}
	if _, err := os.Stat(path); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("open without Create created the file: %v", err)
	}
}

func TestOpenFileCreateMissingParent(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "nodir")
	path := filepath.Join(dir, "vol")
	_, err := OpenFile(path, FileOptions{Size: testSize, Create: true})
	if !errors.Is(err, ErrNotFound) || !strings.Contains(err.Error(), "parent directory "+dir) {
		t.Fatalf("got %v, want ErrNotFound naming the parent directory", err)
	}
	if _, err := os.Stat(dir); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("parent directory was created: %v", err)
	}
}

func TestOpenFileRejectsBadBackingStores(t *testing.T) {
	dir := t.TempDir()
	odd := filepath.Join(dir, "odd")
	if err := os.WriteFile(odd, make([]byte, 1000), 0o600); err != nil {
		t.Fatal(err)
	}
	empty := filepath.Join(dir, "empty")
	if err := os.WriteFile(empty, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct{ path, want string }{
		{odd, "not a positive multiple of 512"},
		{empty, "0 bytes"},
		{dir, "directory"},
		{"/dev/null", "neither a regular file nor a block device"},
	} {
		d, err := OpenFile(tc.path, FileOptions{})
		if err == nil {
			d.Close()
			t.Errorf("%s: opened, want an error containing %q", tc.path, tc.want)
			continue
		}
		if !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: error %q does not contain %q", tc.path, err, tc.want)
		}
	}
}

func TestOpenFileLock(t *testing.T) {
	d, path := openTemp(t, testSize, false)
	if _, err := OpenFile(path, FileOptions{}); err == nil || !strings.Contains(err.Error(), "in use") {
		t.Fatalf("second read-write open: %v, want an in-use error", err)
	}
	if _, err := OpenFile(path, FileOptions{ReadOnly: true}); err == nil {
		t.Fatal("read-only open succeeded while a writer holds the volume")
	}
	d.Close()
	r1, err := OpenFile(path, FileOptions{ReadOnly: true})
	if err != nil {
		t.Fatal(err)
	}
	defer r1.Close()
	r2, err := OpenFile(path, FileOptions{ReadOnly: true})
	if err != nil {
		t.Fatalf("two readers should share the volume: %v", err)
	}
	defer r2.Close()
}

func TestFileReadOnly(t *testing.T) {
	d, path := openTemp(t, testSize, false)
	want := pattern(2, 4096)
	if _, err := d.WriteAt(want, 0); err != nil {
		t.Fatal(err)
	}
	d.Close()

	ro, err := OpenFile(path, FileOptions{ReadOnly: true})
	if err != nil {
		t.Fatal(err)
	}
	defer ro.Close()
	if !ro.ReadOnly() {
		t.Error("ReadOnly() = false")
	}
	if n, err := ro.WriteAt(make([]byte, 4096), 0); !errors.Is(err, ErrReadOnly) || n != 0 {
		t.Errorf("write: n=%d err=%v, want ErrReadOnly", n, err)
	}
	if err := ro.Discard(0, 4096); !errors.Is(err, ErrReadOnly) {
		t.Errorf("discard: %v, want ErrReadOnly", err)
	}
	// The kernel refuses too, and that is mapped the same way.
	if _, err := ro.f.WriteAt([]byte{1}, 0); !errors.Is(mapIOErr(err, true), ErrReadOnly) {
		t.Errorf("raw pwrite on O_RDONLY: %v does not map to ErrReadOnly", err)
	}
	got := make([]byte, 4096)
	if _, err := ro.ReadAt(got, 0); err != nil || !bytes.Equal(got, want) {
		t.Errorf("read: err=%v, data intact %v", err, bytes.Equal(got, want))
	}
	if err := ro.Flush(); err != nil {
		t.Errorf("flush on a read-only volume: %v", err)
	}
}

func TestFileOutOfRange(t *testing.T) {
	for _, m := range modes {
		t.Run(m.name, func(t *testing.T) {
			d, _ := openTemp(t, testSize, m.direct)
			buf := make([]byte, 4096)
			for _, off := range []int64{-1, testSize - 4095, testSize, math.MaxInt64 - 10, math.MinInt64} {
				if _, err := d.ReadAt(buf, off); !errors.Is(err, ErrOutOfRange) {
					t.Errorf("read at %d: %v, want ErrOutOfRange", off, err)
				}
				if _, err := d.WriteAt(buf, off); !errors.Is(err, ErrOutOfRange) {
					t.Errorf("write at %d: %v, want ErrOutOfRange", off, err)
				}
				if err := d.Discard(off, 4096); !errors.Is(err, ErrOutOfRange) {
					t.Errorf("discard at %d: %v, want ErrOutOfRange", off, err)
				}
			}
			if err := d.Discard(0, -1); !errors.Is(err, ErrOutOfRange) {
				t.Errorf("discard of -1 bytes: %v", err)
			}
			if err := d.Discard(4096, math.MaxInt64); !errors.Is(err, ErrOutOfRange) {
				t.Errorf("discard of MaxInt64 bytes: %v", err)
			}
			if _, err := d.WriteAt(buf, testSize-4096); err != nil {
				t.Errorf("write of the last block: %v", err)
			}
			if n, err := d.ReadAt(nil, testSize); n != 0 || err != nil {
				t.Errorf("empty read at the end: %d, %v", n, err)
			}
			if st, _ := os.Stat(d.Path()); st.Size() != testSize {
				t.Errorf("file grew to %d bytes", st.Size())
			}
		})
	}
}

func TestFileClosed(t *testing.T) {
	d, _ := openTemp(t, testSize, false)
	if err := d.Close(); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 512)
	if _, err := d.ReadAt(buf, 0); !errors.Is(err, ErrClosed) {
		t.Errorf("read: %v", err)
	}
	if _, err := d.WriteAt(buf, 0); !errors.Is(err, ErrClosed) {
		t.Errorf("write: %v", err)
	}
	if err := d.Flush(); !errors.Is(err, ErrClosed) {
		t.Errorf("flush: %v", err)
	}
	if err := d.Discard(0, 512); !errors.Is(err, ErrClosed) {
		t.Errorf("discard: %v", err)
	}
	if err := d.Close(); !errors.Is(err, ErrClosed) {
		t.Errorf("second close: %v", err)
	}
}

// TestFileMatchesMemory applies the same random, mostly unaligned, requests
// to a File and to a Memory and compares what they read.
func TestFileMatchesMemory(t *testing.T) {
	for _, m := range modes {
		t.Run(m.name, func(t *testing.T) {
			const size = 256 << 10
			d, _ := openTemp(t, size, m.direct)
			ref := NewMemory(size)
			r := rand.New(rand.NewPCG(3, uint64(len(m.name))))
			for i := range 400 {
				off := r.Int64N(size)
				n := min(r.Int64N(3*DirectAlign), size-off)
				if r.IntN(4) == 0 { // sometimes aligned, to use the zero-copy path
					off &^= DirectAlign - 1
					n = min(DirectAlign*(1+r.Int64N(3)), size-off)
				}
				switch r.IntN(5) {
				case 0, 1:
					p := pattern(uint64(i), int(n))
					if _, err := d.WriteAt(p, off); err != nil {
						t.Fatalf("write %d@%d: %v", n, off, err)
					}
					ref.WriteAt(p, off)
				case 2:
					if err := d.Discard(off, n); err != nil {
						t.Fatalf("discard %d@%d: %v", n, off, err)
					}
					ref.Discard(off, n)
				default:
					got, want := make([]byte, n), make([]byte, n)
					if k, err := d.ReadAt(got, off); err != nil || k != int(n) {
						t.Fatalf("read %d@%d: %d, %v", n, off, k, err)
					}
					ref.ReadAt(want, off)
					if !bytes.Equal(got, want) {
						t.Fatalf("op %d: read %d@%d differs from the model", i, n, off)
					}
				}
			}
			got, want := make([]byte, size), make([]byte, size)
			if _, err := d.ReadAt(got, 0); err != nil {
				t.Fatal(err)
			}
			ref.ReadAt(want, 0)
			if !bytes.Equal(got, want) {
				t.Fatal("final contents differ from the model")
			}
		})
	}
}

// TestFileConcurrentWriters has writers own interleaved 512-byte sectors,
// so with Direct every write is a read-modify-write of a block that other
// writers are modifying at the same time.
func TestFileConcurrentWriters(t *testing.T) {
	for _, m := range modes {
		t.Run(m.name, func(t *testing.T) {
			const size, writers, rounds = 64 << 10, 8, 20
			d, _ := openTemp(t, size, m.direct)
			var wg sync.WaitGroup
			errs := make(chan error, writers)
			for w := range writers {
				wg.Go(func() {
					for round := range rounds {
						for off := int64(w * SectorSize); off < size; off += writers * SectorSize {
							p := bytes.Repeat([]byte{byte(w*rounds + round)}, SectorSize)
							if _, err := d.WriteAt(p, off); err != nil {
								errs <- err
								return
							}
						}
					}
				})
			}
			wg.Wait()
			close(errs)
			for err := range errs {
				t.Fatal(err)
			}
			got := make([]byte, size)
			if _, err := d.ReadAt(got, 0); err != nil {
				t.Fatal(err)
			}
			for off := 0; off < size; off += SectorSize {
				w := off / SectorSize % writers
				want := bytes.Repeat([]byte{byte(w*rounds + rounds - 1)}, SectorSize)
				if !bytes.Equal(got[off:off+SectorSize], want) {
					t.Fatalf("sector at %d: got %x..., want writer %d's last round", off, got[off:off+8], w)
				}
			}
		})
	}
}

func allocatedBytes(t *testing.T, path string) int64 {
	t.Helper()
	st, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	return st.Sys().(*syscall.Stat_t).Blocks * 512
}

func TestFileDiscard(t *testing.T) {
	for _, m := range modes {
		t.Run(m.name, func(t *testing.T) {
			const size = 4 << 20
			d, path := openTemp(t, size, m.direct)
			data := pattern(4, size)
			if _, err := d.WriteAt(data, 0); err != nil {
				t.Fatal(err)
			}
			if err := d.Flush(); err != nil {
				t.Fatal(err)
			}
			before := allocatedBytes(t, path)
			// Unaligned edges: the partial blocks are zeroed, not deallocated.
			const off, n = 1<<20 + 100, 2<<20 - 200
			if err := d.Discard(off, n); err != nil {
				t.Fatal(err)
			}
			after := allocatedBytes(t, path)
			if before-after < n-2*4096 {
				t.Errorf("allocation went from %d to %d bytes; discarding %d bytes should free about that much", before, after, n)
			}
			got := make([]byte, size)
			if _, err := d.ReadAt(got, 0); err != nil {
				t.Fatal(err)
			}
			copy(data[off:off+n], make([]byte, n))
			if !bytes.Equal(got, data) {
				t.Error("after discard: range not zero or data outside it damaged")
			}
		})
	}
}

func TestFileWriteZerosFallback(t *testing.T) {
	for _, m := range modes {
		t.Run(m.name, func(t *testing.T) {
			d, _ := openTemp(t, testSize, m.direct)
			data := pattern(5, testSize)
			d.WriteAt(data, 0)
			const off, n = 3000, 3 * zeroChunk / 4
			if err := d.writeZeros(off, n); err != nil {
				t.Fatal(err)
			}
			got := make([]byte, testSize)
			d.ReadAt(got, 0)
			copy(data[off:off+n], make([]byte, n))
			if !bytes.Equal(got, data) {
				t.Error("writeZeros did not zero exactly its range")
			}
		})
	}
}

func TestFileTruncatedBehindOurBack(t *testing.T) {
	for _, m := range modes {
		t.Run(m.name, func(t *testing.T) {
			d, path := openTemp(t, testSize, m.direct)
			if err := os.Truncate(path, testSize/2); err != nil {
				t.Fatal(err)
			}
			buf := make([]byte, 4096)
			if _, err := d.ReadAt(buf, testSize/4); err != nil {
				t.Errorf("read inside the remaining file: %v", err)
			}
			_, err := d.ReadAt(buf, testSize/2+8192)
			if !errors.Is(err, ErrIO) || !strings.Contains(err.Error(), "shorter") {
				t.Errorf("read past the new end: %v, want ErrIO saying the file is shorter", err)
			}
			_, err = d.ReadAt(buf, testSize/2-2048) // straddles the new end
			if !errors.Is(err, ErrIO) {
				t.Errorf("read across the new end: %v, want ErrIO", err)
			}
		})
	}
}

func TestFileDirectAlignedRoundTrip(t *testing.T) {
	d, _ := openTemp(t, 4*directChunk, true)
	if !d.Direct() {
		t.Fatal("Direct() = false")
	}
	want := alignedBuf(64 << 10)
	copy(want, pattern(6, len(want)))
	if _, err := d.WriteAt(want, 128<<10); err != nil {
		t.Fatal(err)
	}
	got := alignedBuf(len(want))
	if _, err := d.ReadAt(got, 128<<10); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, want) {
		t.Fatal("O_DIRECT round trip differs")
	}
	// Requests larger than a pooled buffer, unaligned in memory.
	big := pattern(7, 3*directChunk/2+512)
	if _, err := d.WriteAt(big, 512); err != nil {
		t.Fatal(err)
	}
	got = make([]byte, len(big)+1)[1:]
	if _, err := d.ReadAt(got, 512); err != nil || !bytes.Equal(got, big) {
		t.Fatalf("large unaligned round trip: err=%v equal=%v", err, bytes.Equal(got, big))
	}
}

func TestOpenFileDirectRequiresAlignedSize(t *testing.T) {
	d, path := openTemp(t, 4096+512, false)
	d.Close()
	_, err := OpenFile(path, FileOptions{Direct: true})
	if errors.Is(err, ErrDirectUnsupported) {
		t.Skip("O_DIRECT unsupported here")
	}
	if err == nil || !strings.Contains(err.Error(), "multiple of 4096") {
		t.Errorf("got %v, want a size alignment error", err)
	}
}

// TestFileNoSpace writes to /dev/full, which fails every write with
// ENOSPC, through File's own write path.
func TestFileNoSpace(t *testing.T) {
	f, err := os.OpenFile("/dev/full", os.O_RDWR, 0)
	if err != nil {
		t.Skipf("skipping: no /dev/full: %v", err)
	}
	d := &File{f: f, path: "/dev/full", size: testSize}
	defer d.Close()
	_, err = d.WriteAt(make([]byte, 4096), 8192)
	if !errors.Is(err, ErrNoSpace) || !errors.Is(err, syscall.ENOSPC) {
		t.Fatalf("got %v, want ErrNoSpace wrapping ENOSPC", err)
	}
	for _, s := range []string{"/dev/full", "offset 8192", "length 4096"} {
		if !strings.Contains(err.Error(), s) {
			t.Errorf("error %q lacks %q", err, s)
		}
	}
}

func TestMapIOErr(t *testing.T) {
	pe := func(errno syscall.Errno) error {
		return &fs.PathError{Op: "write", Path: "/x", Err: errno}
	}
	for _, tc := range []struct {
		err      error
		readOnly bool
		want     error
	}{
		{pe(syscall.ENOSPC), false, ErrNoSpace},
		{pe(syscall.EDQUOT), false, ErrNoSpace},
		{pe(syscall.EIO), false, ErrIO},
		{pe(syscall.ENXIO), false, ErrIO},
		{pe(syscall.EROFS), false, ErrReadOnly},
		{pe(syscall.EBADF), true, ErrReadOnly},
		{pe(syscall.EACCES), false, fs.ErrPermission},
		{os.ErrClosed, false, ErrClosed},
	} {
		got := mapIOErr(tc.err, tc.readOnly)
		if !errors.Is(got, tc.want) || !errors.Is(got, tc.err) {
			t.Errorf("mapIOErr(%v, %v) = %v, want %v that keeps the cause", tc.err, tc.readOnly, got, tc.want)
		}
	}
	if got := mapIOErr(pe(syscall.EBADF), false); errors.Is(got, ErrReadOnly) {
		t.Errorf("EBADF on a read-write file mapped to ErrReadOnly: %v", got)
	}
	if mapIOErr(nil, false) != nil {
		t.Error("mapIOErr(nil) != nil")
	}
}

func TestOpenError(t *testing.T) {
	pe := func(errno syscall.Errno) error { return &fs.PathError{Op: "open", Path: "/v", Err: errno} }
	for _, tc := range []struct {
		err  error
		opts FileOptions
		is   error
		says string
	}{
		{pe(syscall.ENOENT), FileOptions{}, ErrNotFound, "--size"},
		{pe(syscall.EACCES), FileOptions{}, fs.ErrPermission, "may not read and write"},
		{pe(syscall.EACCES), FileOptions{ReadOnly: true}, fs.ErrPermission, "may not read it"},
		{pe(syscall.EROFS), FileOptions{}, ErrReadOnly, "read-only file system"},
		{pe(syscall.EINVAL), FileOptions{Direct: true}, ErrDirectUnsupported, "without Direct"},
		{pe(syscall.EIO), FileOptions{}, ErrIO, "open /v"},
	} {
		got := openError("/v", tc.opts, tc.err)
		if !errors.Is(got, tc.is) || !strings.Contains(got.Error(), tc.says) || !strings.Contains(got.Error(), "/v") {
			t.Errorf("openError(%v, %+v) = %q, want %v saying %q", tc.err, tc.opts, got, tc.is, tc.says)
		}
	}
}

// TestBlockDevice runs File against a loop device. It needs root and
// changes system state, so it only runs with HABLOCK_TEST_LOOP=1.
func TestBlockDevice(t *testing.T) {
	if os.Getenv("HABLOCK_TEST_LOOP") != "1" {
		t.Skip("set HABLOCK_TEST_LOOP=1 to test a loop device (needs root and losetup)")
	}
	const size = 8 << 20
	backing := filepath.Join(t.TempDir(), "backing")
	if err := os.WriteFile(backing, pattern(8, size), 0o600); err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command("losetup", "--find", "--show", backing).Output()
	if err != nil {
		t.Skipf("losetup: %v", err)
	}
	dev := strings.TrimSpace(string(out))
	t.Cleanup(func() { exec.Command("losetup", "-d", dev).Run() })

	for _, m := range modes {
		t.Run(m.name, func(t *testing.T) {
			d, err := OpenFile(dev, FileOptions{Direct: m.direct})
			if err != nil {
				t.Fatal(err)
			}
			defer d.Close()
			if !d.IsBlockDevice() || d.Size() != size {
				t.Fatalf("IsBlockDevice %v Size %d, want true %d", d.IsBlockDevice(), d.Size(), size)
			}
			if _, err := OpenFile(dev, FileOptions{Size: 2 * size}); !errors.Is(err, ErrSizeMismatch) {
				t.Errorf("size mismatch on a block device: %v", err)
			}
			p := pattern(9, 3*4096)
			if _, err := d.WriteAt(p, 1<<20+512); err != nil {
				t.Fatal(err)
			}
			if err := d.Flush(); err != nil {
				t.Fatal(err)
			}
			got := make([]byte, len(p))
			if _, err := d.ReadAt(got, 1<<20+512); err != nil || !bytes.Equal(got, p) {
				t.Fatalf("round trip: err=%v equal=%v", err, bytes.Equal(got, p))
			}
			if err := d.Discard(2<<20, 1<<20); err != nil {
				t.Fatal(err)
			}
			got = make([]byte, 1<<20)
			if _, err := d.ReadAt(got, 2<<20); err != nil || !bytes.Equal(got, make([]byte, 1<<20)) {
				t.Fatalf("discarded range: err=%v zero=%v", err, bytes.Equal(got, make([]byte, 1<<20)))
			}
			// The loop driver turns the discard into a hole in its backing file.
			if got := allocatedBytes(t, backing); got > size-1<<20 {
				t.Errorf("backing file still has %d bytes allocated after discarding 1 MiB of %d", got, size)
			}
		})
	}
}

func BenchmarkFile(b *testing.B) {
	const size = 64 << 20
	for _, m := range modes {
		for _, bs := range []int{4 << 10, 64 << 10} {
			for _, op := range []string{"write", "read"} {
				name := fmt.Sprintf("%s/%s/bs=%dk", m.name, op, bs>>10)
				b.Run(name, func(b *testing.B) {
					d, _ := openTemp(b, size, m.direct)
					buf := alignedBuf(bs)
					if op == "read" {
						if _, err := d.WriteAt(make([]byte, size), 0); err != nil {
							b.Fatal(err)
						}
					}
					r := rand.New(rand.NewPCG(1, 2))
					b.SetBytes(int64(bs))
					b.ReportAllocs()
					for b.Loop() {
						off := r.Int64N(size/int64(bs)) * int64(bs)
						var err error
						if op == "write" {
							_, err = d.WriteAt(buf, off)
						} else {
							_, err = d.ReadAt(buf, off)
						}
						if err != nil {
							b.Fatal(err)
						}
					}
				})
			}
		}
		// 512-byte writes: read-modify-write under O_DIRECT.
		b.Run(m.name+"/write/bs=512", func(b *testing.B) {
			d, _ := openTemp(b, size, m.direct)
			buf := make([]byte, 512)
			r := rand.New(rand.NewPCG(1, 2))
			b.SetBytes(512)
			b.ReportAllocs()
			for b.Loop() {
				if _, err := d.WriteAt(buf, r.Int64N(size/512)*512); err != nil {
					b.Fatal(err)
				}
			}
		})
		b.Run(m.name+"/write/bs=4k/qd=16", func(b *testing.B) {
			d, _ := openTemp(b, size, m.direct)
			// Overwrite allocated blocks: ext4 serialises O_DIRECT writes
			// that allocate, which would hide our own concurrency.
			if _, err := d.WriteAt(make([]byte, size), 0); err != nil {
				b.Fatal(err)
			}
			b.ResetTimer()
			b.SetBytes(4096)
			b.ReportAllocs()
			b.SetParallelism(8)
			b.RunParallel(func(pb *testing.PB) {
				buf := alignedBuf(4096)
				r := rand.New(rand.NewPCG(rand.Uint64(), 2))
				for pb.Next() {
					if _, err := d.WriteAt(buf, r.Int64N(size/4096)*4096); err != nil {
						b.Error(err)
						return
					}
				}
			})
		})
	}
}

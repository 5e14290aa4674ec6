package blockdev

import (
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"syscall"
	"unsafe"
)

// Linux constants the syscall package does not export.
const (
	oDirect = syscall.O_DIRECT

	fallocPunchHole = 0x02 // FALLOC_FL_PUNCH_HOLE
	fallocKeepSize  = 0x01 // FALLOC_FL_KEEP_SIZE

	ioctlBLKGETSIZE64 = 0x80081272 // _IOR(0x12, 114, size_t)
	ioctlBLKZEROOUT   = 0x127f     // _IO(0x12, 127), arg: uint64[2]{off, len}
)

const (
	// SectorSize is the granularity of every volume size: FileOptions.Size
	// and the size of an existing backing store must be multiples of it.
	SectorSize = 512

	// DirectAlign is the alignment, in bytes, of file offsets, lengths and
	// memory buffers for I/O on a File opened with FileOptions.Direct. It
	// is the page size and covers every logical block size Linux supports.
	DirectAlign = 4096

	// directChunk bounds one O_DIRECT system call and the size of a
	// pooled aligned buffer; larger requests are split.
	directChunk = 1 << 20

	// zeroChunk bounds one write when Discard falls back to writing zeros.
	zeroChunk = 1 << 20
)

// ErrDirectUnsupported: FileOptions.Direct was asked for but the file
// system holding the backing file refuses O_DIRECT (tmpfs on older kernels,
// some FUSE file systems). Open without Direct instead.
var ErrDirectUnsupported = errors.New("blockdev: O_DIRECT not supported by the backing file system")

// FileOptions says how OpenFile opens or creates a backing store. The zero
// value opens an existing file or block device read-write, through the page
// cache, at whatever size it has.
type FileOptions struct {
	// Size is the volume size in bytes. It must be a positive multiple of
	// SectorSize (512), and of DirectAlign (4096) when Direct is set.
	//
	// Zero means "use the size the backing store already has" and is only
	// valid when it exists. When it exists and Size is non-zero, the sizes
	// must match exactly or OpenFile fails with ErrSizeMismatch: a volume
	// is never grown or shrunk implicitly, because replicas must agree on
	// its size. Required (non-zero) when Create may create the file.
	Size int64

	// Create creates a sparse regular file of Size bytes, mode 0600, when
	// path does not exist. The parent directory must already exist: it is
	// not created, so a mistyped path fails instead of scattering volumes.
	// Default false: a missing path is ErrNotFound. Has no effect on an
	// existing file or block device. Incompatible with ReadOnly.
	Create bool

	// ReadOnly opens the backing store O_RDONLY. Writes and discards then
	// fail with ErrReadOnly without reaching the kernel. Default false.
	ReadOnly bool

	// Direct opens the backing store with O_DIRECT, bypassing the page
	// cache, so that a completed write has reached the device (still
	// subject to the device's volatile cache, which Flush empties) and
	// the node's memory is not spent caching a replicated volume twice.
	//
	// All I/O then goes through DirectAlign-aligned buffers: a caller's
	// buffer that is already aligned in memory, offset and length is used
	// as is; otherwise data is copied through a pool of aligned buffers.
	// Requests that are not aligned in the file (for example 512-byte
	// writes on a volume exported with 512-byte logical blocks) are served
	// by read-modify-write of the covering 4096-byte blocks, under a lock
	// on that byte range, so concurrent writes to different parts of one
	// block never lose each other's data. Unaligned writes therefore cost
	// an extra read. Default false (buffered I/O).
	Direct bool
}

// Validate checks the options on their own, without touching the file
// system. It does not modify o.
func (o FileOptions) Validate() error {
	if o.Size < 0 {
		return fmt.Errorf("blockdev: FileOptions.Size %d is negative", o.Size)
	}
	if o.Size%SectorSize != 0 {
		return fmt.Errorf("blockdev: FileOptions.Size %d is not a multiple of %d bytes", o.Size, SectorSize)
	}
	if o.Direct && o.Size%DirectAlign != 0 {
		return fmt.Errorf("blockdev: FileOptions.Size %d is not a multiple of %d bytes, required with Direct", o.Size, DirectAlign)
	}
	if o.Create && o.ReadOnly {
		return errors.New("blockdev: FileOptions.Create and FileOptions.ReadOnly are mutually exclusive")
	}
	if o.Create && o.Size == 0 {
		return errors.New("blockdev: FileOptions.Size is required with Create")
	}
	return nil
}

// File is a Device backed by a regular file or a raw block device. It is
// safe for concurrent use: I/O is positional (pread/pwrite).
//
// OpenFile takes an advisory lock (flock) on the backing store, exclusive
// when read-write and shared when read-only, so two processes cannot both
// write one volume. A second OpenFile of the same path, even in the same
// process, fails while the first is open read-write.
type File struct {
	f        *os.File
	path     string
	size     int64
	blockDev bool
	readOnly bool
	direct   bool
	closed   atomic.Bool
	flushErr atomic.Pointer[error] // first Flush failure; sticky

	// Only used when direct is set.
	bufs   sync.Pool // *[]byte, len directChunk, DirectAlign-aligned
	ranges rangeLock // held over every O_DIRECT write
}

var _ Device = (*File)(nil)

// OpenFile opens (or, with opts.Create, creates) the backing store at path.
// Errors wrap ErrNotFound, ErrSizeMismatch, ErrReadOnly (a read-only file
// system), ErrDirectUnsupported, or fs.ErrPermission, and name the path.
func OpenFile(path string, opts FileOptions) (*File, error) {
	if err := opts.Validate(); err != nil {
		return nil, err
	}
	flags := os.O_RDWR
	if opts.ReadOnly {
		flags = os.O_RDONLY
	}
	if opts.Direct {
		flags |= oDirect
	}
	f, created, err := openOrCreate(path, flags, opts)
	if err != nil {
		return nil, err
	}
	d, err := newFile(f, path, opts, created)
	if err != nil {
		f.Close()
		if created {
			os.Remove(path)
		}
		return nil, err
	}
	return d, nil
}

func openOrCreate(path string, flags int, opts FileOptions) (f *os.File, created bool, err error) {
	f, err = os.OpenFile(path, flags, 0)
	if err == nil {
		return f, false, nil
	}
	if !errors.Is(err, fs.ErrNotExist) || !opts.Create {
		return nil, false, openError(path, opts, err)
	}
	dir := filepath.Dir(path)
	if st, serr := os.Stat(dir); serr != nil || !st.IsDir() {
		return nil, false, fmt.Errorf("blockdev: cannot create %s: parent directory %s does not exist (create it first): %w", path, dir, ErrNotFound)
	}
	f, err = os.OpenFile(path, flags|os.O_CREATE|os.O_EXCL, 0o600)
	if errors.Is(err, fs.ErrExist) {
		// Lost a race with another creator: open what it made.
		f, err = os.OpenFile(path, flags, 0)
		if err != nil {
			return nil, false, openError(path, opts, err)
		}
		return f, false, nil
	}
	if err != nil {
		return nil, false, openError(path, opts, err)
	}
	if err := f.Truncate(opts.Size); err != nil {
		f.Close()
		os.Remove(path)
		return nil, false, fmt.Errorf("blockdev: create %s with %d bytes: %w", path, opts.Size, mapIOErr(err, false))
	}
	return f, true, nil
}

// openError turns a failed open(2) into an error that says what to do.
func openError(path string, opts FileOptions, err error) error {
	switch {
	case errors.Is(err, fs.ErrNotExist):
		return fmt.Errorf("blockdev: %s does not exist (pass --size to create it): %w", path, ErrNotFound)
	case errors.Is(err, fs.ErrPermission):
		mode := "read and write"
		if opts.ReadOnly {
			mode = "read"
		}
		return fmt.Errorf("blockdev: permission denied opening %s: this process may not %s it (check its owner and mode): %w", path, mode, err)
	case errors.Is(err, syscall.EROFS):
		return fmt.Errorf("blockdev: %s is on a read-only file system (open it read-only): %w: %w", path, ErrReadOnly, err)
	case opts.Direct && errors.Is(err, syscall.EINVAL):
		return fmt.Errorf("blockdev: open %s with O_DIRECT (open it without Direct): %w: %w", path, ErrDirectUnsupported, err)
	case errors.Is(err, syscall.EISDIR):
		return fmt.Errorf("blockdev: %s is a directory, not a file or block device: %w", path, err)
	}
	return fmt.Errorf("blockdev: open %s: %w", path, mapIOErr(err, opts.ReadOnly))
}

func newFile(f *os.File, path string, opts FileOptions, created bool) (*File, error) {
	st, err := f.Stat()
	if err != nil {
		return nil, fmt.Errorf("blockdev: stat %s: %w", path, mapIOErr(err, opts.ReadOnly))
	}
	d := &File{f: f, path: path, readOnly: opts.ReadOnly, direct: opts.Direct}
	switch mode := st.Mode(); {
	case mode.IsRegular():
		d.size = st.Size()
	case mode&fs.ModeDevice != 0 && mode&fs.ModeCharDevice == 0:
		d.blockDev = true
		if d.size, err = blockDevSize(f); err != nil {
			return nil, fmt.Errorf("blockdev: size of block device %s: %w", path, err)
		}
	default:
		return nil, fmt.Errorf("blockdev: %s is neither a regular file nor a block device (mode %v)", path, mode)
	}
	if !created && opts.Size != 0 && opts.Size != d.size {
		return nil, fmt.Errorf("blockdev: %s is %d bytes, but size %d was asked for: %w", path, d.size, opts.Size, ErrSizeMismatch)
	}
	if d.size <= 0 || d.size%SectorSize != 0 {
		return nil, fmt.Errorf("blockdev: %s is %d bytes, not a positive multiple of %d", path, d.size, SectorSize)
	}
	if opts.Direct && d.size%DirectAlign != 0 {
		return nil, fmt.Errorf("blockdev: %s is %d bytes, not a multiple of %d as Direct requires", path, d.size, DirectAlign)
	}
	how := syscall.LOCK_EX
	if opts.ReadOnly {
		how = syscall.LOCK_SH
	}
	if err := flock(f, how|syscall.LOCK_NB); err != nil {
		if errors.Is(err, syscall.EWOULDBLOCK) {
			return nil, fmt.Errorf("blockdev: %s is in use by another opener (flock): %w", path, err)
		}
		return nil, fmt.Errorf("blockdev: lock %s: %w", path, err)
	}
	if d.direct {
		d.bufs.New = func() any { b := alignedBuf(directChunk); return &b }
	}
	return d, nil
}

func flock(f *os.File, how int) error {
	rc, err := f.SyscallConn()
	if err != nil {
		return err
	}
	var ferr error
	if err := rc.Control(func(fd uintptr) {
		for {
			ferr = syscall.Flock(int(fd), how)
			if ferr != syscall.EINTR {
				return
			}
		}
	}); err != nil {
		return err
	}
	return ferr
}

func blockDevSize(f *os.File) (int64, error) {
	rc, err := f.SyscallConn()
	if err != nil {
		return 0, err
	}
	var size uint64
	var errno syscall.Errno
	if err := rc.Control(func(fd uintptr) {
		_, _, errno = syscall.Syscall(syscall.SYS_IOCTL, fd, ioctlBLKGETSIZE64, uintptr(unsafe.Pointer(&size)))
	}); err != nil {
		return 0, err
	}
	if errno != 0 {
		return 0, fmt.Errorf("ioctl BLKGETSIZE64: %w", errno)
	}
	return int64(size), nil
}

// mapIOErr adds the package sentinel matching err's errno, keeping err in
// the chain (so errors.Is works for both). Errors it does not know are
// returned unchanged.
func mapIOErr(err error, readOnly bool) error {
	if err == nil {
		return nil
	}
	if errors.Is(err, os.ErrClosed) {
		return fmt.Errorf("%w: %w", ErrClosed, err)
	}
	var errno syscall.Errno
	if !errors.As(err, &errno) {
		return err
	}
	switch errno {
	case syscall.ENOSPC, syscall.EDQUOT:
		return fmt.Errorf("%w: %w", ErrNoSpace, err)
	case syscall.EIO, syscall.ENXIO, syscall.ENODEV, syscall.EREMOTEIO, syscall.EUCLEAN:
		return fmt.Errorf("%w: %w", ErrIO, err)
	case syscall.EROFS:
		return fmt.Errorf("%w: %w", ErrReadOnly, err)
	case syscall.EBADF:
		if readOnly {
			return fmt.Errorf("%w: %w", ErrReadOnly, err)
		}
	case syscall.EACCES, syscall.EPERM:
		return fmt.Errorf("permission denied: %w", err)
	}
	return err
}

// Path returns the path the File was opened with.
func (d *File) Path() string { return d.path }

// IsBlockDevice reports whether the backing store is a raw block device.
func (d *File) IsBlockDevice() bool { return d.blockDev }

// Direct reports whether the File was opened with O_DIRECT.
func (d *File) Direct() bool { return d.direct }

// Size implements Device.
func (d *File) Size() int64 { return d.size }

// ReadOnly implements Device.
func (d *File) ReadOnly() bool { return d.readOnly }

func (d *File) check(op string, off, n int64, write bool) error {
	if d.closed.Load() {
		return fmt.Errorf("blockdev: %s %s: %w", op, d.path, ErrClosed)
	}
	if off < 0 || n < 0 || off > d.size-n {
		return fmt.Errorf("blockdev: %s %s offset %d length %d (size %d): %w", op, d.path, off, n, d.size, ErrOutOfRange)
	}
	if write && d.readOnly {
		return fmt.Errorf("blockdev: %s %s offset %d length %d: %w", op, d.path, off, n, ErrReadOnly)
	}
	return nil
}

func (d *File) ioErr(op string, off, n int64, err error) error {
	return fmt.Errorf("blockdev: %s %s offset %d length %d: %w", op, d.path, off, n, mapIOErr(err, d.readOnly))
}

// ReadAt implements io.ReaderAt. A sparse (never written or discarded)
// region reads as zeros. A backing file that has become shorter than Size
// since it was opened is an error wrapping ErrIO, never silent zeros.
func (d *File) ReadAt(p []byte, off int64) (int, error) {
	if err := d.check("read", off, int64(len(p)), false); err != nil {
		return 0, err
	}
	if len(p) == 0 {
		return 0, nil
	}
	var n int
	var err error
	if d.direct {
		n, err = d.readDirect(p, off)
	} else {
		n, err = d.f.ReadAt(p, off)
	}
	if err == io.EOF || (err == nil && n < len(p)) {
		return n, d.shortRead(off, int64(len(p)), n)
	}
	if err != nil {
		return n, d.ioErr("read", off, int64(len(p)), err)
	}
	return n, nil
}

func (d *File) shortRead(off, n int64, got int) error {
	now := int64(-1)
	if st, err := d.f.Stat(); err == nil {
		now = st.Size()
	}
	return fmt.Errorf("blockdev: read %s offset %d length %d: got %d bytes: backing store is now %d bytes, shorter than the volume's %d (truncated behind our back?): %w",
		d.path, off, n, got, now, d.size, ErrIO)
}

// WriteAt implements io.WriterAt.
func (d *File) WriteAt(p []byte, off int64) (int, error) {
	if err := d.check("write", off, int64(len(p)), true); err != nil {
		return 0, err
	}
	if len(p) == 0 {
		return 0, nil
	}
	var n int
	var err error
	if d.direct {
		n, err = d.writeDirect(p, off)
	} else {
		n, err = d.f.WriteAt(p, off)
	}
	if err != nil {
		return n, d.ioErr("write", off, int64(len(p)), err)
	}
	return n, nil
}

// Flush implements Device with fdatasync(2).
//
// A failed fdatasync may have dropped dirty data that the kernel then
// marks clean, so a later fdatasync could succeed without that data being
// durable. Once Flush has failed, every later Flush returns the same error:
// the volume must be closed and resynchronised, not trusted.
func (d *File) Flush() error {
	if d.closed.Load() {
		return fmt.Errorf("blockdev: flush %s: %w", d.path, ErrClosed)
	}
	if p := d.flushErr.Load(); p != nil {
		return *p
	}
	err := d.control(func(fd int) error {
		for {
			err := syscall.Fdatasync(fd)
			if err != syscall.EINTR {
				return err
			}
		}
	})
	if err != nil {
		if errors.Is(err, os.ErrClosed) {
			return fmt.Errorf("blockdev: flush %s: %w", d.path, ErrClosed)
		}
		err = fmt.Errorf("blockdev: flush %s: %w (later flushes fail too)", d.path, mapIOErr(err, d.readOnly))
		d.flushErr.CompareAndSwap(nil, &err)
		return *d.flushErr.Load()
	}
	return nil
}

// Discard implements Device. On a regular file it punches a hole
// (fallocate PUNCH_HOLE|KEEP_SIZE), returning the blocks to the file
// system. On a block device the same fallocate call asks the kernel to zero
// the range by unmapping where the device guarantees zeros afterwards
// (blkdev_fallocate, Linux 4.9+). Where neither is supported it falls back
// to BLKZEROOUT (block devices) and then to writing zeros in bounded
// chunks; the range reads as zeros either way.
func (d *File) Discard(off, n int64) error {
	if err := d.check("discard", off, n, true); err != nil {
		return err
	}
	if n == 0 {
		return nil
	}
	done, err := d.discardOffload(off, n)
	if done || err != nil {
		return err
	}
	return d.writeZeros(off, n)
}

// discardOffload zeroes [off, off+n) without writing zeros from user
// space. It reports done=false, with no error, when the backing store
// cannot do that and the caller must write zeros itself.
func (d *File) discardOffload(off, n int64) (done bool, err error) {
	if d.direct {
		// Keep a concurrent read-modify-write of a partial block from
		// writing back data this discard has just zeroed.
		start, end := off&^(DirectAlign-1), roundUp(off+n)
		d.ranges.lock(start, end)
		defer d.ranges.unlock(start, end)
	}
	err = d.control(func(fd int) error {
		return fallocate(fd, fallocPunchHole|fallocKeepSize, off, n)
	})
	if err == nil {
		return true, nil
	}
	if !errors.Is(err, syscall.EOPNOTSUPP) && !errors.Is(err, syscall.ENOSYS) &&
		!(d.blockDev && errors.Is(err, syscall.EINVAL)) {
		return false, d.ioErr("discard", off, n, err)
	}
	if !d.blockDev {
		return false, nil
	}
	err = d.control(func(fd int) error {
		r := [2]uint64{uint64(off), uint64(n)}
		_, _, errno := syscall.Syscall(syscall.SYS_IOCTL, uintptr(fd), ioctlBLKZEROOUT, uintptr(unsafe.Pointer(&r)))
		if errno != 0 {
			return errno
		}
		return nil
	})
	// BLKZEROOUT needs logical-block alignment; fall back on any refusal.
	return err == nil, nil
}

func fallocate(fd int, mode uint32, off, n int64) error {
	for {
		err := syscall.Fallocate(fd, mode, off, n)
		if err != syscall.EINTR {
			return err
		}
	}
}

func (d *File) writeZeros(off, n int64) error {
	var zeros []byte
	if d.direct {
		bp := d.bufs.Get().(*[]byte)
		defer d.bufs.Put(bp)
		zeros = (*bp)[:min(n, zeroChunk)]
		clear(zeros)
	} else {
		zeros = make([]byte, min(n, zeroChunk))
	}
	for done := int64(0); done < n; {
		c := min(n-done, int64(len(zeros)))
		if _, err := d.WriteAt(zeros[:c], off+done); err != nil {
			return err
		}
		done += c
	}
	return nil
}

// control runs fn with the raw descriptor, mapping a closed file to ErrClosed.
func (d *File) control(fn func(fd int) error) error {
	rc, err := d.f.SyscallConn()
	if err != nil {
		return err
	}
	var ferr error
	if err := rc.Control(func(fd uintptr) { ferr = fn(int(fd)) }); err != nil {
		return err
	}
	return ferr
}

// Close implements Device. It does not flush: call Flush first if the
// data written since the last Flush must be durable.
func (d *File) Close() error {
	if d.closed.Swap(true) {
		return fmt.Errorf("blockdev: close %s: %w", d.path, ErrClosed)
	}
	if err := d.f.Close(); err != nil {
		return fmt.Errorf("blockdev: close %s: %w", d.path, mapIOErr(err, d.readOnly))
	}
	return nil
}

// --- O_DIRECT ---

// alignedBuf returns a slice of n bytes whose first byte is DirectAlign-aligned.
func alignedBuf(n int) []byte {
	b := make([]byte, n+DirectAlign)
	skip := int((DirectAlign - uintptr(unsafe.Pointer(&b[0]))%DirectAlign) % DirectAlign)
	return b[skip : skip+n : skip+n]
}

func isAligned(p []byte, off int64) bool {
	return off%DirectAlign == 0 && len(p)%DirectAlign == 0 &&
		uintptr(unsafe.Pointer(&p[0]))%DirectAlign == 0
}

// readDirect reads p at off with O_DIRECT. Aligned requests read straight
// into p; others read the covering aligned blocks into pooled buffers.
func (d *File) readDirect(p []byte, off int64) (int, error) {
	if isAligned(p, off) {
		return d.f.ReadAt(p, off)
	}
	bp := d.bufs.Get().(*[]byte)
	defer d.bufs.Put(bp)
	buf := *bp
	done := 0
	for done < len(p) {
		pos := off + int64(done)
		start := pos &^ (DirectAlign - 1)
		skip := int(pos - start)
		span := min(roundUp(int64(skip+len(p)-done)), int64(len(buf)))
		m, err := d.f.ReadAt(buf[:span], start)
		if m < int(span) {
			// A short aligned read means the file shrank; report what we got.
			done += copy(p[done:], buf[min(skip, max(m, 0)):max(m, 0)])
			if err == nil {
				err = io.EOF
			}
			return done, err
		}
		done += copy(p[done:], buf[skip:span])
	}
	return done, nil
}

// writeDirect writes p at off with O_DIRECT, holding the byte range of the
// covering aligned blocks so that a read-modify-write never races with
// another write to the same block.
func (d *File) writeDirect(p []byte, off int64) (int, error) {
	start := off &^ (DirectAlign - 1)
	end := roundUp(off + int64(len(p)))
	d.ranges.lock(start, end)
	defer d.ranges.unlock(start, end)
	if isAligned(p, off) {
		return d.f.WriteAt(p, off)
	}
	bp := d.bufs.Get().(*[]byte)
	defer d.bufs.Put(bp)
	buf := *bp
	done := 0
	for done < len(p) {
		pos := off + int64(done)
		cstart := pos &^ (DirectAlign - 1)
		skip := int(pos - cstart)
		span := min(roundUp(int64(skip+len(p)-done)), int64(len(buf)))
		n := min(len(p)-done, int(span)-skip)
		// Only the first and last blocks of the chunk can be partial.
		if skip != 0 {
			if err := d.readBlock(buf[:DirectAlign], cstart); err != nil {
				return done, err
			}
		}
		if tail := int64(skip + n); tail%DirectAlign != 0 && (skip == 0 || tail > DirectAlign) {
			last := tail &^ (DirectAlign - 1)
			if err := d.readBlock(buf[last:last+DirectAlign], cstart+last); err != nil {
				return done, err
			}
		}
		copy(buf[skip:], p[done:done+n])
		if _, err := d.f.WriteAt(buf[:span], cstart); err != nil {
			// We cannot tell which of p's bytes reached the device.
			return done, err
		}
		done += n
	}
	return done, nil
}

func (d *File) readBlock(b []byte, off int64) error {
	n, err := d.f.ReadAt(b, off)
	if n == len(b) {
		return nil
	}
	if err == nil || err == io.EOF {
		return d.shortRead(off, int64(len(b)), n)
	}
	return err
}

func roundUp(n int64) int64 { return (n + DirectAlign - 1) &^ (DirectAlign - 1) }

// rangeLock is a lock on byte ranges: lock(a, b) waits until no held range
// overlaps [a, b). Few ranges are held at once (one per in-flight write),
// so a slice scan is cheap.
type rangeLock struct {
	mu   sync.Mutex
	cond *sync.Cond
	held [][2]int64
}

func (l *rangeLock) lock(a, b int64) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.cond == nil {
		l.cond = sync.NewCond(&l.mu)
	}
	for l.overlapsLocked(a, b) {
		l.cond.Wait()
	}
	l.held = append(l.held, [2]int64{a, b})
}

func (l *rangeLock) unlock(a, b int64) {
	l.mu.Lock()
	defer l.mu.Unlock()
	for i, r := range l.held {
		if r == [2]int64{a, b} {
			l.held[i] = l.held[len(l.held)-1]
			l.held = l.held[:len(l.held)-1]
			l.cond.Broadcast()
			return
		}
	}
	panic(fmt.Sprintf("blockdev: unlock of range [%d, %d) that is not held", a, b))
}

func (l *rangeLock) overlapsLocked(a, b int64) bool {
	for _, r := range l.held {
		if a < r[1] && r[0] < b {
			return true
		}
	}
	return false
}

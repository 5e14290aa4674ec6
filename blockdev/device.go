// Package blockdev is hablock's local volume: a fixed-size array of bytes
// backed by a regular file or a raw block device, plus (later) the per-node
// metadata that replication keeps beside it.
//
// Every implementation of Device is safe for concurrent use: reads and
// writes are positional (pread/pwrite) and never share a file offset.
//
// Implementations:
//   - File (OpenFile): a sparse regular file or a raw block device, through
//     the page cache or with O_DIRECT. Flush is fdatasync; Discard punches
//     holes. It holds an flock so two processes never write one volume.
//   - Memory: a plain in-memory volume for tests.
//   - Crashable: an in-memory volume that remembers which writes were
//     flushed; CrashClone returns what a reboot after power loss would find.
//   - Faulty: wraps any Device and injects errors, torn writes and latency
//     by operation and byte range.
//
// The durability contract: a write is durable once a Flush that started
// after the write completed has returned nil. Until then a crash may keep
// all, none or any sectors of it. A Flush that fails leaves the volume
// untrustworthy (see File.Flush).
package blockdev

import (
	"errors"
	"io"
)

// Device is a fixed-size block volume.
//
// Offsets and lengths are in bytes. Callers (the SCSI layer) only issue
// requests that lie inside [0, Size()); an implementation still checks and
// returns ErrOutOfRange rather than touching bytes past the end.
type Device interface {
	io.ReaderAt
	io.WriterAt

	// Size is the volume's size in bytes. It never changes while open.
	Size() int64

	// Flush makes every write that completed before the call durable
	// (fdatasync on a file or a raw device).
	Flush() error

	// Discard deallocates [off, off+n). Afterwards the range reads back
	// as zeros. On a file it punches a hole; on a block device it asks the
	// kernel to unmap the range where the device then reads zeros
	// (fallocate PUNCH_HOLE), and otherwise zeroes it (BLKZEROOUT, then
	// zero writes). Like a write, it is durable only after Flush.
	Discard(off, n int64) error

	// ReadOnly reports whether writes are refused with ErrReadOnly.
	ReadOnly() bool

	// Close releases the device. Calls after Close return ErrClosed.
	Close() error
}

// Sentinel errors. Implementations wrap them with context (%w), so callers
// test with errors.Is. The SCSI layer maps them to sense codes in one place.
var (
	// ErrOutOfRange: a request reaches past the end of the volume.
	ErrOutOfRange = errors.New("blockdev: request beyond end of volume")
	// ErrReadOnly: a write or discard on a volume opened read-only.
	ErrReadOnly = errors.New("blockdev: volume is read-only")
	// ErrNoSpace: the file system holding a sparse backing file is full.
	ErrNoSpace = errors.New("blockdev: no space left on backing store")
	// ErrIO: the backing store reported an I/O error (EIO and friends).
	ErrIO = errors.New("blockdev: I/O error")
	// ErrAbandoned: the device gave the request up without doing it or
	// refusing it, because the node stopped serving (a failover demoted
	// it while the request was held). Whoever asked must send no answer
	// at all: the SCSI layer drops the command without a response, and
	// the initiator retries it on the node that took over.
	ErrAbandoned = errors.New("blockdev: request abandoned by a node that stopped serving")
	// ErrClosed: the device was used after Close.
	ErrClosed = errors.New("blockdev: device closed")
	// ErrSizeMismatch: an existing backing store does not have the size asked for.
	ErrSizeMismatch = errors.New("blockdev: backing store size does not match")
	// ErrNotFound: the backing path does not exist and creation was not asked for.
	ErrNotFound = errors.New("blockdev: backing store not found")
)

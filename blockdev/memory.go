package blockdev

import (
	"fmt"
	"sync"
)

// Memory is an in-memory Device for tests. It is safe for concurrent use.
type Memory struct {
	mu       sync.RWMutex
	data     []byte
	readOnly bool
	closed   bool
}

// NewMemory returns a zero-filled in-memory device of size bytes.
func NewMemory(size int64) *Memory {
	return &Memory{data: make([]byte, size)}
}

var _ Device = (*Memory)(nil)

func (m *Memory) check(off, n int64) error {
	if m.closed {
		return fmt.Errorf("blockdev: memory offset %d length %d: %w", off, n, ErrClosed)
	}
	// off > size-n rather than off+n > size: off+n can overflow.
	if off < 0 || n < 0 || off > int64(len(m.data))-n {
		return fmt.Errorf("offset %d length %d size %d: %w", off, n, len(m.data), ErrOutOfRange)
	}
	return nil
}

// ReadAt implements io.ReaderAt.
func (m *Memory) ReadAt(p []byte, off int64) (int, error) {
	m.mu.RLock()
	defer m.mu.RUnlock()
	if err := m.check(off, int64(len(p))); err != nil {
		return 0, err
	}
	return copy(p, m.data[off:]), nil
}

// WriteAt implements io.WriterAt.
func (m *Memory) WriteAt(p []byte, off int64) (int, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if err := m.check(off, int64(len(p))); err != nil {
		return 0, err
	}
	if m.readOnly {
		return 0, fmt.Errorf("blockdev: memory write offset %d length %d: %w", off, len(p), ErrReadOnly)
	}
	return copy(m.data[off:], p), nil
}

// Size implements Device.
func (m *Memory) Size() int64 { return int64(len(m.data)) }

// Flush implements Device; memory is always "durable".
func (m *Memory) Flush() error {
	m.mu.RLock()
	defer m.mu.RUnlock()
	if m.closed {
		return fmt.Errorf("blockdev: memory flush: %w", ErrClosed)
	}
	return nil
}

// Discard implements Device by zeroing the range.
func (m *Memory) Discard(off, n int64) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if err := m.check(off, n); err != nil {
		return err
	}
	if m.readOnly {
		return fmt.Errorf("blockdev: memory discard offset %d length %d: %w", off, n, ErrReadOnly)
	}
	clear(m.data[off : off+n])
	return nil
}

// SetReadOnly makes later writes fail with ErrReadOnly.
func (m *Memory) SetReadOnly(ro bool) {
	m.mu.Lock()
	m.readOnly = ro
	m.mu.Unlock()
}

// ReadOnly implements Device.
func (m *Memory) ReadOnly() bool {
	m.mu.RLock()
	defer m.mu.RUnlock()
	return m.readOnly
}

// Close implements Device. A second Close returns ErrClosed.
func (m *Memory) Close() error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.closed {
		return fmt.Errorf("blockdev: memory close: %w", ErrClosed)
	}
	m.closed = true
	return nil
}

package replication

import (
	"encoding/binary"
	"errors"
	"fmt"
	"iter"
	"math/bits"
)

// DefaultBlockSize is the bitmap's default granularity: 4 KiB, the
// common filesystem and page size. One bit covers one block, so a 1 TiB
// volume needs 32 MiB of bitmap; a write smaller than a block still
// dirties (and later resyncs) the whole block.
const DefaultBlockSize = 4096

// Errors returned by Bitmap.
var (
	ErrOutOfRange = errors.New("replication: range outside the volume")
	ErrGeometry   = errors.New("replication: bitmap geometry mismatch")
)

// Bitmap marks which blocks of a volume are out of sync with the peer:
// set while writing without the peer (or when a replicated write fails),
// cleared as resync makes blocks equal. It is not safe for concurrent
// use; its owner serialises access.
type Bitmap struct {
	volumeSize uint64
	blockSize  uint64
	shift      uint   // log2(blockSize)
	nblocks    uint64 // ceil(volumeSize / blockSize)
	words      []uint64
	// INVARIANT: count == number of set bits in words; bits at or past
	// nblocks are never set.
	count uint64
}

// NewBitmap returns an all-clean bitmap for a volume of volumeSize bytes
// with blockSize-byte blocks (a power of two in [MinBlockSize,
// MaxBlockSize]; DefaultBlockSize if 0). The last block may be partial.
func NewBitmap(volumeSize uint64, blockSize uint32) (*Bitmap, error) {
	if blockSize == 0 {
		blockSize = DefaultBlockSize
	}
	if blockSize < MinBlockSize || blockSize > MaxBlockSize || bits.OnesCount32(blockSize) != 1 {
		return nil, fmt.Errorf("%w: block size %d", ErrGeometry, blockSize)
	}
	b := &Bitmap{volumeSize: volumeSize, blockSize: uint64(blockSize), shift: uint(bits.TrailingZeros32(blockSize))}
	b.nblocks = (volumeSize + b.blockSize - 1) >> b.shift
	b.words = make([]uint64, (b.nblocks+63)/64)
	return b, nil
}

// VolumeSize, BlockSize and Blocks describe the geometry.
func (b *Bitmap) VolumeSize() uint64 { return b.volumeSize }
func (b *Bitmap) BlockSize() uint32  { return uint32(b.blockSize) }
func (b *Bitmap) Blocks() uint64     { return b.nblocks }

// Count is the number of out-of-sync blocks.
func (b *Bitmap) Count() uint64 { return b.count }

// DirtyBytes is the number of out-of-sync bytes: Count blocks, with a
// partial last block counted by its real size.
func (b *Bitmap) DirtyBytes() uint64 {
	n := b.count << b.shift
	if tail := b.volumeSize & (b.blockSize - 1); tail != 0 && b.Test(b.nblocks-1) {
		n -= b.blockSize - tail
	}
	return n
}

// Test reports whether block i is out of sync (false past the end).
func (b *Bitmap) Test(i uint64) bool {
	return i < b.nblocks && b.words[i/64]&(1<<(i%64)) != 0
}

func (b *Bitmap) checkRange(off, n uint64) error {
	if off > b.volumeSize || n > b.volumeSize-off {
		return fmt.Errorf("%w: [%d, +%d) of %d", ErrOutOfRange, off, n, b.volumeSize)
	}
	return nil
}

// Set marks every block that overlaps [off, off+n) out of sync and
// returns how many were clean before. A zero-length range marks nothing.
func (b *Bitmap) Set(off, n uint64) (uint64, error) {
	if err := b.checkRange(off, n); err != nil || n == 0 {
		return 0, err
	}
	first, last := off>>b.shift, (off+n-1)>>b.shift
	return b.setBlocks(first, last+1), nil
}

// Clear marks in sync every block wholly inside [off, off+n) (a partial
// last block of the volume counts as whole when the range reaches the
// end of the volume) and returns how many were dirty. Blocks only partly
// covered stay dirty: their other bytes were not resynced.
func (b *Bitmap) Clear(off, n uint64) (uint64, error) {
	if err := b.checkRange(off, n); err != nil || n == 0 {
		return 0, err
	}
	first := (off + b.blockSize - 1) >> b.shift
	end := (off + n) >> b.shift
	if off+n == b.volumeSize {
		end = b.nblocks
	}
	if first >= end {
		return 0, nil
	}
	return b.clearBlocks(first, end), nil
}

// SetAll marks every block out of sync (a full sync).
func (b *Bitmap) SetAll() { b.setBlocks(0, b.nblocks) }

// ClearAll marks every block in sync.
func (b *Bitmap) ClearAll() { b.clearBlocks(0, b.nblocks) }

// setBlocks sets blocks [from, to) and returns how many changed.
func (b *Bitmap) setBlocks(from, to uint64) uint64 {
	var changed uint64
	for from < to {
		w, bit := from/64, from%64
		span := min(64-bit, to-from)
		mask := spanMask(bit, span)
		changed += uint64(bits.OnesCount64(mask &^ b.words[w]))
		b.words[w] |= mask
		from += span
	}
	b.count += changed
	return changed
}

func (b *Bitmap) clearBlocks(from, to uint64) uint64 {
	var changed uint64
	for from < to {
		w, bit := from/64, from%64
		span := min(64-bit, to-from)
		mask := spanMask(bit, span)
		changed += uint64(bits.OnesCount64(mask & b.words[w]))
		b.words[w] &^= mask
		from += span
	}
	b.count -= changed
	return changed
}

func spanMask(bit, span uint64) uint64 {
	if span == 64 {
		return ^uint64(0)
	}
	return ((1 << span) - 1) << bit
}

// NextDirty returns the first out-of-sync block at or after block from.
func (b *Bitmap) NextDirty(from uint64) (uint64, bool) {
	i := b.nextWith(from, true)
	return i, i < b.nblocks
}

// nextWith returns the first block >= from whose bit equals set, or
// nblocks.
func (b *Bitmap) nextWith(from uint64, set bool) uint64 {
	if from >= b.nblocks {
		return b.nblocks
	}
	w := from / 64
	word := b.words[w]
	if !set {
		word = ^word
	}
	word &= ^uint64(0) << (from % 64)
	for {
		if word != 0 {
			return min(w*64+uint64(bits.TrailingZeros64(word)), b.nblocks)
		}
		w++
		if w >= uint64(len(b.words)) {
			return b.nblocks
		}
		word = b.words[w]
		if !set {
			word = ^word
		}
	}
}

// NextDirtyRange returns the byte range of the first run of out-of-sync
// blocks at or after byte offset from, at most maxLen bytes long (rounded
// down to whole blocks, but at least one block) and clipped to the
// volume: the next piece a sync target requests.
func (b *Bitmap) NextDirtyRange(from, maxLen uint64) (off, n uint64, ok bool) {
	start, ok := b.NextDirty((from + b.blockSize - 1) >> b.shift)
	if !ok {
		return 0, 0, false
	}
	maxBlocks := max(maxLen>>b.shift, 1)
	end := min(b.nextWith(start, false), start+maxBlocks)
	off = start << b.shift
	return off, min(end<<b.shift, b.volumeSize) - off, true
}

// Merge marks out of sync every block dirty in o (same geometry): at
// resync start each side's bitmap is merged into the other's, because
// the union is what differs.
func (b *Bitmap) Merge(o *Bitmap) error {
	if o.volumeSize != b.volumeSize || o.blockSize != b.blockSize {
		return fmt.Errorf("%w: %d/%d vs %d/%d", ErrGeometry, b.volumeSize, b.blockSize, o.volumeSize, o.blockSize)
	}
	var c uint64
	for i, w := range o.words {
		b.words[i] |= w
		c += uint64(bits.OnesCount64(b.words[i]))
	}
	b.count = c
	return nil
}

// Equal reports whether b and o have the same geometry and bits.
func (b *Bitmap) Equal(o *Bitmap) bool {
	if b.volumeSize != o.volumeSize || b.blockSize != o.blockSize || b.count != o.count {
		return false
	}
	for i := range b.words {
		if b.words[i] != o.words[i] {
			return false
		}
	}
	return true
}

// EncodeChunk encodes blocks from start on into a chunk of at most
// maxData bytes (capped at MaxBitmapChunkData, at least 16), choosing
// whichever of run-length or raw encoding covers more blocks (the shorter
// one if both reach the end). The chunk covers c.Blocks blocks; the next
// chunk starts at c.StartBlock+c.Blocks. BitmapLast is set on the chunk
// that reaches the end of the bitmap.
func (b *Bitmap) EncodeChunk(start uint64, maxData int) BitmapChunk {
	maxData = min(max(maxData, 2*binary.MaxVarintLen64), MaxBitmapChunkData)
	start = min(start, b.nblocks)
	remaining := b.nblocks - start

	rle, rleBlocks := b.encodeRLE(start, maxData)
	rawBlocks := min(remaining, uint64(maxData)*8)
	rawBytes := int((rawBlocks + 7) / 8)

	c := BitmapChunk{StartBlock: start}
	if rleBlocks > rawBlocks || (rleBlocks == rawBlocks && len(rle) <= rawBytes) {
		c.Encoding, c.Blocks, c.Data = BitmapRLE, uint32(rleBlocks), rle
	} else {
		c.Encoding, c.Blocks, c.Data = BitmapRaw, uint32(rawBlocks), b.encodeRaw(start, rawBlocks)
	}
	if start+uint64(c.Blocks) == b.nblocks {
		c.Flags |= BitmapLast
	}
	return c
}

// encodeRLE writes alternating clean/dirty run lengths (first run clean,
// possibly 0) while they fit in maxData bytes. A run cut by the budget is
// emitted partially; the chunk then ends there.
func (b *Bitmap) encodeRLE(start uint64, maxData int) ([]byte, uint64) {
	var out []byte
	pos, dirty := start, false
	// Raw can never cover more than maxData*8 blocks, so cap the chunk
	// there too (keeps Blocks within uint32 for every maxData).
	limit := min(b.nblocks, start+uint64(MaxBitmapChunkData)*8*8)
	for pos < limit {
		end := min(b.nextWith(pos, !dirty), limit)
		run := end - pos
		if len(out)+uvarintLen(run) > maxData {
			// Emit as much of the run as fits, if anything does.
			room := maxData - len(out)
			if room <= 0 {
				break
			}
			run = min(run, maxUvarint(room))
			if run == 0 {
				break
			}
			end = pos + run
		}
		out = binary.AppendUvarint(out, run)
		pos, dirty = end, !dirty
		if len(out) >= maxData {
			break
		}
	}
	return out, pos - start
}

func uvarintLen(v uint64) int {
	n := 1
	for v >= 0x80 {
		v >>= 7
		n++
	}
	return n
}

// maxUvarint is the largest value that encodes in n bytes.
func maxUvarint(n int) uint64 {
	if n >= 10 {
		return ^uint64(0)
	}
	return 1<<(7*uint(n)) - 1
}

func (b *Bitmap) encodeRaw(start, n uint64) []byte {
	out := make([]byte, (n+7)/8)
	for i := b.nextWith(start, true); i < start+n; i = b.nextWith(i+1, true) {
		j := i - start
		out[j/8] |= 1 << (j % 8)
	}
	return out
}

// Chunks yields the whole bitmap as chunks of at most maxData bytes, for
// sending to the peer or persisting. Applying them all to a clean bitmap
// of the same geometry reproduces b.
func (b *Bitmap) Chunks(maxData int) iter.Seq[BitmapChunk] {
	return func(yield func(BitmapChunk) bool) {
		var pos uint64
		for {
			c := b.EncodeChunk(pos, maxData)
			if !yield(c) || c.Flags&BitmapLast != 0 {
				return
			}
			pos += uint64(c.Blocks)
		}
	}
}

// ApplyChunk marks out of sync the blocks c says are dirty (bits are
// ORed in: applying the peer's bitmap merges it). It validates the chunk
// fully before changing anything: range, encoding, canonical runs (every
// run after the first is non-zero and they sum to Blocks), zero padding.
func (b *Bitmap) ApplyChunk(c *BitmapChunk) error {
	if err := c.check(); err != nil {
		return err
	}
	if c.StartBlock > b.nblocks || uint64(c.Blocks) > b.nblocks-c.StartBlock {
		return fmt.Errorf("%w: chunk blocks [%d, +%d) of %d", ErrOutOfRange, c.StartBlock, c.Blocks, b.nblocks)
	}
	switch c.Encoding {
	case BitmapRaw:
		if c.Blocks%8 != 0 && c.Data[len(c.Data)-1]>>(c.Blocks%8) != 0 {
			return malformed("raw bitmap padding bits set")
		}
		for j, by := range c.Data {
			for by != 0 {
				k := uint64(bits.TrailingZeros8(by))
				by &= by - 1
				i := c.StartBlock + uint64(j)*8 + k
				b.setBlocks(i, i+1)
			}
		}
	case BitmapRLE:
		if err := walkRLE(c.Data, uint64(c.Blocks), nil); err != nil {
			return err
		}
		return walkRLE(c.Data, uint64(c.Blocks), func(from, to uint64) {
			b.setBlocks(c.StartBlock+from, c.StartBlock+to)
		})
	}
	return nil
}

// walkRLE validates run-length data covering total blocks and calls
// dirty for each dirty run (relative block numbers) if it is non-nil.
func walkRLE(data []byte, total uint64, dirty func(from, to uint64)) error {
	var pos uint64
	isDirty := false
	for first := true; len(data) > 0; first = false {
		run, n := binary.Uvarint(data)
		if n <= 0 {
			return malformed("bad run length varint")
		}
		if n != uvarintLen(run) {
			return malformed("non-minimal run length varint")
		}
		data = data[n:]
		if run == 0 && !first {
			return malformed("empty run")
		}
		if run > total-pos {
			return malformed("runs exceed %d blocks", total)
		}
		if isDirty && dirty != nil {
			dirty(pos, pos+run)
		}
		pos += run
		isDirty = !isDirty
	}
	if pos != total {
		return malformed("runs cover %d of %d blocks", pos, total)
	}
	return nil
}

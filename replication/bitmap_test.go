package replication

import (
	"errors"
	"fmt"
	"math/rand/v2"
	"testing"
)

// refBitmap is the obviously-correct model: one bool per block.
type refBitmap struct {
	size, bs uint64
	bits     []bool
}

func newRef(size, bs uint64) *refBitmap {
	return &refBitmap{size: size, bs: bs, bits: make([]bool, (size+bs-1)/bs)}
}

func (r *refBitmap) set(off, n uint64) {
	for i := range r.bits {
		lo, hi := uint64(i)*r.bs, min(uint64(i+1)*r.bs, r.size)
		if n > 0 && lo < off+n && hi > off { // overlaps
			r.bits[i] = true
		}
	}
}

func (r *refBitmap) clear(off, n uint64) {
	for i := range r.bits {
		lo, hi := uint64(i)*r.bs, min(uint64(i+1)*r.bs, r.size)
		if n > 0 && lo >= off && hi <= off+n { // wholly covered
			r.bits[i] = false
		}
	}
}

func (r *refBitmap) count() (n uint64) {
	for _, b := range r.bits {
		if b {
			n++
		}
	}
	return n
}

func (r *refBitmap) dirtyBytes() (n uint64) {
	for i, b := range r.bits {
		if b {
			n += min(uint64(i+1)*r.bs, r.size) - uint64(i)*r.bs
		}
	}
	return n
}

func checkAgainst(t *testing.T, b *Bitmap, r *refBitmap, what string) {
	t.Helper()
	if b.Count() != r.count() || b.DirtyBytes() != r.dirtyBytes() {
		t.Fatalf("%s: count %d/%d bytes %d/%d", what, b.Count(), r.count(), b.DirtyBytes(), r.dirtyBytes())
	}
	for i, want := range r.bits {
		if b.Test(uint64(i)) != want {
			t.Fatalf("%s: block %d = %v, want %v", what, i, !want, want)
		}
	}
	// NextDirty visits exactly the set blocks, in order.
	var visited []uint64
	for i, ok := b.NextDirty(0); ok; i, ok = b.NextDirty(i + 1) {
		visited = append(visited, i)
	}
	var want []uint64
	for i, v := range r.bits {
		if v {
			want = append(want, uint64(i))
		}
	}
	if fmt.Sprint(visited) != fmt.Sprint(want) {
		t.Fatalf("%s: NextDirty visited %v, want %v", what, visited, want)
	}
}

func TestBitmapAgainstModel(t *testing.T) {
	rng := rand.New(rand.NewPCG(3, 4))
	for _, geo := range []struct{ size, bs uint64 }{
		{4096 * 200, 4096}, {4096*130 + 1000, 4096}, {512 * 64, 512}, {1 << 20, 65536}, {100, 4096}, {0, 4096},
	} {
		b, err := NewBitmap(geo.size, uint32(geo.bs))
		if err != nil {
			t.Fatal(err)
		}
		r := newRef(geo.size, geo.bs)
		for step := range 400 {
			if geo.size == 0 {
				break
			}
			off := rng.Uint64N(geo.size)
			n := rng.Uint64N(min(geo.size-off, geo.bs*70) + 1)
			if rng.IntN(3) == 0 {
				before := b.Count()
				got, err := b.Clear(off, n)
				if err != nil {
					t.Fatal(err)
				}
				r.clear(off, n)
				if before-got != r.count() {
					t.Fatalf("Clear returned %d, count went %d -> %d", got, before, r.count())
				}
			} else {
				before := b.Count()
				got, err := b.Set(off, n)
				if err != nil {
					t.Fatal(err)
				}
				r.set(off, n)
				if before+got != r.count() {
					t.Fatalf("Set returned %d, count went %d -> %d", got, before, r.count())
				}
			}
			checkAgainst(t, b, r, fmt.Sprintf("geo %v step %d", geo, step))
		}
		b.SetAll()
		if b.Count() != b.Blocks() || b.DirtyBytes() != geo.size {
			t.Fatalf("SetAll: %d/%d bytes %d", b.Count(), b.Blocks(), b.DirtyBytes())
		}
		// Clearing the whole volume clears the partial last block too.
		if _, err := b.Clear(0, geo.size); err != nil || b.Count() != 0 {
			t.Fatalf("Clear all: %v count %d", err, b.Count())
		}
	}
}

func TestBitmapEdges(t *testing.T) {
	b, _ := NewBitmap(10*4096+100, 0) // default block size; partial last block
	if b.BlockSize() != DefaultBlockSize || b.Blocks() != 11 {
		t.Fatalf("geometry %d %d", b.BlockSize(), b.Blocks())
	}
	if _, err := b.Set(b.VolumeSize(), 1); !errors.Is(err, ErrOutOfRange) {
		t.Errorf("set past end: %v", err)
	}
	if _, err := b.Set(^uint64(0)-5, 10); !errors.Is(err, ErrOutOfRange) {
		t.Errorf("overflow: %v", err)
	}
	if n, err := b.Set(5, 0); n != 0 || err != nil || b.Count() != 0 {
		t.Errorf("zero-length set dirtied something")
	}
	// One byte dirties its block; clearing a partial block does nothing.
	b.Set(4096+7, 1)
	if n, _ := b.Clear(4096, 4095); n != 0 || !b.Test(1) {
		t.Error("partial clear cleared")
	}
	if n, _ := b.Clear(4096, 4096); n != 1 || b.Test(1) {
		t.Error("full clear did not clear")
	}
	// The partial last block.
	b.Set(b.VolumeSize()-1, 1)
	if b.DirtyBytes() != 100 {
		t.Errorf("partial last block counts %d bytes", b.DirtyBytes())
	}
	if _, err := b.Clear(10*4096, 100); err != nil || b.Count() != 0 {
		t.Error("clearing up to the end did not clear the partial block")
	}
	for _, bs := range []uint32{256, 3000, 2 << 20} {
		if _, err := NewBitmap(1<<20, bs); !errors.Is(err, ErrGeometry) {
			t.Errorf("block size %d: %v", bs, err)
		}
	}
}

func TestBitmapNextDirtyRange(t *testing.T) {
	b, _ := NewBitmap(100*4096+512, 4096)
	b.Set(3*4096, 5*4096) // blocks 3..7
	b.Set(20*4096, 4096)  // block 20
	b.Set(100*4096+10, 1) // partial last block
	type rng struct{ off, n uint64 }
	var got []rng
	for from := uint64(0); ; {
		off, n, ok := b.NextDirtyRange(from, 3*4096)
		if !ok {
			break
		}
		got = append(got, rng{off, n})
		from = off + n
	}
	want := []rng{{3 * 4096, 3 * 4096}, {6 * 4096, 2 * 4096}, {20 * 4096, 4096}, {100 * 4096, 512}}
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Fatalf("ranges %v, want %v", got, want)
	}
	// maxLen below a block still returns one block; from mid-block skips it.
	if off, n, ok := b.NextDirtyRange(3*4096+1, 1); !ok || off != 4*4096 || n != 4096 {
		t.Errorf("mid-block from: %d %d %v", off, n, ok)
	}
}

func TestBitmapMerge(t *testing.T) {
	a, _ := NewBitmap(1<<20, 4096)
	b, _ := NewBitmap(1<<20, 4096)
	a.Set(0, 8192)
	b.Set(4096, 8192)
	b.Set(1<<19, 1)
	if err := a.Merge(b); err != nil || a.Count() != 4 || !a.Test(2) || !a.Test(128) {
		t.Fatalf("merge: %v count %d", err, a.Count())
	}
	c, _ := NewBitmap(1<<21, 4096)
	if err := a.Merge(c); !errors.Is(err, ErrGeometry) {
		t.Errorf("geometry mismatch: %v", err)
	}
}

// Chunked encoding reproduces any bitmap, for several chunk budgets and
// densities, and the chunks survive the wire.
func TestBitmapChunksRoundTrip(t *testing.T) {
	rng := rand.New(rand.NewPCG(5, 6))
	for _, blocks := range []uint64{0, 1, 63, 64, 65, 1000, 100_000} {
		for _, density := range []float64{0, 0.001, 0.1, 0.5, 0.99, 1} {
			for _, budget := range []int{16, 100, 4096, MaxBitmapChunkData} {
				b, _ := NewBitmap(blocks*4096, 4096)
				for i := range blocks {
					if rng.Float64() < density {
						b.Set(i*4096, 4096)
					}
				}
				// Long runs too.
				if blocks > 10 && density > 0 && density < 1 {
					b.Set(blocks/3*4096, blocks/4*4096)
				}
				out, _ := NewBitmap(blocks*4096, 4096)
				next, chunks, sawLast := uint64(0), 0, false
				for c := range b.Chunks(budget) {
					if c.StartBlock != next || sawLast || len(c.Data) > max(budget, 20) {
						t.Fatalf("chunk %d: start %d want %d, %d bytes", chunks, c.StartBlock, next, len(c.Data))
					}
					frame, err := AppendFrame(nil, 1, 0, &c)
					if err != nil {
						t.Fatal(err)
					}
					f, _, err := Decode(frame)
					if err != nil {
						t.Fatal(err)
					}
					m, err := ParseMessage(f)
					if err != nil {
						t.Fatal(err)
					}
					if err := out.ApplyChunk(m.(*BitmapChunk)); err != nil {
						t.Fatalf("apply: %v", err)
					}
					next += uint64(c.Blocks)
					sawLast = c.Flags&BitmapLast != 0
					chunks++
					if chunks > 1_000_000 {
						t.Fatal("no progress")
					}
				}
				if !sawLast || next != blocks || !out.Equal(b) {
					t.Fatalf("blocks=%d density=%v budget=%d: last=%v next=%d equal=%v", blocks, density, budget, sawLast, next, out.Equal(b))
				}
			}
		}
	}
}

func TestBitmapChunkCompression(t *testing.T) {
	b, _ := NewBitmap(1<<40, 4096) // 1 TiB: 256 Mi blocks
	b.Set(1<<30, 1<<20)
	n := 0
	for range b.Chunks(MaxBitmapChunkData) {
		n++
	}
	// A sparse 1 TiB bitmap must not take 32 MiB of raw chunks.
	if n > 100 {
		t.Errorf("%d chunks for a sparse bitmap", n)
	}
}

func TestApplyChunkRejects(t *testing.T) {
	b, _ := NewBitmap(64*4096, 4096)
	bad := []BitmapChunk{
		{StartBlock: 60, Blocks: 8, Encoding: BitmapRaw, Data: []byte{1}},       // past the end
		{StartBlock: 65, Blocks: 0, Encoding: BitmapRLE},                        // start past the end
		{StartBlock: 0, Blocks: 4, Encoding: BitmapRaw, Data: []byte{0x10}},     // padding bit set
		{StartBlock: 0, Blocks: 10, Encoding: BitmapRLE, Data: []byte{3, 4}},    // runs short
		{StartBlock: 0, Blocks: 10, Encoding: BitmapRLE, Data: []byte{3, 4, 9}}, // runs long
		{StartBlock: 0, Blocks: 10, Encoding: BitmapRLE, Data: []byte{3, 0, 7}}, // empty run
		{StartBlock: 0, Blocks: 10, Encoding: BitmapRLE, Data: []byte{0x80}},    // bad varint
		{StartBlock: 0, Blocks: 10, Encoding: BitmapRLE, Data: []byte{0x83, 0}}, // non-minimal varint
		{StartBlock: 0, Blocks: 10, Encoding: BitmapRLE, Data: nil},             // no runs
		{StartBlock: 0, Blocks: 10, Encoding: 9, Data: nil},                     // unknown encoding
	}
	for i, c := range bad {
		if err := b.ApplyChunk(&c); err == nil {
			t.Errorf("chunk %d accepted", i)
		}
		if b.Count() != 0 {
			t.Fatalf("chunk %d changed the bitmap before failing", i)
		}
	}
}

func BenchmarkBitmap(b *testing.B) {
	const size = 1 << 40 // 1 TiB at 4 KiB blocks
	bm, _ := NewBitmap(size, 4096)
	rng := rand.New(rand.NewPCG(1, 1))
	b.Run("set/4k", func(b *testing.B) {
		b.ReportAllocs()
		b.SetBytes(4096)
		for b.Loop() {
			bm.Set(rng.Uint64N(size/4096)*4096, 4096)
		}
	})
	b.Run("set/1m", func(b *testing.B) {
		b.ReportAllocs()
		b.SetBytes(1 << 20)
		for b.Loop() {
			bm.Set(rng.Uint64N(size/(1<<20))<<20, 1<<20)
		}
	})
	sparse, _ := NewBitmap(size, 4096)
	for range 10000 {
		sparse.Set(rng.Uint64N(size/4096)*4096, 64<<10)
	}
	b.Run("nextdirty/sparse-1TiB", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			for i, ok := sparse.NextDirty(0); ok; i, ok = sparse.NextDirty(i + 1) {
			}
		}
	})
	b.Run("encode/sparse-1TiB", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			for range sparse.Chunks(MaxBitmapChunkData) {
			}
		}
	})
}

package meta

import (
	"encoding/binary"
	"errors"
	"fmt"

	"github.com/dgraph-io/badger/v4"
)

// MaxBitmapChunkSize is the largest bitmap chunk in bytes: 64 KiB, i.e.
// 524288 bits, which at one bit per 4 KiB block covers 2 GiB of volume. It
// keeps every value under valueThreshold (so chunks stay in the LSM tree)
// and lets a batch hold a useful number of them.
const MaxBitmapChunkSize = 64 << 10

// PutBitmapChunks durably writes the given out-of-sync bitmap chunks, keyed
// by chunk index, in one transaction: after a crash either all of them or
// none are there. A nil or empty chunk deletes that index (a chunk with no
// bits set need not be stored). The bytes are opaque to the store;
// chunking and bit order belong to the caller.
//
// A chunk longer than MaxBitmapChunkSize, or a batch larger than badger
// takes in one transaction, fails with ErrTooLarge and writes nothing;
// batches of at most MaxBatchBytes always fit.
func (s *Store) PutBitmapChunks(chunks map[uint64][]byte) error {
	for idx, b := range chunks {
		if len(b) > MaxBitmapChunkSize {
			return fmt.Errorf("meta: bitmap chunk %d of %d bytes: %w (max %d)", idx, len(b), ErrTooLarge, MaxBitmapChunkSize)
		}
	}
	err := s.update(func(txn *badger.Txn) error {
		for idx, b := range chunks {
			var err error
			if len(b) == 0 {
				err = txn.Delete(bitmapKey(idx))
			} else {
				err = txn.Set(bitmapKey(idx), seal(kindBitmapChunk, bitmapVersion, b))
			}
			if err != nil {
				return err
			}
		}
		return nil
	})
	if errors.Is(err, badger.ErrTxnTooBig) {
		return fmt.Errorf("meta: %s: %d bitmap chunks in one batch: %w (split into batches of at most %d bytes)",
			s.dir, len(chunks), ErrTooLarge, s.MaxBatchBytes())
	}
	if err != nil {
		return fmt.Errorf("meta: %s: write %d bitmap chunks: %w", s.dir, len(chunks), err)
	}
	return nil
}

// LoadBitmapChunks calls fn for every stored chunk in increasing index
// order, from one consistent snapshot. b is the caller's to keep. If fn
// returns an error, iteration stops and that error is returned unwrapped.
// fn must not call the Store's write methods (the read holds the store's
// lock).
func (s *Store) LoadBitmapChunks(fn func(idx uint64, b []byte) error) error {
	var fnErr error
	err := s.view(func(txn *badger.Txn) error {
		opts := badger.DefaultIteratorOptions
		opts.Prefix = bitmapPrefix
		it := txn.NewIterator(opts)
		defer it.Close()
		for it.Rewind(); it.Valid(); it.Next() {
			item := it.Item()
			key := item.Key()
			if len(key) != bitmapKeyLen {
				return fmt.Errorf("%w: bitmap key %q", ErrCorrupt, key)
			}
			idx := binary.BigEndian.Uint64(key[len(bitmapPrefix):])
			v, err := item.ValueCopy(nil)
			if err != nil {
				return err
			}
			b, err := unseal(v, kindBitmapChunk, bitmapVersion)
			if err != nil {
				return fmt.Errorf("bitmap chunk %d: %w", idx, err)
			}
			if len(b) > MaxBitmapChunkSize {
				return fmt.Errorf("%w: bitmap chunk %d of %d bytes", ErrCorrupt, idx, len(b))
			}
			if err := fn(idx, b); err != nil {
				fnErr = err
				return err
			}
		}
		return nil
	})
	if fnErr != nil {
		return fnErr
	}
	if err != nil {
		return fmt.Errorf("meta: %s: load bitmap: %w", s.dir, err)
	}
	return nil
}

func bitmapKey(idx uint64) []byte {
	k := make([]byte, bitmapKeyLen)
	copy(k, bitmapPrefix)
	binary.BigEndian.PutUint64(k[len(bitmapPrefix):], idx)
	return k
}

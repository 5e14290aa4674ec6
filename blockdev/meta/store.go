// Package meta keeps a node's per-volume replication metadata: the volume's
// identity, this node's role, the generation identifiers, what it last knew
// of its peer's disk, the failover epoch, the out-of-sync bitmap (as opaque
// chunks) and the activity log (the set of hot extents).
//
// It lives in a small badger database in its own directory, beside the
// volume. Every write is synced before it returns (see Options and Open).
//
// The package knows nothing of replication: it stores and returns typed
// records and opaque bitmap bytes. The ActivityLog type is a pure core (no
// I/O, no clock, no goroutines) that decides when the hot set must be
// persisted; the Store persists it.
//
// Every value carries a small header (record kind, schema version, CRC-32C
// of the payload), so a record written by a newer schema or damaged on
// disk is refused with ErrCorrupt rather than misread.
package meta

import (
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"sync"
	"time"

	"github.com/dgraph-io/badger/v4"
	"github.com/dgraph-io/badger/v4/options"
)

// Sentinel errors, wrapped with context (%w): test with errors.Is.
var (
	// ErrNoMetadata: the directory holds no metadata (never created, or a
	// Create that did not finish writing the identity record).
	ErrNoMetadata = errors.New("meta: no metadata")
	// ErrExists: Create found metadata already there and force was not set.
	ErrExists = errors.New("meta: metadata already exists")
	// ErrCorrupt: a stored record fails its checksum, has an unknown kind or
	// schema version, or does not decode.
	ErrCorrupt = errors.New("meta: metadata corrupt")
	// ErrClosed: the Store was used after Close.
	ErrClosed = errors.New("meta: store closed")
	// ErrTooLarge: a value or a batch exceeds a documented bound
	// (MaxBitmapChunkSize, MaxALExtents, Store.MaxBatchBytes).
	ErrTooLarge = errors.New("meta: too large")
)

// Options tune the badger database under a Store. The metadata is tiny (a
// few records, a bitmap of at most some tens of MiB, a hot set of a few KiB),
// so the defaults are far below badger's, which are sized for a database of
// hundreds of GiB.
//
// SyncWrites is deliberately not an option: it is always on (see Open).
type Options struct {
	// Logger receives badger's messages: errors at Error, warnings at
	// Warn, info and debug at Debug (badger's info lines are routine:
	// replaying the WAL, compactions). Nil discards them.
	Logger *slog.Logger

	// MemTableSize is the size in bytes of one memtable and of its
	// write-ahead file. Default 8 MiB. It also bounds one transaction:
	// badger refuses a batch larger than 15% of it (see MaxBatchBytes),
	// so with the default one PutBitmapChunks call carries about 1.2 MiB.
	// Minimum 2 MiB, so that the largest single value (an AL record of
	// MaxALExtents extents, under valueThreshold) still fits a batch.
	// Zero is invalid; use DefaultOptions.
	MemTableSize int64

	// ValueLogFileSize is the size in bytes at which badger starts a new
	// value-log file. Default 16 MiB. Our values are all below
	// valueThreshold, so they stay in the LSM tree and the value log stays
	// nearly empty and needs no garbage collection; a small file keeps the
	// preallocated space small. Badger requires [1 MiB, 2 GiB).
	ValueLogFileSize int64

	// NumMemtables is how many memtables may be held in memory (one
	// mutable, the rest waiting to be flushed). Default 2: writes are rare
	// and small, so a flush never falls behind. Minimum 1.
	NumMemtables int
}

// DefaultOptions returns Options with every field set to its default.
func DefaultOptions() Options {
	return Options{
		Logger:           nil,
		MemTableSize:     8 << 20,
		ValueLogFileSize: 16 << 20,
		NumMemtables:     2,
	}
}

// valueThreshold: values at least this large would go to the value log.
// Every value we write is smaller (MaxBitmapChunkSize, an AL record of
// MaxALExtents), so none does and the value log never needs GC.
const valueThreshold = 256 << 10

// Validate checks o and names the offending field. It never mutates o.
func (o Options) Validate() error {
	if o.MemTableSize < 2<<20 {
		return fmt.Errorf("meta: Options.MemTableSize %d: must be at least 2 MiB", o.MemTableSize)
	}
	if o.MemTableSize > 1<<30 {
		return fmt.Errorf("meta: Options.MemTableSize %d: must be at most 1 GiB", o.MemTableSize)
	}
	if o.ValueLogFileSize < 1<<20 || o.ValueLogFileSize >= 2<<30 {
		return fmt.Errorf("meta: Options.ValueLogFileSize %d: must be in [1 MiB, 2 GiB)", o.ValueLogFileSize)
	}
	if o.NumMemtables < 1 || o.NumMemtables > 16 {
		return fmt.Errorf("meta: Options.NumMemtables %d: must be in [1, 16]", o.NumMemtables)
	}
	return nil
}

// badgerOptions maps o onto badger's options for dir.
func (o Options) badgerOptions(dir string) badger.Options {
	log := o.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return badger.DefaultOptions(dir).
		// SyncWrites: every commit is fsynced before Update returns. The
		// activity log depends on it: PersistAL is called before a write to
		// a cold extent is issued, and if the record were still in the page
		// cache when power fails, the extent would be missing from the hot
		// set after the crash, and the write that was (maybe partly) done
		// there would never be resynced. The same holds for generation
		// identifiers and bitmap chunks, which are written just before the
		// state change they record.
		WithSyncWrites(true).
		WithNumVersionsToKeep(1). // no history: only the latest value is read
		WithMemTableSize(o.MemTableSize).
		WithNumMemtables(o.NumMemtables).
		WithValueLogFileSize(o.ValueLogFileSize).
		WithValueThreshold(valueThreshold).
		WithBaseTableSize(2 << 20).
		WithBaseLevelSize(8 << 20).
		WithNumLevelZeroTables(4).
		WithNumLevelZeroTablesStall(8).
		WithNumCompactors(2).  // badger's minimum above zero
		WithNumGoroutines(1).  // only used by Stream, which we do not run
		WithBlockCacheSize(0). // tables are mmapped; nothing to cache
		WithIndexCacheSize(0). // likewise
		WithCompression(options.None).
		WithMetricsEnabled(false).  // no expvar globals
		WithDetectConflicts(false). // one writer; the Store serialises
		WithLogger(slogAdapter{log})
}

// Store is an open metadata database. It is safe for concurrent use; writes
// are serialised and each is durable when its method returns.
type Store struct {
	dir string
	log *slog.Logger

	mu sync.RWMutex
	db *badger.DB // INVARIANT: nil once closed.
	// writeFault, when set, is asked before every write transaction;
	// an error fails the write with nothing written (SetWriteFault).
	writeFault func() error // guarded by mu
}

// SetWriteFault injects a fault: while fn is set, every write asks it
// first, and an error it returns fails that write with nothing written,
// as a metadata device that has gone read-only or bad would. Nil removes
// it. For tests and fault-injection runs; reads are not affected.
func (s *Store) SetWriteFault(fn func() error) {
	s.mu.Lock()
	s.writeFault = fn
	s.mu.Unlock()
}

// manifest is the file badger writes first when it creates a database; its
// absence means the directory was never a metadata store.
const manifest = "MANIFEST"

// Open opens the existing metadata in dir. It returns ErrNoMetadata if dir
// does not exist, holds no badger database, or holds one without an
// identity record (a Create that never finished), and ErrCorrupt if the
// identity record does not decode. Badger holds an exclusive lock on dir
// until Close: a second Open (in this or another process) fails.
func Open(dir string, opts Options) (*Store, error) {
	if err := opts.Validate(); err != nil {
		return nil, err
	}
	if _, err := os.Stat(filepath.Join(dir, manifest)); err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return nil, fmt.Errorf("meta: open %s: %w", dir, ErrNoMetadata)
		}
		return nil, fmt.Errorf("meta: open %s: %w", dir, err)
	}
	s, err := openDB(dir, opts)
	if err != nil {
		return nil, err
	}
	if _, err := s.Identity(); err != nil {
		s.Close()
		return nil, err
	}
	return s, nil
}

func openDB(dir string, opts Options) (*Store, error) {
	db, err := badger.Open(opts.badgerOptions(dir))
	if err != nil {
		return nil, fmt.Errorf("meta: open %s: %w", dir, err)
	}
	log := opts.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &Store{dir: dir, log: log, db: db}, nil
}

// openForCreate makes dir if needed and opens the database in it for
// Create or CreateWitness. A directory that is not empty and holds no
// badger database is refused: it is probably not a metadata directory.
func openForCreate(dir string, opts Options) (*Store, error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("meta: create %s: %w", dir, err)
	}
	if _, err := os.Stat(filepath.Join(dir, manifest)); errors.Is(err, os.ErrNotExist) {
		ents, err := os.ReadDir(dir)
		if err != nil {
			return nil, fmt.Errorf("meta: create %s: %w", dir, err)
		}
		if len(ents) > 0 {
			return nil, fmt.Errorf("meta: create %s: directory is not empty and holds no metadata; refusing to write into it", dir)
		}
	}
	s, err := openDB(dir, opts)
	if err != nil {
		return nil, err
	}
	return s, nil
}

// Create makes new metadata for the volume id in dir (creating dir if
// needed) and returns it open. Role starts Secondary, the generation
// identifiers and flags zero, the peer's disk state empty (unknown), the
// epoch zero; no bitmap chunk is set and the activity log is empty. A zero
// id.Created is set to the current time.
//
// If dir already holds metadata with an identity, Create returns ErrExists
// unless force is true, in which case every record in it is dropped first.
// A directory that is not empty and holds no badger database is refused
// even with force: it is probably not the metadata directory at all.
func Create(dir string, id Identity, force bool, opts Options) (*Store, error) {
	if id.Created.IsZero() {
		id.Created = time.Now()
	}
	if err := id.Validate(); err != nil {
		return nil, err
	}
	if err := opts.Validate(); err != nil {
		return nil, err
	}
	s, err := openForCreate(dir, opts)
	if err != nil {
		return nil, err
	}
	fail := func(err error) (*Store, error) {
		s.Close()
		return nil, err
	}
	old, err := s.Identity()
	switch {
	case err == nil && !force:
		return fail(fmt.Errorf("meta: create %s: %w (volume %s, resource %q); use --force to overwrite it",
			dir, ErrExists, old.UUID, old.Resource))
	case err == nil || errors.Is(err, ErrCorrupt):
		if !force {
			return fail(fmt.Errorf("meta: create %s: %w (unreadable: %v); use --force to overwrite it", dir, ErrExists, err))
		}
		s.log.Warn("overwriting existing metadata", "dir", dir, "old", old.UUID, "new", id.UUID)
		if err := s.db.DropAll(); err != nil {
			return fail(fmt.Errorf("meta: create %s: drop old metadata: %w", dir, err))
		}
	case !errors.Is(err, ErrNoMetadata):
		return fail(err)
	}
	// Everything but the identity first, in one transaction; the identity
	// last, so that a crash in between leaves ErrNoMetadata, not a store
	// with an identity and missing state.
	if err := s.SetState(State{Role: Secondary}); err != nil {
		return fail(err)
	}
	if err := s.put(keyIdentity, kindIdentity, identityVersion, encodeJSON(id)); err != nil {
		return fail(err)
	}
	s.log.Info("created metadata", "dir", dir, "uuid", id.UUID, "resource", id.Resource, "node", id.Node)
	return s, nil
}

// Dir returns the directory the store was opened on.
func (s *Store) Dir() string { return s.dir }

// Close closes the database and releases its lock. Later calls return
// ErrClosed, and so does every other method.
func (s *Store) Close() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.db == nil {
		return ErrClosed
	}
	err := s.db.Close()
	s.db = nil
	if err != nil {
		return fmt.Errorf("meta: close %s: %w", s.dir, err)
	}
	return nil
}

// MaxBatchBytes is the largest total of chunk bytes that one
// PutBitmapChunks call can be sure to carry (badger's per-transaction limit
// less per-entry overhead for chunks of MaxBitmapChunkSize).
func (s *Store) MaxBatchBytes() int64 {
	s.mu.RLock()
	defer s.mu.RUnlock()
	if s.db == nil {
		return 0
	}
	perChunk := int64(MaxBitmapChunkSize + headerSize + bitmapKeyLen + entryOverhead)
	n := (s.db.MaxBatchSize() - 1) / perChunk
	if c := s.db.MaxBatchCount() - 1; n > c {
		n = c
	}
	return n * MaxBitmapChunkSize
}

// entryOverhead is what badger adds to each entry when it sizes a
// transaction (meta bytes and the key's version).
const entryOverhead = 12

// update runs fn in a read-write transaction and commits it; the commit is
// synced before update returns.
func (s *Store) update(fn func(txn *badger.Txn) error) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.db == nil {
		return ErrClosed
	}
	if s.writeFault != nil {
		if err := s.writeFault(); err != nil {
			return fmt.Errorf("meta: %s: injected write fault: %w", s.dir, err)
		}
	}
	return s.db.Update(fn)
}

// view runs fn in a read-only transaction.
func (s *Store) view(fn func(txn *badger.Txn) error) error {
	s.mu.RLock()
	defer s.mu.RUnlock()
	if s.db == nil {
		return ErrClosed
	}
	return s.db.View(fn)
}

// put writes one record.
func (s *Store) put(key []byte, kind recordKind, version uint16, payload []byte) error {
	err := s.update(func(txn *badger.Txn) error {
		return txn.Set(key, seal(kind, version, payload))
	})
	if err != nil {
		return fmt.Errorf("meta: %s: write %s: %w", s.dir, key, err)
	}
	return nil
}

// get reads one record and returns its verified payload; a missing key is
// ErrNoMetadata.
func (s *Store) get(key []byte, kind recordKind, version uint16) ([]byte, error) {
	var payload []byte
	err := s.view(func(txn *badger.Txn) error {
		var err error
		payload, err = getIn(txn, key, kind, version)
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("meta: %s: read %s: %w", s.dir, key, err)
	}
	return payload, nil
}

func getIn(txn *badger.Txn, key []byte, kind recordKind, version uint16) ([]byte, error) {
	item, err := txn.Get(key)
	if errors.Is(err, badger.ErrKeyNotFound) {
		return nil, ErrNoMetadata
	}
	if err != nil {
		return nil, err
	}
	v, err := item.ValueCopy(nil)
	if err != nil {
		return nil, err
	}
	return unseal(v, kind, version)
}

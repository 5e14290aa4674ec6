package meta

import (
	"bytes"
	"errors"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/dgraph-io/badger/v4"

	"github.com/hablock/hablock/blockdev"
)

func testIdentity() Identity {
	return Identity{
		UUID:      blockdev.NewUUID(),
		Size:      1 << 30,
		BlockSize: 4096,
		Created:   time.Date(2025, 1, 2, 3, 4, 5, 0, time.UTC),
		Resource:  "r0",
		Node:      "alpha",
	}
}

func create(t *testing.T, dir string) (*Store, Identity) {
	t.Helper()
	id := testIdentity()
	s, err := Create(dir, id, false, DefaultOptions())
	if err != nil {
		t.Fatal(err)
	}
	return s, id
}

func reopen(t *testing.T, s *Store) *Store {
	t.Helper()
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	s2, err := Open(s.Dir(), DefaultOptions())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s2.Close() })
	return s2
}

func TestOptionsDefaultsValidate(t *testing.T) {
	if err := DefaultOptions().Validate(); err != nil {
		t.Fatal(err)
	}
	for name, mod := range map[string]func(*Options){
		"MemTableSize":     func(o *Options) { o.MemTableSize = 1 << 20 },
		"ValueLogFileSize": func(o *Options) { o.ValueLogFileSize = 2 << 30 },
		"NumMemtables":     func(o *Options) { o.NumMemtables = 0 },
	} {
		o := DefaultOptions()
		mod(&o)
		err := o.Validate()
		if err == nil || !strings.Contains(err.Error(), name) {
			t.Errorf("bad %s: err %v, want one naming the field", name, err)
		}
	}
}

func TestSyncWritesAlwaysOn(t *testing.T) {
	if !DefaultOptions().badgerOptions(t.TempDir()).SyncWrites {
		t.Fatal("badger options have SyncWrites off")
	}
	s, _ := create(t, t.TempDir())
	defer s.Close()
	o := s.db.Opts()
	if !o.SyncWrites || o.NumVersionsToKeep != 1 || o.MemTableSize != 8<<20 || o.ValueLogFileSize != 16<<20 {
		t.Fatalf("open database has SyncWrites=%v NumVersionsToKeep=%d MemTableSize=%d ValueLogFileSize=%d",
			o.SyncWrites, o.NumVersionsToKeep, o.MemTableSize, o.ValueLogFileSize)
	}
}

func TestCreateOpenRoundTrip(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "meta") // Create makes it
	s, id := create(t, dir)
	got, err := s.Identity()
	if err != nil {
		t.Fatal(err)
	}
	if got != id {
		t.Fatalf("identity %+v, want %+v", got, id)
	}
	st, err := s.State()
	if err != nil {
		t.Fatal(err)
	}
	if want := (State{Role: Secondary}); st != want {
		t.Fatalf("initial state %+v, want %+v", st, want)
	}
	if al, err := s.LoadAL(); err != nil || len(al) != 0 {
		t.Fatalf("initial AL %v, %v", al, err)
	}

	want := State{
		Role: Primary,
		Gen: Generations{
			Current: 0xdeadbeefcafef00d, Bitmap: 1, History: [2]uint64{2, 1<<64 - 1},
			Flags: FlagCrashedPrimary | FlagPeerOutdated,
		},
		PeerDisk: "Outdated",
		Epoch:    42,
	}
	if err := s.SetState(want); err != nil {
		t.Fatal(err)
	}
	s = reopen(t, s)
	if got, err := s.Identity(); err != nil || got != id {
		t.Fatalf("identity after reopen %+v, %v", got, err)
	}
	if got, err := s.State(); err != nil || got != want {
		t.Fatalf("state after reopen %+v, %v; want %+v", got, err, want)
	}

	// Single-field setters.
	want.Role = Secondary
	want.Gen.Flags = FlagConsistent | FlagWasUpToDate
	want.PeerDisk = "UpToDate"
	want.Epoch = 43
	for _, err := range []error{
		s.SetRole(want.Role), s.SetGenerations(want.Gen), s.SetPeerDisk(want.PeerDisk), s.SetEpoch(want.Epoch),
	} {
		if err != nil {
			t.Fatal(err)
		}
	}
	s = reopen(t, s)
	if got, err := s.State(); err != nil || got != want {
		t.Fatalf("state after setters and reopen %+v, %v; want %+v", got, err, want)
	}
}

func TestInvalidValuesRefused(t *testing.T) {
	s, _ := create(t, t.TempDir())
	defer s.Close()
	if err := s.SetRole("Leader"); err == nil {
		t.Error("SetRole(Leader) accepted")
	}
	if err := s.SetGenerations(Generations{Flags: 1 << 10}); err == nil {
		t.Error("unknown generation flag accepted")
	}
	if err := s.SetPeerDisk("Up\nToDate"); err == nil {
		t.Error("peer disk state with a newline accepted")
	}
	if err := s.SetState(State{}); err == nil {
		t.Error("state with empty role accepted")
	}
	bad := testIdentity()
	bad.Size = 4097
	if _, err := Create(t.TempDir(), bad, false, DefaultOptions()); err == nil {
		t.Error("identity with size not a multiple of the block size accepted")
	}
}

func TestOpenWithoutMetadata(t *testing.T) {
	missing, empty := filepath.Join(t.TempDir(), "nope"), t.TempDir()
	for _, dir := range []string{missing, empty} {
		if _, err := Open(dir, DefaultOptions()); !errors.Is(err, ErrNoMetadata) {
			t.Errorf("Open(%s): %v, want ErrNoMetadata", dir, err)
		}
	}
	if entries, _ := os.ReadDir(empty); len(entries) != 0 {
		t.Fatal("Open created files in an empty directory")
	}
	if _, err := os.Stat(missing); !errors.Is(err, os.ErrNotExist) {
		t.Fatal("Open created a missing directory")
	}
	// A Create that died before writing the identity: badger files, no
	// identity. Open says ErrNoMetadata; Create needs no force.
	half := t.TempDir()
	s, err := openDB(half, DefaultOptions())
	if err != nil {
		t.Fatal(err)
	}
	if err := s.SetEpoch(3); err != nil {
		t.Fatal(err)
	}
	s.Close()
	if _, err := Open(half, DefaultOptions()); !errors.Is(err, ErrNoMetadata) {
		t.Fatalf("Open of a half-created store: %v, want ErrNoMetadata", err)
	}
	s, err = Create(half, testIdentity(), false, DefaultOptions())
	if err != nil {
		t.Fatalf("Create over a half-created store: %v", err)
	}
	s.Close()
}

func TestCreateRefusesToOverwrite(t *testing.T) {
	dir := t.TempDir()
	s, id := create(t, dir)
	if err := s.SetEpoch(7); err != nil {
		t.Fatal(err)
	}
	if err := s.PutBitmapChunks(map[uint64][]byte{3: {0xff}}); err != nil {
		t.Fatal(err)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}

	_, err := Create(dir, testIdentity(), false, DefaultOptions())
	if !errors.Is(err, ErrExists) || !strings.Contains(err.Error(), dir) || !strings.Contains(err.Error(), "--force") {
		t.Fatalf("Create over existing metadata: %v; want ErrExists naming %s and --force", err, dir)
	}
	// Refused: the old metadata is untouched.
	s, err = Open(dir, DefaultOptions())
	if err != nil {
		t.Fatal(err)
	}
	if got, _ := s.Identity(); got != id {
		t.Fatalf("identity changed by a refused Create: %+v", got)
	}
	s.Close()

	id2 := testIdentity()
	s, err = Create(dir, id2, true, DefaultOptions())
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if got, _ := s.Identity(); got != id2 {
		t.Fatalf("identity after forced Create %+v, want %+v", got, id2)
	}
	if st, _ := s.State(); st.Epoch != 0 {
		t.Fatalf("forced Create kept epoch %d", st.Epoch)
	}
	n := 0
	if err := s.LoadBitmapChunks(func(uint64, []byte) error { n++; return nil }); err != nil || n != 0 {
		t.Fatalf("forced Create kept %d bitmap chunks (%v)", n, err)
	}
}

func TestCreateRefusesForeignDirectory(t *testing.T) {
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "volume.img"), []byte("data"), 0o600); err != nil {
		t.Fatal(err)
	}
	for _, force := range []bool{false, true} {
		if _, err := Create(dir, testIdentity(), force, DefaultOptions()); err == nil || !strings.Contains(err.Error(), dir) {
			t.Fatalf("Create(force=%v) in a non-empty, non-metadata directory: %v", force, err)
		}
	}
}

func TestBitmapChunksRoundTrip(t *testing.T) {
	s, _ := create(t, t.TempDir())
	full := bytes.Repeat([]byte{0xa5}, MaxBitmapChunkSize)
	chunks := map[uint64][]byte{
		0:         {1, 2, 3},
		1 << 40:   full,
		256:       {0},
		1<<64 - 1: {0x80},
	}
	if err := s.PutBitmapChunks(chunks); err != nil {
		t.Fatal(err)
	}
	// Delete one, replace another.
	if err := s.PutBitmapChunks(map[uint64][]byte{256: nil, 0: {9}}); err != nil {
		t.Fatal(err)
	}
	want := map[uint64][]byte{0: {9}, 1 << 40: full, 1<<64 - 1: {0x80}}
	s = reopen(t, s)
	var order []uint64
	got := map[uint64][]byte{}
	err := s.LoadBitmapChunks(func(idx uint64, b []byte) error {
		order = append(order, idx)
		got[idx] = b
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(order, []uint64{0, 1 << 40, 1<<64 - 1}) {
		t.Fatalf("chunk order %v", order)
	}
	for idx, b := range want {
		if !bytes.Equal(got[idx], b) {
			t.Fatalf("chunk %d: %d bytes, want %d", idx, len(got[idx]), len(b))
		}
	}

	stop := errors.New("stop")
	calls := 0
	if err := s.LoadBitmapChunks(func(uint64, []byte) error { calls++; return stop }); err != stop || calls != 1 {
		t.Fatalf("callback error: got %v after %d calls", err, calls)
	}
}

func TestBitmapChunkBounds(t *testing.T) {
	s, _ := create(t, t.TempDir())
	defer s.Close()
	err := s.PutBitmapChunks(map[uint64][]byte{1: {1}, 2: make([]byte, MaxBitmapChunkSize+1)})
	if !errors.Is(err, ErrTooLarge) {
		t.Fatalf("oversized chunk: %v, want ErrTooLarge", err)
	}
	// A batch of MaxBatchBytes fits in one transaction; one far larger
	// fails whole.
	max := s.MaxBatchBytes()
	if max < 16*MaxBitmapChunkSize {
		t.Fatalf("MaxBatchBytes %d is smaller than expected for 8 MiB memtables", max)
	}
	batch := map[uint64][]byte{}
	for i := range uint64(max / MaxBitmapChunkSize) {
		batch[i] = bytes.Repeat([]byte{byte(i)}, MaxBitmapChunkSize)
	}
	if err := s.PutBitmapChunks(batch); err != nil {
		t.Fatalf("batch of MaxBatchBytes: %v", err)
	}
	huge := map[uint64][]byte{}
	for i := range uint64(2 * max / MaxBitmapChunkSize) {
		huge[1000+i] = make([]byte, MaxBitmapChunkSize)
	}
	if err := s.PutBitmapChunks(huge); !errors.Is(err, ErrTooLarge) {
		t.Fatalf("batch of 2×MaxBatchBytes: %v, want ErrTooLarge", err)
	}
	n := 0
	s.LoadBitmapChunks(func(idx uint64, _ []byte) error {
		if idx >= 1000 {
			t.Errorf("chunk %d of the failed batch was written", idx)
		}
		n++
		return nil
	})
	if n != len(batch) {
		t.Fatalf("%d chunks stored, want %d", n, len(batch))
	}
}

func TestActivityLogPersistence(t *testing.T) {
	s, _ := create(t, t.TempDir())
	a, err := NewActivityLog(DefaultALConfig())
	if err != nil {
		t.Fatal(err)
	}
	off := int64(10 << 30) // extent 2560
	need, err := a.Begin(off, 8192)
	if err != nil || !need {
		t.Fatalf("Begin: need=%v err=%v", need, err)
	}
	hot, seq := a.Snapshot()
	if err := s.PersistAL(hot); err != nil {
		t.Fatal(err)
	}
	a.Persisted(seq)
	// The write would be issued here. Reopen as after a crash: the hot set
	// is on disk.
	s = reopen(t, s)
	got, err := s.LoadAL()
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(got, []uint64{2560}) {
		t.Fatalf("loaded AL %v, want [2560]", got)
	}
	b, _ := NewActivityLog(DefaultALConfig())
	b.Restore(got)
	if need, _ := b.Begin(off, 4096); need {
		t.Fatal("restored extent needs a persist")
	}
	if err := s.PersistAL(make([]uint64, MaxALExtents+1)); !errors.Is(err, ErrTooLarge) {
		t.Fatalf("oversized AL: %v, want ErrTooLarge", err)
	}
	full := make([]uint64, MaxALExtents)
	for i := range full {
		full[i] = uint64(i) * 3
	}
	if err := s.PersistAL(full); err != nil {
		t.Fatal(err)
	}
	if got, err := s.LoadAL(); err != nil || !slices.Equal(got, full) {
		t.Fatalf("full AL round trip: %d extents, %v", len(got), err)
	}
}

func TestCorruptRecordDetected(t *testing.T) {
	s, _ := create(t, t.TempDir())
	defer s.Close()
	flip := func(key []byte) {
		t.Helper()
		err := s.db.Update(func(txn *badger.Txn) error {
			item, err := txn.Get(key)
			if err != nil {
				return err
			}
			v, _ := item.ValueCopy(nil)
			v[len(v)-1] ^= 1
			return txn.Set(key, v)
		})
		if err != nil {
			t.Fatal(err)
		}
	}
	flip(keyEpoch)
	if _, err := s.State(); !errors.Is(err, ErrCorrupt) {
		t.Fatalf("State with a flipped bit: %v, want ErrCorrupt", err)
	}
	if err := s.PutBitmapChunks(map[uint64][]byte{5: {1, 2}}); err != nil {
		t.Fatal(err)
	}
	flip(bitmapKey(5))
	if err := s.LoadBitmapChunks(func(uint64, []byte) error { return nil }); !errors.Is(err, ErrCorrupt) {
		t.Fatalf("bitmap with a flipped bit: %v, want ErrCorrupt", err)
	}
	// A newer schema version is refused, not misread.
	if err := s.db.Update(func(txn *badger.Txn) error {
		return txn.Set(keyRole, seal(kindRole, roleVersion+1, encodeJSON(stringRecord{"Primary"})))
	}); err != nil {
		t.Fatal(err)
	}
	if err := s.SetEpoch(1); err != nil {
		t.Fatal(err)
	}
	if _, err := s.State(); !errors.Is(err, ErrCorrupt) || !strings.Contains(err.Error(), "schema version") {
		t.Fatalf("unknown schema version: %v", err)
	}
	// A corrupt identity makes Create refuse without force.
	flip(keyIdentity)
	dir := s.Dir()
	s.Close()
	if _, err := Open(dir, DefaultOptions()); !errors.Is(err, ErrCorrupt) {
		t.Fatalf("Open with a corrupt identity: %v, want ErrCorrupt", err)
	}
	if _, err := Create(dir, testIdentity(), false, DefaultOptions()); !errors.Is(err, ErrExists) {
		t.Fatalf("Create over a corrupt identity without force: %v, want ErrExists", err)
	}
}

func TestClosedStore(t *testing.T) {
	s, _ := create(t, t.TempDir())
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	if err := s.Close(); !errors.Is(err, ErrClosed) {
		t.Fatalf("second Close: %v", err)
	}
	if err := s.SetEpoch(1); !errors.Is(err, ErrClosed) {
		t.Fatalf("SetEpoch after Close: %v", err)
	}
	if _, err := s.LoadAL(); !errors.Is(err, ErrClosed) {
		t.Fatalf("LoadAL after Close: %v", err)
	}
}

func TestOpenTwiceFails(t *testing.T) {
	s, _ := create(t, t.TempDir())
	defer s.Close()
	if s2, err := Open(s.Dir(), DefaultOptions()); err == nil {
		s2.Close()
		t.Fatal("second Open of a locked store succeeded")
	}
}

func TestBadgerLogsReachSlog(t *testing.T) {
	var buf bytes.Buffer
	opts := DefaultOptions()
	opts.Logger = slog.New(slog.NewTextHandler(&buf, &slog.HandlerOptions{Level: slog.LevelDebug}))
	s, err := Create(t.TempDir(), testIdentity(), false, opts)
	if err != nil {
		t.Fatal(err)
	}
	s.Close()
	if !strings.Contains(buf.String(), "component=badger") {
		t.Fatalf("no badger line in the log:\n%s", buf.String())
	}
	if strings.Contains(buf.String(), "level=INFO component=badger") {
		t.Fatalf("badger info lines not demoted to debug:\n%s", buf.String())
	}
}

// TestCrashWithoutClose kills a child process right after its writes
// return, without Close, and checks that a reopen finds them: the records
// were in badger's synced write-ahead log, and replaying it recovers them.
// (A process kill does not drop the page cache, so this checks recovery
// without Close, not the fsync itself; TestSyncWritesAlwaysOn covers that.)
func TestCrashWithoutClose(t *testing.T) {
	if dir := os.Getenv("META_CRASH_CHILD_DIR"); dir != "" {
		s, err := Create(dir, testIdentity(), false, DefaultOptions())
		if err != nil {
			os.Exit(3)
		}
		if s.SetState(State{Role: Primary, Epoch: 9, Gen: Generations{Current: 77}}) != nil ||
			s.PutBitmapChunks(map[uint64][]byte{4: {0xf0}}) != nil ||
			s.PersistAL([]uint64{11, 12}) != nil {
			os.Exit(4)
		}
		syscall.Kill(os.Getpid(), syscall.SIGKILL)
		select {}
	}
	dir := t.TempDir()
	cmd := exec.Command(os.Args[0], "-test.run=^TestCrashWithoutClose$")
	cmd.Env = append(os.Environ(), "META_CRASH_CHILD_DIR="+dir)
	err := cmd.Run()
	var ee *exec.ExitError
	if !errors.As(err, &ee) || ee.Sys().(syscall.WaitStatus).Signal() != syscall.SIGKILL {
		t.Fatalf("child did not die by SIGKILL: %v", err)
	}
	s, err := Open(dir, DefaultOptions())
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if st, err := s.State(); err != nil || st.Role != Primary || st.Epoch != 9 || st.Gen.Current != 77 {
		t.Fatalf("state after crash %+v, %v", st, err)
	}
	if al, err := s.LoadAL(); err != nil || !slices.Equal(al, []uint64{11, 12}) {
		t.Fatalf("AL after crash %v, %v", al, err)
	}
	var got []byte
	s.LoadBitmapChunks(func(idx uint64, b []byte) error {
		if idx == 4 {
			got = b
		}
		return nil
	})
	if !bytes.Equal(got, []byte{0xf0}) {
		t.Fatalf("bitmap chunk 4 after crash: %x", got)
	}
}

func TestRunningRecord(t *testing.T) {
	dir := t.TempDir()
	st, err := Create(dir, Identity{UUID: blockdev.NewUUID(), Size: 1 << 20, BlockSize: 512, Resource: "r0", Node: "n1"}, false, DefaultOptions())
	if err != nil {
		t.Fatal(err)
	}
	if id, running, err := st.Running(); err != nil || running || id != "" {
		t.Fatalf("fresh store: %q %v %v", id, running, err)
	}
	if err := st.SetRunning("boot-1"); err != nil {
		t.Fatal(err)
	}
	st.Close()
	st, err = Open(dir, DefaultOptions())
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	if id, running, err := st.Running(); err != nil || !running || id != "boot-1" {
		t.Fatalf("after reopen: %q %v %v", id, running, err)
	}
	if err := st.ClearRunning(); err != nil {
		t.Fatal(err)
	}
	if _, running, err := st.Running(); err != nil || running {
		t.Fatalf("after ClearRunning: %v %v", running, err)
	}
}

package meta

import (
	"bytes"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"hash/crc32"
	"strings"
	"time"

	"github.com/dgraph-io/badger/v4"

	"github.com/hablock/hablock/blockdev"
)

// recordKind tags every stored value, so a value read under the wrong key
// (a bug) is caught like corruption.
type recordKind uint8

const (
	kindIdentity recordKind = iota + 1
	kindRole
	kindGenerations
	kindPeerDisk
	kindEpoch
	kindBitmapChunk
	kindActivityLog
	kindRunning
)

// Schema versions, one per record kind. A change to a record's encoding
// bumps its version; decoding accepts only the versions it knows (for now,
// exactly the current one) and returns ErrCorrupt for any other.
const (
	identityVersion    = 1
	roleVersion        = 1
	generationsVersion = 1
	peerDiskVersion    = 1
	epochVersion       = 1
	bitmapVersion      = 1
	alVersion          = 1
	runningVersion     = 1
)

// Keys. Bitmap chunks are bitmapPrefix + 8-byte big-endian index, so they
// iterate in index order.
var (
	keyIdentity    = []byte("identity")
	keyRole        = []byte("role")
	keyGenerations = []byte("generations")
	keyPeerDisk    = []byte("peer-disk")
	keyEpoch       = []byte("epoch")
	keyAL          = []byte("activity-log")
	keyRunning     = []byte("running")
	bitmapPrefix   = []byte("bitmap/")
)

const bitmapKeyLen = 7 + 8 // len(bitmapPrefix) + index

// headerSize: kind (1), reserved zero (1), schema version (2, little
// endian), CRC-32C of the payload (4, little endian).
const headerSize = 8

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

// seal prefixes payload with the header.
func seal(kind recordKind, version uint16, payload []byte) []byte {
	b := make([]byte, headerSize+len(payload))
	b[0] = byte(kind)
	binary.LittleEndian.PutUint16(b[2:4], version)
	binary.LittleEndian.PutUint32(b[4:8], crc32.Checksum(payload, castagnoli))
	copy(b[headerSize:], payload)
	return b
}

// unseal checks the header of v and returns its payload (aliasing v).
func unseal(v []byte, kind recordKind, version uint16) ([]byte, error) {
	if len(v) < headerSize {
		return nil, fmt.Errorf("%w: value of %d bytes is shorter than its header", ErrCorrupt, len(v))
	}
	if k := recordKind(v[0]); k != kind || v[1] != 0 {
		return nil, fmt.Errorf("%w: record kind %d (reserved %d), want %d", ErrCorrupt, k, v[1], kind)
	}
	if ver := binary.LittleEndian.Uint16(v[2:4]); ver != version {
		return nil, fmt.Errorf("%w: schema version %d of record kind %d, this build reads %d", ErrCorrupt, ver, kind, version)
	}
	payload := v[headerSize:]
	if sum, want := crc32.Checksum(payload, castagnoli), binary.LittleEndian.Uint32(v[4:8]); sum != want {
		return nil, fmt.Errorf("%w: checksum %08x, stored %08x", ErrCorrupt, sum, want)
	}
	return payload, nil
}

func encodeJSON(v any) []byte {
	b, err := json.Marshal(v)
	if err != nil {
		// Only our own record types reach here, and they always marshal.
		panic(fmt.Sprintf("meta: marshal %T: %v", v, err))
	}
	return b
}

// decodeJSON is strict: an unknown field under a known schema version is
// corruption, not something to skip.
func decodeJSON(b []byte, v any) error {
	d := json.NewDecoder(bytes.NewReader(b))
	d.DisallowUnknownFields()
	if err := d.Decode(v); err != nil {
		return fmt.Errorf("%w: decode %T: %v", ErrCorrupt, v, err)
	}
	if d.More() {
		return fmt.Errorf("%w: decode %T: trailing data", ErrCorrupt, v)
	}
	return nil
}

// Identity is what the volume is. It is written once by Create and never
// changes; every replica of a volume has the same UUID and Resource.
type Identity struct {
	// UUID names the volume; shared by every replica. Never zero.
	UUID blockdev.UUID `json:"uuid"`
	// Size is the volume's size in bytes, a positive multiple of BlockSize.
	Size int64 `json:"size"`
	// BlockSize is the logical block size in bytes: a power of two in
	// [512, 65536].
	BlockSize int `json:"block_size"`
	// Created is when the metadata was created (wall clock, for people).
	Created time.Time `json:"created"`
	// Resource is the replicated resource's name, as in the config.
	Resource string `json:"resource"`
	// Node is the name of the node this metadata belongs to; a store copied
	// to another node is caught by comparing it with the local name.
	Node string `json:"node"`
}

// maxNameLen bounds Resource and Node.
const maxNameLen = 255

// Validate checks id and names the offending field. It never mutates id.
func (id Identity) Validate() error {
	switch {
	case id.UUID.IsZero():
		return fmt.Errorf("meta: Identity.UUID is zero")
	case id.BlockSize < 512 || id.BlockSize > 65536 || id.BlockSize&(id.BlockSize-1) != 0:
		return fmt.Errorf("meta: Identity.BlockSize %d: must be a power of two in [512, 65536]", id.BlockSize)
	case id.Size <= 0 || id.Size%int64(id.BlockSize) != 0:
		return fmt.Errorf("meta: Identity.Size %d: must be a positive multiple of BlockSize %d", id.Size, id.BlockSize)
	case id.Created.IsZero():
		return fmt.Errorf("meta: Identity.Created is zero")
	}
	if err := checkName("Identity.Resource", id.Resource); err != nil {
		return err
	}
	return checkName("Identity.Node", id.Node)
}

func checkName(field, s string) error {
	if s == "" || len(s) > maxNameLen || strings.ContainsFunc(s, func(r rune) bool { return r < ' ' || r == 0x7f }) {
		return fmt.Errorf("meta: %s %q: must be 1 to %d printable bytes", field, s, maxNameLen)
	}
	return nil
}

// Role is this node's role for the volume, as last recorded. It is kept
// here as a small string enum; the replication package has its own Role
// and converts (a later change reconciles the two).
type Role string

const (
	Secondary Role = "Secondary"
	Primary   Role = "Primary"
)

// Valid reports whether r is one of the defined roles.
func (r Role) Valid() bool { return r == Primary || r == Secondary }

func (r Role) String() string { return string(r) }

// GenFlags are the flags kept with the generation identifiers (DRBD's
// MDF_* flags).
type GenFlags uint32

const (
	// FlagCrashedPrimary: the node was Primary and did not demote
	// cleanly; the activity log's hot extents must be resynced.
	FlagCrashedPrimary GenFlags = 1 << iota
	// FlagConsistent: the local data is consistent (possibly old).
	FlagConsistent
	// FlagWasUpToDate: the local data was UpToDate when last known.
	FlagWasUpToDate
	// FlagPeerOutdated: the peer has been marked Outdated.
	FlagPeerOutdated
	// FlagLostCache: the machine restarted while the node ran, so writes
	// not yet flushed may be missing from the local disk; the whole
	// volume must be resynced (see replication.State.LostCache). Kept
	// until the node has connected to its peer.
	FlagLostCache

	allGenFlags = FlagCrashedPrimary | FlagConsistent | FlagWasUpToDate | FlagPeerOutdated | FlagLostCache
)

// Has reports whether every flag in f2 is set in f.
func (f GenFlags) Has(f2 GenFlags) bool { return f&f2 == f2 }

func (f GenFlags) String() string {
	if f == 0 {
		return "none"
	}
	var parts []string
	for _, x := range []struct {
		f    GenFlags
		name string
	}{
		{FlagCrashedPrimary, "crashed-primary"},
		{FlagConsistent, "consistent"},
		{FlagWasUpToDate, "was-up-to-date"},
		{FlagPeerOutdated, "peer-outdated"},
		{FlagLostCache, "lost-cache"},
	} {
		if f.Has(x.f) {
			parts = append(parts, x.name)
		}
	}
	if rest := f &^ allGenFlags; rest != 0 {
		parts = append(parts, fmt.Sprintf("%#x", uint32(rest)))
	}
	return strings.Join(parts, "|")
}

// Generations are the data generation identifiers (DRBD's UUID set):
// Current names the data now on disk, Bitmap the generation the
// out-of-sync bitmap is relative to (zero when there is no bitmap), History
// the two previous ones, newest first.
type Generations struct {
	Current uint64    `json:"current"`
	Bitmap  uint64    `json:"bitmap"`
	History [2]uint64 `json:"history"`
	Flags   GenFlags  `json:"flags"`
}

// State is the mutable part of the metadata. SetState writes all of it in
// one transaction; the single-field setters write one record each.
type State struct {
	Role Role
	Gen  Generations
	// PeerDisk is the peer's disk state as last known ("" when never
	// known), in the replication package's spelling; stored verbatim.
	PeerDisk string
	// Epoch is the failover epoch: it only grows; zero until the first
	// failover.
	Epoch uint64
}

// maxPeerDiskLen bounds State.PeerDisk.
const maxPeerDiskLen = 64

func checkRole(r Role) error {
	if !r.Valid() {
		return fmt.Errorf("meta: role %q: want %q or %q", r, Primary, Secondary)
	}
	return nil
}

func checkGen(g Generations) error {
	if rest := g.Flags &^ allGenFlags; rest != 0 {
		return fmt.Errorf("meta: Generations.Flags %#x: unknown bits", uint32(rest))
	}
	return nil
}

func checkPeerDisk(s string) error {
	if len(s) > maxPeerDiskLen || strings.ContainsFunc(s, func(r rune) bool { return r < ' ' || r == 0x7f }) {
		return fmt.Errorf("meta: peer disk state %q: must be at most %d printable bytes", s, maxPeerDiskLen)
	}
	return nil
}

// Validate checks st and names the offending field. It never mutates st.
func (st State) Validate() error {
	if err := checkRole(st.Role); err != nil {
		return err
	}
	if err := checkGen(st.Gen); err != nil {
		return err
	}
	return checkPeerDisk(st.PeerDisk)
}

type epochRecord struct {
	Epoch uint64 `json:"epoch"`
}

type stringRecord struct {
	Value string `json:"value"`
}

// Identity returns the volume's identity.
func (s *Store) Identity() (Identity, error) {
	var id Identity
	b, err := s.get(keyIdentity, kindIdentity, identityVersion)
	if err != nil {
		return id, err
	}
	if err := decodeJSON(b, &id); err != nil {
		return Identity{}, fmt.Errorf("meta: %s: identity: %w", s.dir, err)
	}
	if err := id.Validate(); err != nil {
		return Identity{}, fmt.Errorf("meta: %s: identity: %w: %v", s.dir, ErrCorrupt, err)
	}
	return id, nil
}

// State returns the role, generations, peer disk state and epoch, read in
// one transaction.
func (s *Store) State() (State, error) {
	var st State
	err := s.view(func(txn *badger.Txn) error {
		var role, peer stringRecord
		var ep epochRecord
		for _, r := range []struct {
			key     []byte
			kind    recordKind
			version uint16
			v       any
		}{
			{keyRole, kindRole, roleVersion, &role},
			{keyGenerations, kindGenerations, generationsVersion, &st.Gen},
			{keyPeerDisk, kindPeerDisk, peerDiskVersion, &peer},
			{keyEpoch, kindEpoch, epochVersion, &ep},
		} {
			b, err := getIn(txn, r.key, r.kind, r.version)
			if err != nil {
				return fmt.Errorf("%s: %w", r.key, err)
			}
			if err := decodeJSON(b, r.v); err != nil {
				return fmt.Errorf("%s: %w", r.key, err)
			}
		}
		st.Role, st.PeerDisk, st.Epoch = Role(role.Value), peer.Value, ep.Epoch
		if err := st.Validate(); err != nil {
			return fmt.Errorf("%w: %v", ErrCorrupt, err)
		}
		return nil
	})
	if err != nil {
		return State{}, fmt.Errorf("meta: %s: read state: %w", s.dir, err)
	}
	return st, nil
}

// SetState durably writes all of st in one transaction.
func (s *Store) SetState(st State) error {
	if err := st.Validate(); err != nil {
		return err
	}
	err := s.update(func(txn *badger.Txn) error {
		for _, e := range []*badger.Entry{
			badger.NewEntry(keyRole, seal(kindRole, roleVersion, encodeJSON(stringRecord{string(st.Role)}))),
			badger.NewEntry(keyGenerations, seal(kindGenerations, generationsVersion, encodeJSON(st.Gen))),
			badger.NewEntry(keyPeerDisk, seal(kindPeerDisk, peerDiskVersion, encodeJSON(stringRecord{st.PeerDisk}))),
			badger.NewEntry(keyEpoch, seal(kindEpoch, epochVersion, encodeJSON(epochRecord{st.Epoch}))),
		} {
			if err := txn.SetEntry(e); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("meta: %s: write state: %w", s.dir, err)
	}
	return nil
}

// SetRole durably records r.
func (s *Store) SetRole(r Role) error {
	if err := checkRole(r); err != nil {
		return err
	}
	return s.put(keyRole, kindRole, roleVersion, encodeJSON(stringRecord{string(r)}))
}

// SetGenerations durably records g.
func (s *Store) SetGenerations(g Generations) error {
	if err := checkGen(g); err != nil {
		return err
	}
	return s.put(keyGenerations, kindGenerations, generationsVersion, encodeJSON(g))
}

// SetPeerDisk durably records the peer's last known disk state.
func (s *Store) SetPeerDisk(state string) error {
	if err := checkPeerDisk(state); err != nil {
		return err
	}
	return s.put(keyPeerDisk, kindPeerDisk, peerDiskVersion, encodeJSON(stringRecord{state}))
}

// SetEpoch durably records the failover epoch. The store does not check
// that it grows: the caller's failover logic owns that rule.
func (s *Store) SetEpoch(e uint64) error {
	return s.put(keyEpoch, kindEpoch, epochVersion, encodeJSON(epochRecord{e}))
}

// runningRecord marks a node that is running: written when the agent
// starts, deleted after a clean stop (once the backing store has been
// flushed). Found at the next start, it means the node did not stop
// cleanly; a BootID that differs from the machine's current one means
// the machine itself restarted meanwhile (power loss, kernel crash), so
// its page cache, and any write not yet flushed, is gone.
type runningRecord struct {
	BootID string `json:"boot_id"`
}

// Running returns the boot ID recorded by SetRunning, and false if the
// node stopped cleanly (ClearRunning) or never ran.
func (s *Store) Running() (bootID string, running bool, err error) {
	b, err := s.get(keyRunning, kindRunning, runningVersion)
	if errors.Is(err, ErrNoMetadata) {
		return "", false, nil
	}
	if err != nil {
		return "", false, err
	}
	var r runningRecord
	if err := decodeJSON(b, &r); err != nil {
		return "", false, fmt.Errorf("meta: %s: running: %w", s.dir, err)
	}
	return r.BootID, true, nil
}

// SetRunning durably records that the node runs on the machine boot
// bootID (Linux: /proc/sys/kernel/random/boot_id).
func (s *Store) SetRunning(bootID string) error {
	return s.put(keyRunning, kindRunning, runningVersion, encodeJSON(runningRecord{BootID: bootID}))
}

// ClearRunning durably records a clean stop.
func (s *Store) ClearRunning() error {
	err := s.update(func(txn *badger.Txn) error { return txn.Delete(keyRunning) })
	if err != nil {
		return fmt.Errorf("meta: %s: clear running: %w", s.dir, err)
	}
	return nil
}

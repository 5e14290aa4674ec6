package meta

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"time"
)

// Quorum is a voter's durable failover state (package failover keeps the
// rules; this file only stores it): the last quorum record it knows to be
// agreed by a majority, and the highest epoch it has voted in. A voter
// writes it, synced, before it answers a vote, so that after a crash it
// never votes twice in one epoch nor forgets a record it agreed to.
type Quorum struct {
	// Epoch, Primary and UpToDate are the record: in Epoch, Primary alone
	// may acknowledge writes, and UpToDate (sorted node names) hold every
	// acknowledged write. Zero values: no record yet.
	Epoch    uint64   `json:"epoch"`
	Primary  string   `json:"primary"`
	UpToDate []string `json:"up_to_date"`
	// Voted is the highest epoch this voter has granted a proposal in
	// (its own included); at least Epoch once a record is stored.
	Voted uint64 `json:"voted"`
}

// MaxQuorumNodes bounds Quorum.UpToDate (a resource has two disk nodes;
// the bound only keeps a damaged record from allocating).
const MaxQuorumNodes = 8

// Validate checks q and names the offending field. It never mutates q.
func (q Quorum) Validate() error {
	if q.Primary != "" {
		if err := checkName("Quorum.Primary", q.Primary); err != nil {
			return err
		}
	}
	if len(q.UpToDate) > MaxQuorumNodes {
		return fmt.Errorf("meta: Quorum.UpToDate: %d names, at most %d", len(q.UpToDate), MaxQuorumNodes)
	}
	for i, n := range q.UpToDate {
		if err := checkName("Quorum.UpToDate", n); err != nil {
			return err
		}
		if i > 0 && q.UpToDate[i-1] >= n {
			return fmt.Errorf("meta: Quorum.UpToDate %q: not sorted or repeated", q.UpToDate)
		}
	}
	if q.Primary != "" && !slices.Contains(q.UpToDate, q.Primary) {
		return fmt.Errorf("meta: Quorum: primary %q is not in UpToDate %q", q.Primary, q.UpToDate)
	}
	if q.Voted < q.Epoch {
		return fmt.Errorf("meta: Quorum.Voted %d is below Epoch %d", q.Voted, q.Epoch)
	}
	return nil
}

const (
	kindQuorum          recordKind = 32
	kindWitnessIdentity recordKind = 33
	quorumVersion                  = 1
	witnessVersion                 = 1
)

var (
	keyQuorum          = []byte("quorum")
	keyWitnessIdentity = []byte("witness-identity")
)

// Quorum returns the stored failover quorum state; the zero Quorum when
// none was ever written.
func (s *Store) Quorum() (Quorum, error) {
	b, err := s.get(keyQuorum, kindQuorum, quorumVersion)
	if errors.Is(err, ErrNoMetadata) {
		return Quorum{}, nil
	}
	if err != nil {
		return Quorum{}, err
	}
	var q Quorum
	if err := decodeJSON(b, &q); err != nil {
		return Quorum{}, fmt.Errorf("meta: %s: quorum: %w", s.dir, err)
	}
	if err := q.Validate(); err != nil {
		return Quorum{}, fmt.Errorf("meta: %s: quorum: %w: %v", s.dir, ErrCorrupt, err)
	}
	return q, nil
}

// SetQuorum durably writes q (synced before it returns). The store does
// not check that epochs grow: package failover owns that rule.
func (s *Store) SetQuorum(q Quorum) error {
	if err := q.Validate(); err != nil {
		return err
	}
	if q.UpToDate == nil {
		q.UpToDate = []string{}
	}
	return s.put(keyQuorum, kindQuorum, quorumVersion, encodeJSON(q))
}

// WitnessIdentity is what a witness's metadata directory belongs to. A
// witness has no volume, so it has no Identity (no UUID, size or block
// size); Open refuses its directory and OpenWitness opens it.
type WitnessIdentity struct {
	Resource string    `json:"resource"`
	Node     string    `json:"node"`
	Created  time.Time `json:"created"`
}

// Validate checks id and names the offending field. It never mutates id.
func (id WitnessIdentity) Validate() error {
	if id.Created.IsZero() {
		return fmt.Errorf("meta: WitnessIdentity.Created is zero")
	}
	if err := checkName("WitnessIdentity.Resource", id.Resource); err != nil {
		return err
	}
	return checkName("WitnessIdentity.Node", id.Node)
}

// CreateWitness makes new witness metadata in dir (creating dir if
// needed) and returns it open, with an empty quorum record. Existing
// metadata (a witness's or a disk node's) is ErrExists unless force,
// which drops it first; a non-empty directory holding no badger database
// is refused even with force.
func CreateWitness(dir string, id WitnessIdentity, force bool, opts Options) (*Store, error) {
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
	_, werr := s.WitnessIdentity()
	_, derr := s.Identity()
	if werr == nil || derr == nil || errors.Is(werr, ErrCorrupt) || errors.Is(derr, ErrCorrupt) {
		if !force {
			return fail(fmt.Errorf("meta: create %s: %w; use --force to overwrite it", dir, ErrExists))
		}
		s.log.Warn("overwriting existing metadata", "dir", dir)
		if err := s.db.DropAll(); err != nil {
			return fail(fmt.Errorf("meta: create %s: drop old metadata: %w", dir, err))
		}
	}
	if err := s.SetQuorum(Quorum{}); err != nil {
		return fail(err)
	}
	// The identity last: a crash before it leaves ErrNoMetadata.
	if err := s.put(keyWitnessIdentity, kindWitnessIdentity, witnessVersion, encodeJSON(id)); err != nil {
		return fail(err)
	}
	s.log.Info("created witness metadata", "dir", dir, "resource", id.Resource, "node", id.Node)
	return s, nil
}

// OpenWitness opens the witness metadata in dir: ErrNoMetadata if there
// is none (or the directory belongs to a disk node), ErrCorrupt if its
// identity does not decode. Like Open, it locks dir until Close.
func OpenWitness(dir string, opts Options) (*Store, error) {
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
	if _, err := s.WitnessIdentity(); err != nil {
		s.Close()
		return nil, err
	}
	return s, nil
}

// WitnessIdentity returns the witness identity (ErrNoMetadata on a disk
// node's store).
func (s *Store) WitnessIdentity() (WitnessIdentity, error) {
	var id WitnessIdentity
	b, err := s.get(keyWitnessIdentity, kindWitnessIdentity, witnessVersion)
	if err != nil {
		return id, err
	}
	if err := decodeJSON(b, &id); err != nil {
		return WitnessIdentity{}, fmt.Errorf("meta: %s: witness identity: %w", s.dir, err)
	}
	if err := id.Validate(); err != nil {
		return WitnessIdentity{}, fmt.Errorf("meta: %s: witness identity: %w: %v", s.dir, ErrCorrupt, err)
	}
	return id, nil
}

package failover

import (
	"errors"
	"fmt"
	"slices"
	"strings"

	"github.com/hablock/hablock/blockdev/meta"
)

// Record is the quorum record: in Epoch, Primary alone may acknowledge
// writes, and UpToDate (sorted node names) are the disk nodes that hold
// every acknowledged write. The zero Record (epoch 0, no Primary) is a
// resource that never had one.
type Record struct {
	Epoch    uint64   `json:"epoch"`
	Primary  string   `json:"primary"`
	UpToDate []string `json:"up_to_date"`
}

// MaxNodes bounds Record.UpToDate on the wire and on disk.
const MaxNodes = 4

// MaxName bounds a node name, as the resource file does.
const MaxName = 64

// Validate checks r's shape: names bounded, UpToDate sorted and unique,
// the Primary (if any) in UpToDate, and no Primary at epoch 0.
func (r Record) Validate() error {
	if len(r.UpToDate) > MaxNodes {
		return fmt.Errorf("failover: record lists %d up-to-date nodes, at most %d", len(r.UpToDate), MaxNodes)
	}
	for i, n := range r.UpToDate {
		if err := checkName(n); err != nil {
			return err
		}
		if i > 0 && r.UpToDate[i-1] >= n {
			return fmt.Errorf("failover: record up-to-date set %q is not sorted and unique", r.UpToDate)
		}
	}
	switch {
	case r.Primary == "" && r.Epoch != 0:
		return fmt.Errorf("failover: record of epoch %d names no primary", r.Epoch)
	case r.Primary != "" && r.Epoch == 0:
		return fmt.Errorf("failover: record of epoch 0 names primary %q", r.Primary)
	case r.Primary != "" && !slices.Contains(r.UpToDate, r.Primary):
		return fmt.Errorf("failover: record primary %q is not in its up-to-date set %q", r.Primary, r.UpToDate)
	}
	return nil
}

func checkName(n string) error {
	if n == "" || len(n) > MaxName || strings.ContainsFunc(n, func(r rune) bool { return r <= ' ' || r == 0x7f }) {
		return fmt.Errorf("failover: node name %q: want 1 to %d printable bytes without spaces", n, MaxName)
	}
	return nil
}

// Has reports whether node is in r.UpToDate.
func (r Record) Has(node string) bool { return slices.Contains(r.UpToDate, node) }

// Equal reports whether r and o are the same record.
func (r Record) Equal(o Record) bool {
	return r.Epoch == o.Epoch && r.Primary == o.Primary && slices.Equal(r.UpToDate, o.UpToDate)
}

// Clone returns a copy of r that shares no memory with it.
func (r Record) Clone() Record {
	r.UpToDate = slices.Clone(r.UpToDate)
	return r
}

func (r Record) String() string {
	return fmt.Sprintf("{epoch %d primary %q up-to-date %s}", r.Epoch, r.Primary, strings.Join(r.UpToDate, ","))
}

// nodeSet returns names sorted and unique.
func nodeSet(names ...string) []string {
	s := slices.Clone(names)
	slices.Sort(s)
	return slices.Compact(s)
}

// Durable is what a voter persists before it answers a vote: the last
// record it knows a majority agreed to, and the highest epoch it granted
// a proposal in (its own included), so that it grants at most one
// proposal per epoch even across a crash.
type Durable struct {
	Record Record `json:"record"`
	// Voted >= Record.Epoch.
	Voted uint64 `json:"voted"`
}

// Validate checks d.
func (d Durable) Validate() error {
	if err := d.Record.Validate(); err != nil {
		return err
	}
	if d.Voted < d.Record.Epoch {
		return fmt.Errorf("failover: voted epoch %d is below the record's %d", d.Voted, d.Record.Epoch)
	}
	return nil
}

// RecordStore keeps a voter's Durable state. Save must be durable (on
// stable storage) when it returns: a vote is answered only after it.
type RecordStore interface {
	Load() (Durable, error)
	Save(Durable) error
}

// MetaStore keeps the Durable state in a node's metadata store (a disk
// node's or a witness's; see meta.Store.SetQuorum), synced on every Save.
func MetaStore(s *meta.Store) RecordStore { return metaStore{s} }

type metaStore struct{ s *meta.Store }

func (m metaStore) Load() (Durable, error) {
	q, err := m.s.Quorum()
	if err != nil {
		return Durable{}, err
	}
	d := Durable{Record: Record{Epoch: q.Epoch, Primary: q.Primary, UpToDate: q.UpToDate}, Voted: q.Voted}
	if len(d.Record.UpToDate) == 0 {
		d.Record.UpToDate = nil
	}
	if err := d.Validate(); err != nil {
		return Durable{}, fmt.Errorf("%w: %v", meta.ErrCorrupt, err)
	}
	return d, nil
}

func (m metaStore) Save(d Durable) error {
	if err := d.Validate(); err != nil {
		return err
	}
	return m.s.SetQuorum(meta.Quorum{Epoch: d.Record.Epoch, Primary: d.Record.Primary,
		UpToDate: slices.Clone(d.Record.UpToDate), Voted: d.Voted})
}

// ErrStore wraps a RecordStore failure: nothing was granted or acted on.
var ErrStore = errors.New("failover: record store")

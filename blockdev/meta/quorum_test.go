package meta

import (
	"errors"
	"path/filepath"
	"reflect"
	"testing"
)

func TestQuorumRoundTrip(t *testing.T) {
	dir := t.TempDir()
	s, _ := create(t, dir)
	if q, err := s.Quorum(); err != nil || !reflect.DeepEqual(q, Quorum{}) {
		t.Fatalf("fresh store: %+v, %v", q, err)
	}
	want := Quorum{Epoch: 3, Primary: "n1", UpToDate: []string{"n1", "n2"}, Voted: 4}
	if err := s.SetQuorum(want); err != nil {
		t.Fatal(err)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	s, err := Open(dir, DefaultOptions())
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if q, err := s.Quorum(); err != nil || !reflect.DeepEqual(q, want) {
		t.Errorf("after reopen: %+v, %v; want %+v", q, err, want)
	}
	for _, bad := range []Quorum{
		{Epoch: 1, Primary: "n1", UpToDate: []string{"n2"}, Voted: 1},       // primary not up to date
		{Epoch: 1, Primary: "n1", UpToDate: []string{"n2", "n1"}, Voted: 1}, // unsorted
		{Epoch: 1, Primary: "n1", UpToDate: []string{"n1", "n1"}, Voted: 1}, // repeated
		{Epoch: 2, Primary: "n1", UpToDate: []string{"n1"}, Voted: 1},       // voted below epoch
		{Epoch: 1, Primary: "n\x01", UpToDate: []string{"n\x01"}, Voted: 1}, // control character
	} {
		if err := s.SetQuorum(bad); err == nil {
			t.Errorf("SetQuorum(%+v) accepted", bad)
		}
	}
}

func TestWitnessStore(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "w")
	s, err := CreateWitness(dir, WitnessIdentity{Resource: "r0", Node: "w"}, false, DefaultOptions())
	if err != nil {
		t.Fatal(err)
	}
	if err := s.SetQuorum(Quorum{Epoch: 1, Primary: "n1", UpToDate: []string{"n1"}, Voted: 1}); err != nil {
		t.Fatal(err)
	}
	s.Close()
	if _, err := Open(dir, DefaultOptions()); !errors.Is(err, ErrNoMetadata) {
		t.Errorf("Open on a witness directory: %v, want ErrNoMetadata", err)
	}
	if _, err := CreateWitness(dir, WitnessIdentity{Resource: "r0", Node: "w"}, false, DefaultOptions()); !errors.Is(err, ErrExists) {
		t.Errorf("second CreateWitness: %v, want ErrExists", err)
	}
	s, err = OpenWitness(dir, DefaultOptions())
	if err != nil {
		t.Fatal(err)
	}
	id, err := s.WitnessIdentity()
	if err != nil || id.Node != "w" || id.Resource != "r0" || id.Created.IsZero() {
		t.Errorf("identity %+v, %v", id, err)
	}
	if q, err := s.Quorum(); err != nil || q.Epoch != 1 || q.Primary != "n1" {
		t.Errorf("quorum %+v, %v", q, err)
	}
	s.Close()
	s, err = CreateWitness(dir, WitnessIdentity{Resource: "r0", Node: "w"}, true, DefaultOptions())
	if err != nil {
		t.Fatal(err)
	}
	if q, err := s.Quorum(); err != nil || q.Epoch != 0 {
		t.Errorf("after forced re-create: %+v, %v", q, err)
	}
	s.Close()
	// A disk node's directory is not a witness's.
	disk := t.TempDir()
	ds, _ := create(t, disk)
	ds.Close()
	if _, err := OpenWitness(disk, DefaultOptions()); !errors.Is(err, ErrNoMetadata) {
		t.Errorf("OpenWitness on a disk node's directory: %v, want ErrNoMetadata", err)
	}
	if _, err := CreateWitness(disk, WitnessIdentity{Resource: "r0", Node: "w"}, false, DefaultOptions()); !errors.Is(err, ErrExists) {
		t.Errorf("CreateWitness over a disk node's metadata: %v, want ErrExists", err)
	}
}

package replication

import (
	"errors"
	"strings"
	"testing"
)

// tryBecome calls become and converts an invariants panic into the error
// it carries, so one test covers both build modes.
func tryBecome(f func() error) (err error, panicked bool) {
	defer func() {
		if r := recover(); r != nil {
			e, ok := r.(error)
			if !ok {
				panic(r)
			}
			err, panicked = e, true
		}
	}()
	return f(), false
}

// walkTable checks every (from, to) pair against the table: allowed pairs
// change the state; every other pair is refused and leaves it unchanged.
func walkTable[S interface {
	~uint8
	String() string
	CanBecome(S) bool
}](t *testing.T, n S, table map[S][]S, become func(*S, S) error) {
	t.Helper()
	for from := S(0); from < n; from++ {
		if _, ok := table[from]; !ok {
			t.Errorf("state %v has no row in the table", from)
		}
		for to := S(0); to < n; to++ {
			want := from == to
			for _, s := range table[from] {
				want = want || s == to
			}
			if got := from.CanBecome(to); got != want {
				t.Errorf("%v.CanBecome(%v) = %v, want %v", from, to, got, want)
			}
			cur := from
			err, panicked := tryBecome(func() error { return become(&cur, to) })
			if want {
				if err != nil || cur != to {
					t.Errorf("%v -> %v: err=%v state=%v", from, to, err, cur)
				}
				continue
			}
			if !errors.Is(err, ErrInvalidTransition) {
				t.Errorf("%v -> %v: err=%v, want ErrInvalidTransition", from, to, err)
			}
			if panicked != invariantsEnabled {
				t.Errorf("%v -> %v: panicked=%v with invariants=%v", from, to, panicked, invariantsEnabled)
			}
			if want := "[" + from.String() + " -> " + to.String() + "]"; err != nil && !strings.Contains(err.Error(), want) {
				t.Errorf("error %q does not name %s", err, want)
			}
			if cur != from {
				t.Errorf("refused %v -> %v changed the state to %v", from, to, cur)
			}
		}
	}
	// Table targets must be valid states.
	for from, tos := range table {
		for _, to := range tos {
			if to >= n || from >= n {
				t.Errorf("table entry %v -> %v out of range", from, to)
			}
		}
	}
}

func TestConnStateTable(t *testing.T) {
	walkTable(t, numConnStates, connTable, (*ConnState).Become)
}

func TestDiskStateTable(t *testing.T) {
	walkTable(t, numDiskStates, diskTable, (*DiskState).Become)
}

func TestReplStateTable(t *testing.T) {
	walkTable(t, numReplStates, replTable, (*ReplState).Become)
}

// Spot checks of rules that matter, independent of the table's layout.
func TestStateRules(t *testing.T) {
	cases := []struct {
		name string
		ok   bool
	}{
		{"StandAlone->Connected", StandAlone.CanBecome(Connected)},
		{"Connecting->Connected", Connecting.CanBecome(Connected)},
		{"Inconsistent->UpToDate", Inconsistent.CanBecome(UpToDate)},
		{"Diskless->UpToDate", Diskless.CanBecome(UpToDate)},
		{"Failed->UpToDate", Failed.CanBecome(UpToDate)},
		{"Off->SyncSource", ReplOff.CanBecome(SyncSource)},
		{"WFBitMapT->SyncTarget", WFBitMapT.CanBecome(SyncTarget)},
		{"SyncTarget->SyncSource", SyncTarget.CanBecome(SyncSource)},
		{"SyncSource->Established", SyncSource.CanBecome(Established)},
	}
	want := map[string]bool{"Connecting->Connected": true, "Inconsistent->UpToDate": true,
		"WFBitMapT->SyncTarget": true, "SyncSource->Established": true}
	for _, c := range cases {
		if c.ok != want[c.name] {
			t.Errorf("%s allowed=%v, want %v", c.name, c.ok, want[c.name])
		}
	}
	// Every replication state can drop back to Off when the link fails.
	for s := ReplState(0); s < numReplStates; s++ {
		if !s.CanBecome(ReplOff) {
			t.Errorf("%v cannot fall back to Off", s)
		}
	}
	// DiskState order is part of the API (Decide compares with >).
	if !(Inconsistent < Outdated && Outdated < Consistent && Consistent < UpToDate && Failed < Inconsistent) {
		t.Error("DiskState order broken")
	}
}

func TestStateStrings(t *testing.T) {
	seen := map[string]bool{}
	check := func(s string) {
		if s == "" || strings.Contains(s, "(") || seen[s] && s != "Off" {
			t.Errorf("bad or duplicate name %q", s)
		}
		seen[s] = true
	}
	for s := ConnState(0); s < numConnStates; s++ {
		check(s.String())
	}
	for s := DiskState(0); s < numDiskStates; s++ {
		check(s.String())
	}
	for s := ReplState(0); s < numReplStates; s++ {
		check(s.String())
	}
	for s := Role(0); s < numRoles; s++ {
		check(s.String())
	}
	if got := ConnState(200).String(); got != "ConnState(200)" {
		t.Errorf("unknown ConnState prints %q", got)
	}
	if ReplState(99).Valid() || !UpToDate.Valid() || Role(3).Valid() {
		t.Error("Valid wrong")
	}
}

package replication

import (
	"errors"
	"fmt"
)

// ErrInvalidTransition is returned (wrapped, naming both states) when a
// state change is not in its transition table. Builds with the invariants
// or race tag panic instead, so tests catch the bug where it happens.
var ErrInvalidTransition = errors.New("replication: invalid state transition")

// Role is a node's role for one volume. Only a Primary accepts writes.
type Role uint8

const (
	RoleUnknown Role = iota // peer role while disconnected
	RoleSecondary
	RolePrimary
	numRoles
)

var roleNames = [...]string{"Unknown", "Secondary", "Primary"}

func (r Role) String() string { return enumName(roleNames[:], uint8(r), "Role") }

// Valid reports whether r is a defined Role.
func (r Role) Valid() bool { return r < numRoles }

// ConnState is the state of the connection to the peer (DRBD's "cstate").
type ConnState uint8

const (
	// StandAlone: no network configured or connection given up (e.g. after
	// an unresolved split brain); only an operator leaves it.
	StandAlone ConnState = iota
	// Disconnecting: tearing down an existing connection.
	Disconnecting
	// Unconnected: configured, about to (re)try connecting.
	Unconnected
	// Connecting: dialing/accepting and running the handshake.
	Connecting
	// Connected: handshake complete; ReplState says what flows.
	Connected
	numConnStates
)

var connNames = [...]string{"StandAlone", "Disconnecting", "Unconnected", "Connecting", "Connected"}

func (s ConnState) String() string { return enumName(connNames[:], uint8(s), "ConnState") }

// Valid reports whether s is a defined ConnState.
func (s ConnState) Valid() bool { return s < numConnStates }

var connTable = map[ConnState][]ConnState{
	StandAlone:    {Unconnected},
	Unconnected:   {Connecting, StandAlone},
	Connecting:    {Connected, Unconnected, Disconnecting},
	Connected:     {Disconnecting, Unconnected},
	Disconnecting: {StandAlone, Unconnected},
}

// CanBecome reports whether s -> to is in the transition table. Staying in
// the same state is always allowed (a no-op).
func (s ConnState) CanBecome(to ConnState) bool { return allowed(connTable, s, to) }

// Become moves *s to to if the table allows it; see ErrInvalidTransition.
func (s *ConnState) Become(to ConnState) error { return become(connTable, s, to) }

// DiskState is the state of a node's local data (DRBD's "dstate"). The
// order matters: states compare with < and >, Inconsistent being the first
// state whose data is partly usable and UpToDate the best.
type DiskState uint8

const (
	Diskless     DiskState = iota // no backing device attached
	Attaching                     // reading metadata
	Failed                        // I/O error; about to detach
	Inconsistent                  // partly written (resync target, fresh volume)
	Outdated                      // consistent but known to be older than the peer
	DUnknown                      // peer disk while disconnected
	Consistent                    // consistent, freshness unknown (no peer yet)
	UpToDate                      // consistent and the newest data
	numDiskStates
)

var diskNames = [...]string{"Diskless", "Attaching", "Failed", "Inconsistent", "Outdated", "DUnknown", "Consistent", "UpToDate"}

func (d DiskState) String() string { return enumName(diskNames[:], uint8(d), "DiskState") }

// Valid reports whether d is a defined DiskState.
func (d DiskState) Valid() bool { return d < numDiskStates }

var diskTable = map[DiskState][]DiskState{
	Diskless:     {Attaching, DUnknown},
	Attaching:    {Inconsistent, Outdated, Consistent, UpToDate, Failed, Diskless},
	Failed:       {Diskless, DUnknown},
	Inconsistent: {UpToDate, Outdated, Failed, Diskless, DUnknown},
	Outdated:     {Inconsistent, UpToDate, Failed, Diskless, DUnknown},
	Consistent:   {UpToDate, Outdated, Inconsistent, Failed, Diskless, DUnknown},
	UpToDate:     {Outdated, Inconsistent, Failed, Diskless, DUnknown},
	// DUnknown is only ever a peer's disk: learned on connect.
	DUnknown: {Diskless, Inconsistent, Outdated, Consistent, UpToDate, Failed},
}

// CanBecome reports whether d -> to is in the transition table.
func (d DiskState) CanBecome(to DiskState) bool { return allowed(diskTable, d, to) }

// Become moves *d to to if the table allows it.
func (d *DiskState) Become(to DiskState) error { return become(diskTable, d, to) }

// ReplState is what the connection carries (DRBD 9's "replication" state):
// plain replication, a resync in some direction, or online verify. S and T
// suffixes mean this node is the source or the target.
type ReplState uint8

const (
	ReplOff       ReplState = iota // not connected
	Established                    // connected, replicating, nothing to resync
	StartingSyncS                  // operator asked for a full sync, we are source
	StartingSyncT                  // operator asked for a full sync, we are target
	WFBitMapS                      // exchanging bitmaps, will be sync source
	WFBitMapT                      // exchanging bitmaps, will be sync target
	SyncSource                     // resyncing out-of-sync blocks to the peer
	SyncTarget                     // receiving out-of-sync blocks from the peer
	PausedSyncS                    // resync paused (dependency or operator)
	PausedSyncT
	VerifyS // online verify, we send checksums
	VerifyT // online verify, we compare
	numReplStates
)

var replNames = [...]string{"Off", "Established", "StartingSyncS", "StartingSyncT", "WFBitMapS", "WFBitMapT",
	"SyncSource", "SyncTarget", "PausedSyncS", "PausedSyncT", "VerifyS", "VerifyT"}

func (s ReplState) String() string { return enumName(replNames[:], uint8(s), "ReplState") }

// Valid reports whether s is a defined ReplState.
func (s ReplState) Valid() bool { return s < numReplStates }

// Every state may fall back to ReplOff (connection lost).
var replTable = map[ReplState][]ReplState{
	ReplOff:       {Established, WFBitMapS, WFBitMapT},
	Established:   {StartingSyncS, StartingSyncT, WFBitMapS, WFBitMapT, VerifyS, VerifyT, ReplOff},
	StartingSyncS: {WFBitMapS, ReplOff},
	StartingSyncT: {WFBitMapT, ReplOff},
	WFBitMapS:     {SyncSource, PausedSyncS, ReplOff},
	WFBitMapT:     {SyncTarget, PausedSyncT, ReplOff},
	SyncSource:    {PausedSyncS, Established, ReplOff},
	SyncTarget:    {PausedSyncT, Established, ReplOff},
	PausedSyncS:   {SyncSource, ReplOff},
	PausedSyncT:   {SyncTarget, ReplOff},
	VerifyS:       {Established, ReplOff},
	VerifyT:       {Established, ReplOff},
}

// CanBecome reports whether s -> to is in the transition table.
func (s ReplState) CanBecome(to ReplState) bool { return allowed(replTable, s, to) }

// Become moves *s to to if the table allows it.
func (s *ReplState) Become(to ReplState) error { return become(replTable, s, to) }

// IsResync reports whether s moves data from one node to the other.
func (s ReplState) IsResync() bool {
	switch s {
	case WFBitMapS, WFBitMapT, SyncSource, SyncTarget, PausedSyncS, PausedSyncT:
		return true
	}
	return false
}

func allowed[S comparable](table map[S][]S, from, to S) bool {
	if from == to {
		return true
	}
	for _, s := range table[from] {
		if s == to {
			return true
		}
	}
	return false
}

func become[S interface {
	comparable
	fmt.Stringer
}](table map[S][]S, cur *S, to S) error {
	if !allowed(table, *cur, to) {
		err := fmt.Errorf("%w [%v -> %v]", ErrInvalidTransition, *cur, to)
		if invariantsEnabled {
			panic(err)
		}
		return err
	}
	*cur = to
	return nil
}

func enumName(names []string, v uint8, kind string) string {
	if int(v) < len(names) {
		return names[v]
	}
	return fmt.Sprintf("%s(%d)", kind, v)
}

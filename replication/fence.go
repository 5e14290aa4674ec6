package replication

import (
	"fmt"

	"github.com/hablock/hablock/blockdev"
)

// Fencing and I/O suspension: the engine side of automatic failover
// (failover.Local). Two independent mechanisms hold I/O, neither
// completing nor failing it, until a decision is taken elsewhere:
//
// Fencing (Config.Fencing, DRBD's 'fencing resource-only' with
// suspended I/O). A Primary never acknowledges a write the peer might
// not have while the peer might still be promoted:
//
//   - A write (or discard) pending on the peer when the link is lost has
//     reached the local disk and its range is marked out of sync, but it
//     is not completed: it waits until SetPeerFenced(true) (then it
//     succeeds, degraded), or a new link to the peer is up and the range
//     has been resynced to it (then the peer has it: it succeeds), or
//     AbandonIO, Demote or Stop (then it fails with ErrAbandoned). A
//     Flush pending on the peer at that moment waits the same way, and
//     is redone on the new link when one comes up.
//   - A write, discard or flush that finds no usable link while the
//     peer is not fenced is held before it is issued (nothing is written
//     locally nor marked out of sync): it waits until a link is up (then
//     it goes to the peer as usual), SetPeerFenced(true) (then it runs
//     degraded, into the bitmap), or AbandonIO, Demote or Stop (then it
//     fails with ErrAbandoned). It also waits while SuspendIO is in
//     effect.
//   - Reads are not held by fencing: the local disk is fine.
//   - The first time a link drop makes a Primary hold, Hooks.OnPeerLost
//     is called.
//
// SetPeerFenced(true) says the peer is known (by a quorum record) to be
// outdated: it cannot be promoted, so writing without it is safe.
// Establishing a link with the peer, and Demote, reset it to false: after
// a reconnect the peer is a normal replica again. It may be set on a
// Secondary before Promote, so that a Primary promoted without a link
// serves alone at once.
//
// Suspension (SuspendIO, DRBD's suspend-io): every new ReadAt, WriteAt,
// Discard and Flush waits before it is issued, on a Primary as on a
// Secondary, until ResumeIO (then it runs normally, including the role
// checks: on a Secondary it then fails with ErrNotPrimary), AbandonIO or
// Demote (then it fails with ErrAbandoned). I/O already issued completes
// normally; a WriteAt or Discard that is split into pieces is one
// operation and is not held between its pieces.
//
// AbandonIO fails every held operation (suspended or fence-held) with
// ErrAbandoned at once, ends a suspension, and makes every operation
// arriving later fail with ErrAbandoned too, until ResumeIO or a
// successful Promote. Demote abandons first whenever I/O is held (held
// operations, a suspension, or fencing in effect), so it never waits for
// held I/O. Stop fails held operations with ErrAbandoned and ErrClosed.

// ErrAbandoned: the operation was held (SuspendIO or fencing) and then
// given up by AbandonIO, Demote or Stop, or arrived after AbandonIO. It
// was not acknowledged: a write may or may not have reached the local
// disk, never as a completed write. The iSCSI target sends no response
// at all, so the initiator retries it on the new Primary.
// It wraps blockdev.ErrAbandoned, which is what the SCSI layer tests.
var ErrAbandoned = fmt.Errorf("replication: I/O abandoned: %w", blockdev.ErrAbandoned)

// ioHold is a Volume's fencing and suspension state, guarded by v.mu.
type ioHold struct {
	// fenced: SetPeerFenced(true) since the last link came up or demote.
	fenced    bool
	suspended bool
	reason    string // of the suspension
	// abandoned: AbandonIO (or Demote with held I/O) since the last
	// ResumeIO or Promote.
	abandoned bool
	// waiters counts operations held now; fenceWaiters those of them
	// held by fencing (the rest wait for ResumeIO).
	waiters, fenceWaiters int
	// held is the last logged value of VolumeStatus.Held.
	held bool
	// wake is closed (and set to nil) whenever something a waiter
	// waits for may have changed; nil while nobody waits.
	wake chan struct{}
}

// wakeHoldLocked wakes every held operation to re-check its condition.
func (v *Volume) wakeHoldLocked() {
	if v.hold.wake != nil {
		close(v.hold.wake)
		v.hold.wake = nil
	}
}

// fenceInEffectLocked reports whether writes that need the peer must be
// held now: fencing on, Primary, no live link, peer not fenced.
func (v *Volume) fenceInEffectLocked() bool {
	return v.cfg.Fencing && v.role == RolePrimary && !v.hold.fenced && !v.closed &&
		(v.link == nil || v.link.isDead())
}

// heldLocked is VolumeStatus.Held.
func (v *Volume) heldLocked() bool {
	return v.hold.fenceWaiters > 0 || v.fenceInEffectLocked()
}

// noteHeldLocked logs a change of VolumeStatus.Held, once.
func (v *Volume) noteHeldLocked(why string) {
	held := v.heldLocked()
	if held == v.hold.held {
		return
	}
	v.hold.held = held
	if held {
		v.log.Warn("fencing: holding writes; the peer may lack them and is not fenced",
			"reason", why, "held_ops", v.hold.fenceWaiters)
	} else {
		v.log.Info("fencing: writes no longer held", "reason", why)
	}
}

// waitHoldLocked blocks (v.mu held on entry and return, released while
// waiting) until ready reports done, and returns its error. Meanwhile
// the caller counts as a held operation (fence: held by fencing).
func (v *Volume) waitHoldLocked(fence bool, ready func() (bool, error)) error {
	counted := false
	for {
		if done, err := ready(); done {
			if counted {
				v.hold.waiters--
				if fence {
					v.hold.fenceWaiters--
					v.noteHeldLocked("held operation released")
				}
			}
			return err
		}
		if !counted {
			counted = true
			v.hold.waiters++
			if fence {
				v.hold.fenceWaiters++
				v.noteHeldLocked("operation held")
			}
		}
		if v.hold.wake == nil {
			v.hold.wake = make(chan struct{})
		}
		wake := v.hold.wake
		v.mu.Unlock()
		<-wake
		v.mu.Lock()
	}
}

// heldErrLocked is why a held operation must give up now, or nil.
func (v *Volume) heldErrLocked() error {
	switch {
	case v.closed:
		return fmt.Errorf("replication: volume %s stopped while I/O was held: %w: %w", v.uuid, ErrAbandoned, ErrClosed)
	case v.hold.abandoned:
		return fmt.Errorf("replication: volume %s on %s: %w", v.uuid, v.name, ErrAbandoned)
	}
	return nil
}

// admitLocked is the suspension gate every ReadAt, WriteAt, Discard and
// Flush passes first (checkIO).
func (v *Volume) admitLocked() error {
	if !v.hold.suspended && !v.hold.abandoned {
		return nil
	}
	return v.waitHoldLocked(false, func() (bool, error) {
		switch {
		case v.closed:
			return true, nil // checkIO reports it
		case v.hold.abandoned:
			return true, v.heldErrLocked()
		}
		return !v.hold.suspended, nil
	})
}

// fenceHolds reports whether a write or flush that found no usable link
// must wait (waitPeerOrFence) instead of running degraded.
func (v *Volume) fenceHolds() bool {
	v.mu.Lock()
	defer v.mu.Unlock()
	return v.fenceInEffectLocked()
}

// waitPeerOrFence holds a write, discard or flush that has not been
// issued, because fencing is in effect, until it may be tried again (a
// link is up, or the peer is fenced) or must fail.
func (v *Volume) waitPeerOrFence() error {
	v.mu.Lock()
	defer v.mu.Unlock()
	return v.waitHoldLocked(true, func() (bool, error) {
		if err := v.heldErrLocked(); err != nil {
			return true, err
		}
		if v.role != RolePrimary {
			return true, fmt.Errorf("replication: volume %s on %s demoted while I/O was held: %w: %w", v.uuid, v.name, ErrAbandoned, ErrNotPrimary)
		}
		return !v.hold.suspended && !v.fenceInEffectLocked(), nil
	})
}

// waitUnreplicated holds a write of [off, off+n) that reached the local
// disk but whose link died before the peer acknowledged it (its range is
// marked out of sync), while fencing is on: it may complete once the
// peer is fenced or a new link has resynced the range to the peer.
func (v *Volume) waitUnreplicated(off, n uint64) error {
	if !v.cfg.Fencing {
		return nil
	}
	lo, hi := v.blockRange(off, n)
	v.mu.Lock()
	defer v.mu.Unlock()
	return v.waitHoldLocked(true, func() (bool, error) {
		if err := v.heldErrLocked(); err != nil {
			return true, fmt.Errorf("write offset %d length %d not on the peer: %w", off, n, err)
		}
		if v.role != RolePrimary {
			return true, fmt.Errorf("replication: write offset %d length %d not on the peer, volume demoted: %w: %w", off, n, ErrAbandoned, ErrNotPrimary)
		}
		if v.hold.fenced {
			return true, nil
		}
		if v.link != nil && !v.link.isDead() {
			d, _, dirty := v.bm.NextDirtyRange(lo, hi-lo)
			return !dirty || d >= hi, nil
		}
		return false, nil
	})
}

// waitUnreplicatedFlush holds a Flush whose link died before the peer
// acknowledged it, while fencing is on. It returns retry when a new link
// is up (the flush is redone on it), or nil once the peer is fenced.
func (v *Volume) waitUnreplicatedFlush() (retry bool, err error) {
	if !v.cfg.Fencing {
		return false, nil
	}
	v.mu.Lock()
	defer v.mu.Unlock()
	err = v.waitHoldLocked(true, func() (bool, error) {
		if err := v.heldErrLocked(); err != nil {
			return true, fmt.Errorf("flush not done on the peer: %w", err)
		}
		if v.role != RolePrimary {
			return true, fmt.Errorf("replication: flush not done on the peer, volume demoted: %w: %w", ErrAbandoned, ErrNotPrimary)
		}
		if v.hold.fenced {
			return true, nil
		}
		retry = v.link != nil && !v.link.isDead()
		return retry, nil
	})
	return retry, err
}

// primaryLink returns the current link and whether this node is still
// Primary. The write path calls it holding v.gate shared, so the role
// cannot change until the write is issued: a write that passed checkIO
// before a Demote is not issued after it (it was never acknowledged, so
// it fails with ErrAbandoned and ErrNotPrimary).
func (v *Volume) primaryLink() (*link, bool) {
	v.mu.Lock()
	defer v.mu.Unlock()
	return v.link, v.role == RolePrimary
}

// ---- hooks from the engine (v.mu held) ----

// linkUpLocked: a link to the peer was established (connect).
func (v *Volume) linkUpLocked() {
	if v.flags&FlagDiscardMyData != 0 {
		v.flags &^= FlagDiscardMyData // used once (standalone.go)
		v.log.Info("discard-my-data done: connected")
	}
	v.flags &^= FlagLostCache // the handshake has used it
	v.connects++
	if v.hold.fenced {
		v.hold.fenced = false
		v.log.Info("fencing: peer connected; no longer fenced")
	}
	v.wakeHoldLocked()
	v.noteHeldLocked("peer connected")
}

// fenceLinkLostLocked: the link to the peer was torn down. It returns
// Hooks.OnPeerLost when this makes the Primary hold (the caller runs it
// after unlocking), or nil.
func (v *Volume) fenceLinkLostLocked() func() {
	v.noteHeldLocked("peer connection lost")
	if v.fenceInEffectLocked() {
		return v.hooks.OnPeerLost
	}
	return nil
}

// fencePromotedLocked: a Promote succeeded.
func (v *Volume) fencePromotedLocked() {
	if v.hold.abandoned {
		v.hold.abandoned = false
		v.log.Info("I/O no longer abandoned", "reason", "promote")
	}
	v.wakeHoldLocked()
	v.noteHeldLocked("promote")
}

// fenceDemotedLocked: the volume became Secondary.
func (v *Volume) fenceDemotedLocked() {
	if v.hold.fenced {
		v.hold.fenced = false
		v.log.Info("fencing: peer no longer fenced", "reason", "demote")
	}
	v.wakeHoldLocked()
	v.noteHeldLocked("demote")
}

// abandonForDemote abandons held I/O before Demote waits for in-flight
// I/O, so that a Demote never waits for held operations.
func (v *Volume) abandonForDemote() {
	v.mu.Lock()
	defer v.mu.Unlock()
	if v.hold.waiters > 0 || v.hold.suspended || v.fenceInEffectLocked() {
		v.abandonLocked("demote")
	}
}

func (v *Volume) abandonLocked(why string) {
	if v.hold.suspended {
		v.hold.suspended = false
		v.log.Info("I/O suspension ended", "reason", why)
	}
	if !v.hold.abandoned {
		v.hold.abandoned = true
		v.log.Warn("abandoning held I/O; new I/O fails until ResumeIO or Promote", "reason", why, "held_ops", v.hold.waiters)
	}
	v.wakeHoldLocked()
}

// holdStatusLocked fills the fencing and suspension fields of s.
func (v *Volume) holdStatusLocked(s *VolumeStatus) {
	s.Held = v.heldLocked()
	s.Fenced = v.hold.fenced
	s.Suspended = v.hold.suspended
	s.SuspendReason = v.hold.reason
	s.Abandoned = v.hold.abandoned
	s.HeldOps = v.hold.waiters
}

// ---- API ----

// SetPeerFenced records whether the peer is known (by a quorum record)
// to be outdated, so that it cannot be promoted and writes may proceed
// without it. With Config.Fencing, SetPeerFenced(true) releases the
// writes held since the peer was lost (they complete successfully,
// their ranges already out of sync) and lets later writes run degraded.
// Establishing a link to the peer, and Demote, reset it to false. Call
// it before Promote on a node without a link to let the new Primary
// serve alone at once. Without Config.Fencing it is only recorded.
func (v *Volume) SetPeerFenced(fenced bool) {
	v.mu.Lock()
	defer v.mu.Unlock()
	if v.hold.fenced == fenced {
		return
	}
	v.hold.fenced = fenced
	if fenced {
		v.log.Warn("fencing: peer fenced; writing without it", "held_ops", v.hold.fenceWaiters)
	} else {
		v.log.Info("fencing: peer no longer fenced", "reason", "SetPeerFenced(false)")
	}
	v.wakeHoldLocked()
	v.noteHeldLocked("SetPeerFenced")
}

// SuspendIO holds every new ReadAt, WriteAt, Discard and Flush before it
// is issued, neither completing nor failing it, until ResumeIO (then it
// runs), or AbandonIO or Demote (then it fails with ErrAbandoned). I/O
// already issued completes normally. It works on a Primary and on a
// Secondary; reason is logged and shown in Status (a second call only
// updates it). It does not affect the peer's writes being applied on a
// Secondary, nor resync.
func (v *Volume) SuspendIO(reason string) {
	v.mu.Lock()
	defer v.mu.Unlock()
	v.hold.reason = reason
	if !v.hold.suspended {
		v.hold.suspended = true
		v.log.Warn("I/O suspended", "reason", reason)
	}
}

// ResumeIO ends a suspension and an abandonment: held operations run
// normally, and new ones are no longer held or failed (fencing still
// applies).
func (v *Volume) ResumeIO() {
	v.mu.Lock()
	defer v.mu.Unlock()
	if v.hold.suspended {
		v.hold.suspended = false
		v.log.Info("I/O resumed", "held_ops", v.hold.waiters-v.hold.fenceWaiters)
	}
	if v.hold.abandoned {
		v.hold.abandoned = false
		v.log.Info("I/O no longer abandoned", "reason", "resume")
	}
	v.hold.reason = ""
	v.wakeHoldLocked()
}

// AbandonIO fails every held operation (suspended or held by fencing)
// with an error wrapping ErrAbandoned at once, ends a suspension, and
// fails every operation arriving later the same way, until ResumeIO or
// a successful Promote. I/O already issued and not held is not
// affected.
func (v *Volume) AbandonIO() {
	v.mu.Lock()
	defer v.mu.Unlock()
	v.abandonLocked("AbandonIO")
}

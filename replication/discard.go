package replication

// SetDiscardMyData sets (or clears) this node's FlagDiscardMyData for the
// handshakes that follow, like State.DiscardMyData at NewVolume: DRBD's
// `connect --discard-my-data`. When a connect finds a split brain that the
// after-sb policies leave unresolved, the node carrying the flag gives up
// its changes and becomes the sync target (ResolveSplitBrain). The flag
// has no effect on a connect without a split brain. The caller clears it once a
// connection is established, so that a later split brain is not resolved
// by an operator's old decision.
func (v *Volume) SetDiscardMyData(on bool) {
	v.mu.Lock()
	defer v.mu.Unlock()
	if on {
		v.flags |= FlagDiscardMyData
	} else {
		v.flags &^= FlagDiscardMyData
	}
}

package replication

import (
	"errors"
	"fmt"
	"io"
	"net"
	"time"
)

// Split brain refusals and StandAlone.
//
// A connect-time decision that reconnecting cannot fix (split brain,
// unrelated data, another volume, an incompatible peer) leaves both
// nodes StandAlone: Run returns and the volume keeps serving as it is.
// Each side detects it from the handshakes and refuses on its own. A
// node whose Run returned no longer answers its peer; the agent then
// answers every connection the peer still makes with RefuseConn, which
// makes the peer's Run return ErrPeerStandAlone instead of redialing
// forever. Only an operator (connect, discard-my-data) starts Run again.

// ErrPeerStandAlone: the peer refused the connection because it is
// StandAlone (after a split brain or another fatal handshake result) and
// waits for an operator; the error carries the peer's reason. Run gives
// up on it: reconnecting cannot help until the operator resolves it and
// runs connect on both nodes.
var ErrPeerStandAlone = errors.New("replication: peer is standalone")

// refuseSplitBrain refuses the connection as an unresolved split brain
// (DRBD's after-sb-*pri disconnect), logging it loudly: both nodes wrote
// independently, and neither is resynced.
func (l *link) refuseSplitBrain(local, peer *Handshake, why string) error {
	l.log.Error("split brain detected; disconnecting, no resync: to recover, reconnect with "+
		"discard-my-data on the node whose changes are to be thrown away",
		"why", why, "role", local.Role.String(), "peer_role", peer.Role.String(),
		"gen", local.GI.String(), "peer_gen", peer.GI.String(),
		"dirty_blocks", local.DirtyBlocks, "peer_dirty_blocks", peer.DirtyBlocks)
	return l.refuse(DisconnectSplitBrain, fmt.Errorf("%w: %s: local %v %v, peer %q %v %v; resolve manually",
		ErrSplitBrain, why, local.Role, local.GI, peer.NodeName, peer.Role, peer.GI))
}

// SetDiscardMyData sets whether this node offers to lose its data in a
// split brain (DRBD's 'connect --discard-my-data'; State.DiscardMyData
// sets it at start): the next handshakes tell the peer, and a split
// brain that no automatic policy resolves is resolved by making this
// node the sync target of the peer (this node's changes since the split
// are overwritten; see ResolveSplitBrain). It is used once: it is cleared
// when a link to the peer is established. A Primary cannot be a sync
// target: demote it first. Run must be (re)started for it to matter
// after a split brain left the volume StandAlone.
func (v *Volume) SetDiscardMyData(discard bool) {
	v.mu.Lock()
	defer v.mu.Unlock()
	if discard == (v.flags&FlagDiscardMyData != 0) {
		return
	}
	if discard {
		v.flags |= FlagDiscardMyData
		v.log.Warn("discard-my-data set: in a split brain this node's changes are overwritten by the peer's")
	} else {
		v.flags &^= FlagDiscardMyData
		v.log.Info("discard-my-data cleared")
	}
}

// RefuseConn answers a connection from the peer, accepted while this
// volume runs no link (it is StandAlone after a fatal handshake result,
// or disconnected by an operator), with a Disconnect carrying
// DisconnectStandAlone and reason (at most MaxReason bytes are sent).
// The peer's Attach then fails and its Run returns an error wrapping
// ErrPeerStandAlone with the reason, instead of redialing every few
// seconds forever. RefuseConn first reads the peer's handshake, so that
// the refusal is not lost to a connection reset, then half-closes and
// waits (at most Config.HandshakeTimeout in all) for the peer to close.
// It always closes conn. The error says what went wrong on the way: a
// peer that sends no valid handshake is not answered (ErrProtocol or
// ErrPeerGone).
func (v *Volume) RefuseConn(conn net.Conn, reason string) error {
	defer conn.Close()
	log := v.log.With("peer", conn.RemoteAddr().String())
	conn.SetDeadline(time.Now().Add(v.cfg.HandshakeTimeout))
	f, _, err := ReadFrame(conn, MaxPayload, nil)
	if err != nil {
		err = classifyReadErr(err)
		log.Warn("refusing peer connection: no handshake", "err", err)
		return fmt.Errorf("replication: refuse %v: %w", conn.RemoteAddr(), err)
	}
	var hs Handshake
	if f.Type != MsgHandshake {
		err = fmt.Errorf("%w: got %v, want %v", ErrProtocol, f.Type, MsgHandshake)
	} else if err = hs.Unmarshal(f.Payload); err != nil {
		err = fmt.Errorf("%w: %v: %w", ErrProtocol, f.Type, err)
	}
	if err != nil {
		log.Warn("refusing peer connection: bad handshake", "err", err)
		return fmt.Errorf("replication: refuse %v: %w", conn.RemoteAddr(), err)
	}
	if len(reason) > MaxReason {
		reason = reason[:MaxReason]
	}
	b, err := AppendFrame(nil, 1, 0, &Disconnect{Code: DisconnectStandAlone, Reason: reason})
	if err != nil {
		return err
	}
	if _, err := conn.Write(b); err != nil {
		return fmt.Errorf("replication: refuse %v: %w: %w", conn.RemoteAddr(), ErrPeerGone, err)
	}
	log.Info("refused peer connection: standalone", "peer_name", hs.NodeName, "reason", reason)
	if cw, ok := conn.(interface{ CloseWrite() error }); ok {
		cw.CloseWrite()
	}
	// Until the peer closes: bounded by the deadline, and by what a peer
	// may send after its handshake before it reads our answer.
	io.Copy(io.Discard, io.LimitReader(conn, 2*MaxPayload))
	return nil
}

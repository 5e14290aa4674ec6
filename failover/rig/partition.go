package rig

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"time"
)

// PartitionKind names a partition scenario of the issue.
type PartitionKind string

const (
	// CutDisks drops traffic between n1 and n2 only (the witness and the
	// client still reach both).
	CutDisks PartitionKind = "cut-n1-n2"
	// CutPrimary drops all traffic between the Primary and every other
	// host.
	CutPrimary PartitionKind = "cut-primary"
	// CutWitness drops all traffic between the witness and both disk
	// nodes.
	CutWitness PartitionKind = "cut-witness"
	// FlapPrimary sets the Primary's eth0 down and up every second.
	FlapPrimary PartitionKind = "flap-primary"
)

// PartitionKinds lists every scenario in the order the benchmark runs them.
var PartitionKinds = []PartitionKind{CutDisks, CutPrimary, CutWitness, FlapPrimary}

// The side writers write 4 KiB blocks in the last sideRegion bytes of the
// volume, which the client's ext4 leaves alone (mkfs is told a smaller
// size): n1's writer in the first half, n2's in the second.
const (
	sideRegion = 16 << 20
	sideBlock  = 4096
)

// ack is one write a side writer had acknowledged: seq was written at its
// offset with pattern pat, and the acknowledgement came within [start, end].
type ack struct {
	node       string
	seq        int
	off        int64
	pat        byte
	start, end time.Time
}

// sideWriter runs qemu-io in a loop inside node's namespace against that
// node's own target (127.0.0.1:3260): one 4 KiB write + flush per
// invocation, each bounded by a timeout, so it records exactly the
// periods in which that node acknowledged writes.
type sideWriter struct {
	node   string
	base   int64
	mu     sync.Mutex
	acks   []ack
	cancel context.CancelFunc
	done   chan struct{}
}

func (r *Rig) startSideWriter(node string) *sideWriter {
	base := r.opts.VolumeSize - sideRegion
	if node == N2 {
		base += sideRegion / 2
	}
	ctx, cancel := context.WithCancel(context.Background())
	w := &sideWriter{node: node, base: base, cancel: cancel, done: make(chan struct{})}
	go func() {
		defer close(w.done)
		opts := fmt.Sprintf("driver=iscsi,transport=tcp,portal=127.0.0.1:3260,target=%s,lun=0,initiator-name=iqn.2026-11.io.hablock:rig-side-%s", iqn, node)
		for seq := 0; ctx.Err() == nil; {
			off := base + int64(seq%(sideRegion/2/sideBlock))*sideBlock
			pat := byte(1 + seq%255)
			start := time.Now()
			cctx, ccancel := context.WithTimeout(ctx, 3*time.Second)
			out, err := run(cctx, "nsenter", "--net="+r.tp.nsPath(node), "--", "qemu-io", "--image-opts", opts,
				"-c", fmt.Sprintf("write -P %d %d %d", pat, off, sideBlock), "-c", "flush")
			ccancel()
			end := time.Now()
			if err == nil && bytes.Contains([]byte(out), []byte("wrote ")) && !bytes.Contains([]byte(out), []byte("failed")) {
				w.mu.Lock()
				w.acks = append(w.acks, ack{node: node, seq: seq, off: off, pat: pat, start: start, end: end})
				w.mu.Unlock()
				seq++
			}
			_ = sleep(ctx, 20*time.Millisecond)
		}
	}()
	return w
}

func (w *sideWriter) stop() []ack {
	w.cancel()
	<-w.done
	w.mu.Lock()
	defer w.mu.Unlock()
	return append([]ack(nil), w.acks...)
}

// PartitionResult is what one partition scenario measured.
type PartitionResult struct {
	Kind     PartitionKind
	Takeover Takeover
	Start    time.Time
	Cut      time.Duration // how long the cut (or the flapping) lasted
	// Acks by node: writes each disk node acknowledged to its side writer.
	Acks map[string]int
	// Overlaps are pairs of writes acknowledged by n1 and by n2 whose
	// acknowledgement periods overlap: two nodes acknowledging writes in
	// the same period. Must be empty.
	Overlaps []string
	// Lost are acknowledged side writes whose data is not on the disks
	// at the end (checked by Finish through CheckSideWrites). Must be empty.
	Lost []string
	// PrimaryAfter is the single Primary once healed.
	PrimaryAfter string
	// Heal is from the end of the cut until both nodes are in sync.
	Heal        time.Duration
	ClientStall time.Duration // longest gap between the client writer's completions
	Trial                     // HTTP, writer and pgbench counts over the scenario
}

// Partition runs one partition scenario under the full client load plus a
// side writer on each disk node, holds the cut for hold (FlapPrimary:
// toggles the Primary's link every second for hold), heals it, and waits
// until exactly one Primary and both disks are UpToDate.
func (r *Rig) Partition(ctx context.Context, kind PartitionKind, hold time.Duration) (PartitionResult, error) {
	if err := r.waitInSync(ctx, 30*time.Second); err != nil {
		return PartitionResult{Kind: kind}, fmt.Errorf("before the scenario: %w", err)
	}
	res := PartitionResult{Kind: kind, Takeover: r.opts.Takeover, Start: time.Now(), Acks: map[string]int{}}
	res.Trial = Trial{Kind: string(kind), Takeover: r.opts.Takeover, From: r.primary, Start: res.Start}
	sides := []*sideWriter{r.startSideWriter(N1), r.startSideWriter(N2)}
	defer func() {
		for _, s := range sides {
			s.stop()
		}
	}()
	pg := r.startPgbench(ctx, int((hold+25*time.Second)/time.Second))
	if err := sleep(ctx, pgWarmup); err != nil {
		return res, err
	}
	p := r.primary
	cutAt := time.Now()
	r.logf("partition %s: primary %s, holding %v", kind, p, hold)
	var err error
	switch kind {
	case CutDisks:
		err = r.tp.cut(ctx, N1, N2)
	case CutPrimary:
		for _, h := range []string{other(p), W, Client} {
			if err = r.tp.cut(ctx, p, h); err != nil {
				break
			}
		}
	case CutWitness:
		for _, h := range []string{N1, N2} {
			if err = r.tp.cut(ctx, W, h); err != nil {
				break
			}
		}
	case FlapPrimary:
	default:
		return res, fmt.Errorf("unknown partition kind %q", kind)
	}
	if err != nil {
		return res, err
	}
	if kind == FlapPrimary {
		up := true
		for time.Since(cutAt) < hold {
			up = !up
			if err := r.tp.linkSet(ctx, p, up); err != nil {
				return res, err
			}
			if err := sleep(ctx, time.Second); err != nil {
				return res, err
			}
		}
		if err := r.tp.linkSet(ctx, p, true); err != nil {
			return res, err
		}
	} else if err := sleep(ctx, hold); err != nil {
		return res, err
	}
	if err := r.tp.heal(ctx); err != nil {
		return res, err
	}
	healAt := time.Now()
	res.Cut = healAt.Sub(cutAt)
	if err := r.waitInSync(ctx, 2*time.Minute); err != nil {
		return res, fmt.Errorf("partition %s: did not heal: %w", kind, err)
	}
	res.Heal = time.Since(healAt)
	res.PrimaryAfter = r.primary
	res.To = r.primary
	if r.opts.Takeover == TakeoverManual {
		// The rig moves the VIP only on failovers it runs itself; a
		// partition must not have moved the role.
		if res.PrimaryAfter != p {
			return res, fmt.Errorf("partition %s: the Primary moved from %s to %s with manual takeover", kind, p, res.PrimaryAfter)
		}
	}
	resumed, err := r.writeAfter(ctx, healAt, 60*time.Second)
	if err != nil {
		return res, fmt.Errorf("partition %s: client I/O did not resume after the heal: %w", kind, err)
	}
	res.ClientStall = r.maxGap(cutAt, resumed)
	res.Stall = res.ClientStall
	pg.finish(&res.Trial, filepath.Join(r.opts.Dir, "pgbench.log"))
	r.clientEvents(&res.Trial, res.Start, time.Now())

	var acks [2][]ack
	for i, s := range sides {
		acks[i] = s.stop()
		res.Acks[s.node] = len(acks[i])
	}
	sides = nil
	for _, a := range acks[0] {
		for _, b := range acks[1] {
			if a.start.Before(b.end) && b.start.Before(a.end) {
				res.Overlaps = append(res.Overlaps, fmt.Sprintf("n1 write %d acked in [%s, %s] and n2 write %d acked in [%s, %s]",
					a.seq, a.start.Format("15:04:05.000"), a.end.Format("15:04:05.000"), b.seq, b.start.Format("15:04:05.000"), b.end.Format("15:04:05.000")))
			}
		}
	}
	r.mu.Lock()
	r.sideAcks = append(r.sideAcks, acks[0]...)
	r.sideAcks = append(r.sideAcks, acks[1]...)
	r.mu.Unlock()
	r.logf("partition %s: cut %v, healed in %v, Primary %s; acks n1 %d n2 %d, overlaps %d; client stall %v; HTTP failures %d, pgbench failed %d aborted %d",
		kind, res.Cut.Round(time.Millisecond), res.Heal.Round(time.Millisecond), res.PrimaryAfter, res.Acks[N1], res.Acks[N2],
		len(res.Overlaps), res.ClientStall.Round(time.Millisecond), res.HTTPFailures, res.PGFailed, res.PGAborted)
	return res, nil
}

// lostSideWrites checks, on a quiesced backing file, that the last
// acknowledged write of each side-writer block is there: a block may have
// been written several times (the region wraps), and the latest
// acknowledged pattern must have survived.
func (r *Rig) lostSideWrites(img string) ([]string, error) {
	r.mu.Lock()
	acks := append([]ack(nil), r.sideAcks...)
	r.mu.Unlock()
	latest := map[int64]ack{}
	for _, a := range acks {
		if l, ok := latest[a.off]; !ok || a.end.After(l.end) {
			latest[a.off] = a
		}
	}
	f, err := os.Open(img)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	var lost []string
	buf := make([]byte, sideBlock)
	for off, a := range latest {
		if _, err := f.ReadAt(buf, off); err != nil {
			return nil, err
		}
		if !bytes.Equal(buf, bytes.Repeat([]byte{a.pat}, sideBlock)) {
			lost = append(lost, fmt.Sprintf("%s write %d at offset %d (acked %s): pattern %d not on disk (found %d)",
				a.node, a.seq, off, a.end.Format("15:04:05.000"), a.pat, buf[0]))
		}
	}
	return lost, nil
}

package scsi

import (
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"sort"
	"sync"

	"github.com/hablock/hablock/blockdev"
)

// Target is a SCSI target device: a set of logical units, each a
// direct-access block device, with their task sets, reservations and unit
// attentions. See the contract in api.go.
type Target struct {
	name string
	log  *slog.Logger

	workers *workers

	mu     sync.Mutex
	lus    map[uint64]*lu
	closed bool
}

// NewTarget returns an empty target. log may be nil.
func NewTarget(name string, log *slog.Logger) *Target {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &Target{name: name, log: log, lus: map[uint64]*lu{}, workers: newWorkers()}
}

// ErrLUNExists is returned by AddLUN for a LUN already present.
var ErrLUNExists = errors.New("scsi: LUN already exists")

// AddLUN adds logical unit lun backed by cfg.Device.
func (t *Target) AddLUN(lun uint64, cfg LUConfig) error {
	if cfg.Device == nil {
		return errors.New("scsi: LUConfig.Device is required")
	}
	if cfg.BlockSize == 0 {
		cfg.BlockSize = 512
	}
	if cfg.BlockSize != 512 && cfg.BlockSize != 4096 {
		return fmt.Errorf("scsi: block size %d: must be 512 or 4096", cfg.BlockSize)
	}
	size := cfg.Device.Size()
	if size <= 0 || size%int64(cfg.BlockSize) != 0 {
		return fmt.Errorf("scsi: device size %d is not a positive multiple of block size %d", size, cfg.BlockSize)
	}
	if lun >= 1<<14 {
		return fmt.Errorf("scsi: LUN %d out of range (0..16383)", lun)
	}
	if cfg.Vendor == "" {
		cfg.Vendor = "HABLOCK"
	}
	if cfg.Product == "" {
		cfg.Product = "hablock disk"
	}
	if cfg.Revision == "" {
		cfg.Revision = "0001"
	}
	l := &lu{
		t:       t,
		num:     lun,
		cfg:     cfg,
		dev:     cfg.Device,
		bs:      cfg.BlockSize,
		nblocks: uint64(size) / uint64(cfg.BlockSize),
		ua:      map[Nexus][]uint16{},
		seen:    map[Nexus]bool{},
		def:     modeParams{WCE: cfg.WriteCache},
	}
	l.mode = l.def
	if cfg.PRState != nil {
		l.pr = cfg.PRState.Clone()
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.closed {
		return errors.New("scsi: target closed")
	}
	if _, ok := t.lus[lun]; ok {
		return ErrLUNExists
	}
	t.lus[lun] = l
	return nil
}

// PRState returns a copy of the persistent reservation state of lun.
func (t *Target) PRState(lun uint64) (PRState, bool) {
	l := t.getLU(lun)
	if l == nil {
		return PRState{}, false
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.pr.Clone(), true
}

func (t *Target) getLU(lun uint64) *lu {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.lus[lun]
}

func (t *Target) allLUs() []*lu {
	t.mu.Lock()
	defer t.mu.Unlock()
	out := make([]*lu, 0, len(t.lus))
	for _, l := range t.lus {
		out = append(out, l)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].num < out[j].num })
	return out
}

func (t *Target) lunList() []uint64 {
	t.mu.Lock()
	defer t.mu.Unlock()
	out := make([]uint64, 0, len(t.lus))
	for n := range t.lus {
		out = append(out, n)
	}
	slices.Sort(out)
	return out
}

// lu is one logical unit.
type lu struct {
	t       *Target
	num     uint64
	cfg     LUConfig
	dev     blockdev.Device
	bs      uint32
	nblocks uint64

	mu       sync.Mutex
	tasks    []*task // pending tasks (queued or running), submit order
	ua       map[Nexus][]uint16
	seen     map[Nexus]bool // nexuses that have used this LU
	reserve6 *Nexus         // SPC-2 reservation holder
	pr       PRState
	mode     modeParams
	def      modeParams
}

type taskState uint8

const (
	stQueued taskState = iota
	stRunning
	stFinished
)

type extent struct{ start, end uint64 } // [start, end) in blocks

// task is one command in a logical unit's task set.
type task struct {
	cmd    *Command
	done   func(*Response)
	dec    *CDB
	decErr *SenseError

	barrier bool // waits for everything before, blocks everything after
	write   bool // modifies ext
	access  bool // reads or writes ext
	flush   bool // SYNCHRONIZE CACHE: waits for earlier writes, blocks nothing
	ext     []extent

	state   taskState
	aborted bool
	nwait   int
	waiters []*task
	fin     chan struct{}
}

func overlaps(a, b []extent) bool {
	for _, x := range a {
		for _, y := range b {
			if x.start < y.end && y.start < x.end {
				return true
			}
		}
	}
	return false
}

// classify fills the ordering fields of tk from its decoded CDB.
func (l *lu) classify(tk *task) {
	c := tk.dec
	if c == nil {
		return
	}
	switch c.Op {
	case opPROut, opReserve6, opRelease6, opReserve10, opRelease10,
		opModeSelect6, opModeSelect10, opStartStopUnit:
		tk.barrier = true
		return
	case opUnmap:
		tk.access, tk.write = true, true
		exts, err := parseUnmapList(tk.cmd.Data, c.ParamLen)
		if err != nil || len(exts) > MaxUnmapDescriptors {
			tk.ext = []extent{{0, ^uint64(0)}}
			return
		}
		for _, e := range exts {
			if e.end > e.start {
				tk.ext = append(tk.ext, e)
			}
		}
		return
	}
	switch c.Kind {
	case KindRead, KindWrite, KindSync:
		tk.access = true
		tk.write = c.Kind == KindWrite
		tk.flush = c.Kind == KindSync
		start, end := c.LBA, c.LBA+uint64(c.Blocks)
		if end < start {
			end = ^uint64(0)
		}
		if c.Blocks == 0 {
			switch c.Op {
			case opWriteSame10, opWriteSame16, opSyncCache10, opSyncCache16:
				end = ^uint64(0) // to the end of the medium
			}
		}
		tk.ext = []extent{{start, end}}
	}
}

// mustWait reports whether new task tk must wait for pending task p.
func mustWait(p, tk *task) bool {
	if tk.cmd.Attr == AttrHeadOfQueue {
		return false
	}
	if tk.cmd.Attr == AttrOrdered || tk.barrier {
		return true
	}
	if p.barrier || p.cmd.Attr == AttrOrdered {
		return true
	}
	if !p.access || !tk.access || !(p.write || tk.write) || p.flush {
		return false
	}
	return overlaps(p.ext, tk.ext)
}

// Submit queues cmd; done is called exactly once with the response.
func (t *Target) Submit(cmd *Command, done func(*Response)) {
	t.mu.Lock()
	closed := t.closed
	l := t.lus[cmd.LUN]
	t.mu.Unlock()
	if closed {
		done(&Response{Status: StatusBusy})
		return
	}
	if l == nil {
		done(t.noSuchLU(cmd))
		return
	}
	tk := &task{cmd: cmd, done: done, fin: make(chan struct{})}
	tk.dec, tk.decErr = DecodeCDB(cmd.CDB, l.bs)
	l.classify(tk)

	l.mu.Lock()
	l.seen[cmd.Nexus] = true
	for _, p := range l.tasks {
		if mustWait(p, tk) {
			p.waiters = append(p.waiters, tk)
			tk.nwait++
		}
	}
	l.tasks = append(l.tasks, tk)
	run := tk.nwait == 0
	if run {
		tk.state = stRunning
	}
	l.mu.Unlock()
	if run {
		l.t.workers.dispatch(job{l, tk})
	}
}

func (l *lu) run(tk *task) {
	var resp *Response
	func() {
		defer func() {
			if r := recover(); r != nil {
				l.t.log.Error("scsi: panic executing command", "cdb", fmt.Sprintf("% x", tk.cmd.CDB), "panic", r)
				resp = l.checkCondition(tk.cmd, newSense(KeyHardwareError, ascInternalTargetFailure))
			}
		}()
		resp = l.execute(tk)
	}()
	l.finish(tk, resp)
}

// finish removes tk from the task set, starts the tasks that were waiting
// only for it and delivers the response.
func (l *lu) finish(tk *task, resp *Response) {
	l.mu.Lock()
	if i := slices.Index(l.tasks, tk); i >= 0 {
		l.tasks = slices.Delete(l.tasks, i, i+1)
	}
	tk.state = stFinished
	if tk.aborted {
		resp = &Response{Aborted: true}
	}
	ready := l.release(tk)
	l.mu.Unlock()
	for _, w := range ready {
		l.t.workers.dispatch(job{l, w})
	}
	tk.done(resp)
	close(tk.fin)
}

// release decrements the waiters of tk and returns those now runnable
// (marked running). Called with l.mu held.
func (l *lu) release(tk *task) []*task {
	var ready []*task
	for _, w := range tk.waiters {
		w.nwait--
		if w.nwait == 0 && w.state == stQueued && !w.aborted {
			w.state = stRunning
			ready = append(ready, w)
		}
	}
	tk.waiters = nil
	return ready
}

// abortTasks aborts the pending tasks selected by match: queued ones are
// dropped at once, running ones are flagged and waited for (their response
// becomes Aborted). Returns the number of tasks affected and the nexuses
// that owned them.
func (l *lu) abortTasks(match func(*task) bool) (int, map[Nexus]bool) {
	l.mu.Lock()
	var dropped, running, ready []*task
	owners := map[Nexus]bool{}
	for _, tk := range l.tasks {
		if !match(tk) {
			continue
		}
		owners[tk.cmd.Nexus] = true
		tk.aborted = true
		if tk.state == stRunning {
			running = append(running, tk)
		}
	}
	for _, tk := range slices.Clone(l.tasks) {
		if !tk.aborted || tk.state != stQueued {
			continue
		}
		tk.state = stFinished
		if i := slices.Index(l.tasks, tk); i >= 0 {
			l.tasks = slices.Delete(l.tasks, i, i+1)
		}
		ready = append(ready, l.release(tk)...)
		dropped = append(dropped, tk)
	}
	l.mu.Unlock()
	for _, w := range ready {
		l.t.workers.dispatch(job{l, w})
	}
	for _, tk := range dropped {
		tk.done(&Response{Aborted: true})
		close(tk.fin)
	}
	for _, tk := range running {
		<-tk.fin
	}
	return len(dropped) + len(running), owners
}

// addUA establishes a unit attention for n (deduplicated). l.mu held.
func (l *lu) addUA(n Nexus, code uint16) {
	if slices.Contains(l.ua[n], code) {
		return
	}
	l.ua[n] = append(l.ua[n], code)
}

// addUAOthers establishes code for every known nexus but except.
func (l *lu) addUAOthers(except *Nexus, code uint16) {
	for n := range l.seen {
		if except != nil && n == *except {
			continue
		}
		l.addUA(n, code)
	}
}

func (t *Target) lookup(lun uint64) (*lu, TMFResponse) {
	l := t.getLU(lun)
	if l == nil {
		return nil, TMFLUNNotExist
	}
	return l, TMFComplete
}

// AbortTask aborts the task with tag tag of nexus n.
func (t *Target) AbortTask(n Nexus, lun uint64, tag uint32) TMFResponse {
	l, r := t.lookup(lun)
	if l == nil {
		return r
	}
	cnt, _ := l.abortTasks(func(tk *task) bool { return tk.cmd.Nexus == n && tk.cmd.Tag == tag })
	if cnt == 0 {
		return TMFTaskNotExist
	}
	return TMFComplete
}

// AbortTaskSet aborts every task of nexus n on lun.
func (t *Target) AbortTaskSet(n Nexus, lun uint64) TMFResponse {
	l, r := t.lookup(lun)
	if l == nil {
		return r
	}
	l.abortTasks(func(tk *task) bool { return tk.cmd.Nexus == n })
	return TMFComplete
}

// ClearTaskSet aborts every task on lun, whatever its nexus.
func (t *Target) ClearTaskSet(n Nexus, lun uint64) TMFResponse {
	l, r := t.lookup(lun)
	if l == nil {
		return r
	}
	_, owners := l.abortTasks(func(*task) bool { return true })
	l.mu.Lock()
	for o := range owners {
		if o != n {
			l.addUA(o, ascCommandsCleared)
		}
	}
	l.mu.Unlock()
	return TMFComplete
}

// reset performs a logical unit reset (SAM-5 6.3.3) requested through
// nexus n: every task is aborted, RESERVE(6) is released (persistent
// reservations are kept) and a unit attention with code is established for
// every I_T nexus, the issuing one included. Mode parameters are kept: we
// cannot save them, and silently reverting a write-cache change made by
// MODE SELECT would be more dangerous than useful.
func (l *lu) reset(n Nexus, code uint16) {
	l.abortTasks(func(*task) bool { return true })
	l.mu.Lock()
	l.reserve6 = nil
	l.seen[n] = true
	l.addUAOthers(nil, code)
	l.mu.Unlock()
}

// LogicalUnitReset resets lun: all its tasks are aborted, RESERVE(6) is
// released (persistent reservations stay) and every nexus gets a POWER ON,
// RESET, OR BUS DEVICE RESET OCCURRED unit attention (29h/00h, the generic
// code initiators and libiscsi's helpers expect).
func (t *Target) LogicalUnitReset(n Nexus, lun uint64) TMFResponse {
	l, r := t.lookup(lun)
	if l == nil {
		return r
	}
	l.reset(n, ascPowerOnReset)
	return TMFComplete
}

// TargetReset resets every logical unit (warm or cold) as a logical unit
// reset of each.
func (t *Target) TargetReset(n Nexus, cold bool) TMFResponse {
	for _, l := range t.allLUs() {
		l.reset(n, ascPowerOnReset)
	}
	return TMFComplete
}

// NexusLost aborts the tasks of n and releases its RESERVE(6).
func (t *Target) NexusLost(n Nexus) {
	for _, l := range t.allLUs() {
		l.abortTasks(func(tk *task) bool { return tk.cmd.Nexus == n })
		l.mu.Lock()
		if l.reserve6 != nil && *l.reserve6 == n {
			l.reserve6 = nil
		}
		delete(l.ua, n)
		delete(l.seen, n)
		l.mu.Unlock()
	}
}

// Close refuses new commands and waits for every pending task (queued
// tasks are aborted). Devices are not closed: their owner closes them.
func (t *Target) Close() {
	t.mu.Lock()
	t.closed = true
	t.mu.Unlock()
	for _, l := range t.allLUs() {
		l.abortTasks(func(*task) bool { return true })
	}
}

package scsi

import "time"

// workerIdle is how long an idle execution worker waits for more work
// before it exits. Long enough that a steady load never respawns workers,
// short enough that a burst's workers do not linger for long.
const workerIdle = 30 * time.Second

// job is one admitted task on its logical unit.
type job struct {
	l  *lu
	tk *task
}

// workers runs admitted tasks on long-lived goroutines. A fresh goroutine
// per command pays for stack growth on every command (execution paths are
// deep); a worker that outlives its command keeps its grown stack. The
// pool is elastic: a task that finds no idle worker starts a new one, so
// concurrency is bounded only by what the transport admits (its CmdSN
// window), never by the pool.
type workers struct {
	work chan job // unbuffered: a send succeeds only if a worker is idle
}

func newWorkers() *workers { return &workers{work: make(chan job)} }

// dispatch runs j on an idle worker, or on a new one.
func (w *workers) dispatch(j job) {
	select {
	case w.work <- j:
	default:
		go w.loop(j)
	}
}

func (w *workers) loop(j job) {
	idle := time.NewTimer(workerIdle)
	defer idle.Stop()
	for {
		j.l.run(j.tk)
		idle.Reset(workerIdle)
		select {
		case j = <-w.work:
		case <-idle.C:
			return
		}
	}
}

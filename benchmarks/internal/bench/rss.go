package bench

import (
	"bufio"
	"fmt"
	"os"
	"strconv"
	"strings"
	"sync"
	"time"
)

// MemStatus holds the memory fields of /proc/PID/status, in KiB.
type MemStatus struct {
	VmRSS int64 // resident set size now
	VmHWM int64 // peak resident set size over the process's life
}

// ReadMemStatus reads VmRSS and VmHWM of pid.
func ReadMemStatus(pid int) (MemStatus, error) {
	f, err := os.Open(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return MemStatus{}, err
	}
	defer f.Close()
	return ParseMemStatus(bufio.NewScanner(f))
}

func ParseMemStatus(sc *bufio.Scanner) (MemStatus, error) {
	var m MemStatus
	found := 0
	for sc.Scan() {
		line := sc.Text()
		var dst *int64
		switch {
		case strings.HasPrefix(line, "VmRSS:"):
			dst = &m.VmRSS
		case strings.HasPrefix(line, "VmHWM:"):
			dst = &m.VmHWM
		default:
			continue
		}
		fields := strings.Fields(line)
		if len(fields) < 2 {
			return m, fmt.Errorf("bad status line %q", line)
		}
		v, err := strconv.ParseInt(fields[1], 10, 64)
		if err != nil {
			return m, fmt.Errorf("bad status line %q: %v", line, err)
		}
		*dst = v
		found++
	}
	if err := sc.Err(); err != nil {
		return m, err
	}
	if found < 2 {
		return m, fmt.Errorf("VmRSS/VmHWM missing from status")
	}
	return m, nil
}

// RSSSampler polls /proc/PID/status while a run is under way and keeps the
// largest VmRSS seen; stop returns it with the VmHWM read at the end.
type RSSSampler struct {
	pid    int
	stopCh chan struct{}
	wg     sync.WaitGroup
	maxRSS int64
}

// StartRSSSampler starts sampling pid every period (nothing for pid <= 0).
func StartRSSSampler(pid int, every time.Duration) *RSSSampler {
	s := &RSSSampler{pid: pid, stopCh: make(chan struct{})}
	if pid <= 0 {
		return s
	}
	s.sample()
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		t := time.NewTicker(every)
		defer t.Stop()
		for {
			select {
			case <-s.stopCh:
				return
			case <-t.C:
				s.sample()
			}
		}
	}()
	return s
}

func (s *RSSSampler) sample() {
	if m, err := ReadMemStatus(s.pid); err == nil && m.VmRSS > s.maxRSS {
		s.maxRSS = m.VmRSS
	}
}

// Stop ends sampling and returns the peak sampled VmRSS and the process's
// VmHWM at this moment (both KiB; 0 when unknown, e.g. the process exited).
func (s *RSSSampler) Stop() (maxRSS, hwm int64) {
	if s.pid <= 0 {
		return 0, 0
	}
	close(s.stopCh)
	s.wg.Wait()
	s.sample()
	if m, err := ReadMemStatus(s.pid); err == nil {
		hwm = m.VmHWM
	}
	return s.maxRSS, hwm
}

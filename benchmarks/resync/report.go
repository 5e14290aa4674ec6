package main

import (
	"fmt"
	"os"
	"strings"
	"time"

	"github.com/hablock/hablock/benchmarks/internal/bench"
)

// resultsHeader is this command's section in RESULTS.md.
const resultsHeader = "## Resync after a SIGKILL (go run ./benchmarks/resync)"

// maxRatio is the bound on resync bytes / bytes dirtied after a
// Secondary SIGKILL.
const maxRatio = 1.05

type phase struct {
	name    string
	primary bool // (b): the Primary was killed

	loadRuns, loadErrors int
	loadLastErr          string
	dirtied              int64 // 4 KiB blocks written without the peer, in bytes
	oosSurvivor          uint64
	resync               int64
	resyncTime           time.Duration
	// (b) only
	restartRole string
	oosCrashed  uint64
	alExtents   int

	diff       int64 // differing 4 KiB blocks; -1 if not compared
	compareErr error
}

func (p *phase) ratio() float64 { return float64(p.resync) / float64(p.dirtied) }

// bound is (b)'s limit: AL extents x 4 MiB + the survivor's bitmap.
func (p *phase) bound() int64 { return int64(p.alExtents)*extentSz + int64(p.oosSurvivor) }

type check struct {
	what, value string
	ok          bool
}

func (p *phase) checks() []check {
	var cs []check
	done := p.resync > 0 || p.resyncTime > 0
	if !p.primary {
		cs = append(cs,
			check{"resync bytes <= 1.05 x bytes dirtied", fmt.Sprintf("%.3fx", p.ratio()), done && p.resync > 0 && p.ratio() <= maxRatio},
			check{"write load saw no error", fmt.Sprintf("%d errors in %d runs", p.loadErrors, p.loadRuns), p.loadErrors == 0 && p.loadRuns > 0})
	} else {
		cs = append(cs,
			check{"restarted node is Secondary", p.restartRole, p.restartRole == "Secondary"},
			check{"resync bytes <= AL extents x 4 MiB + bitmap", fmt.Sprintf("%s <= %s", bench.Thousands(float64(p.resync)), bench.Thousands(float64(p.bound()))),
				done && p.resync > 0 && p.resync <= p.bound()})
	}
	cs = append(cs, check{"backing files byte-for-byte equal", fmt.Sprintf("%d differing 4 KiB blocks", p.diff),
		done && p.compareErr == nil && p.diff == 0})
	return cs
}

type report struct {
	start, end         time.Time
	command            string
	size, write        int64
	machine            bench.Machine
	version            string
	loadStart, loadEnd string
	initialSync        []time.Duration // one per pair
	phases             []*phase
}

func (r *report) pass() bool {
	if len(r.phases) < 2 {
		return false
	}
	for _, p := range r.phases {
		for _, c := range p.checks() {
			if !c.ok {
				return false
			}
		}
	}
	return true
}

func mib(n int64) string { return fmt.Sprintf("%.1f MiB", float64(n)/(1<<20)) }

func (r *report) markdown() string {
	var b strings.Builder
	fmt.Fprintf(&b, "### %s — %s volume, %s written without the peer\n\n", r.start.Format("2006-01-02 15:04Z"), bench.SizeLabel(r.size), bench.SizeLabel(r.write))
	fmt.Fprintf(&b, "Command: `%s` (from the module root). Run %s to %s.\n", r.command, r.start.Format("15:04:05Z"), r.end.Format("15:04:05Z"))
	for i, d := range r.initialSync {
		fmt.Fprintf(&b, "Initial full sync of pair (%c): %v (%.0f MiB/s).\n", 'a'+i, d.Round(time.Millisecond),
			float64(r.size)/(1<<20)/d.Seconds())
	}
	b.WriteString("\n")
	for _, p := range r.phases {
		fmt.Fprintf(&b, "**%s**\n\n", p.name)
		b.WriteString("| measure | value |\n|---|---:|\n")
		if !p.primary {
			fmt.Fprintf(&b, "| write load (16 MiB region, 512 KiB writes) | %d qemu-io runs, %d errors |\n", p.loadRuns, p.loadErrors)
			fmt.Fprintf(&b, "| bytes dirtied without the peer (load region + extra writes, 4 KiB blocks) | %s (%s) |\n", bench.Thousands(float64(p.dirtied)), mib(p.dirtied))
			fmt.Fprintf(&b, "| Primary's out_of_sync_bytes before the restart | %s |\n", bench.Thousands(float64(p.oosSurvivor)))
			fmt.Fprintf(&b, "| resync bytes (counters.resync_bytes) | %s (%s) |\n", bench.Thousands(float64(p.resync)), mib(p.resync))
			fmt.Fprintf(&b, "| resync / dirtied | %.3fx |\n", p.ratio())
		} else {
			fmt.Fprintf(&b, "| write load on the Primary until its SIGKILL (16 MiB region) | %d complete qemu-io runs |\n", p.loadRuns)
			fmt.Fprintf(&b, "| written through the promoted node (4 KiB blocks) | %s (%s) |\n", bench.Thousands(float64(p.dirtied)), mib(p.dirtied))
			fmt.Fprintf(&b, "| new Primary's out_of_sync_bytes before the connect | %s |\n", bench.Thousands(float64(p.oosSurvivor)))
			fmt.Fprintf(&b, "| old Primary restarted as | %s |\n", p.restartRole)
			fmt.Fprintf(&b, "| its activity-log extents applied | %d (%s) |\n", p.alExtents, mib(int64(p.alExtents)*extentSz))
			fmt.Fprintf(&b, "| its out_of_sync_bytes before the connect | %s |\n", bench.Thousands(float64(p.oosCrashed)))
			fmt.Fprintf(&b, "| resync bytes (counters.resync_bytes) | %s (%s) |\n", bench.Thousands(float64(p.resync)), mib(p.resync))
			fmt.Fprintf(&b, "| bound: AL extents x 4 MiB + bitmap | %s (%s) |\n", bench.Thousands(float64(p.bound())), mib(p.bound()))
		}
		fmt.Fprintf(&b, "| resync time (restart/connect to in sync) | %v |\n", p.resyncTime.Round(time.Millisecond))
		cmp := fmt.Sprintf("%d differing 4 KiB blocks", p.diff)
		if p.diff == 0 && p.compareErr == nil {
			cmp = "equal"
		}
		if p.compareErr != nil {
			cmp = "not compared: " + p.compareErr.Error()
		}
		fmt.Fprintf(&b, "| backing files, byte for byte (agents stopped) | %s |\n\n", cmp)
		for _, c := range p.checks() {
			res := "pass"
			if !c.ok {
				res = "FAIL"
			}
			fmt.Fprintf(&b, "- %s: %s — %s\n", c.what, c.value, res)
		}
		if p.loadLastErr != "" && !p.primary {
			fmt.Fprintf(&b, "- last load error: %s\n", p.loadLastErr)
		}
		b.WriteString("\n")
	}
	m := r.machine
	fmt.Fprintf(&b, "Machine: %d CPUs (%s), %s RAM, Linux %s, %s, %s, %s. Load average at start %s, at end %s.\n\n",
		m.NProc, m.CPU, m.MemTotal, m.Kernel, m.Go, m.Qemu, r.version, r.loadStart, r.loadEnd)
	return b.String()
}

// appendResults adds md under resultsHeader in path: after the last run
// of that section (before the next "## " header), or, if the section does
// not exist, as a new section at the end of the file.
func appendResults(path, md string) error {
	old, err := os.ReadFile(path)
	if err != nil {
		return err
	}
	return os.WriteFile(path, []byte(insertSection(string(old), md)), 0o644)
}

func insertSection(doc, md string) string {
	lines := strings.SplitAfter(doc, "\n")
	at := -1
	for i, l := range lines {
		if strings.TrimRight(l, "\n") == resultsHeader {
			at = i
			break
		}
	}
	if at < 0 {
		if doc != "" && !strings.HasSuffix(doc, "\n") {
			doc += "\n"
		}
		if doc != "" {
			doc += "\n"
		}
		return doc + resultsHeader + "\n\n" + md
	}
	end := len(lines)
	for i := at + 1; i < len(lines); i++ {
		if strings.HasPrefix(lines[i], "## ") {
			end = i
			break
		}
	}
	head := strings.Join(lines[:end], "")
	if !strings.HasSuffix(head, "\n\n") {
		head = strings.TrimRight(head, "\n") + "\n\n"
	}
	tail := strings.Join(lines[end:], "")
	return head + md + tail
}

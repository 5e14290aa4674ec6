package config

import (
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/hablock/hablock/internal/units"
)

// MaxFileSize bounds a configuration file (bytes); a resource file is a
// few kilobytes, anything near this is not one.
const MaxFileSize = 1 << 20

// ErrInvalid matches (with errors.Is) every *Error: a configuration that
// does not parse or does not validate.
var ErrInvalid = errors.New("config: invalid")

// Error is one problem in a configuration, located where the field was
// set when the Resource came from a file.
type Error struct {
	File      string // file name as given to Parse; empty for a Resource built in code
	Line, Col int    // 1-based; zero when unknown. Error() prints the line only.
	Field     string // e.g. "net.ping-timeout", "node[n1].address"; empty for syntax errors
	Msg       string
}

func (e *Error) Error() string {
	var b strings.Builder
	if e.File != "" {
		b.WriteString(e.File)
		if e.Line > 0 {
			fmt.Fprintf(&b, ":%d", e.Line)
		}
		b.WriteString(": ")
	}
	if e.Field != "" {
		b.WriteString(e.Field)
		b.WriteString(": ")
	}
	b.WriteString(e.Msg)
	return b.String()
}

// Is reports target == ErrInvalid.
func (e *Error) Is(target error) bool { return target == ErrInvalid }

type pos struct{ line, col int }

// Load reads and validates the resource file at path. Errors name the
// file by its base name.
func Load(path string) (*Resource, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	return Parse(f, filepath.Base(path))
}

// Parse reads one resource from r and validates it. name is used in
// error messages ("hablock.conf:12: net.timeout: ...").
func Parse(r io.Reader, name string) (*Resource, error) {
	data, err := io.ReadAll(io.LimitReader(r, MaxFileSize+1))
	if err != nil {
		return nil, fmt.Errorf("%s: %w", name, err)
	}
	if len(data) > MaxFileSize {
		return nil, &Error{File: name, Msg: fmt.Sprintf("larger than %d bytes; not a resource file", MaxFileSize)}
	}
	lx := &lexer{file: name, src: string(data), line: 1, col: 1}
	p := &parser{lx: lx}
	stmts, err := p.body(nil, 0)
	if err != nil {
		return nil, err
	}
	in := &interp{file: name}
	res, err := in.top(stmts)
	if err != nil {
		return nil, err
	}
	if err := res.Validate(); err != nil {
		return nil, err
	}
	return res, nil
}

// ---- lexer ----

type tokKind uint8

const (
	tEOF tokKind = iota
	tWord
	tLBrace
	tRBrace
	tSemi
	tNewline
)

type token struct {
	kind   tokKind
	text   string
	quoted bool
	pos
}

type lexer struct {
	file      string
	src       string
	off       int
	line, col int
	peeked    *token
}

func (lx *lexer) errf(p pos, format string, args ...any) error {
	return &Error{File: lx.file, Line: p.line, Col: p.col, Msg: fmt.Sprintf(format, args...)}
}

func (lx *lexer) advance(n int) {
	for range n {
		if lx.src[lx.off] == '\n' {
			lx.line++
			lx.col = 1
		} else {
			lx.col++
		}
		lx.off++
	}
}

func (lx *lexer) peek() (token, error) {
	if lx.peeked == nil {
		t, err := lx.scan()
		if err != nil {
			return t, err
		}
		lx.peeked = &t
	}
	return *lx.peeked, nil
}

func (lx *lexer) next() (token, error) {
	t, err := lx.peek()
	lx.peeked = nil
	return t, err
}

func (lx *lexer) scan() (token, error) {
	for lx.off < len(lx.src) {
		c := lx.src[lx.off]
		switch {
		case c == ' ' || c == '\t' || c == '\r':
			lx.advance(1)
		case c == '#':
			for lx.off < len(lx.src) && lx.src[lx.off] != '\n' {
				lx.advance(1)
			}
		default:
			goto tok
		}
	}
	return token{kind: tEOF, pos: pos{lx.line, lx.col}}, nil
tok:
	p := pos{lx.line, lx.col}
	switch c := lx.src[lx.off]; c {
	case '\n':
		lx.advance(1)
		return token{kind: tNewline, pos: p}, nil
	case '{':
		lx.advance(1)
		return token{kind: tLBrace, pos: p}, nil
	case '}':
		lx.advance(1)
		return token{kind: tRBrace, pos: p}, nil
	case ';':
		lx.advance(1)
		return token{kind: tSemi, pos: p}, nil
	case '"':
		lx.advance(1)
		var b strings.Builder
		for {
			if lx.off >= len(lx.src) || lx.src[lx.off] == '\n' {
				return token{}, lx.errf(p, "unterminated quoted string")
			}
			c := lx.src[lx.off]
			if c == '"' {
				lx.advance(1)
				return token{kind: tWord, text: b.String(), quoted: true, pos: p}, nil
			}
			if c == '\\' && lx.off+1 < len(lx.src) && (lx.src[lx.off+1] == '"' || lx.src[lx.off+1] == '\\') {
				lx.advance(1)
				c = lx.src[lx.off]
			} else if (c < ' ' && c != '\t') || c == 0x7f {
				return token{}, lx.errf(pos{lx.line, lx.col}, "control character %#02x in quoted string", c)
			}
			b.WriteByte(c)
			lx.advance(1)
		}
	}
	start := lx.off
	for lx.off < len(lx.src) && !strings.ContainsRune(" \t\r\n{};#\"", rune(lx.src[lx.off])) {
		if c := lx.src[lx.off]; c < ' ' || c == 0x7f {
			return token{}, lx.errf(pos{lx.line, lx.col}, "control character %#02x", c)
		}
		lx.advance(1)
	}
	return token{kind: tWord, text: lx.src[start:lx.off], pos: p}, nil
}

// ---- parser: statements and blocks, no meaning yet ----

// stmt is "word word ..." ended by a newline, ';' or '}', or
// "word word ... { stmts }" (which the next statement may follow on the
// same line).
type stmt struct {
	words []token
	block bool
	body  []*stmt
}

func (s *stmt) key() string { return s.words[0].text }

// maxDepth bounds block nesting (the syntax uses two levels) so that a
// hostile file cannot make body recurse without limit.
const maxDepth = 4

type parser struct {
	lx    *lexer
	depth int
	// misfit is the first block whose closing '}' is indented unlike the
	// line that opened it: the likely culprit when a '{' is never closed.
	misfit, misfitClose *token
}

// body reads statements up to the '}' matching open (consumed), or to
// the end of the file when open is nil. indent is the column of the
// statement that opened the block.
func (p *parser) body(open *token, indent int) ([]*stmt, error) {
	var out []*stmt
	for {
		t, err := p.lx.next()
		if err != nil {
			return nil, err
		}
		switch t.kind {
		case tNewline, tSemi:
			continue
		case tEOF:
			if open != nil {
				msg := "\"{\" is never closed"
				if p.misfit != nil {
					msg += fmt.Sprintf("; perhaps the one on line %d: the \"}\" on line %d that closes it is indented differently",
						p.misfit.line, p.misfitClose.line)
				}
				return nil, p.lx.errf(open.pos, "%s", msg)
			}
			return out, nil
		case tRBrace:
			if open == nil {
				return nil, p.lx.errf(t.pos, "unexpected \"}\"")
			}
			if p.misfit == nil && t.line != open.line && t.col != indent {
				p.misfit, p.misfitClose = open, &t
			}
			return out, nil
		case tLBrace:
			return nil, p.lx.errf(t.pos, "\"{\" must follow a section name")
		}
		s := &stmt{words: []token{t}}
		for {
			if t, err = p.lx.peek(); err != nil {
				return nil, err
			}
			if t.kind != tWord {
				break
			}
			p.lx.next()
			s.words = append(s.words, t)
		}
		if t.kind == tLBrace {
			p.lx.next()
			s.block = true
			if p.depth++; p.depth > maxDepth {
				return nil, p.lx.errf(t.pos, "sections nested too deeply")
			}
			open := t
			if s.body, err = p.body(&open, s.words[0].col); err != nil {
				return nil, err
			}
			p.depth--
		}
		out = append(out, s)
	}
}

// ---- interpreter: statements to a Resource ----

type interp struct {
	file string
	r    *Resource
}

func (in *interp) errAt(p pos, field, format string, args ...any) error {
	return &Error{File: in.file, Line: p.line, Col: p.col, Field: field, Msg: fmt.Sprintf(format, args...)}
}

// sectionOf names the section where key is valid, for hints.
func sectionOf(key string) string {
	for _, s := range []struct {
		name string
		keys []string
	}{{"the resource", resourceKeys}, {"iscsi", iscsiKeys}, {"net", netKeys}, {"failover", failoverKeys}, {"node", nodeKeys}} {
		if slices.Contains(s.keys, key) {
			return s.name
		}
	}
	return ""
}

// The keys of each section, for suggestions; they match the setter maps
// (checked by a test).
var (
	resourceKeys = []string{"size", "block-size", "protocol"}
	sectionNames = []string{"iscsi", "net", "failover", "node", "witness"}
	iscsiKeys    = []string{"iqn", "listen", "vip", "vip-interface"}
	netKeys      = []string{"ping-interval", "ping-timeout", "timeout", "ko-count", "connect-retry-min",
		"connect-retry-max", "after-sb-0pri", "after-sb-1pri", "resync-rate", "verify-alg", "csums-alg"}
	failoverKeys = []string{"heartbeat-interval", "heartbeat-timeout", "vote-timeout", "auto-failback",
		"failback-settle", "probe-interval", "probe-timeout", "suspicion-mult", "suspicion-max-timeout-mult",
		"gossip-interval", "reconnect-interval"}
	nodeKeys = []string{"address", "backing", "meta-dir", "admin", "gossip", "control"}
)

func (in *interp) top(stmts []*stmt) (*Resource, error) {
	var first *stmt
	for _, s := range stmts {
		if s.key() != "resource" || !s.block {
			msg := "only a \"resource NAME { ... }\" block may appear at the top level"
			if d := suggest(s.key(), []string{"resource"}); d != "" && s.key() != "resource" {
				msg = "unknown section; did you mean resource?"
			}
			return nil, in.errAt(s.words[0].pos, s.key(), "%s", msg)
		}
		if first != nil {
			return nil, in.errAt(s.words[0].pos, "resource", "only one resource per file (first on line %d)", first.words[0].line)
		}
		first = s
	}
	if first == nil {
		return nil, &Error{File: in.file, Msg: "no \"resource NAME { ... }\" block"}
	}
	if len(first.words) != 2 {
		return nil, in.errAt(first.words[0].pos, "resource", "want \"resource NAME {\"")
	}
	name := first.words[1]
	in.r = DefaultResource(name.text)
	in.r.file = in.file
	in.r.pos = map[string]pos{"": name.pos}
	return in.r, in.resource(first.body)
}

func (in *interp) resource(stmts []*stmt) error {
	r := in.r
	settings := map[string]setter{
		"size":       func(v string) (err error) { r.Size, err = parseSize(v, false); return },
		"block-size": func(v string) error { return parseUint32(v, &r.BlockSize) },
		"protocol": func(v string) error {
			if len(v) != 1 || !strings.Contains("ABCabc", v) {
				return fmt.Errorf("%q is not a protocol; want A, B or C", v)
			}
			r.Protocol = Protocol(strings.ToUpper(v)[0])
			return nil
		},
	}
	sections := map[string]int{} // "iscsi", "net", "node[n1]", "witness" -> line
	seen := map[string]int{}
	for _, s := range stmts {
		k := s.key()
		if !s.block {
			if err := in.setting("", s, settings, resourceKeys, seen); err != nil {
				return err
			}
			continue
		}
		switch k {
		case "iscsi", "net", "failover":
			if len(s.words) != 1 {
				return in.errAt(s.words[1].pos, k, "section takes no name")
			}
		case "node", "witness":
			if len(s.words) != 2 {
				return in.errAt(s.words[0].pos, k, "want \"%s NAME {\"", k)
			}
		default:
			msg := "unknown section"
			if slices.Contains(resourceKeys, k) {
				msg = "is a setting, not a section"
			} else if d := suggest(k, sectionNames); d != "" {
				msg += "; did you mean " + d + "?"
			}
			return in.errAt(s.words[0].pos, k, "%s", msg)
		}
		id := k
		if k == "node" {
			id = "node[" + s.words[1].text + "]"
		}
		if line, dup := sections[id]; dup {
			what := "section repeated"
			if k == "node" {
				what = "node defined twice"
			} else if k == "witness" {
				what = "only one witness"
			}
			return in.errAt(s.words[0].pos, id, "%s (first on line %d)", what, line)
		}
		sections[id] = s.words[0].line
		switch k {
		case "iscsi":
			in.r.pos["iscsi"] = s.words[0].pos
			if err := in.section("iscsi", s.body, in.iscsiSettings(), iscsiKeys); err != nil {
				return err
			}
		case "net":
			in.r.pos["net"] = s.words[0].pos
			if err := in.section("net", s.body, in.netSettings(), netKeys); err != nil {
				return err
			}
		case "failover":
			in.r.pos["failover"] = s.words[0].pos
			if err := in.section("failover", s.body, in.failoverSettings(), failoverKeys); err != nil {
				return err
			}
		case "node", "witness":
			n := DefaultNode(r.Name, s.words[1].text)
			prefix := k + "[" + n.Name + "]"
			in.r.pos[prefix] = s.words[1].pos
			if err := in.section(prefix, s.body, nodeSettings(&n), nodeKeys); err != nil {
				return err
			}
			if k == "node" {
				r.Nodes = append(r.Nodes, n)
			} else {
				r.Witness = &n
			}
		}
	}
	return nil
}

type setter func(v string) error

func (in *interp) section(prefix string, stmts []*stmt, settings map[string]setter, keys []string) error {
	seen := map[string]int{}
	for _, s := range stmts {
		if s.block {
			return in.errAt(s.words[0].pos, prefix+"."+s.key(), "sections do not nest")
		}
		if err := in.setting(prefix, s, settings, keys, seen); err != nil {
			return err
		}
	}
	return nil
}

func (in *interp) setting(prefix string, s *stmt, settings map[string]setter, keys []string, seen map[string]int) error {
	k := s.key()
	field := k
	if prefix != "" {
		field = prefix + "." + k
	}
	set, ok := settings[k]
	if !ok {
		msg := "unknown setting"
		if d := suggest(k, keys); d != "" {
			msg += "; did you mean " + d + "?"
		} else if sec := sectionOf(k); sec != "" {
			msg += "; it belongs in " + sec
		} else if prefix == "" && slices.Contains(sectionNames, k) {
			msg = "is a section: want \"" + k + " { ... }\""
		}
		return in.errAt(s.words[0].pos, field, "%s", msg)
	}
	if line, dup := seen[k]; dup {
		return in.errAt(s.words[0].pos, field, "set twice (first on line %d)", line)
	}
	seen[k] = s.words[0].line
	switch {
	case len(s.words) == 1:
		return in.errAt(s.words[0].pos, field, "missing value")
	case len(s.words) > 2:
		return in.errAt(s.words[2].pos, field, "want one value, got %d (quote a value that contains spaces)", len(s.words)-1)
	}
	v := s.words[1]
	in.r.pos[field] = v.pos
	if err := set(v.text); err != nil {
		return in.errAt(v.pos, field, "%v", err)
	}
	return nil
}

func (in *interp) iscsiSettings() map[string]setter {
	c := &in.r.ISCSI
	return map[string]setter{
		"iqn":    func(v string) error { c.IQN = v; return nil },
		"listen": func(v string) error { c.Listen = v; return nil },
		"vip": func(v string) (err error) {
			if c.VIP, err = netip.ParsePrefix(v); err != nil {
				return fmt.Errorf("%q is not an address with a prefix length (e.g. 10.0.0.100/24)", v)
			}
			return nil
		},
		"vip-interface": func(v string) error { c.VIPInterface = v; return nil },
	}
}

func (in *interp) netSettings() map[string]setter {
	n := &in.r.Net
	return map[string]setter{
		"ping-interval":     durationSetter(&n.PingInterval),
		"ping-timeout":      durationSetter(&n.PingTimeout),
		"timeout":           durationSetter(&n.Timeout),
		"connect-retry-min": durationSetter(&n.ConnectRetryMin),
		"connect-retry-max": durationSetter(&n.ConnectRetryMax),
		"ko-count": func(v string) (err error) {
			if n.KoCount, err = strconv.Atoi(v); err != nil || n.KoCount < 0 {
				return fmt.Errorf("%q is not a count (0 or more)", v)
			}
			return nil
		},
		"after-sb-0pri": func(v string) error { n.AfterSB0Pri = v; return nil },
		"after-sb-1pri": func(v string) error { n.AfterSB1Pri = v; return nil },
		"resync-rate":   func(v string) (err error) { n.ResyncRate, err = parseSize(v, true); return },
		"verify-alg":    func(v string) error { n.VerifyAlg = v; return nil },
		"csums-alg":     func(v string) error { n.CsumsAlg = v; return nil },
	}
}

func (in *interp) failoverSettings() map[string]setter {
	f := &in.r.Failover
	count := func(dst *int) setter {
		return func(v string) (err error) {
			if *dst, err = strconv.Atoi(v); err != nil || *dst < 1 {
				return fmt.Errorf("%q is not a count (1 or more)", v)
			}
			return nil
		}
	}
	return map[string]setter{
		"heartbeat-interval": durationSetter(&f.HeartbeatInterval),
		"heartbeat-timeout":  durationSetter(&f.HeartbeatTimeout),
		"vote-timeout":       durationSetter(&f.VoteTimeout),
		"auto-failback": func(v string) error {
			if v == "none" {
				v = ""
			}
			f.AutoFailback = v
			return nil
		},
		"failback-settle":            durationSetter(&f.FailbackSettle),
		"probe-interval":             durationSetter(&f.ProbeInterval),
		"probe-timeout":              durationSetter(&f.ProbeTimeout),
		"suspicion-mult":             count(&f.SuspicionMult),
		"suspicion-max-timeout-mult": count(&f.SuspicionMaxTimeoutMult),
		"gossip-interval":            durationSetter(&f.GossipInterval),
		"reconnect-interval":         durationSetter(&f.ReconnectInterval),
	}
}

func nodeSettings(n *Node) map[string]setter {
	return map[string]setter{
		"address":  func(v string) error { n.Address = v; return nil },
		"backing":  func(v string) error { n.Backing = v; return nil },
		"meta-dir": func(v string) error { n.MetaDir = v; return nil },
		"admin":    func(v string) error { n.Admin = v; return nil },
		"gossip":   func(v string) error { n.Gossip = v; return nil },
		"control":  func(v string) error { n.Control = v; return nil },
	}
}

func durationSetter(d *time.Duration) setter {
	return func(v string) (err error) {
		if *d, err = time.ParseDuration(v); err != nil {
			return fmt.Errorf("%q is not a duration (e.g. 500ms, 6s)", v)
		}
		return nil
	}
}

// parseSize accepts units.ParseSize's forms, and "0" or "unlimited" for
// zero when zeroOK.
func parseSize(v string, zeroOK bool) (int64, error) {
	if zeroOK && (v == "0" || v == "unlimited") {
		return 0, nil
	}
	n, err := units.ParseSize(v)
	if err != nil {
		return 0, fmt.Errorf("%q is not a size (e.g. 512M, 4G): %w", v, err)
	}
	return n, nil
}

func parseUint32(v string, dst *uint32) error {
	n, err := units.ParseSize(v)
	if err != nil || n > 1<<31 {
		return fmt.Errorf("%q is not a size in bytes (e.g. 512, 4K)", v)
	}
	*dst = uint32(n)
	return nil
}

// checkHostPort checks a host:port; the host may be empty only if
// wildcardOK.
func checkHostPort(v string, wildcardOK bool) error {
	host, port, err := net.SplitHostPort(v)
	if err != nil {
		return fmt.Errorf("%q is not host:port: %v", v, strings.TrimPrefix(err.Error(), "address "+v+": "))
	}
	if p, err := strconv.Atoi(port); err != nil || p < 1 || p > 65535 {
		return fmt.Errorf("%q: port %q is not a number from 1 to 65535", v, port)
	}
	if !wildcardOK && isWildcard(host) {
		return fmt.Errorf("%q: peers must be able to dial it; want a specific host", v)
	}
	return nil
}

func isWildcard(host string) bool { return host == "" || host == "0.0.0.0" || host == "::" }

// suggest returns the candidate within edit distance 2 of s, the closest
// first (ties: the first in cands), or "".
func suggest(s string, cands []string) string {
	best, bestD := "", 3
	for _, c := range cands {
		if d := editDistance(s, c); d < bestD {
			best, bestD = c, d
		}
	}
	return best
}

// editDistance is the Levenshtein distance between a and b (bytes).
func editDistance(a, b string) int {
	prev := make([]int, len(b)+1)
	cur := make([]int, len(b)+1)
	for j := range prev {
		prev[j] = j
	}
	for i := 1; i <= len(a); i++ {
		cur[0] = i
		for j := 1; j <= len(b); j++ {
			cost := 1
			if a[i-1] == b[j-1] {
				cost = 0
			}
			cur[j] = min(prev[j]+1, cur[j-1]+1, prev[j-1]+cost)
		}
		prev, cur = cur, prev
	}
	return prev[len(b)]
}

package config

import (
	"bytes"
	"errors"
	"maps"
	"net/netip"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"
)

const examplePath = "../../examples/hablock.conf"

func TestExample(t *testing.T) {
	r, err := Load(examplePath)
	if err != nil {
		t.Fatal(err)
	}
	want := &Resource{
		Name: "r0", Size: 4 << 30, BlockSize: 512, Protocol: ProtocolC,
		ISCSI: ISCSI{IQN: "iqn.2026-11.io.hablock:r0", Listen: "0.0.0.0:3260",
			VIP: netip.MustParsePrefix("10.250.0.100/24"), VIPInterface: "eth0"},
		Net: Net{PingInterval: time.Second, PingTimeout: 500 * time.Millisecond, Timeout: 6 * time.Second,
			KoCount: 4, ConnectRetryMin: time.Second, ConnectRetryMax: 10 * time.Second,
			AfterSB0Pri: "disconnect", AfterSB1Pri: "disconnect", ResyncRate: 250 << 20, VerifyAlg: "sha256", CsumsAlg: "none"},
		Nodes: []Node{
			{"n1", "10.250.0.1:7789", "/var/lib/hablock/r0.img", "/var/lib/hablock/r0-n1", "/run/hablock/r0-n1.sock", "", ""},
			{"n2", "10.250.0.2:7789", "/var/lib/hablock/r0.img", "/var/lib/hablock/r0-n2", "/run/hablock/r0-n2.sock", "", ""},
		},
		Witness:  &Node{"w", "10.250.0.3:7789", "", "/var/lib/hablock/r0-w", "/run/hablock/r0-w.sock", "", ""},
		Failover: DefaultFailover(),
	}
	if !reflect.DeepEqual(strip(r), want) {
		t.Errorf("example parsed as\n%+v\nwant\n%+v", strip(r), want)
	}
	if n, err := r.Node("n2"); err != nil || n.Address != "10.250.0.2:7789" {
		t.Errorf("Node(n2) = %+v, %v", n, err)
	}
	if n, err := r.Node("w"); err != nil || !r.IsWitness(n.Name) {
		t.Errorf("Node(w) = %+v, %v", n, err)
	}
	if _, err := r.Node("n3"); err == nil || !strings.Contains(err.Error(), "valid names: n1, n2, w (witness)") {
		t.Errorf("Node(n3) error = %v", err)
	}
	if p, err := r.Peer("n1"); err != nil || p.Name != "n2" {
		t.Errorf("Peer(n1) = %+v, %v", p, err)
	}
	if _, err := r.Peer("w"); err == nil {
		t.Error("Peer(w) succeeded")
	}
}

// strip drops the parse positions so Resources compare by content.
func strip(r *Resource) *Resource {
	c := *r
	c.file, c.pos = "", nil
	return &c
}

func minimalNodes() []Node {
	return []Node{
		{Name: "a", Address: "192.0.2.1:7789", Backing: "/dev/vdb", MetaDir: "/var/lib/hablock/m", Admin: "/run/a.sock"},
		{Name: "b", Address: "192.0.2.2:7789", Backing: "/dev/vdb", MetaDir: "/var/lib/hablock/m", Admin: "/run/a.sock"},
	}
}

func TestDefaultsValidate(t *testing.T) {
	r := DefaultResource("r0")
	r.Nodes = minimalNodes()
	if err := r.Validate(); err != nil {
		t.Fatal(err)
	}
	// A file giving only what has no default gets exactly the defaults.
	p, err := Parse(strings.NewReader("resource r0 {\n node a { address 192.0.2.1:7789; backing /dev/vdb }\n node b { address 192.0.2.2:7789; backing /dev/vdb }\n}\n"), "min.conf")
	if err != nil {
		t.Fatal(err)
	}
	r.Nodes = []Node{DefaultNode("r0", "a"), DefaultNode("r0", "b")}
	r.Nodes[0].Address, r.Nodes[0].Backing = "192.0.2.1:7789", "/dev/vdb"
	r.Nodes[1].Address, r.Nodes[1].Backing = "192.0.2.2:7789", "/dev/vdb"
	if !reflect.DeepEqual(strip(p), r) {
		t.Errorf("minimal file parsed as\n%+v\nwant defaults\n%+v", strip(p), r)
	}
}

func TestValidateDoesNotMutate(t *testing.T) {
	r := DefaultResource("r0")
	r.Nodes = minimalNodes()
	r.Net.PingTimeout = 5 * time.Second
	before := *r
	before.Nodes = append([]Node(nil), r.Nodes...)
	if err := r.Validate(); err == nil {
		t.Fatal("no error")
	} else if got, want := err.Error(), "net.ping-timeout: 5s must be less than net.ping-interval 1s"; got != want {
		t.Errorf("error %q, want %q", got, want)
	}
	if !reflect.DeepEqual(&before, r) {
		t.Error("Validate changed the Resource")
	}
}

// good is a valid file with one setting per line so that table entries
// can edit it by line.
const good = `resource r0 {
    size 1G
    iscsi { iqn iqn.2026-11.io.hablock:r0; vip 10.0.0.100/24; vip-interface eth0 }
    net {
        ping-interval 1s
        ping-timeout 500ms
        after-sb-0pri disconnect
    }
    node n1 {
        address 10.0.0.1:7789
        backing /dev/vdb
    }
    node n2 { address 10.0.0.2:7789; backing /dev/vdb }
    witness w { address 10.0.0.3:7789 }
}
`

func TestGoodParses(t *testing.T) {
	if _, err := Parse(strings.NewReader(good), "t.conf"); err != nil {
		t.Fatal(err)
	}
}

func TestBroken(t *testing.T) {
	for _, tc := range []struct {
		name     string
		from, to string // replace from with to in good
		want     string
	}{
		{"bad duration", "ping-timeout 500ms", "ping-timeout 5x",
			`t.conf:6: net.ping-timeout: "5x" is not a duration (e.g. 500ms, 6s)`},
		{"ping timeout not below interval", "ping-timeout 500ms", "ping-timeout 1s",
			`t.conf:6: net.ping-timeout: 1s must be less than net.ping-interval 1s (line 5)`},
		{"unknown key suggests", "ping-timeout 500ms", "ping-timout 500ms",
			`t.conf:6: net.ping-timout: unknown setting; did you mean ping-timeout?`},
		{"unknown key elsewhere", "size 1G", "ko-count 3",
			`t.conf:2: ko-count: unknown setting; it belongs in net`},
		{"unknown key far", "size 1G", "colour blue",
			`t.conf:2: colour: unknown setting`},
		{"unknown section", "witness w", "witnes w",
			`t.conf:14: witnes: unknown section; did you mean witness?`},
		{"duplicate key", "ping-interval 1s", "ping-interval 1s\n        ping-interval 2s",
			`t.conf:6: net.ping-interval: set twice (first on line 5)`},
		{"duplicate node", "node n2 {", "node n1 {",
			`t.conf:13: node[n1]: node defined twice (first on line 9)`},
		{"witness name clash", "witness w", "witness n2",
			`t.conf:14: witness[n2]: name "n2" already used by node[n2] (line 13)`},
		{"duplicate address", "10.0.0.2:7789", "10.0.0.1:7789",
			`t.conf:13: node[n2].address: 10.0.0.1:7789 is also node[n1].address (line 10)`},
		{"bad size", "size 1G", "size 4Q",
			`t.conf:2: size: "4Q" is not a size (e.g. 512M, 4G): invalid size "4Q": want a number with an optional K, M, G, T suffix (e.g. 4G)`},
		{"size not multiple", "size 1G", "size 1000",
			`t.conf:2: size: 1000 bytes is not a multiple of the 512-byte block size`},
		{"bad block size", "size 1G", "block-size 1K",
			`t.conf:2: block-size: 1024 is not supported; want 512 or 4096`},
		{"bad protocol", "size 1G", "protocol D",
			`t.conf:2: protocol: "D" is not a protocol; want A, B or C`},
		{"bad iqn", "iqn.2026-11.io.hablock:r0", "iqn.26-11.io.hablock",
			`t.conf:3: iscsi.iqn: "iqn.26-11.io.hablock" is not an iSCSI name; want iqn.YYYY-MM.reverse.domain[:identifier] (letters, digits, '-', '.', ':')`},
		{"bad vip", "10.0.0.100/24", "10.0.0.100",
			`t.conf:3: iscsi.vip: "10.0.0.100" is not an address with a prefix length (e.g. 10.0.0.100/24)`},
		{"vip without interface", "; vip-interface eth0", "",
			`t.conf:3: iscsi.vip-interface: required with iscsi.vip`},
		{"bad address", "10.0.0.1:7789", "10.0.0.1",
			`t.conf:10: node[n1].address: "10.0.0.1" is not host:port: missing port in address`},
		{"wildcard address", "10.0.0.1:7789", "0.0.0.0:7789",
			`t.conf:10: node[n1].address: "0.0.0.0:7789": peers must be able to dial it; want a specific host`},
		{"missing backing", "backing /dev/vdb\n", "\n",
			`t.conf:9: node[n1].backing: required for a disk node`},
		{"relative backing", "backing /dev/vdb\n", "backing vdb\n",
			`t.conf:11: node[n1].backing: "vdb" is not an absolute path`},
		{"witness backing", "witness w { address 10.0.0.3:7789 }", "witness w { address 10.0.0.3:7789; backing /dev/vdc }",
			`t.conf:14: witness[w].backing: a witness has no backing store`},
		{"witness with protocol A", "    size 1G\n", "    size 1G\n    protocol A\n",
			`t.conf:3: protocol: protocol A with a witness: automatic failover needs protocol C (with A or B the Secondary may lack writes the Primary already acknowledged, and a takeover would lose them); use protocol C, or drop the witness and fail over by hand`},
		{"one node", "node n2 { address 10.0.0.2:7789; backing /dev/vdb }", "",
			`t.conf:1: node: 1 disk nodes; want exactly two "node NAME { ... }" sections`},
		{"three nodes", "    witness w", "    node n3 { address 10.0.0.4:1; backing /dev/vdb }\n    witness w",
			`t.conf:14: node[n3]: a third disk node; want exactly two (a diskless quorum member is a "witness")`},
		{"two witnesses", "    witness w", "    witness v { address 10.0.0.5:1 }\n    witness w",
			`t.conf:15: witness: only one witness (first on line 14)`},
		{"policy typo", "after-sb-0pri disconnect", "after-sb-0pri disconect",
			`t.conf:7: net.after-sb-0pri: "disconect" is not one of disconnect, discard-younger-primary, discard-older-primary, discard-zero-changes, discard-least-changes, discard-node-NAME; did you mean disconnect?`},
		{"csums typo", "after-sb-0pri disconnect", "after-sb-0pri disconnect; csums-alg sha265",
			`t.conf:7: net.csums-alg: "sha265" is not one of none, sha256; did you mean sha256?`},
		{"discard unknown node", "after-sb-0pri disconnect", "after-sb-0pri discard-node-w",
			`t.conf:7: net.after-sb-0pri: "discard-node-w" names no disk node; want one of discard-node-n1, discard-node-n2`},
		{"shared files on one host", "10.0.0.2:7789", "10.0.0.1:7800",
			`t.conf:13: node[n2].backing: /dev/vdb is also node[n1].backing on the same host (line 11)`},
		{"heartbeat timeout too short", "size 1G", "failover { heartbeat-interval 100ms; heartbeat-timeout 200ms }",
			`t.conf:2: failover.heartbeat-timeout: 200ms must be at least 3 x failover.heartbeat-interval 100ms (line 2), so that one or two lost heartbeats do not look like a dead node`},
		{"vote timeout too short", "size 1G", "failover { vote-timeout 300ms }",
			`t.conf:2: failover.vote-timeout: 300ms must exceed failover.heartbeat-timeout 300ms (line 2): a voter may wait that long to confirm the Primary is silent`},
		{"probe timeout", "size 1G", "failover { probe-timeout 200ms }",
			`t.conf:2: failover.probe-timeout: 200ms must be less than failover.probe-interval 200ms (line 2)`},
		{"failback to witness", "size 1G", "failover { auto-failback w }",
			`t.conf:2: failover.auto-failback: "w" names no disk node; want none or one of n1, n2`},
		{"bad suspicion mult", "size 1G", "failover { suspicion-mult 0 }",
			`t.conf:2: failover.suspicion-mult: "0" is not a count (1 or more)`},
		{"failover key typo", "size 1G", "failover { heartbeat-interva 1s }",
			`t.conf:2: failover.heartbeat-interva: unknown setting; did you mean heartbeat-interval?`},
		{"control clashes with address", "node n2 { address 10.0.0.2:7789;", "node n2 { address 10.0.0.2:7789; control 10.0.0.1:7789;",
			`t.conf:13: node[n2].control: 10.0.0.1:7789 is also node[n1].address (line 10)`},
		{"derived gossip clashes", "node n2 { address 10.0.0.2:7789;", "node n2 { address 10.0.0.2:7789; control 10.0.0.2:7790;",
			`t.conf:13: node[n2].control: 10.0.0.2:7790 is also node[n2].gossip (line 13)`},
		{"missing value", "size 1G", "size",
			`t.conf:2: size: missing value`},
		{"two values", "size 1G", "size 1 G",
			`t.conf:2: size: want one value, got 2 (quote a value that contains spaces)`},
		{"unclosed brace", "    node n2 { address 10.0.0.2:7789; backing /dev/vdb }", "    node n2 { address 10.0.0.2:7789; backing /dev/vdb",
			`t.conf:1: "{" is never closed; perhaps the one on line 13: the "}" on line 15 that closes it is indented differently`},
		{"stray brace", "size 1G", "size 1G }",
			`t.conf:15: unexpected "}"`},
		{"unterminated quote", "backing /dev/vdb\n", "backing \"/dev/vdb\n",
			`t.conf:11: unterminated quoted string`},
		{"nested section", "ping-interval 1s", "x { y 1 }",
			`t.conf:5: net.x: sections do not nest`},
		{"deep nesting", "size 1G", "a { b { c { d { e { } } } } }",
			`t.conf:2: sections nested too deeply`},
		{"setting as section", "size 1G", "size { 1G }",
			`t.conf:2: size: is a setting, not a section`},
		{"section as setting", "size 1G", "net 1G",
			`t.conf:2: net: is a section: want "net { ... }"`},
		{"two resources", "", "resource r1 {\n}\n",
			`t.conf:16: resource: only one resource per file (first on line 1)`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if !strings.Contains(good, tc.from) {
				t.Fatalf("%q not in the good file", tc.from)
			}
			src := strings.Replace(good, tc.from, tc.to, 1)
			if tc.from == "" {
				src = good + tc.to
			}
			_, err := Parse(strings.NewReader(src), "t.conf")
			if err == nil {
				t.Fatalf("no error for\n%s", src)
			}
			if got := err.Error(); got != tc.want {
				t.Errorf("error\n got: %s\nwant: %s", got, tc.want)
			}
			if !errors.Is(err, ErrInvalid) {
				t.Errorf("error does not match ErrInvalid")
			}
		})
	}
}

func TestValidateReportsAll(t *testing.T) {
	src := strings.Replace(strings.Replace(good, "size 1G", "size 1000", 1), "ping-timeout 500ms", "ping-timeout 2s", 1)
	_, err := Parse(strings.NewReader(src), "t.conf")
	want := "t.conf:2: size: 1000 bytes is not a multiple of the 512-byte block size\n" +
		"t.conf:6: net.ping-timeout: 2s must be less than net.ping-interval 1s (line 5)"
	if err == nil || err.Error() != want {
		t.Errorf("error\n got: %v\nwant: %s", err, want)
	}
	var e *Error
	if !errors.As(err, &e) || e.Line != 2 || e.Col != 10 || e.Field != "size" {
		t.Errorf("first *Error = %+v", e)
	}
}

func TestCheckIQN(t *testing.T) {
	for name, ok := range map[string]bool{
		"iqn.2026-11.io.hablock:r0":                  true,
		"iqn.2026-11.io.hablock":                     true,
		"IQN.2026-11.IO.Hablock:R0":                  true,
		"iqn.1992-01.com.example:storage.disk2.sys1": true,
		"iqn.2026-11.io.hablock:a:b-c.d":             true,
		"eui.02004567A425678D":                       true,
		"naa.52004567BA64678D":                       true,
		"naa.6001405ab3ac1dfd6a8e4c5e1b5a2f00":       true,
		"":                                           false,
		"iqn.":                                       false,
		"iqn.2026-13.io.hablock:r0":                  false,
		"iqn.26-11.io.hablock:r0":                    false,
		"iqn.2026-11:r0":                             false,
		"iqn.2026-11.io..hablock":                    false,
		"iqn.2026-11.-io.hablock":                    false,
		"iqn.2026-11.io.hablock:":                    false,
		"iqn.2026-11.io.hablock:r 0":                 false,
		"iqn.2026-11.io.hablock:r_0":                 false,
		"eui.02004567A425678":                        false,
		"eui.02004567A425678G":                       false,
		"naa.52004567BA64678D00":                     false,
		"target0":                                    false,
		"iqn.2026-11.io.hablock:" + strings.Repeat("x", 201): false,
	} {
		if err := CheckIQN(name); (err == nil) != ok {
			t.Errorf("CheckIQN(%q) = %v, want ok=%v", name, err, ok)
		}
	}
}

func TestFormatRoundTrip(t *testing.T) {
	r, err := Load(examplePath)
	if err != nil {
		t.Fatal(err)
	}
	r.Name = "r 0" // needs quoting
	r.ISCSI.IQN = "iqn.2026-11.io.hablock:r0"
	r.Nodes[0].Backing = `/var/lib/ha "block"/r0;#.img`
	r.Net.ResyncRate = 0
	r.Size = 3 << 29
	var buf bytes.Buffer
	if err := r.Format(&buf); err != nil {
		t.Fatal(err)
	}
	// "r 0" is not a valid name: check the syntax round trip only.
	in := &interp{file: "fmt"}
	stmts, err := (&parser{lx: &lexer{file: "fmt", src: buf.String(), line: 1, col: 1}}).body(nil, 0)
	if err != nil {
		t.Fatalf("%v\n%s", err, buf.String())
	}
	back, err := in.top(stmts)
	if err != nil {
		t.Fatalf("%v\n%s", err, buf.String())
	}
	if !reflect.DeepEqual(strip(back), strip(r)) {
		t.Errorf("round trip\n%+v\nwant\n%+v\nfile:\n%s", strip(back), strip(r), buf.String())
	}
	// And a valid Resource formats to a file that validates.
	r, _ = Load(examplePath)
	buf.Reset()
	r.Format(&buf)
	if back, err := Parse(&buf, "fmt"); err != nil || !reflect.DeepEqual(strip(back), strip(r)) {
		t.Errorf("valid round trip: %v", err)
	}
}

func TestLoadNamesFile(t *testing.T) {
	path := filepath.Join(t.TempDir(), "bad.conf")
	if err := os.WriteFile(path, []byte("resource r0 {\n  net { timeout 6 }\n}\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	_, err := Load(path)
	if want := `bad.conf:2: net.timeout: "6" is not a duration (e.g. 500ms, 6s)`; err == nil || err.Error() != want {
		t.Errorf("got %v, want %s", err, want)
	}
	if _, err := Load(filepath.Join(t.TempDir(), "missing.conf")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("missing file: %v", err)
	}
}

func TestDerivedAddresses(t *testing.T) {
	n := Node{Address: "10.0.0.1:7789"}
	if g, c := n.GossipAddress(), n.ControlAddress(); g != "10.0.0.1:7790" || c != "10.0.0.1:7791" {
		t.Errorf("derived gossip %q control %q", g, c)
	}
	n.Gossip, n.Control = "h:1", "h:2"
	if g, c := n.GossipAddress(), n.ControlAddress(); g != "h:1" || c != "h:2" {
		t.Errorf("explicit gossip %q control %q", g, c)
	}
	if g := (Node{Address: "[::1]:65535"}).GossipAddress(); g != "" {
		t.Errorf("port overflow derived %q", g)
	}
	if g := (Node{Address: "[::1]:80"}).ControlAddress(); g != "[::1]:82" {
		t.Errorf("IPv6 derived %q", g)
	}
}

func TestSuggest(t *testing.T) {
	for _, tc := range []struct{ in, want string }{
		{"ping-timout", "ping-timeout"}, {"timeuot", "timeout"}, {"adress", "address"}, {"zzz", ""},
	} {
		if got := suggest(tc.in, append(netKeys, nodeKeys...)); got != tc.want {
			t.Errorf("suggest(%q) = %q, want %q", tc.in, got, tc.want)
		}
	}
}

func TestKeyLists(t *testing.T) {
	in := &interp{r: DefaultResource("r0")}
	var n Node
	for _, tc := range []struct {
		keys []string
		m    map[string]setter
	}{{iscsiKeys, in.iscsiSettings()}, {netKeys, in.netSettings()}, {failoverKeys, in.failoverSettings()}, {nodeKeys, nodeSettings(&n)}} {
		got := slices.Sorted(maps.Keys(tc.m))
		if want := slices.Sorted(slices.Values(tc.keys)); !slices.Equal(got, want) {
			t.Errorf("setters %v, key list %v", got, want)
		}
	}
}

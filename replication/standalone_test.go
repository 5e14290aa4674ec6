package replication

import (
	"bytes"
	"context"
	"errors"
	"log/slog"
	"net"
	"strings"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/hablock/hablock/blockdev"
)

// logBuf collects a volume's log lines.
type logBuf struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *logBuf) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *logBuf) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

func loggedNode(t *testing.T, st State, cfg Config, fill byte) (*Volume, *blockdev.Memory, *logBuf) {
	t.Helper()
	mem := blockdev.NewMemory(testSize)
	mem.WriteAt(bytes.Repeat([]byte{fill}, testSize), 0)
	lb := &logBuf{}
	v, err := NewVolume(mem, st, cfg, slog.New(slog.NewTextHandler(lb, nil)))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(v.Stop)
	return v, mem, lb
}

// Two Primaries meeting is a split brain (after-sb-2pri disconnect):
// reported loudly on both, both StandAlone, nothing resynced, and Run
// gives up instead of redialing; automatic policies do not apply.
func TestTwoPrimariesSplitBrain(t *testing.T) {
	policy := SplitBrainPolicy{After0Pri: SB0DiscardYoungerPrimary, After1Pri: SB1DiscardSecondary}
	for _, tc := range []struct {
		name   string
		ga, gb GenIDs
		policy SplitBrainPolicy
	}{
		{"both wrote", GenIDs{Current: 0xA000, Bitmap: 0x1000}, GenIDs{Current: 0xB000, Bitmap: 0x1000}, SplitBrainPolicy{}},
		{"both wrote, policies set", GenIDs{Current: 0xA000, Bitmap: 0x1000}, GenIDs{Current: 0xB000, Bitmap: 0x1000}, policy},
		{"one wrote", GenIDs{Current: 0xA000, Bitmap: 0x1000}, GenIDs{Current: 0x1000}, policy},
		{"same generation", GenIDs{Current: 0x1000}, GenIDs{Current: 0x1000}, SplitBrainPolicy{}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cfg := testConfig()
			cfg.SplitBrain = tc.policy
			sa, sb := syncedState("a", RolePrimary), syncedState("b", RolePrimary)
			sa.GI, sb.GI = tc.ga, tc.gb
			va, ma, la := loggedNode(t, sa, cfg, 0xAA)
			vb, mb, lb := loggedNode(t, sb, cfg, 0xBB)
			ln, err := net.ListenTCP("tcp", &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1)})
			if err != nil {
				t.Fatal(err)
			}
			defer ln.Close()
			var dials atomic.Int32
			dial := Dialer(ln.Addr().String())
			errb := make(chan error, 1)
			go func() { errb <- vb.Run(context.Background(), Acceptor(ln)) }()
			erra := va.Run(context.Background(), func(ctx context.Context) (net.Conn, error) {
				dials.Add(1)
				return dial(ctx)
			})
			for _, err := range []error{erra, <-errb} {
				if !errors.Is(err, ErrSplitBrain) {
					t.Fatalf("Run: %v, want ErrSplitBrain", err)
				}
			}
			if n := dials.Load(); n != 1 {
				t.Fatalf("dialed %d times, want 1", n)
			}
			for _, n := range []struct {
				v   *Volume
				mem *blockdev.Memory
				log *logBuf
				b   byte
			}{{va, ma, la, 0xAA}, {vb, mb, lb, 0xBB}} {
				st := n.v.Status()
				if st.Conn != StandAlone || st.Role != RolePrimary || st.Repl != ReplOff || st.ResyncBytes != 0 {
					t.Fatalf("%s after split brain: %+v", st.Node, st)
				}
				if !bytes.Equal(readAll(t, n.mem), bytes.Repeat([]byte{n.b}, testSize)) {
					t.Fatalf("%s: data touched", st.Node)
				}
				if !strings.Contains(n.log.String(), "split brain detected") {
					t.Fatalf("%s did not log the split brain:\n%s", st.Node, n.log.String())
				}
				// Still serving alone.
				if _, err := n.v.WriteAt([]byte{n.b}, 0); err != nil {
					t.Fatal(err)
				}
			}
		})
	}
}

// A StandAlone node answers its peer's connections with RefuseConn: the
// peer's Run gives up at the first attempt with ErrPeerStandAlone and
// the reason, instead of redialing forever.
func TestRefuseConnStopsPeerDialing(t *testing.T) {
	va, _, la := loggedNode(t, syncedState("a", RolePrimary), testConfig(), 0)
	vb, _, lb := loggedNode(t, syncedState("b", RoleSecondary), testConfig(), 0)
	ln, err := net.ListenTCP("tcp", &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	const reason = "split brain with b; waiting for an operator"
	var accepts atomic.Int32
	refused := make(chan error, 8)
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			accepts.Add(1)
			refused <- va.RefuseConn(c, reason)
		}
	}()
	var dials atomic.Int32
	dial := Dialer(ln.Addr().String())
	err = vb.Run(context.Background(), func(ctx context.Context) (net.Conn, error) {
		dials.Add(1)
		return dial(ctx)
	})
	if !errors.Is(err, ErrPeerStandAlone) || !strings.Contains(err.Error(), reason) {
		t.Fatalf("Run: %v, want ErrPeerStandAlone with the peer's reason", err)
	}
	if err := <-refused; err != nil {
		t.Fatalf("RefuseConn: %v", err)
	}
	if d, a := dials.Load(), accepts.Load(); d != 1 || a != 1 {
		t.Fatalf("%d dials, %d accepts, want 1 each", d, a)
	}
	if st := vb.Status(); st.Conn != StandAlone || !strings.Contains(st.LastError, reason) {
		t.Fatalf("dialer status: %+v", st)
	}
	if n := strings.Count(lb.String(), "giving up on peer"); n != 1 {
		t.Fatalf("dialer logged giving up %d times:\n%s", n, lb.String())
	}
	if !strings.Contains(la.String(), "refused peer connection") {
		t.Fatalf("refusing side did not log:\n%s", la.String())
	}

	// Something that is not a peer gets no answer and an error.
	c, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	c.Write(bytes.Repeat([]byte("GET / HTTP/1.1\r\n"), 4))
	if err := <-refused; !errors.Is(err, ErrProtocol) {
		t.Fatalf("RefuseConn of garbage: %v, want ErrProtocol", err)
	}
	c.Close()
}

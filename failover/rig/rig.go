package rig

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/hablock/hablock/internal/admin"
)

// Takeover says who moves the primary role after a failure or for a
// planned switchover.
type Takeover int

const (
	// TakeoverAuto (the default): the agents' failover manager, with the
	// witness agent running, does everything; the rig only kills,
	// observes and revives. Switchovers run `hablock switchover`.
	TakeoverAuto Takeover = iota
	// TakeoverManual: the rig itself does what the failover manager
	// does: it waits until the survivor's replication link reports the
	// peer lost, promotes it through its admin socket (`hablock
	// primary`), adds the VIP to its eth0 with `ip addr` and announces it
	// with `arping -U`. A switchover demotes the old primary first
	// (`hablock secondary`), then moves the VIP and promotes the other.
	// The resource file then has no witness (a witness turns the agents'
	// automatic failover on). The baseline the automatic path replaced.
	TakeoverManual
)

func (t Takeover) String() string {
	if t == TakeoverAuto {
		return "auto"
	}
	return "manual"
}

// ParseTakeover parses "manual" or "auto".
func ParseTakeover(s string) (Takeover, error) {
	switch s {
	case "manual":
		return TakeoverManual, nil
	case "auto":
		return TakeoverAuto, nil
	}
	return 0, fmt.Errorf("takeover %q: want manual or auto", s)
}

// Options configure a Rig. Zero values mean the defaults documented on
// each field.
type Options struct {
	// Takeover: who promotes the survivor. Default TakeoverAuto.
	Takeover Takeover
	// Prefix of every namespace, temporary directory and process name.
	// Default "rg". Two rigs with one prefix cannot run at once (a lock
	// file refuses the second).
	Prefix string
	// Dir is the working directory (backing files, metadata, logs, the
	// mount point). Default /tmp/PREFIX-PID.
	Dir string
	// Hablock is the hablock binary. Default: built from
	// github.com/hablock/hablock/cmd/hablock into Dir.
	Hablock string
	// VolumeSize in bytes. Default 512 MiB: room for PostgreSQL (pgbench
	// scale 1, WAL capped at 64 MiB) and the writers, quick to sync.
	VolumeSize int64
	// PingInterval and PingTimeout of the replication link (net section):
	// with TakeoverManual they are the failure detector. Defaults 500ms
	// and 250ms.
	PingInterval, PingTimeout time.Duration
	// ExtraConfig is appended inside the resource section of the
	// resource file (e.g. a failover { ... } section).
	ExtraConfig string
	// Tickle (TakeoverManual only): right before the kill the rig reads
	// the Primary's established iSCSI connections (what the Primary
	// shares with its peer), and after moving the VIP it sends each
	// client a tickle ACK from the survivor (failover.Tickler), as the
	// automatic takeover does. Default false: the manual path as an
	// operator would run it, where the client notices the new Primary
	// only when its own TCP retransmission reaches it.
	Tickle bool
	// PGClients is pgbench's -c. Default 4.
	PGClients int
	// Logf receives progress lines. Default: discarded.
	Logf func(format string, args ...any)
}

func (o *Options) setDefaults() {
	if o.Prefix == "" {
		o.Prefix = "rg"
	}
	if o.Dir == "" {
		o.Dir = fmt.Sprintf("/tmp/%s-%d", o.Prefix, os.Getpid())
	}
	if o.VolumeSize == 0 {
		o.VolumeSize = 512 << 20
	}
	if o.PingInterval == 0 {
		o.PingInterval = 500 * time.Millisecond
	}
	if o.PingTimeout == 0 {
		o.PingTimeout = 250 * time.Millisecond
	}
	if o.PGClients == 0 {
		o.PGClients = 4
	}
	if o.Logf == nil {
		o.Logf = func(string, ...any) {}
	}
}

// Requirements lists what the rig needs that may be missing, one line
// each; empty when it can run. Tests skip with this message.
func Requirements() []string {
	var miss []string
	if os.Geteuid() != 0 {
		miss = append(miss, "root (network namespaces, loop mounts, FUSE)")
	}
	if _, err := os.Stat("/dev/fuse"); err != nil {
		miss = append(miss, "/dev/fuse (FUSE)")
	}
	tools := map[string]string{
		"ip": "iproute2", "nsenter": "util-linux", "runuser": "util-linux", "findmnt": "util-linux", "mount": "mount", "umount": "mount",
		"nft": "nftables", "arping": "iputils-arping", "qemu-storage-daemon": "qemu-system-common",
		"mkfs.ext4": "e2fsprogs", "qemu-io": "qemu-utils + qemu-block-extra", "e2fsck": "e2fsprogs", "pgbench": "postgresql-contrib / postgresql",
		"psql": "postgresql-client", "pg_isready": "postgresql-client", "go": "golang (to build hablock)",
	}
	names := make([]string, 0, len(tools))
	for t := range tools {
		names = append(names, t)
	}
	sort.Strings(names)
	for _, t := range names {
		if _, err := exec.LookPath(t); err != nil {
			miss = append(miss, fmt.Sprintf("%s (Debian package %s)", t, tools[t]))
		}
	}
	if pgBin() == "" {
		miss = append(miss, "PostgreSQL server binaries in /usr/lib/postgresql/*/bin (Debian package postgresql)")
	}
	return miss
}

// pgBin is the newest /usr/lib/postgresql/VERSION/bin with initdb.
func pgBin() string {
	m, _ := filepath.Glob("/usr/lib/postgresql/*/bin/initdb")
	sort.Strings(m)
	if len(m) == 0 {
		return ""
	}
	return filepath.Dir(m[len(m)-1])
}

// Rig is one running testbed: the namespaces, the three agents (two disk
// nodes and, with TakeoverAuto, the witness), and the client.
type Rig struct {
	opts Options
	tp   topology
	logf func(string, ...any)
	lock *os.File
	bin  string
	conf string

	agents  map[string]*proc
	admins  map[string]*admin.Client
	primary string // the disk node believed Primary

	// client side
	lun, mnt, pgData, pgSock, ledgerFile string
	qsd, postgres, work                  *proc
	mounted                              bool
	loopDev                              string  // e.g. loop0
	mountedAt                            float64 // /proc/uptime at mount, for kernel log lines

	mu     sync.Mutex // guards the event lists
	writes []int64    // completion times of the writer's write+fsync
	werrs  []event
	polls  []event // failed or slow HTTP polls
	rwErrs []event
	// sideAcks are the partition scenarios' acknowledged side writes,
	// checked on the disks at the end.
	sideAcks []ack
	ready    chan struct{}
}

// New builds the topology (after removing a crashed run's leftovers) and
// the hablock binary. Close undoes everything, also after errors.
func New(ctx context.Context, opts Options) (*Rig, error) {
	opts.setDefaults()
	r := &Rig{opts: opts, logf: opts.Logf, tp: topology{prefix: opts.Prefix, logf: opts.Logf},
		agents: map[string]*proc{}, admins: map[string]*admin.Client{}, ready: make(chan struct{})}
	lock, err := os.OpenFile(fmt.Sprintf("/tmp/%s-rig.lock", opts.Prefix), os.O_CREATE|os.O_RDWR, 0o644)
	if err != nil {
		return nil, err
	}
	if err := unix.Flock(int(lock.Fd()), unix.LOCK_EX|unix.LOCK_NB); err != nil {
		lock.Close()
		return nil, fmt.Errorf("another rig with prefix %q is running (lock /tmp/%s-rig.lock); wait for it or use another prefix", opts.Prefix, opts.Prefix)
	}
	r.lock = lock
	r.removeStaleMounts(ctx)
	r.tp.removeStale(ctx)
	if err := os.MkdirAll(opts.Dir, 0o755); err != nil {
		r.Close()
		return nil, err
	}
	r.conf = filepath.Join(opts.Dir, "r0.conf")
	r.lun = filepath.Join(opts.Dir, "lun")
	r.mnt = filepath.Join(opts.Dir, "mnt")
	r.pgData = filepath.Join(r.mnt, "pg")
	r.pgSock = filepath.Join(opts.Dir, "pgsock")
	r.ledgerFile = filepath.Join(opts.Dir, "ledger-committed.txt")
	if err := r.tp.build(ctx); err != nil {
		r.Close()
		return nil, err
	}
	r.bin = opts.Hablock
	if r.bin == "" {
		r.bin = filepath.Join(opts.Dir, "hablock")
		r.logf("building hablock into %s", r.bin)
		if _, err := run(ctx, "go", "build", "-o", r.bin, "github.com/hablock/hablock/cmd/hablock"); err != nil {
			r.Close()
			return nil, err
		}
	}
	return r, nil
}

// Dir is the working directory (logs are kept there).
func (r *Rig) Dir() string { return r.opts.Dir }

// Primary is the disk node the rig believes is Primary now.
func (r *Rig) Primary() string { return r.primary }

func other(n string) string {
	if n == N1 {
		return N2
	}
	return N1
}

// removeStaleMounts unmounts what a crashed run with this prefix left
// under /tmp/PREFIX-*.
func (r *Rig) removeStaleMounts(ctx context.Context) {
	b, err := os.ReadFile("/proc/self/mounts")
	if err != nil {
		return
	}
	var stale []string
	for _, line := range strings.Split(string(b), "\n") {
		f := strings.Fields(line)
		if len(f) > 1 && strings.HasPrefix(f[1], "/tmp/"+r.opts.Prefix+"-") {
			stale = append(stale, f[1])
		}
	}
	// Deepest first: the ext4 on the loop device before the FUSE file.
	sort.Slice(stale, func(i, j int) bool { return len(stale[i]) > len(stale[j]) })
	for _, m := range stale {
		r.logf("stale run: unmounting %s", m)
		_, _ = run(ctx, "umount", "-l", m)
	}
}

// ResourceFile returns the resource file every node reads: both disk
// nodes and, with TakeoverAuto, the witness (gossip and control addresses
// take their defaults, the node address's port + 1 and + 2); a failover
// { ... } section or any other setting goes in Options.ExtraConfig, added
// inside the resource section.
func (r *Rig) ResourceFile() string {
	d := r.opts.Dir
	node := func(n string) string {
		s := fmt.Sprintf("address %s:7789 ; meta-dir %s/%s-meta ; admin %s/%s.sock", hostAddr[n], d, n, d, n)
		if n != W {
			s += fmt.Sprintf(" ; backing %s/%s.img", d, n)
		}
		return s
	}
	// A witness turns the agents' automatic failover on (and then they
	// refuse a manual demotion), so only TakeoverAuto has one.
	witness := ""
	if r.opts.Takeover == TakeoverAuto {
		witness = "    witness w { " + node(W) + " }\n"
	}
	return fmt.Sprintf(`# written by failover/rig
resource r0 {
    size %d
    block-size 512
    protocol C
    iscsi { iqn %s ; listen 0.0.0.0:3260 ; vip %s ; vip-interface %s }
    net {
        ping-interval %s ; ping-timeout %s ; timeout 2s
        connect-retry-min 100ms ; connect-retry-max 500ms
        resync-rate unlimited
    }
    node n1 { %s }
    node n2 { %s }
%s%s
}
`, r.opts.VolumeSize, iqn, VIPCIDR, ifName, r.opts.PingInterval, r.opts.PingTimeout,
		node(N1), node(N2), witness, r.opts.ExtraConfig)
}

const iqn = "iqn.2026-11.io.hablock:r0"

var uuidRE = regexp.MustCompile(`volume UUID: ([0-9a-f-]{36})`)

// StartCluster writes the resource file, creates both nodes' metadata,
// starts the agents (and the witness with TakeoverAuto), makes n1
// Primary with --force, waits for the initial sync and gives n1 the VIP.
func (r *Rig) StartCluster(ctx context.Context) error {
	if err := os.WriteFile(r.conf, []byte(r.ResourceFile()), 0o644); err != nil {
		return err
	}
	out, err := run(ctx, r.bin, "create-md", "--config", r.conf, "--node", N1)
	if err != nil {
		return err
	}
	m := uuidRE.FindStringSubmatch(out)
	if m == nil {
		return fmt.Errorf("create-md printed no volume UUID:\n%s", out)
	}
	if _, err := run(ctx, r.bin, "create-md", "--config", r.conf, "--node", N2, "--uuid", m[1]); err != nil {
		return err
	}
	if r.opts.Takeover == TakeoverAuto {
		if _, err := run(ctx, r.bin, "create-md", "--config", r.conf, "--node", W); err != nil {
			return err
		}
		if err := r.startAgent(ctx, W, false); err != nil {
			return err
		}
	}
	for _, n := range []string{N1, N2} {
		if err := r.startAgent(ctx, n, false); err != nil {
			return err
		}
	}
	start := time.Now()
	if _, err := r.admins[N1].Primary(ctx, true); err != nil {
		return fmt.Errorf("hablock primary --force on n1: %w", err)
	}
	r.primary = N1
	if err := r.waitInSync(ctx, 2*time.Minute); err != nil {
		return err
	}
	r.logf("initial sync of %d MiB done in %v", r.opts.VolumeSize>>20, time.Since(start).Round(time.Millisecond))
	if r.opts.Takeover == TakeoverManual {
		return r.tp.addVIP(ctx, N1)
	}
	return r.waitVIP(ctx, N1, 30*time.Second)
}

// startAgent runs `hablock agent` for node inside its namespace and waits
// until its admin socket answers.
func (r *Rig) startAgent(ctx context.Context, node string, noConnect bool) error {
	// nsenter, not ip netns exec: ip netns exec gives the agent a mount
	// namespace of its own, a copy of the rig's taken at start. An agent
	// revived while the client's ext4 is mounted would then hold a second
	// reference to that mount, the rig's umount would not unmount it, and
	// its dirty pages would fail with EIO once the initiator stops.
	argv := r.nsenter(node, r.bin, "agent", "--config", r.conf, "--node", node, "--shutdown-grace", "2s")
	if noConnect {
		argv = append(argv, "--no-connect")
	}
	p, err := startProc("agent "+node, filepath.Join(r.opts.Dir, node+".log"), nil, nil, argv...)
	if err != nil {
		return err
	}
	r.agents[node] = p
	if r.admins[node] == nil {
		r.admins[node] = admin.NewClient(filepath.Join(r.opts.Dir, node+".sock"))
	}
	deadline := time.Now().Add(30 * time.Second)
	for {
		if _, err := r.admins[node].Status(ctx); err == nil {
			return nil
		}
		if err := p.exitErr(); err != nil || p.exited() {
			return fmt.Errorf("agent %s did not start: %v\n%s", node, err, p.tail(20))
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("agent %s: admin socket does not answer after 30s\n%s", node, p.tail(20))
		}
		if err := sleep(ctx, 50*time.Millisecond); err != nil {
			return err
		}
	}
}

func sleep(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-t.C:
		return nil
	}
}

// Status is node's admin status.
func (r *Rig) Status(ctx context.Context, node string) (admin.Status, error) {
	c := r.admins[node]
	if c == nil {
		return admin.Status{}, fmt.Errorf("no agent %s", node)
	}
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	return c.Status(ctx)
}

// Events is node's kept event stream (hablock events).
func (r *Rig) Events(ctx context.Context, node string) ([]admin.Event, error) {
	c := r.admins[node]
	if c == nil {
		return nil, fmt.Errorf("no agent %s", node)
	}
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	evs, _, err := c.Events(ctx, 0, 0)
	return evs, err
}

func inSync(st admin.Status) bool {
	return st.Connection == "Connected" && st.Replication == "Established" && st.Disk == "UpToDate" &&
		st.PeerDisk == "UpToDate" && st.OutOfSyncBytes == 0
}

// waitInSync waits until both disk nodes report Connected, Established,
// UpToDate on both sides and nothing out of sync, and exactly one is
// Primary (which becomes r.primary).
func (r *Rig) waitInSync(ctx context.Context, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	for {
		s1, e1 := r.Status(ctx, N1)
		s2, e2 := r.Status(ctx, N2)
		if e1 == nil && e2 == nil && inSync(s1) && inSync(s2) && (s1.Role == "Primary") != (s2.Role == "Primary") {
			r.primary = N1
			if s2.Role == "Primary" {
				r.primary = N2
			}
			return nil
		}
		if time.Now().After(deadline) {
			b1, _ := json.Marshal(s1)
			b2, _ := json.Marshal(s2)
			return fmt.Errorf("not in sync after %v:\nn1: %s %v\nn2: %s %v", timeout, b1, e1, b2, e2)
		}
		if err := sleep(ctx, 100*time.Millisecond); err != nil {
			return err
		}
	}
}

// waitVIP waits until node holds the VIP.
func (r *Rig) waitVIP(ctx context.Context, node string, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	for {
		if ok, err := r.tp.hasVIP(ctx, node); err != nil || ok {
			return err
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%s does not hold the VIP after %v", node, timeout)
		}
		if err := sleep(ctx, 10*time.Millisecond); err != nil {
			return err
		}
	}
}

// nsenter returns argv run in host's network namespace only (mounts stay
// the rig's: see the package documentation).
func (r *Rig) nsenter(host string, argv ...string) []string {
	return append([]string{"nsenter", "--net=" + r.tp.nsPath(host), "--"}, argv...)
}

// StartClient attaches the LUN in c1 through the VIP with
// qemu-storage-daemon (FUSE export), makes ext4 on it and loop-mounts it,
// starts PostgreSQL on it with a pgbench database and the ledger table,
// and starts the client role (HTTP server, poller, writer).
func (r *Rig) StartClient(ctx context.Context) error {
	if err := os.WriteFile(r.lun, nil, 0o644); err != nil {
		return err
	}
	qsd, err := startProc("qemu-storage-daemon", filepath.Join(r.opts.Dir, "qsd.log"), nil, nil, r.nsenter(Client,
		"qemu-storage-daemon",
		"--blockdev", fmt.Sprintf("driver=iscsi,node-name=lun,transport=tcp,portal=%s:3260,target=%s,lun=0,initiator-name=iqn.2026-11.io.hablock:rig-c1", VIP, iqn),
		"--export", fmt.Sprintf("type=fuse,id=exp,node-name=lun,mountpoint=%s,writable=on", r.lun))...)
	if err != nil {
		return err
	}
	r.qsd = qsd
	deadline := time.Now().Add(30 * time.Second)
	for {
		if fi, err := os.Stat(r.lun); err == nil && fi.Size() == r.opts.VolumeSize {
			break
		}
		if qsd.exited() || time.Now().After(deadline) {
			return fmt.Errorf("the FUSE export of the LUN did not appear at %s\n%s", r.lun, qsd.tail(20))
		}
		if err := sleep(ctx, 50*time.Millisecond); err != nil {
			return err
		}
	}
	// The file system leaves the last sideRegion bytes to the partition
	// scenarios' side writers.
	fsBlocks := strconv.FormatInt((r.opts.VolumeSize-sideRegion)/4096, 10)
	if _, err := run(ctx, "mkfs.ext4", "-q", "-F", "-b", "4096", "-E", "lazy_itable_init=0,lazy_journal_init=0", r.lun, fsBlocks); err != nil {
		return err
	}
	if err := os.MkdirAll(r.mnt, 0o755); err != nil {
		return err
	}
	if _, err := run(ctx, "mount", "-o", "loop", r.lun, r.mnt); err != nil {
		return err
	}
	r.mounted = true
	if out, err := run(ctx, "findmnt", "-n", "-o", "SOURCE", r.mnt); err == nil {
		r.loopDev = filepath.Base(strings.TrimSpace(out))
	}
	r.mountedAt = uptime()
	if err := r.startPostgres(ctx); err != nil {
		return err
	}
	return r.startWorkload(ctx)
}

func (r *Rig) startPostgres(ctx context.Context) error {
	bin := pgBin()
	for _, d := range []string{r.pgData, r.pgSock} {
		if err := os.MkdirAll(d, 0o700); err != nil {
			return err
		}
		if _, err := run(ctx, "chown", "postgres:postgres", d); err != nil {
			return err
		}
	}
	if _, err := run(ctx, "runuser", "-u", "postgres", "--", filepath.Join(bin, "initdb"), "-D", r.pgData, "-A", "trust", "-U", "postgres"); err != nil {
		return err
	}
	// nsenter sets the user itself and execs postgres, so that signals
	// reach the postmaster (runuser would stay in between).
	u, err := user.Lookup("postgres")
	if err != nil {
		return err
	}
	pg, err := startProc("postgres", filepath.Join(r.opts.Dir, "postgres.log"), nil, nil,
		"nsenter", "--net="+r.tp.nsPath(Client), "--setgid", u.Gid, "--setuid", u.Uid, "--",
		filepath.Join(bin, "postgres"), "-D", r.pgData,
		"-c", "listen_addresses=", "-c", "unix_socket_directories="+r.pgSock,
		"-c", "fsync=on", "-c", "synchronous_commit=on", "-c", "full_page_writes=on",
		"-c", "shared_buffers=32MB", "-c", "max_wal_size=64MB", "-c", "min_wal_size=32MB",
		"-c", "checkpoint_timeout=30s", "-c", "log_min_messages=warning")
	if err != nil {
		return err
	}
	r.postgres = pg
	deadline := time.Now().Add(60 * time.Second)
	for {
		if _, err := run(ctx, "pg_isready", "-q", "-h", r.pgSock, "-U", "postgres"); err == nil {
			break
		}
		if pg.exited() || time.Now().After(deadline) {
			return fmt.Errorf("PostgreSQL did not start\n%s", pg.tail(20))
		}
		if err := sleep(ctx, 100*time.Millisecond); err != nil {
			return err
		}
	}
	if _, err := run(ctx, "pgbench", "-h", r.pgSock, "-U", "postgres", "-i", "-q", "-s", "1", "postgres"); err != nil {
		return err
	}
	if _, err := r.psql(ctx, "CREATE TABLE ledger (id bigint PRIMARY KEY, client int NOT NULL, at timestamptz NOT NULL DEFAULT now())"); err != nil {
		return err
	}
	// The pgbench script: TPC-B-like, plus one ledger row per transaction;
	// after COMMIT succeeds, \shell appends the id to the driver's
	// record (pgbench runs meta-commands only after the previous SQL
	// command returned; a failed COMMIT aborts the client first).
	script := fmt.Sprintf(`\set aid random(1, 100000)
\set bid random(1, 1)
\set tid random(1, 10)
\set delta random(-5000, 5000)
\set id random(1, 9000000000000000000)
BEGIN;
UPDATE pgbench_accounts SET abalance = abalance + :delta WHERE aid = :aid;
SELECT abalance FROM pgbench_accounts WHERE aid = :aid;
UPDATE pgbench_tellers SET tbalance = tbalance + :delta WHERE tid = :tid;
UPDATE pgbench_branches SET bbalance = bbalance + :delta WHERE bid = :bid;
INSERT INTO pgbench_history (tid, bid, aid, delta, mtime) VALUES (:tid, :bid, :aid, :delta, CURRENT_TIMESTAMP);
INSERT INTO ledger (id, client) VALUES (:id, :client_id);
END;
\shell echo :id >> %s
`, r.ledgerFile)
	return os.WriteFile(filepath.Join(r.opts.Dir, "ledger.pgbench"), []byte(script), 0o644)
}

func (r *Rig) psql(ctx context.Context, sql string) (string, error) {
	return run(ctx, "psql", "-X", "-q", "-At", "-v", "ON_ERROR_STOP=1", "-h", r.pgSock, "-U", "postgres", "-c", sql, "postgres")
}

// startWorkload starts the client role process and a reader of its events.
func (r *Rig) startWorkload(ctx context.Context) error {
	exe, err := os.Executable()
	if err != nil {
		return err
	}
	pr, pw := io.Pipe()
	p, err := startProc("client role", filepath.Join(r.opts.Dir, "client.log"), pw,
		[]string{RoleEnv + "=" + roleWork, roleDir + "=" + r.mnt}, r.nsenter(Client, exe)...)
	if err != nil {
		return err
	}
	r.work = p
	go func() {
		<-p.done
		pw.Close()
	}()
	go r.readEvents(pr)
	select {
	case <-r.ready:
		return nil
	case <-p.done:
		return fmt.Errorf("client role exited: %v\n%s", p.err, p.tail(20))
	case <-time.After(30 * time.Second):
		return fmt.Errorf("client role not ready after 30s\n%s", p.tail(20))
	case <-ctx.Done():
		return ctx.Err()
	}
}

func (r *Rig) readEvents(rd io.Reader) {
	sc := bufio.NewScanner(rd)
	ready := false
	for sc.Scan() {
		var e event
		if json.Unmarshal(sc.Bytes(), &e) != nil {
			continue
		}
		r.mu.Lock()
		switch e.Kind {
		case "w":
			r.writes = append(r.writes, e.T)
		case "werr":
			r.werrs = append(r.werrs, e)
		case "poll":
			r.polls = append(r.polls, e)
		case "rw":
			r.rwErrs = append(r.rwErrs, e)
		case "ready":
			if !ready {
				ready = true
				close(r.ready)
			}
		}
		r.mu.Unlock()
	}
}

// Close stops everything the rig started, in order (client, PostgreSQL,
// file systems, initiator, agents), and deletes the namespaces. The
// working directory stays (logs); RemoveDir deletes it.
func (r *Rig) Close() error {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	var errs []error
	if r.work != nil {
		_ = r.work.stop(syscall.SIGTERM, 10*time.Second)
	}
	if r.postgres != nil {
		if err := r.postgres.stop(syscall.SIGINT, 30*time.Second); err != nil {
			errs = append(errs, err)
		}
	}
	if r.mounted {
		// After a failed trial the LUN may be unreachable and umount
		// block on writeback: give it 20 s, then detach it lazily; stopping
		// qemu-storage-daemon below then fails the stuck I/O.
		uctx, ucancel := context.WithTimeout(ctx, 20*time.Second)
		if _, err := run(uctx, "umount", r.mnt); err != nil {
			_, _ = run(ctx, "umount", "-l", r.mnt)
			errs = append(errs, err)
		}
		ucancel()
		r.mounted = false
	}
	if r.qsd != nil {
		_ = r.qsd.stop(syscall.SIGTERM, 20*time.Second)
		_, _ = run(ctx, "umount", "-l", r.lun) // in case FUSE stayed mounted
	}
	for _, p := range r.agents {
		p.kill()
	}
	if err := r.tp.teardown(ctx); err != nil {
		errs = append(errs, err)
	}
	for _, c := range r.admins {
		c.Close()
	}
	if r.lock != nil {
		r.lock.Close()
	}
	return errors.Join(errs...)
}

// RemoveDir deletes the working directory (after Close).
func (r *Rig) RemoveDir() error { return os.RemoveAll(r.opts.Dir) }

// uptime is the kernel's clock of dmesg timestamps, in seconds.
func uptime() float64 {
	b, err := os.ReadFile("/proc/uptime")
	if err != nil {
		return 0
	}
	var up float64
	fmt.Sscanf(string(b), "%f", &up)
	return up
}

// kernelIOErrors returns the kernel log lines since the mount that report
// I/O errors on the loop device or ext4 errors on it: a write the file
// system lost is reported there, not to any process.
func (r *Rig) kernelIOErrors(ctx context.Context) []string {
	if r.loopDev == "" {
		return nil
	}
	out, err := run(ctx, "dmesg")
	if err != nil {
		return []string{"dmesg: " + err.Error()}
	}
	var bad []string
	for _, line := range strings.Split(out, "\n") {
		var ts float64
		if _, err := fmt.Sscanf(strings.TrimLeft(line, "[ "), "%f]", &ts); err != nil || ts < r.mountedAt {
			continue
		}
		if strings.Contains(line, r.loopDev) && (strings.Contains(line, "error") || strings.Contains(line, "EXT4-fs warning") || strings.Contains(line, "EXT4-fs error")) {
			bad = append(bad, strings.TrimSpace(line))
		}
	}
	return bad
}

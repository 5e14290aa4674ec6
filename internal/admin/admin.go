// Package admin is the local administration interface of a hablock agent:
// JSON over HTTP on a Unix socket (config key node.admin, default
// /run/hablock/RESOURCE-NODE.sock, mode 0600 so only root — or whoever
// runs the agent — may use it). `hablock status`, `hablock primary` and
// the other admin commands are clients of it.
//
// # Endpoints
//
//	GET  /v1/status                 the Status of the node
//	POST /v1/connect[?discard-my-data=1]
//	                                start connecting to the peer; discard-my-data:
//	                                give up the local changes if a split brain is found
//	POST /v1/disconnect             drop the peer link and stay StandAlone
//	POST /v1/primary[?force=1]      promote; force promotes without an UpToDate disk
//	POST /v1/secondary              demote
//	POST /v1/invalidate             discard the local data: full resync from the peer
//	POST /v1/verify[?repair=1]      start online verify (repair: resync differences)
//	POST /v1/pause-sync             pause the resync
//	POST /v1/resume-sync            resume it
//
// Every POST answers 200 with the Status after the change. Errors answer
// {"error": "...", "code": "..."} with a matching HTTP status: 400
// bad_request, 404 not_found, 405 method_not_allowed, 409 conflict (not
// possible in the current state), 501 not_implemented (the agent cannot
// do it yet), 503 unavailable, 500 internal. Client turns them back into
// *Error values that match the sentinels below with errors.Is.
//
// The Server serves any Node, so it is tested with an in-memory one and
// backed in the agent by the replication engine.
package admin

import (
	"context"
	"errors"
	"fmt"
	"github.com/hablock/hablock/failover"
	"net/http"
	"strings"
	"time"
)

// Sentinel errors. A Node returns them (wrapped with %w) to choose the
// HTTP status; Client returns *Error values that match them.
var (
	// ErrBadRequest: the request is malformed (400).
	ErrBadRequest = errors.New("admin: bad request")
	// ErrConflict: the operation is not possible in the node's current
	// state, e.g. primary while the peer is Primary (409).
	ErrConflict = errors.New("admin: not possible in the current state")
	// ErrNotImplemented: this agent cannot do it (yet) (501).
	ErrNotImplemented = errors.New("admin: not implemented")
	// ErrUnavailable: the node is shutting down or not ready (503).
	ErrUnavailable = errors.New("admin: unavailable")
	// ErrNoAgent: nothing answers on the socket (Client only).
	ErrNoAgent = errors.New("admin: no agent")
)

// Error codes, the "code" field of an error response.
const (
	CodeBadRequest       = "bad_request"
	CodeNotFound         = "not_found"
	CodeMethodNotAllowed = "method_not_allowed"
	CodeConflict         = "conflict"
	CodeNotImplemented   = "not_implemented"
	CodeUnavailable      = "unavailable"
	CodeInternal         = "internal"
)

// Error is an error answered by the agent.
type Error struct {
	HTTPStatus int    `json:"-"`
	Code       string `json:"code"`
	Message    string `json:"error"`
}

func (e *Error) Error() string { return e.Message }

// Is matches the sentinel of e's code.
func (e *Error) Is(target error) bool {
	switch e.Code {
	case CodeBadRequest:
		return target == ErrBadRequest
	case CodeConflict:
		return target == ErrConflict
	case CodeNotImplemented:
		return target == ErrNotImplemented
	case CodeUnavailable:
		return target == ErrUnavailable
	}
	return false
}

// errorFor maps a Node's error to its code and HTTP status.
func errorFor(err error) *Error {
	var e *Error
	if errors.As(err, &e) {
		return e
	}
	st, code := http.StatusInternalServerError, CodeInternal
	switch {
	case errors.Is(err, ErrBadRequest):
		st, code = http.StatusBadRequest, CodeBadRequest
	case errors.Is(err, ErrConflict):
		st, code = http.StatusConflict, CodeConflict
	case errors.Is(err, ErrNotImplemented):
		st, code = http.StatusNotImplemented, CodeNotImplemented
	case errors.Is(err, ErrUnavailable):
		st, code = http.StatusServiceUnavailable, CodeUnavailable
	}
	return &Error{HTTPStatus: st, Code: code, Message: err.Error()}
}

// Node is what the admin server drives: one node of one resource. Methods
// are called concurrently from request goroutines. A method that starts
// something long (Connect, Verify) returns once it has started; progress
// shows in Status.
type Node interface {
	Status(ctx context.Context) Status
	// Connect starts connecting to the peer. discardMyData (DRBD's
	// connect --discard-my-data) makes this node give up its changes and
	// become the sync target if the connect finds a split brain the
	// after-sb policies leave unresolved; it applies until a connection
	// is established.
	Connect(ctx context.Context, discardMyData bool) error
	Disconnect(ctx context.Context) error
	// Primary promotes; force promotes even though the local disk is not
	// UpToDate (the operator vouches for the data, as drbdadm --force).
	Primary(ctx context.Context, force bool) error
	Secondary(ctx context.Context) error
	// Invalidate discards the local data: it becomes Inconsistent and is
	// fully resynced from the peer.
	Invalidate(ctx context.Context) error
	// Verify starts online verify against the peer; with repair the
	// differing blocks are then resynced from the Primary.
	Verify(ctx context.Context, repair bool) error
	PauseSync(ctx context.Context) error
	ResumeSync(ctx context.Context) error
	// Switchover hands the Primary role to the peer in a planned way (to
	// is the peer's name or empty); only on the Primary of a resource
	// with automatic failover.
	Switchover(ctx context.Context, to string) error
}

// Status is a snapshot of a node, like `drbdadm status`. States use the
// replication package's names (Primary, UpToDate, Connected,
// SyncSource...).
type Status struct {
	Resource string `json:"resource"`
	Node     string `json:"node"`
	// Role is this node's role: Primary or Secondary.
	Role string `json:"role"`
	// Disk is the local disk state (UpToDate, Inconsistent, ...).
	Disk string `json:"disk"`
	// Peer is the peer's node name from the configuration.
	Peer string `json:"peer"`
	// PeerRole and PeerDisk are as last known; Unknown and DUnknown
	// while disconnected.
	PeerRole string `json:"peer_role"`
	PeerDisk string `json:"peer_disk"`
	// Connection is the link state: StandAlone, Unconnected, Connecting,
	// Connected, Disconnecting.
	Connection string `json:"connection"`
	// Replication is what the link carries: Off, Established,
	// SyncSource, SyncTarget, PausedSyncS, VerifyS, ...
	Replication string `json:"replication"`
	// OutOfSyncBytes is what the bitmap marks as differing from the peer.
	OutOfSyncBytes uint64 `json:"out_of_sync_bytes"`
	// Sync is the current or last resync; nil if none ran.
	Sync *Progress `json:"sync,omitempty"`
	// Verify is the current or last online verify; nil if none ran.
	Verify *Progress `json:"verify,omitempty"`
	// VerifyResult is the outcome of the last finished verify.
	VerifyResult *VerifyResult `json:"verify_result,omitempty"`
	// Epoch is the failover epoch from the metadata.
	Epoch uint64 `json:"epoch"`
	// Size is the volume size in bytes.
	Size int64 `json:"size"`
	// UUID is the volume UUID shared by both nodes.
	UUID string `json:"uuid"`
	// Engine says whether the replication engine runs in this agent;
	// false means the agent only holds the disk and metadata.
	Engine   bool     `json:"engine"`
	Counters Counters `json:"counters"`
	// LastError is the last replication error, empty if none.
	LastError string `json:"last_error,omitempty"`
	// Metadata reports failures to record the out-of-sync bitmap in the
	// metadata store; nil while there were none.
	Metadata *MetadataHealth `json:"metadata,omitempty"`
	// SplitBrain: the connection was given up because of a split brain
	// (IsSplitBrain); recover with connect --discard-my-data on the node
	// whose changes are to be lost. Filled by the Server.
	SplitBrain bool `json:"split_brain,omitempty"`
	// CrashedPrimary: this node went down as Primary without demoting
	// and has not connected since; the next connect resyncs its
	// activity log's extents with the bitmap.
	CrashedPrimary bool `json:"crashed_primary,omitempty"`
	// LostCache: the machine restarted while this node ran (power loss,
	// kernel crash) and it has not connected since: writes it had not
	// flushed may be missing anywhere, so the whole volume is marked out
	// of sync and the next connect resyncs it.
	LostCache bool `json:"lost_cache,omitempty"`
	// Failover is the failover manager's view (quorum record, members,
	// heartbeat ages, last decision, events); nil on a resource without a
	// witness, where failover is manual.
	Failover *failover.Status `json:"failover,omitempty"`
}

// IsSplitBrain reports whether the node gave up its connection because of
// a split brain (both nodes wrote while apart and no policy resolved it):
// StandAlone, with the engine's split-brain error as LastError. It lasts
// until the next connect. The Server fills Status.SplitBrain with it.
func (s Status) IsSplitBrain() bool {
	return s.Connection == "StandAlone" && strings.Contains(s.LastError, "split brain")
}

// Progress is the progress of a resync or verify.
type Progress struct {
	Done  uint64 `json:"done_bytes"`
	Total uint64 `json:"total_bytes"`
	// Rate is the average rate in bytes per second.
	Rate float64 `json:"rate_bytes_per_sec"`
	// ETASeconds is the estimated time left; -1 when unknown.
	ETASeconds float64 `json:"eta_seconds"`
	Paused     bool    `json:"paused,omitempty"`
	// Running is false once it has finished (or stopped).
	Running bool `json:"running"`
}

// NewProgress fills ETASeconds from done, total and rate.
func NewProgress(done, total uint64, rate float64, running, paused bool) *Progress {
	p := &Progress{Done: done, Total: total, Rate: rate, Running: running, Paused: paused, ETASeconds: -1}
	switch {
	case done >= total:
		p.ETASeconds = 0
	case rate > 0:
		p.ETASeconds = float64(total-done) / rate
	}
	return p
}

// Percent returns Done/Total in percent (100 when Total is zero).
func (p *Progress) Percent() float64 {
	if p.Total == 0 {
		return 100
	}
	return 100 * float64(p.Done) / float64(p.Total)
}

// ETA returns the estimated time left, or -1 when unknown.
func (p *Progress) ETA() time.Duration {
	if p.ETASeconds < 0 {
		return -1
	}
	return time.Duration(p.ETASeconds * float64(time.Second))
}

// VerifyResult is the outcome of an online verify.
type VerifyResult struct {
	Finished       time.Time `json:"finished"`
	CheckedBytes   uint64    `json:"checked_bytes"`
	OutOfSyncBytes uint64    `json:"out_of_sync_bytes"`
	Repair         bool      `json:"repair"`
	Error          string    `json:"error,omitempty"`
}

// Counters are cumulative since the agent started.
type Counters struct {
	Writes       uint64 `json:"writes"`
	BytesWritten uint64 `json:"bytes_written"`
	BytesSent    uint64 `json:"bytes_sent"`
	ResyncBytes  uint64 `json:"resync_bytes"`
	LocalErrors  uint64 `json:"local_errors"`
}

// FormatETA formats d as H:MM:SS or M:SS (like drbdadm's eta), "?" when
// unknown (negative).
func FormatETA(d time.Duration) string {
	if d < 0 {
		return "?"
	}
	s := int64(d.Round(time.Second) / time.Second)
	if s >= 3600 {
		return fmt.Sprintf("%d:%02d:%02d", s/3600, s/60%60, s%60)
	}
	return fmt.Sprintf("%d:%02d", s/60, s%60)
}

// MetadataHealth is what went wrong recording the out-of-sync bitmap in
// the node's metadata store. While UnsavedChunks is non-zero, the store
// may lack bits the engine holds in memory: a crash then would lose
// them, so writes that would need new bits fail (nothing written) until
// the store accepts writes again, and the agent retries the chunks.
type MetadataHealth struct {
	// Failures counts failed bitmap writes since the agent started.
	Failures uint64 `json:"failures"`
	// UnsavedChunks is the number of bitmap chunks not yet rewritten
	// after a failure.
	UnsavedChunks int `json:"unsaved_chunks"`
	// LastError is the latest failure.
	LastError string `json:"last_error"`
}

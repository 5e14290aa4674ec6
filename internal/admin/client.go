package admin

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"strconv"
	"syscall"
	"time"
)

// maxResponse bounds a response body; a Status is about a kilobyte.
const maxResponse = 1 << 20

// Client talks to an agent's admin socket. Safe for concurrent use.
type Client struct {
	socket string
	http   *http.Client
}

// NewClient returns a Client for the Unix socket at path. It does not
// connect until a method is called.
func NewClient(path string) *Client {
	tr := &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "unix", path)
		},
		MaxIdleConns:      2,
		DisableKeepAlives: false,
	}
	return &Client{socket: path, http: &http.Client{Transport: tr}}
}

// Socket returns the socket path.
func (c *Client) Socket() string { return c.socket }

// Close releases idle connections.
func (c *Client) Close() { c.http.CloseIdleConnections() }

// Status returns the node's status.
func (c *Client) Status(ctx context.Context) (Status, error) {
	return c.do(ctx, http.MethodGet, "status", nil)
}

// Connect asks the node to connect to its peer; see Node.Connect for
// discardMyData.
func (c *Client) Connect(ctx context.Context, discardMyData bool) (Status, error) {
	return c.do(ctx, http.MethodPost, "connect", boolQuery("discard-my-data", discardMyData))
}

// Disconnect drops the peer link.
func (c *Client) Disconnect(ctx context.Context) (Status, error) {
	return c.do(ctx, http.MethodPost, "disconnect", nil)
}

// Primary promotes the node; see Node.Primary for force.
func (c *Client) Primary(ctx context.Context, force bool) (Status, error) {
	return c.do(ctx, http.MethodPost, "primary", boolQuery("force", force))
}

// Secondary demotes the node.
func (c *Client) Secondary(ctx context.Context) (Status, error) {
	return c.do(ctx, http.MethodPost, "secondary", nil)
}

// Invalidate discards the local data for a full resync from the peer.
func (c *Client) Invalidate(ctx context.Context) (Status, error) {
	return c.do(ctx, http.MethodPost, "invalidate", nil)
}

// Verify starts online verify.
func (c *Client) Verify(ctx context.Context, repair bool) (Status, error) {
	return c.do(ctx, http.MethodPost, "verify", boolQuery("repair", repair))
}

// PauseSync pauses the resync.
func (c *Client) PauseSync(ctx context.Context) (Status, error) {
	return c.do(ctx, http.MethodPost, "pause-sync", nil)
}

// ResumeSync resumes the resync.
func (c *Client) ResumeSync(ctx context.Context) (Status, error) {
	return c.do(ctx, http.MethodPost, "resume-sync", nil)
}

// Switchover hands the Primary role to the peer (to: its name, or "").
func (c *Client) Switchover(ctx context.Context, to string) (Status, error) {
	var q url.Values
	if to != "" {
		q = url.Values{"to": {to}}
	}
	return c.do(ctx, http.MethodPost, "switchover", q)
}

func boolQuery(k string, v bool) url.Values {
	if !v {
		return nil
	}
	return url.Values{k: {"1"}}
}

// Events returns the node's events with Seq > after, waiting up to wait
// for the first (the long poll of GET /v1/events), and the Seq to pass
// as after next time.
func (c *Client) Events(ctx context.Context, after uint64, wait time.Duration) ([]Event, uint64, error) {
	q := url.Values{"after": {strconv.FormatUint(after, 10)}}
	if wait > 0 {
		q.Set("wait", wait.String())
	}
	var r EventsReply
	if err := c.call(ctx, http.MethodGet, "events", q, &r); err != nil {
		return nil, after, err
	}
	return r.Events, r.Next, nil
}

func (c *Client) do(ctx context.Context, method, op string, q url.Values) (Status, error) {
	var st Status
	err := c.call(ctx, method, op, q, &st)
	return st, err
}

// call makes one request and decodes its JSON answer into out.
func (c *Client) call(ctx context.Context, method, op string, q url.Values, out any) error {
	st := out
	u := "http://hablock/v1/" + op
	if len(q) > 0 {
		u += "?" + q.Encode()
	}
	req, err := http.NewRequestWithContext(ctx, method, u, nil)
	if err != nil {
		return err
	}
	resp, err := c.http.Do(req)
	if err != nil {
		if ctx.Err() == nil && (errors.Is(err, syscall.ENOENT) || errors.Is(err, syscall.ECONNREFUSED)) {
			return fmt.Errorf("%w at %s", ErrNoAgent, c.socket)
		}
		return fmt.Errorf("admin %s: %w", op, err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, maxResponse+1))
	if err != nil {
		return fmt.Errorf("admin %s: read response: %w", op, err)
	}
	if len(body) > maxResponse {
		return fmt.Errorf("admin %s: response larger than %d bytes", op, maxResponse)
	}
	if resp.StatusCode != http.StatusOK {
		e := &Error{HTTPStatus: resp.StatusCode}
		if json.Unmarshal(body, e) != nil || e.Message == "" {
			e.Code, e.Message = CodeInternal, fmt.Sprintf("admin %s: HTTP %s", op, resp.Status)
		}
		return e
	}
	if err := json.Unmarshal(body, st); err != nil {
		return fmt.Errorf("admin %s: decode answer: %w", op, err)
	}
	return nil
}

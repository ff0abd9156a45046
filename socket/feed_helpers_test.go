package socket

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/cloudevents/sdk-go/v2/event"
	"github.com/golang-jwt/jwt/v5"
	"github.com/lxzan/gws"

	"github.com/virtufin/websocketmanager/eventlog"
	"github.com/virtufin/websocketmanager/internal/embedded"
	"github.com/virtufin/websocketmanager/schemas"
)

const testAPIToken = "feed-test-api-token"

// feedEnv is a Feed over an embedded store, behind an httptest server on
// 127.0.0.1, with a writer per instance to append events.
type feedEnv struct {
	t       *testing.T
	store   *embedded.Store
	log     *eventlog.Log
	feed    *Feed
	http    *httptest.Server
	writers map[string]*eventlog.Writer
	counts  []int // every value OnSubscribers reported, guarded by the feed's lock
}

func newFeedEnv(t *testing.T, cfg FeedConfig) *feedEnv {
	t.Helper()
	store, err := embedded.Open(t.TempDir(), embedded.Options{NoSync: true})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { store.Close() })
	return newFeedEnvOn(t, store, cfg, nil)
}

// newFeedEnvOn builds the environment on an open store, reading the log
// through wrap when it is set.
func newFeedEnvOn(t *testing.T, store *embedded.Store, cfg FeedConfig, wrap func(*eventlog.Log) FeedLog) *feedEnv {
	t.Helper()
	env := &feedEnv{t: t, store: store, writers: map[string]*eventlog.Writer{}}
	env.log = eventlog.Open(store, eventlog.Options{PollInterval: 20 * time.Millisecond})

	auth, err := NewAuthenticator(AuthConfig{Secret: testSecret})
	if err != nil {
		t.Fatal(err)
	}
	if cfg.APIToken == "" {
		cfg.APIToken = testAPIToken
	}
	cfg.OnSubscribers = func(n int) { env.counts = append(env.counts, n) } // under the feed's lock
	var feedLog FeedLog = env.log
	if wrap != nil {
		feedLog = wrap(env.log)
	}
	env.feed, err = NewFeed(cfg, feedLog, auth, newTestLogger(t))
	if err != nil {
		t.Fatalf("NewFeed: %v", err)
	}

	mux := http.NewServeMux()
	mux.Handle("GET /events", env.feed)
	env.http = httptest.NewServer(mux)
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), waitTimeout)
		defer cancel()
		if err := env.feed.Shutdown(ctx); err != nil {
			t.Errorf("feed Shutdown at cleanup: %v", err)
		}
		env.http.Close()
		for _, w := range env.writers {
			w.Close(ctx)
		}
	})
	return env
}

func (env *feedEnv) url(query string) string {
	u := "ws" + strings.TrimPrefix(env.http.URL, "http") + "/events"
	if query != "" {
		u += "?" + query
	}
	return u
}

// subscriberCounts returns what OnSubscribers reported so far.
func (env *feedEnv) subscriberCounts() []int {
	env.feed.mu.Lock()
	defer env.feed.mu.Unlock()
	return append([]int(nil), env.counts...)
}

// connect appends connected events of new connections to the stream
// of an instance and returns them.
func (env *feedEnv) connect(instance, user string, n int) []*event.Event {
	env.t.Helper()
	evs := make([]*event.Event, n)
	for i := range evs {
		ev, err := schemas.NewConnected(schemas.Envelope{InstanceID: instance}, schemas.Connected{
			ConnectionID: fmt.Sprintf("%s-%s-%d-%d", instance, user, time.Now().UnixNano(), i),
			InstanceID:   instance, Incarnation: "inc", UserID: user,
			RemoteAddr: "127.0.0.1:1", UserAgent: "feed-test", ConnectedAt: time.Now().UTC(),
		})
		if err != nil {
			env.t.Fatal(err)
		}
		evs[i] = ev
	}
	env.appendTo(instance, evs...)
	return evs
}

// heartbeat appends one heartbeat of an instance.
func (env *feedEnv) heartbeat(instance string) *event.Event {
	env.t.Helper()
	ev, err := schemas.NewHeartbeat(schemas.Envelope{InstanceID: instance}, schemas.Heartbeat{
		InstanceID: instance, Incarnation: "inc", State: schemas.StateServing,
		StartedAt: time.Now().UTC(), Address: "127.0.0.1:1", Version: "test",
	})
	if err != nil {
		env.t.Fatal(err)
	}
	env.appendTo(instance, ev)
	return ev
}

func (env *feedEnv) appendTo(instance string, evs ...*event.Event) {
	env.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), waitTimeout)
	defer cancel()
	w, ok := env.writers[instance]
	if !ok {
		var err error
		w, err = env.log.NewWriter(ctx, eventlog.StreamName(instance, "inc"))
		if err != nil {
			env.t.Fatal(err)
		}
		env.writers[instance] = w
	}
	if _, err := w.Append(ctx, evs...); err != nil {
		env.t.Fatalf("append: %v", err)
	}
}

// replayIDs returns the ids of every event in the log, in replay order.
func (env *feedEnv) replayIDs() []string {
	env.t.Helper()
	var ids []string
	_, err := env.log.Replay(context.Background(), nil, func(r eventlog.Record) error {
		ids = append(ids, r.Event.ID())
		return nil
	})
	if err != nil {
		env.t.Fatal(err)
	}
	return ids
}

// feedToken returns a JWT for user with the given scope claim, which may be
// a string, a []string or nil for none.
func feedToken(t *testing.T, user string, scope any) string {
	t.Helper()
	claims := jwt.MapClaims{"sub": user, "exp": time.Now().Add(time.Hour).Unix()}
	if scope != nil {
		claims["scope"] = scope
	}
	return makeToken(t, jwt.SigningMethodHS256, testSecret, claims)
}

func feedHeader(token string) http.Header {
	h := http.Header{}
	h.Set("Sec-WebSocket-Protocol", FeedSubprotocol)
	if token != "" {
		h.Set("Authorization", "Bearer "+token)
	}
	return h
}

// feedFrame is one feed message, decoded.
type feedFrame struct {
	raw    []byte
	event  event.Event
	cursor string
}

// feedClient records the frames a subscriber receives.
type feedClient struct {
	gws.BuiltinEventHandler
	socket *gws.Conn
	frames chan feedFrame
	bad    chan string
	closed chan error
}

// dialFeed subscribes with the subprotocol and a scoped token, and starts
// reading.
func dialFeed(t *testing.T, env *feedEnv, query string) *feedClient {
	t.Helper()
	c, err := dialFeedWith(env.url(query), feedHeader(feedToken(t, "operator", DefaultFeedScope)), nil)
	if err != nil {
		t.Fatalf("subscribe to %s: %v", env.url(query), err)
	}
	go c.socket.ReadLoop()
	t.Cleanup(func() { c.socket.NetConn().Close() })
	return c
}

// dialFeedWith subscribes without starting the read loop. A dialer, when
// set, makes the connection.
func dialFeedWith(u string, header http.Header, dialer *net.Dialer) (*feedClient, error) {
	c := &feedClient{frames: make(chan feedFrame, 10_000), bad: make(chan string, 100), closed: make(chan error, 1)}
	opt := &gws.ClientOption{Addr: u, RequestHeader: header}
	if dialer != nil {
		opt.NewDialer = func() (gws.Dialer, error) { return dialer, nil }
	}
	socket, resp, err := gws.NewClient(c, opt)
	if err != nil {
		return nil, err
	}
	resp.Body.Close()
	c.socket = socket
	return c, nil
}

func (c *feedClient) OnMessage(_ *gws.Conn, m *gws.Message) {
	defer m.Close()
	raw := append([]byte(nil), m.Bytes()...)
	var f feedFrame
	f.raw = raw
	if m.Opcode != gws.OpcodeText {
		c.bad <- fmt.Sprintf("binary frame %q", raw)
		return
	}
	if err := json.Unmarshal(raw, &f.event); err != nil {
		c.bad <- fmt.Sprintf("frame %q: %v", raw, err)
		return
	}
	f.cursor, _ = f.event.Extensions()[CursorExtension].(string)
	c.frames <- f
}

func (c *feedClient) OnClose(_ *gws.Conn, err error) { c.closed <- err }

// take returns the next n frames.
func (c *feedClient) take(t *testing.T, n int) []feedFrame {
	t.Helper()
	out := make([]feedFrame, 0, n)
	deadline := time.After(waitTimeout)
	for len(out) < n {
		select {
		case f := <-c.frames:
			out = append(out, f)
		case b := <-c.bad:
			t.Fatalf("bad frame: %s", b)
		case err := <-c.closed:
			t.Fatalf("feed closed after %d of %d frames: %v", len(out), n, err)
		case <-deadline:
			t.Fatalf("got %d of %d frames within %s", len(out), n, waitTimeout)
		}
	}
	return out
}

// quiet checks that no frame arrives for a short while.
func (c *feedClient) quiet(t *testing.T, d time.Duration) {
	t.Helper()
	select {
	case f := <-c.frames:
		t.Fatalf("unexpected frame %s", f.raw)
	case <-time.After(d):
	}
}

// closeFrame waits for the connection to end and returns the close frame.
func (c *feedClient) closeFrame(t *testing.T) *gws.CloseError {
	t.Helper()
	select {
	case err := <-c.closed:
		var ce *gws.CloseError
		if !errors.As(err, &ce) {
			t.Fatalf("feed ended with %v, want a close frame", err)
		}
		return ce
	case <-time.After(waitTimeout):
		t.Fatalf("feed still open after %s", waitTimeout)
		return nil
	}
}

func frameIDs(fs []feedFrame) []string {
	ids := make([]string, len(fs))
	for i, f := range fs {
		ids[i] = f.event.ID()
	}
	return ids
}

func eventIDs(evs []*event.Event) []string {
	ids := make([]string, len(evs))
	for i, ev := range evs {
		ids[i] = ev.ID()
	}
	return ids
}

// smallBufferDialer makes connections whose receive buffer is a few KiB,
// so a client that does not read stalls the server soon.
func smallBufferDialer() *net.Dialer {
	return &net.Dialer{Control: func(_, _ string, c syscall.RawConn) error {
		var serr error
		err := c.Control(func(fd uintptr) {
			serr = syscall.SetsockoptInt(int(fd), syscall.SOL_SOCKET, syscall.SO_RCVBUF, 4096)
		})
		return errors.Join(err, serr)
	}}
}

// httpStatus sends a WebSocket handshake as a plain request and returns the
// response status and WWW-Authenticate header, for the rejections that
// happen before the upgrade.
func httpStatus(t *testing.T, env *feedEnv, query string, header http.Header) (int, string) {
	t.Helper()
	u, _ := url.Parse(env.http.URL + "/events?" + query)
	req, err := http.NewRequest(http.MethodGet, u.String(), nil)
	if err != nil {
		t.Fatal(err)
	}
	for k, vs := range header {
		for _, v := range vs {
			req.Header.Add(k, v)
		}
	}
	req.Header.Set("Connection", "Upgrade")
	req.Header.Set("Upgrade", "websocket")
	req.Header.Set("Sec-WebSocket-Version", "13")
	req.Header.Set("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ==")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	return resp.StatusCode, resp.Header.Get("WWW-Authenticate")
}

// closingSubscribers returns how many subscribers have a close recorded.
func (env *feedEnv) closingSubscribers() int {
	env.feed.mu.Lock()
	defer env.feed.mu.Unlock()
	n := 0
	for s := range env.feed.subs {
		if s.closing.Load() != nil {
			n++
		}
	}
	return n
}

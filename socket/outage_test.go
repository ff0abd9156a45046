package socket

import (
	"context"
	"fmt"
	"net/http/httptest"
	"testing"
	"time"

	"github.com/cloudevents/sdk-go/v2/event"

	"github.com/virtufin/websocketmanager/eventlog"
	"github.com/virtufin/websocketmanager/eventlog/eventlogtest"
	"github.com/virtufin/websocketmanager/internal/state"
	"github.com/virtufin/websocketmanager/projections"
	"github.com/virtufin/websocketmanager/schemas"
)

// outageAppendTimeout makes appends give up quickly while the store is
// down, so the tests see queued events without waiting seconds.
const outageAppendTimeout = 150 * time.Millisecond

// writerAppender appends through an eventlog.Writer, as wsm serve does.
type writerAppender struct{ w *eventlog.Writer }

func (a writerAppender) Append(ctx context.Context, events ...*event.Event) error {
	_, err := a.w.Append(ctx, events...)
	return err
}

// logRig is a Server whose events go through a real eventlog.Writer, with
// the real projector, into an embedded store that can be broken.
type logRig struct {
	*testServer
	faults *eventlogtest.FaultyStore
	log    *eventlog.Log
	w      *eventlog.Writer
	stream string
}

func newLogRig(t *testing.T) *logRig {
	t.Helper()

	faults := eventlogtest.NewFaultyStore(eventlogtest.OpenEmbedded(t, t.TempDir()))
	logger := newTestLogger(t)
	log := eventlog.Open(faults, eventlog.Options{
		Validate:      schemas.Validate,
		Projector:     projections.Projector{},
		RetryMaxDelay: 20 * time.Millisecond,
		Logger:        logger,
	})
	stream := testInstance + "/" + testIncarnation
	w, err := log.NewWriter(t.Context(), stream)
	if err != nil {
		t.Fatalf("NewWriter: %v", err)
	}

	auth, err := NewAuthenticator(AuthConfig{Secret: testSecret})
	if err != nil {
		t.Fatalf("NewAuthenticator: %v", err)
	}
	cfg := baseConfig()
	cfg.AppendTimeout = outageAppendTimeout
	srv, err := New(cfg, auth, writerAppender{w}, logger)
	if err != nil {
		t.Fatalf("New: %v", err)
	}

	r := &logRig{testServer: &testServer{srv: srv, http: httptest.NewServer(srv)}, faults: faults, log: log, w: w, stream: stream}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), waitTimeout)
		defer cancel()
		faults.Repair()
		if err := srv.Shutdown(ctx, ServerShutdown("test cleanup")); err != nil {
			t.Errorf("Shutdown at cleanup: %v", err)
		}
		r.http.Close()
		if err := w.Close(ctx); err != nil {
			t.Errorf("close writer at cleanup: %v", err)
		}
	})
	return r
}

// registered counts the connections the server still tracks, including
// those whose disconnected event is being appended.
func (r *logRig) registered() int {
	r.srv.hub.mu.RLock()
	defer r.srv.hub.mu.RUnlock()
	return len(r.srv.hub.conns)
}

// waitSettled waits until the writer has committed everything it accepted.
func (r *logRig) waitSettled(t *testing.T) {
	t.Helper()
	waitFor(t, waitTimeout, "the writer's backlog to be committed", func() bool { return r.w.Backlog() == 0 })
}

// lifecycle is what the log holds for one connection.
type lifecycle struct {
	connectedSeq    []uint64
	disconnectedSeq []uint64
	disconnected    []schemas.Disconnected
}

// readLifecycles reads the stream and groups its connection events by
// connection id.
func (r *logRig) readLifecycles(t *testing.T) map[string]*lifecycle {
	t.Helper()

	ctx, cancel := context.WithTimeout(t.Context(), waitTimeout)
	defer cancel()
	recs, err := r.log.Read(ctx, r.stream, 1, 1<<20)
	if err != nil {
		t.Fatalf("read %s: %v", r.stream, err)
	}

	out := map[string]*lifecycle{}
	for _, rec := range recs {
		lc := out[rec.Event.Subject()]
		if lc == nil {
			lc = &lifecycle{}
			out[rec.Event.Subject()] = lc
		}
		switch rec.Event.Type() {
		case schemas.TypeConnected:
			lc.connectedSeq = append(lc.connectedSeq, rec.Seq)
		case schemas.TypeDisconnected:
			var d schemas.Disconnected
			decodeData(t, rec.Event, &d)
			lc.disconnectedSeq = append(lc.disconnectedSeq, rec.Seq)
			lc.disconnected = append(lc.disconnected, d)
		}
	}
	return out
}

// checkOnePair checks that a connection has one connected event followed by
// one disconnected event, and returns the latter.
func checkOnePair(t *testing.T, id string, lc *lifecycle) schemas.Disconnected {
	t.Helper()
	if lc == nil {
		t.Fatalf("connection %s: no events in the log", id)
	}
	if len(lc.connectedSeq) != 1 || len(lc.disconnectedSeq) != 1 {
		t.Fatalf("connection %s: got %d connected and %d disconnected events, want 1 and 1",
			id, len(lc.connectedSeq), len(lc.disconnectedSeq))
	}
	if lc.connectedSeq[0] >= lc.disconnectedSeq[0] {
		t.Errorf("connection %s: connected at sequence %d, disconnected at %d; want connected first",
			id, lc.connectedSeq[0], lc.disconnectedSeq[0])
	}
	return lc.disconnected[0]
}

// checkNoOpenViews checks that the views hold no open connection of the
// test instance.
func (r *logRig) checkNoOpenViews(t *testing.T) {
	t.Helper()

	ctx, cancel := context.WithTimeout(t.Context(), waitTimeout)
	defer cancel()
	if _, err := r.log.CatchUp(ctx, r.stream); err != nil {
		t.Fatalf("CatchUp: %v", err)
	}
	open, err := projections.Reader{Store: r.faults}.Connections(ctx, projections.Filter{InstanceID: testInstance})
	if err != nil {
		t.Fatalf("read open connections: %v", err)
	}
	for _, c := range open {
		t.Errorf("views list connection %s as open, but no socket holds it", c.ConnectionID)
	}
}

// TestOutageDisconnectsQueued ends connections while the store is down, so
// every disconnected append runs out of time as queued. After the store is
// back, the log holds exactly one disconnected event per connection, after
// its connected event, and the views hold no open connection.
func TestOutageDisconnectsQueued(t *testing.T) {
	r := newLogRig(t)

	type client struct {
		gws    *gwsClient
		id     string
		end    func(t *testing.T, c *gwsClient, id string)
		code   int
		reason string
	}
	closeFrame := func(t *testing.T, c *gwsClient, _ string) {
		if err := c.socket.WriteClose(1000, []byte("bye")); err != nil {
			t.Fatalf("client close: %v", err)
		}
	}
	kick := func(t *testing.T, _ *gwsClient, id string) {
		if err := r.srv.Kick(id, "outage test"); err != nil {
			t.Fatalf("Kick: %v", err)
		}
	}
	drop := func(t *testing.T, c *gwsClient, _ string) {
		if err := c.socket.NetConn().Close(); err != nil {
			t.Fatalf("close TCP connection: %v", err)
		}
	}
	clients := []*client{
		{end: closeFrame, code: 1000, reason: schemas.ReasonClientClosed},
		{end: closeFrame, code: 1000, reason: schemas.ReasonClientClosed},
		{end: kick, code: int(DefaultKickCode), reason: schemas.ReasonKicked},
		{end: drop, code: 1006, reason: schemas.ReasonConnectionLost},
		{end: drop, code: 1006, reason: schemas.ReasonConnectionLost},
	}
	for i, c := range clients {
		c.gws = dialGWS(t, r.testServer, bearer(userToken(t, fmt.Sprintf("user-%d", i))))
		c.id = c.gws.welcome(t).ConnectionID
	}

	r.faults.Break(eventlogtest.FaultAll, nil)
	for _, c := range clients {
		c.end(t, c.gws, c.id)
	}
	waitFor(t, waitTimeout, "every connection to finish", func() bool { return r.registered() == 0 })
	if got, want := r.w.Backlog(), len(clients); got != want {
		t.Errorf("events queued during the outage: got %d, want %d", got, want)
	}

	r.faults.Repair()
	r.waitSettled(t)

	lcs := r.readLifecycles(t)
	if got, want := len(lcs), len(clients); got != want {
		t.Errorf("connections in the log: got %d, want %d", got, want)
	}
	for _, c := range clients {
		d := checkOnePair(t, c.id, lcs[c.id])
		checkDisconnected(t, d, c.code, c.reason)
	}
	r.checkNoOpenViews(t)
}

// TestOutageConnectQueued opens a connection while the store is down, so
// the connected append runs out of time as queued and the client is closed
// with 1011. After the store is back, the log holds its connected and its
// disconnected event in that order, and the views do not keep it open.
func TestOutageConnectQueued(t *testing.T) {
	r := newLogRig(t)

	r.faults.Break(eventlogtest.FaultAll, nil)
	client := dialGWS(t, r.testServer, bearer(userToken(t, "olga")))
	frame := client.closeFrame(t)
	if frame.Code != CodeInternalError {
		t.Errorf("close code seen by the client: got %d, want %d", frame.Code, CodeInternalError)
	}
	select {
	case m := <-client.messages:
		t.Errorf("client got %q before the close, want no welcome", m.payload)
	default:
	}
	waitFor(t, waitTimeout, "the connection to finish", func() bool { return r.registered() == 0 })
	if got := r.w.Backlog(); got != 2 {
		t.Errorf("events queued during the outage: got %d, want 2 (connected, disconnected)", got)
	}

	r.faults.Repair()
	r.waitSettled(t)

	lcs := r.readLifecycles(t)
	if len(lcs) != 1 {
		t.Fatalf("connections in the log: got %d, want 1", len(lcs))
	}
	for id, lc := range lcs {
		d := checkOnePair(t, id, lc)
		checkDisconnected(t, d, int(CodeInternalError), schemas.ReasonInternalError)
	}
	r.checkNoOpenViews(t)
}

// TestConnectRejectedNoEvents checks that a connected event the writer
// rejects for good closes the connection with 1011 and leaves no event at
// all.
func TestConnectRejectedNoEvents(t *testing.T) {
	tests := []struct {
		name   string
		reject func(t *testing.T, r *logRig)
	}{
		{"store refuses the request", func(_ *testing.T, r *logRig) {
			r.faults.Break(eventlogtest.FaultWrites, fmt.Errorf("outage test: %w", state.ErrInvalidArgument))
		}},
		{"writer closed", func(t *testing.T, r *logRig) {
			ctx, cancel := context.WithTimeout(t.Context(), waitTimeout)
			defer cancel()
			if err := r.w.Close(ctx); err != nil {
				t.Fatalf("close writer: %v", err)
			}
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := newLogRig(t)
			tt.reject(t, r)

			client := dialGWS(t, r.testServer, bearer(userToken(t, "pavel")))
			if got := client.closeFrame(t).Code; got != CodeInternalError {
				t.Errorf("close code seen by the client: got %d, want %d", got, CodeInternalError)
			}
			waitFor(t, waitTimeout, "the connection to finish", func() bool { return r.registered() == 0 })
			r.faults.Repair()
			r.waitSettled(t)

			ctx, cancel := context.WithTimeout(t.Context(), waitTimeout)
			defer cancel()
			if h, err := r.log.Head(ctx, r.stream); err != nil || h != 0 {
				t.Errorf("head of %s: got %d (err %v), want 0: no events", r.stream, h, err)
			}
		})
	}
}

// TestAppendQueuedSentinel checks the server against an appender that
// reports a connected event as queued: the disconnected event follows it.
func TestAppendQueuedSentinel(t *testing.T) {
	app := &fakeAppender{queuedType: schemas.TypeConnected}
	ts := newTestServer(t, baseConfig(), AuthConfig{}, app)

	client := dialGWS(t, ts, bearer(userToken(t, "quinn")))
	if got := client.closeFrame(t).Code; got != CodeInternalError {
		t.Errorf("close code seen by the client: got %d, want %d", got, CodeInternalError)
	}
	var id string
	waitFor(t, waitTimeout, "the connected event", func() bool {
		evs := app.snapshot()
		if len(evs) == 0 {
			return false
		}
		id = evs[0].Subject()
		return true
	})
	d := app.waitDisconnected(t, id)
	checkDisconnected(t, d, int(CodeInternalError), schemas.ReasonInternalError)
}

package main

import (
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/cloudevents/sdk-go/v2/event"
	"github.com/golang-jwt/jwt/v5"
	"github.com/lxzan/gws"

	"github.com/virtufin/websocketmanager/eventlog"
	"github.com/virtufin/websocketmanager/schemas"
	"github.com/virtufin/websocketmanager/socket"
)

// feedTimeout bounds each wait for feed frames. Events reach a subscriber
// of the same process at once, and one of another process within a poll
// interval of the log, 200 ms by default.
const feedTimeout = 20 * time.Second

// scopedToken returns a JWT for user whose scope claim is scope, or that
// has no scope claim when scope is empty.
func scopedToken(t *testing.T, user, scope string) string {
	t.Helper()
	claims := jwt.MapClaims{"sub": user, "exp": time.Now().Add(time.Hour).Unix()}
	if scope != "" {
		claims["scope"] = scope
	}
	s, err := jwt.NewWithClaims(jwt.SigningMethodHS256, claims).SignedString([]byte(testSecret))
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func (s *service) feedURL(query string) string {
	return "ws" + strings.TrimPrefix(s.base, "http") + "/events?" + query
}

// feedEvent is one frame of the feed, decoded.
type feedEvent struct {
	event  event.Event
	cursor string
}

// feedSubscriber is a client of GET /events that keeps every frame.
type feedSubscriber struct {
	gws.BuiltinEventHandler
	conn   *gws.Conn
	frames chan feedEvent
	bad    chan string
	closed chan error
}

func (c *feedSubscriber) OnMessage(_ *gws.Conn, m *gws.Message) {
	defer m.Close()
	var ev event.Event
	if m.Opcode != gws.OpcodeText {
		c.bad <- "binary frame"
		return
	}
	if err := json.Unmarshal(m.Bytes(), &ev); err != nil {
		c.bad <- fmt.Sprintf("frame %q: %v", m.Bytes(), err)
		return
	}
	cursor, _ := ev.Extensions()[socket.CursorExtension].(string)
	c.frames <- feedEvent{event: ev, cursor: cursor}
}

func (c *feedSubscriber) OnClose(_ *gws.Conn, err error) { c.closed <- err }

// subscribeFeed opens the feed with the CloudEvents subprotocol and a token
// that has the events:read scope. With read unset, the test starts the
// read loop itself.
func subscribeFeed(t *testing.T, u string, dialer *net.Dialer, read bool) *feedSubscriber {
	t.Helper()
	c := &feedSubscriber{frames: make(chan feedEvent, 100_000), bad: make(chan string, 16), closed: make(chan error, 1)}
	hdr := http.Header{}
	hdr.Set("Sec-WebSocket-Protocol", socket.FeedSubprotocol)
	hdr.Set("Authorization", "Bearer "+scopedToken(t, "operator", "profile events:read"))
	opt := &gws.ClientOption{Addr: u, RequestHeader: hdr}
	if dialer != nil {
		opt.NewDialer = func() (gws.Dialer, error) { return dialer, nil }
	}
	conn, resp, err := gws.NewClient(c, opt)
	if err != nil {
		t.Fatalf("subscribe to %s: %v", u, err)
	}
	resp.Body.Close()
	if got := conn.SubProtocol(); got != socket.FeedSubprotocol {
		t.Fatalf("feed subprotocol %q, want %q", got, socket.FeedSubprotocol)
	}
	c.conn = conn
	if read {
		go conn.ReadLoop()
	}
	t.Cleanup(func() { conn.NetConn().Close() })
	return c
}

// until reads frames until done returns true for one, and returns them
// all, that one included.
func (c *feedSubscriber) until(t *testing.T, what string, done func(feedEvent) bool) []feedEvent {
	t.Helper()
	var out []feedEvent
	deadline := time.After(feedTimeout)
	for {
		select {
		case f := <-c.frames:
			out = append(out, f)
			if done(f) {
				return out
			}
		case b := <-c.bad:
			t.Fatalf("bad feed frame: %s", b)
		case err := <-c.closed:
			t.Fatalf("feed closed after %d frames, before %s: %v", len(out), what, err)
		case <-deadline:
			t.Fatalf("no %s within %v (%d frames read)", what, feedTimeout, len(out))
		}
	}
}

// closeFrame waits for the feed to end and returns its close frame.
func (c *feedSubscriber) closeFrame(t *testing.T) *gws.CloseError {
	t.Helper()
	select {
	case err := <-c.closed:
		var ce *gws.CloseError
		if !errors.As(err, &ce) {
			t.Fatalf("feed ended with %v, want a close frame", err)
		}
		return ce
	case <-time.After(feedTimeout):
		t.Fatalf("feed still open after %v", feedTimeout)
		return nil
	}
}

// eventOf matches the frame of an event of type typ about subject.
func eventOf(typ, subject string) func(feedEvent) bool {
	return func(f feedEvent) bool { return f.event.Type() == typ && f.event.Subject() == subject }
}

func frameIDs(fs []feedEvent) []string {
	out := make([]string, len(fs))
	for i, f := range fs {
		out[i] = f.event.ID()
	}
	return out
}

func replayIDs(evs []event.Event) []string {
	out := make([]string, len(evs))
	for i, ev := range evs {
		out[i] = ev.ID()
	}
	return out
}

// feedStatus sends a WebSocket handshake to the feed as a plain request
// and returns the status.
func feedStatus(t *testing.T, svc *service, query string, header http.Header) int {
	t.Helper()
	req, err := http.NewRequest(http.MethodGet, svc.base+"/events?"+query, nil)
	if err != nil {
		t.Fatal(err)
	}
	req.Header = header.Clone()
	req.Header.Set("Connection", "Upgrade")
	req.Header.Set("Upgrade", "websocket")
	req.Header.Set("Sec-WebSocket-Version", "13")
	req.Header.Set("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ==")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	return resp.StatusCode
}

func stderrContains(s *service, text string) bool {
	lw := s.cmd.Stderr.(*lockedWriter)
	lw.mu.Lock()
	defer lw.mu.Unlock()
	return strings.Contains(lw.w.String(), text)
}

// checkSuffix checks that frames are the events of the log that follow
// the one with id after, in replay order.
func checkSuffix(t *testing.T, log []string, after string, frames []string) {
	t.Helper()
	i := slices.Index(log, after)
	if i < 0 {
		t.Fatalf("event %s of the cursor's frame is not in the replay", after)
	}
	want := log[i+1:]
	if len(want) < len(frames) {
		t.Fatalf("resumed feed sent %d events, but the log has only %d after the cursor", len(frames), len(want))
	}
	want = want[:len(frames)]
	if !slices.Equal(frames, want) {
		t.Errorf("resumed feed sent\n%v\nwant the events after the cursor in replay order\n%v", frames, want)
	}
}

func TestFeedAccess(t *testing.T) {
	if testing.Short() {
		t.Skip("starts a process")
	}
	t.Setenv(apiTokenEnv, testAPIToken)
	svc := startService(t, t.TempDir())

	proto := func(h http.Header) http.Header {
		h.Set("Sec-WebSocket-Protocol", socket.FeedSubprotocol)
		return h
	}
	bearer := func(tok string) http.Header { return proto(http.Header{"Authorization": {"Bearer " + tok}}) }
	tests := []struct {
		name   string
		query  string
		header http.Header
		want   int
	}{
		{"no token", "", proto(http.Header{}), http.StatusUnauthorized},
		{"invalid token", "", bearer("not-a-token"), http.StatusUnauthorized},
		{"client token without scope", "", bearer(token(t, "alice")), http.StatusForbidden},
		{"client token with other scope", "", bearer(scopedToken(t, "alice", "profile")), http.StatusForbidden},
		{"no subprotocol", "", http.Header{"Authorization": {"Bearer " + scopedToken(t, "op", "events:read")}}, http.StatusBadRequest},
		{"unknown type", "type=connection.opened", bearer(scopedToken(t, "op", "events:read")), http.StatusBadRequest},
		{"scoped token", "", bearer(scopedToken(t, "op", "events:read")), http.StatusSwitchingProtocols},
		{"API token", "", bearer(testAPIToken), http.StatusSwitchingProtocols},
		{"API token in query", "access_token=" + url.QueryEscape(testAPIToken), proto(http.Header{}), http.StatusSwitchingProtocols},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := feedStatus(t, svc, tt.query, tt.header); got != tt.want {
				t.Errorf("status %d, want %d", got, tt.want)
			}
		})
	}
}

func TestFeedShowsConnectsLive(t *testing.T) {
	if testing.Short() {
		t.Skip("starts a process")
	}
	svc := startService(t, t.TempDir())
	sub := subscribeFeed(t, svc.feedURL("type=connection.connected"), nil, true)

	var clients []*client
	for i := range 3 {
		c, err := dial(t, svc.wsURL(), fmt.Sprintf("live-%d", i))
		if err != nil {
			t.Fatal(err)
		}
		clients = append(clients, c)
	}
	for _, c := range clients {
		frames := sub.until(t, "connect of "+c.id, eventOf(schemas.TypeConnected, c.id))
		f := frames[len(frames)-1]
		if len(frames) != 1 {
			t.Errorf("%d frames before the connect of %s, want none: the filter lets connects only", len(frames)-1, c.id)
		}
		if f.cursor == "" {
			t.Errorf("frame of %s has no %s attribute", c.id, socket.CursorExtension)
		}
		if _, err := eventlog.ParseCursor(f.cursor); err != nil {
			t.Errorf("frame of %s: cursor: %v", c.id, err)
		}
		if seq, _ := f.event.Extensions()[schemas.SequenceExtension].(string); len(seq) != schemas.SequenceWidth {
			t.Errorf("frame of %s: sequence %q, want %d digits", c.id, seq, schemas.SequenceWidth)
		}
		var d schemas.Connected
		if err := json.Unmarshal(f.event.Data(), &d); err != nil || d.UserID != c.user {
			t.Errorf("frame of %s: data user %q (%v), want %q", c.id, d.UserID, err, c.user)
		}
	}
}

func TestFeedResumesFromCursor(t *testing.T) {
	if testing.Short() {
		t.Skip("starts a process")
	}
	dataDir := t.TempDir()
	svc := startService(t, dataDir)

	first := subscribeFeed(t, svc.feedURL("from=start"), nil, true)
	a, err := dial(t, svc.wsURL(), "resume-a")
	if err != nil {
		t.Fatal(err)
	}
	b, err := dial(t, svc.wsURL(), "resume-b")
	if err != nil {
		t.Fatal(err)
	}
	before := first.until(t, "connect of b", eventOf(schemas.TypeConnected, b.id))
	first.conn.WriteClose(1000, nil)

	// Events while no subscriber is connected.
	a.conn.WriteClose(1000, nil)
	for i := range 5 {
		away, err := dial(t, svc.wsURL(), fmt.Sprintf("resume-away-%d", i))
		if err != nil {
			t.Fatal(err)
		}
		away.conn.WriteClose(1000, nil)
	}
	c, err := dial(t, svc.wsURL(), "resume-c")
	if err != nil {
		t.Fatal(err)
	}

	last := before[len(before)-1]
	second := subscribeFeed(t, svc.feedURL("cursor="+url.QueryEscape(last.cursor)), nil, true)
	after := second.until(t, "connect of c", eventOf(schemas.TypeConnected, c.id))
	for _, want := range []func(feedEvent) bool{eventOf(schemas.TypeDisconnected, a.id), eventOf(schemas.TypeConnected, c.id)} {
		if !slices.ContainsFunc(after, want) {
			t.Errorf("resumed feed is missing an event produced while it was away")
		}
	}

	log := replayIDs(replay(t, dataDir))
	if got, want := frameIDs(before), log[:len(before)]; !slices.Equal(got, want) {
		t.Errorf("feed from the start sent\n%v\nwant the first events of the replay\n%v", got, want)
	}
	checkSuffix(t, log, last.event.ID(), frameIDs(after))
	t.Logf("%d frames before the cursor, %d after", len(before), len(after))
}

func TestFeedResumesAcrossRestart(t *testing.T) {
	if testing.Short() {
		t.Skip("starts two processes")
	}
	dataDir := t.TempDir()
	svc := startService(t, dataDir, "--instance-id", "feed-restart")

	sub := subscribeFeed(t, svc.feedURL("from=start"), nil, true)
	a, err := dial(t, svc.wsURL(), "restart-a")
	if err != nil {
		t.Fatal(err)
	}
	before := sub.until(t, "connect of a", eventOf(schemas.TypeConnected, a.id))
	last := before[len(before)-1]

	svc.cmd.Process.Signal(syscall.SIGTERM)
	if ce := sub.closeFrame(t); ce.Code != socket.CodeGoingAway {
		t.Errorf("feed closed with %d %q at SIGTERM, want %d", ce.Code, ce.Reason, socket.CodeGoingAway)
	}
	select {
	case <-svc.done:
	case <-time.After(feedTimeout):
		t.Fatalf("wsm did not stop within %v of SIGTERM", feedTimeout)
	}

	svc2 := startService(t, dataDir, "--instance-id", "feed-restart")
	b, err := dial(t, svc2.wsURL(), "restart-b")
	if err != nil {
		t.Fatal(err)
	}
	resumed := subscribeFeed(t, svc2.feedURL("cursor="+url.QueryEscape(last.cursor)), nil, true)
	after := resumed.until(t, "connect of b", eventOf(schemas.TypeConnected, b.id))

	if !slices.ContainsFunc(after, eventOf(schemas.TypeDisconnected, a.id)) {
		t.Errorf("resumed feed lacks the disconnect of %s from the drain", a.id)
	}
	checkSuffix(t, replayIDs(replay(t, dataDir)), last.event.ID(), frameIDs(after))
	t.Logf("%d frames after the restart's cursor", len(after))
}

func TestFeedFilters(t *testing.T) {
	if testing.Short() {
		t.Skip("starts a process")
	}
	svc := startService(t, t.TempDir(), "--instance-id", "feed-filter")
	alice, err := dial(t, svc.wsURL(), "alice")
	if err != nil {
		t.Fatal(err)
	}
	bob, err := dial(t, svc.wsURL(), "bob")
	if err != nil {
		t.Fatal(err)
	}
	bob.conn.WriteClose(1000, nil)
	// The marker connects last, so every filter that matches it has seen
	// all the events above when it arrives.
	marker, err := dial(t, svc.wsURL(), "alice")
	if err != nil {
		t.Fatal(err)
	}

	type want struct{ typ, subject string }
	tests := []struct {
		name  string
		query string
		want  []want
	}{
		{"user", "user=alice", []want{{schemas.TypeConnected, alice.id}, {schemas.TypeConnected, marker.id}}},
		{"user and type", "user=bob&type=connection.disconnected&type=connection.connected", []want{{schemas.TypeConnected, bob.id}, {schemas.TypeDisconnected, bob.id}}},
		{"subject", "subject=" + bob.id, []want{{schemas.TypeConnected, bob.id}, {schemas.TypeDisconnected, bob.id}}},
		{"instance and type", "instance=feed-filter&type=" + url.QueryEscape(schemas.TypeConnected),
			[]want{{schemas.TypeConnected, alice.id}, {schemas.TypeConnected, bob.id}, {schemas.TypeConnected, marker.id}}},
		{"other instance", "instance=elsewhere", nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			sub := subscribeFeed(t, svc.feedURL("from=start&"+tt.query), nil, true)
			if len(tt.want) == 0 {
				select {
				case f := <-sub.frames:
					t.Errorf("got %s %s, want no frame", f.event.Type(), f.event.Subject())
				case <-time.After(500 * time.Millisecond):
				}
				return
			}
			last := tt.want[len(tt.want)-1]
			frames := sub.until(t, "the last expected event", eventOf(last.typ, last.subject))
			var got []want
			for _, f := range frames {
				got = append(got, want{f.event.Type(), f.event.Subject()})
			}
			if !slices.Equal(got, tt.want) {
				t.Errorf("frames %v, want %v", got, tt.want)
			}
		})
	}
}

// smallReceiveBuffer makes connections with a receive buffer of a few KiB,
// so a client that does not read stalls the server's writes soon.
func smallReceiveBuffer() *net.Dialer {
	return &net.Dialer{Control: func(_, _ string, c syscall.RawConn) error {
		var serr error
		err := c.Control(func(fd uintptr) {
			serr = syscall.SetsockoptInt(int(fd), syscall.SOL_SOCKET, syscall.SO_RCVBUF, 4096)
		})
		return errors.Join(err, serr)
	}}
}

func TestFeedClosesSlowSubscriber(t *testing.T) {
	if testing.Short() {
		t.Skip("starts a process")
	}
	svc := startService(t, t.TempDir(), "--feed-buffer", "4", "--feed-slow-timeout", "300ms", "--feed-socket-buffer", "4096")
	fast := subscribeFeed(t, svc.feedURL("type=connection.connected"), nil, true)
	slow := subscribeFeed(t, svc.feedURL(""), smallReceiveBuffer(), false)

	// Clients connect until the feed closes the slow subscriber, which
	// reads nothing. The fast one receives every connect meanwhile.
	var connected int
	for !stderrContains(svc, "slow subscriber") {
		if connected == 500 {
			t.Fatalf("slow subscriber still open after %d connects", connected)
		}
		c, err := dial(t, svc.wsURL(), "slow-test")
		if err != nil {
			t.Fatal(err)
		}
		connected++
		fast.until(t, "connect of "+c.id, eventOf(schemas.TypeConnected, c.id))
		c.conn.WriteClose(1000, nil)
	}

	go slow.conn.ReadLoop()
	ce := slow.closeFrame(t)
	if ce.Code != socket.CodePolicyViolation {
		t.Errorf("slow subscriber closed with %d, want %d", ce.Code, socket.CodePolicyViolation)
	}
	if !strings.HasPrefix(string(ce.Reason), "slow subscriber: ") {
		t.Errorf("close reason %q, want it to start with %q", ce.Reason, "slow subscriber: ")
	}

	c, err := dial(t, svc.wsURL(), "slow-test")
	if err != nil {
		t.Fatal(err)
	}
	fast.until(t, "connect after the slow close", eventOf(schemas.TypeConnected, c.id))
	t.Logf("slow subscriber closed after %d connects", connected)
}

package socket

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/golang-jwt/jwt/v5"

	"github.com/virtufin/websocketmanager/eventlog"
	"github.com/virtufin/websocketmanager/schemas"
)

func TestFeedRejectsBeforeUpgrade(t *testing.T) {
	env := newFeedEnv(t, FeedConfig{})
	scoped := feedToken(t, "operator", DefaultFeedScope)
	expired := makeToken(t, jwt.SigningMethodHS256, testSecret, jwt.MapClaims{
		"sub": "operator", "exp": time.Now().Add(-time.Minute).Unix(), "scope": DefaultFeedScope,
	})
	otherKey := makeToken(t, jwt.SigningMethodHS256, []byte("another-secret-0123456789abcdef!"), jwt.MapClaims{
		"sub": "operator", "exp": time.Now().Add(time.Hour).Unix(), "scope": DefaultFeedScope,
	})

	tests := []struct {
		name      string
		query     string
		header    http.Header
		status    int
		challenge string // prefix of WWW-Authenticate, empty for none
	}{
		{"no token", "", feedHeader(""), http.StatusUnauthorized, `Bearer realm="wsm"`},
		{"garbage token", "", feedHeader("not-a-jwt"), http.StatusUnauthorized, `Bearer realm="wsm", error="invalid_token"`},
		{"other key", "", feedHeader(otherKey), http.StatusUnauthorized, `Bearer realm="wsm", error="invalid_token"`},
		{"expired", "", feedHeader(expired), http.StatusUnauthorized, `Bearer realm="wsm", error="invalid_token"`},
		{"wrong API token", "", feedHeader(testAPIToken + "x"), http.StatusUnauthorized, `Bearer realm="wsm", error="invalid_token"`},
		{"client token without scope", "", feedHeader(feedToken(t, "alice", nil)), http.StatusForbidden, `Bearer realm="wsm", error="insufficient_scope"`},
		{"other scopes", "", feedHeader(feedToken(t, "alice", "events:write profile")), http.StatusForbidden, `Bearer realm="wsm", error="insufficient_scope"`},
		{"scope array without it", "", feedHeader(feedToken(t, "alice", []string{"profile"})), http.StatusForbidden, `Bearer realm="wsm", error="insufficient_scope"`},
		{"no subprotocol", "", http.Header{"Authorization": {"Bearer " + scoped}}, http.StatusBadRequest, ""},
		{"avro only", "", http.Header{"Authorization": {"Bearer " + scoped}, "Sec-WebSocket-Protocol": {"cloudevents.avro"}}, http.StatusBadRequest, ""},
		{"unknown parameter", "userId=u1", feedHeader(scoped), http.StatusBadRequest, ""},
		{"unknown type", "type=connection.opened", feedHeader(scoped), http.StatusBadRequest, ""},
		{"published-only type", "type=message.received", feedHeader(scoped), http.StatusBadRequest, ""},
		{"empty subject", "subject=", feedHeader(scoped), http.StatusBadRequest, ""},
		{"bad cursor", "cursor=%21%21", feedHeader(scoped), http.StatusBadRequest, ""},
		{"cursor and from", "cursor=&from=start", feedHeader(scoped), http.StatusBadRequest, ""},
		{"bad from", "from=yesterday", feedHeader(scoped), http.StatusBadRequest, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			status, challenge := httpStatus(t, env, tt.query, tt.header)
			if status != tt.status {
				t.Errorf("status %d, want %d", status, tt.status)
			}
			if !strings.HasPrefix(challenge, tt.challenge) || (tt.challenge == "" && challenge != "") {
				t.Errorf("WWW-Authenticate %q, want it to start with %q", challenge, tt.challenge)
			}
		})
	}
	if n := env.feed.Count(); n != 0 {
		t.Errorf("%d subscribers after rejections, want 0", n)
	}
}

func TestFeedAcceptsTokens(t *testing.T) {
	env := newFeedEnv(t, FeedConfig{})
	tests := []struct {
		name   string
		query  string
		header http.Header
	}{
		{"scope string", "", feedHeader(feedToken(t, "op", "profile events:read"))},
		{"scope array", "", feedHeader(feedToken(t, "op", []string{"profile", DefaultFeedScope}))},
		{"API token", "", feedHeader(testAPIToken)},
		{"query token", AccessTokenParam + "=" + feedToken(t, "op", DefaultFeedScope), feedHeader("")},
		{"query API token", AccessTokenParam + "=" + testAPIToken, feedHeader("")},
		{"second protocol line", "", http.Header{
			"Authorization":          {"Bearer " + testAPIToken},
			"Sec-WebSocket-Protocol": {"chat, cloudevents.avro", FeedSubprotocol},
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			resp := handshake(t, env, tt.query, tt.header)
			if resp.StatusCode != http.StatusSwitchingProtocols {
				t.Fatalf("status %d, want 101", resp.StatusCode)
			}
			if got := resp.Header.Get("Sec-WebSocket-Protocol"); got != FeedSubprotocol {
				t.Errorf("Sec-WebSocket-Protocol %q, want %q", got, FeedSubprotocol)
			}
		})
	}
}

func TestFeedFramesAreStoredEvents(t *testing.T) {
	env := newFeedEnv(t, FeedConfig{})
	c := dialFeed(t, env, "")
	waitFor(t, waitTimeout, "the subscriber to register", func() bool { return env.feed.Count() == 1 })
	if got := c.socket.SubProtocol(); got != FeedSubprotocol {
		t.Errorf("subprotocol %q, want %q", got, FeedSubprotocol)
	}
	// The feed discards what a subscriber sends.
	if err := c.socket.WriteString("hello"); err != nil {
		t.Fatal(err)
	}

	hb := env.heartbeat("pod-a")
	conn := env.connect("pod-a", "u1", 1)[0]
	frames := c.take(t, 2)

	stream := eventlog.StreamName("pod-a", "inc")
	stored := map[string]map[string]any{}
	_, err := env.log.Replay(context.Background(), nil, func(r eventlog.Record) error {
		raw, err := r.Event.MarshalJSON()
		if err != nil {
			return err
		}
		var m map[string]any
		if err := json.Unmarshal(raw, &m); err != nil {
			return err
		}
		stored[r.Event.ID()] = m
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	for i, want := range []struct {
		id  string
		seq uint64
	}{{hb.ID(), 1}, {conn.ID(), 2}} {
		f := frames[i]
		if f.event.ID() != want.id {
			t.Fatalf("frame %d is %s, want %s", i, f.event.ID(), want.id)
		}
		var m map[string]any
		if err := json.Unmarshal(f.raw, &m); err != nil {
			t.Fatal(err)
		}
		if m[CursorExtension] != f.cursor || f.cursor == "" {
			t.Errorf("frame %d: %s = %v, want the cursor string", i, CursorExtension, m[CursorExtension])
		}
		delete(m, CursorExtension)
		if !maps.EqualFunc(m, stored[want.id], func(a, b any) bool { return fmt.Sprint(a) == fmt.Sprint(b) }) {
			t.Errorf("frame %d without %s:\n%v\nwant the stored event:\n%v", i, CursorExtension, m, stored[want.id])
		}
		if got := m[schemas.SequenceExtension]; got != schemas.FormatSequence(want.seq) {
			t.Errorf("frame %d: sequence %v, want %s", i, got, schemas.FormatSequence(want.seq))
		}
		cur, err := eventlog.ParseCursor(f.cursor)
		if err != nil {
			t.Fatalf("frame %d: cursor: %v", i, err)
		}
		if got := cur[stream]; got != want.seq {
			t.Errorf("frame %d: cursor at %d in %s, want %d", i, got, stream, want.seq)
		}
		if err := schemas.Validate(&f.event); err != nil {
			t.Errorf("frame %d: %v", i, err)
		}
	}
}

func TestFeedStartsNowByDefault(t *testing.T) {
	env := newFeedEnv(t, FeedConfig{})
	env.connect("pod-a", "u1", 3)

	c := dialFeed(t, env, "")
	waitFor(t, waitTimeout, "the subscriber to register", func() bool { return env.feed.Count() == 1 })
	c.quiet(t, 100*time.Millisecond)
	later := env.connect("pod-a", "u1", 1)
	if got := frameIDs(c.take(t, 1)); !slices.Equal(got, eventIDs(later)) {
		t.Errorf("frames %v, want only the event appended after subscribing %v", got, eventIDs(later))
	}
}

func TestFeedResumesFromCursor(t *testing.T) {
	env := newFeedEnv(t, FeedConfig{})
	for range 3 {
		env.connect("pod-a", "u1", 1)
		env.connect("pod-b", "u2", 1)
	}
	first := dialFeed(t, env, "from=start")
	got := first.take(t, 6)
	if want := env.replayIDs(); !slices.Equal(frameIDs(got), want) {
		t.Fatalf("frames from the start %v, want the replay order %v", frameIDs(got), want)
	}
	first.socket.WriteClose(1000, nil)

	for range 3 {
		env.connect("pod-b", "u2", 1)
		env.connect("pod-a", "u1", 1)
	}
	all := env.replayIDs()

	tests := []struct {
		name  string
		after int // index of the frame whose cursor is used
	}{
		{"last frame", 5},
		{"middle frame", 2},
		{"first frame", 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := dialFeed(t, env, FeedCursorParam+"="+url.QueryEscape(got[tt.after].cursor))
			want := all[tt.after+1:]
			if ids := frameIDs(c.take(t, len(want))); !slices.Equal(ids, want) {
				t.Errorf("resumed frames %v, want %v", ids, want)
			}
			c.quiet(t, 100*time.Millisecond)
		})
	}

	t.Run("empty cursor", func(t *testing.T) {
		c := dialFeed(t, env, FeedCursorParam+"=")
		if ids := frameIDs(c.take(t, len(all))); !slices.Equal(ids, all) {
			t.Errorf("frames %v, want the whole log %v", ids, all)
		}
	})
}

func TestFeedFilteredEventsAdvanceCursor(t *testing.T) {
	env := newFeedEnv(t, FeedConfig{})
	stream := eventlog.StreamName("pod-a", "inc")
	env.heartbeat("pod-a")
	env.connect("pod-a", "u1", 1)
	env.heartbeat("pod-a")

	c := dialFeed(t, env, "from=start&type=connection.connected")
	f := c.take(t, 1)[0]
	if cur, _ := eventlog.ParseCursor(f.cursor); cur[stream] != 2 {
		t.Errorf("first frame's cursor at %d, want 2", cur[stream])
	}

	env.heartbeat("pod-a")
	next := env.connect("pod-a", "u1", 1)[0]
	g := c.take(t, 1)[0]
	if g.event.ID() != next.ID() {
		t.Fatalf("second frame %s, want %s", g.event.ID(), next.ID())
	}
	if cur, _ := eventlog.ParseCursor(g.cursor); cur[stream] != 5 {
		t.Errorf("second frame's cursor at %d, want 5: the heartbeats before it count", cur[stream])
	}

	// A subscriber resuming from the first frame without the filter gets
	// the heartbeats after it, and not the one filtered out before it.
	r := dialFeed(t, env, "cursor="+url.QueryEscape(f.cursor))
	if got := r.take(t, 3); got[0].event.Type() != schemas.TypeHeartbeat || got[2].event.ID() != next.ID() {
		t.Errorf("resumed frames %v, want heartbeat, heartbeat, %s", frameIDs(got), next.ID())
	}
}

func TestFeedFilters(t *testing.T) {
	env := newFeedEnv(t, FeedConfig{})
	hbA := env.heartbeat("pod-a")
	a1 := env.connect("pod-a", "u1", 2)
	a2 := env.connect("pod-a", "u2", 1)
	b1 := env.connect("pod-b", "u1", 1)
	hbB := env.heartbeat("pod-b")

	ids := func(groups ...[]string) []string { return slices.Concat(groups...) }
	one := func(evs ...string) []string { return evs }
	tests := []struct {
		name  string
		query string
		want  []string
	}{
		{"short type", "type=connection.connected", ids(eventIDs(a1), eventIDs(a2), eventIDs(b1))},
		{"full type", "type=" + schemas.TypeHeartbeat, one(hbA.ID(), hbB.ID())},
		{"comma types", "type=instance.heartbeat,connection.connected", env.replayIDs()},
		{"repeated types", "type=instance.heartbeat&type=connection.connected", env.replayIDs()},
		{"subject", "subject=" + url.QueryEscape(a2[0].Subject()), eventIDs(a2)},
		{"heartbeat subject", "subject=pod-b", one(hbB.ID())},
		{"user", "user=u1", ids(eventIDs(a1), eventIDs(b1))},
		{"two users", "user=u1&user=u2", ids(eventIDs(a1), eventIDs(a2), eventIDs(b1))},
		{"instance", "instance=pod-b", ids(eventIDs(b1), one(hbB.ID()))},
		{"instance and type", "instance=pod-a&type=instance.heartbeat", one(hbA.ID())},
		{"user and instance", "user=u1&instance=pod-b", eventIDs(b1)},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := dialFeed(t, env, "from=start&"+tt.query)
			if got := frameIDs(c.take(t, len(tt.want))); !slices.Equal(got, tt.want) {
				t.Errorf("frames %v, want %v", got, tt.want)
			}
			c.quiet(t, 100*time.Millisecond)
		})
	}
}

func TestFeedClosesSlowSubscriber(t *testing.T) {
	env := newFeedEnv(t, FeedConfig{Buffer: 4, SocketBuffer: 4096, SlowTimeout: 300 * time.Millisecond})
	fast := dialFeed(t, env, "")
	slow, err := dialFeedWith(env.url(""), feedHeader(testAPIToken), smallBufferDialer())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { slow.socket.NetConn().Close() })
	waitFor(t, waitTimeout, "both subscribers to register", func() bool { return env.feed.Count() == 2 })

	// The slow one reads nothing until the feed gives up on it.
	sent := 0
	deadline := time.Now().Add(waitTimeout)
	// Once closed, the slow subscriber leaves as soon as its close frame
	// fits into the socket buffers.
	for env.closingSubscribers() == 0 && env.feed.Count() == 2 {
		if time.Now().After(deadline) || sent >= 5000 {
			t.Fatalf("slow subscriber still open after %d events", sent)
		}
		env.connect("pod-a", "u1", 20)
		sent += 20
		fast.take(t, 20)
	}

	go slow.socket.ReadLoop()
	ce := slow.closeFrame(t)
	if ce.Code != CodePolicyViolation {
		t.Errorf("close code %d, want %d", ce.Code, CodePolicyViolation)
	}
	if want := "slow subscriber: 4 frames waiting for 300ms"; string(ce.Reason) != want {
		t.Errorf("close reason %q, want %q", ce.Reason, want)
	}

	// The other subscriber keeps its feed.
	waitFor(t, waitTimeout, "the slow subscriber to leave", func() bool { return env.feed.Count() == 1 })
	after := env.connect("pod-a", "u1", 1)
	if got := frameIDs(fast.take(t, 1)); !slices.Equal(got, eventIDs(after)) {
		t.Errorf("fast subscriber got %v after the close, want %v", got, eventIDs(after))
	}
	t.Logf("slow subscriber closed after %d events", sent)
}

func TestFeedCatchUpIsNotSlow(t *testing.T) {
	env := newFeedEnv(t, FeedConfig{Buffer: 2, SlowTimeout: time.Second})
	const n = 600
	for range n / 100 {
		env.connect("pod-a", "u1", 100)
	}
	c := dialFeed(t, env, "from=start")
	if got := c.take(t, n); !slices.Equal(frameIDs(got), env.replayIDs()) {
		t.Errorf("caught-up frames are not the log in replay order")
	}
	more := env.connect("pod-a", "u1", 1)
	if got := frameIDs(c.take(t, 1)); !slices.Equal(got, eventIDs(more)) {
		t.Errorf("live frame %v, want %v", got, eventIDs(more))
	}
}

// failingOnceLog fails its first Follow after delivering two records, as a
// store that drops out in the middle of a read.
type failingOnceLog struct {
	*eventlog.Log
	calls atomic.Int32
}

var errStoreDown = errors.New("state store unavailable")

func (l *failingOnceLog) Follow(ctx context.Context, from eventlog.Cursor, fn func(eventlog.Record) error) (eventlog.Cursor, error) {
	if l.calls.Add(1) > 1 {
		return l.Log.Follow(ctx, from, fn)
	}
	delivered := 0
	cur, err := l.Log.Follow(ctx, from, func(r eventlog.Record) error {
		if delivered == 2 {
			return errStoreDown
		}
		delivered++
		return fn(r)
	})
	if errors.Is(err, errStoreDown) || err == nil {
		return cur, errStoreDown
	}
	return cur, err
}

func TestFeedRetriesFailedRead(t *testing.T) {
	store := newFeedEnv(t, FeedConfig{}).store
	var wrapped *failingOnceLog
	env := newFeedEnvOn(t, store, FeedConfig{}, func(l *eventlog.Log) FeedLog {
		wrapped = &failingOnceLog{Log: l}
		return wrapped
	})
	env.connect("pod-a", "u1", 5)

	c := dialFeed(t, env, "from=start")
	if got := frameIDs(c.take(t, 5)); !slices.Equal(got, env.replayIDs()) {
		t.Errorf("frames %v, want every event once in order %v", got, env.replayIDs())
	}
	c.quiet(t, 200*time.Millisecond)
	if calls := wrapped.calls.Load(); calls < 2 {
		t.Errorf("%d Follow calls, want a retry after the failure", calls)
	}
}

func TestFeedShutdown(t *testing.T) {
	env := newFeedEnv(t, FeedConfig{})
	a := dialFeed(t, env, "")
	b := dialFeed(t, env, "type=connection.connected")
	waitFor(t, waitTimeout, "both subscribers to register", func() bool { return env.feed.Count() == 2 })

	ctx, cancel := context.WithTimeout(context.Background(), waitTimeout)
	defer cancel()
	if err := env.feed.Shutdown(ctx); err != nil {
		t.Fatalf("Shutdown = %v, want nil", err)
	}
	for i, c := range []*feedClient{a, b} {
		ce := c.closeFrame(t)
		if ce.Code != CodeGoingAway || string(ce.Reason) != feedShutdownText {
			t.Errorf("subscriber %d closed with %d %q, want %d %q", i, ce.Code, ce.Reason, CodeGoingAway, feedShutdownText)
		}
	}
	if n := env.feed.Count(); n != 0 {
		t.Errorf("%d subscribers after Shutdown, want 0", n)
	}
	if status, _ := httpStatus(t, env, "", feedHeader(testAPIToken)); status != http.StatusServiceUnavailable {
		t.Errorf("subscription after Shutdown: status %d, want 503", status)
	}
	counts := env.subscriberCounts()
	if want := []int{1, 2, 1, 0}; !slices.Equal(counts, want) {
		t.Errorf("OnSubscribers reported %v, want %v", counts, want)
	}
}

func TestFeedMaxSubscribers(t *testing.T) {
	env := newFeedEnv(t, FeedConfig{MaxSubscribers: 1})
	dialFeed(t, env, "")
	waitFor(t, waitTimeout, "the subscriber to register", func() bool { return env.feed.Count() == 1 })
	if status, _ := httpStatus(t, env, "", feedHeader(testAPIToken)); status != http.StatusServiceUnavailable {
		t.Errorf("second subscription: status %d, want 503", status)
	}
}

func TestFeedDropsSilentSubscriber(t *testing.T) {
	env := newFeedEnv(t, FeedConfig{PingInterval: 30 * time.Millisecond, PongTimeout: 30 * time.Millisecond})
	// Without its read loop the client never sends a pong.
	c, err := dialFeedWith(env.url(""), feedHeader(testAPIToken), nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.socket.NetConn().Close() })
	waitFor(t, waitTimeout, "the subscriber to register", func() bool { return env.feed.Count() == 1 })
	waitFor(t, waitTimeout, "the silent subscriber to be dropped", func() bool { return env.feed.Count() == 0 })
}

func TestFeedConfigValidate(t *testing.T) {
	tests := []struct {
		name string
		cfg  FeedConfig
		ok   bool
	}{
		{"zero", FeedConfig{}, true},
		{"negative buffer", FeedConfig{Buffer: -1}, false},
		{"negative socket buffer", FeedConfig{SocketBuffer: -1}, false},
		{"negative ping", FeedConfig{PingInterval: -time.Second}, false},
		{"two scopes", FeedConfig{Scope: "events:read admin"}, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := tt.cfg.Validate()
			if got := err == nil; got != tt.ok {
				t.Fatalf("Validate = %v, want ok %v", err, tt.ok)
			}
			if err != nil && !errors.Is(err, ErrInvalidConfig) {
				t.Errorf("Validate = %v, want it to wrap ErrInvalidConfig", err)
			}
		})
	}
}

func TestTokenScopes(t *testing.T) {
	tests := []struct {
		name  string
		scope any
		want  []string
		ok    bool
	}{
		{"none", nil, nil, true},
		{"string", "a b  events:read", []string{"a", "b", "events:read"}, true},
		{"array", []string{"events:read"}, []string{"events:read"}, true},
		{"number", 7, nil, false},
		{"mixed array", []any{"a", 1}, nil, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := tokenScopes(feedToken(t, "op", tt.scope))
			if (err == nil) != tt.ok {
				t.Fatalf("tokenScopes error %v, want ok %v", err, tt.ok)
			}
			if err != nil && !errors.Is(err, ErrTokenInvalid) {
				t.Errorf("tokenScopes error %v, want it to wrap ErrTokenInvalid", err)
			}
			if !slices.Equal(got, tt.want) {
				t.Errorf("scopes %q, want %q", got, tt.want)
			}
		})
	}
}

// handshake sends a WebSocket handshake and returns the response, closing
// the connection at cleanup.
func handshake(t *testing.T, env *feedEnv, query string, header http.Header) *http.Response {
	t.Helper()
	req, err := http.NewRequest(http.MethodGet, env.http.URL+"/events?"+query, nil)
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
	t.Cleanup(func() { resp.Body.Close() })
	return resp
}

// FuzzParseFeedQuery feeds arbitrary query strings: parsing never panics,
// every error wraps ErrInvalidFeedQuery, and an accepted filter lists only
// log event types.
func FuzzParseFeedQuery(f *testing.F) {
	f.Add("type=connection.connected,instance.heartbeat&user=u1")
	f.Add("cursor=eyJwb2QtYS9pbmMiOjJ9&subject=c1&instance=pod-a")
	f.Add("from=start&type=" + schemas.TypeReclaimed)
	f.Add("cursor=&from=now&access_token=x")
	f.Fuzz(func(t *testing.T, raw string) {
		values, err := url.ParseQuery(raw)
		if err != nil {
			return
		}
		q, err := parseFeedQuery(values)
		if err != nil {
			if !errors.Is(err, ErrInvalidFeedQuery) {
				t.Fatalf("parseFeedQuery(%q) = %v, want it to wrap ErrInvalidFeedQuery", raw, err)
			}
			return
		}
		for typ := range q.filter.types {
			if !slices.Contains(schemas.Types, typ) {
				t.Fatalf("parseFeedQuery(%q) accepted type %q, which the log never holds", raw, typ)
			}
		}
	})
}

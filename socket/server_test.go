package socket

import (
	"context"
	"errors"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/golang-jwt/jwt/v5"
	"github.com/lxzan/gws"

	"github.com/virtufin/websocketmanager/schemas"
)

func TestWelcomeAfterConnectedEvent(t *testing.T) {
	ts := newTestServer(t, baseConfig(), AuthConfig{}, nil)
	client := dialGWS(t, ts, bearer(userToken(t, "alice")))

	w := client.welcome(t)
	if w.InstanceID != testInstance {
		t.Errorf("welcome instanceId: got %q, want %q", w.InstanceID, testInstance)
	}
	if w.Incarnation != testIncarnation {
		t.Errorf("welcome incarnation: got %q, want %q", w.Incarnation, testIncarnation)
	}

	connected, disconnected := ts.app.lifecycle(t, w.ConnectionID)
	if len(connected) != 1 {
		t.Fatalf("connected events when the welcome arrived: got %d, want 1", len(connected))
	}
	if len(disconnected) != 0 {
		t.Errorf("disconnected events of an open connection: got %d, want 0", len(disconnected))
	}

	got := connected[0]
	if got.UserID != "alice" {
		t.Errorf("connected userId: got %q, want alice", got.UserID)
	}
	if got.UserAgent != "wsm-test-client" {
		t.Errorf("connected userAgent: got %q, want wsm-test-client", got.UserAgent)
	}
	if !strings.HasPrefix(got.RemoteAddr, "127.0.0.1:") {
		t.Errorf("connected remoteAddr: got %q, want 127.0.0.1:<port>", got.RemoteAddr)
	}
	if got.Incarnation != testIncarnation {
		t.Errorf("connected incarnation: got %q, want %q", got.Incarnation, testIncarnation)
	}

	info, ok := ts.srv.Lookup(w.ConnectionID)
	if !ok {
		t.Fatalf("Lookup(%s): not found", w.ConnectionID)
	}
	if info.UserID != "alice" {
		t.Errorf("Lookup userId: got %q, want alice", info.UserID)
	}
	if n := ts.srv.Count(); n != 1 {
		t.Errorf("Count: got %d, want 1", n)
	}
	if list := ts.srv.Connections(); len(list) != 1 || list[0].ID != w.ConnectionID {
		t.Errorf("Connections: got %+v, want only %s", list, w.ConnectionID)
	}
}

func TestAnonymousAccess(t *testing.T) {
	ts := newTestServer(t, baseConfig(), AuthConfig{AllowAnonymous: true}, nil)
	client := dialGWS(t, ts, nil)

	w := client.welcome(t)
	connected, _ := ts.app.lifecycle(t, w.ConnectionID)
	if len(connected) != 1 {
		t.Fatalf("connected events: got %d, want 1", len(connected))
	}
	if connected[0].UserID != "" {
		t.Errorf("anonymous userId: got %q, want empty", connected[0].UserID)
	}
}

func TestAccessTokenQueryParameter(t *testing.T) {
	ts := newTestServer(t, baseConfig(), AuthConfig{}, nil)

	socket, resp, err := gws.NewClient(&gwsClient{messages: make(chan clientMessage, 8), closed: make(chan error, 1)},
		&gws.ClientOption{Addr: ts.wsURL(AccessTokenParam + "=" + userToken(t, "dora"))})
	if err != nil {
		t.Fatalf("dial with access_token: %v", err)
	}
	_ = resp.Body.Close()
	t.Cleanup(func() { _ = socket.NetConn().Close() })

	waitFor(t, waitTimeout, "dora's connection", func() bool { return ts.srv.Count() == 1 })
	if list := ts.srv.Connections(); list[0].UserID != "dora" {
		t.Errorf("userId from the query token: got %q, want dora", list[0].UserID)
	}
}

func TestUnauthorizedUpgrade(t *testing.T) {
	expired := makeToken(t, jwt.SigningMethodHS256, testSecret, jwt.MapClaims{"sub": "u", "exp": time.Now().Add(-time.Minute).Unix()})
	wrongKey := makeToken(t, jwt.SigningMethodHS256, []byte("another-secret-another-secret-32"), jwt.MapClaims{"sub": "u", "exp": time.Now().Add(time.Hour).Unix()})
	algNone := makeToken(t, jwt.SigningMethodNone, jwt.UnsafeAllowNoneSignatureType, jwt.MapClaims{"sub": "u", "exp": time.Now().Add(time.Hour).Unix()})
	noSubject := makeToken(t, jwt.SigningMethodHS256, testSecret, jwt.MapClaims{"exp": time.Now().Add(time.Hour).Unix()})

	tests := []struct {
		name      string
		header    http.Header
		target    string
		wantError error
	}{
		{"no token", nil, "/ws", ErrTokenMissing},
		{"expired", bearer(expired), "/ws", ErrTokenExpired},
		{"wrong signature", bearer(wrongKey), "/ws", ErrTokenInvalid},
		{"alg none", bearer(algNone), "/ws", ErrTokenInvalid},
		{"malformed", bearer("not.a.jwt"), "/ws", ErrTokenInvalid},
		{"no subject", bearer(noSubject), "/ws", ErrTokenInvalid},
		{"basic scheme", http.Header{"Authorization": []string{"Basic dXNlcjpwYXNz"}}, "/ws", ErrTokenInvalid},
		{"expired in query", nil, "/ws?" + AccessTokenParam + "=" + expired, ErrTokenExpired},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ts := newTestServer(t, baseConfig(), AuthConfig{}, nil)

			resp, body := upgradeRequest(t, ts, tt.target, tt.header)
			if resp.StatusCode != http.StatusUnauthorized {
				t.Fatalf("status: got %d, want 401", resp.StatusCode)
			}
			if got := resp.Header.Get("Content-Type"); got != "application/json" {
				t.Errorf("Content-Type: got %q, want application/json", got)
			}
			if !strings.HasPrefix(resp.Header.Get("WWW-Authenticate"), "Bearer") {
				t.Errorf("WWW-Authenticate: got %q, want a Bearer challenge", resp.Header.Get("WWW-Authenticate"))
			}
			if body.Error != "unauthorized" {
				t.Errorf("body error: got %q, want unauthorized", body.Error)
			}
			if !strings.Contains(body.Message, tt.wantError.Error()) {
				t.Errorf("body message: got %q, want it to contain %q", body.Message, tt.wantError.Error())
			}
			if n := len(ts.app.snapshot()); n != 0 {
				t.Errorf("events after a 401: got %d, want 0", n)
			}
		})
	}
}

func TestCloseClientFrame(t *testing.T) {
	tests := []struct {
		name string
		code uint16
	}{
		{"normal closure", 1000},
		{"application code", 4001},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ts := newTestServer(t, baseConfig(), AuthConfig{}, nil)
			rc, w := dialRaw(t, ts, bearer(userToken(t, "erin")))

			rc.writeFrame(t, 0x88, closePayload(tt.code, "bye"), true)
			res := rc.readUntilClose(t, 100)

			if !res.gotFrame {
				t.Fatalf("client got no close frame back")
			}
			if res.code != tt.code {
				t.Errorf("echoed close code: got %d, want %d", res.code, tt.code)
			}
			d := ts.app.waitDisconnected(t, w.ConnectionID)
			checkDisconnected(t, d, int(tt.code), schemas.ReasonClientClosed)
			if d.Detail != "bye" {
				t.Errorf("detail: got %q, want the client's text bye", d.Detail)
			}
		})
	}
}

func TestCloseConnectionLost(t *testing.T) {
	tests := []struct {
		name  string
		reset bool
	}{
		{"FIN", false},
		{"RST", true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ts := newTestServer(t, baseConfig(), AuthConfig{}, nil)
			rc, w := dialRaw(t, ts, bearer(userToken(t, "frank")))

			if tt.reset {
				// Linger 0 makes Close send RST instead of FIN.
				if err := rc.conn.(*net.TCPConn).SetLinger(0); err != nil {
					t.Fatalf("SetLinger: %v", err)
				}
			}
			if err := rc.conn.Close(); err != nil {
				t.Fatalf("close TCP connection: %v", err)
			}

			d := ts.app.waitDisconnected(t, w.ConnectionID)
			checkDisconnected(t, d, 1006, schemas.ReasonConnectionLost)
		})
	}
}

func TestClosePingTimeout(t *testing.T) {
	cfg := baseConfig()
	cfg.PingInterval = 100 * time.Millisecond
	cfg.PongTimeout = 100 * time.Millisecond
	ts := newTestServer(t, cfg, AuthConfig{}, nil)
	rc, w := dialRaw(t, ts, bearer(userToken(t, "gina")))

	// The raw client reads but never sends a pong.
	res := rc.readUntilClose(t, 100)

	if res.pings < 1 {
		t.Errorf("pings before the timeout: got %d, want at least 1", res.pings)
	}
	if res.gotFrame {
		t.Errorf("close frame after a ping timeout: got code %d, want none", res.code)
	}
	d := ts.app.waitDisconnected(t, w.ConnectionID)
	checkDisconnected(t, d, 1006, schemas.ReasonPingTimeout)
}

func TestKeepaliveWithPongs(t *testing.T) {
	cfg := baseConfig()
	cfg.PingInterval = 50 * time.Millisecond
	cfg.PongTimeout = 50 * time.Millisecond
	ts := newTestServer(t, cfg, AuthConfig{}, nil)
	rc, w := dialRaw(t, ts, bearer(userToken(t, "hank")))

	// Reply to every ping with a pong for several idle timeouts.
	pings := 0
	until := time.Now().Add(500 * time.Millisecond)
	for time.Now().Before(until) && pings < 100 {
		f, err := rc.readFrame(time.Until(until))
		if err != nil {
			break
		}
		if f.opcode == 0x9 {
			pings++
			rc.writeFrame(t, 0x8A, f.payload, true)
		}
	}

	if pings < 3 {
		t.Errorf("pings in 500ms at a 50ms interval: got %d, want at least 3", pings)
	}
	if _, ok := ts.srv.Lookup(w.ConnectionID); !ok {
		t.Errorf("connection answering pings was closed")
	}
}

func TestClientPingGetsPong(t *testing.T) {
	ts := newTestServer(t, baseConfig(), AuthConfig{}, nil)
	rc, _ := dialRaw(t, ts, bearer(userToken(t, "ivan")))

	rc.writeFrame(t, 0x89, []byte("are you there"), true)

	f, err := rc.readFrame(waitTimeout)
	if err != nil {
		t.Fatalf("read pong: %v", err)
	}
	if f.opcode != 0xA {
		t.Fatalf("opcode after a ping: got %#x, want pong 0xA", f.opcode)
	}
	if string(f.payload) != "are you there" {
		t.Errorf("pong payload: got %q, want the ping's payload", f.payload)
	}
}

func TestCloseReadLimit(t *testing.T) {
	cfg := baseConfig()
	cfg.ReadLimit = 1024
	ts := newTestServer(t, cfg, AuthConfig{}, nil)
	client := dialGWS(t, ts, bearer(userToken(t, "jane")))
	w := client.welcome(t)

	if err := client.socket.WriteMessage(gws.OpcodeBinary, make([]byte, 2048)); err != nil {
		t.Fatalf("write oversized message: %v", err)
	}

	if got := client.closeFrame(t).Code; got != 1009 {
		t.Errorf("close code seen by the client: got %d, want 1009", got)
	}
	d := ts.app.waitDisconnected(t, w.ConnectionID)
	checkDisconnected(t, d, 1009, schemas.ReasonMessageTooBig)
}

func TestCloseProtocolError(t *testing.T) {
	tests := []struct {
		name     string
		first    byte
		payload  []byte
		masked   bool
		wantCode uint16
	}{
		{"unmasked frame", 0x81, []byte("hello"), false, 1002},
		{"reserved opcode", 0x83, []byte("hello"), true, 1002},
		{"reserved bit", 0xC1, []byte("hello"), true, 1002},
		{"fragmented ping", 0x09, nil, true, 1002},
		{"close code 1005 on the wire", 0x88, closePayload(1005, ""), true, 1002},
		{"invalid UTF-8 text", 0x81, []byte{0xff, 0xfe}, true, 1007},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ts := newTestServer(t, baseConfig(), AuthConfig{}, nil)
			rc, w := dialRaw(t, ts, bearer(userToken(t, "kim")))

			rc.writeFrame(t, tt.first, tt.payload, tt.masked)
			res := rc.readUntilClose(t, 100)

			if !res.gotFrame {
				t.Fatalf("client got no close frame")
			}
			if res.code != tt.wantCode {
				t.Errorf("close code seen by the client: got %d, want %d", res.code, tt.wantCode)
			}
			d := ts.app.waitDisconnected(t, w.ConnectionID)
			checkDisconnected(t, d, int(tt.wantCode), schemas.ReasonProtocolError)
		})
	}
}

func TestCloseServerShutdown(t *testing.T) {
	ts := newTestServer(t, baseConfig(), AuthConfig{}, nil)
	client := dialGWS(t, ts, bearer(userToken(t, "liam")))
	w := client.welcome(t)

	ctx, cancel := context.WithTimeout(context.Background(), waitTimeout)
	defer cancel()
	if err := ts.srv.Shutdown(ctx, ServerShutdown("rolling update")); err != nil {
		t.Fatalf("Shutdown: %v", err)
	}

	// Shutdown returns only after the disconnected event is stored.
	_, disconnected := ts.app.lifecycle(t, w.ConnectionID)
	if len(disconnected) != 1 {
		t.Fatalf("disconnected events when Shutdown returned: got %d, want 1", len(disconnected))
	}
	checkDisconnected(t, disconnected[0], 1001, schemas.ReasonServerShutdown)

	frame := client.closeFrame(t)
	if frame.Code != 1001 {
		t.Errorf("close code seen by the client: got %d, want 1001", frame.Code)
	}
	if string(frame.Reason) != schemas.ReasonServerShutdown {
		t.Errorf("close text seen by the client: got %q, want %q", frame.Reason, schemas.ReasonServerShutdown)
	}

	resp, body := upgradeRequest(t, ts, "/ws", bearer(userToken(t, "liam")))
	if resp.StatusCode != http.StatusServiceUnavailable {
		t.Errorf("upgrade after Shutdown: got status %d, want 503", resp.StatusCode)
	}
	if body.Error != "unavailable" {
		t.Errorf("body error after Shutdown: got %q, want unavailable", body.Error)
	}
	if n := len(ts.app.snapshot()); n != 2 {
		t.Errorf("events after a rejected upgrade: got %d, want the 2 of the first connection", n)
	}

	if err := ts.srv.Shutdown(ctx, ServerShutdown("again")); err != nil {
		t.Errorf("second Shutdown: got %v, want nil", err)
	}
}

func TestShutdownContextEnds(t *testing.T) {
	app := &fakeAppender{hold: make(chan struct{})}
	ts := newTestServer(t, baseConfig(), AuthConfig{}, app)
	client := dialGWS(t, ts, bearer(userToken(t, "mona")))
	id := client.welcome(t).ConnectionID

	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	err := ts.srv.Shutdown(ctx, ServerShutdown(""))

	if !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("Shutdown while an append hangs: got %v, want context.DeadlineExceeded", err)
	}
	if err != nil && !strings.Contains(err.Error(), "1 connections still closing") {
		t.Errorf("Shutdown error: got %q, want it to count the connection still closing", err)
	}

	// The append goes on after Shutdown gave up waiting.
	close(app.hold)
	d := app.waitDisconnected(t, id)
	checkDisconnected(t, d, 1001, schemas.ReasonServerShutdown)
}

func TestShutdownRejectsUnknownReason(t *testing.T) {
	ts := newTestServer(t, baseConfig(), AuthConfig{}, nil)

	err := ts.srv.Shutdown(context.Background(), CloseReason{Code: 1001, Reason: "bored"})
	if !errors.Is(err, ErrInvalidReason) {
		t.Errorf("Shutdown with an unknown reason: got %v, want ErrInvalidReason", err)
	}
}

func TestCloseKick(t *testing.T) {
	ts := newTestServer(t, baseConfig(), AuthConfig{}, nil)
	client := dialGWS(t, ts, bearer(userToken(t, "nina")))
	w := client.welcome(t)

	if err := ts.srv.Kick(w.ConnectionID, "account suspended"); err != nil {
		t.Fatalf("Kick: %v", err)
	}

	frame := client.closeFrame(t)
	if frame.Code != DefaultKickCode {
		t.Errorf("close code seen by the client: got %d, want %d", frame.Code, DefaultKickCode)
	}
	if string(frame.Reason) != schemas.ReasonKicked {
		t.Errorf("close text seen by the client: got %q, want %q", frame.Reason, schemas.ReasonKicked)
	}
	d := ts.app.waitDisconnected(t, w.ConnectionID)
	checkDisconnected(t, d, int(DefaultKickCode), schemas.ReasonKicked)
	if d.Detail != "account suspended" {
		t.Errorf("detail: got %q, want the kick's detail", d.Detail)
	}

	if err := ts.srv.Kick(w.ConnectionID, ""); !errors.Is(err, ErrNotFound) {
		t.Errorf("Kick of a closed connection: got %v, want ErrNotFound", err)
	}
}

func TestKickCodeConfigurable(t *testing.T) {
	cfg := baseConfig()
	cfg.KickCode = 4403
	ts := newTestServer(t, cfg, AuthConfig{}, nil)
	client := dialGWS(t, ts, bearer(userToken(t, "omar")))
	w := client.welcome(t)

	if err := ts.srv.Kick(w.ConnectionID, ""); err != nil {
		t.Fatalf("Kick: %v", err)
	}

	if got := client.closeFrame(t).Code; got != 4403 {
		t.Errorf("close code seen by the client: got %d, want 4403", got)
	}
	d := ts.app.waitDisconnected(t, w.ConnectionID)
	checkDisconnected(t, d, 4403, schemas.ReasonKicked)
}

func TestCloseSlowConsumerQueueFull(t *testing.T) {
	cfg := baseConfig()
	cfg.SendQueue = 4
	ts := newTestServer(t, cfg, AuthConfig{}, nil)
	rc, w := dialRaw(t, ts, bearer(userToken(t, "pia")))

	// The client reads nothing while the server floods it. Small payloads
	// keep the kernel buffers from filling, so the queue limit trips first
	// and the close frame still fits into the socket.
	payload := []byte(strings.Repeat("x", 64))
	var sendErr error
	deadline := time.Now().Add(waitTimeout)
	for i := 0; i < 100_000 && sendErr == nil && time.Now().Before(deadline); i++ {
		sendErr = ts.srv.Send(w.ConnectionID, false, payload)
	}

	if !errors.Is(sendErr, ErrClosing) {
		t.Fatalf("Send error when the queue is full: got %v, want ErrClosing", sendErr)
	}
	if !errors.Is(sendErr, SlowConsumer("")) {
		t.Errorf("Send error when the queue is full: got %v, want the slow_consumer reason", sendErr)
	}

	d := ts.app.waitDisconnected(t, w.ConnectionID)
	checkDisconnected(t, d, 1008, schemas.ReasonSlowConsumer)

	res := rc.readUntilClose(t, 200_000)
	if !res.gotFrame {
		t.Fatalf("client got no close frame after %d messages", res.data)
	}
	if res.code != 1008 {
		t.Errorf("close code seen by the client: got %d, want 1008", res.code)
	}
	if res.text != schemas.ReasonSlowConsumer {
		t.Errorf("close text seen by the client: got %q, want %q", res.text, schemas.ReasonSlowConsumer)
	}
}

func TestCloseSlowConsumerWriteTimeout(t *testing.T) {
	cfg := baseConfig()
	cfg.WriteTimeout = 200 * time.Millisecond
	cfg.SendQueue = 1000
	ts := newTestServer(t, cfg, AuthConfig{}, nil)
	rc, w := dialRaw(t, ts, bearer(userToken(t, "quinn")))
	if err := rc.conn.(*net.TCPConn).SetReadBuffer(4096); err != nil {
		t.Fatalf("SetReadBuffer: %v", err)
	}

	// Paced sends let each write finish until the kernel buffers are full;
	// then one write blocks past WriteTimeout while the queue has room.
	payload := make([]byte, 64<<10)
	deadline := time.Now().Add(waitTimeout)
	for i := 0; i < 1000 && time.Now().Before(deadline); i++ {
		if err := ts.srv.Send(w.ConnectionID, true, payload); err != nil {
			break
		}
		time.Sleep(5 * time.Millisecond)
	}

	d := ts.app.waitDisconnected(t, w.ConnectionID)
	checkDisconnected(t, d, 1006, schemas.ReasonSlowConsumer)
	if !strings.Contains(d.Detail, "write timed out") {
		t.Errorf("detail: got %q, want it to mention the write timeout", d.Detail)
	}
}

func TestCloseFenced(t *testing.T) {
	ts := newTestServer(t, baseConfig(), AuthConfig{}, nil)
	old := dialGWS(t, ts, bearer(userToken(t, "rosa")))
	oldWelcome := old.welcome(t)

	ctx, cancel := context.WithTimeout(context.Background(), waitTimeout)
	defer cancel()
	if err := ts.srv.Fence(ctx, "inc-2"); err != nil {
		t.Fatalf("Fence: %v", err)
	}

	if got := old.closeFrame(t).Code; got != 1012 {
		t.Errorf("close code seen by the client: got %d, want 1012", got)
	}
	d := ts.app.waitDisconnected(t, oldWelcome.ConnectionID)
	checkDisconnected(t, d, 1012, schemas.ReasonFenced)
	if d.Incarnation != testIncarnation {
		t.Errorf("fenced connection's incarnation: got %q, want the old %q", d.Incarnation, testIncarnation)
	}

	// Upgrades continue under the new incarnation.
	fresh := dialGWS(t, ts, bearer(userToken(t, "rosa")))
	if got := fresh.welcome(t).Incarnation; got != "inc-2" {
		t.Errorf("incarnation after Fence: got %q, want inc-2", got)
	}
	if got := ts.srv.Incarnation(); got != "inc-2" {
		t.Errorf("Incarnation(): got %q, want inc-2", got)
	}
}

func TestCloseAllKeepsAccepting(t *testing.T) {
	ts := newTestServer(t, baseConfig(), AuthConfig{}, nil)
	first := dialGWS(t, ts, bearer(userToken(t, "sam")))
	w := first.welcome(t)

	ctx, cancel := context.WithTimeout(context.Background(), waitTimeout)
	defer cancel()
	if err := ts.srv.CloseAll(ctx, Fenced("test")); err != nil {
		t.Fatalf("CloseAll: %v", err)
	}

	if got := first.closeFrame(t).Code; got != 1012 {
		t.Errorf("close code seen by the client: got %d, want 1012", got)
	}
	checkDisconnected(t, ts.app.waitDisconnected(t, w.ConnectionID), 1012, schemas.ReasonFenced)

	second := dialGWS(t, ts, bearer(userToken(t, "sam")))
	if got := second.welcome(t).Incarnation; got != testIncarnation {
		t.Errorf("incarnation after CloseAll: got %q, want %q unchanged", got, testIncarnation)
	}
}

func TestAppendConnectedFails(t *testing.T) {
	app := &fakeAppender{failType: schemas.TypeConnected}
	ts := newTestServer(t, baseConfig(), AuthConfig{}, app)
	rc, resp := rawHandshake(t, ts, bearer(userToken(t, "tara")))
	if resp.StatusCode != http.StatusSwitchingProtocols {
		t.Fatalf("handshake status: got %d, want 101", resp.StatusCode)
	}

	res := rc.readUntilClose(t, 10)

	if res.data != 0 {
		t.Errorf("messages before the close: got %d, want 0 (no welcome)", res.data)
	}
	if res.code != 1011 {
		t.Errorf("close code seen by the client: got %d, want 1011", res.code)
	}
	if n := len(app.snapshot()); n != 0 {
		t.Errorf("stored events: got %d, want 0", n)
	}
	if n := ts.srv.Count(); n != 0 {
		t.Errorf("Count: got %d, want 0", n)
	}
}

func TestMaxConnections(t *testing.T) {
	cfg := baseConfig()
	cfg.MaxConnections = 1
	ts := newTestServer(t, cfg, AuthConfig{}, nil)
	first := dialGWS(t, ts, bearer(userToken(t, "uma")))
	w := first.welcome(t)

	resp, body := upgradeRequest(t, ts, "/ws", bearer(userToken(t, "uma")))
	if resp.StatusCode != http.StatusServiceUnavailable {
		t.Fatalf("upgrade over the limit: got status %d, want 503", resp.StatusCode)
	}
	if body.Error != "unavailable" {
		t.Errorf("body error: got %q, want unavailable", body.Error)
	}
	if n := len(ts.app.snapshot()); n != 1 {
		t.Errorf("events after the 503: got %d, want only the first connected event", n)
	}

	// Closing the first connection frees its slot.
	if err := first.socket.WriteClose(1000, nil); err != nil {
		t.Fatalf("close first connection: %v", err)
	}
	ts.app.waitDisconnected(t, w.ConnectionID)
	waitFor(t, waitTimeout, "a free slot", func() bool {
		ts.srv.hub.mu.RLock()
		defer ts.srv.hub.mu.RUnlock()
		return ts.srv.hub.slots == 0
	})
	dialGWS(t, ts, bearer(userToken(t, "uma"))).welcome(t)
}

func TestSendAndSendUser(t *testing.T) {
	ts := newTestServer(t, baseConfig(), AuthConfig{}, nil)
	bob1 := dialGWS(t, ts, bearer(userToken(t, "bob")))
	bob2 := dialGWS(t, ts, bearer(userToken(t, "bob")))
	carol := dialGWS(t, ts, bearer(userToken(t, "carol")))
	bob1.welcome(t)
	bob2.welcome(t)
	carolID := carol.welcome(t).ConnectionID

	delivered, err := ts.srv.SendUser("bob", false, []byte("hi bob"))
	if err != nil {
		t.Fatalf("SendUser: %v", err)
	}
	if delivered != 2 {
		t.Errorf("SendUser delivered: got %d, want 2", delivered)
	}
	for i, c := range []*gwsClient{bob1, bob2} {
		if m := c.next(t); string(m.payload) != "hi bob" || m.binary {
			t.Errorf("bob connection %d got %q (binary %v), want text \"hi bob\"", i, m.payload, m.binary)
		}
	}

	if err := ts.srv.Send(carolID, true, []byte{1, 2, 3}); err != nil {
		t.Fatalf("Send: %v", err)
	}
	if m := carol.next(t); !m.binary || string(m.payload) != "\x01\x02\x03" {
		t.Errorf("carol got %q (binary %v), want binary 010203", m.payload, m.binary)
	}

	if n, err := ts.srv.SendUser("nobody", false, []byte("x")); n != 0 || err != nil {
		t.Errorf("SendUser to a user without connections: got %d, %v, want 0, nil", n, err)
	}
}

func TestSendErrors(t *testing.T) {
	cfg := baseConfig()
	cfg.WriteLimit = 16
	ts := newTestServer(t, cfg, AuthConfig{}, nil)
	client := dialGWS(t, ts, bearer(userToken(t, "vic")))
	id := client.welcome(t).ConnectionID

	tests := []struct {
		name    string
		connID  string
		binary  bool
		payload []byte
		want    error
	}{
		{"unknown connection", "no-such-id", false, []byte("x"), ErrNotFound},
		{"too large", id, true, make([]byte, 17), ErrPayloadTooLarge},
		{"invalid UTF-8 text", id, false, []byte{0xff}, ErrInvalidUTF8},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if err := ts.srv.Send(tt.connID, tt.binary, tt.payload); !errors.Is(err, tt.want) {
				t.Errorf("Send: got %v, want %v", err, tt.want)
			}
		})
	}

	if _, err := ts.srv.SendUser("", false, []byte("x")); !errors.Is(err, ErrUserIDMissing) {
		t.Errorf("SendUser with an empty user id: got %v, want ErrUserIDMissing", err)
	}
	if _, ok := ts.srv.Lookup(id); !ok {
		t.Errorf("a rejected Send closed the connection")
	}
}

func TestOnMessageHook(t *testing.T) {
	type received struct {
		info    ConnInfo
		binary  bool
		payload string
	}
	var mu sync.Mutex
	var got []received

	cfg := baseConfig()
	cfg.OnMessage = func(info ConnInfo, binary bool, payload []byte) {
		mu.Lock()
		defer mu.Unlock()
		got = append(got, received{info: info, binary: binary, payload: string(payload)})
	}
	ts := newTestServer(t, cfg, AuthConfig{}, nil)
	client := dialGWS(t, ts, bearer(userToken(t, "wes")))
	id := client.welcome(t).ConnectionID

	if err := client.socket.WriteString("hello"); err != nil {
		t.Fatalf("write text: %v", err)
	}
	if err := client.socket.WriteMessage(gws.OpcodeBinary, []byte{7}); err != nil {
		t.Fatalf("write binary: %v", err)
	}

	waitFor(t, waitTimeout, "two hook calls", func() bool {
		mu.Lock()
		defer mu.Unlock()
		return len(got) == 2
	})
	mu.Lock()
	defer mu.Unlock()
	if got[0].info.ID != id || got[0].info.UserID != "wes" {
		t.Errorf("hook info: got %+v, want connection %s of wes", got[0].info, id)
	}
	if got[0].binary || got[0].payload != "hello" {
		t.Errorf("first message: got %q (binary %v), want text hello", got[0].payload, got[0].binary)
	}
	if !got[1].binary || got[1].payload != "\x07" {
		t.Errorf("second message: got %q (binary %v), want binary 07", got[1].payload, got[1].binary)
	}
}

func TestOnMessageHookPanicKeepsConnection(t *testing.T) {
	cfg := baseConfig()
	cfg.OnMessage = func(ConnInfo, bool, []byte) { panic("hook bug") }
	ts := newTestServer(t, cfg, AuthConfig{}, nil)
	client := dialGWS(t, ts, bearer(userToken(t, "xena")))
	id := client.welcome(t).ConnectionID

	if err := client.socket.WriteString("boom"); err != nil {
		t.Fatalf("write text: %v", err)
	}

	// The server still serves the connection after the panic.
	if err := ts.srv.Send(id, false, []byte("still here")); err != nil {
		t.Fatalf("Send after the hook panicked: %v", err)
	}
	if m := client.next(t); string(m.payload) != "still here" {
		t.Errorf("message after the panic: got %q, want \"still here\"", m.payload)
	}
}

func TestNewRejectsBadInput(t *testing.T) {
	auth, err := NewAuthenticator(AuthConfig{AllowAnonymous: true})
	if err != nil {
		t.Fatalf("NewAuthenticator: %v", err)
	}

	tests := []struct {
		name string
		cfg  Config
		auth *Authenticator
		app  Appender
	}{
		{"missing ids", Config{}, auth, &fakeAppender{}},
		{"nil authenticator", baseConfig(), nil, &fakeAppender{}},
		{"nil appender", baseConfig(), auth, nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if _, err := New(tt.cfg, tt.auth, tt.app, newTestLogger(t)); !errors.Is(err, ErrInvalidConfig) {
				t.Errorf("New: got %v, want ErrInvalidConfig", err)
			}
		})
	}
}

func TestUpgradeWithoutHijacker(t *testing.T) {
	ts := newTestServer(t, baseConfig(), AuthConfig{}, nil)
	r := httptest.NewRequest(http.MethodGet, "/ws", nil)
	r.Header.Set("Authorization", "Bearer "+userToken(t, "yara"))
	w := httptest.NewRecorder() // has no Hijack method, like an HTTP/2 stream

	ts.srv.ServeHTTP(w, r)

	if w.Code != http.StatusBadRequest {
		t.Errorf("status: got %d, want 400", w.Code)
	}
	if n := len(ts.app.snapshot()); n != 0 {
		t.Errorf("events: got %d, want 0", n)
	}
}

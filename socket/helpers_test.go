package socket

import (
	"bufio"
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/cloudevents/sdk-go/v2/event"
	"github.com/golang-jwt/jwt/v5"
	"github.com/lxzan/gws"
	"github.com/rs/zerolog"

	"github.com/virtufin/websocketmanager/eventlog"
	"github.com/virtufin/websocketmanager/schemas"
)

// testSecret is an HS256 key of the minimum length, 32 bytes.
var testSecret = []byte("0123456789abcdef0123456789abcdef")

const (
	testInstance    = "test-instance"
	testIncarnation = "inc-1"
	waitTimeout     = 5 * time.Second
)

// fakeAppender stores events in memory and checks each against its schema.
type fakeAppender struct {
	mu       sync.Mutex
	events   []*event.Event
	invalid  []error
	failType string        // appends of this event type fail
	hold     chan struct{} // when set, disconnected appends wait for it to close
	// queuedType: appends of this event type are stored, then reported as
	// queued (eventlog.ErrQueued), as a writer whose store is slow does.
	queuedType string
}

var errAppendFailed = errors.New("fake appender: append failed")

func (a *fakeAppender) Append(ctx context.Context, events ...*event.Event) error {
	if a.hold != nil && events[0].Type() == schemas.TypeDisconnected {
		select {
		case <-a.hold:
		case <-ctx.Done():
			return ctx.Err()
		}
	}

	a.mu.Lock()
	defer a.mu.Unlock()

	for _, ev := range events {
		if ev.Type() == a.failType {
			return errAppendFailed
		}
		if err := schemas.Validate(ev); err != nil {
			a.invalid = append(a.invalid, err)
		}
	}
	a.events = append(a.events, events...)
	if events[0].Type() == a.queuedType {
		return fmt.Errorf("fake appender: %w: %w", eventlog.ErrQueued, context.DeadlineExceeded)
	}
	return nil
}

func (a *fakeAppender) snapshot() []*event.Event {
	a.mu.Lock()
	defer a.mu.Unlock()
	return append([]*event.Event(nil), a.events...)
}

// lifecycle returns the connected and disconnected event data of one
// connection.
func (a *fakeAppender) lifecycle(t *testing.T, connID string) ([]schemas.Connected, []schemas.Disconnected) {
	t.Helper()

	var connected []schemas.Connected
	var disconnected []schemas.Disconnected
	for _, ev := range a.snapshot() {
		if ev.Subject() != connID {
			continue
		}
		switch ev.Type() {
		case schemas.TypeConnected:
			var d schemas.Connected
			decodeData(t, ev, &d)
			connected = append(connected, d)
		case schemas.TypeDisconnected:
			var d schemas.Disconnected
			decodeData(t, ev, &d)
			disconnected = append(disconnected, d)
		}
	}
	return connected, disconnected
}

func decodeData(t *testing.T, ev *event.Event, into any) {
	t.Helper()
	if err := json.Unmarshal(ev.Data(), into); err != nil {
		t.Fatalf("decode %s data: %v", ev.Type(), err)
	}
}

// waitDisconnected waits for the disconnected event of connID and checks
// that the connection has exactly one connected and one disconnected event.
func (a *fakeAppender) waitDisconnected(t *testing.T, connID string) schemas.Disconnected {
	t.Helper()

	waitFor(t, waitTimeout, "disconnected event of "+connID, func() bool {
		_, disconnected := a.lifecycle(t, connID)
		return len(disconnected) > 0
	})

	connected, disconnected := a.lifecycle(t, connID)
	if len(connected) != 1 {
		t.Fatalf("connected events of %s: got %d, want 1", connID, len(connected))
	}
	if len(disconnected) != 1 {
		t.Fatalf("disconnected events of %s: got %d, want 1", connID, len(disconnected))
	}
	if got, want := disconnected[0].Incarnation, connected[0].Incarnation; got != want {
		t.Errorf("disconnected incarnation: got %q, want %q from the connected event", got, want)
	}
	if got, want := disconnected[0].UserID, connected[0].UserID; got != want {
		t.Errorf("disconnected userId: got %q, want %q from the connected event", got, want)
	}
	return disconnected[0]
}

// checkPaired checks that every connection has one connected and one
// disconnected event, and that every event passed schema validation.
func (a *fakeAppender) checkPaired(t *testing.T) {
	t.Helper()

	counts := map[string][2]int{}
	for _, ev := range a.snapshot() {
		n := counts[ev.Subject()]
		switch ev.Type() {
		case schemas.TypeConnected:
			n[0]++
		case schemas.TypeDisconnected:
			n[1]++
		}
		counts[ev.Subject()] = n
	}
	for id, n := range counts {
		if n != [2]int{1, 1} {
			t.Errorf("connection %s: got %d connected and %d disconnected events, want 1 and 1", id, n[0], n[1])
		}
	}

	a.mu.Lock()
	defer a.mu.Unlock()
	for _, err := range a.invalid {
		t.Errorf("event failed schema validation: %v", err)
	}
}

func checkDisconnected(t *testing.T, d schemas.Disconnected, wantCode int, wantReason string) {
	t.Helper()
	if d.CloseCode != wantCode {
		t.Errorf("closeCode: got %d, want %d", d.CloseCode, wantCode)
	}
	if d.Reason != wantReason {
		t.Errorf("reason: got %q, want %q", d.Reason, wantReason)
	}
}

// waitFor polls cond every few milliseconds until it holds or timeout ends.
func waitFor(t *testing.T, timeout time.Duration, what string, cond func() bool) {
	t.Helper()

	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %s waiting for %s", timeout, what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// testLog forwards log lines to t.Log until the test's cleanup ends, then
// drops them: a write goroutine may still log after the test returned.
type testLog struct {
	mu   sync.Mutex
	t    *testing.T
	done bool
}

func newTestLog(t *testing.T) *testLog {
	w := &testLog{t: t}
	t.Cleanup(func() {
		w.mu.Lock()
		w.done = true
		w.mu.Unlock()
	})
	return w
}

func (w *testLog) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if !w.done {
		w.t.Log(strings.TrimSpace(string(p)))
	}
	return len(p), nil
}

func newTestLogger(t *testing.T) zerolog.Logger {
	return zerolog.New(newTestLog(t)).Level(zerolog.DebugLevel)
}

// testServer is a Server behind an httptest server on 127.0.0.1.
type testServer struct {
	srv  *Server
	http *httptest.Server
	app  *fakeAppender
}

func baseConfig() Config {
	return Config{InstanceID: testInstance, Incarnation: testIncarnation}
}

// newTestServer starts a Server with an in-memory appender. At cleanup it
// shuts the Server down and checks that every connection got exactly one
// connected and one disconnected event.
func newTestServer(t *testing.T, cfg Config, authCfg AuthConfig, app *fakeAppender) *testServer {
	t.Helper()

	if authCfg.Secret == nil && !authCfg.AllowAnonymous {
		authCfg.Secret = testSecret
	}
	auth, err := NewAuthenticator(authCfg)
	if err != nil {
		t.Fatalf("NewAuthenticator: %v", err)
	}
	if app == nil {
		app = &fakeAppender{}
	}

	srv, err := New(cfg, auth, app, newTestLogger(t))
	if err != nil {
		t.Fatalf("New: %v", err)
	}

	ts := &testServer{srv: srv, http: httptest.NewServer(srv), app: app}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), waitTimeout)
		defer cancel()
		if err := srv.Shutdown(ctx, ServerShutdown("test cleanup")); err != nil {
			t.Errorf("Shutdown at cleanup: %v", err)
		}
		ts.http.Close()
		if app.failType == "" {
			app.checkPaired(t)
		}
	})
	return ts
}

func (ts *testServer) wsURL(query string) string {
	u := "ws" + strings.TrimPrefix(ts.http.URL, "http") + "/ws"
	if query != "" {
		u += "?" + query
	}
	return u
}

// makeToken signs claims with method and key.
func makeToken(t *testing.T, method jwt.SigningMethod, key any, claims jwt.MapClaims) string {
	t.Helper()

	token, err := jwt.NewWithClaims(method, claims).SignedString(key)
	if err != nil {
		t.Fatalf("sign token: %v", err)
	}
	return token
}

// userToken returns a valid token for userID that expires in an hour.
func userToken(t *testing.T, userID string) string {
	t.Helper()
	return makeToken(t, jwt.SigningMethodHS256, testSecret, jwt.MapClaims{
		"sub": userID,
		"exp": time.Now().Add(time.Hour).Unix(),
	})
}

func bearer(token string) http.Header {
	return http.Header{"Authorization": []string{"Bearer " + token}}
}

// gwsClient is a gws client that records what the server sends. It replies
// to pings with pongs, as gws does by default.
type gwsClient struct {
	gws.BuiltinEventHandler

	socket   *gws.Conn
	messages chan clientMessage
	closed   chan error
}

type clientMessage struct {
	binary  bool
	payload []byte
}

func dialGWS(t *testing.T, ts *testServer, header http.Header) *gwsClient {
	t.Helper()

	c := &gwsClient{messages: make(chan clientMessage, 1024), closed: make(chan error, 1)}
	header = header.Clone()
	if header == nil {
		header = http.Header{}
	}
	header.Set("User-Agent", "wsm-test-client")

	socket, resp, err := gws.NewClient(c, &gws.ClientOption{Addr: ts.wsURL(""), RequestHeader: header})
	if err != nil {
		t.Fatalf("dial %s: %v", ts.wsURL(""), err)
	}
	_ = resp.Body.Close()
	c.socket = socket
	go socket.ReadLoop()

	t.Cleanup(func() { _ = socket.NetConn().Close() })
	return c
}

func (c *gwsClient) OnMessage(_ *gws.Conn, m *gws.Message) {
	defer m.Close()
	msg := clientMessage{binary: m.Opcode == gws.OpcodeBinary, payload: append([]byte(nil), m.Bytes()...)}
	select {
	case c.messages <- msg:
	default:
	}
}

func (c *gwsClient) OnClose(_ *gws.Conn, err error) { c.closed <- err }

func (c *gwsClient) next(t *testing.T) clientMessage {
	t.Helper()

	select {
	case m := <-c.messages:
		return m
	case <-time.After(waitTimeout):
		t.Fatalf("no message within %s", waitTimeout)
		return clientMessage{}
	}
}

func (c *gwsClient) welcome(t *testing.T) welcome {
	t.Helper()
	return decodeWelcome(t, c.next(t).payload)
}

// closeFrame waits for the read loop to end and returns the server's close
// frame.
func (c *gwsClient) closeFrame(t *testing.T) *gws.CloseError {
	t.Helper()

	select {
	case err := <-c.closed:
		var closeErr *gws.CloseError
		if !errors.As(err, &closeErr) {
			t.Fatalf("client read loop ended with %v, want a close frame from the server", err)
		}
		return closeErr
	case <-time.After(waitTimeout):
		t.Fatalf("connection still open after %s", waitTimeout)
		return nil
	}
}

func decodeWelcome(t *testing.T, payload []byte) welcome {
	t.Helper()

	var w welcome
	if err := json.Unmarshal(payload, &w); err != nil {
		t.Fatalf("decode welcome %q: %v", payload, err)
	}
	if w.Type != "welcome" {
		t.Fatalf("first message type: got %q, want welcome", w.Type)
	}
	return w
}

// rawClient speaks WebSocket over a plain TCP connection, so a test can
// stay silent, skip pongs or break the protocol on purpose.
type rawClient struct {
	conn net.Conn
	br   *bufio.Reader
}

type frame struct {
	fin     bool
	opcode  byte
	payload []byte
}

// handshakeRequest is a minimal RFC 6455 opening handshake; the key is the
// sample from section 1.3.
func handshakeRequest(host, target string, header http.Header) string {
	var b strings.Builder
	fmt.Fprintf(&b, "GET %s HTTP/1.1\r\nHost: %s\r\n", target, host)
	b.WriteString("Upgrade: websocket\r\nConnection: Upgrade\r\n")
	b.WriteString("Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n")
	for k, values := range header {
		for _, v := range values {
			fmt.Fprintf(&b, "%s: %s\r\n", k, v)
		}
	}
	b.WriteString("\r\n")
	return b.String()
}

// rawHandshake dials the server and sends the opening handshake, returning
// the response whatever its status.
func rawHandshake(t *testing.T, ts *testServer, header http.Header) (*rawClient, *http.Response) {
	t.Helper()

	addr := ts.http.Listener.Addr().String()
	conn, err := net.DialTimeout("tcp", addr, waitTimeout)
	if err != nil {
		t.Fatalf("dial %s: %v", addr, err)
	}
	t.Cleanup(func() { _ = conn.Close() })

	_ = conn.SetDeadline(time.Now().Add(waitTimeout))
	if _, err := io.WriteString(conn, handshakeRequest(addr, "/ws", header)); err != nil {
		t.Fatalf("write handshake: %v", err)
	}

	br := bufio.NewReader(conn)
	resp, err := http.ReadResponse(br, nil)
	if err != nil {
		t.Fatalf("read handshake response: %v", err)
	}
	_ = conn.SetDeadline(time.Time{})
	return &rawClient{conn: conn, br: br}, resp
}

// dialRaw completes the handshake and reads the welcome message.
func dialRaw(t *testing.T, ts *testServer, header http.Header) (*rawClient, welcome) {
	t.Helper()

	rc, resp := rawHandshake(t, ts, header)
	if resp.StatusCode != http.StatusSwitchingProtocols {
		t.Fatalf("handshake status: got %d, want 101", resp.StatusCode)
	}

	f, err := rc.readFrame(waitTimeout)
	if err != nil {
		t.Fatalf("read welcome: %v", err)
	}
	return rc, decodeWelcome(t, f.payload)
}

func (rc *rawClient) readFrame(timeout time.Duration) (frame, error) {
	_ = rc.conn.SetReadDeadline(time.Now().Add(timeout))

	var head [2]byte
	if _, err := io.ReadFull(rc.br, head[:]); err != nil {
		return frame{}, err
	}
	length := uint64(head[1] & 0x7f)
	switch length {
	case 126:
		var ext [2]byte
		if _, err := io.ReadFull(rc.br, ext[:]); err != nil {
			return frame{}, err
		}
		length = uint64(binary.BigEndian.Uint16(ext[:]))
	case 127:
		var ext [8]byte
		if _, err := io.ReadFull(rc.br, ext[:]); err != nil {
			return frame{}, err
		}
		length = binary.BigEndian.Uint64(ext[:])
	}
	if head[1]&0x80 != 0 {
		return frame{}, errors.New("server sent a masked frame")
	}

	payload := make([]byte, length)
	if _, err := io.ReadFull(rc.br, payload); err != nil {
		return frame{}, err
	}
	return frame{fin: head[0]&0x80 != 0, opcode: head[0] & 0x0f, payload: payload}, nil
}

// writeFrame sends one frame. first is the first header byte (FIN, RSV
// bits and opcode); masked false breaks RFC 6455 on purpose.
func (rc *rawClient) writeFrame(t *testing.T, first byte, payload []byte, masked bool) {
	t.Helper()

	if len(payload) > 125 {
		t.Fatalf("writeFrame supports payloads up to 125 bytes, got %d", len(payload))
	}
	buf := []byte{first, byte(len(payload))}
	body := append([]byte(nil), payload...)
	if masked {
		key := [4]byte{0x12, 0x34, 0x56, 0x78}
		buf[1] |= 0x80
		buf = append(buf, key[:]...)
		for i := range body {
			body[i] ^= key[i%4]
		}
	}
	buf = append(buf, body...)

	_ = rc.conn.SetWriteDeadline(time.Now().Add(waitTimeout))
	if _, err := rc.conn.Write(buf); err != nil {
		t.Fatalf("write frame: %v", err)
	}
}

// closePayload encodes a close frame body.
func closePayload(code uint16, text string) []byte {
	return append(binary.BigEndian.AppendUint16(nil, code), text...)
}

// closeResult is what a raw client saw at the end of a connection.
type closeResult struct {
	gotFrame bool
	code     uint16
	text     string
	pings    int
	data     int // text and binary frames before the close
}

// readUntilClose reads frames, without sending pongs, until a close frame,
// the end of the connection, or maxFrames frames.
func (rc *rawClient) readUntilClose(t *testing.T, maxFrames int) closeResult {
	t.Helper()

	var res closeResult
	deadline := time.Now().Add(waitTimeout)
	for range maxFrames {
		remaining := time.Until(deadline)
		if remaining <= 0 {
			t.Fatalf("connection still open after %s", waitTimeout)
		}

		f, err := rc.readFrame(remaining)
		if err != nil {
			var netErr net.Error
			if errors.As(err, &netErr) && netErr.Timeout() {
				t.Fatalf("connection still open after %s", waitTimeout)
			}
			return res
		}

		switch f.opcode {
		case 0x8:
			res.gotFrame = true
			if len(f.payload) >= 2 {
				res.code = binary.BigEndian.Uint16(f.payload)
				res.text = string(f.payload[2:])
			}
			return res
		case 0x9:
			res.pings++
		case 0x1, 0x2:
			res.data++
		}
	}
	t.Fatalf("no close after %d frames", maxFrames)
	return res
}

// upgradeRequest sends a WebSocket handshake through net/http, for tests
// that expect the server to reject it.
func upgradeRequest(t *testing.T, ts *testServer, target string, header http.Header) (*http.Response, errorBody) {
	t.Helper()

	req, err := http.NewRequest(http.MethodGet, ts.http.URL+target, nil)
	if err != nil {
		t.Fatalf("build request: %v", err)
	}
	for k, v := range header {
		req.Header[k] = v
	}
	req.Header.Set("Upgrade", "websocket")
	req.Header.Set("Connection", "Upgrade")
	req.Header.Set("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ==")
	req.Header.Set("Sec-WebSocket-Version", "13")

	client := &http.Client{Timeout: waitTimeout}
	resp, err := client.Do(req)
	if err != nil {
		t.Fatalf("GET %s: %v", target, err)
	}
	defer resp.Body.Close()

	var body errorBody
	if resp.StatusCode != http.StatusSwitchingProtocols {
		if err := json.NewDecoder(resp.Body).Decode(&body); err != nil {
			t.Fatalf("decode %d response body: %v", resp.StatusCode, err)
		}
	}
	return resp, body
}

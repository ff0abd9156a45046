package main

import (
	"bytes"
	"encoding/json"
	"errors"
	"io"
	"net"
	"net/http"
	"strconv"
	"testing"
	"time"

	"github.com/lxzan/gws"
)

// testAPIToken is the backend API token of the tests that set one.
const testAPIToken = "api-test-token-0123456789abcdef"

// testTraceparent is a W3C trace context a test sends to the API.
const testTraceparent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"

// apiTimeout bounds one API call of a test.
const apiTimeout = 20 * time.Second

var apiClient = &http.Client{Timeout: apiTimeout}

// apiResponse is what an API call returned.
type apiResponse struct {
	status int
	header http.Header
	body   []byte
}

func (r apiResponse) decode(t *testing.T, v any) {
	t.Helper()
	if err := json.Unmarshal(r.body, v); err != nil {
		t.Fatalf("decode %q: %v", r.body, err)
	}
}

// call sends one request. token "" sends no Authorization header; hdr adds
// headers such as Content-Type and traceparent.
func call(t *testing.T, method, url, token string, body []byte, hdr map[string]string) apiResponse {
	t.Helper()
	req, err := http.NewRequest(method, url, bytes.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	setAPIToken(req, token)
	for k, v := range hdr {
		req.Header.Set(k, v)
	}
	resp, err := apiClient.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, url, err)
	}
	defer resp.Body.Close()
	raw, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("%s %s: read body: %v", method, url, err)
	}
	return apiResponse{status: resp.StatusCode, header: resp.Header, body: raw}
}

// frame is one message a test client received.
type frame struct {
	binary  bool
	payload string
}

// recordingClient is a WebSocket client that keeps every message after the
// welcome and the close code it gets.
type recordingClient struct {
	gws.BuiltinEventHandler
	id      string
	conn    *gws.Conn
	welcome chan string
	frames  chan frame
	code    chan uint16
}

func (c *recordingClient) OnMessage(_ *gws.Conn, m *gws.Message) {
	defer m.Close()
	var w struct {
		Type         string `json:"type"`
		ConnectionID string `json:"connectionId"`
	}
	if c.id == "" && json.Unmarshal(m.Bytes(), &w) == nil && w.Type == "welcome" {
		c.id = w.ConnectionID
		c.welcome <- w.ConnectionID
		return
	}
	c.frames <- frame{binary: m.Opcode == gws.OpcodeBinary, payload: string(m.Bytes())}
}

func (c *recordingClient) OnClose(_ *gws.Conn, err error) {
	var ce *gws.CloseError
	if errors.As(err, &ce) {
		c.code <- ce.Code
		return
	}
	c.code <- 0
}

// dialRecording connects a client of user to a wsm and waits for its
// welcome.
func dialRecording(t *testing.T, svc *service, user string) *recordingClient {
	t.Helper()
	c := &recordingClient{welcome: make(chan string, 1), frames: make(chan frame, 16), code: make(chan uint16, 1)}
	hdr := http.Header{"Authorization": {"Bearer " + token(t, user)}}
	conn, _, err := gws.NewClient(c, &gws.ClientOption{Addr: svc.wsURL(), RequestHeader: hdr})
	if err != nil {
		t.Fatalf("dial %s: %v", svc.wsURL(), err)
	}
	c.conn = conn
	go conn.ReadLoop()
	t.Cleanup(func() { conn.NetConn().Close() })
	select {
	case <-c.welcome:
	case <-time.After(apiTimeout):
		t.Fatalf("client of %s got no welcome within %v", user, apiTimeout)
	}
	return c
}

// nextFrame waits for the client's next message.
func (c *recordingClient) nextFrame(t *testing.T) frame {
	t.Helper()
	select {
	case f := <-c.frames:
		return f
	case <-time.After(apiTimeout):
		t.Fatalf("client %s got no message within %v", c.id, apiTimeout)
	}
	return frame{}
}

// closeCode waits for the client to be closed and returns the code.
func (c *recordingClient) closeCode(t *testing.T) uint16 {
	t.Helper()
	select {
	case code := <-c.code:
		return code
	case <-time.After(apiTimeout):
		t.Fatalf("client %s was not closed within %v", c.id, apiTimeout)
	}
	return 0
}

// freeLoopbackPort returns a port that was free on 127.0.0.1 a moment ago.
func freeLoopbackPort(t *testing.T) int {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port
}

func loopbackAddr(port int) string { return net.JoinHostPort("127.0.0.1", strconv.Itoa(port)) }

// resultBody is the body of a send or close for one connection.
type resultBody struct {
	Error        string `json:"error"`
	ConnectionID string `json:"connectionId"`
	InstanceID   string `json:"instanceId"`
	Result       string `json:"result"`
	Detail       string `json:"detail"`
}

// checkResult checks the status and result of a send or close.
func checkResult(t *testing.T, what string, r apiResponse, wantStatus int, wantResult string) resultBody {
	t.Helper()
	var b resultBody
	r.decode(t, &b)
	if r.status != wantStatus || b.Result != wantResult {
		t.Errorf("%s: got %d %q (%s), want %d %q", what, r.status, b.Result, r.body, wantStatus, wantResult)
	}
	return b
}

package main

import (
	"bufio"
	"bytes"
	"encoding/json"
	"fmt"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/cloudevents/sdk-go/v2/event"
	"github.com/golang-jwt/jwt/v5"
	"github.com/lxzan/gws"

	"github.com/virtufin/websocketmanager/schemas"
)

var (
	buildOnce sync.Once
	binPath   string
	buildErr  error
)

// wsmBinary builds the wsm binary once per test run.
func wsmBinary(t *testing.T) string {
	t.Helper()
	buildOnce.Do(func() {
		dir, err := os.MkdirTemp("", "wsm-e2e-bin")
		if err != nil {
			buildErr = err
			return
		}
		binPath = filepath.Join(dir, "wsm")
		out, err := exec.Command("go", "build", "-o", binPath, ".").CombinedOutput()
		if err != nil {
			buildErr = fmt.Errorf("go build: %v\n%s", err, out)
		}
	})
	if buildErr != nil {
		t.Fatal(buildErr)
	}
	return binPath
}

// service is a wsm process started by a test.
type service struct {
	t      *testing.T
	cmd    *exec.Cmd
	base   string // http://host:port
	stderr *bytes.Buffer
	done   chan struct{}
}

const testSecret = "e2e-test-secret-0123456789abcdef"

func startService(t *testing.T, dataDir string, extra ...string) *service {
	t.Helper()
	os.Remove(filepath.Join(dataDir, addrFile))
	args := append([]string{"serve", "--listen", "127.0.0.1:0", "--data-dir", dataDir,
		"--heartbeat-interval", "300ms", "--heartbeat-ttl", "1s", "--log-level", "warn"}, extra...)
	cmd := exec.Command(wsmBinary(t), args...)
	cmd.Env = append(os.Environ(), "WSM_JWT_SECRET="+testSecret)
	s := &service{t: t, cmd: cmd, stderr: &bytes.Buffer{}, done: make(chan struct{})}
	cmd.Stderr = &lockedWriter{w: s.stderr}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { cmd.Wait(); close(s.done) }()
	t.Cleanup(func() {
		cmd.Process.Kill()
		<-s.done
	})

	waitFor(t, 30*time.Second, "address file", func() bool {
		base, err := readAddrFile(dataDir)
		if err != nil {
			return false
		}
		s.base = base
		resp, err := http.Get(base + "/readyz")
		if err != nil {
			return false
		}
		resp.Body.Close()
		return resp.StatusCode == http.StatusOK
	})
	return s
}

type lockedWriter struct {
	mu sync.Mutex
	w  *bytes.Buffer
}

func (l *lockedWriter) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.w.Write(p)
}

func (s *service) wsURL() string { return "ws" + strings.TrimPrefix(s.base, "http") + "/ws" }

func waitFor(t *testing.T, timeout time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for %s", timeout, what)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func token(t *testing.T, user string) string {
	t.Helper()
	tok := jwt.NewWithClaims(jwt.SigningMethodHS256, jwt.MapClaims{
		"sub": user, "exp": time.Now().Add(time.Hour).Unix(),
	})
	s, err := tok.SignedString([]byte(testSecret))
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// client is one WebSocket client of the test.
type client struct {
	conn    *gws.Conn
	id      string
	user    string
	welcome chan string
	closed  chan struct{}
}

type clientHandler struct {
	gws.BuiltinEventHandler
	c *client
}

func (h *clientHandler) OnMessage(socket *gws.Conn, m *gws.Message) {
	defer m.Close()
	var w struct {
		Type         string `json:"type"`
		ConnectionID string `json:"connectionId"`
	}
	if json.Unmarshal(m.Bytes(), &w) == nil && w.Type == "welcome" {
		select {
		case h.c.welcome <- w.ConnectionID:
		default:
		}
	}
}

func (h *clientHandler) OnClose(socket *gws.Conn, err error) { close(h.c.closed) }

func dial(t *testing.T, url, user string) (*client, error) {
	c := &client{user: user, welcome: make(chan string, 1), closed: make(chan struct{})}
	hdr := http.Header{}
	hdr.Set("Authorization", "Bearer "+token(t, user))
	conn, _, err := gws.NewClient(&clientHandler{c: c}, &gws.ClientOption{Addr: url, RequestHeader: hdr})
	if err != nil {
		return nil, err
	}
	c.conn = conn
	go conn.ReadLoop()
	select {
	case c.id = <-c.welcome:
		return c, nil
	case <-time.After(20 * time.Second):
		conn.NetConn().Close()
		return nil, fmt.Errorf("no welcome message within 20s")
	}
}

// getJSON sends the API token of the environment, if any, as replay and
// rebuild do.
func getJSON(t *testing.T, url string, v any) {
	t.Helper()
	if err := fetchJSON(url, v); err != nil {
		t.Fatal(err)
	}
}

// fetchJSON gets url with the API token from the environment and decodes
// a 200 response into v.
func fetchJSON(url string, v any) error {
	req, err := http.NewRequest(http.MethodGet, url, nil)
	if err != nil {
		return err
	}
	setAPIToken(req, os.Getenv(apiTokenEnv))
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("GET %s: %s", url, resp.Status)
	}
	if err := json.NewDecoder(resp.Body).Decode(v); err != nil {
		return fmt.Errorf("GET %s: decode: %v", url, err)
	}
	return nil
}

// openConnectionIDs lists the open connections, following every page.
func openConnectionIDs(t *testing.T, s *service, query string) map[string]bool {
	t.Helper()
	out, err := listOpenConnections(s, query)
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// listOpenConnections is openConnectionIDs for polls that must ride out a
// failed request, such as one that meets an open breaker.
func listOpenConnections(s *service, query string) (map[string]bool, error) {
	sep := "?"
	if query != "" {
		sep = "&"
	}
	out := map[string]bool{}
	cursor := ""
	for range 1000 {
		var body struct {
			Connections []struct {
				ConnectionID string `json:"connectionId"`
			} `json:"connections"`
			Next string `json:"next"`
		}
		if err := fetchJSON(s.base+"/v1/connections"+query+sep+"limit=1000&cursor="+url.QueryEscape(cursor), &body); err != nil {
			return nil, err
		}
		for _, c := range body.Connections {
			out[c.ConnectionID] = true
		}
		if body.Next == "" {
			return out, nil
		}
		cursor = body.Next
	}
	return nil, fmt.Errorf("GET /v1/connections%s: more than 1000 pages", query)
}

// replay runs `wsm replay` and returns the events it printed.
func replay(t *testing.T, dataDir string, args ...string) []event.Event {
	t.Helper()
	cmd := exec.Command(wsmBinary(t), append([]string{"replay", "--data-dir", dataDir}, args...)...)
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("wsm replay: %v", err)
	}
	var evs []event.Event
	sc := bufio.NewScanner(bytes.NewReader(out))
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		var ev event.Event
		if err := json.Unmarshal(sc.Bytes(), &ev); err != nil {
			t.Fatalf("replay line %q: %v", sc.Text(), err)
		}
		evs = append(evs, ev)
	}
	return evs
}

func verify(t *testing.T, dataDir string) {
	t.Helper()
	out, err := exec.Command(wsmBinary(t), "rebuild", "--verify", "--data-dir", dataDir).CombinedOutput()
	if err != nil {
		t.Fatalf("wsm rebuild --verify: %v\n%s", err, out)
	}
}

// TestEndToEnd drives real clients through a real wsm process: 1,000
// connect, half close cleanly, a quarter drop without a close frame, then the
// process is killed and its successor must reclaim the rest.
func TestEndToEnd(t *testing.T) {
	if testing.Short() {
		t.Skip("starts processes and 1,000 clients")
	}
	const total = 1000
	dataDir := t.TempDir()
	svc := startService(t, dataDir)

	clients := make([]*client, total)
	var wg sync.WaitGroup
	sem := make(chan struct{}, 50)
	errs := make(chan error, total)
	for i := range clients {
		wg.Add(1)
		sem <- struct{}{}
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			c, err := dial(t, svc.wsURL(), fmt.Sprintf("user-%d", i%40))
			if err != nil {
				errs <- fmt.Errorf("client %d: %w", i, err)
				return
			}
			clients[i] = c
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}

	ids := map[string]bool{}
	for _, c := range clients {
		ids[c.id] = true
	}
	if len(ids) != total {
		t.Fatalf("got %d distinct connection ids, want %d", len(ids), total)
	}
	if got := len(openConnectionIDs(t, svc, "")); got != total {
		t.Fatalf("GET /v1/connections lists %d connections after connecting, want %d", got, total)
	}

	// Half close with a close frame, a quarter vanish without one.
	clean, dropped, kept := clients[:total/2], clients[total/2:total*3/4], clients[total*3/4:]
	for _, c := range clean {
		c.conn.WriteClose(1000, []byte("bye"))
	}
	for _, c := range dropped {
		c.conn.NetConn().Close()
	}
	waitFor(t, 30*time.Second, "closed connections to leave the views", func() bool {
		return len(openConnectionIDs(t, svc, "")) == len(kept)
	})
	open := openConnectionIDs(t, svc, "")
	for _, c := range kept {
		if !open[c.id] {
			t.Errorf("open connection %s missing from /v1/connections", c.id)
		}
	}

	// The user filter lists exactly that user's open connections.
	wantUser := map[string]bool{}
	for _, c := range kept {
		if c.user == "user-7" {
			wantUser[c.id] = true
		}
	}
	if got := openConnectionIDs(t, svc, "?user=user-7"); len(got) != len(wantUser) {
		t.Errorf("?user=user-7 lists %d connections, want %d", len(got), len(wantUser))
	}

	// The log, read through the running service, records what the clients did.
	evs := replay(t, dataDir)
	connected := map[string]int{}
	reasons := map[string]string{}
	disconnects := map[string]int{}
	for _, ev := range evs {
		switch ev.Type() {
		case schemas.TypeConnected:
			connected[ev.Subject()]++
		case schemas.TypeDisconnected:
			var d schemas.Disconnected
			if err := ev.DataAs(&d); err != nil {
				t.Fatal(err)
			}
			disconnects[ev.Subject()]++
			reasons[ev.Subject()] = d.Reason
		}
	}
	for _, c := range clients {
		if connected[c.id] != 1 {
			t.Errorf("connection %s: %d connected events, want 1", c.id, connected[c.id])
		}
	}
	for _, c := range clean {
		if disconnects[c.id] != 1 || reasons[c.id] != schemas.ReasonClientClosed {
			t.Errorf("cleanly closed %s: %d disconnected events with reason %q, want 1 with %q",
				c.id, disconnects[c.id], reasons[c.id], schemas.ReasonClientClosed)
		}
	}
	for _, c := range dropped {
		if disconnects[c.id] != 1 || reasons[c.id] != schemas.ReasonConnectionLost {
			t.Errorf("dropped %s: %d disconnected events with reason %q, want 1 with %q",
				c.id, disconnects[c.id], reasons[c.id], schemas.ReasonConnectionLost)
		}
	}
	for _, c := range kept {
		if disconnects[c.id] != 0 {
			t.Errorf("open %s has %d disconnected events, want 0", c.id, disconnects[c.id])
		}
	}

	// Crash: the kept connections die with the process, unrecorded.
	svc.cmd.Process.Signal(syscall.SIGKILL)
	<-svc.done

	svc = startService(t, dataDir)
	waitFor(t, 30*time.Second, "the dead incarnation's connections to be reclaimed", func() bool {
		return len(openConnectionIDs(t, svc, "")) == 0
	})
	reclaimed := map[string]int{}
	for _, ev := range replay(t, dataDir, "--type", "connection.reclaimed") {
		reclaimed[ev.Subject()]++
	}
	if len(reclaimed) != len(kept) {
		t.Errorf("got %d reclaimed connections, want %d", len(reclaimed), len(kept))
	}
	for _, c := range kept {
		if reclaimed[c.id] != 1 {
			t.Errorf("connection %s: %d reclaimed events, want 1", c.id, reclaimed[c.id])
		}
	}
	verify(t, dataDir)

	// A clean stop exits 0, and the views still verify from the file.
	svc.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-svc.done:
	case <-time.After(15 * time.Second):
		t.Fatal("wsm did not exit within 15s of SIGTERM")
	}
	if code := svc.cmd.ProcessState.ExitCode(); code != 0 {
		t.Errorf("exit code after SIGTERM = %d, want 0\nstderr:\n%s", code, svc.stderr.String())
	}
	verify(t, dataDir)
}

package socket

import (
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/virtufin/websocketmanager/schemas"
)

// hookRecorder records the calls of OnConnect, OnDisconnect and OnSendDrop.
type hookRecorder struct {
	mu          sync.Mutex
	connects    map[string]int
	disconnects map[string][]string // connection id to the reasons reported
	drops       int
	dropCloses  int
}

func newHookRecorder(cfg *Config) *hookRecorder {
	h := &hookRecorder{connects: map[string]int{}, disconnects: map[string][]string{}}
	cfg.OnConnect = func(info ConnInfo) {
		h.mu.Lock()
		defer h.mu.Unlock()
		h.connects[info.ID]++
	}
	cfg.OnDisconnect = func(info ConnInfo, reason CloseReason) {
		h.mu.Lock()
		defer h.mu.Unlock()
		h.disconnects[info.ID] = append(h.disconnects[info.ID], reason.Reason)
	}
	cfg.OnSendDrop = func(_ ConnInfo, closed bool) {
		h.mu.Lock()
		defer h.mu.Unlock()
		h.drops++
		if closed {
			h.dropCloses++
		}
	}
	return h
}

func (h *hookRecorder) counts() (connects, disconnects int) {
	h.mu.Lock()
	defer h.mu.Unlock()
	for _, n := range h.connects {
		connects += n
	}
	for _, rs := range h.disconnects {
		disconnects += len(rs)
	}
	return connects, disconnects
}

func (h *hookRecorder) connectsOf(connID string) int {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.connects[connID]
}

func (h *hookRecorder) connectionIDs() []string {
	h.mu.Lock()
	defer h.mu.Unlock()
	var ids []string
	for id := range h.connects {
		ids = append(ids, id)
	}
	return ids
}

func (h *hookRecorder) reasons(connID string) []string {
	h.mu.Lock()
	defer h.mu.Unlock()
	return append([]string(nil), h.disconnects[connID]...)
}

func (h *hookRecorder) dropCounts() (drops, closes int) {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.drops, h.dropCloses
}

func TestHooksConnectAndDisconnect(t *testing.T) {
	cfg := baseConfig()
	hooks := newHookRecorder(&cfg)
	ts := newTestServer(t, cfg, AuthConfig{}, nil)
	client := dialGWS(t, ts, bearer(userToken(t, "uma")))
	w := client.welcome(t)

	if got, _ := hooks.counts(); got != 1 {
		t.Fatalf("OnConnect calls after the welcome: got %d, want 1", got)
	}
	if got := hooks.connectsOf(w.ConnectionID); got != 1 {
		t.Errorf("OnConnect calls for %s: got %d, want 1", w.ConnectionID, got)
	}

	if err := client.socket.WriteClose(1000, []byte("bye")); err != nil {
		t.Fatalf("client close: %v", err)
	}
	d := ts.app.waitDisconnected(t, w.ConnectionID)
	waitFor(t, waitTimeout, "OnDisconnect", func() bool { return len(hooks.reasons(w.ConnectionID)) > 0 })

	got := hooks.reasons(w.ConnectionID)
	if len(got) != 1 {
		t.Fatalf("OnDisconnect calls for %s: got %d, want 1", w.ConnectionID, len(got))
	}
	if got[0] != schemas.ReasonClientClosed {
		t.Errorf("OnDisconnect reason: got %q, want %q", got[0], schemas.ReasonClientClosed)
	}
	if got[0] != d.Reason {
		t.Errorf("OnDisconnect reason %q differs from the disconnected event's %q", got[0], d.Reason)
	}
	if drops, _ := hooks.dropCounts(); drops != 0 {
		t.Errorf("OnSendDrop calls: got %d, want 0", drops)
	}
}

func TestHooksSlowConsumerDrops(t *testing.T) {
	cfg := baseConfig()
	cfg.SendQueue = 4
	hooks := newHookRecorder(&cfg)
	ts := newTestServer(t, cfg, AuthConfig{}, nil)
	rc, w := dialRaw(t, ts, bearer(userToken(t, "vic")))

	// The client reads nothing, so the queue fills and the server closes it.
	payload := []byte(strings.Repeat("x", 64))
	sent := 0
	deadline := time.Now().Add(waitTimeout)
	for i := 0; i < 100_000 && time.Now().Before(deadline); i++ {
		if err := ts.srv.Send(w.ConnectionID, false, payload); err != nil {
			break
		}
		sent++
	}
	ts.app.waitDisconnected(t, w.ConnectionID)
	rc.readUntilClose(t, 200_000)
	waitFor(t, waitTimeout, "OnDisconnect", func() bool { return len(hooks.reasons(w.ConnectionID)) > 0 })

	drops, closes := hooks.dropCounts()
	if closes != 1 {
		t.Errorf("OnSendDrop calls that closed the connection: got %d, want 1", closes)
	}
	if drops < 1 || drops > sent+1 {
		t.Errorf("OnSendDrop calls: got %d, want between 1 and %d (messages queued plus the rejected one)", drops, sent+1)
	}
	if got := hooks.reasons(w.ConnectionID); len(got) != 1 || got[0] != schemas.ReasonSlowConsumer {
		t.Errorf("OnDisconnect reasons: got %v, want [%s]", got, schemas.ReasonSlowConsumer)
	}
}

func TestHooksSkipConnectionWithoutEvent(t *testing.T) {
	cfg := baseConfig()
	hooks := newHookRecorder(&cfg)
	app := &fakeAppender{failType: schemas.TypeConnected}
	ts := newTestServer(t, cfg, AuthConfig{}, app)
	rc, _ := rawHandshake(t, ts, bearer(userToken(t, "wren")))
	rc.readUntilClose(t, 10)
	waitFor(t, waitTimeout, "the connection to be removed", func() bool {
		ts.srv.hub.mu.RLock()
		defer ts.srv.hub.mu.RUnlock()
		return len(ts.srv.hub.conns) == 0
	})

	connects, disconnects := hooks.counts()
	if connects != 0 {
		t.Errorf("OnConnect calls: got %d, want 0 for a connection without a connected event", connects)
	}
	if disconnects != 0 {
		t.Errorf("OnDisconnect calls: got %d, want 0 for a connection without a connected event", disconnects)
	}
}

func TestHooksQueuedConnectedEvent(t *testing.T) {
	cfg := baseConfig()
	hooks := newHookRecorder(&cfg)
	app := &fakeAppender{queuedType: schemas.TypeConnected}
	ts := newTestServer(t, cfg, AuthConfig{}, app)
	rc, _ := rawHandshake(t, ts, bearer(userToken(t, "xia")))
	rc.readUntilClose(t, 10)
	waitFor(t, waitTimeout, "OnDisconnect", func() bool {
		_, n := hooks.counts()
		return n > 0
	})

	connects, disconnects := hooks.counts()
	if connects != 1 {
		t.Errorf("OnConnect calls: got %d, want 1 for a queued connected event", connects)
	}
	if disconnects != 1 {
		t.Errorf("OnDisconnect calls: got %d, want 1", disconnects)
	}
	for _, id := range hooks.connectionIDs() {
		if got := hooks.reasons(id); len(got) != 1 || got[0] != schemas.ReasonInternalError {
			t.Errorf("OnDisconnect reasons of %s: got %v, want [%s]", id, got, schemas.ReasonInternalError)
		}
	}
}

package socket

import (
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/virtufin/websocketmanager/schemas"
)

func TestSendAllReachesEveryConnection(t *testing.T) {
	ts := newTestServer(t, baseConfig(), AuthConfig{Secret: testSecret, AllowAnonymous: true}, nil)
	clients := []*gwsClient{
		dialGWS(t, ts, bearer(userToken(t, "bob"))),
		dialGWS(t, ts, bearer(userToken(t, "bob"))),
		dialGWS(t, ts, bearer(userToken(t, "carol"))),
		dialGWS(t, ts, nil), // anonymous
	}
	for _, c := range clients {
		c.welcome(t)
	}

	delivered, closing, err := ts.srv.SendAll(true, []byte{1, 2})
	if err != nil {
		t.Fatalf("SendAll: %v", err)
	}
	if delivered != len(clients) {
		t.Errorf("SendAll delivered: got %d, want %d", delivered, len(clients))
	}
	if closing != 0 {
		t.Errorf("SendAll closing: got %d, want 0", closing)
	}
	for i, c := range clients {
		if m := c.next(t); !m.binary || string(m.payload) != "\x01\x02" {
			t.Errorf("client %d got %q (binary %v), want binary 0102", i, m.payload, m.binary)
		}
	}
}

func TestSendAllRejectsPayloads(t *testing.T) {
	cfg := baseConfig()
	cfg.WriteLimit = 16
	ts := newTestServer(t, cfg, AuthConfig{}, nil)
	dialGWS(t, ts, bearer(userToken(t, "vic"))).welcome(t)

	if _, _, err := ts.srv.SendAll(true, make([]byte, 17)); !errors.Is(err, ErrPayloadTooLarge) {
		t.Errorf("SendAll over the write limit: got %v, want ErrPayloadTooLarge", err)
	}
	if _, _, err := ts.srv.SendAll(false, []byte{0xff}); !errors.Is(err, ErrInvalidUTF8) {
		t.Errorf("SendAll of invalid UTF-8 text: got %v, want ErrInvalidUTF8", err)
	}
}

func TestSendAllCountsSlowConsumer(t *testing.T) {
	cfg := baseConfig()
	cfg.SendQueue = 4
	ts := newTestServer(t, cfg, AuthConfig{}, nil)
	_, w := dialRaw(t, ts, bearer(userToken(t, "pia")))

	// The raw client reads nothing, so its queue fills once the kernel
	// buffers do, as in TestCloseSlowConsumerQueueFull.
	payload := []byte(strings.Repeat("x", 64))
	closing := 0
	deadline := time.Now().Add(waitTimeout)
	for i := 0; i < 100_000 && closing == 0 && time.Now().Before(deadline); i++ {
		var err error
		if _, closing, err = ts.srv.SendAll(false, payload); err != nil {
			t.Fatalf("SendAll: %v", err)
		}
	}
	if closing != 1 {
		t.Fatalf("SendAll closing once the queue is full: got %d, want 1", closing)
	}

	d := ts.app.waitDisconnected(t, w.ConnectionID)
	checkDisconnected(t, d, 1008, schemas.ReasonSlowConsumer)
}

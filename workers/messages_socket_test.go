package workers

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/cloudevents/sdk-go/v2/event"
	"github.com/golang-jwt/jwt/v5"
	"github.com/lxzan/gws"
	"github.com/rs/zerolog"

	"github.com/virtufin/websocketmanager/internal/embedded"
	"github.com/virtufin/websocketmanager/schemas"
	"github.com/virtufin/websocketmanager/socket"
)

// acceptAll stores nothing and accepts every lifecycle event.
type acceptAll struct{}

func (acceptAll) Append(context.Context, ...*event.Event) error { return nil }

// welcomeClient waits for the welcome of a socket.Server and keeps the
// connection id from it.
type welcomeClient struct {
	gws.BuiltinEventHandler
	welcome chan string
}

func (c *welcomeClient) OnMessage(_ *gws.Conn, m *gws.Message) {
	defer m.Close()
	var w struct {
		ConnectionID string `json:"connectionId"`
	}
	if json.Unmarshal(m.Bytes(), &w) == nil && w.ConnectionID != "" {
		select {
		case c.welcome <- w.ConnectionID:
		default:
		}
	}
}

// TestClientMessagesReachTopic connects a client to a socket.Server whose
// OnMessage hook feeds a MessagePublisher, as wsm serve wires them, and
// reads the events from the in-process pub/sub of the embedded backend.
func TestClientMessagesReachTopic(t *testing.T) {
	ps := embedded.NewPubSub()
	sub := subscribe(t, ps, testMessagesTopic)
	pub := newTestMessagePublisher(t, ps, nil)
	runPublisher(t, pub)

	secret := []byte("0123456789abcdef0123456789abcdef")
	auth, err := socket.NewAuthenticator(socket.AuthConfig{Secret: secret})
	if err != nil {
		t.Fatal(err)
	}
	srv, err := socket.New(socket.Config{
		InstanceID: "pod-a", Incarnation: "inc-1",
		OnMessage: func(info socket.ConnInfo, binary bool, payload []byte) {
			pub.Enqueue(ClientMessage{
				ConnectionID: info.ID, Incarnation: info.Incarnation, UserID: info.UserID,
				Binary: binary, Payload: payload, ReceivedAt: time.Now(),
			})
		},
	}, auth, acceptAll{}, zerolog.Nop())
	if err != nil {
		t.Fatal(err)
	}
	hs := httptest.NewServer(srv)
	t.Cleanup(func() {
		srv.Shutdown(testCtx(t), socket.ServerShutdown("test end"))
		hs.Close()
	})

	tok, err := jwt.NewWithClaims(jwt.SigningMethodHS256, jwt.MapClaims{"sub": "alice", "exp": time.Now().Add(time.Hour).Unix()}).SignedString(secret)
	if err != nil {
		t.Fatal(err)
	}
	c := &welcomeClient{welcome: make(chan string, 1)}
	conn, _, err := gws.NewClient(c, &gws.ClientOption{
		Addr:          "ws" + strings.TrimPrefix(hs.URL, "http") + "/ws",
		RequestHeader: http.Header{"Authorization": {"Bearer " + tok}},
	})
	if err != nil {
		t.Fatal(err)
	}
	go conn.ReadLoop()
	t.Cleanup(func() { conn.NetConn().Close() })
	var connID string
	select {
	case connID = <-c.welcome:
	case <-time.After(waitTimeout):
		t.Fatal("no welcome")
	}

	binary := []byte{0, 1, 2, 0xff}
	if err := conn.WriteString("hello from alice"); err != nil {
		t.Fatal(err)
	}
	if err := conn.WriteMessage(gws.OpcodeBinary, binary); err != nil {
		t.Fatal(err)
	}
	eventually(t, "both client messages on the topic", func() bool { return sub.count() == 2 })

	tests := []struct {
		binary  bool
		payload string
	}{
		{false, "hello from alice"},
		{true, base64.StdEncoding.EncodeToString(binary)},
	}
	for i, m := range sub.all() {
		ev := m.event
		if ev.Type() != schemas.TypeMessageReceived || ev.Subject() != connID || ev.Source() != schemas.Source("pod-a") {
			t.Errorf("message %d: type %q subject %q source %q, want %q %q %q", i, ev.Type(), ev.Subject(), ev.Source(),
				schemas.TypeMessageReceived, connID, schemas.Source("pod-a"))
		}
		var d schemas.MessageReceived
		if err := json.Unmarshal(ev.Data(), &d); err != nil {
			t.Fatal(err)
		}
		if d.Binary != tests[i].binary || d.Payload != tests[i].payload {
			t.Errorf("message %d: binary %v payload %q, want %v %q", i, d.Binary, d.Payload, tests[i].binary, tests[i].payload)
		}
		if d.UserID != "alice" || d.Incarnation != "inc-1" || d.ConnectionID != connID {
			t.Errorf("message %d: user %q incarnation %q connection %q, want alice, inc-1, %s", i, d.UserID, d.Incarnation, d.ConnectionID, connID)
		}
	}
}

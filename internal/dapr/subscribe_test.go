package dapr_test

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"

	"github.com/rs/zerolog"

	"github.com/virtufin/websocketmanager/internal/dapr"
	"github.com/virtufin/websocketmanager/internal/pubsub"
)

// deliveryBody is a command as daprd 1.14 delivers it: the published
// CloudEvent with the attributes the sidecar adds.
const deliveryBody = `{"data":{"a":1},"datacontenttype":"application/json","id":"c1","pubsubname":"pubsub",` +
	`"source":"urn:x","specversion":"1.0","time":"2026-12-04T21:01:21Z","topic":"t.wsm.instance.a",` +
	`"traceid":"00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",` +
	`"traceparent":"00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01","tracestate":"",` +
	`"type":"com.virtufin.websocketmanager.command.send"}`

type recorded struct {
	mu   sync.Mutex
	msgs []pubsub.Message
	err  error
}

func (r *recorded) handle(_ context.Context, m pubsub.Message) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.msgs = append(r.msgs, m)
	return r.err
}

func (r *recorded) messages() []pubsub.Message {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]pubsub.Message(nil), r.msgs...)
}

func newSubscriptions(t *testing.T, appToken string) *dapr.Subscriptions {
	t.Helper()
	s, err := dapr.NewSubscriptions(dapr.SubscriptionsConfig{PubSub: "pubsub", AppToken: appToken, Logger: zerolog.Nop()})
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// call serves one request to h as the sidecar would, from loopback.
func call(t *testing.T, h http.Handler, method, path, body string, hdr http.Header) (int, string) {
	t.Helper()
	req := httptest.NewRequest(method, path, strings.NewReader(body))
	req.RemoteAddr = "127.0.0.1:40000"
	req.Header.Set("Content-Type", "application/cloudevents+json")
	for k, v := range hdr {
		req.Header[k] = v
	}
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, req)
	out, _ := io.ReadAll(rec.Result().Body)
	return rec.Code, strings.TrimSpace(string(out))
}

func TestSubscriptionsListAndDeliver(t *testing.T) {
	s := newSubscriptions(t, "")
	var got recorded
	if err := s.Subscribe(context.Background(), "t.wsm.instance.a", got.handle); err != nil {
		t.Fatal(err)
	}

	code, body := call(t, s, http.MethodGet, dapr.SubscribePath, "", nil)
	if code != http.StatusOK {
		t.Fatalf("GET %s: got %d, want 200", dapr.SubscribePath, code)
	}
	var list []map[string]string
	if err := json.Unmarshal([]byte(body), &list); err != nil {
		t.Fatalf("decode %s: %v", body, err)
	}
	want := map[string]string{"pubsubname": "pubsub", "topic": "t.wsm.instance.a", "route": "/dapr/deliver/t.wsm.instance.a"}
	if len(list) != 1 || list[0]["pubsubname"] != want["pubsubname"] || list[0]["topic"] != want["topic"] || list[0]["route"] != want["route"] {
		t.Fatalf("subscriptions: got %v, want [%v]", list, want)
	}

	code, body = call(t, s, http.MethodPost, list[0]["route"], deliveryBody, nil)
	if code != http.StatusOK || body != `{"status":"SUCCESS"}` {
		t.Errorf("delivery: got %d %s, want 200 SUCCESS", code, body)
	}
	msgs := got.messages()
	if len(msgs) != 1 {
		t.Fatalf("handler calls: got %d, want 1", len(msgs))
	}
	if msgs[0].Topic != "t.wsm.instance.a" || msgs[0].ContentType != pubsub.ContentTypeCloudEvent || string(msgs[0].Data) != deliveryBody {
		t.Errorf("message: got %+v, want the topic, content type and body as delivered", msgs[0])
	}
}

func TestSubscriptionsOutcomes(t *testing.T) {
	s := newSubscriptions(t, "")
	failing := &recorded{err: errors.New("store down")}
	if err := s.Subscribe(context.Background(), "fails", failing.handle); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	var ended recorded
	if err := s.Subscribe(ctx, "ended", ended.handle); err != nil {
		t.Fatal(err)
	}
	cancel()

	tests := []struct {
		name, method, path string
		wantCode           int
		wantBody           string
	}{
		{"handler error", http.MethodPost, dapr.Route("fails"), 200, `{"status":"RETRY"}`},
		{"subscription ended", http.MethodPost, dapr.Route("ended"), 200, `{"status":"RETRY"}`},
		{"unknown topic", http.MethodPost, dapr.Route("nobody"), 404, ""},
		{"config", http.MethodGet, "/dapr/config", 404, ""},
		{"delivery by GET", http.MethodGet, dapr.Route("fails"), 404, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			code, body := call(t, s, tt.method, tt.path, deliveryBody, nil)
			if code != tt.wantCode {
				t.Errorf("status: got %d, want %d", code, tt.wantCode)
			}
			if tt.wantBody != "" && body != tt.wantBody {
				t.Errorf("body: got %s, want %s", body, tt.wantBody)
			}
		})
	}
	if n := len(ended.messages()); n != 0 {
		t.Errorf("ended subscription's handler calls: got %d, want 0", n)
	}

	// The ended topic is no longer listed.
	_, body := call(t, s, http.MethodGet, dapr.SubscribePath, "", nil)
	if strings.Contains(body, `"ended"`) {
		t.Errorf("subscriptions after the context ended: got %s, want no topic \"ended\"", body)
	}
}

func TestSubscribeAfterListingFails(t *testing.T) {
	s := newSubscriptions(t, "")
	var h recorded
	if err := s.Subscribe(context.Background(), "a", h.handle); err != nil {
		t.Fatal(err)
	}
	if err := s.Subscribe(context.Background(), "a", h.handle); !errors.Is(err, dapr.ErrTopicSubscribed) {
		t.Errorf("second Subscribe to a topic: got %v, want ErrTopicSubscribed", err)
	}
	if s.Listed() {
		t.Error("Listed before the sidecar read the list: got true, want false")
	}
	call(t, s, http.MethodGet, dapr.SubscribePath, "", nil)
	if !s.Listed() {
		t.Error("Listed after the sidecar read the list: got false, want true")
	}
	if err := s.Subscribe(context.Background(), "b", h.handle); !errors.Is(err, dapr.ErrSubscribeLate) {
		t.Errorf("Subscribe after the sidecar read the list: got %v, want ErrSubscribeLate", err)
	}
}

func TestSubscriptionsCallers(t *testing.T) {
	s := newSubscriptions(t, "app-secret")
	var h recorded
	if err := s.Subscribe(context.Background(), "a", h.handle); err != nil {
		t.Fatal(err)
	}

	tests := []struct {
		name   string
		remote string
		token  string
		want   int
	}{
		{"sidecar with token", "127.0.0.1:5000", "app-secret", 200},
		{"IPv6 loopback with token", "[::1]:5000", "app-secret", 200},
		{"no token", "127.0.0.1:5000", "", 401},
		{"wrong token", "127.0.0.1:5000", "app-secreT", 401},
		{"remote caller", "10.1.2.3:5000", "app-secret", 403},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			req := httptest.NewRequest(http.MethodPost, dapr.Route("a"), strings.NewReader(deliveryBody))
			req.RemoteAddr = tt.remote
			if tt.token != "" {
				req.Header.Set(dapr.AppTokenHeader, tt.token)
			}
			rec := httptest.NewRecorder()
			s.ServeHTTP(rec, req)
			if rec.Code != tt.want {
				t.Errorf("status: got %d, want %d", rec.Code, tt.want)
			}
		})
	}
	if got := len(h.messages()); got != 2 {
		t.Errorf("handler calls: got %d, want 2 (the accepted callers)", got)
	}
}

func TestNewSubscriptionsNeedsPubSub(t *testing.T) {
	if _, err := dapr.NewSubscriptions(dapr.SubscriptionsConfig{}); !errors.Is(err, dapr.ErrConfig) {
		t.Errorf("NewSubscriptions without a pub/sub: got %v, want ErrConfig", err)
	}
}

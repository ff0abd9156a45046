package dapr_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"sync"
	"testing"
	"time"

	"github.com/virtufin/websocketmanager/internal/dapr"
	"github.com/virtufin/websocketmanager/internal/daprtest"
	"github.com/virtufin/websocketmanager/internal/pubsub"
	"github.com/virtufin/websocketmanager/schemas"
)

// subscriber is a minimal Dapr app. It returns one subscription when the
// sidecar requests them at its start, and keeps the bodies it receives.
type subscriber struct {
	port int

	mu     sync.Mutex
	pubsub string
	topic  string
	got    [][]byte
}

func startSubscriber(t *testing.T) *subscriber {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("listen: %v", err)
	}
	s := &subscriber{port: l.Addr().(*net.TCPAddr).Port}
	mux := http.NewServeMux()
	mux.HandleFunc("GET /dapr/subscribe", func(w http.ResponseWriter, _ *http.Request) {
		s.mu.Lock()
		defer s.mu.Unlock()
		w.Header().Set("Content-Type", "application/json")
		fmt.Fprintf(w, `[{"pubsubname":%q,"topic":%q,"route":"/events"}]`, s.pubsub, s.topic)
	})
	mux.HandleFunc("POST /events", func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(io.LimitReader(r.Body, 1<<20))
		s.mu.Lock()
		s.got = append(s.got, body)
		s.mu.Unlock()
		w.Header().Set("Content-Type", "application/json")
		w.Write([]byte(`{"status":"SUCCESS"}`))
	})
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second}
	go srv.Serve(l)
	t.Cleanup(func() { srv.Close() })
	return s
}

func (s *subscriber) subscribe(pubsubName, topic string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.pubsub, s.topic = pubsubName, topic
}

func (s *subscriber) received() [][]byte {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([][]byte(nil), s.got...)
}

// TestPublishCloudEvent publishes a wsm event to a real subscriber through
// Redis streams. Sent as application/cloudevents+json, it arrives as our
// own CloudEvent. Sent as plain JSON, it arrives wrapped in an envelope of
// Dapr's, which the content type avoids.
func TestPublishCloudEvent(t *testing.T) {
	t.Parallel()
	sub := startSubscriber(t)
	d := daprtest.Prepare(t, daprtest.Options{AppPort: sub.port})
	topic := d.Topic("system-events")
	sub.subscribe(d.PubSub, topic)
	d.Start(t)
	ps := open(t, d, dapr.Config{}).PubSub()

	at := time.Date(2025, 3, 1, 12, 0, 0, 0, time.UTC)
	const traceparent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
	ev, err := schemas.NewConnected(schemas.Envelope{InstanceID: "pod-a", Time: at, Traceparent: traceparent}, schemas.Connected{
		ConnectionID: "conn-1", InstanceID: "pod-a", Incarnation: "inc-1", UserID: "user-1",
		RemoteAddr: "127.0.0.1:40000", UserAgent: "dapr-test", ConnectedAt: at,
	})
	if err != nil {
		t.Fatalf("build event: %v", err)
	}
	raw, err := ev.MarshalJSON()
	if err != nil {
		t.Fatal(err)
	}

	for _, ct := range []string{pubsub.ContentTypeCloudEvent, "application/json"} {
		if err := ps.Publish(waitCtx(t), pubsub.Message{Topic: topic, ContentType: ct, Data: raw}); err != nil {
			t.Fatalf("Publish as %s: %v", ct, err)
		}
	}
	eventually(t, "both messages to reach the subscriber", func() bool { return len(sub.received()) >= 2 })

	var asCloudEvent, asJSON map[string]any
	for _, body := range sub.received() {
		var m map[string]any
		if err := json.Unmarshal(body, &m); err != nil {
			t.Fatalf("delivered body is not JSON: %v\n%s", err, body)
		}
		if m["id"] == ev.ID() {
			asCloudEvent = m
		} else {
			asJSON = m
		}
	}
	if asCloudEvent == nil {
		t.Fatalf("no delivery carries our event id %s: %s", ev.ID(), sub.received())
	}
	want := map[string]any{
		"id": ev.ID(), "source": ev.Source(), "type": ev.Type(), "subject": ev.Subject(),
		"specversion": "1.0", "datacontenttype": "application/json",
		"sequence": ev.Extensions()[schemas.SequenceExtension],
	}
	for k, w := range want {
		if w == nil {
			continue
		}
		if got := asCloudEvent[k]; fmt.Sprint(got) != fmt.Sprint(w) {
			t.Errorf("delivered %s = %v, want %v", k, got, w)
		}
	}
	data, _ := asCloudEvent["data"].(map[string]any)
	if data["connectionId"] != "conn-1" || data["userId"] != "user-1" {
		t.Errorf("delivered data = %v, want our event's data itself", asCloudEvent["data"])
	}
	if asCloudEvent["topic"] != topic || asCloudEvent["pubsubname"] != d.PubSub {
		t.Errorf("delivered topic, pubsubname = %v, %v; want Dapr's own attributes %s, %s", asCloudEvent["topic"], asCloudEvent["pubsubname"], topic, d.PubSub)
	}

	// Dapr replaces a traceparent unless the event also has a traceid.
	if got := asCloudEvent["traceparent"]; got != traceparent {
		t.Errorf("delivered traceparent = %v, want ours, %s", got, traceparent)
	}

	// The contrast: Dapr's envelope, with our whole event as its data.
	if asJSON == nil || asJSON["id"] == ev.ID() {
		t.Fatalf("the plain JSON delivery = %v, want a Dapr envelope with an id of its own", asJSON)
	}
	inner, _ := asJSON["data"].(map[string]any)
	if inner["id"] != ev.ID() || inner["specversion"] != "1.0" {
		t.Errorf("plain JSON delivery data = %v, want our whole event nested inside", asJSON["data"])
	}
	if got := ps.Calls().Publish; got != 2 {
		t.Errorf("Calls().Publish = %d, want 2", got)
	}
}

func TestPubSubErrors(t *testing.T) {
	t.Parallel()
	d := daprtest.Sidecar(t, daprtest.Options{})
	ps := open(t, d, dapr.Config{}).PubSub()

	err := ps.Subscribe(waitCtx(t), "t", func(context.Context, pubsub.Message) error { return nil })
	if !errors.Is(err, dapr.ErrSubscribeUnsupported) || !errors.Is(err, errors.ErrUnsupported) {
		t.Errorf("Subscribe = %v, want ErrSubscribeUnsupported and errors.ErrUnsupported", err)
	}
	if err := ps.Publish(waitCtx(t), pubsub.Message{Data: []byte("{}")}); err == nil {
		t.Error("Publish without a topic succeeded")
	}

	// A body that is not a CloudEvent is refused by the sidecar; retrying
	// cannot help, so it is sent once.
	before := ps.Calls().Publish
	err = ps.Publish(waitCtx(t), pubsub.Message{Topic: d.Topic("t"), ContentType: pubsub.ContentTypeCloudEvent, Data: []byte("not json")})
	if err == nil {
		t.Error("Publish of a broken CloudEvent succeeded")
	}
	t.Logf("broken CloudEvent: %v", err)
	if got := ps.Calls().Publish - before; got != 1 {
		t.Errorf("broken CloudEvent sent %d times, want 1", got)
	}

	ps.Close()
	if err := ps.Publish(waitCtx(t), pubsub.Message{Topic: d.Topic("t"), Data: []byte("{}")}); !errors.Is(err, pubsub.ErrClosed) {
		t.Errorf("Publish after Close = %v, want pubsub.ErrClosed", err)
	}
}

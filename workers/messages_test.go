package workers

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/rs/zerolog"

	"github.com/virtufin/websocketmanager/internal/embedded"
	"github.com/virtufin/websocketmanager/internal/pubsub"
	"github.com/virtufin/websocketmanager/internal/state"
	"github.com/virtufin/websocketmanager/schemas"
)

const testMessagesTopic = "client-messages-test"

// blockingPubSub holds every publish until release is closed, like a
// broker that stopped responding.
type blockingPubSub struct {
	pubsub.PubSub
	release chan struct{}
	calls   atomic.Int64
}

func (p *blockingPubSub) Publish(ctx context.Context, m pubsub.Message) error {
	p.calls.Add(1)
	select {
	case <-p.release:
		return p.PubSub.Publish(ctx, m)
	case <-ctx.Done():
		return ctx.Err()
	}
}

// rejectingPubSub refuses every publish as an invalid request.
type rejectingPubSub struct {
	pubsub.PubSub
	calls atomic.Int64
}

func (p *rejectingPubSub) Publish(context.Context, pubsub.Message) error {
	p.calls.Add(1)
	return fmt.Errorf("publish: %w", state.ErrInvalidArgument)
}

func newTestMessagePublisher(t *testing.T, ps pubsub.PubSub, change func(*MessagePublisherConfig)) *MessagePublisher {
	t.Helper()
	cfg := MessagePublisherConfig{
		PubSub: ps, InstanceID: "pod-a", Topic: testMessagesTopic,
		RetryMin: time.Millisecond, RetryMax: 10 * time.Millisecond, Logger: zerolog.Nop(),
	}
	if change != nil {
		change(&cfg)
	}
	p, err := NewMessagePublisher(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return p
}

// runPublisher runs p until the test ends.
func runPublisher(t *testing.T, p *MessagePublisher) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	wg.Go(func() { p.Run(ctx) })
	t.Cleanup(func() { cancel(); wg.Wait() })
}

func clientMessage(conn string, binary bool, payload []byte) ClientMessage {
	return ClientMessage{
		ConnectionID: conn, Incarnation: "inc-1", UserID: "u1",
		Binary: binary, Payload: payload, ReceivedAt: time.Now(),
	}
}

func TestMessagePublisherPublishesEvents(t *testing.T) {
	ps := embedded.NewPubSub()
	sub := subscribe(t, ps, testMessagesTopic)
	p := newTestMessagePublisher(t, ps, nil)
	runPublisher(t, p)

	binary := []byte{0, 1, 2, 0xfe, 0xff}
	if err := p.Enqueue(clientMessage("c1", false, []byte("hello ✓"))); err != nil {
		t.Fatal(err)
	}
	if err := p.Enqueue(clientMessage("c2", true, binary)); err != nil {
		t.Fatal(err)
	}
	eventually(t, "two messages on the topic", func() bool { return sub.count() == 2 })

	tests := []struct {
		conn    string
		binary  bool
		payload string
	}{
		{"c1", false, "hello ✓"},
		{"c2", true, base64.StdEncoding.EncodeToString(binary)},
	}
	got := sub.all()
	for i, tt := range tests {
		m := got[i]
		if m.contentType != pubsub.ContentTypeCloudEvent {
			t.Errorf("message %d: content type %q, want %q", i, m.contentType, pubsub.ContentTypeCloudEvent)
		}
		ev := m.event
		if err := schemas.Validate(&ev); err != nil {
			t.Errorf("message %d: %v", i, err)
		}
		if ev.Type() != schemas.TypeMessageReceived {
			t.Errorf("message %d: type %q, want %q", i, ev.Type(), schemas.TypeMessageReceived)
		}
		if ev.Subject() != tt.conn {
			t.Errorf("message %d: subject %q, want %q", i, ev.Subject(), tt.conn)
		}
		if ev.Source() != schemas.Source("pod-a") {
			t.Errorf("message %d: source %q, want %q", i, ev.Source(), schemas.Source("pod-a"))
		}
		var d schemas.MessageReceived
		if err := json.Unmarshal(ev.Data(), &d); err != nil {
			t.Fatalf("message %d: data: %v", i, err)
		}
		if d.Binary != tt.binary || d.Payload != tt.payload {
			t.Errorf("message %d: binary %v payload %q, want %v %q", i, d.Binary, d.Payload, tt.binary, tt.payload)
		}
		if d.InstanceID != "pod-a" || d.Incarnation != "inc-1" || d.UserID != "u1" || d.ConnectionID != tt.conn {
			t.Errorf("message %d: data %+v, want pod-a, inc-1, u1, %s", i, d, tt.conn)
		}
	}
	if st := p.Stats(); st.Published != 2 || st.Queued != 0 {
		t.Errorf("stats %+v, want 2 published and none queued", st)
	}
}

func TestMessagePublisherKeepsOrder(t *testing.T) {
	ps := embedded.NewPubSub()
	sub := subscribe(t, ps, testMessagesTopic)
	p := newTestMessagePublisher(t, ps, nil)
	runPublisher(t, p)

	const n = 200
	for i := range n {
		if err := p.Enqueue(clientMessage("c1", false, []byte(fmt.Sprint(i)))); err != nil {
			t.Fatal(err)
		}
	}
	eventually(t, "every message on the topic", func() bool { return sub.count() == n })
	for i, m := range sub.all() {
		var d schemas.MessageReceived
		if err := json.Unmarshal(m.event.Data(), &d); err != nil {
			t.Fatal(err)
		}
		if d.Payload != fmt.Sprint(i) {
			t.Fatalf("message %d has payload %q, want %q", i, d.Payload, fmt.Sprint(i))
		}
	}
}

func TestMessagePublisherCopiesPayload(t *testing.T) {
	ps := embedded.NewPubSub()
	sub := subscribe(t, ps, testMessagesTopic)
	p := newTestMessagePublisher(t, ps, nil)

	buf := []byte("first")
	if err := p.Enqueue(clientMessage("c1", false, buf)); err != nil {
		t.Fatal(err)
	}
	copy(buf, "XXXXX") // the socket reuses its read buffer
	runPublisher(t, p)

	eventually(t, "the message on the topic", func() bool { return sub.count() == 1 })
	var d schemas.MessageReceived
	json.Unmarshal(sub.all()[0].event.Data(), &d)
	if d.Payload != "first" {
		t.Errorf("payload %q, want %q as it was at Enqueue", d.Payload, "first")
	}
}

func TestMessagePublisherRetriesSameEvent(t *testing.T) {
	ps := &flakyPubSub{PubSub: embedded.NewPubSub()}
	ps.down.Store(true)
	sub := subscribe(t, ps, testMessagesTopic)
	p := newTestMessagePublisher(t, ps, nil)
	runPublisher(t, p)

	for i := range 3 {
		if err := p.Enqueue(clientMessage(fmt.Sprintf("c%d", i), false, []byte("x"))); err != nil {
			t.Fatal(err)
		}
	}
	eventually(t, "a few failed attempts", func() bool { return ps.failures.Load() >= 3 })
	if got := sub.count(); got != 0 {
		t.Fatalf("%d messages arrived while the topic was down, want 0", got)
	}
	ps.down.Store(false)

	eventually(t, "every message after the outage", func() bool { return sub.count() == 3 })
	seen := map[string]bool{}
	for i, m := range sub.all() {
		if seen[m.event.ID()] {
			t.Errorf("event id %s arrived twice", m.event.ID())
		}
		seen[m.event.ID()] = true
		if want := fmt.Sprintf("c%d", i); m.event.Subject() != want {
			t.Errorf("message %d from %s, want %s: order lost across retries", i, m.event.Subject(), want)
		}
	}
	if st := p.Stats(); st.Published != 3 || st.Dropped != 0 || st.Rejected != 0 {
		t.Errorf("stats %+v, want 3 published, none dropped or rejected", st)
	}
}

func TestMessagePublisherDropsNewestWhenFull(t *testing.T) {
	tests := []struct {
		name     string
		change   func(*MessagePublisherConfig)
		payload  int
		accepted int
	}{
		{"count limit", func(c *MessagePublisherConfig) { c.MaxQueue = 3 }, 10, 3},
		{"byte limit", func(c *MessagePublisherConfig) { c.MaxQueueBytes = 25 }, 10, 2},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ps := &blockingPubSub{PubSub: embedded.NewPubSub(), release: make(chan struct{})}
			sub := subscribe(t, ps, testMessagesTopic)
			p := newTestMessagePublisher(t, ps, tt.change)

			// Nothing runs yet, so every accepted message stays queued.
			const offered = 6
			var full int
			for i := range offered {
				err := p.Enqueue(clientMessage(fmt.Sprintf("c%d", i), true, make([]byte, tt.payload)))
				switch {
				case err == nil:
				case errors.Is(err, ErrMessageQueueFull):
					full++
				default:
					t.Fatalf("Enqueue %d = %v, want nil or ErrMessageQueueFull", i, err)
				}
			}
			if got, want := offered-full, tt.accepted; got != want {
				t.Errorf("accepted %d messages, want %d", got, want)
			}
			if st := p.Stats(); st.Queued != tt.accepted || st.Dropped != uint64(offered-tt.accepted) {
				t.Errorf("stats %+v, want %d queued and %d dropped", st, tt.accepted, offered-tt.accepted)
			}

			close(ps.release)
			runPublisher(t, p)
			eventually(t, "the queued messages on the topic", func() bool { return sub.count() == tt.accepted })
			for i, m := range sub.all() {
				if want := fmt.Sprintf("c%d", i); m.event.Subject() != want {
					t.Errorf("message %d from %s, want %s: the oldest are kept", i, m.event.Subject(), want)
				}
			}
		})
	}
}

func TestMessagePublisherEnqueueDoesNotBlock(t *testing.T) {
	ps := &blockingPubSub{PubSub: embedded.NewPubSub(), release: make(chan struct{})}
	defer close(ps.release)
	p := newTestMessagePublisher(t, ps, func(c *MessagePublisherConfig) { c.MaxQueue = 100 })
	runPublisher(t, p)

	if err := p.Enqueue(clientMessage("c0", false, []byte("x"))); err != nil {
		t.Fatal(err)
	}
	eventually(t, "the first publish to hang", func() bool { return ps.calls.Load() > 0 })

	start := time.Now()
	for i := range 1000 {
		p.Enqueue(clientMessage(fmt.Sprintf("c%d", i+1), false, []byte("x")))
	}
	if took := time.Since(start); took > 2*time.Second {
		t.Errorf("1,000 Enqueue calls behind a hung publish took %v, want them not to wait for it", took)
	}
	// The first message is in flight, so the queue holds the next 100.
	if st := p.Stats(); st.Dropped != 900 || st.Queued != 100 {
		t.Errorf("stats %+v, want 100 queued and 900 dropped", st)
	}
}

func TestMessagePublisherRejectedNotRetried(t *testing.T) {
	ps := &rejectingPubSub{PubSub: embedded.NewPubSub()}
	p := newTestMessagePublisher(t, ps, nil)
	runPublisher(t, p)

	for i := range 2 {
		if err := p.Enqueue(clientMessage(fmt.Sprintf("c%d", i), false, []byte("x"))); err != nil {
			t.Fatal(err)
		}
	}
	eventually(t, "both messages given up on", func() bool { return p.Stats().Rejected == 2 })
	if got := ps.calls.Load(); got != 2 {
		t.Errorf("%d publish calls, want 2: a rejected request is not retried", got)
	}
}

func TestMessagePublisherRejectsInvalidEvent(t *testing.T) {
	ps := embedded.NewPubSub()
	sub := subscribe(t, ps, testMessagesTopic)
	p := newTestMessagePublisher(t, ps, nil)
	runPublisher(t, p)

	bad := clientMessage("", false, []byte("x")) // no connection id
	if err := p.Enqueue(bad); err != nil {
		t.Fatal(err)
	}
	if err := p.Enqueue(clientMessage("c1", false, []byte("y"))); err != nil {
		t.Fatal(err)
	}
	eventually(t, "the valid message on the topic", func() bool { return sub.count() == 1 })
	if st := p.Stats(); st.Rejected != 1 || st.Published != 1 {
		t.Errorf("stats %+v, want 1 rejected and 1 published", st)
	}
}

func TestMessagePublisherCloseFlushes(t *testing.T) {
	ps := embedded.NewPubSub()
	sub := subscribe(t, ps, testMessagesTopic)
	p := newTestMessagePublisher(t, ps, nil)
	for i := range 5 {
		if err := p.Enqueue(clientMessage(fmt.Sprintf("c%d", i), false, []byte("x"))); err != nil {
			t.Fatal(err)
		}
	}
	runPublisher(t, p)

	if err := p.Close(testCtx(t)); err != nil {
		t.Fatalf("Close = %v, want nil", err)
	}
	if got := sub.count(); got != 5 {
		t.Errorf("%d messages published before Close returned, want 5", got)
	}
	if err := p.Enqueue(clientMessage("late", false, []byte("x"))); !errors.Is(err, ErrPublisherClosed) {
		t.Errorf("Enqueue after Close = %v, want ErrPublisherClosed", err)
	}
	if err := p.Close(testCtx(t)); err != nil {
		t.Errorf("second Close = %v, want nil", err)
	}
}

func TestMessagePublisherCloseTimesOut(t *testing.T) {
	ps := &blockingPubSub{PubSub: embedded.NewPubSub(), release: make(chan struct{})}
	defer close(ps.release)
	p := newTestMessagePublisher(t, ps, nil)
	for i := range 3 {
		p.Enqueue(clientMessage(fmt.Sprintf("c%d", i), false, []byte("x")))
	}
	runPublisher(t, p)
	eventually(t, "the first publish to hang", func() bool { return ps.calls.Load() > 0 })

	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	err := p.Close(ctx)
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Close = %v, want it to wrap context.DeadlineExceeded", err)
	}
	if st := p.Stats(); st.Lost != 3 {
		t.Errorf("lost %d, want 3: one in flight and two queued", st.Lost)
	}
}

func TestMessagePublisherConfigValidate(t *testing.T) {
	ps := embedded.NewPubSub()
	tests := []struct {
		name string
		cfg  MessagePublisherConfig
		ok   bool
	}{
		{"valid", MessagePublisherConfig{PubSub: ps, InstanceID: "pod-a"}, true},
		{"no pubsub", MessagePublisherConfig{InstanceID: "pod-a"}, false},
		{"no instance", MessagePublisherConfig{PubSub: ps}, false},
		{"negative queue", MessagePublisherConfig{PubSub: ps, InstanceID: "pod-a", MaxQueue: -1}, false},
		{"retry min over max", MessagePublisherConfig{PubSub: ps, InstanceID: "pod-a", RetryMin: time.Second, RetryMax: time.Millisecond}, false},
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

	p, err := NewMessagePublisher(MessagePublisherConfig{PubSub: ps, InstanceID: "pod-a"})
	if err != nil {
		t.Fatal(err)
	}
	if got := p.Topic(); got != DefaultMessagesTopic {
		t.Errorf("default topic %q, want %q", got, DefaultMessagesTopic)
	}
}

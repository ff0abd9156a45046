package workers

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/cloudevents/sdk-go/v2/event"
	"github.com/rs/zerolog"

	"github.com/virtufin/websocketmanager/internal/embedded"
	"github.com/virtufin/websocketmanager/internal/pubsub"
	"github.com/virtufin/websocketmanager/internal/state"
	"github.com/virtufin/websocketmanager/schemas"
)

// flakyPubSub fails every publish while down is set, like a topic whose
// broker is unreachable.
type flakyPubSub struct {
	pubsub.PubSub
	down     atomic.Bool
	failures atomic.Int64
}

func (p *flakyPubSub) Publish(ctx context.Context, m pubsub.Message) error {
	if p.down.Load() {
		p.failures.Add(1)
		return errors.New("topic unreachable")
	}
	return p.PubSub.Publish(ctx, m)
}

// received is one message a subscriber got, decoded.
type received struct {
	contentType string
	event       event.Event
}

// subscriber collects what arrives on a topic.
type subscriber struct {
	mu   sync.Mutex
	msgs []received
	// onEvent, when set, runs for each message with its sequence.
	onEvent func(seq string)
}

func subscribe(t *testing.T, ps pubsub.PubSub, topic string) *subscriber {
	t.Helper()
	s := &subscriber{}
	err := ps.Subscribe(t.Context(), topic, func(_ context.Context, m pubsub.Message) error {
		ev := event.New()
		if err := ev.UnmarshalJSON(m.Data); err != nil {
			return fmt.Errorf("message is not a structured CloudEvent: %w", err)
		}
		s.mu.Lock()
		s.msgs = append(s.msgs, received{contentType: m.ContentType, event: ev})
		hook := s.onEvent
		s.mu.Unlock()
		if hook != nil {
			hook(fmt.Sprint(ev.Extensions()[schemas.SequenceExtension]))
		}
		return nil
	})
	if err != nil {
		t.Fatalf("subscribe to %s: %v", topic, err)
	}
	return s
}

func (s *subscriber) count() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.msgs)
}

func (s *subscriber) ids() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make([]string, len(s.msgs))
	for i, m := range s.msgs {
		out[i] = m.event.ID()
	}
	return out
}

func (s *subscriber) all() []received {
	s.mu.Lock()
	defer s.mu.Unlock()
	return slices.Clone(s.msgs)
}

// streamIDs returns the ids of a stream's events in stream order, skipping
// heartbeats unless asked for them.
func streamIDs(t *testing.T, f *fleet, stream string, heartbeats bool) []string {
	t.Helper()
	records, err := f.newLog().Read(testCtx(t), stream, 1, 10_000)
	if err != nil {
		t.Fatalf("read %s: %v", stream, err)
	}
	var out []string
	for _, r := range records {
		if heartbeats || r.Event.Type() != schemas.TypeHeartbeat {
			out = append(out, r.Event.ID())
		}
	}
	return out
}

func newTestPublisher(t *testing.T, f *fleet, ps pubsub.PubSub, change func(*PublisherConfig)) *Publisher {
	t.Helper()
	cfg := PublisherConfig{
		Log: f.newLog(), PubSub: ps, RetryMin: time.Millisecond, RetryMax: 20 * time.Millisecond,
		BatchSize: 2, Logger: zerolog.Nop(),
	}
	if change != nil {
		change(&cfg)
	}
	p, err := NewPublisher(cfg)
	if err != nil {
		t.Fatalf("new publisher: %v", err)
	}
	return p
}

// waitCursor waits until the stored cursor of a stream reaches seq.
func waitCursor(t *testing.T, p *Publisher, stream string, seq uint64) {
	t.Helper()
	eventually(t, fmt.Sprintf("the cursor of %s at %d", stream, seq), func() bool {
		got, err := p.Cursor(testCtx(t), stream)
		return err == nil && got == seq
	})
}

// follow runs Follow on its own goroutine and returns a function that
// stops it and returns its result.
func follow(t *testing.T, p *Publisher, stream string) (stop func() error) {
	t.Helper()
	ctx, cancel := context.WithCancel(testCtx(t))
	done := make(chan error, 1)
	go func() { done <- p.Follow(ctx, stream) }()
	return func() error {
		cancel()
		select {
		case err := <-done:
			return err
		case <-time.After(waitTimeout):
			t.Fatalf("Follow did not return within %v of cancel", waitTimeout)
			return nil
		}
	}
}

func TestPublisherOutageKeepsIDsAndOrder(t *testing.T) {
	f := newFleet(t)
	n := f.node(t, "pod-a")
	broker := &flakyPubSub{PubSub: embedded.NewPubSub()}
	sub := subscribe(t, broker, DefaultTopic)
	var logs syncBuffer
	pub := newTestPublisher(t, f, broker, func(c *PublisherConfig) {
		c.Logger = zerolog.New(&logs)
		c.WarnEvery = time.Hour
	})
	stop := follow(t, pub, n.id.Stream())

	n.heartbeat(t, schemas.StateServing)
	n.connect(t, "c1")
	eventually(t, "the first connected event", func() bool { return sub.count() == 1 })

	broker.down.Store(true)
	n.connect(t, "c2", "c3")
	n.heartbeat(t, schemas.StateServing)
	n.disconnect(t, "c1")
	eventually(t, "three failed attempts", func() bool { return broker.failures.Load() >= 3 })
	if got := sub.count(); got != 1 {
		t.Fatalf("during the outage: got %d events, want still 1", got)
	}
	broker.down.Store(false)
	eventually(t, "the events of the outage", func() bool { return sub.count() == 4 })
	waitCursor(t, pub, n.id.Stream(), 6)
	if err := stop(); err != nil {
		t.Fatalf("Follow: got %v, want nil after cancel", err)
	}

	want := streamIDs(t, f, n.id.Stream(), false)
	if got := sub.ids(); !slices.Equal(got, want) {
		t.Errorf("got ids %v, want the stream's %v in order", got, want)
	}
	for _, m := range sub.all() {
		if m.contentType != pubsub.ContentTypeCloudEvent {
			t.Errorf("event %s: got content type %q, want %q", m.event.ID(), m.contentType, pubsub.ContentTypeCloudEvent)
		}
		if m.event.Source() != schemas.Source("pod-a") {
			t.Errorf("event %s: got source %q, want %q", m.event.ID(), m.event.Source(), schemas.Source("pod-a"))
		}
		if !strings.HasPrefix(m.event.Type(), schemas.TypePrefix) || m.event.Type() == schemas.TypeHeartbeat {
			t.Errorf("event %s: got type %q, want a connection event", m.event.ID(), m.event.Type())
		}
	}
	var data schemas.Connected
	if err := sub.all()[0].event.DataAs(&data); err != nil || data.ConnectionID != "c1" {
		t.Errorf("first event data: got %+v (%v), want connection c1", data, err)
	}

	if got := len(logs.lines(t, "publish failed, retrying the same event")); got != 1 {
		t.Errorf("got %d publish warnings over %d failures, want 1 within the warning period", got, broker.failures.Load())
	}
	if got := logs.lines(t, "published after retries"); len(got) != 1 || got[0]["event_id"] != want[1] {
		t.Errorf("got recovery lines %v, want one for event %s", got, want[1])
	}
}

func TestPublisherRestartResumesFromCursor(t *testing.T) {
	f := newFleet(t)
	n := f.node(t, "pod-a")
	broker := embedded.NewPubSub()
	sub := subscribe(t, broker, DefaultTopic)
	stream := n.id.Stream()

	n.connect(t, connIDs("first", 5)...)
	pub := newTestPublisher(t, f, broker, nil)
	stop := follow(t, pub, stream)
	eventually(t, "the first 5 events", func() bool { return sub.count() == 5 })
	waitCursor(t, pub, stream, 5)
	if err := stop(); err != nil {
		t.Fatalf("Follow: %v", err)
	}

	// Events appended while no publisher runs go out after the restart,
	// and none of the first five goes out again.
	n.connect(t, connIDs("second", 4)...)
	restarted := newTestPublisher(t, f, broker, nil)
	stop = follow(t, restarted, stream)
	eventually(t, "the 4 events appended while stopped", func() bool { return sub.count() == 9 })
	waitCursor(t, restarted, stream, 9)
	if err := stop(); err != nil {
		t.Fatalf("Follow: %v", err)
	}
	if got, want := sub.ids(), streamIDs(t, f, stream, false); !slices.Equal(got, want) {
		t.Fatalf("after a clean restart: got ids %v, want %v", got, want)
	}

	// The publisher stops in the middle of a batch. The subscriber's
	// handler cancels it on the second event of the batch, so the batch's
	// cursor write fails and the batch goes out again after the restart.
	n.connect(t, connIDs("third", 4)...)
	ctx, cancel := context.WithCancel(testCtx(t))
	defer cancel()
	sub.mu.Lock()
	sub.onEvent = func(seq string) {
		if seq == schemas.FormatSequence(11) {
			cancel()
		}
	}
	sub.mu.Unlock()
	if err := newTestPublisher(t, f, broker, nil).Follow(ctx, stream); err != nil {
		t.Fatalf("Follow: %v", err)
	}
	sub.mu.Lock()
	sub.onEvent = nil
	sub.mu.Unlock()
	if got := sub.count(); got != 11 {
		t.Fatalf("before the restart: got %d events, want 11", got)
	}

	stop = follow(t, newTestPublisher(t, f, broker, nil), stream)
	eventually(t, "the rest of the stream", func() bool { return sub.count() == 15 })
	if err := stop(); err != nil {
		t.Fatalf("Follow: %v", err)
	}

	want := streamIDs(t, f, stream, false)
	got := sub.ids()
	// Events 10 and 11, the unacknowledged batch, arrive twice.
	wantSent := append(slices.Clone(want[:11]), want[9:]...)
	if !slices.Equal(got, wantSent) {
		t.Errorf("got ids %v, want %v: the stream once, plus only the last unacknowledged batch again", got, wantSent)
	}
}

func TestPublisherHeartbeatFilter(t *testing.T) {
	tests := []struct {
		name       string
		heartbeats bool
		wantTypes  []string
	}{
		{"skipped by default", false, []string{schemas.TypeConnected, schemas.TypeDisconnected}},
		{"published when asked", true, []string{
			schemas.TypeHeartbeat, schemas.TypeConnected, schemas.TypeHeartbeat, schemas.TypeDisconnected, schemas.TypeHeartbeat,
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := newFleet(t)
			n := f.node(t, "pod-a")
			broker := embedded.NewPubSub()
			sub := subscribe(t, broker, "audit")
			pub := newTestPublisher(t, f, broker, func(c *PublisherConfig) {
				c.Topic = "audit"
				c.Heartbeats = tt.heartbeats
			})
			n.heartbeat(t, schemas.StateServing)
			n.connect(t, "c1")
			n.heartbeat(t, schemas.StateServing)
			n.disconnect(t, "c1")
			n.heartbeat(t, schemas.StateStopped)

			if err := pub.Drain(testCtx(t), n.id.Stream()); err != nil {
				t.Fatalf("drain: %v", err)
			}

			var got []string
			for _, m := range sub.all() {
				got = append(got, m.event.Type())
			}
			if !slices.Equal(got, tt.wantTypes) {
				t.Errorf("got types %v, want %v", got, tt.wantTypes)
			}
			if c, err := pub.Cursor(testCtx(t), n.id.Stream()); err != nil || c != 5 {
				t.Errorf("cursor after drain: got (%d, %v), want (5, nil)", c, err)
			}
		})
	}
}

func TestPublisherDrainQueue(t *testing.T) {
	f := newFleet(t)
	dead, old, current, other := f.node(t, "pod-d"), f.node(t, "pod-a"), f.node(t, "pod-a"), f.node(t, "pod-q")
	dead.connect(t, "d1", "d2")
	old.connect(t, "a1")
	current.connect(t, "a2")
	other.connect(t, "q1")
	broker := embedded.NewPubSub()
	sub := subscribe(t, broker, DefaultTopic)
	pub := newTestPublisher(t, f, broker, nil)

	n, err := pub.EnqueuePrevious(testCtx(t), "pod-a", current.id.Incarnation)
	if err != nil || n != 1 {
		t.Fatalf("enqueue previous: got (%d, %v), want (1, nil)", n, err)
	}
	pub.Enqueue(dead.id.Stream())
	pub.Enqueue(dead.id.Stream())
	ctx, cancel := context.WithCancel(testCtx(t))
	var wg sync.WaitGroup
	wg.Go(func() { pub.Run(ctx) })
	eventually(t, "the queued streams drained", func() bool { return sub.count() == 3 })
	cancel()
	wg.Wait()

	want := append(streamIDs(t, f, old.id.Stream(), false), streamIDs(t, f, dead.id.Stream(), false)...)
	if got := sub.ids(); !slices.Equal(got, want) {
		t.Errorf("got ids %v, want the earlier incarnation's then the dead stream's %v", got, want)
	}
	for _, s := range []*node{current, other} {
		if c, err := pub.Cursor(testCtx(t), s.id.Stream()); err != nil || c != 0 {
			t.Errorf("cursor of %s, which was not queued: got (%d, %v), want (0, nil)", s.id.Stream(), c, err)
		}
	}
}

func TestPublisherCursorNeverMovesBack(t *testing.T) {
	f := newFleet(t)
	pub := newTestPublisher(t, f, embedded.NewPubSub(), nil)
	const stream = "pod-a/inc-1"

	steps := []struct {
		seq, want uint64
	}{
		{3, 3},
		{7, 7},
		{5, 7}, // another publisher of the stream got further
		{8, 8},
	}
	for _, s := range steps {
		got, err := pub.advanceCursor(testCtx(t), stream, s.seq)
		if err != nil {
			t.Fatalf("advance cursor to %d: %v", s.seq, err)
		}
		if got != s.want {
			t.Errorf("advance cursor to %d: got %d, want %d", s.seq, got, s.want)
		}
	}
}

func TestPublisherInvalidCursor(t *testing.T) {
	f := newFleet(t)
	n := f.node(t, "pod-a")
	n.connect(t, "c1")
	if err := f.store.Transact(testCtx(t), []state.Op{{Kind: state.Upsert, Key: PublisherCursorKey(n.id.Stream()), Value: []byte("seven")}}); err != nil {
		t.Fatalf("write a damaged cursor: %v", err)
	}
	pub := newTestPublisher(t, f, embedded.NewPubSub(), nil)

	if err := pub.Drain(testCtx(t), n.id.Stream()); !errors.Is(err, ErrCursorInvalid) {
		t.Errorf("drain: got %v, want ErrCursorInvalid", err)
	}
	if err := pub.Follow(testCtx(t), n.id.Stream()); !errors.Is(err, ErrCursorInvalid) {
		t.Errorf("follow: got %v, want ErrCursorInvalid", err)
	}
}

func TestPublisherConfigValidate(t *testing.T) {
	f := newFleet(t)
	log, ps := f.newLog(), embedded.NewPubSub()
	tests := []struct {
		name    string
		cfg     PublisherConfig
		wantErr bool
	}{
		{"complete", PublisherConfig{Log: log, PubSub: ps}, false},
		{"no log", PublisherConfig{PubSub: ps}, true},
		{"no pubsub", PublisherConfig{Log: log}, true},
		{"negative batch", PublisherConfig{Log: log, PubSub: ps, BatchSize: -1}, true},
		{"retry bounds reversed", PublisherConfig{Log: log, PubSub: ps, RetryMin: time.Second, RetryMax: time.Millisecond}, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := NewPublisher(tt.cfg)
			if (err != nil) != tt.wantErr {
				t.Fatalf("got error %v, want error %v", err, tt.wantErr)
			}
			if err != nil && !errors.Is(err, ErrInvalidConfig) {
				t.Errorf("got %v, want it to wrap ErrInvalidConfig", err)
			}
		})
	}
	p, err := NewPublisher(PublisherConfig{Log: log, PubSub: ps})
	if err != nil {
		t.Fatalf("new publisher: %v", err)
	}
	if p.cfg.Topic != DefaultTopic || p.cfg.BatchSize != DefaultPublishBatch || p.cfg.WarnEvery != DefaultWarnEvery {
		t.Errorf("defaults: got topic %q batch %d warn every %v", p.cfg.Topic, p.cfg.BatchSize, p.cfg.WarnEvery)
	}
}

func TestWarnLimiter(t *testing.T) {
	clock := newFakeClock()
	l := newWarnLimiter(30*time.Second, clock.Now)
	steps := []struct {
		after          time.Duration
		wantOK         bool
		wantSuppressed int
	}{
		{0, true, 0},
		{time.Second, false, 0},
		{10 * time.Second, false, 0},
		{18 * time.Second, false, 0},
		{time.Second, true, 3},
		{time.Second, false, 0},
		{time.Minute, true, 1},
	}
	for i, s := range steps {
		clock.Advance(s.after)
		ok, suppressed := l.allow()
		if ok != s.wantOK || suppressed != s.wantSuppressed {
			t.Errorf("step %d: got (%v, %d), want (%v, %d)", i, ok, suppressed, s.wantOK, s.wantSuppressed)
		}
	}
}

func TestBackoffDoublesUpToCap(t *testing.T) {
	b := newBackoff(100*time.Millisecond, time.Second)
	steps := []time.Duration{100 * time.Millisecond, 200 * time.Millisecond, 400 * time.Millisecond, 800 * time.Millisecond, time.Second, time.Second}
	for i, step := range steps {
		got := b.wait()
		if got < step/2 || got > step {
			t.Errorf("wait %d: got %v, want between %v and %v", i, got, step/2, step)
		}
	}
	b.reset()
	if got := b.wait(); got > 100*time.Millisecond {
		t.Errorf("after reset: got %v, want at most 100ms", got)
	}
}

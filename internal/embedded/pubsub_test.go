package embedded

import (
	"context"
	"errors"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/virtufin/websocketmanager/internal/pubsub"
)

func TestPubSubDeliversInOrder(t *testing.T) {
	p := NewPubSub()
	defer p.Close()

	var mu sync.Mutex
	got := map[string][]string{}
	handler := func(name string) pubsub.Handler {
		return func(_ context.Context, m pubsub.Message) error {
			mu.Lock()
			defer mu.Unlock()
			got[name] = append(got[name], string(m.Data))
			return nil
		}
	}
	for _, name := range []string{"first", "second"} {
		if err := p.Subscribe(t.Context(), "events", handler(name)); err != nil {
			t.Fatalf("Subscribe: %v", err)
		}
	}
	if err := p.Subscribe(t.Context(), "other", handler("other")); err != nil {
		t.Fatalf("Subscribe: %v", err)
	}

	for _, d := range []string{"1", "2", "3"} {
		if err := p.Publish(t.Context(), pubsub.Message{Topic: "events", ContentType: pubsub.ContentTypeCloudEvent, Data: []byte(d)}); err != nil {
			t.Fatalf("Publish: %v", err)
		}
	}
	// Delivery is synchronous, so everything arrived when Publish returned.
	for _, name := range []string{"first", "second"} {
		if want := []string{"1", "2", "3"}; !slices.Equal(got[name], want) {
			t.Errorf("%s received %v, want %v", name, got[name], want)
		}
	}
	if len(got["other"]) != 0 {
		t.Errorf("subscriber of another topic received %v", got["other"])
	}
}

func TestPubSubHandlerErrorReturned(t *testing.T) {
	p := NewPubSub()
	defer p.Close()
	boom := errors.New("handler failed")
	var calls int
	p.Subscribe(t.Context(), "events", func(context.Context, pubsub.Message) error { calls++; return boom })
	p.Subscribe(t.Context(), "events", func(context.Context, pubsub.Message) error { calls++; return nil })

	if err := p.Publish(t.Context(), pubsub.Message{Topic: "events"}); !errors.Is(err, boom) {
		t.Errorf("Publish: got %v, want %v", err, boom)
	}
	if calls != 2 {
		t.Errorf("%d handlers ran, want 2: a failing handler does not stop the others", calls)
	}
	if err := p.Publish(t.Context(), pubsub.Message{Topic: "nobody"}); err != nil {
		t.Errorf("Publish to a topic without subscribers: %v", err)
	}
}

func TestPubSubUnsubscribeOnCancel(t *testing.T) {
	p := NewPubSub()
	defer p.Close()
	ctx, cancel := context.WithCancel(t.Context())
	var mu sync.Mutex
	var calls int
	p.Subscribe(ctx, "events", func(context.Context, pubsub.Message) error {
		mu.Lock()
		defer mu.Unlock()
		calls++
		return nil
	})
	p.Publish(t.Context(), pubsub.Message{Topic: "events"})
	cancel()

	// The subscription is dropped by a context.AfterFunc goroutine: poll
	// until a publish no longer reaches it.
	deadline := time.Now().Add(5 * time.Second)
	for {
		mu.Lock()
		before := calls
		mu.Unlock()
		p.Publish(t.Context(), pubsub.Message{Topic: "events"})
		mu.Lock()
		after := calls
		mu.Unlock()
		if after == before {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("handler still called 5s after its subscription's context was canceled")
		}
		time.Sleep(time.Millisecond)
	}
}

func TestPubSubClosed(t *testing.T) {
	p := NewPubSub()
	var calls int
	p.Subscribe(t.Context(), "events", func(context.Context, pubsub.Message) error { calls++; return nil })
	if err := p.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	if err := p.Publish(t.Context(), pubsub.Message{Topic: "events"}); !errors.Is(err, pubsub.ErrClosed) {
		t.Errorf("Publish after Close: got %v, want pubsub.ErrClosed", err)
	}
	if err := p.Subscribe(t.Context(), "events", func(context.Context, pubsub.Message) error { return nil }); !errors.Is(err, pubsub.ErrClosed) {
		t.Errorf("Subscribe after Close: got %v, want pubsub.ErrClosed", err)
	}
	if calls != 0 {
		t.Errorf("handler called %d times after Close", calls)
	}
}

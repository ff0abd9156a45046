package embedded

import (
	"context"
	"slices"
	"sync"

	"github.com/virtufin/websocketmanager/internal/pubsub"
)

// PubSub delivers messages to the subscribers of this process, synchronously
// and in publish order. A handler error is returned to the publisher.
type PubSub struct {
	mu     sync.RWMutex
	subs   map[string][]*subscription
	closed bool
}

type subscription struct{ h pubsub.Handler }

var _ pubsub.PubSub = (*PubSub)(nil)

// NewPubSub returns an empty in-process PubSub.
func NewPubSub() *PubSub { return &PubSub{subs: map[string][]*subscription{}} }

// Publish calls every handler subscribed to the topic.
func (p *PubSub) Publish(ctx context.Context, m pubsub.Message) error {
	p.mu.RLock()
	if p.closed {
		p.mu.RUnlock()
		return pubsub.ErrClosed
	}
	subs := slices.Clone(p.subs[m.Topic])
	p.mu.RUnlock()

	var firstErr error
	for _, s := range subs {
		if err := s.h(ctx, m); err != nil && firstErr == nil {
			firstErr = err
		}
	}
	return firstErr
}

// Subscribe registers h until ctx ends.
func (p *PubSub) Subscribe(ctx context.Context, topic string, h pubsub.Handler) error {
	s := &subscription{h: h}
	p.mu.Lock()
	if p.closed {
		p.mu.Unlock()
		return pubsub.ErrClosed
	}
	p.subs[topic] = append(p.subs[topic], s)
	p.mu.Unlock()

	context.AfterFunc(ctx, func() {
		p.mu.Lock()
		defer p.mu.Unlock()
		p.subs[topic] = slices.DeleteFunc(p.subs[topic], func(x *subscription) bool { return x == s })
	})
	return nil
}

// Close drops every subscription; later calls fail with pubsub.ErrClosed.
func (p *PubSub) Close() error {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.closed = true
	p.subs = map[string][]*subscription{}
	return nil
}

// Package pubsub defines the topic-based publish and subscribe interface that
// lifecycle events and cross-instance requests travel over. The embedded
// backend fills it in memory and the Dapr backend with a Dapr pub/sub
// component.
package pubsub

import (
	"context"
	"errors"
)

// ContentTypeCloudEvent is the content type of a message that is already a
// structured-mode CloudEvent; a broker must deliver it as is rather than wrap
// it in an envelope of its own.
const ContentTypeCloudEvent = "application/cloudevents+json"

// Message is one published payload.
type Message struct {
	Topic       string
	ContentType string
	Data        []byte
}

// Handler receives messages of a subscription. It runs on the broker's
// goroutine and must not block for long; an error requests redelivery where
// the broker supports it.
type Handler func(ctx context.Context, m Message) error

// PubSub publishes to and subscribes to topics. Implementations are safe for
// concurrent use.
type PubSub interface {
	Publish(ctx context.Context, m Message) error
	// Subscribe registers h for a topic until ctx ends.
	Subscribe(ctx context.Context, topic string, h Handler) error
	Close() error
}

// ErrClosed reports a call on a closed PubSub.
var ErrClosed = errors.New("pubsub: closed")

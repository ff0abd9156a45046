package dapr

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"sync/atomic"
	"time"

	sdk "github.com/dapr/go-sdk/client"

	"github.com/virtufin/websocketmanager/internal/pubsub"
	"github.com/virtufin/websocketmanager/internal/resilience"
)

// PubSub publishes over a Dapr pub/sub component. Create it with Open.
// Every publish goes through the pubsub Pipeline.
type PubSub struct {
	sdk  sdk.Client
	name string
	typ  string
	pipe *resilience.Pipeline

	calls   counters
	onCall  func(operation string, took time.Duration, err error) // Config.OnCall
	closed  atomic.Bool
	release func()
}

var _ pubsub.PubSub = (*PubSub)(nil)

// Publish sends m.Data to m.Topic with m.ContentType as Dapr's data content
// type. A message of pubsub.ContentTypeCloudEvent is delivered as the
// CloudEvent it is, not wrapped in a second envelope. Dapr 1.14 keeps its
// id, source, type and data, and adds topic and pubsubname.
func (p *PubSub) Publish(ctx context.Context, m pubsub.Message) error {
	if p.closed.Load() {
		return pubsub.ErrClosed
	}
	if m.Topic == "" {
		return errors.New("dapr: publish without a topic")
	}
	var opts []sdk.PublishEventOption
	if m.ContentType != "" {
		opts = append(opts, sdk.PublishEventWithContentType(m.ContentType))
	}
	data := m.Data
	if data == nil {
		data = []byte{}
	}
	if m.ContentType == pubsub.ContentTypeCloudEvent {
		data = keepTraceparent(data)
	}
	return p.pipe.Do(ctx, "publish", func(ctx context.Context) error {
		p.calls.publish.Add(1)
		start := time.Now()
		err := p.sdk.PublishEvent(ctx, p.name, m.Topic, data, opts...)
		if err != nil {
			err = fmt.Errorf("dapr: publish to %s: %w", m.Topic, err)
		}
		report(p.onCall, "publish", start, err)
		return err
	})
}

// keepTraceparent copies an event's traceparent into a traceid attribute
// when it has none. Dapr 1.14 sets both traceid and traceparent to its own
// trace context when an event lacks traceid, which replaces the event's
// traceparent (with zeros when the sidecar does not trace). Events without
// a traceparent, and data that is not a JSON object, are returned as they
// are.
func keepTraceparent(data []byte) []byte {
	var attrs map[string]json.RawMessage
	if err := json.Unmarshal(data, &attrs); err != nil {
		return data
	}
	tp, ok := attrs["traceparent"]
	if _, has := attrs["traceid"]; !ok || has {
		return data
	}
	attrs["traceid"] = tp
	out, err := json.Marshal(attrs)
	if err != nil {
		return data
	}
	return out
}

// Subscribe fails with ErrSubscribeUnsupported: Dapr delivers messages by
// calling the app, declared to the sidecar at its start. Subscriptions
// serves that on the app's HTTP listener.
func (p *PubSub) Subscribe(_ context.Context, topic string, _ pubsub.Handler) error {
	return fmt.Errorf("subscribe to %s on %s: %w", topic, p.name, ErrSubscribeUnsupported)
}

// Component returns the name and type of the Dapr component.
func (p *PubSub) Component() (name, typ string) { return p.name, p.typ }

// Pipeline returns the pubsub Pipeline, for health output.
func (p *PubSub) Pipeline() *resilience.Pipeline { return p.pipe }

// Calls counts the gRPC calls made to the sidecar so far, retries included.
func (p *PubSub) Calls() Calls { return p.calls.load() }

// Close makes later calls fail with pubsub.ErrClosed.
func (p *PubSub) Close() error {
	if p.closed.CompareAndSwap(false, true) {
		p.release()
	}
	return nil
}

package workers

import (
	"context"
	"encoding/base64"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"github.com/rs/zerolog"

	"github.com/virtufin/websocketmanager/internal/pubsub"
	"github.com/virtufin/websocketmanager/internal/resilience"
	"github.com/virtufin/websocketmanager/schemas"
)

// Defaults of a MessagePublisher.
const (
	// DefaultMessagesTopic is the pub/sub topic client messages are
	// published to.
	DefaultMessagesTopic = "client-messages"

	// DefaultMessageQueue is how many client messages may wait for the
	// topic. At a few hundred messages a second per instance it covers
	// a topic outage of tens of seconds, and past it the newest messages
	// are dropped rather than letting the queue grow.
	DefaultMessageQueue = 10_000

	// DefaultMessageQueueBytes caps the payload bytes waiting in the
	// queue, whichever of the two limits is reached first. Without it,
	// 10,000 messages at the default 64 KiB read limit could hold 625 MiB.
	DefaultMessageQueueBytes = 64 << 20
)

// Errors of MessagePublisher.Enqueue.
var (
	ErrPublisherClosed  = errors.New("workers: message publisher closed")
	ErrMessageQueueFull = errors.New("workers: client message queue full")
)

// MessagePublisherConfig configures a MessagePublisher.
type MessagePublisherConfig struct {
	// PubSub carries the messages. Required.
	PubSub pubsub.PubSub
	// InstanceID is the instance whose clients sent the messages: the
	// source of every event. Required.
	InstanceID string
	// Topic is the topic messages are published to. Empty means
	// DefaultMessagesTopic.
	Topic string
	// MaxQueue and MaxQueueBytes bound the messages waiting to be
	// published, in count and in payload bytes. Zero means
	// DefaultMessageQueue and DefaultMessageQueueBytes.
	MaxQueue      int
	MaxQueueBytes int
	// RetryMin and RetryMax bound the doubling wait between attempts of a
	// failed publish. Zero means DefaultRetryMin and DefaultRetryMax.
	RetryMin, RetryMax time.Duration
	// WarnEvery is the minimum time between two warnings of one kind.
	// Zero means DefaultWarnEvery.
	WarnEvery time.Duration
	// Now reads the clock that paces warnings. Nil means time.Now.
	Now    func() time.Time
	Logger zerolog.Logger
}

// Validate reports every problem of the configuration at once.
func (c MessagePublisherConfig) Validate() error {
	var errs []error
	if c.PubSub == nil {
		errs = append(errs, fmt.Errorf("%w: message publisher: PubSub is nil", ErrInvalidConfig))
	}
	if c.InstanceID == "" {
		errs = append(errs, fmt.Errorf("%w: message publisher: InstanceID is empty", ErrInvalidConfig))
	}
	if c.MaxQueue < 0 || c.MaxQueueBytes < 0 || c.RetryMin < 0 || c.RetryMax < 0 || c.WarnEvery < 0 {
		errs = append(errs, fmt.Errorf("%w: message publisher: MaxQueue, MaxQueueBytes, RetryMin, RetryMax and WarnEvery must not be negative", ErrInvalidConfig))
	}
	if c.RetryMin > 0 && c.RetryMax > 0 && c.RetryMin > c.RetryMax {
		errs = append(errs, fmt.Errorf("%w: message publisher: RetryMin %v is longer than RetryMax %v", ErrInvalidConfig, c.RetryMin, c.RetryMax))
	}
	return errors.Join(errs...)
}

// ClientMessage is one text or binary message a client sent.
type ClientMessage struct {
	ConnectionID string
	Incarnation  string
	UserID       string
	Binary       bool
	Payload      []byte
	ReceivedAt   time.Time
}

// MessageStats counts what a MessagePublisher did since it was built.
type MessageStats struct {
	Queued    int    // waiting to be published now
	Published uint64 // accepted by the topic
	Dropped   uint64 // not queued: the queue was full or the publisher closed
	Rejected  uint64 // given up on: invalid, or refused by the topic for good
	Lost      uint64 // still queued when Close ran out of time
}

// MessagePublisher publishes the messages clients send as
// message.received CloudEvents to a topic. The events are not appended to
// the log: delivery is best-effort, and a message is lost when the queue
// is full or the instance stops before the topic takes it.
//
// Enqueue does not wait for the topic: it holds a lock only to append to
// the queue, so it can run on a connection's read goroutine. One goroutine, Run, publishes the queue in order. A failed publish is
// retried with the same event, so a repeat carries the same id, until it
// succeeds, the topic rejects the request itself, or Run's context ends.
// While it retries, later messages wait and the queue may fill up. Then
// the newest messages are dropped, counted in Stats and reported in a
// warning at most once per WarnEvery.
//
// All methods are safe for concurrent use.
type MessagePublisher struct {
	cfg MessagePublisherConfig
	log zerolog.Logger

	dropWarn    *warnLimiter
	publishWarn *warnLimiter

	mu     sync.Mutex
	queue  []ClientMessage
	bytes  int
	busy   bool // Run has taken a message and not finished with it
	closed bool
	wake   chan struct{}
	idle   chan struct{} // closed once closed is set and the queue is empty

	published, dropped, rejected, lost atomic.Uint64
}

// NewMessagePublisher returns a MessagePublisher with the defaults filled
// in. Start Run to publish.
func NewMessagePublisher(cfg MessagePublisherConfig) (*MessagePublisher, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if cfg.Topic == "" {
		cfg.Topic = DefaultMessagesTopic
	}
	cfg.MaxQueue = orDefault(cfg.MaxQueue, DefaultMessageQueue)
	cfg.MaxQueueBytes = orDefault(cfg.MaxQueueBytes, DefaultMessageQueueBytes)
	cfg.RetryMin = orDefault(cfg.RetryMin, DefaultRetryMin)
	cfg.RetryMax = max(orDefault(cfg.RetryMax, DefaultRetryMax), cfg.RetryMin)
	cfg.WarnEvery = orDefault(cfg.WarnEvery, DefaultWarnEvery)
	return &MessagePublisher{
		cfg:         cfg,
		log:         cfg.Logger.With().Str("instance_id", cfg.InstanceID).Str("topic", cfg.Topic).Logger(),
		dropWarn:    newWarnLimiter(cfg.WarnEvery, cfg.Now),
		publishWarn: newWarnLimiter(cfg.WarnEvery, cfg.Now),
		wake:        make(chan struct{}, 1),
		idle:        make(chan struct{}),
	}, nil
}

// Topic returns the topic messages are published to.
func (p *MessagePublisher) Topic() string { return p.cfg.Topic }

// Enqueue queues a message for publishing and returns without waiting. It
// copies m.Payload, so the caller may reuse it. When the queue is full or
// the publisher is closed, it drops the message and returns an error
// instead.
func (p *MessagePublisher) Enqueue(m ClientMessage) error {
	p.mu.Lock()
	if p.closed {
		p.mu.Unlock()
		p.dropped.Add(1)
		return ErrPublisherClosed
	}
	if len(p.queue) >= p.cfg.MaxQueue || p.bytes+len(m.Payload) > p.cfg.MaxQueueBytes {
		queued, bytes := len(p.queue), p.bytes
		p.mu.Unlock()
		p.dropped.Add(1)
		p.warnDropped(m, queued, bytes)
		return fmt.Errorf("%w: dropped a message of %s with %d messages and %d bytes queued", ErrMessageQueueFull, m.ConnectionID, queued, bytes)
	}
	m.Payload = append([]byte(nil), m.Payload...)
	p.queue = append(p.queue, m)
	p.bytes += len(m.Payload)
	p.mu.Unlock()

	select {
	case p.wake <- struct{}{}:
	default:
	}
	return nil
}

func (p *MessagePublisher) warnDropped(m ClientMessage, queued, bytes int) {
	ok, suppressed := p.dropWarn.allow()
	if !ok {
		return
	}
	p.log.Warn().Str("conn_id", m.ConnectionID).Str("user_id", m.UserID).
		Int("queued", queued).Int("queued_bytes", bytes).Int("max_queue", p.cfg.MaxQueue).Int("max_queue_bytes", p.cfg.MaxQueueBytes).
		Int("suppressed", suppressed).Msg("client message dropped: the publish queue is full")
}

// Run publishes queued messages in order until ctx ends, or until Close
// was called and the queue is empty.
func (p *MessagePublisher) Run(ctx context.Context) {
	for {
		m, ok := p.next()
		if !ok {
			select {
			case <-ctx.Done():
				return
			case <-p.idle:
				return
			case <-p.wake:
				continue
			}
		}

		p.publish(ctx, m)
		p.finish(m)
		if ctx.Err() != nil {
			return
		}
	}
}

// next takes the oldest queued message. The message still counts against
// the byte limit until finish.
func (p *MessagePublisher) next() (ClientMessage, bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if len(p.queue) == 0 {
		p.signalIdle()
		return ClientMessage{}, false
	}
	m := p.queue[0]
	p.queue[0] = ClientMessage{} // release the payload when it is done
	p.queue = p.queue[1:]
	p.busy = true
	return m, true
}

func (p *MessagePublisher) finish(m ClientMessage) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.bytes -= len(m.Payload)
	p.busy = false
	if len(p.queue) == 0 {
		p.signalIdle()
	}
}

// signalIdle closes idle once the publisher is closed and has nothing
// left. The caller holds mu.
func (p *MessagePublisher) signalIdle() {
	if !p.closed || p.busy || len(p.queue) > 0 {
		return
	}
	select {
	case <-p.idle:
	default:
		close(p.idle)
	}
}

// publish sends one message, retrying until the topic takes it, rejects
// it for good, or ctx ends. NOTE: a message that keeps failing with an
// error that looks transient holds the queue until Run stops, and the
// messages behind it may be dropped meanwhile.
func (p *MessagePublisher) publish(ctx context.Context, m ClientMessage) {
	log := p.log.With().Str("conn_id", m.ConnectionID).Str("user_id", m.UserID).Logger()
	body, id, err := p.encode(m)
	if err != nil {
		p.rejected.Add(1)
		log.Error().Err(err).Msg("client message not published: it does not make a valid event")
		return
	}
	log = log.With().Str("event_id", id).Logger()
	msg := pubsub.Message{Topic: p.cfg.Topic, ContentType: pubsub.ContentTypeCloudEvent, Data: body}

	retry := newBackoff(p.cfg.RetryMin, p.cfg.RetryMax)
	for attempt := 1; ; attempt++ {
		err := p.cfg.PubSub.Publish(ctx, msg)
		if err == nil {
			p.published.Add(1)
			if attempt > 1 {
				log.Info().Int("attempts", attempt).Msg("client message published after retries")
			}
			return
		}
		if ctx.Err() != nil {
			return
		}
		if resilience.RequestError(err) || errors.Is(err, pubsub.ErrClosed) {
			p.rejected.Add(1)
			log.Error().Err(err).Int("attempt", attempt).Msg("client message not published: the topic rejected it, so it is not retried")
			return
		}

		wait := retry.wait()
		if ok, suppressed := p.publishWarn.allow(); ok {
			log.Warn().Err(err).Int("attempt", attempt).Int("suppressed", suppressed).Dur("retry_in", wait).
				Msg("publishing a client message failed, retrying the same event")
		}
		if !sleep(ctx, wait) {
			return
		}
	}
}

// encode builds the message's event, checks it against its schema and
// renders it in structured JSON mode. It returns the event id too.
func (p *MessagePublisher) encode(m ClientMessage) ([]byte, string, error) {
	payload := string(m.Payload)
	if m.Binary {
		payload = base64.StdEncoding.EncodeToString(m.Payload)
	}
	ev, err := schemas.NewMessageReceived(schemas.Envelope{InstanceID: p.cfg.InstanceID, Time: m.ReceivedAt}, schemas.MessageReceived{
		ConnectionID: m.ConnectionID,
		InstanceID:   p.cfg.InstanceID,
		Incarnation:  m.Incarnation,
		UserID:       m.UserID,
		Binary:       m.Binary,
		Payload:      payload,
		ReceivedAt:   m.ReceivedAt.UTC(),
	})
	if err != nil {
		return nil, "", err
	}
	if err := schemas.Validate(ev); err != nil {
		return nil, ev.ID(), err
	}
	body, err := ev.MarshalJSON()
	if err != nil {
		return nil, ev.ID(), fmt.Errorf("workers: encode %s: %w", ev.ID(), err)
	}
	return body, ev.ID(), nil
}

// Close stops taking messages and waits until Run has published the ones
// already queued, or ctx ends. Messages still queued then are counted as
// lost and logged. Close does not stop Run: cancel Run's context for that.
// It is idempotent.
func (p *MessagePublisher) Close(ctx context.Context) error {
	p.mu.Lock()
	p.closed = true
	p.signalIdle()
	p.mu.Unlock()

	select {
	case <-p.idle:
		return nil
	case <-ctx.Done():
	}

	p.mu.Lock()
	left := len(p.queue)
	if p.busy {
		left++
	}
	p.mu.Unlock()
	p.lost.Store(uint64(left))
	p.log.Warn().Int("messages", left).Msg("client messages not published before shutdown")
	return fmt.Errorf("workers: close message publisher: %d messages not published: %w", left, ctx.Err())
}

// Stats returns the publisher's counts.
func (p *MessagePublisher) Stats() MessageStats {
	p.mu.Lock()
	queued := len(p.queue)
	p.mu.Unlock()
	return MessageStats{
		Queued:    queued,
		Published: p.published.Load(),
		Dropped:   p.dropped.Load(),
		Rejected:  p.rejected.Load(),
		Lost:      p.lost.Load(),
	}
}

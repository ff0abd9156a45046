package workers

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"sync"
	"time"

	"github.com/rs/zerolog"

	"github.com/virtufin/websocketmanager/eventlog"
	"github.com/virtufin/websocketmanager/internal/pubsub"
	"github.com/virtufin/websocketmanager/internal/state"
	"github.com/virtufin/websocketmanager/projections"
	"github.com/virtufin/websocketmanager/schemas"
)

// PublisherCursorKey returns the state store key of a stream's publication
// cursor: the last sequence of the stream that was published or skipped.
func PublisherCursorKey(stream string) string { return projections.Prefix + "publisher/" + stream }

// ErrCursorInvalid reports a stored publication cursor that does not
// parse. Retrying cannot help, so fix or delete the key.
var ErrCursorInvalid = errors.New("workers: invalid publication cursor")

// cursorRetries bounds the compare-and-swap attempts of one cursor write.
// Only the publishers of one stream write its cursor: the instance that
// wrote the stream, and the ones that reclaimed it or restarted after it.
const cursorRetries = 10

// PublisherConfig configures a Publisher.
type PublisherConfig struct {
	// Log is read for the events to publish. Its store keeps the cursors.
	// Required.
	Log *eventlog.Log
	// PubSub carries the events. Required.
	PubSub pubsub.PubSub
	// Topic is the topic events are published to. Empty means DefaultTopic.
	Topic string
	// Heartbeats publishes instance.heartbeat events too. They are skipped
	// by default, because one per instance every few seconds is noise to
	// most subscribers.
	Heartbeats bool
	// BatchSize is the number of events between two cursor writes, and so
	// the most a restart re-sends. Zero means DefaultPublishBatch.
	BatchSize int
	// RetryMin and RetryMax bound the doubling wait between attempts of a
	// failed publish or store call. Zero means DefaultRetryMin and
	// DefaultRetryMax.
	RetryMin, RetryMax time.Duration
	// WarnEvery is the minimum time between two warnings about failed
	// attempts. Zero means DefaultWarnEvery.
	WarnEvery time.Duration
	// Now reads the clock that paces warnings. Nil means time.Now.
	Now    func() time.Time
	Logger zerolog.Logger
	// OnPublish, when set, is called after each publish attempt with its
	// error, nil when the pub/sub accepted the event. An attempt cut short
	// because ctx ended is not reported. It runs on the publishing
	// goroutine, so it must not block.
	OnPublish func(err error)
}

// Validate reports every problem of the configuration at once.
func (c PublisherConfig) Validate() error {
	var errs []error
	if c.Log == nil {
		errs = append(errs, fmt.Errorf("%w: publisher: Log is nil", ErrInvalidConfig))
	}
	if c.PubSub == nil {
		errs = append(errs, fmt.Errorf("%w: publisher: PubSub is nil", ErrInvalidConfig))
	}
	if c.BatchSize < 0 || c.RetryMin < 0 || c.RetryMax < 0 || c.WarnEvery < 0 {
		errs = append(errs, fmt.Errorf("%w: publisher: BatchSize, RetryMin, RetryMax and WarnEvery must not be negative", ErrInvalidConfig))
	}
	if c.RetryMin > 0 && c.RetryMax > 0 && c.RetryMin > c.RetryMax {
		errs = append(errs, fmt.Errorf("%w: publisher: RetryMin %v is longer than RetryMax %v", ErrInvalidConfig, c.RetryMin, c.RetryMax))
	}
	return errors.Join(errs...)
}

// Publisher publishes the lifecycle events of the log to a pub/sub topic,
// each as a structured-mode CloudEvent with its own id, source, type and
// data, so a repeat after a retry or restart carries the same id.
//
// It is best-effort toward subscribers and never slows the connections: it
// reads the log on its own goroutine, after the events are durable. A
// failed publish is retried, with the same event, until it succeeds or the
// context ends, and later events of the stream wait behind it, so each
// stream is published in order.
//
// Per stream it keeps a cursor in the state store (PublisherCursorKey),
// written after each batch. A restart resumes from it and re-sends at most
// the batch that was in flight. Two publishers of one stream never move
// its cursor back, but both may send the same events.
//
// An instance publishes these streams:
//
//   - its current incarnation's, live, with Follow;
//   - those of its earlier incarnations, at startup, with EnqueuePrevious;
//   - that of every incarnation it reclaims, through Reclaimer.Publication.
//     The instance that reclaims a stream also drains its publication.
type Publisher struct {
	cfg   PublisherConfig
	store state.Store

	publishWarn *warnLimiter
	storeWarn   *warnLimiter

	mu     sync.Mutex
	queue  []string
	queued map[string]bool
	wake   chan struct{}
}

// NewPublisher returns a Publisher with the defaults filled in.
func NewPublisher(cfg PublisherConfig) (*Publisher, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if cfg.Topic == "" {
		cfg.Topic = DefaultTopic
	}
	cfg.BatchSize = orDefault(cfg.BatchSize, DefaultPublishBatch)
	cfg.RetryMin = orDefault(cfg.RetryMin, DefaultRetryMin)
	cfg.RetryMax = max(orDefault(cfg.RetryMax, DefaultRetryMax), cfg.RetryMin)
	cfg.WarnEvery = orDefault(cfg.WarnEvery, DefaultWarnEvery)
	return &Publisher{
		cfg:         cfg,
		store:       cfg.Log.Store(),
		publishWarn: newWarnLimiter(cfg.WarnEvery, cfg.Now),
		storeWarn:   newWarnLimiter(cfg.WarnEvery, cfg.Now),
		queued:      map[string]bool{},
		wake:        make(chan struct{}, 1),
	}, nil
}

// streamCursor is a publisher's place in one stream.
type streamCursor struct {
	stream string
	pos    uint64 // last sequence published or skipped
	stored uint64 // last sequence the stored cursor is known to hold
}

// Follow publishes a stream from its cursor on, and then each event as it
// is appended, until ctx ends, and then returns nil. Use it for this
// incarnation's own stream. While the store or the topic is down it waits
// and retries. It returns an error only when the stream or its cursor is
// damaged.
func (p *Publisher) Follow(ctx context.Context, stream string) error {
	c, err := p.openCursor(ctx, stream)
	if err != nil {
		return ignoreEnd(ctx, err)
	}
	p.cfg.Logger.Info().Str("stream", stream).Uint64("cursor", c.pos).Msg("publishing stream")

	retry := newBackoff(p.cfg.RetryMin, p.cfg.RetryMax)
	for {
		from := c.pos
		_, err := p.cfg.Log.FollowStream(ctx, stream, c.pos, func(records []eventlog.Record) error {
			return p.publishPage(ctx, c, records)
		})
		if c.pos > from {
			retry.reset()
		}
		if ctx.Err() != nil {
			return nil
		}
		if err == nil || errors.Is(err, eventlog.ErrCorrupt) || errors.Is(err, ErrCursorInvalid) {
			return err
		}
		if !p.backOff(ctx, retry, p.storeWarn, stream, err, "reading the stream failed") {
			return nil
		}
	}
}

// Drain publishes a stream from its cursor up to its head as read when it
// starts, then writes the cursor. Use it for streams whose writer is gone.
// It retries while the store or the topic is down, and returns ctx's error
// when ctx ends first.
func (p *Publisher) Drain(ctx context.Context, stream string) error {
	c, err := p.openCursor(ctx, stream)
	if err != nil {
		return err
	}
	var head uint64
	if err := p.retry(ctx, stream, "reading the stream head failed", func() (err error) {
		head, err = p.cfg.Log.Head(ctx, stream)
		return err
	}); err != nil {
		return err
	}
	if c.pos >= head {
		return nil
	}
	p.cfg.Logger.Info().Str("stream", stream).Uint64("cursor", c.pos).Uint64("head", head).Msg("draining stream")

	for c.pos < head {
		var records []eventlog.Record
		if err := p.retry(ctx, stream, "reading the stream failed", func() (err error) {
			records, err = p.cfg.Log.Read(ctx, stream, c.pos+1, p.cfg.BatchSize)
			return err
		}); err != nil {
			return err
		}
		records = slices.DeleteFunc(records, func(r eventlog.Record) bool { return r.Seq > head })
		if len(records) == 0 {
			break
		}
		if err := p.publishPage(ctx, c, records); err != nil {
			return err
		}
	}
	if c.stored < c.pos {
		if err := p.saveCursor(ctx, c); err != nil {
			return err
		}
	}
	p.cfg.Logger.Info().Str("stream", stream).Uint64("cursor", c.pos).Msg("drained stream")
	return nil
}

// Enqueue schedules a drain of a stream by Run. A stream already waiting
// is not queued twice. It never blocks.
func (p *Publisher) Enqueue(stream string) {
	p.mu.Lock()
	if !p.queued[stream] {
		p.queued[stream] = true
		p.queue = append(p.queue, stream)
	}
	p.mu.Unlock()

	select {
	case p.wake <- struct{}{}:
	default:
	}
}

// EnqueuePrevious queues the streams of this instance's earlier
// incarnations for draining and returns how many it queued. It lists every
// stream of the log, so call it once at startup, not in a loop.
func (p *Publisher) EnqueuePrevious(ctx context.Context, instanceID, incarnation string) (int, error) {
	streams, err := p.cfg.Log.Streams(ctx)
	if err != nil {
		return 0, fmt.Errorf("workers: list streams: %w", err)
	}
	n := 0
	for _, s := range streams {
		inst, inc := eventlog.SplitStreamName(s.Name)
		if inst == instanceID && inc != incarnation {
			p.Enqueue(s.Name)
			n++
		}
	}
	return n, nil
}

// Run drains the queued streams one at a time, in the order they were
// queued, until ctx ends.
func (p *Publisher) Run(ctx context.Context) {
	for {
		stream, ok := p.dequeue()
		if !ok {
			select {
			case <-ctx.Done():
				return
			case <-p.wake:
				continue
			}
		}
		err := p.Drain(ctx, stream)
		if ctx.Err() != nil {
			return
		}
		if err != nil {
			p.cfg.Logger.Error().Err(err).Str("stream", stream).Msg("stream drain failed, so its remaining events stay unpublished until it is queued again")
		}
	}
}

// dequeue takes the oldest queued stream. Once taken, the stream may be
// queued again, so an Enqueue during its drain runs another one.
func (p *Publisher) dequeue() (string, bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if len(p.queue) == 0 {
		return "", false
	}
	stream := p.queue[0]
	p.queue = p.queue[1:]
	delete(p.queued, stream)
	return stream, true
}

// publishPage publishes the records in batches, writing the cursor after
// each batch that published something. Heartbeat-only stretches move the
// cursor once they span a batch, so a restart does not read them again at
// length.
func (p *Publisher) publishPage(ctx context.Context, c *streamCursor, records []eventlog.Record) error {
	for batch := range slices.Chunk(records, p.cfg.BatchSize) {
		published := 0
		for _, rec := range batch {
			if rec.Seq <= c.pos {
				continue // another publisher of the stream got further
			}
			if p.publishable(rec) {
				if err := p.publish(ctx, rec); err != nil {
					return err
				}
				published++
			}
			c.pos = rec.Seq
		}
		if published > 0 || c.pos-c.stored >= uint64(p.cfg.BatchSize) {
			if err := p.saveCursor(ctx, c); err != nil {
				return err
			}
		}
	}
	return nil
}

func (p *Publisher) publishable(rec eventlog.Record) bool {
	return p.cfg.Heartbeats || rec.Event.Type() != schemas.TypeHeartbeat
}

// publish sends one event, retrying until it is accepted or ctx ends.
func (p *Publisher) publish(ctx context.Context, rec eventlog.Record) error {
	log := p.cfg.Logger.With().Str("stream", rec.Stream).Str("event_id", rec.Event.ID()).Logger()
	body, err := rec.Event.MarshalJSON()
	if err != nil {
		// The event decoded from the log, so this cannot succeed later
		// either, and waiting on it would stop the stream for good.
		log.Error().Err(err).Uint64("seq", rec.Seq).Msg("skipping an event that cannot be encoded for publishing")
		return nil
	}
	msg := pubsub.Message{Topic: p.cfg.Topic, ContentType: pubsub.ContentTypeCloudEvent, Data: body}

	retry := newBackoff(p.cfg.RetryMin, p.cfg.RetryMax)
	for attempt := 1; ; attempt++ {
		if err := ctx.Err(); err != nil {
			return err
		}
		err := p.cfg.PubSub.Publish(ctx, msg)
		if err == nil {
			p.notePublish(nil)
			if attempt > 1 {
				log.Info().Int("attempts", attempt).Msg("published after retries")
			}
			return nil
		}
		if ctx.Err() != nil {
			return ctx.Err()
		}
		p.notePublish(err)
		wait := retry.wait()
		if ok, suppressed := p.publishWarn.allow(); ok {
			log.Warn().Err(err).Str("topic", p.cfg.Topic).Int("attempt", attempt).Int("suppressed", suppressed).
				Dur("retry_in", wait).Msg("publish failed, retrying the same event")
		}
		if !sleep(ctx, wait) {
			return ctx.Err()
		}
	}
}

// notePublish calls the OnPublish hook.
func (p *Publisher) notePublish(err error) {
	if p.cfg.OnPublish != nil {
		p.cfg.OnPublish(err)
	}
}

// Cursor returns the last sequence of a stream that was published or
// skipped, as its stored cursor records, or 0 when none was.
func (p *Publisher) Cursor(ctx context.Context, stream string) (uint64, error) {
	it, err := p.store.Get(ctx, PublisherCursorKey(stream))
	if err != nil {
		return 0, fmt.Errorf("workers: read publication cursor of %s: %w", stream, err)
	}
	return decodeCursor(it)
}

type cursorValue struct {
	Seq uint64 `json:"seq"`
}

func decodeCursor(it state.Item) (uint64, error) {
	if !it.Exists() {
		return 0, nil
	}
	var v cursorValue
	if err := json.Unmarshal(it.Value, &v); err != nil {
		return 0, fmt.Errorf("%w: %s: %v", ErrCursorInvalid, it.Key, err)
	}
	return v.Seq, nil
}

func (p *Publisher) openCursor(ctx context.Context, stream string) (*streamCursor, error) {
	var seq uint64
	err := p.retry(ctx, stream, "reading the publication cursor failed", func() (err error) {
		seq, err = p.Cursor(ctx, stream)
		return err
	})
	if err != nil {
		return nil, err
	}
	return &streamCursor{stream: stream, pos: seq, stored: seq}, nil
}

// saveCursor writes c.pos as the stream's cursor, retrying while the store
// is down. When another publisher stored a later position, c moves up to
// it.
func (p *Publisher) saveCursor(ctx context.Context, c *streamCursor) error {
	return p.retry(ctx, c.stream, "writing the publication cursor failed", func() error {
		stored, err := p.advanceCursor(ctx, c.stream, c.pos)
		if err != nil {
			return err
		}
		c.stored = stored
		c.pos = max(c.pos, stored)
		return nil
	})
}

// advanceCursor raises the stored cursor to seq with a compare-and-swap
// and returns the stored value, which is higher than seq when another
// publisher got further.
func (p *Publisher) advanceCursor(ctx context.Context, stream string, seq uint64) (uint64, error) {
	key := PublisherCursorKey(stream)
	for range cursorRetries {
		it, err := p.store.Get(ctx, key)
		if err != nil {
			return 0, fmt.Errorf("workers: read publication cursor of %s: %w", stream, err)
		}
		cur, err := decodeCursor(it)
		if err != nil {
			return 0, err
		}
		if cur >= seq {
			return cur, nil
		}
		op := state.Op{
			Kind:         state.Upsert,
			Key:          key,
			Value:        []byte(`{"seq":` + strconv.FormatUint(seq, 10) + `}`),
			ETag:         it.ETag,
			MustNotExist: !it.Exists(),
		}
		err = p.store.Transact(ctx, []state.Op{op})
		if err == nil {
			return seq, nil
		}
		if !errors.Is(err, state.ErrETagMismatch) {
			return 0, fmt.Errorf("workers: write publication cursor of %s: %w", stream, err)
		}
	}
	return 0, fmt.Errorf("workers: write publication cursor of %s: still changing after %d attempts", stream, cursorRetries)
}

// retry runs fn until it succeeds, ctx ends or it fails for good, waiting
// longer after each failure.
func (p *Publisher) retry(ctx context.Context, stream, failure string, fn func() error) error {
	retry := newBackoff(p.cfg.RetryMin, p.cfg.RetryMax)
	for {
		err := fn()
		if err == nil {
			return nil
		}
		if ctx.Err() != nil {
			return ctx.Err()
		}
		if errors.Is(err, eventlog.ErrCorrupt) || errors.Is(err, ErrCursorInvalid) {
			return err
		}
		if !p.backOff(ctx, retry, p.storeWarn, stream, err, failure) {
			return ctx.Err()
		}
	}
}

// backOff logs a rate-limited warning and waits for the next attempt. It
// reports false when ctx ended during the wait.
func (p *Publisher) backOff(ctx context.Context, retry *backoff, warn *warnLimiter, stream string, err error, failure string) bool {
	wait := retry.wait()
	if ok, suppressed := warn.allow(); ok {
		p.cfg.Logger.Warn().Err(err).Str("stream", stream).Int("suppressed", suppressed).Dur("retry_in", wait).
			Msg(failure + ", retrying")
	}
	return sleep(ctx, wait)
}

// ignoreEnd turns the error of an ended ctx into nil.
func ignoreEnd(ctx context.Context, err error) error {
	if ctx.Err() != nil {
		return nil
	}
	return err
}

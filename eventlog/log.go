// Package eventlog is the append-only log of CloudEvents that wsm treats as
// its source of truth, kept in a state.Store beside the views.
//
// Each instance incarnation appends to its own stream through one Writer, so a
// stream has a single writer and appends never contend. A Writer
// group-commits: appends that arrive while a commit is in flight go into the
// next transaction together, along with the view writes a Projector derives
// from them. Append returns once that transaction is durable.
//
// A commit that fails while the store is down or slow is retried until it
// lands or Writer.Close gives up, and later appends wait behind it in a
// queue bounded by Options.MaxQueue. So a store outage delays events but
// neither loses nor reorders them, unless the queue fills or Close runs out
// of time. An Append whose context ends first returns an error matching
// ErrQueued, and its events are still committed later, in order.
//
// Log, Writer and their methods are safe for concurrent use. The package does
// not know what events mean: validation and projection are functions the
// caller passes in.
package eventlog

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"sync"
	"time"

	"github.com/cloudevents/sdk-go/v2/event"
	"github.com/rs/zerolog"

	"github.com/virtufin/websocketmanager/internal/state"
)

// Projector derives the view writes of a batch of events. Mutations reads
// the views it needs from the store as they are now and returns conditional
// writes, so a concurrent change makes the transaction fail with
// state.ErrETagMismatch and the batch is projected again.
type Projector interface {
	Mutations(ctx context.Context, store state.Store, records []Record) ([]state.Op, error)
}

// Options configure a Log. The zero value is usable: no validation, no
// projection and the defaults below.
type Options struct {
	// Validate checks each event before it is appended; a failure rejects
	// the whole Append and nothing is written.
	Validate func(*event.Event) error
	// Projector adds view writes to every commit. Nil writes events only.
	Projector Projector
	// MaxBatch caps the events of one commit. Default 512: large enough to
	// absorb a reconnect storm in a few commits, small enough that one
	// transaction stays well under the request size limits of Dapr state
	// stores (4 MiB on gRPC by default) with events of a few hundred bytes.
	MaxBatch int
	// CommitWindow is how long a commit waits for more appends after the
	// first one. Default 0: appends that arrive while the previous commit
	// syncs are batched anyway, so waiting only adds latency.
	CommitWindow time.Duration
	// PollInterval is how often Follow looks for events written by other
	// processes. Default 200 ms. Appends through this Log wake followers at
	// once.
	PollInterval time.Duration
	// ProjectRetries bounds how often a commit re-reads and re-projects
	// after an ETag mismatch. Default 8. Past it the events are still
	// committed and the stream's checkpoint stays behind until CatchUp.
	ProjectRetries int
	// MaxQueue caps the events a Writer holds that are not yet committed,
	// the batch in flight included. An Append that would pass it fails at
	// once with ErrQueueFull. Default 100 000: room for every connection of
	// a full instance (50 000 by default) to close during a store outage,
	// and for as many connection attempts besides. A queued connected event
	// takes about 1.5 KiB of heap, or 2.5 KiB with a 1 KiB user agent
	// (measured with runtime.MemStats, Go 1.26 on amd64). A full queue is
	// therefore an estimated 150 MiB, and 250 MiB at worst.
	MaxQueue int
	// RetryMaxDelay caps the wait between attempts of a commit that keeps
	// failing. The wait starts at 50 ms and doubles. Default 2 s: a store
	// that comes back is used within about that, while a dead one costs one
	// attempt per 2 s per writer.
	RetryMaxDelay time.Duration
	Logger        zerolog.Logger

	// OnCommit, when set, is called after each commit that made events
	// durable, on the writer's commit goroutine, so it must not block.
	// Nil ignores commits.
	OnCommit func(CommitInfo)
	// OnCommitRetry, when set, is called for each failed commit attempt
	// the writer retries, a failed read of the stream head included, on the
	// commit goroutine, so it must not block. Nil ignores retries.
	OnCommitRetry func(stream string, err error)
}

// CommitInfo describes one commit, as Options.OnCommit receives it.
type CommitInfo struct {
	Stream string
	// Records are the committed events in stream order. They are shared
	// with the callers of Append: read them during the call only.
	Records []Record
	// Duration runs from the first attempt until the commit was durable,
	// retries and back-off included.
	Duration time.Duration
	// FailedAttempts counts the attempts that failed before it succeeded.
	FailedAttempts int
}

func (o *Options) setDefaults() {
	if o.MaxBatch <= 0 {
		o.MaxBatch = 512
	}
	if o.PollInterval <= 0 {
		o.PollInterval = 200 * time.Millisecond
	}
	if o.ProjectRetries <= 0 {
		o.ProjectRetries = 8
	}
	if o.MaxQueue <= 0 {
		o.MaxQueue = 100_000
	}
	if o.RetryMaxDelay <= 0 {
		o.RetryMaxDelay = 2 * time.Second
	}
}

// Log reads every stream in a store and opens Writers on new ones.
type Log struct {
	store state.Store
	opts  Options
	wake  *signal
}

// Open returns a Log over store. It does not take ownership of the store.
func Open(store state.Store, opts Options) *Log {
	opts.setDefaults()
	return &Log{store: store, opts: opts, wake: newSignal()}
}

// Store returns the store the log is kept in.
func (l *Log) Store() state.Store { return l.store }

// Errors of the log.
var (
	ErrClosed      = errors.New("eventlog: writer closed")
	ErrStreamTaken = errors.New("eventlog: stream already exists")
)

type head struct {
	Seq uint64 `json:"seq"`
}

// StreamInfo describes a stream.
type StreamInfo struct {
	Name      string
	Head      uint64 // last committed sequence, 0 for an empty stream
	Projected uint64 // last sequence whose view writes all succeeded
}

// Streams lists every stream with its head, in the order they were created.
func (l *Log) Streams(ctx context.Context) ([]StreamInfo, error) {
	names, _, err := l.streamNames(ctx)
	if err != nil {
		return nil, err
	}
	keys := make([]string, 0, 2*len(names))
	for _, n := range names {
		keys = append(keys, headKey(n), checkpointKey(n))
	}
	items, err := l.store.BulkGet(ctx, keys)
	if err != nil {
		return nil, fmt.Errorf("eventlog: read stream heads: %w", err)
	}
	out := make([]StreamInfo, len(names))
	for i, n := range names {
		h, err := decodeHead(items[2*i])
		if err != nil {
			return nil, err
		}
		p, err := decodeHead(items[2*i+1])
		if err != nil {
			return nil, err
		}
		out[i] = StreamInfo{Name: n, Head: h, Projected: p}
	}
	return out, nil
}

func decodeHead(it state.Item) (uint64, error) {
	if !it.Exists() {
		return 0, nil
	}
	var h head
	if err := json.Unmarshal(it.Value, &h); err != nil {
		return 0, fmt.Errorf("%w: %s: %v", ErrCorrupt, it.Key, err)
	}
	return h.Seq, nil
}

func encodeHead(seq uint64) []byte { return []byte(`{"seq":` + strconv.FormatUint(seq, 10) + `}`) }

func (l *Log) streamNames(ctx context.Context) ([]string, string, error) {
	it, err := l.store.Get(ctx, streamsKey)
	if err != nil {
		return nil, "", fmt.Errorf("eventlog: read stream index: %w", err)
	}
	var names []string
	if it.Exists() {
		if err := json.Unmarshal(it.Value, &names); err != nil {
			return nil, "", fmt.Errorf("%w: stream index: %v", ErrCorrupt, err)
		}
	}
	return names, it.ETag, nil
}

// Head returns the last committed sequence of a stream.
func (l *Log) Head(ctx context.Context, stream string) (uint64, error) {
	it, err := l.store.Get(ctx, headKey(stream))
	if err != nil {
		return 0, fmt.Errorf("eventlog: read head of %s: %w", stream, err)
	}
	return decodeHead(it)
}

// Read returns the events of a stream from sequence from (counted from 1) up
// to and including the head, at most limit of them. A damaged record fails
// the read with an error wrapping ErrCorrupt that names its position.
func (l *Log) Read(ctx context.Context, stream string, from uint64, limit int) ([]Record, error) {
	h, err := l.Head(ctx, stream)
	if err != nil {
		return nil, err
	}
	return l.readRange(ctx, stream, from, h, limit)
}

func (l *Log) readRange(ctx context.Context, stream string, from, to uint64, limit int) ([]Record, error) {
	if from == 0 {
		from = 1
	}
	if to < from || limit <= 0 {
		return nil, nil
	}
	if to-from+1 > uint64(limit) {
		to = from + uint64(limit) - 1
	}
	if sc, ok := l.store.(state.RangeScanner); ok && l.store.Capabilities().Scan {
		return scanRange(ctx, sc, stream, from, to)
	}

	keys := make([]string, 0, to-from+1)
	for s := from; s <= to; s++ {
		keys = append(keys, eventKey(stream, s))
	}
	items, err := l.store.BulkGet(ctx, keys)
	if err != nil {
		return nil, fmt.Errorf("eventlog: read %s from %d: %w", stream, from, err)
	}
	out := make([]Record, 0, len(items))
	for i, it := range items {
		rec, err := decodeItem(Position{Stream: stream, Seq: from + uint64(i)}, it)
		if err != nil {
			return out, err
		}
		out = append(out, rec)
	}
	return out, nil
}

// scanRange reads the events from..to of a stream with one cursor pass. It
// reports the same errors as the BulkGet path of readRange.
func scanRange(ctx context.Context, sc state.RangeScanner, stream string, from, to uint64) ([]Record, error) {
	out := make([]Record, 0, to-from+1)
	next := from
	var decodeErr error
	// The end bound sorts after eventKey(to) and before eventKey(to+1),
	// because sequences are zero-padded to a fixed width.
	err := sc.ScanRange(ctx, eventKey(stream, from), eventKey(stream, to)+"\x00", func(it state.Item) error {
		want := eventKey(stream, next)
		if it.Key < want {
			return nil // not an event key
		}
		if it.Key > want {
			it = state.Item{Key: want} // the event at next is missing
		}
		rec, err := decodeItem(Position{Stream: stream, Seq: next}, it)
		if err != nil {
			decodeErr = err
			return err
		}
		out = append(out, rec)
		next++
		return nil
	})
	if decodeErr != nil {
		return out, decodeErr
	}
	if err != nil {
		return nil, fmt.Errorf("eventlog: read %s from %d: %w", stream, from, err)
	}
	if next <= to {
		return out, fmt.Errorf("%w: %s: missing below the stream head", ErrCorrupt, Position{Stream: stream, Seq: next})
	}
	return out, nil
}

// decodeItem decodes the stored item of the event at pos. The item's value
// must not be modified afterwards, because the record shares it.
func decodeItem(pos Position, it state.Item) (Record, error) {
	if !it.Exists() {
		return Record{}, fmt.Errorf("%w: %s: missing below the stream head", ErrCorrupt, pos)
	}
	ev, body, err := decodeRecord(it.Value)
	if err != nil {
		return Record{}, fmt.Errorf("%s: %w", pos, err)
	}
	return Record{Stream: pos.Stream, Seq: pos.Seq, Event: ev, JSON: body}, nil
}

// registerStream adds a stream to the index with a compare-and-swap, so that
// concurrent writers in other processes never lose each other's entries.
func (l *Log) registerStream(ctx context.Context, stream string) error {
	for attempt := 0; ; attempt++ {
		names, etag, err := l.streamNames(ctx)
		if err != nil {
			return err
		}
		if slices.Contains(names, stream) {
			return fmt.Errorf("%w: %s", ErrStreamTaken, stream)
		}
		op := state.Op{Kind: state.Upsert, Key: streamsKey, ETag: etag, MustNotExist: etag == ""}
		op.Value, _ = json.Marshal(append(names, stream))
		err = l.store.Transact(ctx, []state.Op{op})
		if err == nil {
			return nil
		}
		if !errors.Is(err, state.ErrETagMismatch) || attempt >= 50 {
			return fmt.Errorf("eventlog: register stream %s: %w", stream, err)
		}
	}
}

// signal wakes every waiter when a commit lands.
type signal struct {
	mu sync.Mutex
	ch chan struct{}
}

func newSignal() *signal { return &signal{ch: make(chan struct{})} }

func (s *signal) wait() <-chan struct{} {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.ch
}

func (s *signal) broadcast() {
	s.mu.Lock()
	close(s.ch)
	s.ch = make(chan struct{})
	s.mu.Unlock()
}

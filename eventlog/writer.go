package eventlog

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"sync"
	"time"

	"github.com/cloudevents/sdk-go/v2/event"

	"github.com/virtufin/websocketmanager/internal/state"
	"github.com/virtufin/websocketmanager/schemas"
)

// Errors of Append besides ErrClosed.
var (
	// ErrQueued reports an Append whose context ended before its events
	// were committed. The events were not rejected: they stay queued and
	// are committed in order, behind everything appended before them, once
	// the store takes them. Only a Close that runs out of time drops them.
	ErrQueued = errors.New("eventlog: not committed yet, events stay queued")
	// ErrQueueFull reports an Append rejected because Options.MaxQueue
	// events already wait for the store. None of its events was queued.
	ErrQueueFull = errors.New("eventlog: append queue full")
)

// retryMinDelay is the first wait after a failed commit. The delay then
// doubles up to Options.RetryMaxDelay.
const retryMinDelay = 50 * time.Millisecond

// retryWarnEvery spaces the warnings of a commit that keeps failing. One
// line per 10 s shows that the store is still down without flooding the log
// at one attempt per RetryMaxDelay.
const retryWarnEvery = 10 * time.Second

// Writer appends to one stream. Create it with Log.NewWriter.
//
// A commit that fails because the store is unreachable or slow is retried
// with capped exponential back-off until it succeeds or Close gives up.
// Later appends queue behind it, so the stream keeps the order in which
// appends arrived and has no gap. The queue holds at most Options.MaxQueue
// events.
type Writer struct {
	log    *Log
	stream string
	atomic bool

	mu        sync.Mutex
	queue     []*appendRequest // accepted, not yet taken by the commit goroutine
	queued    int              // events in queue
	unsettled int              // events accepted and neither committed nor rejected
	closed    bool             // Close was called: no more appends
	notify    chan struct{}    // capacity 1: the queue grew or Close was called

	cancel   context.CancelFunc // ends the context of the commit goroutine's store calls
	abort    chan struct{}      // closed when a Close gives up: stop retrying
	aborting sync.Once
	done     chan struct{}
	exitErr  error // written before done closes

	// Owned by the commit goroutine.
	next       uint64 // sequence of the next event
	checkpoint uint64 // last sequence whose views are known to be written
	pending    uint64 // non-atomic stores: sequence to record as projected in the next commit
	lagging    bool   // some committed events still need their views written
	dropped    int    // events given up when Close ran out of time
	lastWarn   time.Time
	silenced   int // retry warnings left out since lastWarn
}

type appendRequest struct {
	events []*event.Event
	done   chan appendResult
}

type appendResult struct {
	positions []Position
	err       error
}

// NewWriter creates a stream and starts its commit goroutine. The stream must
// not exist yet: every incarnation writes a stream of its own.
func (l *Log) NewWriter(ctx context.Context, stream string) (*Writer, error) {
	if err := validateStreamName(stream); err != nil {
		return nil, err
	}
	if err := l.registerStream(ctx, stream); err != nil {
		return nil, err
	}
	runCtx, cancel := context.WithCancel(context.Background())
	w := &Writer{
		log:    l,
		stream: stream,
		atomic: l.store.Capabilities().Atomic,
		notify: make(chan struct{}, 1),
		cancel: cancel,
		abort:  make(chan struct{}),
		done:   make(chan struct{}),
		next:   1,
	}
	go w.run(runCtx)
	return w, nil
}

// Stream returns the name of the stream this writer appends to.
func (w *Writer) Stream() string { return w.stream }

// Backlog returns how many accepted events are neither committed nor
// rejected yet: the batch being committed and the queue behind it. After a
// Close that gave up, it also counts the events that Close dropped.
func (w *Writer) Backlog() int {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.unsettled
}

// Append validates the events, assigns each the next sequence of the stream
// (setting its sequence extension) and returns once they are durable, in the
// order given. Events of one call are committed in one transaction. When any
// event is invalid, nothing is written and the error names the field.
//
// Append never waits for room in the queue. Once it has queued the events,
// the outcome is one of:
//
//   - nil: the events are committed;
//   - an error matching ErrQueued, when ctx ends first: the events are
//     still queued and will be committed after every event appended before
//     them;
//   - an error matching ErrClosed, when Close gave up before committing
//     them;
//   - any other error: the commit failed for good (the store rejected an
//     invalid argument or is closed, or an event failed to encode), and
//     nothing was written.
//
// Before queueing, Append fails with ErrClosed after Close, with
// ErrQueueFull when the queue is full, and with ctx's error when ctx has
// already ended; none of them writes anything.
func (w *Writer) Append(ctx context.Context, events ...*event.Event) ([]Position, error) {
	if len(events) == 0 {
		return nil, nil
	}
	if v := w.log.opts.Validate; v != nil {
		for i, ev := range events {
			if err := v(ev); err != nil {
				return nil, fmt.Errorf("eventlog: append event %d of %d: %w", i+1, len(events), err)
			}
		}
	}
	if err := ctx.Err(); err != nil {
		return nil, fmt.Errorf("eventlog: append to %s: %w", w.stream, err)
	}

	req := &appendRequest{events: events, done: make(chan appendResult, 1)}
	if err := w.enqueue(req); err != nil {
		return nil, err
	}

	select {
	case res := <-req.done:
		return res.positions, res.err
	case <-w.abort:
		return w.resultAfterAbort(req)
	case <-ctx.Done():
		select {
		case res := <-req.done:
			return res.positions, res.err
		case <-w.abort:
			return w.resultAfterAbort(req)
		default:
		}
		return nil, fmt.Errorf("eventlog: append to %s: %w: %w", w.stream, ErrQueued, ctx.Err())
	}
}

// resultAfterAbort returns the result of an Append whose writer gave up.
// The commit goroutine may still be inside a store call, so Append does not
// wait for it.
func (w *Writer) resultAfterAbort(req *appendRequest) ([]Position, error) {
	select {
	case res := <-req.done:
		return res.positions, res.err
	default:
		return nil, fmt.Errorf("eventlog: append to %s: writer gave up, commit not confirmed: %w", w.stream, ErrClosed)
	}
}

func (w *Writer) enqueue(req *appendRequest) error {
	n := len(req.events)
	w.mu.Lock()
	defer w.mu.Unlock()

	if w.closed {
		return ErrClosed
	}
	if limit := w.log.opts.MaxQueue; w.unsettled+n > limit {
		return fmt.Errorf("eventlog: append to %s: %w: %d events wait for the store, limit %d",
			w.stream, ErrQueueFull, w.unsettled, limit)
	}
	w.queue = append(w.queue, req)
	w.queued += n
	w.unsettled += n
	w.signal()
	return nil
}

// signal wakes the commit goroutine. The caller holds mu.
func (w *Writer) signal() {
	select {
	case w.notify <- struct{}{}:
	default:
	}
}

// Close stops taking appends, commits what is queued, records the
// projection checkpoint and stops the writer. While the store is down, it
// keeps retrying until ctx ends. Then it gives up: the events not yet
// committed are dropped, their Appends fail with ErrClosed, and the
// returned error counts them. The batch in flight at that moment may still
// land. Appends after Close fail with ErrClosed.
//
// Close is idempotent. When it gives up, the commit goroutine exits as soon
// as its current store call returns, which the store bounds through the
// canceled context.
func (w *Writer) Close(ctx context.Context) error {
	w.mu.Lock()
	if !w.closed {
		w.closed = true
		w.signal()
	}
	w.mu.Unlock()

	select {
	case <-w.done:
		return w.exitErr
	case <-ctx.Done():
	}

	w.aborting.Do(func() {
		close(w.abort)
		w.cancel()
	})
	if left := w.Backlog(); left > 0 {
		return fmt.Errorf("eventlog: close %s: gave up with %d events not committed: %w", w.stream, left, ctx.Err())
	}
	return nil
}

func (w *Writer) aborted() bool {
	select {
	case <-w.abort:
		return true
	default:
		return false
	}
}

func (w *Writer) run(ctx context.Context) {
	defer close(w.done)
	defer w.cancel()

	for {
		batch := w.take()
		if batch == nil {
			break
		}
		w.commit(ctx, batch)
	}
	if !w.aborted() {
		w.flushCheckpoint(ctx)
	}
	w.dropQueue()
	if w.dropped > 0 {
		w.exitErr = fmt.Errorf("eventlog: close %s: %d events not committed: %w", w.stream, w.dropped, ErrClosed)
	}
}

// take waits for queued requests and returns the oldest of them, up to
// MaxBatch events, waiting CommitWindow for more when it is set. It returns
// nil once the writer is closed and its queue empty, or when Close gave up.
func (w *Writer) take() []*appendRequest {
	var timer *time.Timer
	var window <-chan time.Time
	defer func() {
		if timer != nil {
			timer.Stop()
		}
	}()

	windowOver := w.log.opts.CommitWindow <= 0
	for {
		if w.aborted() {
			return nil
		}
		w.mu.Lock()
		ready := w.queued > 0 && (windowOver || w.closed || w.queued >= w.log.opts.MaxBatch)
		if ready {
			batch := w.cut()
			w.mu.Unlock()
			return batch
		}
		empty, closed := w.queued == 0, w.closed
		w.mu.Unlock()

		if empty && closed {
			return nil
		}
		if !empty && timer == nil {
			timer = time.NewTimer(w.log.opts.CommitWindow)
			window = timer.C
		}
		select {
		case <-w.notify:
		case <-window:
			windowOver = true
		case <-w.abort:
			return nil
		}
	}
}

// cut removes the oldest requests from the queue: at least one, and more
// while the batch has fewer than MaxBatch events. The caller holds mu.
func (w *Writer) cut() []*appendRequest {
	var k, n int
	for k < len(w.queue) && n < w.log.opts.MaxBatch {
		n += len(w.queue[k].events)
		k++
	}
	batch := make([]*appendRequest, k)
	copy(batch, w.queue)
	clear(w.queue[:k])
	w.queue = w.queue[k:]
	if len(w.queue) == 0 {
		w.queue = nil
	}
	w.queued -= n
	return batch
}

// dropQueue fails every request still queued when the goroutine stops,
// which happens only after Close gave up.
func (w *Writer) dropQueue() {
	w.mu.Lock()
	left := w.queue
	w.queue, w.queued = nil, 0
	w.mu.Unlock()

	for _, r := range left {
		w.dropped += len(r.events)
		r.done <- appendResult{err: fmt.Errorf("eventlog: append to %s: writer closed before the commit: %w", w.stream, ErrClosed)}
	}
}

// commit writes one batch, retrying while the failure is one that time can
// fix. The sequences of a batch never change between attempts: a retry
// happens only once the stream head shows that no earlier attempt landed.
func (w *Writer) commit(ctx context.Context, batch []*appendRequest) {
	records, eventOps, err := w.encode(batch)
	if err != nil {
		w.reply(batch, nil, err)
		return
	}
	first, last := records[0].Seq, records[len(records)-1].Seq

	if w.lagging {
		w.catchUp(ctx)
	}
	failed := 0
	var since time.Time
	start := time.Now()
	for {
		err = w.transact(ctx, records, eventOps)
		if err == nil {
			break
		}
		if failed == 0 {
			since = time.Now()
		}
		landed, known, waited := w.resolve(ctx, first, last, &failed)
		if !known {
			w.giveUp(batch)
			return
		}
		if landed {
			// The events are in, so the append succeeded; their views may not be.
			w.log.opts.Logger.Warn().Err(err).Str("stream", w.stream).Uint64("seq", last).
				Msg("events committed but view writes failed; views will be caught up")
			w.lagging = true
			break
		}
		if !retryable(err) {
			w.reply(batch, nil, fmt.Errorf("eventlog: append to %s: %w", w.stream, err))
			return
		}
		failed++
		w.noteRetry(err)
		w.warnRetry(err, "commit failed; retrying", failed, first, last)
		// A head read that had to wait means the store has just come back,
		// so the next attempt goes at once.
		if !waited && !w.pause(failed) {
			w.giveUp(batch)
			return
		}
	}
	w.next = last + 1
	w.log.wake.broadcast()
	pos := make([]Position, len(records))
	for i, r := range records {
		pos[i] = r.Position()
	}
	w.reply(batch, pos, nil)
	if hook := w.log.opts.OnCommit; hook != nil {
		hook(CommitInfo{Stream: w.stream, Records: records, Duration: time.Since(start), FailedAttempts: failed})
	}

	if failed > 0 {
		w.log.opts.Logger.Info().Str("stream", w.stream).Uint64("first_seq", first).Uint64("seq", last).
			Int("failed_attempts", failed).Str("after", time.Since(since).Round(time.Millisecond).String()).
			Int("backlog", w.Backlog()).Msg("commit succeeded after the store recovered")
		w.lastWarn, w.silenced = time.Time{}, 0
	}
}

// retryable reports whether a failed commit can succeed later. The store
// rejects an invalid request or a conditional write again however long the
// writer waits, and a closed store stays closed. Anything else, including a
// timeout or an open circuit breaker, is taken as an outage.
func retryable(err error) bool {
	return !errors.Is(err, state.ErrInvalidArgument) &&
		!errors.Is(err, state.ErrETagMismatch) &&
		!errors.Is(err, state.ErrClosed)
}

// pause waits before the next attempt: exponential from retryMinDelay,
// capped at RetryMaxDelay, with half of it random so that writers of a
// fleet do not retry in step. It returns false when Close gave up.
func (w *Writer) pause(failed int) bool {
	d := min(retryMinDelay<<min(failed-1, 16), w.log.opts.RetryMaxDelay)
	d = d/2 + rand.N(d/2+1)
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-w.abort:
		return false
	}
}

// noteRetry calls the OnCommitRetry hook for one failed attempt.
func (w *Writer) noteRetry(err error) {
	if hook := w.log.opts.OnCommitRetry; hook != nil {
		hook(w.stream, err)
	}
}

// warnRetry logs a failed attempt at most once per retryWarnEvery, with how
// many it left out.
func (w *Writer) warnRetry(err error, msg string, failed int, first, last uint64) {
	if !w.lastWarn.IsZero() && time.Since(w.lastWarn) < retryWarnEvery {
		w.silenced++
		return
	}
	w.log.opts.Logger.Warn().Err(err).Str("stream", w.stream).Uint64("first_seq", first).Uint64("seq", last).
		Int("failed_attempts", failed).Int("backlog", w.Backlog()).Int("suppressed", w.silenced).Msg(msg)
	w.lastWarn, w.silenced = time.Now(), 0
}

// giveUp fails the requests of a batch whose commit Close gave up on. Its
// outcome is unknown, because an attempt cut short may still have landed.
func (w *Writer) giveUp(batch []*appendRequest) {
	for _, r := range batch {
		w.dropped += len(r.events)
		r.done <- appendResult{err: fmt.Errorf("eventlog: append to %s: writer closed, commit not confirmed: %w", w.stream, ErrClosed)}
	}
}

func (w *Writer) encode(batch []*appendRequest) ([]Record, []state.Op, error) {
	var records []Record
	var ops []state.Op
	seq := w.next
	for _, r := range batch {
		for _, ev := range r.events {
			ev.SetExtension(schemas.SequenceExtension, schemas.FormatSequence(seq))
			raw, err := encodeRecord(ev)
			if err != nil {
				return nil, nil, fmt.Errorf("eventlog: encode event %s: %w", ev.ID(), err)
			}
			records = append(records, Record{Stream: w.stream, Seq: seq, Event: ev})
			ops = append(ops, state.Op{Kind: state.Upsert, Key: eventKey(w.stream, seq), Value: raw})
			seq++
		}
	}
	ops = append(ops, state.Op{Kind: state.Upsert, Key: headKey(w.stream), Value: encodeHead(seq - 1)})
	return records, ops, nil
}

// transact writes the events with their view writes, projecting again after
// an ETag mismatch. When projection keeps failing, the events are written on
// their own and the writer is marked lagging.
func (w *Writer) transact(ctx context.Context, records []Record, eventOps []state.Op) error {
	store := w.log.store
	last := records[len(records)-1].Seq
	proj := w.log.opts.Projector
	if proj == nil {
		return store.Transact(ctx, eventOps)
	}

	var projErr error
	for attempt := 0; attempt <= w.log.opts.ProjectRetries; attempt++ {
		var viewOps []state.Op
		viewOps, projErr = proj.Mutations(ctx, store, records)
		if projErr != nil {
			break
		}
		ops := append(append(eventOps[:len(eventOps):len(eventOps)], viewOps...), w.checkpointOp(last)...)
		err := store.Transact(ctx, ops)
		if err == nil {
			w.advanceCheckpoint(last)
			return nil
		}
		if !errors.Is(err, state.ErrETagMismatch) {
			return err
		}
		projErr = err
	}

	// While the store is down this fails too, and the attempt is retried
	// whole, so the warning below marks only events that did land.
	if err := store.Transact(ctx, eventOps); err != nil {
		return err
	}
	w.log.opts.Logger.Warn().Err(projErr).Str("stream", w.stream).Uint64("seq", last).
		Msg("projection failed; committed the events without their views")
	w.lagging = true
	return nil
}

// checkpointOp records how far the views are written. On an atomic store the
// checkpoint moves with the batch. Elsewhere one failed operation does not
// stop the others, so the checkpoint written with a batch is the previous
// batch's, known to have fully succeeded.
func (w *Writer) checkpointOp(last uint64) []state.Op {
	if w.lagging {
		return nil
	}
	seq := w.pending
	if w.atomic {
		seq = last
	}
	if seq == 0 || seq == w.checkpoint {
		return nil
	}
	return []state.Op{{Kind: state.Upsert, Key: checkpointKey(w.stream), Value: encodeHead(seq)}}
}

func (w *Writer) advanceCheckpoint(last uint64) {
	if w.lagging {
		return
	}
	if w.atomic {
		w.checkpoint = last
		return
	}
	if w.pending != 0 {
		w.checkpoint = w.pending
	}
	w.pending = last
}

func (w *Writer) flushCheckpoint(ctx context.Context) {
	if w.lagging {
		w.catchUp(ctx)
		return
	}
	if w.pending == 0 || w.pending == w.checkpoint {
		return
	}
	op := state.Op{Kind: state.Upsert, Key: checkpointKey(w.stream), Value: encodeHead(w.pending)}
	if err := w.log.store.Transact(ctx, []state.Op{op}); err == nil {
		w.checkpoint = w.pending
	}
}

func (w *Writer) catchUp(ctx context.Context) {
	seq, err := w.log.CatchUp(ctx, w.stream)
	if err != nil {
		w.log.opts.Logger.Warn().Err(err).Str("stream", w.stream).Msg("view catch-up failed; will retry on the next commit")
		return
	}
	w.lagging = false
	w.pending = 0
	w.checkpoint = seq
}

// resolve finds out whether a failed commit of first..last landed by
// reading the stream head. It retries until the store responds, because
// reusing the sequences of a commit that did land would overwrite events,
// and reports known false only when Close gave up first. Each failed read
// counts in failed, and waited reports that there was one.
func (w *Writer) resolve(ctx context.Context, first, last uint64, failed *int) (landed, known, waited bool) {
	for {
		h, err := w.log.Head(ctx, w.stream)
		if err == nil {
			return h >= last, true, waited
		}
		if w.aborted() {
			return false, false, waited
		}
		*failed++
		waited = true
		w.noteRetry(err)
		w.warnRetry(err, "cannot read stream head after a failed commit; retrying", *failed, first, last)
		if !w.pause(*failed) {
			return false, false, waited
		}
	}
}

// reply sends the result to the requests of a batch that was committed
// (err nil) or rejected for good.
func (w *Writer) reply(batch []*appendRequest, pos []Position, err error) {
	n := 0
	for _, r := range batch {
		n += len(r.events)
	}
	w.mu.Lock()
	w.unsettled -= n
	w.mu.Unlock()

	for _, r := range batch {
		if err != nil {
			r.done <- appendResult{err: err}
			continue
		}
		k := len(r.events)
		r.done <- appendResult{positions: pos[:k:k]}
		pos = pos[k:]
	}
}

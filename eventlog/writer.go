package eventlog

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/cloudevents/sdk-go/v2/event"

	"github.com/virtufin/websocketmanager/internal/state"
	"github.com/virtufin/websocketmanager/schemas"
)

// Writer appends to one stream. Create it with Log.NewWriter.
type Writer struct {
	log    *Log
	stream string
	atomic bool

	reqs    chan *appendRequest
	stop    chan struct{}
	done    chan struct{}
	closing sync.Once

	// Owned by the commit goroutine.
	next       uint64 // sequence of the next event
	checkpoint uint64 // last sequence whose views are known to be written
	pending    uint64 // non-atomic stores: sequence to record as projected in the next commit
	lagging    bool   // some committed events still need their views written
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
	w := &Writer{
		log:    l,
		stream: stream,
		atomic: l.store.Capabilities().Atomic,
		reqs:   make(chan *appendRequest, l.opts.MaxBatch),
		stop:   make(chan struct{}),
		done:   make(chan struct{}),
		next:   1,
	}
	go w.run()
	return w, nil
}

// Stream returns the name of the stream this writer appends to.
func (w *Writer) Stream() string { return w.stream }

// Append validates the events, assigns each the next sequence of the stream
// (setting its sequence extension) and returns once they are durable, in the
// order given. Events of one call are committed in one transaction. When any
// event is invalid, nothing is written and the error names the field.
//
// If ctx ends while the commit is in flight, Append returns ctx's error and
// the events may still be committed.
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
	req := &appendRequest{events: events, done: make(chan appendResult, 1)}
	// A select picks at random among ready cases, so without this check an
	// Append after Close could still queue its request.
	select {
	case <-w.stop:
		return nil, ErrClosed
	default:
	}
	select {
	case w.reqs <- req:
	case <-w.stop:
		return nil, ErrClosed
	case <-ctx.Done():
		return nil, ctx.Err()
	}
	select {
	case res := <-req.done:
		return res.positions, res.err
	case <-w.done:
		// The commit goroutine replies to every request it takes before it
		// exits, so a request still unanswered now was queued after the
		// final drain and was never written.
		select {
		case res := <-req.done:
			return res.positions, res.err
		default:
			return nil, ErrClosed
		}
	case <-ctx.Done():
		return nil, fmt.Errorf("eventlog: append to %s: outcome unknown: %w", w.stream, ctx.Err())
	}
}

// Close commits what is queued, records the projection checkpoint and stops
// the writer. Appends after Close fail with ErrClosed. Close is idempotent;
// it returns ctx's error if the queue does not drain in time.
func (w *Writer) Close(ctx context.Context) error {
	w.closing.Do(func() { close(w.stop) })
	select {
	case <-w.done:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

func (w *Writer) run() {
	defer close(w.done)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()

	for {
		var first *appendRequest
		select {
		case first = <-w.reqs:
		case <-w.stop:
			w.drain(ctx)
			w.flushCheckpoint(ctx)
			return
		}
		batch := w.collect(first)
		w.commit(ctx, batch)
	}
}

// drain commits what was queued before Close.
func (w *Writer) drain(ctx context.Context) {
	for {
		select {
		case r := <-w.reqs:
			w.commit(ctx, w.collect(r))
		default:
			return
		}
	}
}

// collect gathers the requests queued behind first, up to MaxBatch events,
// waiting CommitWindow for more when it is set.
func (w *Writer) collect(first *appendRequest) []*appendRequest {
	batch := []*appendRequest{first}
	n := len(first.events)
	var window <-chan time.Time
	if w.log.opts.CommitWindow > 0 {
		t := time.NewTimer(w.log.opts.CommitWindow)
		defer t.Stop()
		window = t.C
	}
	for n < w.log.opts.MaxBatch {
		if window == nil {
			select {
			case r := <-w.reqs:
				batch = append(batch, r)
				n += len(r.events)
				continue
			default:
			}
			return batch
		}
		select {
		case r := <-w.reqs:
			batch = append(batch, r)
			n += len(r.events)
		case <-window:
			return batch
		}
	}
	return batch
}

func (w *Writer) commit(ctx context.Context, batch []*appendRequest) {
	records, eventOps, err := w.encode(batch)
	if err != nil {
		w.reply(batch, nil, err)
		return
	}
	last := records[len(records)-1].Seq

	if w.lagging {
		w.catchUp(ctx)
	}
	err = w.transact(ctx, records, eventOps)
	if err != nil {
		committed, rerr := w.resolve(ctx, last)
		if rerr != nil || !committed {
			w.reply(batch, nil, fmt.Errorf("eventlog: append to %s: %w", w.stream, err))
			return
		}
		// The events are in, so the append succeeded; their views may not be.
		w.log.opts.Logger.Warn().Err(err).Str("stream", w.stream).Uint64("seq", last).
			Msg("events committed but view writes failed; views will be caught up")
		w.lagging = true
	}

	w.next = last + 1
	w.log.wake.broadcast()
	pos := make([]Position, len(records))
	for i, r := range records {
		pos[i] = r.Position()
	}
	w.reply(batch, pos, nil)
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

	var err error
	for attempt := 0; attempt <= w.log.opts.ProjectRetries; attempt++ {
		var viewOps []state.Op
		viewOps, err = proj.Mutations(ctx, store, records)
		if err != nil {
			break
		}
		ops := append(append(eventOps[:len(eventOps):len(eventOps)], viewOps...), w.checkpointOp(last)...)
		err = store.Transact(ctx, ops)
		if err == nil {
			w.advanceCheckpoint(last)
			return nil
		}
		if !errors.Is(err, state.ErrETagMismatch) {
			return err
		}
	}

	w.log.opts.Logger.Warn().Err(err).Str("stream", w.stream).Uint64("seq", last).
		Msg("projection failed; committing events without their views")
	if err := store.Transact(ctx, eventOps); err != nil {
		return err
	}
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

// resolve finds out whether a failed commit landed by reading the stream
// head. It retries until the store responds or the writer stops, because
// reusing sequences of a commit that did land would overwrite events.
func (w *Writer) resolve(ctx context.Context, last uint64) (bool, error) {
	backoff := 50 * time.Millisecond
	for {
		h, err := w.log.Head(ctx, w.stream)
		if err == nil {
			return h >= last, nil
		}
		w.log.opts.Logger.Warn().Err(err).Str("stream", w.stream).Msg("cannot read stream head after a failed commit; retrying")
		select {
		case <-time.After(backoff):
		case <-w.stop:
			return false, err
		}
		backoff = min(2*backoff, 2*time.Second)
	}
}

func (w *Writer) reply(batch []*appendRequest, pos []Position, err error) {
	for _, r := range batch {
		if err != nil {
			r.done <- appendResult{err: err}
			continue
		}
		n := len(r.events)
		r.done <- appendResult{positions: pos[:n:n]}
		pos = pos[n:]
	}
}

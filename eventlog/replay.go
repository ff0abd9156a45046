package eventlog

import (
	"container/heap"
	"context"
	"errors"
	"fmt"
	"strings"
	"time"
)

// ErrStop can be returned by a Replay or Follow callback to end the pass
// without an error.
var ErrStop = errors.New("eventlog: stop")

// Replay calls fn for every event after the cursor, up to the heads as read
// when the pass starts, merged across streams by event time, then stream
// name, then sequence. Events of one stream always come in sequence order.
// It returns the cursor after the last delivered event.
func (l *Log) Replay(ctx context.Context, from Cursor, fn func(Record) error) (Cursor, error) {
	cur := from.Clone()
	streams, err := l.Streams(ctx)
	if err != nil {
		return cur, err
	}
	err = l.mergePass(ctx, streams, cur, fn)
	if errors.Is(err, ErrStop) {
		err = nil
	}
	return cur, err
}

// Follow is Replay that does not end: after the heads it waits for new events,
// from this process's writers at once and from other processes every
// PollInterval, until ctx ends or fn returns an error. ErrStop ends it with
// a nil error.
func (l *Log) Follow(ctx context.Context, from Cursor, fn func(Record) error) (Cursor, error) {
	cur := from.Clone()
	poll := time.NewTicker(l.opts.PollInterval)
	defer poll.Stop()
	for {
		wake := l.wake.wait()
		streams, err := l.Streams(ctx)
		if err == nil {
			err = l.mergePass(ctx, streams, cur, fn)
		}
		// A context that ends during a pass ends Follow the same way as one
		// that ends while it waits: with a nil error.
		if errors.Is(err, ErrStop) || (err != nil && ctx.Err() != nil) {
			return cur, nil
		}
		if err != nil {
			return cur, err
		}
		select {
		case <-ctx.Done():
			return cur, nil
		case <-wake:
		case <-poll.C:
		}
	}
}

// streamIter pages through one stream up to a fixed head.
type streamIter struct {
	name string
	next uint64
	head uint64
	buf  []Record
}

func (it *streamIter) peek() Record { return it.buf[0] }

func (l *Log) fill(ctx context.Context, it *streamIter) error {
	if len(it.buf) > 0 || it.next > it.head {
		return nil
	}
	recs, err := l.readRange(ctx, it.name, it.next, it.head, l.opts.MaxBatch)
	if err != nil {
		return err
	}
	it.buf = recs
	it.next += uint64(len(recs))
	return nil
}

type iterHeap []*streamIter

func (h iterHeap) Len() int { return len(h) }
func (h iterHeap) Less(i, j int) bool {
	a, b := h[i].peek(), h[j].peek()
	ta, tb := a.Event.Time(), b.Event.Time()
	if !ta.Equal(tb) {
		return ta.Before(tb)
	}
	if c := strings.Compare(a.Stream, b.Stream); c != 0 {
		return c < 0
	}
	return a.Seq < b.Seq
}
func (h iterHeap) Swap(i, j int) { h[i], h[j] = h[j], h[i] }
func (h *iterHeap) Push(x any)   { *h = append(*h, x.(*streamIter)) }
func (h *iterHeap) Pop() any {
	old := *h
	x := old[len(old)-1]
	*h = old[:len(old)-1]
	return x
}

func (l *Log) mergePass(ctx context.Context, streams []StreamInfo, cur Cursor, fn func(Record) error) error {
	h := &iterHeap{}
	for _, s := range streams {
		if cur[s.Name] >= s.Head {
			continue
		}
		it := &streamIter{name: s.Name, next: cur[s.Name] + 1, head: s.Head}
		if err := l.fill(ctx, it); err != nil {
			return err
		}
		if len(it.buf) > 0 {
			*h = append(*h, it)
		}
	}
	heap.Init(h)
	for h.Len() > 0 {
		if err := ctx.Err(); err != nil {
			return err
		}
		it := (*h)[0]
		rec := it.buf[0]
		it.buf = it.buf[1:]
		if err := fn(rec); err != nil {
			return err
		}
		cur.Advance(rec.Position())
		if err := l.fill(ctx, it); err != nil {
			return fmt.Errorf("eventlog: replay: %w", err)
		}
		if len(it.buf) == 0 {
			heap.Pop(h)
		} else {
			heap.Fix(h, 0)
		}
	}
	return nil
}

package eventlog

import (
	"context"
	"errors"
	"time"
)

// FollowStream calls fn with the events of one stream after sequence after,
// in sequence order and in pages of at most MaxBatch events. At the head it
// waits for new events: those appended through this Log wake it at once,
// and those appended by other processes are found every PollInterval. It
// runs until ctx ends, fn returns an error, or reading the stream fails.
//
// It returns the last sequence of the last page that fn accepted. An
// ErrStop from fn, or the end of ctx, ends it with a nil error. A page that
// fn rejected counts as not delivered, so a caller that resumes from the
// returned sequence receives that page again.
func (l *Log) FollowStream(ctx context.Context, stream string, after uint64, fn func([]Record) error) (uint64, error) {
	poll := time.NewTicker(l.opts.PollInterval)
	defer poll.Stop()

	for {
		// Take the wake channel before reading, so a commit that lands
		// during the read still wakes the wait below.
		wake := l.wake.wait()
		done, err := l.readToHead(ctx, stream, after, fn)
		after = done
		if errors.Is(err, ErrStop) || (err != nil && ctx.Err() != nil) {
			return after, nil
		}
		if err != nil {
			return after, err
		}

		select {
		case <-ctx.Done():
			return after, nil
		case <-wake:
		case <-poll.C:
		}
	}
}

// readToHead delivers the pages of a stream from after+1 up to its head as
// read when it starts, and returns the last sequence delivered.
func (l *Log) readToHead(ctx context.Context, stream string, after uint64, fn func([]Record) error) (uint64, error) {
	head, err := l.Head(ctx, stream)
	if err != nil {
		return after, err
	}
	for after < head {
		records, err := l.readRange(ctx, stream, after+1, head, l.opts.MaxBatch)
		if err != nil {
			return after, err
		}
		if err := fn(records); err != nil {
			return after, err
		}
		after = records[len(records)-1].Seq
	}
	return after, nil
}

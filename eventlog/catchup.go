package eventlog

import (
	"context"
	"errors"
	"fmt"

	"github.com/virtufin/websocketmanager/internal/state"
)

// CatchUp writes the views of a stream's events past its projection
// checkpoint, then moves the checkpoint to the head, and returns the new
// checkpoint. Folds are idempotent, so events whose views were in part
// written already are safe to fold again. It is a no-op without a Projector.
func (l *Log) CatchUp(ctx context.Context, stream string) (uint64, error) {
	proj := l.opts.Projector
	items, err := l.store.BulkGet(ctx, []string{headKey(stream), checkpointKey(stream)})
	if err != nil {
		return 0, fmt.Errorf("eventlog: catch up %s: %w", stream, err)
	}
	h, err := decodeHead(items[0])
	if err != nil {
		return 0, err
	}
	done, err := decodeHead(items[1])
	if err != nil {
		return 0, err
	}
	if proj == nil || done >= h {
		return done, nil
	}

	for done < h {
		records, err := l.readRange(ctx, stream, done+1, h, l.opts.MaxBatch)
		if err != nil {
			return done, fmt.Errorf("eventlog: catch up %s: %w", stream, err)
		}
		if err := l.projectRecords(ctx, records); err != nil {
			return done, fmt.Errorf("eventlog: catch up %s: %w", stream, err)
		}
		last := records[len(records)-1].Seq
		// The checkpoint goes in its own transaction, after the views are in.
		op := state.Op{Kind: state.Upsert, Key: checkpointKey(stream), Value: encodeHead(last)}
		if err := l.store.Transact(ctx, []state.Op{op}); err != nil {
			return done, fmt.Errorf("eventlog: catch up %s: write checkpoint: %w", stream, err)
		}
		done = last
	}
	return done, nil
}

// CatchUpAll runs CatchUp on every stream whose checkpoint is behind its
// head and returns how many events were folded again.
func (l *Log) CatchUpAll(ctx context.Context) (int, error) {
	streams, err := l.Streams(ctx)
	if err != nil {
		return 0, err
	}
	var n int
	var errs []error
	for _, s := range streams {
		if s.Projected >= s.Head {
			continue
		}
		done, err := l.CatchUp(ctx, s.Name)
		n += int(done - s.Projected)
		errs = append(errs, err)
	}
	return n, errors.Join(errs...)
}

func (l *Log) projectRecords(ctx context.Context, records []Record) error {
	var err error
	for attempt := 0; attempt <= l.opts.ProjectRetries; attempt++ {
		var ops []state.Op
		ops, err = l.opts.Projector.Mutations(ctx, l.store, records)
		if err != nil {
			return err
		}
		if len(ops) == 0 {
			return nil
		}
		err = l.store.Transact(ctx, ops)
		if err == nil || !errors.Is(err, state.ErrETagMismatch) {
			return err
		}
	}
	return err
}

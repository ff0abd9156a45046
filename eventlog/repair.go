package eventlog

import (
	"context"
	"errors"
	"fmt"

	"github.com/virtufin/websocketmanager/internal/state"
)

// TailReport describes what RepairTail found at the end of a stream.
type TailReport struct {
	Stream      string
	Head        uint64 // head after the repair
	Dropped     uint64 // damaged or missing events cut from the tail
	Orphans     int    // event keys past the head, left by a commit that never finished, deleted
	OldHead     uint64
	FirstDamage error // cause of dropping the first dropped event
}

// Repaired reports whether the stream was changed.
func (r TailReport) Repaired() bool { return r.Dropped > 0 || r.Orphans > 0 }

// tailScan bounds how far back RepairTail looks for damage, and how far past
// the head it looks for orphans. A commit writes at most one batch, so damage
// from one interrupted commit lies within MaxBatch events of the head.
func (l *Log) tailScan() uint64 { return uint64(l.opts.MaxBatch) }

// RepairTail checks the end of a stream whose writer is gone: damaged or
// missing events just below the head are cut by moving the head back to the
// last intact event, and event keys past the head are deleted. Intact events
// are never touched. It must not run on a stream with a live writer.
func (l *Log) RepairTail(ctx context.Context, stream string) (TailReport, error) {
	rep := TailReport{Stream: stream}
	h, err := l.Head(ctx, stream)
	if err != nil {
		return rep, err
	}
	rep.Head, rep.OldHead = h, h

	// Walk back from the head to the last event that decodes.
	good := h
	for good > 0 && h-good < l.tailScan() {
		it, err := l.store.Get(ctx, eventKey(stream, good))
		if err != nil {
			return rep, fmt.Errorf("eventlog: repair %s: %w", stream, err)
		}
		if it.Exists() {
			if _, derr := DecodeRecord(it.Value); derr == nil {
				break
			} else if rep.FirstDamage == nil {
				rep.FirstDamage = fmt.Errorf("%s: %w", Position{stream, good}, derr)
			}
		} else if rep.FirstDamage == nil {
			rep.FirstDamage = fmt.Errorf("%w: %s: missing below the stream head", ErrCorrupt, Position{stream, good})
		}
		good--
	}
	if good < h && h-good >= l.tailScan() {
		return rep, fmt.Errorf("eventlog: repair %s: no intact event in the last %d, not a torn tail: %w", stream, l.tailScan(), rep.FirstDamage)
	}

	var ops []state.Op
	if good < h {
		rep.Dropped = h - good
		for s := good + 1; s <= h; s++ {
			ops = append(ops, state.Op{Kind: state.Delete, Key: eventKey(stream, s)})
		}
		ops = append(ops, state.Op{Kind: state.Upsert, Key: headKey(stream), Value: encodeHead(good)})
		// The checkpoint must not point past the new head.
		cp, err := l.store.Get(ctx, checkpointKey(stream))
		if err != nil {
			return rep, fmt.Errorf("eventlog: repair %s: %w", stream, err)
		}
		if done, err := decodeHead(cp); err != nil || done > good {
			ops = append(ops, state.Op{Kind: state.Upsert, Key: checkpointKey(stream), Value: encodeHead(good)})
		}
		rep.Head = good
	}

	keys := make([]string, 0, l.tailScan())
	for s := h + 1; s <= h+l.tailScan(); s++ {
		keys = append(keys, eventKey(stream, s))
	}
	items, err := l.store.BulkGet(ctx, keys)
	if err != nil {
		return rep, fmt.Errorf("eventlog: repair %s: %w", stream, err)
	}
	for _, it := range items {
		if it.Exists() {
			rep.Orphans++
			ops = append(ops, state.Op{Kind: state.Delete, Key: it.Key})
		}
	}

	if len(ops) == 0 {
		return rep, nil
	}
	if err := l.store.Transact(ctx, ops); err != nil {
		return rep, fmt.Errorf("eventlog: repair %s: %w", stream, err)
	}
	l.opts.Logger.Warn().Str("stream", stream).Uint64("old_head", h).Uint64("head", rep.Head).
		Uint64("dropped", rep.Dropped).Int("orphans", rep.Orphans).AnErr("damage", rep.FirstDamage).
		Msg("repaired the torn tail of a stream")
	return rep, nil
}

// RepairTails runs RepairTail on every stream that match selects.
func (l *Log) RepairTails(ctx context.Context, match func(stream string) bool) ([]TailReport, error) {
	streams, err := l.Streams(ctx)
	if err != nil {
		return nil, err
	}
	var out []TailReport
	var errs []error
	for _, s := range streams {
		if !match(s.Name) {
			continue
		}
		rep, err := l.RepairTail(ctx, s.Name)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		if rep.Repaired() {
			out = append(out, rep)
		}
	}
	return out, errors.Join(errs...)
}

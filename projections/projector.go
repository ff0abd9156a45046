package projections

import (
	"context"
	"fmt"

	"github.com/virtufin/websocketmanager/eventlog"
	"github.com/virtufin/websocketmanager/internal/state"
)

// Projector turns batches of events into conditional view writes. It
// implements eventlog.Projector and holds no state, so one value serves every
// writer.
type Projector struct{}

var _ eventlog.Projector = Projector{}

// Mutations reads the views the records touch, folds the records into them
// and returns a write for every key whose value changed, conditional on the
// ETag it was read with.
func (Projector) Mutations(ctx context.Context, store state.Store, records []eventlog.Record) ([]state.Op, error) {
	events := make([]decoded, 0, len(records))
	var refs []ref
	seen := map[ref]bool{}
	for _, rec := range records {
		d, err := decode(rec.Event)
		if err != nil {
			return nil, err
		}
		events = append(events, d)
		for _, r := range d.refs() {
			if !seen[r] {
				seen[r] = true
				refs = append(refs, r)
			}
		}
	}
	if len(refs) == 0 {
		return nil, nil
	}

	keys := make([]string, len(refs))
	for i, r := range refs {
		keys[i] = r.key()
	}
	items, err := store.BulkGet(ctx, keys)
	if err != nil {
		return nil, fmt.Errorf("projections: read views: %w", err)
	}
	set := NewSet()
	for i, r := range refs {
		if err := set.load(r, items[i].Value); err != nil {
			return nil, err
		}
	}

	for _, d := range events {
		set.fold(d)
	}

	var ops []state.Op
	for i, r := range refs {
		before, after := items[i].Value, set.encode(r)
		if after == nil && r.kind != kindConnection && r.kind != kindInstance {
			// An index that becomes empty is kept as an empty document. On
			// Dapr's Redis store a conditional write to a deleted key
			// succeeds whatever ETag it carries, so a delete would let a
			// writer holding a stale ETag bring back an old index.
			after = emptyIndex(r)
		}
		if sameValue(before, after) {
			continue
		}
		op := state.Op{Key: keys[i], ETag: items[i].ETag, MustNotExist: before == nil}
		if after == nil {
			op.Kind = state.Delete
		} else {
			op.Kind = state.Upsert
			op.Value = after
		}
		ops = append(ops, op)
	}
	return ops, nil
}

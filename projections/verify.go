package projections

import (
	"context"
	"maps"

	"github.com/virtufin/websocketmanager/eventlog"
	"github.com/virtufin/websocketmanager/internal/state"
)

// VerifyResult is the outcome of Verify.
type VerifyResult struct {
	Events      int
	Streams     int
	Keys        int // view keys compared
	Differences []Difference
}

// Equal reports whether the live views matched the rebuilt ones.
func (r VerifyResult) Equal() bool { return len(r.Differences) == 0 }

// verifyRounds bounds how often Verify folds newer events and reads the live
// views again while a running fleet keeps appending.
const verifyRounds = 20

// Verify folds the whole log in store into fresh views and compares them
// with the live views, key by key.
//
// On a store that takes snapshots, the log and the views are read as of one
// moment. Elsewhere the fleet may append while Verify reads. So Verify reads
// the live views and then the stream heads. When the heads moved past what it
// folded, it folds the new events and reads the views again, until the heads
// stand still across one read of the views.
func Verify(ctx context.Context, store state.Store) (VerifyResult, error) {
	if snap, ok := store.(state.Snapshotter); ok {
		var res VerifyResult
		err := snap.Snapshot(ctx, func(s state.Store) error {
			var err error
			res, err = verifyUntilStable(ctx, s, 1)
			return err
		})
		return res, err
	}
	return verifyUntilStable(ctx, store, verifyRounds)
}

func verifyUntilStable(ctx context.Context, store state.Store, rounds int) (VerifyResult, error) {
	log := eventlog.Open(store, eventlog.Options{})
	rebuilt := NewSet()
	var res VerifyResult
	fold := func(rec eventlog.Record) error {
		res.Events++
		d, err := decode(rec.Event)
		if err != nil {
			return err
		}
		rebuilt.fold(d)
		return nil
	}
	cur, err := log.Replay(ctx, nil, fold)
	if err != nil {
		return res, err
	}

	var live *Set
	for round := 1; ; round++ {
		live, err = LoadLive(ctx, store, rebuilt)
		if err != nil {
			return res, err
		}
		streams, err := log.Streams(ctx)
		if err != nil {
			return res, err
		}
		res.Streams = len(streams)
		heads := eventlog.Cursor{}
		for _, s := range streams {
			if s.Head > 0 {
				heads[s.Name] = s.Head
			}
		}
		if maps.Equal(heads, cur) || round >= rounds {
			break
		}
		if cur, err = log.Replay(ctx, cur, fold); err != nil {
			return res, err
		}
	}

	ApplyClaims(rebuilt, live)
	res.Differences = Diff(live, rebuilt)
	res.Keys = rebuilt.keyCount()
	return res, nil
}

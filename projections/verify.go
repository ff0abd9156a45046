package projections

import (
	"context"

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

// Verify folds the whole log in store into fresh views and compares them
// with the live views, key by key. On a store that takes snapshots, the log
// and the views are read as of one moment, so appends during the run cannot
// show up as differences.
func Verify(ctx context.Context, store state.Store) (VerifyResult, error) {
	var res VerifyResult
	run := func(s state.Store) error {
		rebuilt, stats, err := Rebuild(ctx, eventlog.Open(s, eventlog.Options{}))
		if err != nil {
			return err
		}
		live, err := LoadLive(ctx, s, rebuilt)
		if err != nil {
			return err
		}
		ApplyClaims(rebuilt, live)
		res = VerifyResult{Events: stats.Events, Streams: stats.Streams, Differences: Diff(live, rebuilt)}
		res.Keys = len(rebuilt.refs())
		return nil
	}
	if snap, ok := store.(state.Snapshotter); ok {
		return res, snap.Snapshot(ctx, run)
	}
	return res, run(store)
}

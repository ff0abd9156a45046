package eventlog_test

import (
	"context"
	"errors"
	"testing"

	"github.com/virtufin/websocketmanager/eventlog/eventlogtest"
	"github.com/virtufin/websocketmanager/internal/state"
)

// noRollbackStore runs a transaction's operations one at a time, as Dapr's
// Redis state store does inside MULTI/EXEC: an operation whose ETag does not
// match fails on its own while the others still apply. It cannot scan, like
// a Dapr store.
type noRollbackStore struct {
	inner state.Store
}

func (s noRollbackStore) Get(ctx context.Context, key string) (state.Item, error) {
	return s.inner.Get(ctx, key)
}

func (s noRollbackStore) BulkGet(ctx context.Context, keys []string) ([]state.Item, error) {
	return s.inner.BulkGet(ctx, keys)
}

func (s noRollbackStore) Transact(ctx context.Context, ops []state.Op) error {
	var errs []error
	for _, op := range ops {
		if err := s.inner.Transact(ctx, []state.Op{op}); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

func (s noRollbackStore) Capabilities() state.Capabilities { return state.Capabilities{} }

func (s noRollbackStore) Close() error { return s.inner.Close() }

// noRollback is the embedded backend behind noRollbackStore.
func noRollback(t *testing.T) eventlogtest.Backend {
	b := eventlogtest.Embedded(t)
	return eventlogtest.Backend{
		Store:  noRollbackStore{b.Store},
		Reopen: func(t *testing.T) state.Store { return noRollbackStore{b.Reopen(t)} },
		Crash:  func(t *testing.T) state.Store { return noRollbackStore{b.Crash(t)} },
	}
}

// TestNoRollbackConformance runs the suite on a store whose transactions
// apply in part, so the checkpoint handling for such stores is exercised
// without a Redis server.
func TestNoRollbackConformance(t *testing.T) {
	eventlogtest.Run(t, noRollback)
}

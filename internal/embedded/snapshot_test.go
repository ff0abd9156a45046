package embedded

import (
	"errors"
	"testing"
	"time"

	"github.com/virtufin/websocketmanager/internal/state"
)

// TestSnapshotIsolation checks that reads inside a snapshot keep seeing the
// state it started with while a write from another goroutine lands.
func TestSnapshotIsolation(t *testing.T) {
	s := openStore(t, t.TempDir(), Options{})
	mustTransact(t, s, upsert("a", "a0"), upsert("b", "b0"))

	err := s.Snapshot(t.Context(), func(snap state.Store) error {
		if got := string(mustGet(t, snap, "a").Value); got != "a0" {
			t.Errorf("a in the snapshot = %q, want a0", got)
		}

		written := make(chan error, 1)
		go func() { written <- s.Transact(t.Context(), []state.Op{upsert("a", "a1"), upsert("b", "b1")}) }()
		select {
		case err := <-written:
			if err != nil {
				t.Errorf("write during a snapshot: %v", err)
			}
		case <-time.After(5 * time.Second):
			t.Error("write during a snapshot did not finish within 5s")
		}

		items, err := snap.BulkGet(t.Context(), []string{"a", "b"})
		if err != nil {
			return err
		}
		if string(items[0].Value) != "a0" || string(items[1].Value) != "b0" {
			t.Errorf("snapshot after a concurrent write reads a=%q b=%q, want a0 and b0", items[0].Value, items[1].Value)
		}
		if err := snap.Transact(t.Context(), []state.Op{upsert("c", "x")}); !errors.Is(err, state.ErrInvalidArgument) {
			t.Errorf("Transact through a snapshot: got %v, want state.ErrInvalidArgument", err)
		}
		return nil
	})
	if err != nil {
		t.Fatalf("Snapshot: %v", err)
	}
	if got := string(mustGet(t, s, "a").Value); got != "a1" {
		t.Errorf("a after the snapshot = %q, want a1", got)
	}

	// An error from fn is returned as it is.
	boom := errors.New("boom")
	if err := s.Snapshot(t.Context(), func(state.Store) error { return boom }); !errors.Is(err, boom) {
		t.Errorf("Snapshot with a failing fn: got %v, want %v", err, boom)
	}
}

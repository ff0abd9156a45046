package embedded

import (
	"bytes"
	"context"
	"errors"
	"fmt"

	bolt "go.etcd.io/bbolt"

	"github.com/virtufin/websocketmanager/internal/state"
)

var _ state.Snapshotter = (*Store)(nil)

// Snapshot runs fn inside one bbolt read transaction. Appends go on while it
// runs; it does not block them unless the file must grow.
func (s *Store) Snapshot(ctx context.Context, fn func(state.Store) error) error {
	err := s.db.View(func(tx *bolt.Tx) error {
		return fn(&snapshot{tx: tx})
	})
	if errors.Is(err, bolt.ErrDatabaseNotOpen) {
		return state.ErrClosed
	}
	return err
}

// snapshot is a read-only state.Store over one bbolt read transaction. It is
// valid only inside the Snapshot call that made it.
type snapshot struct{ tx *bolt.Tx }

func (s *snapshot) bucket() *bolt.Bucket { return s.tx.Bucket(bucketName) }

func (s *snapshot) Get(ctx context.Context, key string) (state.Item, error) {
	items, err := s.BulkGet(ctx, []string{key})
	if err != nil {
		return state.Item{}, err
	}
	return items[0], nil
}

func (s *snapshot) BulkGet(ctx context.Context, keys []string) ([]state.Item, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	b := s.bucket()
	out := make([]state.Item, len(keys))
	for i, k := range keys {
		if b == nil {
			out[i] = state.Item{Key: k}
			continue
		}
		out[i] = decode(k, b.Get([]byte(k)))
	}
	return out, nil
}

func (s *snapshot) Transact(context.Context, []state.Op) error {
	return fmt.Errorf("embedded: write through a snapshot: %w", state.ErrInvalidArgument)
}

func (s *snapshot) Scan(ctx context.Context, prefix string, fn func(state.Item) error) error {
	b := s.bucket()
	if b == nil {
		return nil
	}
	c := b.Cursor()
	p := []byte(prefix)
	for k, v := c.Seek(p); k != nil && bytes.HasPrefix(k, p); k, v = c.Next() {
		if err := ctx.Err(); err != nil {
			return err
		}
		if err := fn(decode(string(k), v)); err != nil {
			return err
		}
	}
	return nil
}

// ScanRange calls fn for every key from start up to but not including end,
// in byte order. The value passed to fn is a copy that fn may keep.
func (s *snapshot) ScanRange(ctx context.Context, start, end string, fn func(state.Item) error) error {
	b := s.bucket()
	if b == nil {
		return nil
	}
	c := b.Cursor()
	stop := []byte(end)
	for k, v := c.Seek([]byte(start)); k != nil && bytes.Compare(k, stop) < 0; k, v = c.Next() {
		if err := ctx.Err(); err != nil {
			return err
		}
		if err := fn(decode(string(k), v)); err != nil {
			return err
		}
	}
	return nil
}

func (s *snapshot) Capabilities() state.Capabilities {
	return state.Capabilities{Atomic: true, Scan: true}
}

func (s *snapshot) Close() error { return nil }

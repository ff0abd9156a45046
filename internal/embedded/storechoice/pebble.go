package storechoice

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"slices"
	"strconv"
	"strings"
	"sync"

	"github.com/cockroachdb/pebble"
	"github.com/cockroachdb/pebble/bloom"

	"github.com/virtufin/websocketmanager/internal/state"
)

// versionKey holds the last version handed out. It sorts before every state
// key, which never start with a zero byte.
var versionKey = []byte("\x00storechoice/version")

// PebbleStore is a state.Store on a Pebble directory, laid out like the bbolt
// store: every value sits behind an 8-byte version and the ETag is that
// version in decimal. Pebble has no conditional writes, so Transact checks
// ETags and builds its batch under a mutex, as bbolt's single writer does, and
// commits the batch with fsync.
//
// It is safe for concurrent use.
type PebbleStore struct {
	db   *pebble.DB
	sync *pebble.WriteOptions

	mu      sync.Mutex
	version uint64 // last version committed, guarded by mu
}

var _ state.Store = (*PebbleStore)(nil)

// PebbleOptions configure OpenPebble.
type PebbleOptions struct {
	// ReadOnly opens the directory without writing to it. Pebble still takes
	// its exclusive directory lock.
	ReadOnly bool
	// NoSync commits without fsync.
	NoSync bool
	// Stock leaves Pebble's own defaults alone: an 8 MiB block cache and no
	// bloom filters. Otherwise the store gets a 64 MiB block cache and a
	// 10-bit bloom filter on every level, as a point-read workload wants.
	Stock bool
}

// quietLogger drops Pebble's informational lines and keeps its errors.
type quietLogger struct{ pebble.Logger }

func (quietLogger) Infof(string, ...any) {}

// OpenPebble opens or creates a Pebble store in dir.
func OpenPebble(dir string, opts PebbleOptions) (*PebbleStore, error) {
	// The whole key is its own prefix, as Get assumes when Split is nil.
	// SeekPrefixGE, which BulkGet uses, needs it spelt out.
	cmp := *pebble.DefaultComparer
	cmp.Split = func(key []byte) int { return len(key) }
	po := &pebble.Options{
		Comparer: &cmp,
		ReadOnly: opts.ReadOnly,
		Logger:   quietLogger{pebble.DefaultLogger},
	}
	if !opts.Stock {
		cache := pebble.NewCache(64 << 20)
		defer cache.Unref()
		po.Cache = cache
		po.Levels = make([]pebble.LevelOptions, 7)
		for i := range po.Levels {
			po.Levels[i].FilterPolicy = bloom.FilterPolicy(10)
			po.Levels[i].FilterType = pebble.TableFilter
		}
	}
	db, err := pebble.Open(dir, po)
	if err != nil {
		return nil, fmt.Errorf("storechoice: open pebble %s: %w", dir, err)
	}
	s := &PebbleStore{db: db, sync: pebble.Sync}
	if opts.NoSync {
		s.sync = pebble.NoSync
	}

	raw, err := readRaw(db, versionKey)
	if err != nil {
		db.Close()
		return nil, fmt.Errorf("storechoice: read version: %w", err)
	}
	if len(raw) == 8 {
		s.version = binary.BigEndian.Uint64(raw)
	}
	return s, nil
}

// getter is the point read shared by a DB, an indexed batch and a snapshot.
type getter interface {
	Get(key []byte) ([]byte, io.Closer, error)
}

// readRaw returns a copy of the stored value, or nil when the key is absent.
func readRaw(g getter, key []byte) ([]byte, error) {
	v, closer, err := g.Get(key)
	if errors.Is(err, pebble.ErrNotFound) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	out := bytes.Clone(v)
	return out, closer.Close()
}

func decodeItem(key string, raw []byte) state.Item {
	if len(raw) < 8 {
		return state.Item{Key: key}
	}
	v := binary.BigEndian.Uint64(raw[:8])
	return state.Item{Key: key, Value: raw[8:], ETag: strconv.FormatUint(v, 10)}
}

// Capabilities reports an atomic store without Scan.
func (s *PebbleStore) Capabilities() state.Capabilities {
	return state.Capabilities{Atomic: true}
}

// Get reads one key.
func (s *PebbleStore) Get(ctx context.Context, key string) (state.Item, error) {
	items, err := s.BulkGet(ctx, []string{key})
	if err != nil {
		return state.Item{}, err
	}
	return items[0], nil
}

// BulkGet reads many keys from one snapshot, so that they are consistent
// with each other as they are in one bbolt read transaction. It visits the
// keys in sorted order with one iterator, so each seek starts where the last
// one ended and can use the bloom filters.
func (s *PebbleStore) BulkGet(ctx context.Context, keys []string) ([]state.Item, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	snap := s.db.NewSnapshot()
	defer snap.Close()
	it, err := snap.NewIter(nil)
	if err != nil {
		return nil, fmt.Errorf("storechoice: bulk get: %w", err)
	}
	defer it.Close()

	order := make([]int, len(keys))
	for i := range order {
		order[i] = i
	}
	slices.SortFunc(order, func(a, b int) int { return strings.Compare(keys[a], keys[b]) })

	out := make([]state.Item, len(keys))
	for _, i := range order {
		k := []byte(keys[i])
		var raw []byte
		if it.SeekPrefixGE(k) && bytes.Equal(it.Key(), k) {
			raw = bytes.Clone(it.Value())
		}
		out[i] = decodeItem(keys[i], raw)
	}
	if err := it.Error(); err != nil {
		return nil, fmt.Errorf("storechoice: bulk get: %w", err)
	}
	return out, nil
}

// Transact applies ops in one synced batch. When any ETag check fails,
// nothing is written and the error wraps state.ErrETagMismatch.
func (s *PebbleStore) Transact(ctx context.Context, ops []state.Op) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	s.mu.Lock()
	defer s.mu.Unlock()

	// An indexed batch reads its own writes, so a key written twice in one
	// transaction is checked against the first write, as in bbolt.
	b := s.db.NewIndexedBatch()
	defer b.Close()
	next := s.version
	for _, op := range ops {
		if op.Key == "" {
			return fmt.Errorf("storechoice: empty key: %w", state.ErrInvalidArgument)
		}
		key := []byte(op.Key)
		// Only a conditional write needs the stored value. A point read of a
		// missing key costs an LSM tree more than a B+tree.
		var cur []byte
		if op.MustNotExist || op.ETag != "" {
			var err error
			if cur, err = readRaw(b, key); err != nil {
				return fmt.Errorf("storechoice: read %s: %w", op.Key, err)
			}
		}
		if op.MustNotExist && cur != nil {
			return fmt.Errorf("storechoice: key %s exists: %w", op.Key, state.ErrETagMismatch)
		}
		if op.ETag != "" {
			if got := decodeItem(op.Key, cur).ETag; got != op.ETag {
				return fmt.Errorf("storechoice: key %s has etag %q, want %q: %w", op.Key, got, op.ETag, state.ErrETagMismatch)
			}
		}
		switch op.Kind {
		case state.Upsert:
			next++
			val := make([]byte, 8+len(op.Value))
			binary.BigEndian.PutUint64(val, next)
			copy(val[8:], op.Value)
			if err := b.Set(key, val, nil); err != nil {
				return err
			}
		case state.Delete:
			if err := b.Delete(key, nil); err != nil {
				return err
			}
		default:
			return fmt.Errorf("storechoice: unknown op kind %d on key %s: %w", op.Kind, op.Key, state.ErrInvalidArgument)
		}
	}

	// The version counter is written in the same batch, as bbolt keeps its
	// bucket sequence in the same transaction.
	var v [8]byte
	binary.BigEndian.PutUint64(v[:], next)
	if err := b.Set(versionKey, v[:], nil); err != nil {
		return err
	}
	if err := b.Commit(s.sync); err != nil {
		return fmt.Errorf("storechoice: commit: %w", err)
	}
	s.version = next
	return nil
}

// Close closes the database and releases its directory lock.
func (s *PebbleStore) Close() error { return s.db.Close() }

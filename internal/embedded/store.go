// Package embedded implements the state store and pub/sub interfaces inside
// the process: the store on a bbolt file, the pub/sub in memory. It is the
// default backend, for one instance on one machine.
//
// The store is safe for concurrent use. Its transactions are atomic and
// durable when Transact returns (bbolt fsyncs each write transaction), and
// only one process can open the file for writing at a time.
package embedded

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"time"

	bolt "go.etcd.io/bbolt"

	"github.com/virtufin/websocketmanager/internal/state"
)

// FileName is the name of the store file inside the data directory.
const FileName = "wsm.db"

var bucketName = []byte("state")

// ErrLocked reports that another process holds the store file open for
// writing.
var ErrLocked = errors.New("embedded: store file is locked by another process")

// Store is a state.Store on a bbolt file. Each value is stored behind an
// 8-byte version, and the ETag is that version in decimal.
type Store struct {
	db       *bolt.DB
	readOnly bool
}

var (
	_ state.Store        = (*Store)(nil)
	_ state.Scanner      = (*Store)(nil)
	_ state.RangeScanner = (*Store)(nil)
)

// Options configure Open.
type Options struct {
	// ReadOnly opens the file with a shared lock, so several readers can
	// open it while no writer does.
	ReadOnly bool
	// LockTimeout bounds the wait for the file lock; zero means 1 s. Open
	// returns ErrLocked when it runs out.
	LockTimeout time.Duration
	// NoSync skips fsync. Only benchmarks that compare against fsync set it.
	NoSync bool
}

// Open opens or creates the store file in dir.
func Open(dir string, opts Options) (*Store, error) {
	if !opts.ReadOnly {
		if err := os.MkdirAll(dir, 0o750); err != nil {
			return nil, fmt.Errorf("embedded: create data dir: %w", err)
		}
	}
	timeout := opts.LockTimeout
	if timeout == 0 {
		timeout = time.Second
	}
	path := filepath.Join(dir, FileName)
	if opts.ReadOnly {
		if _, err := os.Stat(path); err != nil {
			return nil, fmt.Errorf("embedded: open %s: %w", path, err)
		}
	}
	db, err := bolt.Open(path, 0o640, &bolt.Options{
		Timeout:        timeout,
		ReadOnly:       opts.ReadOnly,
		NoSync:         opts.NoSync,
		FreelistType:   bolt.FreelistMapType,
		NoFreelistSync: true,
		// Map 1 GiB of address space up front: a long read transaction,
		// such as a verify, then does not hold up appends that grow the file.
		InitialMmapSize: 1 << 30,
	})
	if errors.Is(err, bolt.ErrTimeout) {
		return nil, fmt.Errorf("embedded: open %s: %w", path, ErrLocked)
	}
	if err != nil {
		return nil, fmt.Errorf("embedded: open %s: %w", path, err)
	}
	if !opts.ReadOnly {
		err = db.Update(func(tx *bolt.Tx) error {
			_, err := tx.CreateBucketIfNotExists(bucketName)
			return err
		})
		if err != nil {
			db.Close()
			return nil, fmt.Errorf("embedded: create bucket: %w", err)
		}
	}
	return &Store{db: db, readOnly: opts.ReadOnly}, nil
}

// Path returns the file the store is kept in.
func (s *Store) Path() string { return s.db.Path() }

// Capabilities reports an atomic, scannable store.
func (s *Store) Capabilities() state.Capabilities {
	return state.Capabilities{Atomic: true, Scan: true}
}

func decode(key string, raw []byte) state.Item {
	if len(raw) < 8 {
		return state.Item{Key: key}
	}
	v := binary.BigEndian.Uint64(raw[:8])
	return state.Item{Key: key, Value: bytes.Clone(raw[8:]), ETag: strconv.FormatUint(v, 10)}
}

// Get reads one key.
func (s *Store) Get(ctx context.Context, key string) (state.Item, error) {
	items, err := s.BulkGet(ctx, []string{key})
	if err != nil {
		return state.Item{}, err
	}
	return items[0], nil
}

// BulkGet reads many keys in one read transaction.
func (s *Store) BulkGet(ctx context.Context, keys []string) ([]state.Item, error) {
	var out []state.Item
	err := s.Snapshot(ctx, func(snap state.Store) error {
		var err error
		out, err = snap.BulkGet(ctx, keys)
		return err
	})
	return out, err
}

// Transact applies ops atomically: when any ETag check fails, nothing is
// written and the error wraps state.ErrETagMismatch.
func (s *Store) Transact(ctx context.Context, ops []state.Op) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	if s.readOnly {
		return fmt.Errorf("embedded: transact on a read-only store: %w", state.ErrInvalidArgument)
	}
	err := s.db.Update(func(tx *bolt.Tx) error {
		b := tx.Bucket(bucketName)
		for _, op := range ops {
			if op.Key == "" {
				return fmt.Errorf("embedded: empty key: %w", state.ErrInvalidArgument)
			}
			cur := b.Get([]byte(op.Key))
			if op.MustNotExist && cur != nil {
				return fmt.Errorf("embedded: key %s exists: %w", op.Key, state.ErrETagMismatch)
			}
			if op.ETag != "" {
				if got := decode(op.Key, cur).ETag; got != op.ETag {
					return fmt.Errorf("embedded: key %s has etag %q, want %q: %w", op.Key, got, op.ETag, state.ErrETagMismatch)
				}
			}
			switch op.Kind {
			case state.Upsert:
				version, err := b.NextSequence()
				if err != nil {
					return err
				}
				val := make([]byte, 8+len(op.Value))
				binary.BigEndian.PutUint64(val, version)
				copy(val[8:], op.Value)
				if err := b.Put([]byte(op.Key), val); err != nil {
					return err
				}
			case state.Delete:
				if err := b.Delete([]byte(op.Key)); err != nil {
					return err
				}
			default:
				return fmt.Errorf("embedded: unknown op kind %d on key %s: %w", op.Kind, op.Key, state.ErrInvalidArgument)
			}
		}
		return nil
	})
	if errors.Is(err, bolt.ErrDatabaseNotOpen) {
		return state.ErrClosed
	}
	return err
}

// Scan calls fn for every key with the prefix, in byte order, inside one
// read transaction. fn must not call the store's write methods, which would
// wait for the read transaction and deadlock when the file must grow.
func (s *Store) Scan(ctx context.Context, prefix string, fn func(state.Item) error) error {
	return s.Snapshot(ctx, func(snap state.Store) error {
		return snap.(*snapshot).Scan(ctx, prefix, fn)
	})
}

// ScanRange calls fn for every key from start up to but not including end,
// in byte order, inside one read transaction. The same restriction on fn
// applies as for Scan.
func (s *Store) ScanRange(ctx context.Context, start, end string, fn func(state.Item) error) error {
	return s.Snapshot(ctx, func(snap state.Store) error {
		return snap.(*snapshot).ScanRange(ctx, start, end, fn)
	})
}

// Close closes the file.
func (s *Store) Close() error { return s.db.Close() }

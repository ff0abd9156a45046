// Package state defines the transactional key-value store that the event log
// and the views are kept in, as Dapr's state API shapes it: string keys, byte
// values, an opaque ETag per key, bulk reads and multi-key transactions.
//
// Implementations must be safe for concurrent use. Two promises differ between
// them and are reported by Capabilities: whether a failed transaction leaves
// nothing behind (Atomic), and whether keys can be listed by prefix
// (Scan). Callers that need either must check.
package state

import (
	"context"
	"errors"
)

// Item is one key read from the store. A key that does not exist reads as an
// Item with a nil Value and an empty ETag.
type Item struct {
	Key   string
	Value []byte
	ETag  string
}

// Exists reports whether the key was present.
func (i Item) Exists() bool { return i.Value != nil }

// OpKind is the kind of write an Op makes.
type OpKind int

const (
	Upsert OpKind = iota + 1
	Delete
)

// Op is one write of a transaction.
type Op struct {
	Kind  OpKind
	Key   string
	Value []byte // for Upsert
	// ETag makes the write conditional: it applies only when the stored ETag
	// still equals this one. Empty means unconditional, unless MustNotExist
	// is set.
	ETag string
	// MustNotExist makes an Upsert apply only when the key is absent.
	MustNotExist bool
}

// Capabilities describe what a store guarantees beyond the interface.
type Capabilities struct {
	// Atomic is true when a failed Transact applied none of its operations.
	// Dapr's Redis state store is not atomic: an ETag mismatch fails that
	// operation while the rest of the transaction still applies.
	Atomic bool
	// Scan is true when the store implements Scanner.
	Scan bool
}

// Store is the state store behind the event log and the views.
type Store interface {
	// Get reads one key.
	Get(ctx context.Context, key string) (Item, error)
	// BulkGet reads many keys; the result has one Item per key, in order.
	BulkGet(ctx context.Context, keys []string) ([]Item, error)
	// Transact applies the operations as one transaction. It returns an error
	// wrapping ErrETagMismatch when a conditional write did not match.
	Transact(ctx context.Context, ops []Op) error
	// Capabilities reports the guarantees of this store.
	Capabilities() Capabilities
	// Close releases the store. Calls after Close fail with ErrClosed.
	Close() error
}

// Scanner lists keys by prefix, in byte order. Only stores that can do so
// without a full scan of a shared keyspace implement it.
type Scanner interface {
	Scan(ctx context.Context, prefix string, fn func(Item) error) error
}

// RangeScanner lists the keys from start up to but not including end, in
// byte order, with a cursor. The event log reads a range of events with it
// in one pass instead of one lookup per key, when the store has it.
type RangeScanner interface {
	ScanRange(ctx context.Context, start, end string, fn func(Item) error) error
}

var (
	// ErrETagMismatch reports a conditional write whose ETag did not match
	// the stored one, or a MustNotExist write on a key that exists.
	ErrETagMismatch = errors.New("state: etag mismatch")
	// ErrClosed reports a call on a closed store.
	ErrClosed = errors.New("state: store closed")
	// ErrInvalidArgument reports a request the store cannot carry out as
	// given, such as an empty key. Retrying it cannot help.
	ErrInvalidArgument = errors.New("state: invalid argument")
)

// Snapshotter runs fn on a read-only view of the store as of one moment, so
// that several reads see the same state. Writes through the view fail with
// ErrInvalidArgument.
type Snapshotter interface {
	Snapshot(ctx context.Context, fn func(Store) error) error
}

package dapr

import (
	"context"
	"fmt"
	"sync/atomic"
	"time"

	sdk "github.com/dapr/go-sdk/client"

	"github.com/virtufin/websocketmanager/internal/resilience"
	"github.com/virtufin/websocketmanager/internal/state"
)

// Store is a state.Store over a Dapr state store component. Create it with
// Open. Every call goes through the statestore Pipeline.
type Store struct {
	sdk    sdk.Client
	name   string // component name
	typ    string // component type, such as state.redis
	traits traits
	pipe   *resilience.Pipeline
	chunk  int

	calls   counters
	onCall  func(operation string, took time.Duration, err error) // Config.OnCall
	closed  atomic.Bool
	release func()
}

var _ state.Store = (*Store)(nil)

// traits are the guarantees of a state store component type beyond Dapr's
// API.
type traits struct {
	// atomic: a failed transaction leaves nothing behind.
	atomic bool
	// createOnlyETag, when set, is an ETag that makes a write apply only to
	// an absent key. Otherwise MustNotExist is sent as first-write
	// concurrency without an ETag, which most stores treat as an insert.
	createOnlyETag string
}

// traitsOf returns the traits of a component type.
//
// Redis runs a transaction as MULTI/EXEC of one Lua script per operation,
// so a script that finds the wrong version fails alone and the rest still
// apply. Its set script accepts any ETag on a missing key and ignores
// first-write concurrency without an ETag. "Create only" is therefore an
// ETag that no stored version can equal. Versions start at 1 and only
// grow, so "-1" matches no existing key and the write applies exactly when
// the key is absent (checked against Dapr 1.14 in this package's tests).
//
// The stores listed as atomic run a transaction inside a database
// transaction (in-memory checks every ETag before it writes). Only
// state.in-memory and state.redis are exercised by this package's tests;
// an unknown type is taken as not atomic, which costs the event log some
// re-folding and never correctness.
func traitsOf(componentType string) traits {
	switch componentType {
	case "state.redis":
		return traits{createOnlyETag: "-1"}
	case "state.postgresql", "state.cockroachdb", "state.mysql", "state.sqlite",
		"state.sqlserver", "state.in-memory":
		return traits{atomic: true}
	}
	return traits{}
}

// Capabilities reports whether the component rolls transactions back.
// Dapr has no key listing, so Scan is false.
func (s *Store) Capabilities() state.Capabilities {
	return state.Capabilities{Atomic: s.traits.atomic}
}

// Component returns the name and type of the Dapr component.
func (s *Store) Component() (name, typ string) { return s.name, s.typ }

// Pipeline returns the statestore Pipeline, for health output.
func (s *Store) Pipeline() *resilience.Pipeline { return s.pipe }

// Calls counts the gRPC calls made to the sidecar so far, retries included.
func (s *Store) Calls() Calls { return s.calls.load() }

func (s *Store) check(keys ...string) error {
	if s.closed.Load() {
		return state.ErrClosed
	}
	for _, k := range keys {
		if k == "" {
			return fmt.Errorf("dapr: empty key: %w", state.ErrInvalidArgument)
		}
	}
	return nil
}

// Get reads one key.
func (s *Store) Get(ctx context.Context, key string) (state.Item, error) {
	if err := s.check(key); err != nil {
		return state.Item{}, err
	}
	var it state.Item
	err := s.pipe.Do(ctx, "get", func(ctx context.Context) error {
		s.calls.get.Add(1)
		start := time.Now()
		got, err := s.sdk.GetState(ctx, s.name, key, nil)
		err = mapStateError("get "+key, err)
		report(s.onCall, "get", start, err)
		if err != nil {
			return err
		}
		it = item(key, got.Value, got.Etag)
		return nil
	})
	return it, err
}

// BulkGet reads many keys, at most Config.BulkGetChunk per call.
func (s *Store) BulkGet(ctx context.Context, keys []string) ([]state.Item, error) {
	if err := s.check(keys...); err != nil {
		return nil, err
	}
	out := make([]state.Item, len(keys))
	for start := 0; start < len(keys); start += s.chunk {
		chunk := keys[start:min(start+s.chunk, len(keys))]
		if err := s.bulkGet(ctx, chunk, out[start:]); err != nil {
			return nil, err
		}
	}
	return out, nil
}

func (s *Store) bulkGet(ctx context.Context, keys []string, out []state.Item) error {
	return s.pipe.Do(ctx, "bulk_get", func(ctx context.Context) error {
		s.calls.bulkGet.Add(1)
		start := time.Now()
		got, err := s.sdk.GetBulkState(ctx, s.name, keys, nil, 0)
		err = mapStateError("bulk get", err)
		report(s.onCall, "bulk_get", start, err)
		if err != nil {
			return err
		}
		// Dapr returns one item per key, not necessarily in request order,
		// and reports a key it could not read in the item, not the call.
		byKey := make(map[string]*sdk.BulkStateItem, len(got))
		for _, it := range got {
			if it.Error != "" {
				return fmt.Errorf("dapr: bulk get %s: %s", it.Key, it.Error)
			}
			byKey[it.Key] = it
		}
		for i, k := range keys {
			it, ok := byKey[k]
			if !ok {
				return fmt.Errorf("dapr: bulk get of %d keys: response has no item for %s", len(keys), k)
			}
			out[i] = item(k, it.Value, it.Etag)
		}
		return nil
	})
}

// item builds a state.Item. A key that exists always has an ETag, and gRPC
// does not tell an empty value from a missing one, so the ETag decides.
func item(key string, value []byte, etag string) state.Item {
	if etag == "" {
		return state.Item{Key: key}
	}
	if value == nil {
		value = []byte{}
	}
	return state.Item{Key: key, Value: value, ETag: etag}
}

// Transact runs the operations as one ExecuteStateTransaction call.
//
// On a store that is not atomic (Capabilities().Atomic false, as on Redis),
// an error wrapping state.ErrETagMismatch means that at least one
// conditional operation failed while the others may have applied.
//
// NOTE: the Redis store applies an ETag-conditional write to a key that
// does not exist, so a write conditional on a key that was deleted after it
// was read succeeds and recreates it.
func (s *Store) Transact(ctx context.Context, ops []state.Op) error {
	if err := s.check(); err != nil {
		return err
	}
	if len(ops) == 0 {
		return nil
	}
	req := make([]*sdk.StateOperation, len(ops))
	for i, op := range ops {
		enc, err := s.encode(op)
		if err != nil {
			return err
		}
		req[i] = enc
	}
	return s.pipe.Do(ctx, "transact", func(ctx context.Context) error {
		s.calls.transact.Add(1)
		start := time.Now()
		err := mapStateError("transact", s.sdk.ExecuteStateTransaction(ctx, s.name, nil, req))
		report(s.onCall, "transact", start, err)
		return err
	})
}

// report calls an OnCall hook, if there is one, for a call started at start.
func report(hook func(string, time.Duration, error), operation string, start time.Time, err error) {
	if hook != nil {
		hook(operation, time.Since(start), err)
	}
}

// conditional returns the options of a write that carries an ETag or must
// create its key. The SDK's default, last-write, makes the Redis store
// ignore the ETag altogether.
func conditional() *sdk.StateOptions {
	return &sdk.StateOptions{
		Concurrency: sdk.StateConcurrencyFirstWrite,
		Consistency: sdk.StateConsistencyStrong,
	}
}

func (s *Store) encode(op state.Op) (*sdk.StateOperation, error) {
	if op.Key == "" {
		return nil, fmt.Errorf("dapr: empty key: %w", state.ErrInvalidArgument)
	}
	item := &sdk.SetStateItem{Key: op.Key}
	switch {
	case op.MustNotExist && s.traits.createOnlyETag != "":
		item.Etag = &sdk.ETag{Value: s.traits.createOnlyETag}
		item.Options = conditional()
	case op.MustNotExist:
		item.Options = conditional()
	case op.ETag != "":
		item.Etag = &sdk.ETag{Value: op.ETag}
		item.Options = conditional()
	}

	switch op.Kind {
	case state.Upsert:
		item.Value = op.Value
		if item.Value == nil {
			item.Value = []byte{}
		}
		return &sdk.StateOperation{Type: sdk.StateOperationTypeUpsert, Item: item}, nil
	case state.Delete:
		return &sdk.StateOperation{Type: sdk.StateOperationTypeDelete, Item: item}, nil
	}
	return nil, fmt.Errorf("dapr: unknown op kind %d on key %s: %w", op.Kind, op.Key, state.ErrInvalidArgument)
}

// Close makes later calls fail with state.ErrClosed. The connection to the
// sidecar closes once the Client and everything opened from it are closed.
func (s *Store) Close() error {
	if s.closed.CompareAndSwap(false, true) {
		s.release()
	}
	return nil
}

// Calls counts gRPC calls to the sidecar by operation.
type Calls struct {
	Get      uint64
	BulkGet  uint64
	Transact uint64
	Publish  uint64
}

// Total returns the sum over operations.
func (c Calls) Total() uint64 { return c.Get + c.BulkGet + c.Transact + c.Publish }

type counters struct {
	get, bulkGet, transact, publish atomic.Uint64
}

func (c *counters) load() Calls {
	return Calls{Get: c.get.Load(), BulkGet: c.bulkGet.Load(), Transact: c.transact.Load(), Publish: c.publish.Load()}
}

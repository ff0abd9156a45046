package eventlogtest

import (
	"context"
	"errors"
	"sync"
	"sync/atomic"

	"github.com/virtufin/websocketmanager/internal/state"
)

// Fault is a way a FaultyStore fails while it is broken.
type Fault int

const (
	// FaultAll fails every read and write at once, as a sidecar does
	// whose database refuses connections.
	FaultAll Fault = iota + 1
	// FaultWrites fails every Transact before it applies anything, while
	// reads still work.
	FaultWrites
	// FaultLostReply applies every Transact and then reports it failed, as
	// when the database commits and the reply is lost on the way back.
	FaultLostReply
	// FaultHang holds every call until the store is repaired, then lets it
	// through, or until the call's context ends. A frozen database does
	// this: the sidecar keeps the request until its own timeout.
	FaultHang
)

// ErrOutage is the error of a broken FaultyStore when Break gets no other.
var ErrOutage = errors.New("eventlogtest: state store unavailable")

// FaultyStore is a state.Store that passes calls to the store it wraps
// until Break, and fails them in the chosen way until Repair. It reports
// no scan, since it hides the wrapped store's Scanner. It is safe for
// concurrent use.
type FaultyStore struct {
	inner state.Store

	mu       sync.Mutex
	fault    Fault // zero while working
	err      error
	repaired chan struct{} // closed by Repair; a new one per Break

	failures atomic.Int64
}

var _ state.Store = (*FaultyStore)(nil)

// NewFaultyStore wraps inner, working at first. Close closes inner.
func NewFaultyStore(inner state.Store) *FaultyStore {
	return &FaultyStore{inner: inner, repaired: closedChan()}
}

func closedChan() chan struct{} {
	ch := make(chan struct{})
	close(ch)
	return ch
}

// Break makes later calls fail with fault. A nil err means ErrOutage.
func (s *FaultyStore) Break(fault Fault, err error) {
	if err == nil {
		err = ErrOutage
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.fault == 0 {
		s.repaired = make(chan struct{})
	}
	s.fault, s.err = fault, err
}

// Repair makes the store work again and releases the calls it holds.
func (s *FaultyStore) Repair() {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.fault != 0 {
		close(s.repaired)
	}
	s.fault, s.err = 0, nil
}

// Failures counts the calls that failed or were held because of a fault.
func (s *FaultyStore) Failures() int64 { return s.failures.Load() }

// check applies the current fault to a call. It returns the error the call
// must fail with before it reaches the wrapped store, and whether the call
// is a write to apply before failing.
func (s *FaultyStore) check(ctx context.Context, write bool) (before error, after error) {
	s.mu.Lock()
	fault, err, repaired := s.fault, s.err, s.repaired
	s.mu.Unlock()

	switch {
	case fault == FaultAll, fault == FaultWrites && write:
		s.failures.Add(1)
		return err, nil
	case fault == FaultLostReply && write:
		s.failures.Add(1)
		return nil, err
	case fault == FaultHang:
		s.failures.Add(1)
		select {
		case <-repaired:
			return nil, nil
		case <-ctx.Done():
			return ctx.Err(), nil
		}
	}
	return nil, nil
}

// Get reads one key unless the store is broken.
func (s *FaultyStore) Get(ctx context.Context, key string) (state.Item, error) {
	if err, _ := s.check(ctx, false); err != nil {
		return state.Item{}, err
	}
	return s.inner.Get(ctx, key)
}

// BulkGet reads many keys unless the store is broken.
func (s *FaultyStore) BulkGet(ctx context.Context, keys []string) ([]state.Item, error) {
	if err, _ := s.check(ctx, false); err != nil {
		return nil, err
	}
	return s.inner.BulkGet(ctx, keys)
}

// Transact applies ops unless the store is broken, and under
// FaultLostReply applies them and fails anyway.
func (s *FaultyStore) Transact(ctx context.Context, ops []state.Op) error {
	before, after := s.check(ctx, true)
	if before != nil {
		return before
	}
	if err := s.inner.Transact(ctx, ops); err != nil {
		return err
	}
	return after
}

// Capabilities reports the wrapped store's atomicity and no scan.
func (s *FaultyStore) Capabilities() state.Capabilities {
	return state.Capabilities{Atomic: s.inner.Capabilities().Atomic}
}

// Close closes the wrapped store.
func (s *FaultyStore) Close() error { return s.inner.Close() }

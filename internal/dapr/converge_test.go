package dapr_test

import (
	"context"
	"encoding/json"
	"errors"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/cloudevents/sdk-go/v2/event"

	"github.com/virtufin/websocketmanager/eventlog"
	"github.com/virtufin/websocketmanager/internal/dapr"
	"github.com/virtufin/websocketmanager/internal/daprtest"
	"github.com/virtufin/websocketmanager/internal/state"
	"github.com/virtufin/websocketmanager/projections"
	"github.com/virtufin/websocketmanager/schemas"
)

// interferingStore runs interfere once, right before the first transaction
// that writes key, so that a view the projector has just read changes
// under it. It records what that transaction returned.
type interferingStore struct {
	state.Store
	key       string
	interfere func(ctx context.Context) error

	mu       sync.Mutex
	fired    bool
	firstErr error
	firstOps []state.Op
}

func (s *interferingStore) Transact(ctx context.Context, ops []state.Op) error {
	s.mu.Lock()
	fire := !s.fired && slices.ContainsFunc(ops, func(op state.Op) bool { return op.Key == s.key })
	s.fired = s.fired || fire
	s.mu.Unlock()
	if !fire {
		return s.Store.Transact(ctx, ops)
	}
	if err := s.interfere(ctx); err != nil {
		return err
	}
	err := s.Store.Transact(ctx, ops)
	s.mu.Lock()
	s.firstErr, s.firstOps = err, ops
	s.mu.Unlock()
	return err
}

func connectedEvent(t testing.TB, stream, connID, userID string) *event.Event {
	t.Helper()
	instance, incarnation := eventlog.SplitStreamName(stream)
	at := time.Now().UTC()
	ev, err := schemas.NewConnected(schemas.Envelope{InstanceID: instance, Time: at}, schemas.Connected{
		ConnectionID: connID, InstanceID: instance, Incarnation: incarnation, UserID: userID,
		RemoteAddr: "127.0.0.1:40000", UserAgent: "dapr-test", ConnectedAt: at,
	})
	if err != nil {
		t.Fatalf("build event: %v", err)
	}
	return ev
}

// TestViewsConvergeAfterPartialFailure appends a connection of user-1 on
// pod-a while, between the projector's read and its write, pod-b appends
// another connection of the same user. On Redis the commit then fails on
// the user index alone while its other writes land. The event log projects
// again, and afterwards the views equal a fold of the log.
func TestViewsConvergeAfterPartialFailure(t *testing.T) {
	t.Parallel()
	d := daprtest.Sidecar(t, daprtest.Options{})
	store := open(t, d, dapr.Config{}).Store()
	opts := eventlog.Options{Projector: projections.Projector{}, Validate: schemas.Validate}

	const streamA, streamB = "pod-a/inc-1", "pod-b/inc-1"
	other := eventlog.Open(store, opts)
	writerB, err := other.NewWriter(waitCtx(t), streamB)
	if err != nil {
		t.Fatalf("NewWriter(%s): %v", streamB, err)
	}
	defer writerB.Close(waitCtx(t))

	wrapped := &interferingStore{
		Store: store,
		key:   projections.UserKey("user-1"),
		interfere: func(ctx context.Context) error {
			_, err := writerB.Append(ctx, connectedEvent(t, streamB, "conn-b", "user-1"))
			return err
		},
	}
	log := eventlog.Open(wrapped, opts)
	writerA, err := log.NewWriter(waitCtx(t), streamA)
	if err != nil {
		t.Fatalf("NewWriter(%s): %v", streamA, err)
	}
	if _, err := writerA.Append(waitCtx(t), connectedEvent(t, streamA, "conn-a", "user-1")); err != nil {
		t.Fatalf("Append to %s: %v", streamA, err)
	}

	// The interfered commit failed on the user index, and only there.
	wrapped.mu.Lock()
	firstErr, firstOps := wrapped.firstErr, wrapped.firstOps
	wrapped.mu.Unlock()
	if !errors.Is(firstErr, state.ErrETagMismatch) {
		t.Fatalf("interfered commit = %v, want state.ErrETagMismatch", firstErr)
	}
	var applied int
	for _, op := range firstOps {
		if op.Key == wrapped.key || op.Kind != state.Upsert {
			continue
		}
		if it := mustGet(t, store, op.Key); it.Exists() {
			applied++
		}
	}
	if applied == 0 {
		t.Errorf("none of the %d other writes of the failed commit applied; want them applied, as Redis does", len(firstOps)-1)
	}
	t.Logf("failed commit: %v; %d of its %d writes applied anyway", firstErr, applied, len(firstOps))

	if err := writerA.Close(waitCtx(t)); err != nil {
		t.Fatalf("close writer: %v", err)
	}
	res, err := projections.Verify(waitCtx(t), store)
	if err != nil {
		t.Fatalf("Verify: %v", err)
	}
	if res.Events != 2 || !res.Equal() {
		t.Errorf("Verify = %d events, %d differences, want 2 events and none: %v", res.Events, len(res.Differences), res.Differences)
	}

	var user projections.UserIndex
	it := mustGet(t, store, projections.UserKey("user-1"))
	if err := json.Unmarshal(it.Value, &user); err != nil {
		t.Fatalf("decode %s: %v", it.Key, err)
	}
	if len(user.Connections) != 2 {
		t.Errorf("%s holds %v, want conn-a and conn-b", it.Key, user.Connections)
	}
	infos, err := log.Streams(waitCtx(t))
	if err != nil {
		t.Fatalf("Streams: %v", err)
	}
	for _, info := range infos {
		if info.Name == streamA && (info.Head != 1 || info.Projected != 1) {
			t.Errorf("stream %s = %+v, want head 1 and projected 1", streamA, info)
		}
	}
}

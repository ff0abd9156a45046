package dapr

import (
	"context"
	"errors"
	"sync"
	"testing"
	"time"

	sdk "github.com/dapr/go-sdk/client"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/virtufin/websocketmanager/internal/pubsub"
	"github.com/virtufin/websocketmanager/internal/resilience"
	"github.com/virtufin/websocketmanager/internal/state"
)

// fakeSidecar implements the four calls the Store and PubSub make. Each call
// first takes the next error of errs, if any is left. Other methods of
// sdk.Client are not implemented and panic.
type fakeSidecar struct {
	sdk.Client

	mu   sync.Mutex
	errs []error
}

func (f *fakeSidecar) nextErr() error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if len(f.errs) == 0 {
		return nil
	}
	err := f.errs[0]
	f.errs = f.errs[1:]
	return err
}

func (f *fakeSidecar) GetState(_ context.Context, _, _ string, _ map[string]string) (*sdk.StateItem, error) {
	if err := f.nextErr(); err != nil {
		return nil, err
	}
	return &sdk.StateItem{Value: []byte("v"), Etag: "1"}, nil
}

func (f *fakeSidecar) GetBulkState(_ context.Context, _ string, keys []string, _ map[string]string, _ int32) ([]*sdk.BulkStateItem, error) {
	if err := f.nextErr(); err != nil {
		return nil, err
	}
	out := make([]*sdk.BulkStateItem, len(keys))
	for i, k := range keys {
		out[i] = &sdk.BulkStateItem{Key: k}
	}
	return out, nil
}

func (f *fakeSidecar) ExecuteStateTransaction(_ context.Context, _ string, _ map[string]string, _ []*sdk.StateOperation) error {
	return f.nextErr()
}

func (f *fakeSidecar) PublishEvent(_ context.Context, _, _ string, _ any, _ ...sdk.PublishEventOption) error {
	return f.nextErr()
}

// callRecord is one OnCall call.
type callRecord struct {
	op   string
	took time.Duration
	err  error
}

type callRecorder struct {
	mu    sync.Mutex
	calls []callRecord
}

func (r *callRecorder) hook(op string, took time.Duration, err error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.calls = append(r.calls, callRecord{op, took, err})
}

func (r *callRecorder) take() []callRecord {
	r.mu.Lock()
	defer r.mu.Unlock()
	out := r.calls
	r.calls = nil
	return out
}

func fastPipeline(t *testing.T, name string) *resilience.Pipeline {
	t.Helper()
	p, err := resilience.New(resilience.Config{Name: name, MaxAttempts: 3, BaseDelay: time.Millisecond, MaxDelay: time.Millisecond})
	if err != nil {
		t.Fatalf("resilience.New: %v", err)
	}
	return p
}

func TestOnCallReportsEveryAttempt(t *testing.T) {
	unavailable := status.Error(codes.Unavailable, "sidecar restarting")
	conflict := status.Error(codes.Aborted, "possible etag mismatch")

	fake := &fakeSidecar{}
	var rec callRecorder
	store := &Store{sdk: fake, name: "statestore", pipe: fastPipeline(t, DependencyStateStore), chunk: 2,
		release: func() {}, onCall: rec.hook}
	ps := &PubSub{sdk: fake, name: "pubsub", pipe: fastPipeline(t, DependencyPubSub), release: func() {}, onCall: rec.hook}
	ctx := t.Context()

	tests := []struct {
		name    string
		errs    []error
		call    func() error
		wantOps []string
		// wantErr is, per reported call, nil for success, else a sentinel
		// the reported error must match or errAny for any error.
		wantErr []error
	}{
		{"get", nil,
			func() error { _, err := store.Get(ctx, "a"); return err },
			[]string{"get"}, []error{nil}},
		{"bulk get in two chunks", nil,
			func() error { _, err := store.BulkGet(ctx, []string{"a", "b", "c"}); return err },
			[]string{"bulk_get", "bulk_get"}, []error{nil, nil}},
		{"transact retried after an outage", []error{unavailable},
			func() error {
				return store.Transact(ctx, []state.Op{{Kind: state.Upsert, Key: "a", Value: []byte("1")}})
			},
			[]string{"transact", "transact"}, []error{errAny, nil}},
		{"transact conflict is mapped", []error{conflict},
			func() error { return store.Transact(ctx, []state.Op{{Kind: state.Upsert, Key: "a", ETag: "1"}}) },
			[]string{"transact"}, []error{state.ErrETagMismatch}},
		{"publish retried after an outage", []error{unavailable},
			func() error { return ps.Publish(ctx, pubsub.Message{Topic: "t", Data: []byte("{}")}) },
			[]string{"publish", "publish"}, []error{errAny, nil}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			fake.mu.Lock()
			fake.errs = tc.errs
			fake.mu.Unlock()
			_ = tc.call()

			got := rec.take()
			if len(got) != len(tc.wantOps) {
				t.Fatalf("OnCall calls: got %d (%v), want %d", len(got), got, len(tc.wantOps))
			}
			for i, c := range got {
				if c.op != tc.wantOps[i] {
					t.Errorf("call %d operation: got %q, want %q", i, c.op, tc.wantOps[i])
				}
				if c.took < 0 {
					t.Errorf("call %d duration: got %v, want >= 0", i, c.took)
				}
				switch want := tc.wantErr[i]; {
				case want == nil && c.err != nil:
					t.Errorf("call %d error: got %v, want nil", i, c.err)
				case want == errAny && c.err == nil:
					t.Errorf("call %d error: got nil, want an error", i)
				case want != nil && want != errAny && !errors.Is(c.err, want):
					t.Errorf("call %d error: got %v, want it to match %v", i, c.err, want)
				}
			}
		})
	}
}

var errAny = errors.New("any error")

func TestOnCallUnsetIsIgnored(t *testing.T) {
	store := &Store{sdk: &fakeSidecar{}, name: "statestore", pipe: fastPipeline(t, DependencyStateStore), chunk: 2, release: func() {}}
	if _, err := store.Get(t.Context(), "a"); err != nil {
		t.Fatalf("Get without OnCall: %v", err)
	}
}

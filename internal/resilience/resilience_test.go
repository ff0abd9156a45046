package resilience

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/virtufin/websocketmanager/internal/state"
)

// waitTimeout bounds every wait in these tests.
const waitTimeout = 5 * time.Second

var errDown = errors.New("dependency down")

// fast is a Config whose delays keep the tests quick. Its breaker stays
// open for a minute unless a test shortens it.
func fast(name string) Config {
	return Config{
		Name:             name,
		MaxAttempts:      4,
		BaseDelay:        time.Millisecond,
		MaxDelay:         5 * time.Millisecond,
		FailureThreshold: 3,
		OpenTimeout:      time.Minute,
	}
}

func newPipeline(t *testing.T, cfg Config) *Pipeline {
	t.Helper()
	p, err := New(cfg)
	if err != nil {
		t.Fatalf("New(%+v): %v", cfg, err)
	}
	return p
}

// fakeFn returns the errors in order, then nil, and counts its calls.
type fakeFn struct {
	mu    sync.Mutex
	errs  []error
	calls int
}

func (f *fakeFn) call(context.Context) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.calls++
	if len(f.errs) == 0 {
		return nil
	}
	err := f.errs[0]
	if len(f.errs) > 1 {
		f.errs = f.errs[1:]
	}
	return err
}

func (f *fakeFn) count() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.calls
}

func breakerState(p *Pipeline) string {
	_, st, _ := p.State()
	return st
}

func TestRetryStops(t *testing.T) {
	tests := []struct {
		name      string
		err       error
		wantCalls int
	}{
		{"etag mismatch", fmt.Errorf("transact: %w", state.ErrETagMismatch), 1},
		{"invalid argument", fmt.Errorf("get: %w", state.ErrInvalidArgument), 1},
		{"grpc invalid argument", status.Error(codes.InvalidArgument, "state store x is not found"), 1},
		{"grpc not found", status.Error(codes.NotFound, "no such thing"), 1},
		{"grpc failed precondition", status.Error(codes.FailedPrecondition, "not ready"), 1},
		{"wrapped grpc invalid argument", fmt.Errorf("sdk: %w", status.Error(codes.InvalidArgument, "bad")), 1},
		{"closed store", state.ErrClosed, 1},
		{"transient", errDown, 4},
		{"grpc unavailable", status.Error(codes.Unavailable, "connection refused"), 4},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfg := fast("statestore")
			cfg.FailureThreshold = 100
			p := newPipeline(t, cfg)
			f := &fakeFn{errs: []error{tt.err}}
			err := p.Do(t.Context(), "transact", f.call)
			if !errors.Is(err, tt.err) {
				t.Errorf("Do error = %v, want it to wrap %v", err, tt.err)
			}
			if got := f.count(); got != tt.wantCalls {
				t.Errorf("fn called %d times, want %d", got, tt.wantCalls)
			}
		})
	}
}

func TestRetryThenSuccess(t *testing.T) {
	p := newPipeline(t, fast("statestore"))
	f := &fakeFn{errs: []error{errDown, errDown, nil}}
	if err := p.Do(t.Context(), "get", f.call); err != nil {
		t.Fatalf("Do = %v, want success on the third attempt", err)
	}
	if got := f.count(); got != 3 {
		t.Errorf("fn called %d times, want 3", got)
	}
}

func TestRetryStopsOnContextCancel(t *testing.T) {
	cfg := fast("statestore")
	cfg.MaxAttempts = 1000
	cfg.BaseDelay = 20 * time.Millisecond
	cfg.MaxDelay = 20 * time.Millisecond
	cfg.FailureThreshold = 10000
	p := newPipeline(t, cfg)

	ctx, cancel := context.WithCancel(t.Context())
	var calls atomic.Int64
	fn := func(context.Context) error {
		if calls.Add(1) == 3 {
			cancel()
		}
		return errDown
	}
	start := time.Now()
	err := p.Do(ctx, "get", fn)
	if !errors.Is(err, context.Canceled) {
		t.Errorf("Do error = %v, want it to wrap context.Canceled", err)
	}
	if !errors.Is(err, errDown) {
		t.Errorf("Do error = %v, want it to keep the last attempt's error", err)
	}
	if got := calls.Load(); got != 3 {
		t.Errorf("fn called %d times, want 3: no attempt after the cancel", got)
	}
	if d := time.Since(start); d > waitTimeout {
		t.Errorf("Do took %v after cancel", d)
	}

	// A context that is already done runs no attempt at all.
	calls.Store(0)
	if err := p.Do(ctx, "get", fn); !errors.Is(err, context.Canceled) || calls.Load() != 0 {
		t.Errorf("Do on a done context = %v after %d calls, want context.Canceled and no call", err, calls.Load())
	}
}

func TestAttemptTimeout(t *testing.T) {
	cfg := fast("statestore")
	cfg.MaxAttempts = 2
	cfg.AttemptTimeout = 20 * time.Millisecond
	p := newPipeline(t, cfg)
	var calls atomic.Int64
	err := p.Do(t.Context(), "get", func(ctx context.Context) error {
		calls.Add(1)
		<-ctx.Done() // a dependency that hangs
		return ctx.Err()
	})
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("Do error = %v, want it to wrap context.DeadlineExceeded", err)
	}
	if got := calls.Load(); got != 2 {
		t.Errorf("fn called %d times, want 2: a hung attempt is retried", got)
	}
	if _, _, c := p.State(); c.ConsecutiveFailures != 2 {
		t.Errorf("consecutive failures = %d, want 2: a hung attempt counts as failing", c.ConsecutiveFailures)
	}
}

func TestBreakerOpensAfterFailures(t *testing.T) {
	var mu sync.Mutex
	var changes []string
	cfg := fast("statestore")
	cfg.MaxAttempts = 1
	cfg.OnStateChange = func(dep, from, to string) {
		mu.Lock()
		defer mu.Unlock()
		changes = append(changes, dep+":"+from+">"+to)
	}
	p := newPipeline(t, cfg)
	f := &fakeFn{errs: []error{errDown}}

	for i := range 3 {
		if got := breakerState(p); got != StateClosed {
			t.Fatalf("state before failure %d = %s, want %s", i+1, got, StateClosed)
		}
		if err := p.Do(t.Context(), "get", f.call); !errors.Is(err, errDown) {
			t.Fatalf("Do %d = %v, want errDown", i+1, err)
		}
	}
	name, st, counts := p.State()
	if name != "statestore" || st != StateOpen {
		t.Fatalf("State() = %s, %s, want statestore, %s", name, st, StateOpen)
	}
	if counts.Requests != 0 {
		t.Errorf("counts after opening = %+v, want them cleared", counts)
	}

	// Calls fail at once without reaching the dependency.
	before := f.count()
	err := p.Do(t.Context(), "get", f.call)
	if !errors.Is(err, ErrOpen) {
		t.Errorf("Do on an open breaker = %v, want ErrOpen", err)
	}
	if f.count() != before {
		t.Errorf("fn called %d times through an open breaker, want 0", f.count()-before)
	}

	mu.Lock()
	defer mu.Unlock()
	if want := []string{"statestore:closed>open"}; fmt.Sprint(changes) != fmt.Sprint(want) {
		t.Errorf("OnStateChange calls = %v, want %v", changes, want)
	}
}

func TestBreakerIgnoresRequestErrorsAndCancels(t *testing.T) {
	cfg := fast("statestore")
	cfg.MaxAttempts = 1
	p := newPipeline(t, cfg)

	// Far more than the threshold of each, interleaved with real failures
	// that never reach it in a row.
	for range 10 {
		etag := &fakeFn{errs: []error{fmt.Errorf("op 2 of 3: %w", state.ErrETagMismatch)}}
		if err := p.Do(t.Context(), "transact", etag.call); !errors.Is(err, state.ErrETagMismatch) {
			t.Fatalf("Do = %v, want ErrETagMismatch", err)
		}
		invalid := &fakeFn{errs: []error{status.Error(codes.InvalidArgument, "bad key")}}
		p.Do(t.Context(), "get", invalid.call)

		ctx, cancel := context.WithCancel(t.Context())
		err := p.Do(ctx, "get", func(context.Context) error {
			cancel()
			return context.Canceled
		})
		if !errors.Is(err, context.Canceled) {
			t.Fatalf("Do canceled by its caller = %v, want context.Canceled", err)
		}
		ctx, cancel = context.WithTimeout(t.Context(), 20*time.Millisecond)
		err = p.Do(ctx, "get", func(ctx context.Context) error {
			<-ctx.Done()
			return status.Error(codes.DeadlineExceeded, "caller deadline")
		})
		cancel()
		if err == nil {
			t.Fatal("Do past its caller's deadline succeeded")
		}
		p.Do(t.Context(), "get", (&fakeFn{errs: []error{errDown}}).call)
	}

	_, st, counts := p.State()
	if st != StateClosed {
		t.Errorf("state = %s after request errors and cancellations, want %s", st, StateClosed)
	}
	if counts.TotalExclusions != 20 {
		t.Errorf("exclusions = %d, want 20 caller cancellations", counts.TotalExclusions)
	}
	if counts.TotalFailures != 10 || counts.ConsecutiveFailures != 1 {
		t.Errorf("counts = %+v, want 10 failures, 1 in a row", counts)
	}
}

func TestBreakerHalfOpenThenClosed(t *testing.T) {
	var mu sync.Mutex
	var changes []string
	cfg := fast("pubsub")
	cfg.MaxAttempts = 1
	cfg.FailureThreshold = 2
	cfg.OpenTimeout = 50 * time.Millisecond
	cfg.OnStateChange = func(_, from, to string) {
		mu.Lock()
		defer mu.Unlock()
		changes = append(changes, from+">"+to)
	}
	p := newPipeline(t, cfg)
	for range 2 {
		p.Do(t.Context(), "publish", (&fakeFn{errs: []error{errDown}}).call)
	}
	if got := breakerState(p); got != StateOpen {
		t.Fatalf("state = %s, want %s", got, StateOpen)
	}

	deadline := time.Now().Add(waitTimeout)
	for breakerState(p) != StateHalfOpen {
		if time.Now().After(deadline) {
			t.Fatalf("breaker not half-open %v after opening with a %v timeout", waitTimeout, cfg.OpenTimeout)
		}
		time.Sleep(5 * time.Millisecond)
	}

	if err := p.Do(t.Context(), "publish", (&fakeFn{}).call); err != nil {
		t.Fatalf("probe through the half-open breaker = %v, want success", err)
	}
	if got := breakerState(p); got != StateClosed {
		t.Errorf("state after a successful probe = %s, want %s", got, StateClosed)
	}

	mu.Lock()
	defer mu.Unlock()
	want := []string{"closed>open", "open>half-open", "half-open>closed"}
	if fmt.Sprint(changes) != fmt.Sprint(want) {
		t.Errorf("state changes = %v, want %v", changes, want)
	}
}

func TestBreakerHalfOpenFailureReopens(t *testing.T) {
	cfg := fast("pubsub")
	cfg.MaxAttempts = 3
	cfg.FailureThreshold = 1
	cfg.OpenTimeout = 30 * time.Millisecond
	p := newPipeline(t, cfg)
	p.Do(t.Context(), "publish", (&fakeFn{errs: []error{errDown}}).call)

	deadline := time.Now().Add(waitTimeout)
	for breakerState(p) != StateHalfOpen {
		if time.Now().After(deadline) {
			t.Fatal("breaker never went half-open")
		}
		time.Sleep(5 * time.Millisecond)
	}
	// The failed probe reopens the breaker, and the retry is refused
	// rather than sent.
	f := &fakeFn{errs: []error{errDown}}
	err := p.Do(t.Context(), "publish", f.call)
	if !errors.Is(err, errDown) || !errors.Is(err, ErrOpen) {
		t.Errorf("Do = %v, want the probe's error and ErrOpen", err)
	}
	if f.count() != 1 {
		t.Errorf("fn called %d times, want 1: no retry once the breaker reopened", f.count())
	}
	if got := breakerState(p); got != StateOpen {
		t.Errorf("state after a failed probe = %s, want %s", got, StateOpen)
	}
}

// TestStateChangeCallbackMayCallState checks that a callback which reads
// the state, as a metrics exporter might, does not deadlock.
func TestStateChangeCallbackMayCallState(t *testing.T) {
	cfg := fast("statestore")
	cfg.MaxAttempts = 1
	cfg.FailureThreshold = 1
	var seen atomic.Value
	var p *Pipeline
	cfg.OnStateChange = func(_, _, to string) {
		_, st, _ := p.State()
		seen.Store(to + "/" + st)
	}
	p = newPipeline(t, cfg)

	done := make(chan struct{})
	go func() {
		defer close(done)
		p.Do(t.Context(), "get", (&fakeFn{errs: []error{errDown}}).call)
	}()
	select {
	case <-done:
	case <-time.After(waitTimeout):
		t.Fatal("Do did not return: the state change callback deadlocked")
	}
	if got := seen.Load(); got != "open/open" {
		t.Errorf("callback saw %v, want open/open", got)
	}
}

func TestConcurrentDo(t *testing.T) {
	cfg := fast("statestore")
	cfg.FailureThreshold = 1000
	p := newPipeline(t, cfg)
	var wg sync.WaitGroup
	for i := range 32 {
		wg.Go(func() {
			for j := range 50 {
				var err error
				if (i+j)%3 == 0 {
					err = errDown
				}
				p.Do(t.Context(), "get", func(context.Context) error { return err })
				p.State()
			}
		})
	}
	wg.Wait()
	if got := breakerState(p); got != StateClosed {
		t.Errorf("state = %s, want %s", got, StateClosed)
	}
}

func TestConfigValidate(t *testing.T) {
	tests := []struct {
		name string
		cfg  Config
		want int // problems reported
	}{
		{"defaults", Config{Name: "statestore"}, 0},
		{"no name", Config{}, 1},
		{"everything wrong", Config{BaseDelay: -1, MaxDelay: -2, OpenTimeout: -3}, 5},
		{"max below base", Config{Name: "x", BaseDelay: 2 * time.Second, MaxDelay: time.Second}, 1},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := tt.cfg.Validate()
			var got int
			if err != nil {
				got = len(err.(interface{ Unwrap() []error }).Unwrap())
				if !errors.Is(err, ErrConfig) {
					t.Errorf("Validate() = %v, want it to wrap ErrConfig", err)
				}
			}
			if got != tt.want {
				t.Errorf("Validate() reported %d problems (%v), want %d", got, err, tt.want)
			}
		})
	}
	if _, err := New(Config{}); !errors.Is(err, ErrConfig) {
		t.Errorf("New(Config{}) = %v, want ErrConfig", err)
	}
}

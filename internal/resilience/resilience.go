// Package resilience guards the calls wsm makes to an outside dependency
// (the Dapr state store, the Dapr pub/sub) with bounded, context-aware
// retries and one circuit breaker per dependency.
//
// A Pipeline runs each call as attempts. An attempt that fails for a reason
// that retrying can fix (the sidecar is unreachable, the store timed out) is
// tried again after an exponential back-off with full jitter, up to
// Config.MaxAttempts, and never past the caller's context. An attempt that
// fails because of the request itself is returned at once: an ETag conflict
// (state.ErrETagMismatch), an invalid request (state.ErrInvalidArgument, gRPC
// InvalidArgument, NotFound, FailedPrecondition, AlreadyExists, Aborted,
// OutOfRange), or a refusal by the open breaker.
//
// The breaker counts attempts, not calls. Failed attempts in a row open it,
// and then calls fail at once with ErrOpen until Config.OpenTimeout has
// passed. After that, probes are let through (half-open), and their success
// closes it again. Request errors count as successes, because the
// dependency responded. Attempts cut short by the caller's own context count
// as neither, because they tell nothing about the dependency.
//
// A Pipeline is safe for concurrent use. It does not promise that an
// attempt which failed had no effect: callers whose writes are not
// idempotent must find out, as the event log does by reading its head.
package resilience

import (
	"context"
	"errors"
	"fmt"
	"sync"

	"github.com/avast/retry-go/v4"
	"github.com/sony/gobreaker/v2"
)

// Breaker states, as State reports them and OnStateChange receives them.
const (
	StateClosed   = "closed"
	StateHalfOpen = "half-open"
	StateOpen     = "open"
)

// ErrOpen reports a call rejected because the dependency's breaker is open,
// or half-open with its probes already under way.
var ErrOpen = errors.New("resilience: circuit breaker open")

// Counts are the breaker's counters since its last state change.
type Counts struct {
	Requests             uint32
	TotalSuccesses       uint32
	TotalFailures        uint32
	TotalExclusions      uint32 // attempts ended by the caller's context
	ConsecutiveSuccesses uint32
	ConsecutiveFailures  uint32
}

// Pipeline guards the calls to one dependency.
type Pipeline struct {
	cfg Config
	cb  *gobreaker.CircuitBreaker[struct{}]

	// gobreaker reports state changes while it holds its lock, so they are
	// queued here and delivered by flush once that lock is released. That
	// keeps the logging and the callback free to call State.
	mu      sync.Mutex
	pending []stateChange
	deliver sync.Mutex
}

type stateChange struct{ from, to string }

// New returns the Pipeline of one dependency.
func New(cfg Config) (*Pipeline, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	cfg = cfg.withDefaults()
	p := &Pipeline{cfg: cfg}
	p.cb = gobreaker.NewCircuitBreaker[struct{}](gobreaker.Settings{
		Name:        cfg.Name,
		MaxRequests: cfg.HalfOpenProbes,
		Timeout:     cfg.OpenTimeout,
		ReadyToTrip: func(c gobreaker.Counts) bool {
			return c.ConsecutiveFailures >= cfg.FailureThreshold
		},
		IsSuccessful: func(err error) bool { return err == nil || RequestError(err) },
		IsExcluded: func(err error) bool {
			var cc callerCanceled
			return errors.As(err, &cc)
		},
		OnStateChange: func(_ string, from, to gobreaker.State) {
			p.mu.Lock()
			p.pending = append(p.pending, stateChange{from.String(), to.String()})
			p.mu.Unlock()
		},
	})
	return p, nil
}

// Name returns the dependency's name.
func (p *Pipeline) Name() string { return p.cfg.Name }

// State returns the dependency's name, its breaker state (StateClosed,
// StateHalfOpen or StateOpen) and the breaker's counters.
func (p *Pipeline) State() (name, state string, counts Counts) {
	st := p.cb.State() // may move open to half-open when the timeout passed
	c := p.cb.Counts()
	p.flush()
	return p.cfg.Name, st.String(), Counts(c)
}

// Do calls fn until it succeeds, fails with an error retrying cannot fix,
// runs out of attempts, or ctx ends. op names the operation in logs and
// errors. Each attempt gets a context bounded by Config.AttemptTimeout.
//
// The error returned wraps the last attempt's error, so errors.Is finds
// state.ErrETagMismatch and the like in it. It also wraps ErrOpen when the
// breaker rejected the call, and ctx's error when ctx ended first.
func (p *Pipeline) Do(ctx context.Context, op string, fn func(ctx context.Context) error) error {
	var last, lastFailure error
	attempts := 0
	err := retry.Do(
		func() error {
			attempts++
			last = p.attempt(ctx, fn)
			if last != nil && !errors.Is(last, ErrOpen) {
				lastFailure = last
			}
			return last
		},
		retry.Context(ctx),
		retry.Attempts(p.cfg.MaxAttempts),
		retry.Delay(p.cfg.BaseDelay),
		retry.MaxDelay(p.cfg.MaxDelay),
		retry.DelayType(retry.FullJitterBackoffDelay),
		retry.LastErrorOnly(true),
		retry.RetryIf(func(err error) bool { return ctx.Err() == nil && Retryable(err) }),
		retry.OnRetry(func(n uint, err error) {
			p.cfg.Logger.Debug().Err(err).Str("dependency", p.cfg.Name).Str("op", op).
				Uint("attempt", n+1).Msg("retrying")
		}),
	)
	if err == nil {
		return nil
	}

	// retry-go returns only ctx's error when ctx ends during a back-off.
	if ctxErr := ctx.Err(); ctxErr != nil && last != nil && !errors.Is(last, ctxErr) {
		return fmt.Errorf("%s %s: %w; last attempt: %w", p.cfg.Name, op, ctxErr, last)
	}
	// A breaker that opened during the retries hides why it opened.
	if errors.Is(err, ErrOpen) && lastFailure != nil {
		return fmt.Errorf("%s %s: %w after %d attempts; last failure: %w", p.cfg.Name, op, err, attempts, lastFailure)
	}
	if attempts > 1 {
		return fmt.Errorf("%s %s: gave up after %d attempts: %w", p.cfg.Name, op, attempts, err)
	}
	return fmt.Errorf("%s %s: %w", p.cfg.Name, op, err)
}

// attempt runs fn once through the breaker.
func (p *Pipeline) attempt(ctx context.Context, fn func(ctx context.Context) error) error {
	_, err := p.cb.Execute(func() (struct{}, error) {
		actx := ctx
		if p.cfg.AttemptTimeout > 0 {
			var cancel context.CancelFunc
			actx, cancel = context.WithTimeout(ctx, p.cfg.AttemptTimeout)
			defer cancel()
		}
		err := fn(actx)
		if err != nil && ctx.Err() != nil {
			return struct{}{}, callerCanceled{err}
		}
		return struct{}{}, err
	})
	p.flush()

	if errors.Is(err, gobreaker.ErrOpenState) || errors.Is(err, gobreaker.ErrTooManyRequests) {
		return ErrOpen
	}
	var cc callerCanceled
	if errors.As(err, &cc) {
		return cc.err
	}
	return err
}

// flush delivers queued state changes in order. Only one goroutine delivers
// at a time. A goroutine that finds delivery under way leaves its changes
// to the deliverer, which checks the queue again before it stops.
func (p *Pipeline) flush() {
	for {
		if !p.deliver.TryLock() {
			return
		}
		p.mu.Lock()
		batch := p.pending
		p.pending = nil
		p.mu.Unlock()
		for _, c := range batch {
			p.report(c)
		}
		p.deliver.Unlock()

		p.mu.Lock()
		more := len(p.pending) > 0
		p.mu.Unlock()
		if !more {
			return
		}
	}
}

func (p *Pipeline) report(c stateChange) {
	ev := p.cfg.Logger.Info()
	if c.to == StateOpen {
		ev = p.cfg.Logger.Warn()
	}
	ev.Str("dependency", p.cfg.Name).Str("from", c.from).Str("to", c.to).Msg("circuit breaker state changed")
	if p.cfg.OnStateChange != nil {
		p.cfg.OnStateChange(p.cfg.Name, c.from, c.to)
	}
}

// callerCanceled marks an attempt that failed after the caller's context
// ended, so the breaker leaves it out of its counts.
type callerCanceled struct{ err error }

func (c callerCanceled) Error() string { return c.err.Error() }
func (c callerCanceled) Unwrap() error { return c.err }

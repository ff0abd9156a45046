package resilience

import (
	"errors"
	"fmt"
	"time"

	"github.com/rs/zerolog"
)

// Config configures the Pipeline of one dependency. Zero fields take the
// defaults below, and Validate reports fields that are set but unusable.
type Config struct {
	// Name names the dependency in logs, errors and health output, such as
	// "statestore" or "pubsub". Required.
	Name string

	// MaxAttempts bounds the attempts of one Do, the first included.
	// Default 4, so a dependency that is gone for a few hundred milliseconds
	// (a sidecar or Redis restart) is ridden out. With the default delays a
	// caller spends at most 1.4 s in back-off before it hears of an outage.
	MaxAttempts uint
	// BaseDelay is half the back-off ceiling before the second attempt, and
	// the ceiling doubles for each later one. Each wait is drawn at random
	// below its ceiling (full jitter), so instances do not retry in step.
	// Default 100 ms.
	BaseDelay time.Duration
	// MaxDelay caps the back-off ceiling. Default 1 s.
	MaxDelay time.Duration
	// AttemptTimeout bounds one attempt, so a dependency that hangs (a
	// stopped Redis behind a live sidecar) counts as failing instead of
	// holding the caller until its own deadline. Default 10 s, far above a
	// healthy state store call, which takes milliseconds. Negative means no
	// bound per attempt.
	AttemptTimeout time.Duration

	// FailureThreshold is the number of consecutive failed attempts that
	// opens the breaker. Default 5, so one Do of four attempts cannot open it
	// alone but two failed calls in a row do.
	FailureThreshold uint32
	// OpenTimeout is how long the breaker stays open before it lets a probe
	// through (half-open). Default 5 s, the default heartbeat interval: a
	// recovered sidecar is used again within one beat, and a dead one gets
	// one probe per beat.
	OpenTimeout time.Duration
	// HalfOpenProbes is the number of calls let through while half-open.
	// That many successes in a row close the breaker. Default 1.
	HalfOpenProbes uint32

	// OnStateChange, if set, is called on every breaker state change with
	// the dependency name and the old and new state (StateClosed,
	// StateHalfOpen, StateOpen). Calls come one at a time and in order, from
	// the goroutine that caused the change, so it must not block. It may
	// call State.
	OnStateChange func(dependency, from, to string)
	// Logger receives state changes (Info, Warn when opening) and retries
	// (Debug). The zero Logger discards.
	Logger zerolog.Logger
}

// Defaults, with their reasons at the Config fields.
const (
	DefaultMaxAttempts      uint          = 4
	DefaultBaseDelay        time.Duration = 100 * time.Millisecond
	DefaultMaxDelay         time.Duration = time.Second
	DefaultAttemptTimeout   time.Duration = 10 * time.Second
	DefaultFailureThreshold uint32        = 5
	DefaultOpenTimeout      time.Duration = 5 * time.Second
	DefaultHalfOpenProbes   uint32        = 1
)

// withDefaults returns c with every zero field set to its default.
func (c Config) withDefaults() Config {
	if c.MaxAttempts == 0 {
		c.MaxAttempts = DefaultMaxAttempts
	}
	if c.BaseDelay == 0 {
		c.BaseDelay = DefaultBaseDelay
	}
	if c.MaxDelay == 0 {
		c.MaxDelay = DefaultMaxDelay
	}
	if c.AttemptTimeout == 0 {
		c.AttemptTimeout = DefaultAttemptTimeout
	}
	if c.FailureThreshold == 0 {
		c.FailureThreshold = DefaultFailureThreshold
	}
	if c.OpenTimeout == 0 {
		c.OpenTimeout = DefaultOpenTimeout
	}
	if c.HalfOpenProbes == 0 {
		c.HalfOpenProbes = DefaultHalfOpenProbes
	}
	return c
}

// ErrConfig reports an unusable Config.
var ErrConfig = errors.New("resilience: invalid config")

// Validate reports every unusable field at once, judging zero fields by
// their defaults.
func (c Config) Validate() error {
	c = c.withDefaults()
	var errs []error
	bad := func(format string, args ...any) {
		errs = append(errs, fmt.Errorf("%w: "+format, append([]any{ErrConfig}, args...)...))
	}
	if c.Name == "" {
		bad("Name is empty")
	}
	if c.BaseDelay < 0 {
		bad("BaseDelay %v is negative", c.BaseDelay)
	}
	if c.MaxDelay < 0 {
		bad("MaxDelay %v is negative", c.MaxDelay)
	}
	if c.MaxDelay < c.BaseDelay {
		bad("MaxDelay %v is below BaseDelay %v", c.MaxDelay, c.BaseDelay)
	}
	if c.OpenTimeout < 0 {
		bad("OpenTimeout %v is negative", c.OpenTimeout)
	}
	return errors.Join(errs...)
}

package dapr

import (
	"errors"
	"fmt"
	"time"

	"github.com/virtufin/websocketmanager/internal/resilience"
)

// Config configures Open. Zero fields take the defaults below.
type Config struct {
	// Address is the sidecar's gRPC API, host:port. Default
	// 127.0.0.1:50001, daprd's default gRPC port.
	Address string
	// StateStore names the Dapr state store component. Default "statestore".
	StateStore string
	// PubSub names the Dapr pub/sub component. Default "pubsub". Set
	// NoPubSub to run without one.
	PubSub   string
	NoPubSub bool

	// StartupTimeout bounds the wait for the sidecar in Open, on top of
	// Open's context. Default 2 min, because a sidecar whose components
	// connect to a slow store can take tens of seconds. Past that, exiting
	// lets the orchestrator restart the pod, which helps more than waiting.
	StartupTimeout time.Duration
	// ProbeTimeout bounds one attempt to reach the sidecar while waiting.
	// Default 2 s, because the metadata call returns in milliseconds once
	// the sidecar listens.
	ProbeTimeout time.Duration

	// BulkGetChunk caps the keys of one bulk read, and longer key lists are
	// split over several calls. Default 500: Dapr's Redis store serves a
	// bulk read with one goroutine and one Redis round trip per key, and
	// 500 values of a few KiB each stay well under gRPC's default 4 MiB
	// message limit.
	BulkGetChunk int

	// StateResilience and PubSubResilience tune the two Pipelines; their
	// Name, OnStateChange and Logger are set by Open. Zero fields take the
	// resilience package's defaults.
	StateResilience  resilience.Config
	PubSubResilience resilience.Config
	// OnBreakerChange, if set, receives every breaker state change of
	// either dependency. It must not block.
	OnBreakerChange func(dependency, from, to string)
	// OnCall, if set, is called after every gRPC call to the sidecar, each
	// retry a call of its own, with the operation ("get", "bulk_get",
	// "transact" or "publish"), its duration and its error, mapped as the
	// Store and PubSub return it. It runs on the caller's goroutine, so it
	// must not block.
	OnCall func(operation string, took time.Duration, err error)
}

// Defaults, with their reasons at the Config fields.
const (
	DefaultAddress        = "127.0.0.1:50001"
	DefaultStateStore     = "statestore"
	DefaultPubSub         = "pubsub"
	DefaultStartupTimeout = 2 * time.Minute
	DefaultProbeTimeout   = 2 * time.Second
	DefaultBulkGetChunk   = 500
)

// Dependency names of the two Pipelines, as health output shows them.
const (
	DependencyStateStore = "statestore"
	DependencyPubSub     = "pubsub"
)

func (c Config) withDefaults() Config {
	if c.Address == "" {
		c.Address = DefaultAddress
	}
	if c.StateStore == "" {
		c.StateStore = DefaultStateStore
	}
	if c.PubSub == "" && !c.NoPubSub {
		c.PubSub = DefaultPubSub
	}
	if c.StartupTimeout == 0 {
		c.StartupTimeout = DefaultStartupTimeout
	}
	if c.ProbeTimeout == 0 {
		c.ProbeTimeout = DefaultProbeTimeout
	}
	if c.BulkGetChunk == 0 {
		c.BulkGetChunk = DefaultBulkGetChunk
	}
	return c
}

// Validate reports every unusable field at once.
func (c Config) Validate() error {
	c = c.withDefaults()
	var errs []error
	bad := func(format string, args ...any) {
		errs = append(errs, fmt.Errorf("%w: "+format, append([]any{ErrConfig}, args...)...))
	}
	if c.StartupTimeout < 0 {
		bad("StartupTimeout %v is negative", c.StartupTimeout)
	}
	if c.ProbeTimeout < 0 {
		bad("ProbeTimeout %v is negative", c.ProbeTimeout)
	}
	if c.BulkGetChunk < 0 {
		bad("BulkGetChunk %d is negative", c.BulkGetChunk)
	}
	for _, rc := range []struct {
		name string
		cfg  resilience.Config
	}{{DependencyStateStore, c.StateResilience}, {DependencyPubSub, c.PubSubResilience}} {
		rc.cfg.Name = rc.name
		if err := rc.cfg.Validate(); err != nil {
			errs = append(errs, fmt.Errorf("%w: %s resilience: %w", ErrConfig, rc.name, err))
		}
	}
	return errors.Join(errs...)
}

// Package dapr is the Dapr backend of wsm: a state.Store over a Dapr state
// store component and a pubsub.PubSub over a Dapr pub/sub component, both
// reached through the sidecar's gRPC API with github.com/dapr/go-sdk.
//
// Open waits for the sidecar, checks that the components it needs are
// loaded and able (a state store must be TRANSACTIONAL and have ETAGs), and
// returns a Client from which the Store and the PubSub are taken. Each of
// the two runs its calls through its own resilience.Pipeline, so an outage
// of one opens only its breaker.
//
// Client, Store and PubSub are safe for concurrent use. What a Store
// promises beyond Dapr's API depends on the component: see
// Store.Capabilities and Store.Transact. PubSub only publishes, because
// Dapr delivers messages by calling the app. Subscriptions serves those
// calls on the app's own HTTP listener.
package dapr

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"slices"
	"strings"
	"sync"
	"time"

	sdk "github.com/dapr/go-sdk/client"
	"github.com/rs/zerolog"
	"google.golang.org/grpc"
	"google.golang.org/grpc/backoff"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"

	"github.com/virtufin/websocketmanager/internal/resilience"
)

// Client holds the connection to one sidecar.
type Client struct {
	conn    *grpc.ClientConn
	store   *Store
	pubsub  *PubSub
	version string

	mu     sync.Mutex
	refs   int // Store and PubSub not yet closed
	closed bool
}

// Features a state store component must have, as the sidecar's metadata
// names them.
var requiredStateFeatures = []string{"TRANSACTIONAL", "ETAG"}

// Open connects to the sidecar at cfg.Address. It waits for the sidecar to
// respond, with back-off and one log line per failed attempt, until ctx
// ends or cfg.StartupTimeout passes, so a sidecar that starts late is found
// soon after it listens. Then it checks the components. It fails with an
// error wrapping ErrComponent, naming the component, when the state store
// or the pub/sub is missing or the state store lacks transactions or ETags.
func Open(ctx context.Context, cfg Config, logger zerolog.Logger) (*Client, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	cfg = cfg.withDefaults()

	conn, err := grpc.NewClient(cfg.Address,
		grpc.WithTransportCredentials(insecure.NewCredentials()),
		// gRPC's own reconnect back-off grows to two minutes; a sidecar
		// that restarts should be found again within a second or two.
		grpc.WithConnectParams(grpc.ConnectParams{
			Backoff:           backoff.Config{BaseDelay: 100 * time.Millisecond, Multiplier: 1.6, Jitter: 0.2, MaxDelay: 2 * time.Second},
			MinConnectTimeout: 2 * time.Second,
		}),
	)
	if err != nil {
		return nil, fmt.Errorf("%w: address %q: %w", ErrConfig, cfg.Address, err)
	}
	// The SDK's address constructors block on the first connection for five
	// seconds and then fail for good. Over a connection of its own, Open
	// decides how long to wait.
	client := sdk.NewClientWithConnection(conn)

	md, err := waitForSidecar(ctx, client, cfg, logger)
	if err != nil {
		conn.Close()
		return nil, err
	}
	stateType, pubsubType, err := checkComponents(md, cfg)
	if err != nil {
		conn.Close()
		return nil, err
	}

	c := &Client{conn: conn, version: runtimeVersion(md)}
	storePipe, err := newPipeline(DependencyStateStore, cfg.StateResilience, cfg, logger)
	if err != nil {
		conn.Close()
		return nil, err
	}
	c.store = &Store{
		sdk: client, name: cfg.StateStore, typ: stateType, traits: traitsOf(stateType),
		pipe: storePipe, chunk: cfg.BulkGetChunk, release: c.release, onCall: cfg.OnCall,
	}
	c.refs++
	if cfg.PubSub != "" {
		pipe, err := newPipeline(DependencyPubSub, cfg.PubSubResilience, cfg, logger)
		if err != nil {
			conn.Close()
			return nil, err
		}
		c.pubsub = &PubSub{sdk: client, name: cfg.PubSub, typ: pubsubType, pipe: pipe, release: c.release, onCall: cfg.OnCall}
		c.refs++
	}

	logger.Info().Str("address", cfg.Address).Str("dapr_version", c.version).
		Str("state_store", cfg.StateStore).Str("state_store_type", stateType).
		Bool("atomic", c.store.traits.atomic).Str("pubsub", cfg.PubSub).
		Msg("connected to the Dapr sidecar")
	return c, nil
}

func newPipeline(name string, rc resilience.Config, cfg Config, logger zerolog.Logger) (*resilience.Pipeline, error) {
	rc.Name = name
	rc.Logger = logger
	rc.OnStateChange = cfg.OnBreakerChange
	return resilience.New(rc)
}

// Store returns the state store.
func (c *Client) Store() *Store { return c.store }

// PubSub returns the pub/sub, or nil when Config.NoPubSub was set.
func (c *Client) PubSub() *PubSub { return c.pubsub }

// Pipelines returns the breakers of the dependencies, for health output.
func (c *Client) Pipelines() []*resilience.Pipeline {
	out := []*resilience.Pipeline{c.store.pipe}
	if c.pubsub != nil {
		out = append(out, c.pubsub.pipe)
	}
	return out
}

// RuntimeVersion returns the sidecar's Dapr version as it reported it.
func (c *Client) RuntimeVersion() string { return c.version }

// Close closes the Store, the PubSub and the connection. It is idempotent.
func (c *Client) Close() error {
	c.store.Close()
	if c.pubsub != nil {
		c.pubsub.Close()
	}
	return c.closeConn()
}

// release drops one holder of the connection and closes it after the last.
func (c *Client) release() {
	c.mu.Lock()
	c.refs--
	last := c.refs == 0
	c.mu.Unlock()
	if last {
		c.closeConn()
	}
}

func (c *Client) closeConn() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed {
		return nil
	}
	c.closed = true
	return c.conn.Close()
}

// Back-off of the wait for the sidecar: the first retry after about
// 100 ms, then doubling to one attempt every 2 s, so a sidecar that
// comes up is found within two seconds without flooding the log.
const (
	waitBaseDelay = 100 * time.Millisecond
	waitMaxDelay  = 2 * time.Second
)

// waitForSidecar calls the metadata API until it succeeds. Every failure is
// retried except a rejected API token, which waiting cannot fix.
func waitForSidecar(ctx context.Context, client sdk.Client, cfg Config, logger zerolog.Logger) (*sdk.GetMetadataResponse, error) {
	ctx, cancel := context.WithTimeout(ctx, cfg.StartupTimeout)
	defer cancel()
	start := time.Now()
	delay := waitBaseDelay
	for attempt := 1; ; attempt++ {
		probe, cancelProbe := context.WithTimeout(ctx, cfg.ProbeTimeout)
		md, err := client.GetMetadata(probe)
		cancelProbe()
		if err == nil {
			return md, nil
		}
		if s, ok := status.FromError(err); ok && (s.Code() == codes.Unauthenticated || s.Code() == codes.PermissionDenied) {
			return nil, fmt.Errorf("%w at %s: the sidecar rejected the API token; check DAPR_API_TOKEN: %w", ErrSidecarUnreachable, cfg.Address, err)
		}
		if ctx.Err() != nil {
			return nil, fmt.Errorf("%w at %s after %d attempts in %v: %w", ErrSidecarUnreachable,
				cfg.Address, attempt, time.Since(start).Round(time.Millisecond), err)
		}

		// Half the delay fixed, half at random, so that pods started
		// together do not probe in step.
		wait := delay/2 + rand.N(delay/2+1)
		logger.Info().Err(err).Str("address", cfg.Address).Int("attempt", attempt).
			Dur("retry_in", wait).Msg("waiting for the Dapr sidecar")
		t := time.NewTimer(wait)
		select {
		case <-t.C:
		case <-ctx.Done():
			t.Stop()
			return nil, fmt.Errorf("%w at %s after %d attempts in %v: %w", ErrSidecarUnreachable,
				cfg.Address, attempt, time.Since(start).Round(time.Millisecond), err)
		}
		delay = min(2*delay, waitMaxDelay)
	}
}

// checkComponents finds the configured components in the sidecar's
// metadata and returns their types. It reports every problem at once.
func checkComponents(md *sdk.GetMetadataResponse, cfg Config) (stateType, pubsubType string, err error) {
	byName := map[string]*sdk.MetadataRegisteredComponents{}
	var loaded []string
	for _, c := range md.RegisteredComponents {
		byName[c.Name] = c
		loaded = append(loaded, c.Name+" ("+c.Type+")")
	}
	slices.Sort(loaded)
	have := "none"
	if len(loaded) > 0 {
		have = strings.Join(loaded, ", ")
	}

	var errs []error
	if c, ok := byName[cfg.StateStore]; !ok {
		errs = append(errs, fmt.Errorf("%w: state store %q is not loaded by the sidecar at %s (it has: %s); add a Component of that name to its resources",
			ErrComponent, cfg.StateStore, cfg.Address, have))
	} else if !strings.HasPrefix(c.Type, "state.") {
		errs = append(errs, fmt.Errorf("%w: component %q is a %s, not a state store", ErrComponent, cfg.StateStore, c.Type))
	} else {
		var missing []string
		for _, f := range requiredStateFeatures {
			if !slices.Contains(c.Capabilities, f) {
				missing = append(missing, f)
			}
		}
		if len(missing) > 0 {
			caps := strings.Join(c.Capabilities, ", ")
			if caps == "" {
				caps = "none"
			}
			errs = append(errs, fmt.Errorf("%w: state store %q (%s) lacks %s (it has: %s); wsm needs a transactional state store with ETags, such as state.redis or state.postgresql",
				ErrComponent, cfg.StateStore, c.Type, strings.Join(missing, ", "), caps))
		}
		stateType = c.Type
	}

	if cfg.PubSub != "" {
		if c, ok := byName[cfg.PubSub]; !ok {
			errs = append(errs, fmt.Errorf("%w: pub/sub %q is not loaded by the sidecar at %s (it has: %s); add a Component of that name to its resources",
				ErrComponent, cfg.PubSub, cfg.Address, have))
		} else if !strings.HasPrefix(c.Type, "pubsub.") {
			errs = append(errs, fmt.Errorf("%w: component %q is a %s, not a pub/sub", ErrComponent, cfg.PubSub, c.Type))
		} else {
			pubsubType = c.Type
		}
	}
	return stateType, pubsubType, errors.Join(errs...)
}

func runtimeVersion(md *sdk.GetMetadataResponse) string {
	if v := md.ExtendedMetadata["daprRuntimeVersion"]; v != "" {
		return v
	}
	return "unknown"
}

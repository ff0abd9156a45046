package main

import (
	"context"
	"errors"
	"fmt"
	"net"
	"strings"

	"github.com/rs/zerolog"

	"github.com/virtufin/websocketmanager/internal/dapr"
	"github.com/virtufin/websocketmanager/internal/embedded"
	"github.com/virtufin/websocketmanager/internal/pubsub"
	"github.com/virtufin/websocketmanager/internal/resilience"
	"github.com/virtufin/websocketmanager/internal/state"
)

// backend is the state store and pub/sub an instance runs on.
type backend struct {
	name   string
	store  state.Store
	pubsub pubsub.PubSub
	// exclusive is true when this process is the only one that can write
	// the store, so every other stream and instance in it is dead.
	exclusive bool
	// pipelines are the resilience pipelines whose breakers /readyz
	// reports; empty on the embedded backend.
	pipelines []*resilience.Pipeline
	close     func() error
}

// openBackend opens the configured backend, with its calls and breakers
// recorded in m. On Dapr it waits for the sidecar with backoff, bounded by
// ctx.
func openBackend(ctx context.Context, cfg serveConfig, logger zerolog.Logger, m *serveMetrics) (*backend, error) {
	switch cfg.Backend {
	case "embedded":
		store, err := embedded.Open(cfg.DataDir, embedded.Options{})
		if errors.Is(err, embedded.ErrLocked) {
			return nil, fmt.Errorf("%w: another wsm is serving from %s; stop it or pick another --data-dir", err, cfg.DataDir)
		}
		if err != nil {
			return nil, err
		}
		ps := embedded.NewPubSub()
		return &backend{
			name: "embedded", store: m.meterStore("embedded", store), pubsub: ps, exclusive: true,
			close: func() error { return errors.Join(ps.Close(), store.Close()) },
		}, nil
	case "dapr":
		client, err := dapr.Open(ctx, dapr.Config{
			Address:    cfg.DaprAddress,
			StateStore: cfg.StateStore,
			PubSub:     cfg.PubSub,

			OnBreakerChange: m.BreakerChanged,
			OnCall:          m.daprCall,
		}, logger)
		if err != nil {
			return nil, err
		}
		return &backend{
			name: "dapr", store: client.Store(), pubsub: client.PubSub(),
			pipelines: client.Pipelines(), close: client.Close,
		}, nil
	}
	return nil, fmt.Errorf("unknown backend %q", cfg.Backend)
}

// daprAddressFromEnv returns the sidecar's gRPC address the way Dapr passes it to
// an app: DAPR_GRPC_ENDPOINT, else DAPR_GRPC_PORT on loopback, else the
// default port.
func daprAddressFromEnv(env func(string) string) string {
	if ep := env("DAPR_GRPC_ENDPOINT"); ep != "" {
		for _, scheme := range []string{"http://", "https://", "dns://"} {
			ep = strings.TrimPrefix(ep, scheme)
		}
		return ep
	}
	if port := env("DAPR_GRPC_PORT"); port != "" {
		return net.JoinHostPort("127.0.0.1", port)
	}
	return dapr.DefaultAddress
}

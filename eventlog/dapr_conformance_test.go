package eventlog_test

import (
	"context"
	"testing"
	"time"

	"github.com/rs/zerolog"

	"github.com/virtufin/websocketmanager/eventlog/eventlogtest"
	"github.com/virtufin/websocketmanager/internal/dapr"
	"github.com/virtufin/websocketmanager/internal/daprtest"
	"github.com/virtufin/websocketmanager/internal/state"
)

// TestDaprConformance runs the suite on Dapr's Redis state store behind a
// real sidecar, one sidecar and one Redis key prefix per subtest.
func TestDaprConformance(t *testing.T) {
	eventlogtest.Run(t, daprRedis)
}

// daprRedis is the Factory of the Dapr backend. Reopen and Crash open new
// clients of the same sidecar: Redis holds every transaction that returned,
// which is what a restarted or crashed wsm process finds.
func daprRedis(t *testing.T) eventlogtest.Backend {
	t.Helper()
	d := daprtest.Sidecar(t, daprtest.Options{})
	current := openDaprStore(t, d)
	return eventlogtest.Backend{
		Store: current,
		Reopen: func(t *testing.T) state.Store {
			t.Helper()
			current.Close()
			current = openDaprStore(t, d)
			return current
		},
		Crash: func(t *testing.T) state.Store {
			t.Helper()
			return openDaprStore(t, d)
		},
	}
}

func openDaprStore(t *testing.T, d *daprtest.Daprd) *dapr.Store {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()
	c, err := dapr.Open(ctx, dapr.Config{Address: d.GRPCAddr, NoPubSub: true}, zerolog.Nop())
	if err != nil {
		t.Fatalf("open the Dapr store at %s: %v", d.GRPCAddr, err)
	}
	t.Cleanup(func() { c.Close() })
	return c.Store()
}

package dapr_test

import (
	"context"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/rs/zerolog"

	"github.com/virtufin/websocketmanager/internal/dapr"
	"github.com/virtufin/websocketmanager/internal/daprtest"
	"github.com/virtufin/websocketmanager/internal/state"
)

// waitTimeout bounds every wait of these tests. Calls to a local sidecar
// return in milliseconds.
const waitTimeout = 15 * time.Second

func waitCtx(t *testing.T) context.Context {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), waitTimeout)
	t.Cleanup(cancel)
	return ctx
}

// eventually polls cond every 20 ms until it holds or waitTimeout passes.
func eventually(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(waitTimeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for %s", waitTimeout, what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// testLogger writes the package's log lines into the test log and keeps
// them for tests that check what was logged.
type testLogger struct {
	t     *testing.T
	mu    sync.Mutex
	lines []string
}

func newLogger(t *testing.T) (zerolog.Logger, *testLogger) {
	l := &testLogger{t: t}
	return zerolog.New(l).With().Timestamp().Logger(), l
}

func (l *testLogger) Write(p []byte) (int, error) {
	l.mu.Lock()
	l.lines = append(l.lines, strings.TrimSpace(string(p)))
	l.mu.Unlock()
	l.t.Log(strings.TrimSpace(string(p)))
	return len(p), nil
}

// count returns how many lines contain s.
func (l *testLogger) count(s string) int {
	l.mu.Lock()
	defer l.mu.Unlock()
	n := 0
	for _, line := range l.lines {
		if strings.Contains(line, s) {
			n++
		}
	}
	return n
}

// open connects to the sidecar with cfg, filling in its address, and
// closes the client when the test ends.
func open(t *testing.T, d *daprtest.Daprd, cfg dapr.Config) *dapr.Client {
	t.Helper()
	cfg.Address = d.GRPCAddr
	logger, _ := newLogger(t)
	c, err := dapr.Open(waitCtx(t), cfg, logger)
	if err != nil {
		t.Fatalf("Open(%s): %v", d.GRPCAddr, err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

func upsert(key, value string) state.Op {
	return state.Op{Kind: state.Upsert, Key: key, Value: []byte(value)}
}

func mustTransact(t *testing.T, s state.Store, ops ...state.Op) {
	t.Helper()
	if err := s.Transact(waitCtx(t), ops); err != nil {
		t.Fatalf("Transact(%d ops): %v", len(ops), err)
	}
}

func mustGet(t *testing.T, s state.Store, key string) state.Item {
	t.Helper()
	it, err := s.Get(waitCtx(t), key)
	if err != nil {
		t.Fatalf("Get(%s): %v", key, err)
	}
	return it
}

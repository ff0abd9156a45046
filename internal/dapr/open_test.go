package dapr_test

import (
	"bufio"
	"context"
	"errors"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/virtufin/websocketmanager/internal/dapr"
	"github.com/virtufin/websocketmanager/internal/daprtest"
	"github.com/virtufin/websocketmanager/internal/resilience"
	"github.com/virtufin/websocketmanager/internal/state"
)

// fakeMemcached replies to the version command, which is all Dapr's
// memcached state store sends when it starts. It gives the sidecar a state
// store without transactions or ETags.
func fakeMemcached(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("listen: %v", err)
	}
	var wg sync.WaitGroup
	t.Cleanup(func() {
		l.Close()
		wg.Wait()
	})
	wg.Go(func() {
		for {
			conn, err := l.Accept()
			if err != nil {
				return
			}
			wg.Go(func() {
				defer conn.Close()
				conn.SetDeadline(time.Now().Add(waitTimeout))
				r := bufio.NewReader(conn)
				for range 100 {
					line, err := r.ReadString('\n')
					if err != nil {
						return
					}
					if strings.HasPrefix(line, "version") {
						conn.Write([]byte("VERSION 1.6.0\r\n"))
					} else {
						conn.Write([]byte("ERROR\r\n"))
					}
				}
			})
		}
	})
	return l.Addr().String()
}

func TestOpenChecksComponents(t *testing.T) {
	t.Parallel()
	d := daprtest.Sidecar(t, daprtest.Options{Components: []daprtest.Component{
		{Name: "cache", Type: "state.memcached", Metadata: map[string]string{"hosts": fakeMemcached(t)}},
		memStore,
	}})

	tests := []struct {
		name string
		cfg  dapr.Config
		want []string // in the error message
	}{
		{"missing state store", dapr.Config{StateStore: "nosuchstore"},
			[]string{`state store "nosuchstore" is not loaded`, "statestore (state.redis)", "memstore (state.in-memory)"}},
		{"state store without transactions", dapr.Config{StateStore: "cache"},
			[]string{`state store "cache" (state.memcached) lacks TRANSACTIONAL, ETAG`}},
		{"pub/sub as state store", dapr.Config{StateStore: daprtest.PubSub},
			[]string{`component "pubsub" is a pubsub.redis, not a state store`}},
		{"missing pub/sub", dapr.Config{PubSub: "nosuchpubsub"},
			[]string{`pub/sub "nosuchpubsub" is not loaded`}},
		{"both wrong", dapr.Config{StateStore: "cache", PubSub: "memstore"},
			[]string{`"cache" (state.memcached) lacks`, `component "memstore" is a state.in-memory, not a pub/sub`}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			tt.cfg.Address = d.GRPCAddr
			logger, _ := newLogger(t)
			c, err := dapr.Open(waitCtx(t), tt.cfg, logger)
			if err == nil {
				c.Close()
				t.Fatalf("Open succeeded, want an error wrapping ErrComponent")
			}
			if !errors.Is(err, dapr.ErrComponent) {
				t.Errorf("Open = %v, want an error wrapping ErrComponent", err)
			}
			for _, w := range tt.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("Open error %q does not say %q", err, w)
				}
			}
		})
	}

	// Without a pub/sub, only the state store is checked.
	c := open(t, d, dapr.Config{StateStore: memStore.Name, NoPubSub: true})
	if c.PubSub() != nil || len(c.Pipelines()) != 1 {
		t.Errorf("client without a pub/sub has PubSub %v and %d pipelines, want nil and 1", c.PubSub(), len(c.Pipelines()))
	}
}

// TestOpenWaitsForSidecar starts Open before the sidecar, as a pod whose
// app container wins the race does.
func TestOpenWaitsForSidecar(t *testing.T) {
	t.Parallel()
	d := daprtest.Prepare(t, daprtest.Options{})
	logger, logs := newLogger(t)

	type result struct {
		c   *dapr.Client
		err error
	}
	done := make(chan result, 1)
	go func() {
		c, err := dapr.Open(waitCtx(t), dapr.Config{Address: d.GRPCAddr}, logger)
		done <- result{c, err}
	}()

	eventually(t, "Open to report two failed attempts", func() bool {
		return logs.count("waiting for the Dapr sidecar") >= 2
	})
	d.Start(t)

	select {
	case r := <-done:
		if r.err != nil {
			t.Fatalf("Open with a late sidecar = %v, want success", r.err)
		}
		defer r.c.Close()
		mustTransact(t, r.c.Store(), upsert("late/k", "v"))
		if got := mustGet(t, r.c.Store(), "late/k"); string(got.Value) != "v" {
			t.Errorf("late/k = %q, want v", got.Value)
		}
	case <-time.After(waitTimeout):
		t.Fatalf("Open did not return %v after the sidecar started", waitTimeout)
	}
	if logs.count(`"attempt":1`) != 1 || logs.count(`"attempt":2`) != 1 {
		t.Errorf("want one log line per attempt, numbered")
	}
}

func TestOpenGivesUp(t *testing.T) {
	t.Parallel()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close() // nothing listens here now

	logger, _ := newLogger(t)
	start := time.Now()
	_, err = dapr.Open(waitCtx(t), dapr.Config{Address: addr, StartupTimeout: time.Second}, logger)
	if !errors.Is(err, dapr.ErrSidecarUnreachable) || !strings.Contains(err.Error(), addr) {
		t.Errorf("Open with no sidecar = %v, want ErrSidecarUnreachable naming %s", err, addr)
	}
	if d := time.Since(start); d > 5*time.Second {
		t.Errorf("Open gave up after %v, want about the 1 s StartupTimeout", d)
	}

	ctx, cancel := context.WithCancel(t.Context())
	cancel()
	if _, err := dapr.Open(ctx, dapr.Config{Address: addr}, logger); !errors.Is(err, dapr.ErrSidecarUnreachable) {
		t.Errorf("Open with a canceled context = %v, want ErrSidecarUnreachable", err)
	}
}

// breakerChanges records OnBreakerChange calls.
type breakerChanges struct {
	mu  sync.Mutex
	got []string
}

func (b *breakerChanges) record(dep, from, to string) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.got = append(b.got, dep+":"+from+">"+to)
}

func (b *breakerChanges) has(s string) bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	for _, g := range b.got {
		if g == s {
			return true
		}
	}
	return false
}

// quickBreaker fails over in tens of milliseconds and stays open for the
// given time.
func quickBreaker(open time.Duration) resilience.Config {
	return resilience.Config{
		MaxAttempts:      2,
		BaseDelay:        10 * time.Millisecond,
		MaxDelay:         20 * time.Millisecond,
		AttemptTimeout:   500 * time.Millisecond,
		FailureThreshold: 3,
		OpenTimeout:      open,
	}
}

func TestBreakerOpensWhenSidecarDies(t *testing.T) {
	t.Parallel()
	d := daprtest.Sidecar(t, daprtest.Options{})
	changes := &breakerChanges{}
	c := open(t, d, dapr.Config{StateResilience: quickBreaker(time.Minute), OnBreakerChange: changes.record})
	s := c.Store()
	mustTransact(t, s, upsert("k", "v"))

	d.Kill(t)
	var err error
	for i := 0; i < 20 && !errors.Is(err, resilience.ErrOpen); i++ {
		_, err = s.Get(waitCtx(t), "k")
		if err == nil {
			t.Fatalf("Get %d after the sidecar was killed succeeded", i)
		}
	}
	if !errors.Is(err, resilience.ErrOpen) {
		t.Fatalf("Get after 20 failures = %v, want resilience.ErrOpen", err)
	}

	// Calls now fail at once, without reaching for the sidecar.
	before := s.Calls().Total()
	start := time.Now()
	_, err = s.Get(waitCtx(t), "k")
	if !errors.Is(err, resilience.ErrOpen) {
		t.Errorf("Get on an open breaker = %v, want resilience.ErrOpen", err)
	}
	if took := time.Since(start); took > 50*time.Millisecond {
		t.Errorf("Get on an open breaker took %v, want it to fail fast", took)
	}
	if got := s.Calls().Total() - before; got != 0 {
		t.Errorf("Get on an open breaker made %d calls, want 0", got)
	}
	name, st, _ := s.Pipeline().State()
	if name != dapr.DependencyStateStore || st != resilience.StateOpen {
		t.Errorf("Pipeline().State() = %s %s, want %s %s", name, st, dapr.DependencyStateStore, resilience.StateOpen)
	}
	if !changes.has("statestore:closed>open") {
		t.Errorf("OnBreakerChange calls = %v, want statestore:closed>open", changes.got)
	}
	// The pub/sub has its own breaker, untouched by the state store's.
	if _, st, _ := c.PubSub().Pipeline().State(); st != resilience.StateClosed {
		t.Errorf("pubsub breaker = %s, want closed", st)
	}
}

// TestRedisFreezeAndRecovery stops the Redis behind a live sidecar, so
// calls hang instead of failing, and then continues it. The breaker must
// open on the attempt timeouts and close again once Redis responds.
func TestRedisFreezeAndRecovery(t *testing.T) {
	t.Parallel()
	r := daprtest.RedisServer(t)
	d := daprtest.Sidecar(t, daprtest.Options{RedisAddr: r.Addr})
	changes := &breakerChanges{}
	s := open(t, d, dapr.Config{StateResilience: quickBreaker(300 * time.Millisecond), OnBreakerChange: changes.record}).Store()
	mustTransact(t, s, upsert("f/k", "v"))

	r.Pause(t)
	eventually(t, "the breaker to open while Redis is stopped", func() bool {
		_, err := s.Get(waitCtx(t), "f/k")
		return errors.Is(err, resilience.ErrOpen)
	})

	r.Resume(t)
	eventually(t, "reads to succeed after Redis continues", func() bool {
		it, err := s.Get(waitCtx(t), "f/k")
		return err == nil && string(it.Value) == "v"
	})
	if _, st, _ := s.Pipeline().State(); st != resilience.StateClosed {
		t.Errorf("breaker after recovery = %s, want closed", st)
	}
	for _, want := range []string{"statestore:closed>open", "statestore:open>half-open", "statestore:half-open>closed"} {
		if !changes.has(want) {
			t.Errorf("OnBreakerChange calls = %v, want %s among them", changes.got, want)
		}
	}
	mustTransact(t, s, state.Op{Kind: state.Delete, Key: "f/k"})
}

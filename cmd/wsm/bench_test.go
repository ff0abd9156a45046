package main

import (
	"bufio"
	"context"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/lxzan/gws"
	"github.com/rs/zerolog"

	"github.com/virtufin/websocketmanager/internal/daprtest"
)

// welcomeWaiter signals the first message a benchmark client receives.
type welcomeWaiter struct {
	gws.BuiltinEventHandler
	got    chan struct{}
	closed chan struct{}
}

func (h *welcomeWaiter) OnMessage(_ *gws.Conn, m *gws.Message) {
	m.Close()
	select {
	case h.got <- struct{}{}:
	default:
	}
}

func (h *welcomeWaiter) OnClose(*gws.Conn, error) { close(h.closed) }

// cycle connects, waits for the first message, closes with 1000 and waits
// for the server's close frame.
func cycle(b *testing.B, url string) {
	h := &welcomeWaiter{got: make(chan struct{}, 1), closed: make(chan struct{})}
	conn, _, err := gws.NewClient(h, &gws.ClientOption{Addr: url})
	if err != nil {
		b.Error(err)
		return
	}
	go conn.ReadLoop()
	select {
	case <-h.got:
	case <-time.After(10 * time.Second):
		b.Error("no first message within 10s")
	}
	conn.WriteClose(1000, nil)
	select {
	case <-h.closed:
	case <-time.After(10 * time.Second):
		b.Error("no close within 10s")
	}
}

// rawServer is the baseline: gws alone, which sends a first message after
// the upgrade and nothing else.
type rawServer struct{ gws.BuiltinEventHandler }

func (rawServer) OnOpen(c *gws.Conn) { c.WriteString(`{"type":"welcome"}`) }

func startRawGWS(b *testing.B) string {
	up := gws.NewUpgrader(rawServer{}, &gws.ServerOption{ReadMaxPayloadSize: 64 << 10})
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		c, err := up.Upgrade(w, r)
		if err != nil {
			return
		}
		go c.ReadLoop()
	})}
	go srv.Serve(ln)
	b.Cleanup(func() { srv.Close() })
	return "ws://" + ln.Addr().String() + "/ws"
}

// startInProcess runs serve on the embedded backend in this process.
func startInProcess(b *testing.B) string {
	cfg := defaultServeConfig()
	cfg.Listen = "127.0.0.1:0"
	cfg.DataDir = b.TempDir()
	cfg.AllowAnonymous = true
	cfg.InstanceID = "bench"
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		if err := serve(ctx, cfg, zerolog.Nop(), io.Discard); err != nil {
			b.Error(err)
		}
	}()
	b.Cleanup(func() { cancel(); <-done })

	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) {
		if base, err := readAddrFile(cfg.DataDir); err == nil {
			return "ws" + strings.TrimPrefix(base, "http") + "/ws"
		}
		time.Sleep(10 * time.Millisecond)
	}
	b.Fatal("service did not start within 10s")
	return ""
}

// startInProcessDapr runs serve on the Dapr backend in this process, with a
// sidecar of its own over the Redis that daprtest uses. It skips under
// -short, where no sidecar is started.
func startInProcessDapr(b *testing.B) string {
	if testing.Short() {
		b.Skip("runs a Dapr sidecar")
	}
	prefix := "wsmbench-" + randomSuffix(b)
	d := daprtest.Sidecar(b, daprtest.Options{Prefix: prefix})
	cfg := defaultServeConfig()
	cfg.Backend = "dapr"
	cfg.DaprAddress = d.GRPCAddr
	cfg.EventsTopic = prefix + ".system-events"
	cfg.Listen = "127.0.0.1:0"
	cfg.AllowAnonymous = true
	cfg.InstanceID = "bench-dapr"

	ctx, cancel := context.WithCancel(context.Background())
	out, stdout := io.Pipe()
	done := make(chan struct{})
	go func() {
		defer close(done)
		defer stdout.Close()
		if err := serve(ctx, cfg, zerolog.Nop(), stdout); err != nil {
			b.Error(err)
		}
	}()
	b.Cleanup(func() { cancel(); <-done })

	url := make(chan string, 1)
	go func() {
		sc := bufio.NewScanner(out)
		for sc.Scan() {
			if rest, ok := strings.CutPrefix(sc.Text(), "wsm serving: clients connect to ws://"); ok {
				url <- "ws://" + strings.TrimSuffix(strings.Fields(rest)[0], ",")
			}
		}
	}()
	select {
	case u := <-url:
		return u
	case <-time.After(30 * time.Second):
		b.Fatal("service on the Dapr backend did not start within 30s")
		return ""
	}
}

// BenchmarkConnectCycle measures connect, first message, close cycles with
// 32 concurrent clients: through all of wsm (auth, a durable connected event
// before the welcome, a durable disconnected event, views folded) on the
// embedded backend and on Dapr with Redis, and against gws alone as the
// baseline.
func BenchmarkConnectCycle(b *testing.B) {
	for _, tc := range []struct {
		name  string
		start func(*testing.B) string
	}{
		{"raw-gws", startRawGWS},
		{"wsm-embedded", startInProcess},
		{"wsm-dapr", startInProcessDapr},
	} {
		b.Run(tc.name, func(b *testing.B) {
			url := tc.start(b)
			b.ReportAllocs()
			b.SetParallelism(16) // 16 x GOMAXPROCS clients at once
			start := time.Now()
			b.RunParallel(func(pb *testing.PB) {
				for pb.Next() {
					cycle(b, url)
				}
			})
			b.ReportMetric(float64(b.N)/time.Since(start).Seconds(), "cycles/s")
		})
	}
}

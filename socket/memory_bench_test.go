package socket

import (
	"context"
	"net/http"
	"net/http/httptest"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/cloudevents/sdk-go/v2/event"
	"github.com/lxzan/gws"
	"github.com/rs/zerolog"
)

// discardAppender accepts every event and keeps none, so a memory
// benchmark measures the sockets alone.
type discardAppender struct{}

func (discardAppender) Append(context.Context, ...*event.Event) error { return nil }

type firstMessage struct {
	gws.BuiltinEventHandler
	got chan struct{}
}

func (h *firstMessage) OnMessage(_ *gws.Conn, m *gws.Message) {
	m.Close()
	select {
	case h.got <- struct{}{}:
	default:
	}
}

// bareServer is the baseline: gws alone with the same read limit, sending
// one text message after the upgrade.
type bareServer struct{ gws.BuiltinEventHandler }

func (bareServer) OnOpen(c *gws.Conn) { c.WriteString(`{"type":"welcome"}`) }

func liveBytes() uint64 {
	runtime.GC()
	runtime.GC()
	var m runtime.MemStats
	runtime.ReadMemStats(&m)
	return m.HeapInuse + m.StackInuse
}

// BenchmarkConnMemory reports the heap and stack held per idle connection
// by the socket server against gws alone, with 2,000 connections each.
// Clients run in the same process, so both figures include them; the
// difference between the two is the socket layer's own cost. The event
// appender keeps nothing, so the event log is not part of the figure.
func BenchmarkConnMemory(b *testing.B) {
	const n = 2000
	up := gws.NewUpgrader(bareServer{}, &gws.ServerOption{ReadMaxPayloadSize: DefaultReadLimit})
	bare := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if c, err := up.Upgrade(w, r); err == nil {
			go c.ReadLoop()
		}
	})
	auth, err := NewAuthenticator(AuthConfig{AllowAnonymous: true})
	if err != nil {
		b.Fatal(err)
	}
	srv, err := New(Config{InstanceID: "bench", Incarnation: "bench-1"}, auth, discardAppender{}, zerolog.Nop())
	if err != nil {
		b.Fatal(err)
	}

	for _, tc := range []struct {
		name string
		h    http.Handler
	}{{"gws", bare}, {"socket", srv}} {
		b.Run(tc.name, func(b *testing.B) {
			for range b.N {
				ts := httptest.NewServer(tc.h)
				url := "ws" + strings.TrimPrefix(ts.URL, "http") + "/ws"
				before := liveBytes()
				conns := make([]*gws.Conn, 0, n)
				for range n {
					h := &firstMessage{got: make(chan struct{}, 1)}
					c, _, err := gws.NewClient(h, &gws.ClientOption{Addr: url, ReadBufferSize: 1024})
					if err != nil {
						b.Fatal(err)
					}
					go c.ReadLoop()
					select {
					case <-h.got:
					case <-time.After(10 * time.Second):
						b.Fatal("no first message within 10s")
					}
					conns = append(conns, c)
				}
				after := liveBytes()
				b.ReportMetric(float64(after-before)/n/1024, "KiB/conn")
				for _, c := range conns {
					c.NetConn().Close()
				}
				ts.Close()
			}
		})
	}
}

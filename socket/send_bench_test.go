package socket

import (
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/lxzan/gws"
	"github.com/rs/zerolog"
)

// sendWindow bounds the frames sent but not yet received by the client in
// BenchmarkSend. It stays below DefaultSendQueue, so the socket server
// never closes the client as a slow consumer.
const sendWindow = 64

// BenchmarkSend measures writing text frames to one gws client over
// loopback. One op is one frame that the client has received. The sender
// keeps at most sendWindow frames in flight, and the timer stops only once
// the client has received every frame.
//
//   - raw-gws, the baseline: the sender calls gws's own Conn.WriteMessage
//     on the server side of a connection to a bare gws upgrader, which
//     writes on the caller's goroutine.
//   - socket: the sender calls Server.Send, which checks the payload, finds
//     the connection and queues the write on the connection's gws write
//     queue, as the backend API does for every message.
//
// The client runs in the same process, so both cases include its reads in
// ns/op and allocs/op.
func BenchmarkSend(b *testing.B) {
	for _, size := range []struct {
		name  string
		bytes int
	}{{"64B", 64}, {"1KiB", 1 << 10}} {
		payload := []byte(strings.Repeat("x", size.bytes))
		b.Run(size.name+"/raw-gws", func(b *testing.B) {
			benchSend(b, payload, dialRawGWS)
		})
		b.Run(size.name+"/socket", func(b *testing.B) {
			benchSend(b, payload, dialSocketServer)
		})
	}
}

// sendFunc writes one text frame to the benchmark's client.
type sendFunc func(payload []byte) error

// dialFunc starts a server and connects client to it. It returns a function
// that sends a frame to that client and one that stops the server.
type dialFunc func(b *testing.B, client *frameCounter) (send sendFunc, stop func())

func benchSend(b *testing.B, payload []byte, dial dialFunc) {
	client := &frameCounter{
		inFlight: make(chan struct{}, sendWindow),
		closed:   make(chan struct{}),
	}
	send, stop := dial(b, client)
	defer stop()

	b.ReportAllocs()
	b.SetBytes(int64(len(payload)))
	b.ResetTimer()
	for range b.N {
		select {
		case client.inFlight <- struct{}{}:
		case <-client.closed:
			b.Fatal("client connection closed during the benchmark")
		}
		if err := send(payload); err != nil {
			b.Fatal(err)
		}
	}
	// The channel has room for sendWindow tokens again only once the client
	// has received every frame sent.
	deadline := time.After(10 * time.Second)
	for range sendWindow {
		select {
		case client.inFlight <- struct{}{}:
		case <-client.closed:
			b.Fatal("client connection closed before it received every frame")
		case <-deadline:
			b.Fatalf("client did not receive the last %d frames within 10s", len(client.inFlight))
		}
	}
	b.StopTimer()
}

// frameCounter is the benchmark's client. Each message it receives takes
// one token out of inFlight. With skipFirst set, the first message, the
// socket server's welcome, closes first instead.
type frameCounter struct {
	gws.BuiltinEventHandler
	inFlight  chan struct{}
	closed    chan struct{}
	skipFirst bool
	first     chan struct{}
}

func (c *frameCounter) OnMessage(_ *gws.Conn, m *gws.Message) {
	m.Close()
	if c.skipFirst {
		c.skipFirst = false
		close(c.first)
		return
	}
	<-c.inFlight
}

func (c *frameCounter) OnClose(*gws.Conn, error) { close(c.closed) }

// connectClient dials url with a gws client that reports to handler and
// starts its read loop.
func connectClient(b *testing.B, url string, handler *frameCounter) *gws.Conn {
	b.Helper()
	conn, _, err := gws.NewClient(handler, &gws.ClientOption{Addr: url})
	if err != nil {
		b.Fatal(err)
	}
	go conn.ReadLoop()
	return conn
}

// rawOpen hands the server side of each connection to the benchmark.
type rawOpen struct {
	gws.BuiltinEventHandler
	conns chan *gws.Conn
}

func (h rawOpen) OnOpen(c *gws.Conn) { h.conns <- c }

func dialRawGWS(b *testing.B, client *frameCounter) (sendFunc, func()) {
	opened := rawOpen{conns: make(chan *gws.Conn, 1)}
	up := gws.NewUpgrader(opened, &gws.ServerOption{ReadMaxPayloadSize: DefaultReadLimit})
	ts := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if c, err := up.Upgrade(w, r); err == nil {
			go c.ReadLoop()
		}
	}))
	conn := connectClient(b, "ws"+strings.TrimPrefix(ts.URL, "http")+"/ws", client)
	stop := func() {
		conn.NetConn().Close()
		ts.Close()
	}

	var server *gws.Conn
	select {
	case server = <-opened.conns:
	case <-time.After(10 * time.Second):
		stop()
		b.Fatal("raw gws server did not open the connection within 10s")
	}
	send := func(payload []byte) error { return server.WriteMessage(gws.OpcodeText, payload) }
	return send, stop
}

func dialSocketServer(b *testing.B, client *frameCounter) (sendFunc, func()) {
	auth, err := NewAuthenticator(AuthConfig{AllowAnonymous: true})
	if err != nil {
		b.Fatal(err)
	}
	srv, err := New(Config{InstanceID: "bench", Incarnation: "bench-1"}, auth, discardAppender{}, zerolog.Nop())
	if err != nil {
		b.Fatal(err)
	}
	ts := httptest.NewServer(srv)
	client.skipFirst = true
	client.first = make(chan struct{})
	conn := connectClient(b, "ws"+strings.TrimPrefix(ts.URL, "http")+"/ws", client)
	stop := func() {
		conn.NetConn().Close()
		ts.Close()
	}

	// Send reaches a connection once its welcome is queued.
	select {
	case <-client.first:
	case <-time.After(10 * time.Second):
		stop()
		b.Fatal("no welcome message within 10s")
	}
	infos := srv.Connections()
	if len(infos) != 1 {
		stop()
		b.Fatalf("server has %d connections, want 1", len(infos))
	}
	id := infos[0].ID
	send := func(payload []byte) error { return srv.Send(id, false, payload) }
	return send, stop
}

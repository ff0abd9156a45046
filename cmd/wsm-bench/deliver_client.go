package main

import (
	"context"
	"encoding/json"
	"net"
	"net/http"
	"net/netip"
	"sync/atomic"
	"time"

	"github.com/lxzan/gws"
)

// deliverClient is a client of a deliver run. It records the ids its
// welcome message names, then counts the frames of the run.
type deliverClient struct {
	*client
	connectionID string
	instanceID   string

	// welcomed is set by the read goroutine once the welcome arrived. The
	// ids above are written before the welcome channel is signalled.
	welcomed bool

	// received counts text frames of the payload size, unexpected any
	// other frame after the welcome.
	received   atomic.Int64
	unexpected atomic.Int64
	// lastFrame is when the last counted frame arrived, in nanoseconds
	// since the run's epoch.
	lastFrame atomic.Int64

	epoch        time.Time
	payloadBytes int
	gate         *gate
}

type deliverHandler struct {
	gws.BuiltinEventHandler
	c *deliverClient
}

func (h *deliverHandler) OnMessage(_ *gws.Conn, m *gws.Message) {
	defer m.Close()
	c := h.c
	if !c.welcomed {
		var w struct {
			Type         string `json:"type"`
			ConnectionID string `json:"connectionId"`
			InstanceID   string `json:"instanceId"`
		}
		if json.Unmarshal(m.Bytes(), &w) != nil || w.Type != "welcome" {
			c.unexpected.Add(1)
			return
		}
		c.connectionID, c.instanceID, c.welcomed = w.ConnectionID, w.InstanceID, true
		c.welcome <- struct{}{}
		return
	}

	if m.Opcode != gws.OpcodeText || m.Data.Len() != c.payloadBytes {
		c.unexpected.Add(1)
		return
	}
	c.received.Add(1)
	c.lastFrame.Store(int64(time.Since(c.epoch)))
	c.gate.notify()
}

func (h *deliverHandler) OnClose(*gws.Conn, error) {
	if !h.c.closing.Load() {
		h.c.dropped.Store(true)
	}
	close(h.c.closed)
	h.c.gate.notify()
}

// openDeliverClient opens client i of a run and waits for its welcome. It
// dials as dialer.connect does, with a handler that counts frames and a
// read limit that fits the payload. It returns the time from the start of
// the TCP connect to the welcome.
func openDeliverClient(ctx context.Context, cfg *deliverConfig, i uint64, g *gate, epoch time.Time) (*deliverClient, time.Duration, error) {
	cc := &cfg.client
	netDialer := &net.Dialer{Timeout: cc.dialTimeout}
	if len(cc.sources) > 0 {
		src := cc.sources[i%uint64(len(cc.sources))]
		netDialer.LocalAddr = net.TCPAddrFromAddrPort(netip.AddrPortFrom(src, 0))
	}
	header := http.Header{}
	if !cc.anonymous {
		token, err := mintToken(cc.secret, userFor(i, cc.users))
		if err != nil {
			return nil, 0, err
		}
		header.Set("Authorization", "Bearer "+token)
	}

	c := &deliverClient{
		client: &client{welcome: make(chan struct{}, 1), closed: make(chan struct{})},
		epoch:  epoch, payloadBytes: cfg.payloadBytes, gate: g,
	}
	start := time.Now()
	conn, resp, err := gws.NewClient(&deliverHandler{c: c}, &gws.ClientOption{
		Addr:               cc.urls[0],
		RequestHeader:      header,
		HandshakeTimeout:   cc.dialTimeout,
		ReadBufferSize:     clientReadBuffer,
		ReadMaxPayloadSize: max(clientReadMaxPayload, cfg.payloadBytes),
		NewDialer:          func() (gws.Dialer, error) { return contextDialer{ctx: ctx, d: netDialer}, nil },
	})
	if err != nil {
		if resp != nil && resp.StatusCode != http.StatusSwitchingProtocols {
			err = &statusError{code: resp.StatusCode, err: err}
		}
		return nil, 0, err
	}
	c.conn = conn
	go conn.ReadLoop()

	if err := c.awaitWelcome(ctx, cc.welcomeTimeout); err != nil {
		return nil, 0, err
	}
	return c, time.Since(start), nil
}

// gate holds senders back while any client is window or more messages
// behind the requests sent, so the run measures what the server delivers
// and not how fast its send queues fill. It is safe for concurrent use.
type gate struct {
	clients []*deliverClient
	window  int64
	// failed counts requests that failed, which produce no frames.
	failed atomic.Int64
	// low is the fewest frames any client had received at the last scan.
	low      atomic.Int64
	waiters  atomic.Int32
	progress chan struct{}
}

func newGate(window int) *gate {
	return &gate{window: int64(window), progress: make(chan struct{}, 1)}
}

// gatePoll is how often a waiting sender scans the clients even without a
// signal, in case a signal went to another sender.
const gatePoll = 2 * time.Millisecond

// notify wakes a waiting sender. Clients call it for every frame, so it
// costs one atomic load while no sender waits.
func (g *gate) notify() {
	if g.waiters.Load() == 0 {
		return
	}
	select {
	case g.progress <- struct{}{}:
	default:
	}
}

// scan stores and returns the fewest frames any client has received.
func (g *gate) scan() int64 {
	low := int64(-1)
	for _, c := range g.clients {
		if n := c.received.Load(); low < 0 || n < low {
			low = n
		}
	}
	low = max(low, 0)
	g.low.Store(low)
	return low
}

// admits reports whether request n (counting from 0) may be sent: every
// request before it that has not failed may still be in flight, and no
// client may then be window or more frames behind.
func (g *gate) admits(n int64) bool { return n-g.failed.Load()-g.low.Load() < g.window }

// wait blocks until request n may be sent and returns true then. It
// returns false when stop ends, and false with stalled set when no client
// behind has received a frame for stall.
func (g *gate) wait(stop context.Context, n int64, stall time.Duration) (ok, stalled bool) {
	if g.admits(n) {
		return true, false
	}
	g.waiters.Add(1)
	defer g.waiters.Add(-1)
	poll := time.NewTicker(gatePoll)
	defer poll.Stop()

	lastLow, lastChange := g.low.Load(), time.Now()
	for {
		low := g.scan()
		if g.admits(n) {
			return true, false
		}
		now := time.Now()
		if low != lastLow {
			lastLow, lastChange = low, now
		}
		if now.Sub(lastChange) >= stall {
			return false, true
		}
		select {
		case <-g.progress:
		case <-poll.C:
		case <-stop.Done():
			return false, false
		}
	}
}

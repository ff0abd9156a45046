package socket

import (
	"errors"
	"fmt"
	"sync/atomic"
	"time"

	"github.com/lxzan/gws"
	"github.com/rs/zerolog"

	"github.com/virtufin/websocketmanager/schemas"
)

// Errors of Send, SendUser and Kick.
var (
	ErrNotFound        = errors.New("socket: connection not found")
	ErrClosing         = errors.New("socket: connection is closing")
	ErrPayloadTooLarge = errors.New("socket: payload exceeds the write limit")
	ErrInvalidUTF8     = errors.New("socket: text payload is not valid UTF-8")
	ErrUserIDMissing   = errors.New("socket: user id is empty")
)

// ConnInfo describes a connection. It does not change while the connection
// lives.
type ConnInfo struct {
	ID          string    `json:"connectionId"`
	UserID      string    `json:"userId"` // empty for an anonymous connection
	Incarnation string    `json:"incarnation"`
	RemoteAddr  string    `json:"remoteAddr"`
	UserAgent   string    `json:"userAgent"`
	Subprotocol string    `json:"subprotocol"`
	ConnectedAt time.Time `json:"connectedAt"`
}

// conn is the server's state of one WebSocket connection. It owns no
// goroutine of its own: gws runs the read loop, and writes run on the gws
// write queue, whose goroutine exists only while writes are pending.
type conn struct {
	srv    *Server
	socket *gws.Conn
	info   ConnInfo

	// pending counts messages queued or being written. SendQueue bounds it.
	pending atomic.Int64

	// pingQueued and pongQueued keep at most one ping and one pong in the
	// write queue, whatever the client sends.
	pingQueued  atomic.Bool
	pongQueued  atomic.Bool
	pongPayload atomic.Pointer[[]byte]

	// closing is the first reason recorded: by the server when it starts a
	// close, else by OnClose from the gws error. Once set, it never changes.
	closing atomic.Pointer[CloseReason]

	// lastFrame and lastPing are times on the server's monotonic clock
	// (Server.clock), so a step of the wall clock cannot close connections.
	lastFrame atomic.Int64
	lastPing  atomic.Int64
	keepalive atomic.Pointer[time.Timer]
	finished  atomic.Bool // OnClose has started

	// connected is set once the connected event is appended or queued
	// (ErrQueued), so a disconnected event is owed. Only the read goroutine
	// touches it.
	connected bool

	// Fields guarded by hub.mu.
	visible bool
	batches []*closeBatch
}

// logFields adds the connection's stable log keys.
func (c *conn) logFields(e *zerolog.Event) *zerolog.Event {
	return e.Str("conn_id", c.info.ID).Str("user_id", c.info.UserID).Str("incarnation", c.info.Incarnation)
}

// enqueue adds a message to the connection's write queue without blocking.
// A full queue closes the connection as a slow consumer.
func (c *conn) enqueue(opcode gws.Opcode, payload []byte) error {
	if r := c.closing.Load(); r != nil {
		return fmt.Errorf("%w: %w", ErrClosing, *r)
	}

	limit := int64(c.srv.cfg.SendQueue)
	if c.pending.Add(1) > limit {
		c.pending.Add(-1)
		closed := c.closeWith(SlowConsumer(fmt.Sprintf("send queue of %d messages is full", limit)))
		c.notifyDrop(closed)
		return fmt.Errorf("%w: %w", ErrClosing, *c.closing.Load())
	}

	c.socket.Async(func() { c.writeQueued(opcode, payload) })
	return nil
}

// writeQueued runs on the gws write queue. After a slow-consumer close it
// drops the message, so the close frame is not stuck behind the backlog.
// After any other server close it still writes, within the close deadline.
func (c *conn) writeQueued(opcode gws.Opcode, payload []byte) {
	defer c.pending.Add(-1)

	if r := c.closing.Load(); r != nil {
		if r.Reason == schemas.ReasonSlowConsumer {
			c.notifyDrop(false)
			return
		}
	} else {
		c.setWriteDeadline()
	}

	// On failure gws closes the socket itself, and OnClose reports why.
	if err := c.socket.WriteMessage(opcode, payload); err != nil {
		c.logFields(c.srv.log.Debug()).Err(err).Msg("write failed")
	}
}

// notifyDrop calls the OnSendDrop hook for one message not written.
func (c *conn) notifyDrop(closed bool) {
	if hook := c.srv.cfg.OnSendDrop; hook != nil {
		hook(c.info, closed)
	}
}

func (c *conn) setWriteDeadline() {
	_ = c.socket.NetConn().SetWriteDeadline(time.Now().Add(c.srv.cfg.WriteTimeout))
}

// touch records that a frame arrived from the client. Any frame proves the
// client alive.
func (c *conn) touch() { c.lastFrame.Store(int64(c.srv.clock())) }

// closeWith records r and starts closing the socket, without blocking the
// caller. It returns false when the connection already has a reason, which
// then stays. The close frame goes through the write queue, and the write
// deadline set here bounds it together with every write still ahead of it.
func (c *conn) closeWith(r CloseReason) bool {
	r.Detail = cleanDetail(r.Detail)
	if !c.closing.CompareAndSwap(nil, &r) {
		return false
	}

	c.setWriteDeadline()
	if !r.sendable() {
		_ = c.socket.NetConn().Close()
		return true
	}

	c.socket.Async(func() {
		// gws sends the frame, then closes the TCP connection, which ends
		// the read loop and so calls OnClose.
		_ = c.socket.WriteClose(r.Code, []byte(r.Reason))
	})
	return true
}

// settle fixes the final reason when the read loop ends: the reason the
// server recorded, else the one the gws error maps to.
func (c *conn) settle(err error) CloseReason {
	r := ReasonFromError(err)
	if c.closing.CompareAndSwap(nil, &r) {
		return r
	}
	return *c.closing.Load()
}

// startKeepalive arms the first liveness check, one PingInterval after the
// connection opened. Each check arms the next with a one-shot timer, so an
// idle connection needs no goroutine.
func (c *conn) startKeepalive() {
	// The silence a timeout measures starts now: the time spent appending
	// the connected event is the server's, not the client's.
	c.touch()
	c.lastPing.Store(int64(c.srv.clock()))
	c.armKeepalive(c.srv.cfg.PingInterval)
}

func (c *conn) armKeepalive(d time.Duration) {
	c.keepalive.Store(time.AfterFunc(d, c.checkAlive))
}

// checkAlive closes a connection that sent no frame for PingInterval plus
// PongTimeout, and otherwise queues a ping when one is due. The close sends
// no frame, since it could not reach a dead peer. A read deadline is not
// used because gws v1.8.9 replies to an expired one with a 1000 close frame.
func (c *conn) checkAlive() {
	if c.finished.Load() || c.closing.Load() != nil {
		return
	}

	now := c.srv.clock()
	lastFrame := time.Duration(c.lastFrame.Load())
	silent := now - lastFrame
	if silent >= c.srv.idleTimeout {
		c.closeWith(PingTimeout(fmt.Sprintf("no frame for %s", silent.Round(time.Millisecond))))
		return
	}

	lastPing := time.Duration(c.lastPing.Load())
	if now-lastPing >= c.srv.cfg.PingInterval {
		c.queuePing()
		lastPing = now
		c.lastPing.Store(int64(now))
	}

	untilPing := lastPing + c.srv.cfg.PingInterval - now
	untilTimeout := lastFrame + c.srv.idleTimeout - now
	c.armKeepalive(max(min(untilPing, untilTimeout), time.Millisecond))
}

func (c *conn) queuePing() {
	if c.pingQueued.CompareAndSwap(false, true) {
		c.socket.Async(c.writePing)
	}
}

func (c *conn) writePing() {
	defer c.pingQueued.Store(false)

	if c.closing.Load() != nil {
		return
	}
	c.setWriteDeadline()
	_ = c.socket.WritePing(nil)
}

// stopKeepalive stops the pending check. A check already running may arm
// one more timer, which finds the connection finished and stops.
func (c *conn) stopKeepalive() {
	if t := c.keepalive.Load(); t != nil {
		t.Stop()
	}
}

// queuePong queues the pong for a client ping. When pings arrive faster
// than pongs are written, only the most recent one gets a pong, as RFC 6455
// section 5.5.3 allows.
func (c *conn) queuePong(payload []byte) {
	c.pongPayload.Store(&payload)
	if c.pongQueued.CompareAndSwap(false, true) {
		c.socket.Async(c.writePong)
	}
}

func (c *conn) writePong() {
	c.pongQueued.Store(false)
	payload := c.pongPayload.Swap(nil)
	if payload == nil {
		return
	}

	if c.closing.Load() == nil {
		c.setWriteDeadline()
	}
	_ = c.socket.WritePong(*payload)
}

// sessionKey names the conn in the gws session storage.
const sessionKey = "wsm.conn"

// connSlot is a gws.SessionStorage holding only the conn, in place of the
// map gws allocates for each connection by default. The server stores the
// conn once, before the read loop starts, and only reads it afterwards.
type connSlot struct{ c *conn }

func (s *connSlot) Len() int {
	if s.c == nil {
		return 0
	}
	return 1
}

func (s *connSlot) Load(key string) (any, bool) {
	if key != sessionKey || s.c == nil {
		return nil, false
	}
	return s.c, true
}

func (s *connSlot) Delete(key string) {
	if key == sessionKey {
		s.c = nil
	}
}

func (s *connSlot) Store(key string, value any) {
	if c, ok := value.(*conn); ok && key == sessionKey {
		s.c = c
	}
}

func (s *connSlot) Range(f func(key string, value any) bool) {
	if s.c != nil {
		f(sessionKey, s.c)
	}
}

func connOf(socket *gws.Conn) *conn {
	return socket.Session().(*connSlot).c
}

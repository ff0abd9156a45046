package socket

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/cloudevents/sdk-go/v2/event"
	"github.com/lxzan/gws"
	"github.com/rs/zerolog"

	"github.com/virtufin/websocketmanager/eventlog"
	"github.com/virtufin/websocketmanager/schemas"
)

// handler receives the gws callbacks of every connection. gws calls them on
// the connection's read goroutine, one at a time.
type handler struct{ s *Server }

func (h handler) OnOpen(socket *gws.Conn) { h.s.open(connOf(socket)) }

func (h handler) OnClose(socket *gws.Conn, err error) { h.s.finish(connOf(socket), err) }

func (h handler) OnPing(socket *gws.Conn, payload []byte) {
	c := connOf(socket)
	c.touch()
	c.queuePong(payload)
}

func (h handler) OnPong(socket *gws.Conn, _ []byte) { connOf(socket).touch() }

func (h handler) OnMessage(socket *gws.Conn, msg *gws.Message) {
	defer msg.Close()

	c := connOf(socket)
	c.touch()
	c.logFields(h.s.log.Debug()).Int("bytes", msg.Data.Len()).Msg("message received")
	h.s.deliver(c, msg.Opcode == gws.OpcodeBinary, msg.Bytes())
}

// deliver calls the OnMessage hook. A panicking hook is logged and the
// connection keeps going, as net/http does for a panicking handler.
func (s *Server) deliver(c *conn, binary bool, payload []byte) {
	hook := s.cfg.OnMessage
	if hook == nil {
		return
	}

	defer func() {
		if p := recover(); p != nil {
			c.logFields(s.log.Error()).Interface("panic", p).Msg("OnMessage hook panicked")
		}
	}()
	hook(c.info, binary, payload)
}

type welcome struct {
	Type         string `json:"type"`
	ConnectionID string `json:"connectionId"`
	InstanceID   string `json:"instanceId"`
	Incarnation  string `json:"incarnation"`
}

// open appends the connected event, then sends the welcome message and makes
// the connection reachable. Until the event is stored, nothing is sent and
// Send cannot find the connection, so a client that sees the welcome is
// known to the event log.
//
// When the append fails the connection closes with 1011. If the appender
// rejected the event, the connection has no event at all: a disconnected
// event would describe a connection the views never saw. If the event is
// only queued (AppendTimeout ran out while the store was slow or down), it
// will be stored, so the connection owes a disconnected event too, which
// queues behind it. Either way the views end with no open connection that
// no socket holds.
func (s *Server) open(c *conn) {
	c.touch()
	if c.closing.Load() != nil {
		// A close-all reached the connection during the handshake.
		return
	}

	ev, err := schemas.NewConnected(schemas.Envelope{InstanceID: s.cfg.InstanceID, Time: c.info.ConnectedAt}, schemas.Connected{
		ConnectionID: c.info.ID,
		InstanceID:   s.cfg.InstanceID,
		Incarnation:  c.info.Incarnation,
		UserID:       c.info.UserID,
		RemoteAddr:   c.info.RemoteAddr,
		UserAgent:    c.info.UserAgent,
		Subprotocol:  c.info.Subprotocol,
		ConnectedAt:  c.info.ConnectedAt,
	})
	if err != nil {
		c.logFields(s.log.Error()).Err(err).Msg("build connected event failed")
		c.closeWith(InternalError("build connected event failed"))
		return
	}

	// A writer may still be setting the sequence of an event it reports as
	// queued, so the id is read before the append.
	eventID := ev.ID()
	if err := s.appendEvent(ev); err != nil {
		if errors.Is(err, eventlog.ErrQueued) {
			c.connected = true
			s.notifyConnect(c)
			c.logFields(s.log.Warn()).Err(err).Str("event_id", eventID).
				Msg("connected event still queued after the append timeout, closing with 1011; its disconnected event follows it")
			c.closeWith(InternalError("connected event not stored within the append timeout"))
			return
		}
		c.logFields(s.log.Error()).Err(err).Str("event_id", eventID).Msg("append connected event failed, closing with 1011")
		c.closeWith(InternalError("append connected event failed"))
		return
	}
	c.connected = true
	s.notifyConnect(c)

	// The welcome is queued and the connection made reachable in one step:
	// the welcome is the first message, and a client that has read it can
	// be reached by Send.
	s.hub.show(c, func() { s.sendWelcome(c) })
	c.startKeepalive()
	c.logFields(s.log.Info()).Str("event_id", eventID).Str("remote_addr", c.info.RemoteAddr).Msg("connection opened")
}

// notifyConnect calls the OnConnect hook, on the read goroutine.
func (s *Server) notifyConnect(c *conn) {
	if hook := s.cfg.OnConnect; hook != nil {
		hook(c.info)
	}
}

// sendWelcome queues the welcome message, the first message of every
// connection.
func (s *Server) sendWelcome(c *conn) {
	payload, err := json.Marshal(welcome{
		Type:         "welcome",
		ConnectionID: c.info.ID,
		InstanceID:   s.cfg.InstanceID,
		Incarnation:  c.info.Incarnation,
	})
	if err != nil {
		c.logFields(s.log.Error()).Err(err).Msg("encode welcome message failed")
		return
	}

	if err := c.enqueue(gws.OpcodeText, payload); err != nil {
		c.logFields(s.log.Debug()).Err(err).Msg("welcome message not sent")
	}
}

// appendEvent stores an event with a context of its own: the request that opened
// the connection is gone by the time most events are appended.
func (s *Server) appendEvent(ev *event.Event) error {
	ctx, cancel := context.WithTimeout(context.Background(), s.cfg.AppendTimeout)
	defer cancel()
	return s.app.Append(ctx, ev)
}

// finish runs once per connection, when the gws read loop ends however the
// connection ended. It appends the disconnected event if a connected event
// exists, then removes the connection.
func (s *Server) finish(c *conn, err error) {
	c.finished.Store(true)
	c.stopKeepalive()
	reason := c.settle(err)

	s.hub.hide(c)
	if c.connected {
		s.appendDisconnected(c, reason)
		if hook := s.cfg.OnDisconnect; hook != nil {
			hook(c.info, reason)
		}
	} else {
		c.logFields(s.log.Info()).Uint16("close_code", reason.Code).Str("reason", reason.Reason).Str("detail", reason.Detail).
			Msg("connection closed before its connected event was stored, so no disconnected event")
	}
	s.hub.remove(c)
}

// appendDisconnected appends the disconnected event and logs the close. An
// event still queued when AppendTimeout runs out is stored once the store
// takes it, and logged as queued. NOTE: an event the appender rejected (its
// queue full, or its writer closed) is logged with the event id but not
// retried, so the connection stays in the views until its incarnation is
// reclaimed.
func (s *Server) appendDisconnected(c *conn, reason CloseReason) {
	ev, err := schemas.NewDisconnected(schemas.Envelope{InstanceID: s.cfg.InstanceID, Traceparent: reason.Traceparent}, schemas.Disconnected{
		ConnectionID:   c.info.ID,
		InstanceID:     s.cfg.InstanceID,
		Incarnation:    c.info.Incarnation,
		UserID:         c.info.UserID,
		CloseCode:      int(reason.Code),
		Reason:         reason.Reason,
		Detail:         reason.Detail,
		DisconnectedAt: time.Now().UTC(),
	})
	if err != nil {
		c.logFields(s.log.Error()).Err(err).Uint16("close_code", reason.Code).Str("reason", reason.Reason).Msg("build disconnected event failed")
		return
	}

	eventID := ev.ID() // read before the append, as in open
	err = s.appendEvent(ev)
	var line *zerolog.Event
	switch {
	case err == nil:
		line = c.logFields(s.log.Info())
	case errors.Is(err, eventlog.ErrQueued):
		line = c.logFields(s.log.Warn()).Err(err)
	default:
		line = c.logFields(s.log.Error()).Err(err)
	}
	line.Str("event_id", eventID).Uint16("close_code", reason.Code).Str("reason", reason.Reason).Str("detail", reason.Detail).
		Msg(closedMessage(err))
}

func closedMessage(appendErr error) string {
	switch {
	case appendErr == nil:
		return "connection closed"
	case errors.Is(appendErr, eventlog.ErrQueued):
		return "connection closed; disconnected event queued until the store takes it"
	}
	return "connection closed, but its disconnected event was not stored"
}

// Shutdown stops accepting upgrades (later ones get 503), closes every
// connection with reason, and waits until each one's disconnected event is
// appended, or queued as Appender describes, or ctx ends. It is idempotent: a second call closes nothing new
// and waits for the connections still closing. After Shutdown the Server
// accepts no upgrades again.
func (s *Server) Shutdown(ctx context.Context, reason CloseReason) error {
	if err := reason.Validate(); err != nil {
		return fmt.Errorf("shutdown: %w", err)
	}

	batch, targets := s.hub.track(
		func(h *hub) { h.draining = true },
		func(*conn) bool { return true },
	)
	s.log.Info().Int("connections", len(targets)).Uint16("close_code", reason.Code).Str("reason", reason.Reason).Msg("shutting down")
	return s.closeAndWait(ctx, "shutdown", batch, targets, reason)
}

// CloseAll closes every connection that exists at the call with reason and
// waits like Shutdown, but keeps accepting upgrades during and after it.
func (s *Server) CloseAll(ctx context.Context, reason CloseReason) error {
	if err := reason.Validate(); err != nil {
		return fmt.Errorf("close all: %w", err)
	}

	batch, targets := s.hub.track(func(*hub) {}, func(*conn) bool { return true })
	s.log.Info().Int("connections", len(targets)).Uint16("close_code", reason.Code).Str("reason", reason.Reason).Msg("closing all connections")
	return s.closeAndWait(ctx, "close all", batch, targets, reason)
}

// Fence switches new connections to incarnation, then closes every
// connection of an older incarnation with 1012 (fenced) and waits like
// Shutdown. Upgrades continue throughout: each gets the new incarnation, so
// no connection of the reclaimed incarnation outlives the call.
func (s *Server) Fence(ctx context.Context, incarnation string) error {
	if incarnation == "" {
		return fmt.Errorf("fence: %w: new incarnation is empty", ErrInvalidConfig)
	}

	var previous string
	batch, targets := s.hub.track(
		func(h *hub) { previous, h.incarnation = h.incarnation, incarnation },
		func(c *conn) bool { return c.info.Incarnation != incarnation },
	)
	reason := Fenced(fmt.Sprintf("incarnation %s was reclaimed; now %s", previous, incarnation))
	s.log.Info().Int("connections", len(targets)).Str("incarnation", incarnation).Str("previous_incarnation", previous).Msg("fencing connections")
	return s.closeAndWait(ctx, "fence", batch, targets, reason)
}

func (s *Server) closeAndWait(ctx context.Context, op string, batch *closeBatch, targets []*conn, reason CloseReason) error {
	for _, c := range targets {
		c.closeWith(reason)
	}

	select {
	case <-batch.done:
		return nil
	case <-ctx.Done():
		left := batch.remaining.Load()
		s.log.Warn().Int64("connections", left).Str("reason", reason.Reason).Msg(op + " stopped waiting: context ended")
		return fmt.Errorf("%s: %d connections still closing: %w", op, left, ctx.Err())
	}
}

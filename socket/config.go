package socket

import (
	"errors"
	"fmt"
	"time"
)

// ErrInvalidConfig is wrapped by every problem Config.Validate and
// NewAuthenticator report.
var ErrInvalidConfig = errors.New("socket: invalid config")

// Defaults applied to the zero fields of a Config.
const (
	// DefaultPingInterval stays well below nginx's proxy_read_timeout, 60 s
	// by default, after which nginx closes a proxied WebSocket that
	// transmits nothing. Idle connections keep their path open.
	DefaultPingInterval = 20 * time.Second

	// DefaultPongTimeout gives a client on a slow mobile link time to
	// reply to a ping before the connection counts as dead.
	DefaultPongTimeout = 10 * time.Second

	// DefaultReadLimit bounds the memory one client message can take. The
	// server reads control messages from clients, not bulk data.
	DefaultReadLimit = 64 << 10

	// DefaultWriteLimit bounds one outgoing message, and with SendQueue the
	// memory a stalled client can pin. A larger payload belongs on a
	// channel other than a push socket.
	DefaultWriteLimit = 1 << 20

	// DefaultSendQueue absorbs a burst of 256 messages for a client that
	// reads slowly for a moment, without letting one stalled client pin
	// unbounded memory.
	DefaultSendQueue = 256

	// DefaultMaxConnections is a per-instance cap that keeps memory and
	// file descriptors bounded. The fleet scales out past it with more
	// instances.
	DefaultMaxConnections = 50_000

	// DefaultWriteTimeout bounds one write. A client whose TCP window stays
	// shut this long is a slow consumer, and the write must not hold the
	// connection's writer any longer.
	DefaultWriteTimeout = 10 * time.Second

	// DefaultAppendTimeout bounds each append of a lifecycle event. Appends
	// are group-committed within milliseconds. The bound covers a store
	// failover without holding a connection's goroutine forever.
	DefaultAppendTimeout = 5 * time.Second

	// DefaultHandshakeTimeout bounds writing the 101 response.
	DefaultHandshakeTimeout = 5 * time.Second
)

// Config configures a Server. A zero duration, size or code means the
// default, and a negative one is invalid.
type Config struct {
	// InstanceID names this instance in every event. Required.
	InstanceID string

	// Incarnation names this run of the instance. Required. Fence replaces
	// it for connections accepted later.
	Incarnation string

	// PingInterval is how often the server pings each connection.
	PingInterval time.Duration

	// PongTimeout is how much longer than PingInterval the server waits
	// for any frame before it closes the connection as ping_timeout.
	PongTimeout time.Duration

	// ReadLimit is the largest message a client may send, in bytes. A
	// larger one closes the connection with 1009.
	ReadLimit int

	// WriteLimit is the largest payload Send accepts, in bytes.
	WriteLimit int

	// SendQueue is how many messages may wait to be written to one
	// connection. A Send that finds the queue full closes the connection
	// with 1008 (slow_consumer).
	SendQueue int

	// MaxConnections caps the connections of this instance. An upgrade over
	// the cap gets HTTP 503 and no event.
	MaxConnections int

	// WriteTimeout bounds each write to a socket.
	WriteTimeout time.Duration

	// AppendTimeout bounds each Appender.Append call.
	AppendTimeout time.Duration

	// HandshakeTimeout bounds writing the upgrade response.
	HandshakeTimeout time.Duration

	// KickCode is the close code Kick sends, within 4000-4999.
	KickCode uint16

	// Subprotocols, when set, are offered in the handshake, and a client
	// that offers none of them gets HTTP 400. Nil accepts every client
	// with no subprotocol.
	Subprotocols []string

	// OnMessage, when set, receives each text or binary message of a
	// client. It runs on the connection's read goroutine, so it must return
	// quickly. The payload is only valid during the call: copy it to keep it.
	OnMessage func(info ConnInfo, binary bool, payload []byte)

	// OnConnect, when set, is called once per connection whose connected
	// event was appended, or queued as eventlog.ErrQueued reports. Every
	// such connection later gets exactly one OnDisconnect. Nil ignores it.
	OnConnect func(info ConnInfo)

	// OnDisconnect, when set, is called once per connection that OnConnect
	// saw, after its disconnected event was appended or failed, with the
	// reason that event carries. Nil ignores it.
	OnDisconnect func(info ConnInfo, reason CloseReason)

	// OnSendDrop, when set, is called for each message the send queue
	// does not write: the one a full queue rejects, with closed true when
	// that rejection started the slow-consumer close, and each one queued
	// before that close and discarded after it, with closed false. Nil
	// ignores it.
	OnSendDrop func(info ConnInfo, closed bool)
}

// withDefaults returns c with every zero field set to its default.
func (c Config) withDefaults() Config {
	c.PingInterval = defaultIfZero(c.PingInterval, DefaultPingInterval)
	c.PongTimeout = defaultIfZero(c.PongTimeout, DefaultPongTimeout)
	c.ReadLimit = defaultIfZero(c.ReadLimit, DefaultReadLimit)
	c.WriteLimit = defaultIfZero(c.WriteLimit, DefaultWriteLimit)
	c.SendQueue = defaultIfZero(c.SendQueue, DefaultSendQueue)
	c.MaxConnections = defaultIfZero(c.MaxConnections, DefaultMaxConnections)
	c.WriteTimeout = defaultIfZero(c.WriteTimeout, DefaultWriteTimeout)
	c.AppendTimeout = defaultIfZero(c.AppendTimeout, DefaultAppendTimeout)
	c.HandshakeTimeout = defaultIfZero(c.HandshakeTimeout, DefaultHandshakeTimeout)
	c.KickCode = defaultIfZero(c.KickCode, DefaultKickCode)
	return c
}

func defaultIfZero[T comparable](value, fallback T) T {
	var zero T
	if value == zero {
		return fallback
	}
	return value
}

// Validate reports every problem of c at once, after the defaults are
// applied. Each problem wraps ErrInvalidConfig.
func (c Config) Validate() error {
	c = c.withDefaults()

	var problems []error
	problem := func(format string, args ...any) {
		problems = append(problems, fmt.Errorf("%w: "+format, append([]any{ErrInvalidConfig}, args...)...))
	}

	if c.InstanceID == "" {
		problem("InstanceID is missing")
	}
	if c.Incarnation == "" {
		problem("Incarnation is missing")
	}
	checkPositive(problem, "PingInterval", c.PingInterval)
	checkPositive(problem, "PongTimeout", c.PongTimeout)
	checkPositive(problem, "WriteTimeout", c.WriteTimeout)
	checkPositive(problem, "AppendTimeout", c.AppendTimeout)
	checkPositive(problem, "HandshakeTimeout", c.HandshakeTimeout)
	checkPositive(problem, "ReadLimit", c.ReadLimit)
	checkPositive(problem, "WriteLimit", c.WriteLimit)
	checkPositive(problem, "SendQueue", c.SendQueue)
	checkPositive(problem, "MaxConnections", c.MaxConnections)

	if c.KickCode < 4000 || c.KickCode > 4999 {
		problem("KickCode %d is outside the private range 4000-4999", c.KickCode)
	}
	return errors.Join(problems...)
}

func checkPositive[T int | time.Duration](problem func(string, ...any), name string, value T) {
	if value <= 0 {
		problem("%s is %v, want a positive value or zero for the default", name, value)
	}
}

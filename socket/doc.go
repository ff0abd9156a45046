// Package socket is the WebSocket side of wsm: it authenticates and
// upgrades GET /ws requests with gws, keeps each connection alive with
// pings, queues outgoing messages, and closes connections with a typed
// CloseReason. Each connection gets one connected event and, however it
// ends, one disconnected event, both appended through an Appender. The
// package never writes views.
//
// # Lifecycle
//
// An upgrade is authenticated first (401 on failure) and admitted against
// MaxConnections (503 when full or draining). Neither appends an event. The
// connected event is appended before anything is sent: only after Append
// returns nil does the client get its welcome message and Send, SendUser,
// Kick and Lookup reach the connection. If that Append fails, the
// connection closes with 1011. It then has no events at all when the
// appender rejected the event, and both a connected and a disconnected
// event (internal_error, 1011) when the event was only queued, as
// eventlog.ErrQueued reports, because the store was slow or down.
//
// The disconnected event is appended when the gws read loop ends. Its
// reason is the one the server recorded when it started the close
// (shutdown, kick, slow consumer, fenced), else the one ReasonFromError
// derives from the error gws reports. That value is also the close frame's
// code and text and the log line's close_code and reason.
//
// # Liveness and send queues
//
// The server pings every PingInterval from a one-shot timer per connection,
// so idle connections cost no goroutine, and any frame from the client
// counts as a sign of life. A connection silent for PingInterval plus
// PongTimeout is closed as ping_timeout with code 1006 and no close frame,
// since no frame can reach a dead peer.
//
// Writes go through the gws write queue of each connection, whose goroutine
// exists only while writes are pending. An atomic counter bounds the
// messages queued or being written to SendQueue. A Send that finds the
// queue full closes the connection with 1008 (slow_consumer) at once,
// rather than letting one stalled client hold memory or delay others. A
// write that exceeds WriteTimeout also ends the connection as a slow
// consumer, recorded with 1006, because its close frame cannot be written
// either.
//
// # Concurrency
//
// Every exported method of Server and Authenticator is safe for concurrent
// use. Send, SendUser, SendAll and Kick never block on a socket: they queue
// work and return. Shutdown, CloseAll and Fence block until the
// disconnected events are appended, or queued behind a store outage, or
// their context ends.
//
// Config.OnMessage runs on the connection's read goroutine, so it must not
// block: while it runs, that connection reads no frames, including pongs.
// The Appender is called on the read goroutine too, and an Append that
// hangs holds that one connection until AppendTimeout. OnConnect and
// OnDisconnect run on the read goroutine as well, and OnSendDrop on the
// goroutine that called Send or on the connection's write queue, so none
// of the three may block.
//
// # Not promised
//
// Send returns once the message is queued, not once the client has read
// it, and a message queued when the connection closes is lost. Messages
// queued before a slow-consumer close are dropped. Before any other server
// close, they are flushed within WriteTimeout ahead of the close frame.
// An event the appender still holds queued after AppendTimeout is logged
// as queued and stored once the store recovers. An event the appender
// rejects is logged with conn_id and event_id, not retried.
package socket

package socket

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"time"
	"unicode/utf8"

	"github.com/cloudevents/sdk-go/v2/event"
	"github.com/google/uuid"
	"github.com/lxzan/gws"
	"github.com/rs/zerolog"
)

// Appender appends events durably, in the order of the calls. Append
// returns nil only once every event is stored. An error matching
// eventlog.ErrQueued means that the events are not stored yet but will be,
// after every event appended before them. An eventlog.Writer returns it
// while its store is down. The server then still appends the disconnected
// event that such a connected event calls for. Any other error means "not
// stored".
type Appender interface {
	Append(ctx context.Context, events ...*event.Event) error
}

// minGWSWriteLimit keeps gws's own write limit above the welcome message
// whatever WriteLimit is: gws closes a connection that writes over its
// limit, while Send checks WriteLimit and returns an error.
const minGWSWriteLimit = 4 << 10

// Schema limits on connected event fields that come from the client.
const (
	maxRemoteAddrBytes = 256
	maxUserAgentBytes  = 1024
)

// Server accepts WebSocket upgrades on GET /ws and serves the connections.
// It implements http.Handler. All exported methods are safe for concurrent
// use.
type Server struct {
	cfg         Config
	idleTimeout time.Duration // PingInterval + PongTimeout
	epoch       time.Time     // start of clock, with a monotonic reading
	auth        *Authenticator
	app         Appender
	log         zerolog.Logger
	warnLog     zerolog.Logger // sampled, for rejections that can repeat quickly
	upgrader    *gws.Upgrader
	hub         *hub
}

// New checks cfg, applies its defaults and builds a Server. The Server
// appends lifecycle events to app and never writes views.
func New(cfg Config, auth *Authenticator, app Appender, log zerolog.Logger) (*Server, error) {
	var problems []error
	if err := cfg.Validate(); err != nil {
		problems = append(problems, err)
	}
	if auth == nil {
		problems = append(problems, fmt.Errorf("%w: authenticator is nil", ErrInvalidConfig))
	}
	if app == nil {
		problems = append(problems, fmt.Errorf("%w: appender is nil", ErrInvalidConfig))
	}
	if err := errors.Join(problems...); err != nil {
		return nil, err
	}

	cfg = cfg.withDefaults()
	log = log.With().Str("instance_id", cfg.InstanceID).Logger()
	s := &Server{
		cfg:         cfg,
		idleTimeout: cfg.PingInterval + cfg.PongTimeout,
		epoch:       time.Now(),
		auth:        auth,
		app:         app,
		log:         log,
		warnLog:     log.Sample(&zerolog.BurstSampler{Burst: 5, Period: time.Second}),
		hub:         newHub(cfg.MaxConnections, cfg.Incarnation),
	}
	s.upgrader = gws.NewUpgrader(handler{s: s}, &gws.ServerOption{
		ReadMaxPayloadSize:  cfg.ReadLimit,
		WriteMaxPayloadSize: max(cfg.WriteLimit, minGWSWriteLimit),
		CheckUtf8Enabled:    true,
		HandshakeTimeout:    cfg.HandshakeTimeout,
		SubProtocols:        cfg.Subprotocols,
		NewSession:          func() gws.SessionStorage { return &connSlot{} },
		Logger:              gwsLogger{log: log},
	})
	return s, nil
}

// ServeHTTP authenticates the request, then upgrades it. A failed
// authentication gets 401, a full or draining server 503, and a request
// that is not a valid WebSocket handshake gets 400, from gws once the
// connection is hijacked. None of them appends an event.
func (s *Server) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	userID, err := s.auth.Authenticate(r)
	if err != nil {
		s.rejectUnauthorized(w, r, err)
		return
	}

	// gws needs the raw connection, which HTTP/2 does not hand over.
	if _, ok := w.(http.Hijacker); !ok {
		writeJSONError(w, http.StatusBadRequest, errorBody{Error: "bad_request", Message: "socket: WebSocket upgrade requires HTTP/1.1"})
		s.log.Debug().Str("proto", r.Proto).Str("remote_addr", r.RemoteAddr).Msg("upgrade rejected: connection cannot be hijacked")
		return
	}

	if err := s.hub.reserve(); err != nil {
		s.rejectUnavailable(w, r, err)
		return
	}

	socket, err := s.upgrader.Upgrade(w, r)
	if err != nil {
		s.hub.release()
		s.log.Debug().Err(err).Str("remote_addr", r.RemoteAddr).Msg("upgrade failed")
		return
	}

	c := s.newConn(socket, r, userID)
	if err := s.hub.register(c); err != nil {
		// Draining started during the handshake. No event exists yet, so
		// closing the socket is all that is left to do.
		s.hub.release()
		_ = socket.NetConn().SetWriteDeadline(time.Now().Add(s.cfg.WriteTimeout))
		_ = socket.WriteClose(CodeGoingAway, []byte(ServerShutdown("").Reason))
		return
	}

	// gws advises running the read loop on its own goroutine, so the HTTP
	// server's request state can be freed.
	go socket.ReadLoop()
}

func (s *Server) newConn(socket *gws.Conn, r *http.Request, userID string) *conn {
	c := &conn{
		srv:    s,
		socket: socket,
		info: ConnInfo{
			ID:          uuid.Must(uuid.NewV7()).String(),
			UserID:      userID,
			RemoteAddr:  truncateUTF8(r.RemoteAddr, maxRemoteAddrBytes),
			UserAgent:   truncateUTF8(r.UserAgent(), maxUserAgentBytes),
			Subprotocol: socket.SubProtocol(),
			ConnectedAt: time.Now().UTC(),
		},
	}
	socket.Session().Store(sessionKey, c)
	return c
}

type errorBody struct {
	Error   string `json:"error"`
	Message string `json:"message"`
}

func writeJSONError(w http.ResponseWriter, status int, body errorBody) {
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(body)
}

// rejectUnauthorized writes 401 with the challenge of RFC 6750 section 3.
// The error text never contains the token.
func (s *Server) rejectUnauthorized(w http.ResponseWriter, r *http.Request, err error) {
	challenge := `Bearer realm="wsm"`
	if !errors.Is(err, ErrTokenMissing) {
		challenge += `, error="invalid_token"`
	}
	w.Header().Set("WWW-Authenticate", challenge)
	writeJSONError(w, http.StatusUnauthorized, errorBody{Error: "unauthorized", Message: err.Error()})

	s.log.Debug().Err(err).Str("remote_addr", r.RemoteAddr).Msg("upgrade rejected: unauthorized")
}

func (s *Server) rejectUnavailable(w http.ResponseWriter, r *http.Request, err error) {
	writeJSONError(w, http.StatusServiceUnavailable, errorBody{Error: "unavailable", Message: err.Error()})

	if errors.Is(err, errTooManyConnections) {
		s.warnLog.Warn().Int("max_connections", s.cfg.MaxConnections).Str("remote_addr", r.RemoteAddr).Msg("upgrade rejected: connection limit reached")
		return
	}
	s.log.Debug().Err(err).Str("remote_addr", r.RemoteAddr).Msg("upgrade rejected")
}

// Send queues a message for one connection and returns without waiting for
// the write. The caller must not modify payload afterwards. When the
// connection's queue is full, Send closes it as a slow consumer and returns
// an error matching ErrClosing and the SlowConsumer reason.
func (s *Server) Send(connID string, binary bool, payload []byte) error {
	if err := s.checkPayload(binary, payload); err != nil {
		return fmt.Errorf("send to %s: %w", connID, err)
	}

	c, ok := s.hub.lookup(connID)
	if !ok {
		return fmt.Errorf("send to %s: %w", connID, ErrNotFound)
	}
	if err := c.enqueue(opcode(binary), payload); err != nil {
		return fmt.Errorf("send to %s: %w", connID, err)
	}
	s.log.Debug().Str("conn_id", connID).Int("bytes", len(payload)).Msg("message queued")
	return nil
}

// SendUser queues a message for every connection of a user and returns how
// many accepted it. A user without connections gets 0 and no error. The
// error joins the failures of single connections.
func (s *Server) SendUser(userID string, binary bool, payload []byte) (delivered int, err error) {
	if userID == "" {
		return 0, ErrUserIDMissing
	}
	if err := s.checkPayload(binary, payload); err != nil {
		return 0, fmt.Errorf("send to user %s: %w", userID, err)
	}

	var problems []error
	for _, c := range s.hub.userConns(userID) {
		if err := c.enqueue(opcode(binary), payload); err != nil {
			problems = append(problems, fmt.Errorf("send to %s: %w", c.info.ID, err))
			continue
		}
		delivered++
	}
	return delivered, errors.Join(problems...)
}

// SendAll queues a message for every connection Lookup can find and
// returns how many accepted it and how many were closing, among them any
// that SendAll itself closed as slow consumers. Only an invalid payload
// returns an error.
func (s *Server) SendAll(binary bool, payload []byte) (delivered, closing int, err error) {
	if err := s.checkPayload(binary, payload); err != nil {
		return 0, 0, fmt.Errorf("send to all: %w", err)
	}
	for _, c := range s.hub.visibleConns() {
		if err := c.enqueue(opcode(binary), payload); err != nil {
			closing++
			continue
		}
		delivered++
	}
	if closing > 0 {
		s.log.Debug().Int("delivered", delivered).Int("closing", closing).Msg("message queued for all but closing connections")
	}
	return delivered, closing, nil
}

func (s *Server) checkPayload(binary bool, payload []byte) error {
	if len(payload) > s.cfg.WriteLimit {
		return fmt.Errorf("%w: %d bytes, limit %d", ErrPayloadTooLarge, len(payload), s.cfg.WriteLimit)
	}
	if !binary && !utf8.Valid(payload) {
		return ErrInvalidUTF8
	}
	return nil
}

func opcode(binary bool) gws.Opcode {
	if binary {
		return gws.OpcodeBinary
	}
	return gws.OpcodeText
}

// Kick closes a connection with Config.KickCode and the kicked reason. It
// returns once the close has started; the disconnected event follows. A
// connection already closing keeps its first reason, and Kick returns an
// error matching ErrClosing and that reason.
func (s *Server) Kick(connID string, detail string) error {
	c, ok := s.hub.lookup(connID)
	if !ok {
		return fmt.Errorf("kick %s: %w", connID, ErrNotFound)
	}
	if !c.closeWith(Kicked(s.cfg.KickCode, detail)) {
		return fmt.Errorf("kick %s: %w: %w", connID, ErrClosing, *c.closing.Load())
	}
	return nil
}

// Lookup returns a connection whose connected event is appended and whose
// close has not finished.
func (s *Server) Lookup(connID string) (ConnInfo, bool) {
	c, ok := s.hub.lookup(connID)
	if !ok {
		return ConnInfo{}, false
	}
	return c.info, true
}

// Count returns how many connections Lookup can find.
func (s *Server) Count() int { return s.hub.count() }

// Connections returns the connections Lookup can find, in no order.
func (s *Server) Connections() []ConnInfo { return s.hub.infos() }

// Incarnation returns the incarnation new connections get.
func (s *Server) Incarnation() string { return s.hub.currentIncarnation() }

// clock returns the time since the Server was built, from the monotonic
// clock.
func (s *Server) clock() time.Duration { return time.Since(s.epoch) }

// gwsLogger routes the few errors gws logs itself into zerolog.
type gwsLogger struct{ log zerolog.Logger }

func (l gwsLogger) Error(v ...any) { l.log.Error().Str("component", "gws").Msg(fmt.Sprint(v...)) }

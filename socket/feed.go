package socket

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"strings"
	"sync"
	"time"

	"github.com/google/uuid"
	"github.com/lxzan/gws"
	"github.com/rs/zerolog"

	"github.com/virtufin/websocketmanager/eventlog"
)

// FeedSubprotocol is the WebSocket subprotocol of the event feed: the
// CloudEvents JSON event format, one event per text message, as the
// CloudEvents WebSockets protocol binding (version 1.0.2) defines it. The
// binding also names cloudevents.avro and cloudevents.proto, which the
// feed does not speak.
const FeedSubprotocol = "cloudevents.json"

// CursorExtension is the CloudEvents extension attribute that each feed
// frame adds to its event: the cursor to resume from after that event, an
// opaque eventlog.Cursor string. A subscriber that reconnects with
// ?cursor=<value> receives every event after it, on any instance of the
// fleet, since a cursor is a position in the shared log.
const CursorExtension = "wsmcursor"

// Defaults applied to the zero fields of a FeedConfig.
const (
	// DefaultFeedBuffer is how many frames may wait to be written to one
	// subscriber. Frames are about 1 KiB, so a full buffer holds about
	// 1 MiB, and 2 MiB with 1 KiB user agents. A live subscriber that
	// falls this far behind is closed rather than buffered without bound.
	DefaultFeedBuffer = 1024

	// DefaultFeedSlowTimeout is how long a full buffer may wait for the
	// subscriber. A reading subscriber drains a full buffer of 1024 small
	// frames in well under a second, while a stalled one is closed before
	// its blocked write runs into DefaultWriteTimeout, so it learns why.
	DefaultFeedSlowTimeout = 5 * time.Second

	// DefaultMaxFeedSubscribers caps the subscribers of one instance.
	// Each one follows the log on its own, and on Dapr that is a state
	// store read every poll interval, 200 ms by default. The feed serves
	// backend services and operators, not end users.
	DefaultMaxFeedSubscribers = 256
)

// feedHeadsTimeout bounds reading the stream heads when a subscriber
// connects without a cursor. When the store does not respond within it,
// the client gets a 503 to retry, instead of an upgrade that then delivers
// nothing.
const feedHeadsTimeout = 5 * time.Second

// feedReadLimit bounds a message from a subscriber. The feed reads
// nothing but control frames, whose payload RFC 6455 caps at 125 bytes.
const feedReadLimit = 4 << 10

// Errors of the event feed that reject a subscription with 400 or 503.
var (
	ErrSubprotocolMissing = errors.New("socket: the event feed needs the WebSocket subprotocol " + FeedSubprotocol)
	ErrFeedFull           = errors.New("socket: too many event feed subscribers on this instance")
	ErrFeedDraining       = errors.New("socket: event feed is shutting down")
	ErrFeedLogUnavailable = errors.New("socket: event log unavailable")
)

// FeedLog is the part of eventlog.Log the feed reads.
type FeedLog interface {
	Streams(ctx context.Context) ([]eventlog.StreamInfo, error)
	Follow(ctx context.Context, from eventlog.Cursor, fn func(eventlog.Record) error) (eventlog.Cursor, error)
}

// FeedConfig configures a Feed. A zero duration or size means the
// default, and a negative one is invalid.
type FeedConfig struct {
	// APIToken, when set, is a bearer token that admits a subscriber
	// without a JWT: the backend API's token.
	APIToken string

	// Scope is the scope a JWT's scope claim must contain. Default
	// DefaultFeedScope.
	Scope string

	// Buffer is how many frames may wait to be written to one subscriber.
	// When it is full, the feed stops reading the log for that subscriber
	// until a frame is written, so a burst or a long catch-up costs no
	// memory beyond it. Default DefaultFeedBuffer.
	Buffer int

	// SlowTimeout is how long a subscriber's buffer may stay full. A
	// subscriber that takes no frame for that long is closed with 1008 and
	// the text "slow subscriber: ...", and may resume from its last
	// cursor. One that reads slower than events arrive, but reads, falls
	// behind the log instead. Default DefaultFeedSlowTimeout.
	SlowTimeout time.Duration

	// MaxSubscribers caps the subscribers of this instance. A subscription
	// over the cap gets HTTP 503. Default DefaultMaxFeedSubscribers.
	MaxSubscribers int

	// SocketBuffer, when positive, sets the kernel's send buffer of each
	// subscriber's socket, in bytes (SO_SNDBUF). Zero keeps the operating
	// system's default, which Linux grows up to net.ipv4.tcp_wmem's
	// maximum, 4 MiB by default. Frames wait in that buffer before they
	// count against Buffer, so a smaller one bounds kernel memory per
	// subscriber and finds a stalled one sooner.
	SocketBuffer int

	// PingInterval is how often the feed pings each subscriber, and
	// PongTimeout how much longer it waits for any frame before it drops
	// the connection. Defaults DefaultPingInterval and DefaultPongTimeout.
	PingInterval time.Duration
	PongTimeout  time.Duration

	// WriteTimeout bounds each write to a subscriber. Default
	// DefaultWriteTimeout.
	WriteTimeout time.Duration

	// HandshakeTimeout bounds writing the upgrade response. Default
	// DefaultHandshakeTimeout.
	HandshakeTimeout time.Duration

	// OnSubscribers, when set, receives the number of subscribers each
	// time it changes. It runs with the feed's lock held, so it must
	// return quickly and must not call the Feed.
	OnSubscribers func(n int)
}

func (c FeedConfig) withDefaults() FeedConfig {
	c.Scope = defaultIfZero(c.Scope, DefaultFeedScope)
	c.Buffer = defaultIfZero(c.Buffer, DefaultFeedBuffer)
	c.SlowTimeout = defaultIfZero(c.SlowTimeout, DefaultFeedSlowTimeout)
	c.MaxSubscribers = defaultIfZero(c.MaxSubscribers, DefaultMaxFeedSubscribers)
	c.PingInterval = defaultIfZero(c.PingInterval, DefaultPingInterval)
	c.PongTimeout = defaultIfZero(c.PongTimeout, DefaultPongTimeout)
	c.WriteTimeout = defaultIfZero(c.WriteTimeout, DefaultWriteTimeout)
	c.HandshakeTimeout = defaultIfZero(c.HandshakeTimeout, DefaultHandshakeTimeout)
	return c
}

// Validate reports every problem of c at once, after the defaults are
// applied. Each problem wraps ErrInvalidConfig.
func (c FeedConfig) Validate() error {
	c = c.withDefaults()

	var problems []error
	problem := func(format string, args ...any) {
		problems = append(problems, fmt.Errorf("%w: feed: "+format, append([]any{ErrInvalidConfig}, args...)...))
	}
	if strings.ContainsAny(c.Scope, " \t\r\n") {
		problem("Scope %q contains white space, want one scope", c.Scope)
	}
	checkPositive(problem, "Buffer", c.Buffer)
	checkPositive(problem, "SlowTimeout", c.SlowTimeout)
	checkPositive(problem, "MaxSubscribers", c.MaxSubscribers)
	checkPositive(problem, "PingInterval", c.PingInterval)
	checkPositive(problem, "PongTimeout", c.PongTimeout)
	checkPositive(problem, "WriteTimeout", c.WriteTimeout)
	checkPositive(problem, "HandshakeTimeout", c.HandshakeTimeout)
	if c.SocketBuffer < 0 {
		problem("SocketBuffer is %d, want a positive size or zero for the system default", c.SocketBuffer)
	}
	return errors.Join(problems...)
}

// Feed serves the live event feed on GET /events: a WebSocket that sends
// each event of the log, in the merge order of eventlog.Log.Follow, as one
// text message in CloudEvents structured JSON mode. Each event is as
// stored, with its sequence extension, plus the CursorExtension attribute.
//
// A subscription needs the FeedSubprotocol, offered in
// Sec-WebSocket-Protocol, or it gets 400. It also needs a bearer token in
// the Authorization header or the access_token parameter: the API token,
// or a JWT whose scope claim contains the scope. A missing or invalid
// token gets 401, and a valid JWT without the scope 403.
//
// The query selects events with type, subject, user and instance, and
// where to start: after a cursor, from the start of the log (from=start),
// or from the events appended after the subscription (the default).
// Filtered-out events still advance the cursor of the next frame, so a
// subscriber that resumes does not read them again. A subscriber that
// gets no frame before it disconnects has no cursor to resume from.
//
// Each subscriber reads the log with its own Follow: in-process appends
// wake it at once, and appends of other instances are found every poll
// interval of the log. The feed never writes to the log and sends no
// lifecycle events for its subscribers. Messages from subscribers are
// read and discarded.
//
// Feed implements http.Handler. Its methods are safe for concurrent use.
type Feed struct {
	cfg      FeedConfig
	log      FeedLog
	auth     *feedAuth
	logger   zerolog.Logger
	epoch    time.Time // start of the feed's monotonic clock
	upgrader *gws.Upgrader

	mu       sync.Mutex
	subs     map[*subscriber]struct{}
	reserved int // subscriptions admitted and not yet registered
	draining bool
	// running counts the goroutines of registered subscribers. Add is
	// only called under mu while draining is false, so Shutdown's Wait
	// never races an Add.
	running sync.WaitGroup
}

// NewFeed checks cfg, applies its defaults and builds a Feed that reads
// log and checks JWTs with auth.
func NewFeed(cfg FeedConfig, log FeedLog, auth *Authenticator, logger zerolog.Logger) (*Feed, error) {
	var problems []error
	if err := cfg.Validate(); err != nil {
		problems = append(problems, err)
	}
	if log == nil {
		problems = append(problems, fmt.Errorf("%w: feed: log is nil", ErrInvalidConfig))
	}
	if auth == nil {
		problems = append(problems, fmt.Errorf("%w: feed: authenticator is nil", ErrInvalidConfig))
	}
	if err := errors.Join(problems...); err != nil {
		return nil, err
	}

	cfg = cfg.withDefaults()
	f := &Feed{
		cfg:    cfg,
		log:    log,
		auth:   newFeedAuth(auth, cfg.APIToken, cfg.Scope),
		logger: logger.With().Str("component", "feed").Logger(),
		epoch:  time.Now(),
		subs:   map[*subscriber]struct{}{},
	}
	f.upgrader = gws.NewUpgrader(feedHandler{f: f}, &gws.ServerOption{
		ReadMaxPayloadSize: feedReadLimit,
		HandshakeTimeout:   cfg.HandshakeTimeout,
		SubProtocols:       []string{FeedSubprotocol},
		Logger:             gwsLogger{log: f.logger},
	})
	return f, nil
}

// ServeHTTP authorizes, checks and upgrades a subscription, then streams
// events until the subscriber leaves, falls behind or the feed shuts down.
// Every rejection before the upgrade is an HTTP status with a JSON body:
// 401 or 403 for the token, 400 for the query or a missing subprotocol,
// 503 when the instance is full or draining or the log does not respond.
func (f *Feed) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	principal, err := f.auth.authorize(r)
	if err != nil {
		f.rejectFeedAuth(w, r, err)
		return
	}

	q, err := parseFeedQuery(r.URL.Query())
	if err != nil {
		writeJSONError(w, http.StatusBadRequest, errorBody{Error: "bad_request", Message: err.Error()})
		return
	}
	if !offersSubprotocol(r.Header, FeedSubprotocol) {
		writeJSONError(w, http.StatusBadRequest, errorBody{Error: "bad_request",
			Message: ErrSubprotocolMissing.Error() + "; offer it in the Sec-WebSocket-Protocol header"})
		return
	}
	// gws negotiates from the first Sec-WebSocket-Protocol line only, while
	// RFC 6455 lets the list span several. The feed speaks one subprotocol,
	// which the client offers, so that is the one gws is left to pick.
	r.Header.Set("Sec-WebSocket-Protocol", FeedSubprotocol)
	if _, ok := w.(http.Hijacker); !ok {
		writeJSONError(w, http.StatusBadRequest, errorBody{Error: "bad_request", Message: "socket: WebSocket upgrade requires HTTP/1.1"})
		return
	}

	if err := f.reserve(); err != nil {
		writeJSONError(w, http.StatusServiceUnavailable, errorBody{Error: "unavailable", Message: err.Error()})
		f.logger.Warn().Err(err).Str("remote_addr", r.RemoteAddr).Msg("feed subscription rejected")
		return
	}
	registered := false
	defer func() {
		if !registered {
			f.release()
		}
	}()

	start, err := f.startCursor(r.Context(), q)
	if err != nil {
		writeJSONError(w, http.StatusServiceUnavailable, errorBody{Error: "unavailable", Message: err.Error()})
		f.logger.Warn().Err(err).Str("remote_addr", r.RemoteAddr).Msg("feed subscription rejected")
		return
	}

	socket, err := f.upgrader.Upgrade(w, r)
	if err != nil {
		f.logger.Debug().Err(err).Str("remote_addr", r.RemoteAddr).Msg("feed upgrade failed")
		return
	}
	if f.cfg.SocketBuffer > 0 {
		if tcp, ok := socket.NetConn().(*net.TCPConn); ok {
			_ = tcp.SetWriteBuffer(f.cfg.SocketBuffer)
		}
	}

	s := f.newSubscriber(socket, r, principal, q.filter, start)
	registered = true
	if !f.register(s) {
		// Shutdown started during the handshake.
		s.cancel()
		_ = socket.NetConn().SetWriteDeadline(time.Now().Add(f.cfg.WriteTimeout))
		_ = socket.WriteClose(CodeGoingAway, []byte(feedShutdownText))
		return
	}
	s.start()
}

// offersSubprotocol reports whether any Sec-WebSocket-Protocol header line
// of a handshake lists want.
func offersSubprotocol(h http.Header, want string) bool {
	for _, line := range h.Values("Sec-WebSocket-Protocol") {
		for p := range strings.SplitSeq(line, ",") {
			if strings.TrimSpace(p) == want {
				return true
			}
		}
	}
	return false
}

// startCursor returns where a subscription starts. Without a cursor or
// from=start, that is the heads of the streams as they are now.
func (f *Feed) startCursor(ctx context.Context, q feedQuery) (eventlog.Cursor, error) {
	switch {
	case q.hasCursor:
		return q.cursor.Clone(), nil
	case q.fromStart:
		return eventlog.Cursor{}, nil
	}

	ctx, cancel := context.WithTimeout(ctx, feedHeadsTimeout)
	defer cancel()
	streams, err := f.log.Streams(ctx)
	if err != nil {
		return nil, fmt.Errorf("%w: read the stream heads: %w", ErrFeedLogUnavailable, err)
	}
	heads := eventlog.Cursor{}
	for _, s := range streams {
		heads[s.Name] = s.Head
	}
	return heads, nil
}

func (f *Feed) reserve() error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.draining {
		return ErrFeedDraining
	}
	if len(f.subs)+f.reserved >= f.cfg.MaxSubscribers {
		return fmt.Errorf("%w: the limit is %d", ErrFeedFull, f.cfg.MaxSubscribers)
	}
	f.reserved++
	return nil
}

func (f *Feed) release() {
	f.mu.Lock()
	f.reserved--
	f.mu.Unlock()
}

// register turns a reservation into a subscriber and counts its
// goroutines. It reports false, and releases the reservation, when the
// feed started shutting down.
func (f *Feed) register(s *subscriber) bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.reserved--
	if f.draining {
		return false
	}
	f.subs[s] = struct{}{}
	f.running.Add(subscriberGoroutines)
	f.notifyCount()
	return true
}

func (f *Feed) remove(s *subscriber) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if _, ok := f.subs[s]; !ok {
		return
	}
	delete(f.subs, s)
	f.notifyCount()
}

// notifyCount reports the subscriber count. The caller holds mu.
func (f *Feed) notifyCount() {
	if f.cfg.OnSubscribers != nil {
		f.cfg.OnSubscribers(len(f.subs))
	}
}

// Count returns the number of subscribers.
func (f *Feed) Count() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return len(f.subs)
}

// Shutdown rejects new subscriptions with 503, closes every subscriber
// with 1001 (going away) after the frames already queued for it, and
// waits until all subscriber goroutines have stopped or ctx ends. Then it
// closes the connections that are left without a close frame. Subscribers
// resume from their last cursor on another instance. It is idempotent.
func (f *Feed) Shutdown(ctx context.Context) error {
	f.mu.Lock()
	f.draining = true
	subs := make([]*subscriber, 0, len(f.subs))
	for s := range f.subs {
		subs = append(subs, s)
	}
	f.mu.Unlock()

	f.logger.Info().Int("subscribers", len(subs)).Msg("closing feed subscribers")
	for _, s := range subs {
		s.requestClose(feedClose{code: CodeGoingAway, text: feedShutdownText, flush: true, why: "feed shutting down"})
	}

	stopped := make(chan struct{})
	go func() {
		f.running.Wait()
		close(stopped)
	}()
	select {
	case <-stopped:
		return nil
	case <-ctx.Done():
	}

	f.mu.Lock()
	left := len(f.subs)
	for s := range f.subs {
		_ = s.socket.NetConn().Close()
	}
	f.mu.Unlock()
	f.logger.Warn().Int("subscribers", left).Msg("feed shutdown timed out; dropped the remaining subscriber connections")
	return fmt.Errorf("feed shutdown: %d subscribers still closing: %w", left, ctx.Err())
}

// clock returns the time since the Feed was built, from the monotonic
// clock.
func (f *Feed) clock() time.Duration { return time.Since(f.epoch) }

func (f *Feed) newSubscriber(socket *gws.Conn, r *http.Request, who feedPrincipal, filter feedFilter, start eventlog.Cursor) *subscriber {
	ctx, cancel := context.WithCancel(context.Background())
	s := &subscriber{
		feed:     f,
		socket:   socket,
		id:       uuid.Must(uuid.NewV7()).String(),
		who:      who,
		remote:   r.RemoteAddr,
		filter:   filter,
		ctx:      ctx,
		cancel:   cancel,
		frames:   make(chan []byte, f.cfg.Buffer),
		pongs:    make(chan []byte, 1),
		closeReq: make(chan struct{}),
		readDone: make(chan struct{}),
		cursor:   start,
	}
	s.touch()
	socket.Session().Store(subscriberKey, s)
	return s
}

// subscriberKey names the subscriber in the gws session storage.
const subscriberKey = "wsm.feed.subscriber"

// feedHandler receives the gws callbacks of every subscriber, on the
// subscriber's read goroutine.
type feedHandler struct{ f *Feed }

func (h feedHandler) OnOpen(*gws.Conn) {}

func (h feedHandler) OnClose(socket *gws.Conn, err error) { subscriberOf(socket).finish(err) }

func (h feedHandler) OnPing(socket *gws.Conn, payload []byte) {
	s := subscriberOf(socket)
	s.touch()
	s.queuePong(payload)
}

func (h feedHandler) OnPong(socket *gws.Conn, _ []byte) { subscriberOf(socket).touch() }

// OnMessage discards what a subscriber sends: the feed is one-way.
func (h feedHandler) OnMessage(socket *gws.Conn, msg *gws.Message) {
	defer msg.Close()
	s := subscriberOf(socket)
	s.touch()
	s.logFields(h.f.logger.Debug()).Int("bytes", msg.Data.Len()).Msg("feed subscriber sent a message; discarded")
}

func subscriberOf(socket *gws.Conn) *subscriber {
	v, _ := socket.Session().Load(subscriberKey)
	return v.(*subscriber)
}

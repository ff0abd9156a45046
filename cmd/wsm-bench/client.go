package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"os"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/golang-jwt/jwt/v5"
	"github.com/lxzan/gws"
)

// Client buffer sizes. The welcome message is under 200 bytes, and small
// buffers let one process hold tens of thousands of clients.
const (
	clientReadBuffer     = 1024
	clientReadMaxPayload = 64 << 10
)

var (
	errNoWelcome    = errors.New("no welcome message in time")
	errClosedEarly  = errors.New("server closed the connection before the welcome")
	errCloseTimeout = errors.New("no close frame from the server in time")
)

// dialer opens client connections. It is safe for concurrent use.
type dialer struct {
	cfg  *clientConfig
	next atomic.Uint64 // round-robin position over urls and sources
}

// client is one open WebSocket client.
type client struct {
	conn    *gws.Conn
	welcome chan struct{}
	closed  chan struct{}
	// closing is set before the client sends its close frame, so that a
	// close the server starts earlier counts as a drop.
	closing atomic.Bool
	dropped atomic.Bool
}

type clientHandler struct {
	gws.BuiltinEventHandler
	c *client
}

func (h *clientHandler) OnMessage(_ *gws.Conn, m *gws.Message) {
	defer m.Close()
	var w struct {
		Type string `json:"type"`
	}
	if json.Unmarshal(m.Bytes(), &w) == nil && w.Type == "welcome" {
		select {
		case h.c.welcome <- struct{}{}:
		default:
		}
	}
}

func (h *clientHandler) OnClose(*gws.Conn, error) {
	if !h.c.closing.Load() {
		h.c.dropped.Store(true)
	}
	close(h.c.closed)
}

// contextDialer lets a canceled run abort TCP connects in progress.
type contextDialer struct {
	ctx context.Context
	d   *net.Dialer
}

func (d contextDialer) Dial(network, addr string) (net.Conn, error) {
	return d.d.DialContext(d.ctx, network, addr)
}

// connect opens one client and waits for its welcome message. It returns
// the time from the start of the TCP connect to the welcome.
func (d *dialer) connect(ctx context.Context) (*client, time.Duration, error) {
	i := d.next.Add(1) - 1
	target := d.cfg.urls[i%uint64(len(d.cfg.urls))]
	netDialer := &net.Dialer{Timeout: d.cfg.dialTimeout}
	if len(d.cfg.sources) > 0 {
		src := d.cfg.sources[i%uint64(len(d.cfg.sources))]
		netDialer.LocalAddr = net.TCPAddrFromAddrPort(netip.AddrPortFrom(src, 0))
	}

	header := http.Header{}
	if !d.cfg.anonymous {
		token, err := mintToken(d.cfg.secret, userFor(i, d.cfg.users))
		if err != nil {
			return nil, 0, err
		}
		header.Set("Authorization", "Bearer "+token)
	}

	c := &client{welcome: make(chan struct{}, 1), closed: make(chan struct{})}
	start := time.Now()
	conn, resp, err := gws.NewClient(&clientHandler{c: c}, &gws.ClientOption{
		Addr:               target,
		RequestHeader:      header,
		HandshakeTimeout:   d.cfg.dialTimeout,
		ReadBufferSize:     clientReadBuffer,
		ReadMaxPayloadSize: clientReadMaxPayload,
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

	if err := c.awaitWelcome(ctx, d.cfg.welcomeTimeout); err != nil {
		return nil, 0, err
	}
	return c, time.Since(start), nil
}

// awaitWelcome waits for the first message of a client that has just
// connected. On a timeout or the end of ctx it aborts the connection.
func (c *client) awaitWelcome(ctx context.Context, timeout time.Duration) error {
	timer := time.NewTimer(timeout)
	defer timer.Stop()
	select {
	case <-c.welcome:
		return nil
	case <-c.closed:
		return errClosedEarly
	case <-timer.C:
		c.abort()
		return errNoWelcome
	case <-ctx.Done():
		c.abort()
		return ctx.Err()
	}
}

// userFor returns the sub claim of client i: one user per client when
// users is 0, otherwise spread round-robin over users.
func userFor(i uint64, users int) string {
	if users > 0 {
		i %= uint64(users)
	}
	return fmt.Sprintf("bench-user-%d", i)
}

// mintToken signs an HS256 JWT for sub that is valid for the longest run.
func mintToken(secret, sub string) (string, error) {
	now := time.Now()
	token := jwt.NewWithClaims(jwt.SigningMethodHS256, jwt.MapClaims{
		"sub": sub,
		"iat": now.Unix(),
		"exp": now.Add(maxDuration + time.Hour).Unix(),
	})
	s, err := token.SignedString([]byte(secret))
	if err != nil {
		return "", fmt.Errorf("sign token: %w", err)
	}
	return s, nil
}

// close sends a 1000 close frame and waits for the server's close frame
// until deadline, then drops the TCP connection if it has not come.
func (c *client) close(deadline time.Time) error {
	c.closing.Store(true)
	c.conn.WriteClose(1000, nil)
	timer := time.NewTimer(time.Until(deadline))
	defer timer.Stop()
	select {
	case <-c.closed:
		return nil
	case <-timer.C:
		c.abort()
		return errCloseTimeout
	}
}

// abort drops the TCP connection without a close handshake.
func (c *client) abort() {
	c.closing.Store(true)
	c.conn.NetConn().Close()
}

// causeOf names the failure of a connect in a few words, for the report.
func causeOf(err error) string {
	var netErr net.Error
	switch {
	case errors.Is(err, errCloseTimeout):
		return "close timeout"
	case errors.Is(err, errNoWelcome):
		return "no welcome"
	case errors.Is(err, errClosedEarly):
		return "closed before welcome"
	case errors.Is(err, syscall.ECONNREFUSED):
		return "connection refused"
	case errors.Is(err, syscall.ECONNRESET):
		return "connection reset"
	case errors.Is(err, syscall.EADDRNOTAVAIL):
		return "local address unavailable (ephemeral ports exhausted?)"
	case errors.Is(err, syscall.EADDRINUSE):
		return "local address in use"
	case errors.Is(err, syscall.EMFILE), errors.Is(err, syscall.ENFILE):
		return "too many open files"
	case errors.Is(err, os.ErrDeadlineExceeded), errors.Is(err, context.DeadlineExceeded),
		errors.As(err, &netErr) && netErr.Timeout():
		return "timeout"
	}
	var status *statusError
	if errors.As(err, &status) {
		return status.Error()
	}
	return "other"
}

// statusError is a handshake response with an HTTP status other than 101,
// such as 401 for an invalid token or 503 past wsm's --max-connections.
type statusError struct {
	code int
	err  error
}

func (e *statusError) Error() string { return fmt.Sprintf("http %d", e.code) }
func (e *statusError) Unwrap() error { return e.err }

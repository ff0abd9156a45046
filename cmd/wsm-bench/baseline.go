package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"mime"
	"net"
	"net/http"
	"net/netip"
	"os"
	"strconv"
	"sync"
	"sync/atomic"
	"time"
	"unicode/utf8"

	"github.com/lxzan/gws"

	"github.com/virtufin/websocketmanager/socket"
)

// Baseline defaults, the same as wsm serve's defaults so that a run
// against the baseline measures what gws alone costs.
const (
	defaultBaselineReadLimit = 64 << 10
	defaultBaselinePing      = 20 * time.Second
)

func runBaseline(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("baseline", flag.ContinueOnError)
	listen := fs.String("listen", "127.0.0.1:0", "address to listen on; port 0 picks a free port")
	readLimit := fs.Int("read-limit", defaultBaselineReadLimit, "maximum size of a client message in bytes, as wsm's --read-limit")
	ping := fs.Duration("ping-interval", defaultBaselinePing, "time between server pings on each connection, as wsm's --ping-interval")
	allowRemote := fs.Bool("allow-remote", false, "allow a --listen address that is not loopback")
	secret := fs.String("token-secret", "", "HS256 secret to verify client JWTs with, whose sub becomes the user id for /v1/users/{id}/messages; "+
		"clients without a token stay anonymous (default $"+secretEnv+"; when both are empty, tokens are ignored)")
	if err := parseFlags(fs, args, stderr); err != nil {
		return err
	}
	if *secret == "" {
		*secret = os.Getenv(secretEnv)
	}
	var errs []error
	if err := checkListen(*listen, *allowRemote); err != nil {
		errs = append(errs, err)
	}
	if *readLimit < 125 {
		errs = append(errs, fmt.Errorf("--read-limit %d: must be at least 125 bytes, the size of a control frame", *readLimit))
	}
	if *ping <= 0 {
		errs = append(errs, fmt.Errorf("--ping-interval %v: must be more than 0", *ping))
	}
	cfg := baselineConfig{listen: *listen, readLimit: *readLimit, ping: *ping}
	if *secret != "" {
		auth, err := socket.NewAuthenticator(socket.AuthConfig{Secret: []byte(*secret), AllowAnonymous: true})
		if err != nil {
			errs = append(errs, fmt.Errorf("--token-secret: %w", err))
		}
		cfg.auth = auth
	}
	if err := errors.Join(errs...); err != nil {
		return &usageError{err}
	}

	srv, err := startBaselineConfig(cfg)
	if err != nil {
		return err
	}
	fmt.Fprintf(stdout, "wsm-bench baseline: clients connect to %s, API at %s/v1/\n", srv.url(), srv.apiURL())
	<-ctx.Done()
	return srv.close()
}

// checkListen rejects a listen address whose host is not a loopback IP
// unless allowRemote. An empty host would listen on every interface.
func checkListen(listen string, allowRemote bool) error {
	host, port, err := net.SplitHostPort(listen)
	if err != nil {
		return fmt.Errorf("--listen %q: %w", listen, err)
	}
	if _, err := strconv.ParseUint(port, 10, 16); err != nil {
		return fmt.Errorf("--listen %q: port %q is not a number from 0 to 65535", listen, port)
	}
	if allowRemote {
		return nil
	}
	ip, err := netip.ParseAddr(host)
	if err != nil || !ip.IsLoopback() {
		return fmt.Errorf("--listen %q: host must be a loopback IP such as 127.0.0.1; pass --allow-remote to listen elsewhere", listen)
	}
	return nil
}

// baselineServer is gws alone: it sends one welcome text frame after each
// upgrade, pings every connection at a fixed interval and discards what
// clients send. It also serves wsm's three send routes over an in-memory
// registry of its connections.
type baselineServer struct {
	ln       net.Listener
	http     *http.Server
	interval time.Duration
	auth     *socket.Authenticator // nil when tokens are ignored
	ids      atomic.Uint64

	mu     sync.RWMutex
	conns  map[*gws.Conn]struct{}
	byID   map[string]*gws.Conn
	byUser map[string]map[*gws.Conn]struct{}

	stopPing context.CancelFunc
	pingDone chan struct{}
}

// baselineConfig configures a baselineServer.
type baselineConfig struct {
	listen    string
	readLimit int
	ping      time.Duration
	// auth verifies client tokens. Nil ignores them, so every client is
	// anonymous.
	auth *socket.Authenticator
}

// startBaseline listens on addr and serves until close, ignoring client
// tokens.
func startBaseline(addr string, readLimit int, ping time.Duration) (*baselineServer, error) {
	return startBaselineConfig(baselineConfig{listen: addr, readLimit: readLimit, ping: ping})
}

// startBaselineConfig listens on cfg.listen and serves until close.
func startBaselineConfig(cfg baselineConfig) (*baselineServer, error) {
	ln, err := net.Listen("tcp", cfg.listen)
	if err != nil {
		return nil, fmt.Errorf("listen %s: %w", cfg.listen, err)
	}
	s := &baselineServer{
		ln: ln, interval: cfg.ping, auth: cfg.auth,
		conns: map[*gws.Conn]struct{}{}, byID: map[string]*gws.Conn{}, byUser: map[string]map[*gws.Conn]struct{}{},
		pingDone: make(chan struct{}),
	}
	up := gws.NewUpgrader(s, &gws.ServerOption{ReadMaxPayloadSize: cfg.readLimit})
	mux := http.NewServeMux()
	mux.HandleFunc("/ws", func(w http.ResponseWriter, r *http.Request) { s.upgrade(up, w, r) })
	s.routes(mux)
	s.http = &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}
	go s.http.Serve(ln)

	ctx, cancel := context.WithCancel(context.Background())
	s.stopPing = cancel
	go s.pingLoop(ctx)
	return s, nil
}

func (s *baselineServer) url() string { return "ws://" + s.ln.Addr().String() + "/ws" }

func (s *baselineServer) apiURL() string { return "http://" + s.ln.Addr().String() }

// upgrade authenticates a client when the server verifies tokens, upgrades
// it and records its user id for OnOpen.
func (s *baselineServer) upgrade(up *gws.Upgrader, w http.ResponseWriter, r *http.Request) {
	user := ""
	if s.auth != nil {
		var err error
		if user, err = s.auth.Authenticate(r); err != nil {
			http.Error(w, "invalid token: "+err.Error(), http.StatusUnauthorized)
			return
		}
	}
	c, err := up.Upgrade(w, r)
	if err != nil {
		return
	}
	c.Session().Store(sessionUser, user)
	go c.ReadLoop()
}

// close stops the listener, drops every connection and stops the pings.
// http.Server.Close does not close hijacked connections, so close does.
func (s *baselineServer) close() error {
	err := s.http.Close()
	s.stopPing()
	<-s.pingDone
	s.mu.Lock()
	for c := range s.conns {
		c.NetConn().Close()
	}
	s.mu.Unlock()
	return err
}

// pingLoop pings every open connection once per interval, from one
// goroutine so that idle connections cost no goroutine of their own.
func (s *baselineServer) pingLoop(ctx context.Context) {
	defer close(s.pingDone)
	ticker := time.NewTicker(s.interval)
	defer ticker.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-ticker.C:
			s.mu.Lock()
			conns := make([]*gws.Conn, 0, len(s.conns))
			for c := range s.conns {
				conns = append(conns, c)
			}
			s.mu.Unlock()
			for _, c := range conns {
				c.WritePing(nil)
			}
		}
	}
}

// readDeadline is how long a connection may stay silent: two ping
// intervals, so one lost pong does not close it.
func (s *baselineServer) readDeadline() time.Time { return time.Now().Add(2 * s.interval) }

// OnOpen registers the connection under its id and user id before the
// welcome names the id, so a send to that id right after the welcome finds
// it.
func (s *baselineServer) OnOpen(c *gws.Conn) {
	c.SetReadDeadline(s.readDeadline())
	id := fmt.Sprintf("baseline-%d", s.ids.Add(1))
	user := sessionString(c, sessionUser)
	c.Session().Store(sessionID, id)
	s.register(c, id, user)
	c.WriteString(fmt.Sprintf(`{"type":"welcome","connectionId":%q,"instanceId":%q}`, id, baselineInstanceID))
}

func (s *baselineServer) OnClose(c *gws.Conn, _ error) {
	s.unregister(c, sessionString(c, sessionID), sessionString(c, sessionUser))
}

func (s *baselineServer) OnPing(c *gws.Conn, payload []byte) {
	c.SetReadDeadline(s.readDeadline())
	c.WritePong(payload)
}

func (s *baselineServer) OnPong(c *gws.Conn, _ []byte) { c.SetReadDeadline(s.readDeadline()) }

func (s *baselineServer) OnMessage(c *gws.Conn, m *gws.Message) {
	c.SetReadDeadline(s.readDeadline())
	m.Close()
}

// Session keys of a baseline connection.
const (
	sessionID   = "id"
	sessionUser = "user"
)

// baselineInstanceID is the instance id the baseline's welcome names, and
// the only one its /v1/instances/{id}/messages route accepts.
const baselineInstanceID = "baseline"

func sessionString(c *gws.Conn, key string) string {
	v, _ := c.Session().Load(key)
	s, _ := v.(string)
	return s
}

func (s *baselineServer) register(c *gws.Conn, id, user string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.conns[c] = struct{}{}
	s.byID[id] = c
	if user == "" {
		return
	}
	if s.byUser[user] == nil {
		s.byUser[user] = map[*gws.Conn]struct{}{}
	}
	s.byUser[user][c] = struct{}{}
}

func (s *baselineServer) unregister(c *gws.Conn, id, user string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	delete(s.conns, c)
	delete(s.byID, id)
	if conns := s.byUser[user]; conns != nil {
		delete(conns, c)
		if len(conns) == 0 {
			delete(s.byUser, user)
		}
	}
}

// routes adds wsm's three send routes. Each reads the body as wsm does
// (binary for application/octet-stream, text otherwise, at most wsm's
// write limit), looks up the connections and writes the frame to each one
// before it responds, with no queue, retry or event in between. The body
// is {"delivered":N}, the number of writes that succeeded.
func (s *baselineServer) routes(mux *http.ServeMux) {
	mux.HandleFunc("POST /v1/connections/{id}/messages", func(w http.ResponseWriter, r *http.Request) {
		s.mu.RLock()
		c, ok := s.byID[r.PathValue("id")]
		s.mu.RUnlock()
		if !ok {
			writeBaselineError(w, http.StatusNotFound, "connection "+r.PathValue("id")+" not found")
			return
		}
		s.send(w, r, []*gws.Conn{c})
	})
	mux.HandleFunc("POST /v1/users/{id}/messages", func(w http.ResponseWriter, r *http.Request) {
		s.mu.RLock()
		conns := make([]*gws.Conn, 0, len(s.byUser[r.PathValue("id")]))
		for c := range s.byUser[r.PathValue("id")] {
			conns = append(conns, c)
		}
		s.mu.RUnlock()
		s.send(w, r, conns)
	})
	mux.HandleFunc("POST /v1/instances/{id}/messages", func(w http.ResponseWriter, r *http.Request) {
		if r.PathValue("id") != baselineInstanceID {
			writeBaselineError(w, http.StatusNotFound, "instance "+r.PathValue("id")+" not found; this server is "+baselineInstanceID)
			return
		}
		s.mu.RLock()
		conns := make([]*gws.Conn, 0, len(s.conns))
		for c := range s.conns {
			conns = append(conns, c)
		}
		s.mu.RUnlock()
		s.send(w, r, conns)
	})
}

// send reads the request body as one frame and writes it to conns.
func (s *baselineServer) send(w http.ResponseWriter, r *http.Request, conns []*gws.Conn) {
	opcode := gws.OpcodeText
	if mt, _, _ := mime.ParseMediaType(r.Header.Get("Content-Type")); mt == "application/octet-stream" {
		opcode = gws.OpcodeBinary
	}
	payload, err := io.ReadAll(http.MaxBytesReader(w, r.Body, socket.DefaultWriteLimit))
	var tooLarge *http.MaxBytesError
	switch {
	case errors.As(err, &tooLarge):
		writeBaselineError(w, http.StatusRequestEntityTooLarge, fmt.Sprintf("body exceeds the write limit of %d bytes", socket.DefaultWriteLimit))
		return
	case err != nil:
		writeBaselineError(w, http.StatusBadRequest, "read body: "+err.Error())
		return
	case opcode == gws.OpcodeText && !utf8.Valid(payload):
		writeBaselineError(w, http.StatusBadRequest, "text body is not valid UTF-8; send binary data as application/octet-stream")
		return
	}

	delivered := 0
	for _, c := range conns {
		if c.WriteMessage(opcode, payload) == nil {
			delivered++
		}
	}
	w.Header().Set("Content-Type", "application/json")
	fmt.Fprintf(w, `{"delivered":%d}`+"\n", delivered)
}

func writeBaselineError(w http.ResponseWriter, status int, msg string) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	json.NewEncoder(w).Encode(map[string]string{"error": msg})
}

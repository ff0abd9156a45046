package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/lxzan/gws"
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
	if err := parseFlags(fs, args, stderr); err != nil {
		return err
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
	if err := errors.Join(errs...); err != nil {
		return &usageError{err}
	}

	srv, err := startBaseline(*listen, *readLimit, *ping)
	if err != nil {
		return err
	}
	fmt.Fprintf(stdout, "wsm-bench baseline: clients connect to %s\n", srv.url())
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
// clients send.
type baselineServer struct {
	ln       net.Listener
	http     *http.Server
	interval time.Duration
	ids      atomic.Uint64

	mu    sync.Mutex
	conns map[*gws.Conn]struct{}

	stopPing context.CancelFunc
	pingDone chan struct{}
}

// startBaseline listens on addr and serves until close.
func startBaseline(addr string, readLimit int, ping time.Duration) (*baselineServer, error) {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("listen %s: %w", addr, err)
	}
	s := &baselineServer{ln: ln, interval: ping, conns: map[*gws.Conn]struct{}{}, pingDone: make(chan struct{})}
	up := gws.NewUpgrader(s, &gws.ServerOption{ReadMaxPayloadSize: readLimit})
	mux := http.NewServeMux()
	mux.HandleFunc("/ws", func(w http.ResponseWriter, r *http.Request) {
		c, err := up.Upgrade(w, r)
		if err != nil {
			return
		}
		go c.ReadLoop()
	})
	s.http = &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}
	go s.http.Serve(ln)

	ctx, cancel := context.WithCancel(context.Background())
	s.stopPing = cancel
	go s.pingLoop(ctx)
	return s, nil
}

func (s *baselineServer) url() string { return "ws://" + s.ln.Addr().String() + "/ws" }

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

func (s *baselineServer) OnOpen(c *gws.Conn) {
	c.SetReadDeadline(s.readDeadline())
	s.mu.Lock()
	s.conns[c] = struct{}{}
	s.mu.Unlock()
	id := s.ids.Add(1)
	c.WriteString(fmt.Sprintf(`{"type":"welcome","connectionId":"baseline-%d","instanceId":"baseline"}`, id))
}

func (s *baselineServer) OnClose(c *gws.Conn, _ error) {
	s.mu.Lock()
	delete(s.conns, c)
	s.mu.Unlock()
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

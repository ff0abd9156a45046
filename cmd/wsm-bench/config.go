package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/netip"
	"net/url"
	"os"
	"strconv"
	"strings"
	"time"
)

// Defaults and caps of a client run. The caps keep a mistyped flag from
// exhausting the machine, and --conn-limit raises the connection cap.
const (
	defaultDuration = 30 * time.Second
	// maxDuration bounds every run, Ctrl-C aside.
	maxDuration = 10 * time.Minute
	// defaultConnLimit is below the 28,232 ephemeral ports of one address
	// pair under Linux's default net.ipv4.ip_local_port_range (32768-60999),
	// so a run within it does not need --sources.
	defaultConnLimit = 10_000
	// maxSources bounds --sources. 127.0.0.0/8 has more addresses, but 36
	// of them already allow a million connections to one target port.
	maxSources = 1024
	// maxCount bounds churn --count, and with it the latency samples kept.
	maxCount = 10_000_000
	// defaultWelcomeTimeout covers a durable write before wsm's welcome on
	// a slow disk.
	defaultWelcomeTimeout = 10 * time.Second
	defaultDialTimeout    = 5 * time.Second
	defaultCloseTimeout   = 10 * time.Second
)

// secretEnv is read when --token-secret is empty, as wsm serve reads it.
const secretEnv = "WSM_JWT_SECRET"

// clientConfig holds the flags that hold and churn share.
type clientConfig struct {
	urls           []string
	secret         string
	anonymous      bool
	users          int
	sources        []netip.Addr
	allowRemote    bool
	duration       time.Duration
	concurrency    int
	rate           float64
	jsonOutput     bool
	quiet          bool
	welcomeTimeout time.Duration
	dialTimeout    time.Duration
}

// stringList is a flag that may be repeated.
type stringList []string

func (s *stringList) String() string     { return strings.Join(*s, ",") }
func (s *stringList) Set(v string) error { *s = append(*s, v); return nil }

// registerClientFlags adds the shared flags to fs and returns a function
// that validates them after parsing and reports every problem, the
// command's own problems in extra included, as one usage error.
func registerClientFlags(fs *flag.FlagSet, c *clientConfig) func(ctx context.Context, extra ...error) error {
	var urls stringList
	var sources string
	fs.Var(&urls, "url", "WebSocket URL of the target, ws://host:port/ws; repeat to spread clients over several (default ws://127.0.0.1:8080/ws)")
	fs.StringVar(&c.secret, "token-secret", "", "HS256 secret to mint client JWTs with (default $"+secretEnv+")")
	fs.BoolVar(&c.anonymous, "anonymous", false, "connect without a token; the server must run with --allow-anonymous")
	fs.IntVar(&c.users, "users", 0, "number of distinct JWT sub claims the clients are spread over (default one per client)")
	fs.StringVar(&sources, "sources", "", "local addresses to bind clients to, round-robin: a range 127.0.0.1-127.0.0.16 or a count N for 127.0.0.1 onwards")
	fs.BoolVar(&c.allowRemote, "allow-remote", false, "allow a target that does not resolve to loopback")
	fs.DurationVar(&c.duration, "duration", defaultDuration, "length of the run, at most "+maxDuration.String())
	fs.Float64Var(&c.rate, "rate", 0, "connection attempts per second; 0 means as fast as --concurrency allows")
	fs.BoolVar(&c.jsonOutput, "json", false, "print the report as JSON instead of a table")
	fs.BoolVar(&c.quiet, "quiet", false, "do not print a progress line to stderr every second")
	fs.DurationVar(&c.welcomeTimeout, "welcome-timeout", defaultWelcomeTimeout, "time from the upgrade to the welcome message before a client counts as failed")
	fs.DurationVar(&c.dialTimeout, "dial-timeout", defaultDialTimeout, "time for the TCP connect and, separately, for the WebSocket handshake")

	return func(ctx context.Context, extra ...error) error {
		c.urls = urls
		if len(c.urls) == 0 {
			c.urls = []string{"ws://127.0.0.1:8080/ws"}
		}
		if c.secret == "" {
			c.secret = os.Getenv(secretEnv)
		}
		var errs []error
		bad := func(format string, args ...any) { errs = append(errs, fmt.Errorf(format, args...)) }

		for _, u := range c.urls {
			if err := checkTarget(ctx, u, c.allowRemote); err != nil {
				errs = append(errs, err)
			}
		}
		if sources != "" {
			addrs, err := parseSources(sources)
			if err != nil {
				errs = append(errs, err)
			}
			c.sources = addrs
		}
		switch {
		case c.anonymous && c.secret != "" && fs.Lookup("token-secret").Value.String() != "":
			bad("--anonymous and --token-secret: pass one, not both")
		case !c.anonymous && c.secret == "":
			bad("no credentials: pass --token-secret, set %s, or pass --anonymous", secretEnv)
		}
		if c.users < 0 {
			bad("--users %d: must be 0 (one per client) or more", c.users)
		}
		if c.duration <= 0 || c.duration > maxDuration {
			bad("--duration %v: must be more than 0 and at most %v", c.duration, maxDuration)
		}
		if c.rate < 0 {
			bad("--rate %v: must be 0 (unpaced) or more", c.rate)
		}
		if c.concurrency < 1 {
			bad("--concurrency %d: must be at least 1", c.concurrency)
		}
		if c.welcomeTimeout <= 0 {
			bad("--welcome-timeout %v: must be more than 0", c.welcomeTimeout)
		}
		if c.dialTimeout <= 0 {
			bad("--dial-timeout %v: must be more than 0", c.dialTimeout)
		}
		if err := errors.Join(append(errs, extra...)...); err != nil {
			return &usageError{err}
		}
		return nil
	}
}

// parseFlags parses args into fs, turning flag errors into usage errors.
// The flag package has already printed the problem and the defaults.
func parseFlags(fs *flag.FlagSet, args []string, stderr io.Writer) error {
	fs.SetOutput(stderr)
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return err
		}
		return &usageError{err}
	}
	if fs.NArg() > 0 {
		return &usageError{fmt.Errorf("unexpected argument %q: every option is a flag", fs.Arg(0))}
	}
	return nil
}

// checkTarget validates a --url and, unless allowRemote, rejects a host
// that does not resolve only to loopback addresses. It resolves names but
// never connects.
func checkTarget(ctx context.Context, raw string, allowRemote bool) error {
	u, err := url.Parse(raw)
	if err != nil {
		return fmt.Errorf("--url %q: %w", raw, err)
	}
	if u.Scheme != "ws" && u.Scheme != "wss" {
		return fmt.Errorf("--url %q: scheme must be ws or wss", raw)
	}
	host := u.Hostname()
	if host == "" {
		return fmt.Errorf("--url %q: missing host", raw)
	}
	if allowRemote {
		return nil
	}

	var addrs []netip.Addr
	if ip, err := netip.ParseAddr(host); err == nil {
		addrs = []netip.Addr{ip}
	} else {
		lookupCtx, cancel := context.WithTimeout(ctx, 5*time.Second)
		addrs, err = net.DefaultResolver.LookupNetIP(lookupCtx, "ip", host)
		cancel()
		if err != nil {
			return fmt.Errorf("--url %q: resolve %s: %w", raw, host, err)
		}
	}
	for _, a := range addrs {
		if !a.Unmap().IsLoopback() {
			return fmt.Errorf("--url %q: host %s resolves to %s, which is not loopback; pass --allow-remote to load a remote server", raw, host, a)
		}
	}
	return nil
}

// parseSources reads --sources: a range "127.0.0.1-127.0.0.16" or a count
// "16" meaning 127.0.0.1 to 127.0.0.16. Every address must be in
// 127.0.0.0/8, which Linux routes to loopback without configuration.
// NOTE: macOS configures only 127.0.0.1, so other sources need an
// "ifconfig lo0 alias" first, or binding them fails.
func parseSources(v string) ([]netip.Addr, error) {
	first, last := netip.AddrFrom4([4]byte{127, 0, 0, 1}), netip.Addr{}
	if n, err := strconv.Atoi(v); err == nil {
		if n < 1 || n > maxSources {
			return nil, fmt.Errorf("--sources %d: count must be 1 to %d", n, maxSources)
		}
		last = first
		for range n - 1 {
			last = last.Next()
		}
	} else {
		lo, hi, ok := strings.Cut(v, "-")
		a, errA := netip.ParseAddr(strings.TrimSpace(lo))
		b, errB := netip.ParseAddr(strings.TrimSpace(hi))
		if !ok || errA != nil || errB != nil {
			return nil, fmt.Errorf("--sources %q: want a count or a range like 127.0.0.1-127.0.0.16", v)
		}
		first, last = a, b
	}

	loopback := netip.MustParsePrefix("127.0.0.0/8")
	if !loopback.Contains(first) || !loopback.Contains(last) || last.Less(first) {
		return nil, fmt.Errorf("--sources %q: want an ascending range inside 127.0.0.0/8", v)
	}
	var addrs []netip.Addr
	for a := first; ; a = a.Next() {
		if len(addrs) == maxSources {
			return nil, fmt.Errorf("--sources %q: more than %d addresses", v, maxSources)
		}
		addrs = append(addrs, a)
		if a == last {
			return addrs, nil
		}
	}
}

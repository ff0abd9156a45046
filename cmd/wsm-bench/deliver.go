package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/netip"
	"net/url"
	"os"
	"strings"
	"time"
)

// Delivery scopes: the target of every request of a deliver run.
const (
	scopeConnection = "connection"
	scopeUser       = "user"
	scopeInstance   = "instance"
)

// Defaults and caps of a deliver run.
const (
	// defaultWindow stays well below wsm's default --send-queue of 256
	// messages, so a client that reads at full speed is never closed as a
	// slow consumer.
	defaultWindow         = 64
	defaultSenders        = 4
	defaultPayloadBytes   = 64
	defaultDrainTimeout   = 10 * time.Second
	defaultRequestTimeout = 10 * time.Second
	// maxPayloadBytes is wsm's default write limit, socket.DefaultWriteLimit.
	maxPayloadBytes = 1 << 20
	// maxSenders bounds --senders, and with it the HTTP connections.
	maxSenders = 1024
	// openTimeout bounds the phase that opens the clients.
	openTimeout = 2 * time.Minute
	// maxResponseBytes is how much of a response body a sender reads.
	maxResponseBytes = 64 << 10
)

// apiTokenEnv is read when --api-token is empty, as wsm serve reads it.
const apiTokenEnv = "WSM_API_TOKEN"

// deliverConfig holds the flags of deliver.
type deliverConfig struct {
	client         clientConfig
	scope          string
	clients        int
	senders        int
	count          int
	payloadBytes   int
	window         int
	api            string // base URL of the API, such as http://127.0.0.1:8080
	apiToken       string
	drainTimeout   time.Duration
	requestTimeout time.Duration
}

// defaultClients returns the --clients default of a scope.
func defaultClients(scope string) int {
	switch scope {
	case scopeUser:
		return 4
	case scopeInstance:
		return 100
	}
	return 1
}

func runDeliver(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("deliver", flag.ContinueOnError)
	cfg := &deliverConfig{}
	fs.StringVar(&cfg.scope, "scope", scopeConnection, "what each request sends to: connection (one client), user (every client, all of one user) or instance (every client on the instance)")
	fs.IntVar(&cfg.clients, "clients", 0, "clients to open; connection scope takes 1 (default 1, 4 for user, 100 for instance)")
	connLimit := fs.Int("conn-limit", defaultConnLimit, "maximum --clients this run accepts; raise it on purpose for large runs")
	fs.IntVar(&cfg.client.concurrency, "concurrency", 64, "connects in progress at once while the clients open")
	fs.IntVar(&cfg.senders, "senders", defaultSenders, "API requests in progress at once")
	fs.IntVar(&cfg.count, "count", 0, "stop after this many requests; 0 sends until --duration has passed")
	fs.IntVar(&cfg.payloadBytes, "payload-bytes", defaultPayloadBytes, "size of each message in bytes, sent as a text frame")
	fs.IntVar(&cfg.window, "window", defaultWindow, "messages a client may be behind before the senders wait for it")
	fs.StringVar(&cfg.api, "api", "", "base URL of the server's API, http://host:port (default the host and port of --url)")
	fs.StringVar(&cfg.apiToken, "api-token", "", "bearer token of the API (default $"+apiTokenEnv+")")
	fs.DurationVar(&cfg.drainTimeout, "drain-timeout", defaultDrainTimeout, "time to wait for frames still missing after the last request, and for a client that stops reading")
	fs.DurationVar(&cfg.requestTimeout, "request-timeout", defaultRequestTimeout, "time for one API request, response included")
	validate := registerClientFlags(fs, &cfg.client)
	if err := parseFlags(fs, args, stderr); err != nil {
		return err
	}
	if cfg.apiToken == "" {
		cfg.apiToken = os.Getenv(apiTokenEnv)
	}
	if cfg.clients == 0 {
		cfg.clients = defaultClients(cfg.scope)
	}
	extra := cfg.check(fs, *connLimit)
	if cfg.scope == scopeUser {
		// Every client carries the same sub claim.
		cfg.client.users = 1
	}
	if err := validate(ctx, extra...); err != nil {
		return err
	}
	if cfg.api == "" {
		cfg.api = apiFromURL(cfg.client.urls[0])
	}

	r := deliver(ctx, cfg, progressWriter(&cfg.client, stderr))
	if err := r.write(stdout, cfg.client.jsonOutput); err != nil {
		return err
	}
	return r.failure()
}

// check returns the problems of the deliver flags that registerClientFlags
// does not check.
func (cfg *deliverConfig) check(fs *flag.FlagSet, connLimit int) []error {
	var errs []error
	bad := func(format string, args ...any) { errs = append(errs, fmt.Errorf(format, args...)) }

	switch cfg.scope {
	case scopeConnection:
		if cfg.clients != 1 {
			bad("--clients %d: connection scope sends to one client, so it takes 1", cfg.clients)
		}
	case scopeUser:
		if cfg.client.anonymous {
			bad("--scope user needs clients with a user id: pass --token-secret or set %s instead of --anonymous", secretEnv)
		}
		if v := fs.Lookup("users").Value.String(); v != "0" && v != "1" {
			bad("--users %s: user scope puts every client under one user", v)
		}
	case scopeInstance:
	default:
		bad("--scope %q: want connection, user or instance", cfg.scope)
	}
	if cfg.clients < 1 || cfg.clients > connLimit {
		bad("--clients %d: must be 1 to --conn-limit %d", cfg.clients, connLimit)
	}
	if len(*fs.Lookup("url").Value.(*stringList)) > 1 {
		bad("--url: deliver takes one target, because every request goes to one server")
	}
	if cfg.senders < 1 || cfg.senders > maxSenders {
		bad("--senders %d: must be 1 to %d", cfg.senders, maxSenders)
	}
	if cfg.count < 0 || cfg.count > maxCount {
		bad("--count %d: must be 0 (run for --duration) to %d", cfg.count, maxCount)
	}
	if cfg.payloadBytes < 1 || cfg.payloadBytes > maxPayloadBytes {
		bad("--payload-bytes %d: must be 1 to %d, wsm's default write limit", cfg.payloadBytes, maxPayloadBytes)
	}
	if cfg.window < 1 {
		bad("--window %d: must be at least 1", cfg.window)
	}
	if cfg.drainTimeout <= 0 {
		bad("--drain-timeout %v: must be more than 0", cfg.drainTimeout)
	}
	if cfg.requestTimeout <= 0 {
		bad("--request-timeout %v: must be more than 0", cfg.requestTimeout)
	}
	if cfg.api != "" {
		if err := checkAPI(cfg.api, cfg.client.allowRemote); err != nil {
			errs = append(errs, err)
		}
	}
	return errs
}

// apiFromURL returns the http or https base URL of the host and port of a
// ws or wss URL.
func apiFromURL(wsURL string) string {
	u, err := url.Parse(wsURL)
	if err != nil {
		return ""
	}
	scheme := "http"
	if u.Scheme == "wss" {
		scheme = "https"
	}
	return scheme + "://" + u.Host
}

// checkAPI validates --api and, unless allowRemote, rejects a host that is
// not a loopback IP or localhost. It never connects.
func checkAPI(raw string, allowRemote bool) error {
	u, err := url.Parse(raw)
	if err != nil {
		return fmt.Errorf("--api %q: %w", raw, err)
	}
	if u.Scheme != "http" && u.Scheme != "https" {
		return fmt.Errorf("--api %q: scheme must be http or https", raw)
	}
	if u.Hostname() == "" {
		return fmt.Errorf("--api %q: missing host", raw)
	}
	if strings.Trim(u.Path, "/") != "" {
		return fmt.Errorf("--api %q: want only scheme, host and port, such as http://127.0.0.1:8080", raw)
	}
	if allowRemote {
		return nil
	}
	ip, err := netip.ParseAddr(u.Hostname())
	if u.Hostname() != "localhost" && (err != nil || !ip.Unmap().IsLoopback()) {
		return fmt.Errorf("--api %q: host must be a loopback IP or localhost; pass --allow-remote to send elsewhere", raw)
	}
	return nil
}

// endpoint returns the URL each request of the run posts to.
func (cfg *deliverConfig) endpoint(clients []*deliverClient) (string, error) {
	base := strings.TrimSuffix(cfg.api, "/")
	switch cfg.scope {
	case scopeConnection:
		return base + "/v1/connections/" + url.PathEscape(clients[0].connectionID) + "/messages", nil
	case scopeUser:
		return base + "/v1/users/" + url.PathEscape(userFor(0, 1)) + "/messages", nil
	}
	instance := clients[0].instanceID
	for _, c := range clients[1:] {
		if c.instanceID != instance {
			return "", fmt.Errorf("clients landed on instances %q and %q; instance scope needs every client on one instance", instance, c.instanceID)
		}
	}
	if instance == "" {
		return "", errors.New("the welcome message names no instanceId; instance scope needs it")
	}
	return base + "/v1/instances/" + url.PathEscape(instance) + "/messages", nil
}

package main

import (
	"errors"
	"flag"
	"fmt"
	"net"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/google/uuid"

	"github.com/virtufin/websocketmanager/internal/memrelease"
	"github.com/virtufin/websocketmanager/socket"
	"github.com/virtufin/websocketmanager/workers"
)

// serveConfig holds every setting of `wsm serve`. Defaults live in
// defaultServeConfig, each with its reason.
type serveConfig struct {
	Listen         string
	DataDir        string
	Backend        string
	InstanceID     string
	AllowAnonymous bool
	JWTSecret      string // from WSM_JWT_SECRET only, never a flag: flags show up in ps
	// APIToken is the bearer token of the backend API (/v1/*), from
	// WSM_API_TOKEN only. Empty leaves the API open, which Validate allows
	// on a loopback listener only.
	APIToken string

	DaprAddress       string
	StateStore        string
	PubSub            string
	EventsTopic       string
	PublishHeartbeats bool
	MessagesTopic     string // topic of client messages
	TopicPrefix       string // starts each instance's command topic
	// DaprAppToken is the token the sidecar sends with each call to wsm,
	// from APP_API_TOKEN. Empty means calls are not checked for it.
	DaprAppToken string

	HeartbeatInterval time.Duration
	HeartbeatTTL      time.Duration
	ReclaimInterval   time.Duration
	ShutdownTimeout   time.Duration

	PingInterval   time.Duration
	PongTimeout    time.Duration
	ReadLimit      int
	SendQueue      int
	MaxConnections int

	FeedBuffer       int
	FeedSlowTimeout  time.Duration
	FeedSocketBuffer int // bytes, 0 for the system default

	// ReleaseMemoryAfter is how long allocation must stay quiet after a
	// burst, such as a connect storm, before free heap memory is returned
	// to the operating system. Zero leaves it to Go's runtime.
	ReleaseMemoryAfter time.Duration

	LogFormat string
	LogLevel  string
	Pprof     bool
}

func defaultServeConfig() serveConfig {
	return serveConfig{
		Listen:  "127.0.0.1:8080",
		DataDir: "wsm-data",
		Backend: "embedded",

		StateStore:    "statestore",
		PubSub:        "pubsub",
		EventsTopic:   "system-events",
		MessagesTopic: workers.DefaultMessagesTopic,

		// A heartbeat every 5 s and a TTL of three missed beats: one lost
		// or late beat never makes an instance suspect, and a dead one is
		// found within 15 s plus one reclaim pass.
		HeartbeatInterval: 5 * time.Second,
		HeartbeatTTL:      15 * time.Second,
		ReclaimInterval:   5 * time.Second,
		// Kubernetes sends SIGKILL 30 s after SIGTERM by default; 10 s
		// leaves room for the sidecar and the pod's preStop hook.
		ShutdownTimeout: 10 * time.Second,

		// Pings every 20 s keep idle connections alive through load
		// balancers and NATs that drop flows idle for 30 to 60 s.
		PingInterval: 20 * time.Second,
		PongTimeout:  10 * time.Second,
		// 64 KiB fits any control or chat message; larger payloads belong
		// in object storage with a link on the socket.
		ReadLimit: 64 << 10,
		// 256 queued messages absorb a burst to a client whose TCP window is
		// momentarily full; a client further behind is closed, not buffered.
		SendQueue: 256,
		// A cap keeps one instance from taking more than its share after a
		// rolling update; past it the upgrade gets 503 and the load balancer
		// tries another instance.
		MaxConnections: 50_000,

		// The /events feed holds up to 1024 frames, about 1 MiB, per
		// subscriber, and closes one whose buffer stays full for 5 s; see
		// socket.DefaultFeedBuffer and socket.DefaultFeedSlowTimeout.
		FeedBuffer:      socket.DefaultFeedBuffer,
		FeedSlowTimeout: socket.DefaultFeedSlowTimeout,

		// After a connect storm the heap holds about twice what the idle
		// connections need (see internal/memrelease); 5 s without new
		// allocation is long enough that a storm has ended.
		ReleaseMemoryAfter: memrelease.DefaultQuiet,

		LogFormat: "json",
		LogLevel:  "info",
	}
}

// minJWTSecret is the shortest HS256 key RFC 7518 allows: the hash size.
const minJWTSecret = 32

// envPrefix starts every environment variable wsm reads.
const envPrefix = "WSM_"

// bindServeFlags registers the serve flags on fs, with defaults taken from
// the environment where set, so a flag beats WSM_* and WSM_* beats the
// built-in default.
func bindServeFlags(fs *flag.FlagSet, c *serveConfig, env func(string) string) error {
	var errs []error
	str := func(p *string, name, usage string) {
		if v := env(envName(name)); v != "" {
			*p = v
		}
		fs.StringVar(p, name, *p, usage+" (env "+envName(name)+")")
	}
	dur := func(p *time.Duration, name, usage string) {
		if v := env(envName(name)); v != "" {
			d, err := time.ParseDuration(v)
			if err != nil {
				errs = append(errs, fmt.Errorf("%s=%q: invalid duration, want a value such as 5s", envName(name), v))
			} else {
				*p = d
			}
		}
		fs.DurationVar(p, name, *p, usage+" (env "+envName(name)+")")
	}
	num := func(p *int, name, usage string) {
		if v := env(envName(name)); v != "" {
			n, err := strconv.Atoi(v)
			if err != nil {
				errs = append(errs, fmt.Errorf("%s=%q: invalid integer", envName(name), v))
			} else {
				*p = n
			}
		}
		fs.IntVar(p, name, *p, usage+" (env "+envName(name)+")")
	}
	boolean := func(p *bool, name, usage string) {
		if v := env(envName(name)); v != "" {
			b, err := strconv.ParseBool(v)
			if err != nil {
				errs = append(errs, fmt.Errorf("%s=%q: invalid boolean, want true or false", envName(name), v))
			} else {
				*p = b
			}
		}
		fs.BoolVar(p, name, *p, usage+" (env "+envName(name)+")")
	}

	str(&c.Listen, "listen", "address of the HTTP and WebSocket listener, host:port")
	str(&c.DataDir, "data-dir", "directory of the embedded store file")
	str(&c.Backend, "backend", "state store and pub/sub backend: embedded (one process) or dapr (a fleet)")
	c.DaprAddress = daprAddressFromEnv(env)
	str(&c.DaprAddress, "dapr-address", "gRPC address of the Dapr sidecar; default from DAPR_GRPC_ENDPOINT or DAPR_GRPC_PORT")
	str(&c.StateStore, "state-store", "name of the Dapr state store component")
	str(&c.PubSub, "pubsub", "name of the Dapr pub/sub component")
	str(&c.EventsTopic, "events-topic", "pub/sub topic that connected, disconnected and reclaimed events are published to")
	boolean(&c.PublishHeartbeats, "publish-heartbeats", "also publish instance heartbeats to the events topic")
	str(&c.MessagesTopic, "messages-topic", "pub/sub topic that every text or binary message from a client is published to, as a message.received event")
	str(&c.TopicPrefix, "topic-prefix", "prefix of the per-instance command topics <prefix>wsm.instance.<instance-id>, for fleets that share a broker")
	str(&c.InstanceID, "instance-id", "instance id; default $HOSTNAME, else a random UUID")
	boolean(&c.AllowAnonymous, "allow-anonymous", "accept WebSocket clients without a token")
	dur(&c.HeartbeatInterval, "heartbeat-interval", "time between heartbeats")
	dur(&c.HeartbeatTTL, "heartbeat-ttl", "time without a heartbeat after which a peer is suspect")
	dur(&c.ReclaimInterval, "reclaim-interval", "time between reclaim passes")
	dur(&c.ShutdownTimeout, "shutdown-timeout", "time allowed for draining on SIGTERM")
	dur(&c.PingInterval, "ping-interval", "time between server pings on each connection")
	dur(&c.PongTimeout, "pong-timeout", "extra time a client has to answer before it counts as gone")
	num(&c.ReadLimit, "read-limit", "maximum size of a client message in bytes; larger ones close with 1009")
	num(&c.SendQueue, "send-queue", "messages queued per connection before a slow client is closed with 1008")
	num(&c.MaxConnections, "max-connections", "connections per instance; further upgrades get HTTP 503")
	num(&c.FeedBuffer, "feed-buffer", "frames queued per /events subscriber; the feed waits while it is full")
	dur(&c.FeedSlowTimeout, "feed-slow-timeout", "time an /events subscriber's full buffer may wait before it is closed with 1008 as slow")
	num(&c.FeedSocketBuffer, "feed-socket-buffer", "kernel send buffer of each /events subscriber socket in bytes; 0 keeps the system default")
	dur(&c.ReleaseMemoryAfter, "release-memory-after", "time allocation must stay quiet after a burst before free heap memory is returned to the operating system; 0 leaves it to Go's runtime")
	str(&c.LogFormat, "log-format", "log format: json or console")
	str(&c.LogLevel, "log-level", "log level: debug, info, warn or error")
	boolean(&c.Pprof, "pprof", "serve Go profiles under /debug/pprof/ (loopback listeners only)")

	c.JWTSecret = env("WSM_JWT_SECRET")
	c.APIToken = env(apiTokenEnv)
	c.DaprAppToken = env(daprAppTokenEnv)
	return errors.Join(errs...)
}

func envName(flagName string) string {
	return envPrefix + strings.ToUpper(strings.ReplaceAll(flagName, "-", "_"))
}

// resolveInstanceID fills in the instance id from HOSTNAME or a random UUID.
func (c *serveConfig) resolveInstanceID(env func(string) string) {
	if c.InstanceID != "" {
		return
	}
	if h := env("HOSTNAME"); h != "" {
		c.InstanceID = h
		return
	}
	if h, err := os.Hostname(); err == nil && h != "" {
		c.InstanceID = h
		return
	}
	c.InstanceID = uuid.NewString()
}

// Validate reports every problem of the configuration at once.
func (c *serveConfig) Validate() error {
	var errs []error
	bad := func(format string, args ...any) { errs = append(errs, fmt.Errorf(format, args...)) }

	host, _, err := net.SplitHostPort(c.Listen)
	if err != nil {
		bad("--listen %q: %v; want host:port such as 127.0.0.1:8080", c.Listen, err)
	}
	if c.Backend != "embedded" && c.Backend != "dapr" {
		bad("--backend %q: unknown; want embedded or dapr", c.Backend)
	}
	if c.Backend == "dapr" {
		if _, _, err := net.SplitHostPort(c.DaprAddress); err != nil {
			bad("--dapr-address %q: %v; want host:port such as 127.0.0.1:50001", c.DaprAddress, err)
		}
		if c.StateStore == "" || c.PubSub == "" || c.EventsTopic == "" {
			bad("--state-store, --pubsub and --events-topic must not be empty on the dapr backend")
		}
	}
	if c.Backend == "embedded" && c.DataDir == "" {
		bad("--data-dir is empty; the embedded backend needs a directory")
	}
	if strings.Contains(c.InstanceID, "/") {
		bad("--instance-id %q: must not contain '/'", c.InstanceID)
	}
	if err == nil && c.APIToken == "" && !isLoopbackHost(host) {
		bad("--listen %s is not a loopback address, and %s is not set, so anyone who reaches the port could use the backend API; "+
			"set %s to the bearer token backends must send", c.Listen, apiTokenEnv, apiTokenEnv)
	}
	if c.APIToken != "" && len(c.APIToken) < minAPITokenBytes {
		bad("%s is %d bytes; use a random token of at least %d", apiTokenEnv, len(c.APIToken), minAPITokenBytes)
	}
	if c.JWTSecret != "" && len(c.JWTSecret) < minJWTSecret {
		bad("WSM_JWT_SECRET has %d bytes; an HS256 key needs at least %d (RFC 7518)", len(c.JWTSecret), minJWTSecret)
	}
	if err == nil && c.JWTSecret == "" && !c.AllowAnonymous && !isLoopbackHost(host) {
		bad("--listen %s is not a loopback address, and neither WSM_JWT_SECRET nor --allow-anonymous is set; "+
			"set WSM_JWT_SECRET to require tokens, or --allow-anonymous to accept anyone", c.Listen)
	}

	positive := func(name string, d time.Duration) {
		if d <= 0 {
			bad("--%s %v: must be positive", name, d)
		}
	}
	positive("heartbeat-interval", c.HeartbeatInterval)
	positive("heartbeat-ttl", c.HeartbeatTTL)
	positive("reclaim-interval", c.ReclaimInterval)
	positive("shutdown-timeout", c.ShutdownTimeout)
	positive("ping-interval", c.PingInterval)
	positive("pong-timeout", c.PongTimeout)
	if c.HeartbeatTTL > 0 && c.HeartbeatTTL <= c.HeartbeatInterval {
		bad("--heartbeat-ttl %v must be longer than --heartbeat-interval %v, or every peer looks dead between beats",
			c.HeartbeatTTL, c.HeartbeatInterval)
	}
	if c.ReadLimit < 125 {
		bad("--read-limit %d: must be at least 125 bytes, the size of a control frame", c.ReadLimit)
	}
	if c.SendQueue < 1 {
		bad("--send-queue %d: must be at least 1", c.SendQueue)
	}
	if c.MaxConnections < 1 {
		bad("--max-connections %d: must be at least 1", c.MaxConnections)
	}
	if c.MessagesTopic == "" {
		bad("--messages-topic is empty; client messages need a topic")
	}
	if c.FeedBuffer < 1 {
		bad("--feed-buffer %d: must be at least 1", c.FeedBuffer)
	}
	positive("feed-slow-timeout", c.FeedSlowTimeout)
	if c.ReleaseMemoryAfter < 0 {
		bad("--release-memory-after %s: must not be negative; 0 disables it", c.ReleaseMemoryAfter)
	}
	if c.FeedSocketBuffer < 0 {
		bad("--feed-socket-buffer %d: must be a size in bytes, or 0 for the system default", c.FeedSocketBuffer)
	}
	if err == nil && c.Pprof && !isLoopbackHost(host) {
		bad("--pprof on %s: profiles reveal memory contents, so they are served on loopback listeners only", c.Listen)
	}
	if c.LogFormat != "json" && c.LogFormat != "console" {
		bad("--log-format %q: want json or console", c.LogFormat)
	}
	return errors.Join(errs...)
}

// isLoopbackHost reports whether a listen host only accepts local clients.
// An empty host listens on every interface.
func isLoopbackHost(host string) bool {
	if host == "localhost" {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}

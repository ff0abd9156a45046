// Package daprtest runs real Dapr sidecars and Redis servers for tests.
//
// Sidecar starts daprd on free loopback ports with a Redis state store and
// a Redis pub/sub. Their keys, streams and consumer group carry a prefix of
// their own, and the sidecar is killed and its Redis keys deleted when the
// test ends, so parallel tests never share state. The daprd binary comes from
// the WSM_DAPRD environment variable or from .ci/ensure-daprd, which builds
// it on first use; the shared Redis on 127.0.0.1:6379 is started by
// .ci/ensure-redis when nothing responds there. A test that cannot get
// either fails: the integration run has both, and a skip would hide that
// the Dapr backend went untested.
//
// Everything here listens on and talks to loopback addresses only. The
// helpers may be called from parallel tests.
package daprtest

import (
	"bytes"
	"cmp"
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"maps"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
)

// DefaultRedisAddr is the shared Redis that .ci/ensure-redis provides.
const DefaultRedisAddr = "127.0.0.1:6379"

// Component names the sidecar loads by default.
const (
	StateStore = "statestore"
	PubSub     = "pubsub"
)

// Timeouts of the harness. A healthy daprd passes its health check within
// a second or two of starting, while the build of a missing binary takes
// minutes.
const (
	startTimeout = 30 * time.Second
	buildTimeout = 30 * time.Minute
	pollInterval = 50 * time.Millisecond
)

// Component is one extra Dapr component for the sidecar.
type Component struct {
	Name     string
	Type     string // such as state.in-memory
	Metadata map[string]string
}

// Options configure Sidecar and Prepare. The zero value starts a sidecar
// over the shared Redis with no app.
type Options struct {
	// RedisAddr is the Redis the default components use. Default
	// DefaultRedisAddr, which is started when it does not respond.
	RedisAddr string
	// PubSubRedisAddr, when set, moves the pub/sub component to another
	// Redis, so a test can stop the state store alone.
	PubSubRedisAddr string
	// AppPort, when set, is the port on 127.0.0.1 where the app serves
	// HTTP. The sidecar then requests the app's subscriptions at start and
	// delivers messages there.
	AppPort int
	// Components are loaded beside the default state store and pub/sub.
	Components []Component
	// LogLevel of daprd. Default "warn".
	LogLevel string
	// Prefix, when set, replaces the random key prefix, so that the
	// sidecars of one fleet share their state keys and topics.
	Prefix string
	// AppID is the sidecar's app id. Default "wsm". Sidecars with different
	// app ids each get every message of a topic.
	AppID string
}

// Daprd is one sidecar of a test.
type Daprd struct {
	// GRPCAddr is the sidecar's gRPC API, host:port.
	GRPCAddr string
	// HTTPPort is the sidecar's HTTP API port on 127.0.0.1.
	HTTPPort int
	// StateStore and PubSub name the default components.
	StateStore string
	PubSub     string
	// Prefix starts every Redis key of this sidecar: its state keys are
	// Prefix + "||" + key, and Topic returns prefixed topic names.
	Prefix string
	// RedisAddr is the Redis of the default components.
	RedisAddr string

	bin       string
	resources string
	opts      Options
	ports     [4]int // grpc, http, internal grpc, metrics

	mu     sync.Mutex
	cmd    *exec.Cmd
	exited chan struct{}
	output *syncBuffer
}

// Sidecar starts a sidecar and waits until it reports healthy.
func Sidecar(t testing.TB, opts Options) *Daprd {
	t.Helper()
	d := Prepare(t, opts)
	d.start(t, true)
	return d
}

// Prepare writes the sidecar's components and picks its ports without
// starting it, so a test can start its client first. Start starts it.
func Prepare(t testing.TB, opts Options) *Daprd {
	t.Helper()
	if opts.RedisAddr == "" {
		opts.RedisAddr = DefaultRedisAddr
		EnsureRedis(t)
	}
	if opts.LogLevel == "" {
		opts.LogLevel = "warn"
	}
	if opts.AppID == "" {
		opts.AppID = "wsm"
	}
	if opts.Prefix == "" {
		opts.Prefix = "wsmtest-" + randomHex(t, 6)
	}
	d := &Daprd{
		StateStore: StateStore,
		PubSub:     PubSub,
		Prefix:     opts.Prefix,
		RedisAddr:  opts.RedisAddr,
		bin:        Binary(t),
		resources:  t.TempDir(),
		opts:       opts,
		output:     &syncBuffer{},
	}
	d.pickPorts(t)
	d.writeComponents(t)

	// Registered before Start's cleanup, so it runs after the sidecar is
	// gone and nothing writes the keys any more.
	t.Cleanup(func() {
		if err := DeleteKeys(opts.RedisAddr, d.Prefix); err != nil {
			t.Errorf("delete Redis keys of %s: %v", d.Prefix, err)
		}
		if opts.PubSubRedisAddr != "" && opts.PubSubRedisAddr != opts.RedisAddr {
			if err := DeleteKeys(opts.PubSubRedisAddr, d.Prefix); err != nil {
				t.Errorf("delete Redis keys of %s: %v", d.Prefix, err)
			}
		}
	})
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("daprd output (%s):\n%s", d.Prefix, d.output.tail(8<<10))
		}
	})
	return d
}

// Topic returns a topic name private to this sidecar.
func (d *Daprd) Topic(name string) string { return d.Prefix + "." + name }

// Output returns what daprd printed so far.
func (d *Daprd) Output() string { return d.output.String() }

func (d *Daprd) pickPorts(t testing.TB) {
	t.Helper()
	d.repickPorts(t, true)
}

// repickPorts picks new free internal gRPC and metrics ports, and new API
// ports too when api is set.
func (d *Daprd) repickPorts(t testing.TB, api bool) {
	t.Helper()
	first := 2
	if api {
		first = 0
	}
	// Hold the new listeners at once so the new ports differ from each
	// other, and skip any port that equals a kept API port.
	var ls []net.Listener
	for i := first; i < len(d.ports); i++ {
		var port int
		for port == 0 || slices.Contains(d.ports[:first], port) {
			l, err := net.Listen("tcp", "127.0.0.1:0")
			if err != nil {
				t.Fatalf("pick a free port: %v", err)
			}
			ls = append(ls, l)
			port = l.Addr().(*net.TCPAddr).Port
		}
		d.ports[i] = port
	}
	for _, l := range ls {
		l.Close()
	}
	d.GRPCAddr = net.JoinHostPort("127.0.0.1", strconv.Itoa(d.ports[0]))
	d.HTTPPort = d.ports[1]
}

func (d *Daprd) writeComponents(t testing.TB) {
	t.Helper()
	comps := []Component{
		{Name: d.StateStore, Type: "state.redis", Metadata: map[string]string{
			"redisHost": d.RedisAddr,
			// Dapr prefixes keys with the app id by default. A prefix per
			// test keeps parallel tests apart.
			"keyPrefix": d.Prefix,
		}},
		{Name: d.PubSub, Type: "pubsub.redis", Metadata: map[string]string{
			"redisHost":  cmp.Or(d.opts.PubSubRedisAddr, d.RedisAddr),
			"consumerID": d.Prefix + "-" + d.opts.AppID,
		}},
	}
	comps = append(comps, d.opts.Components...)
	for _, c := range comps {
		path := filepath.Join(d.resources, c.Name+".yaml")
		if err := os.WriteFile(path, []byte(componentYAML(c)), 0o600); err != nil {
			t.Fatalf("write component %s: %v", c.Name, err)
		}
	}
}

func componentYAML(c Component) string {
	var b strings.Builder
	fmt.Fprintf(&b, "apiVersion: dapr.io/v1alpha1\nkind: Component\nmetadata:\n  name: %s\nspec:\n  type: %s\n  version: v1\n",
		strconv.Quote(c.Name), strconv.Quote(c.Type))
	if len(c.Metadata) > 0 {
		b.WriteString("  metadata:\n")
		for _, k := range slices.Sorted(maps.Keys(c.Metadata)) {
			fmt.Fprintf(&b, "  - name: %s\n    value: %s\n", strconv.Quote(k), strconv.Quote(c.Metadata[k]))
		}
	}
	return b.String()
}

// Start starts the sidecar and waits until its health endpoint returns 204.
// It fails the test, with daprd's output, when daprd exits or does not get
// healthy in time. The sidecar is killed when the test ends.
//
// The ports are picked free but closed again before daprd binds them, so
// another process can take one in between. When daprd exits because a
// port is in use, Start picks new internal gRPC and metrics ports, which
// no client connects to, and tries again, at most startAttempts times in all.
// Sidecar also picks new API ports, since nothing has used them yet.
func (d *Daprd) Start(t testing.TB) {
	t.Helper()
	d.start(t, false)
}

// startAttempts bounds the starts of one sidecar that lose a port.
const startAttempts = 3

func (d *Daprd) start(t testing.TB, newAPIPorts bool) {
	t.Helper()
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.cmd != nil {
		t.Fatalf("daprd %s started twice", d.Prefix)
	}
	t.Cleanup(func() { d.Kill(t) })
	for attempt := 1; ; attempt++ {
		outputBefore := d.output.Len()
		exited := d.launch(t)
		err := d.waitHealthy(exited)
		if err == nil {
			return
		}
		lostPort := strings.Contains(d.output.String()[outputBefore:], "address already in use")
		if !errors.Is(err, errExited) || !lostPort || attempt == startAttempts {
			t.Fatalf("%v:\n%s", err, d.output.tail(8<<10))
		}
		t.Logf("daprd %s lost a port to another process (attempt %d of %d); starting it on new ports", d.Prefix, attempt, startAttempts)
		d.repickPorts(t, newAPIPorts)
	}
}

var errExited = errors.New("daprd exited before it was healthy")

// launch starts daprd on d's ports and returns a channel closed when it
// exits.
func (d *Daprd) launch(t testing.TB) chan struct{} {
	t.Helper()
	args := []string{
		"--app-id", d.opts.AppID,
		"--resources-path", d.resources,
		"--dapr-grpc-port", strconv.Itoa(d.ports[0]),
		"--dapr-http-port", strconv.Itoa(d.ports[1]),
		"--dapr-internal-grpc-port", strconv.Itoa(d.ports[2]),
		"--metrics-port", strconv.Itoa(d.ports[3]),
		"--dapr-listen-addresses", "127.0.0.1",
		"--log-level", d.opts.LogLevel,
	}
	if d.opts.AppPort != 0 {
		args = append(args, "--app-port", strconv.Itoa(d.opts.AppPort), "--app-protocol", "http")
	}
	cmd := exec.Command(d.bin, args...)
	cmd.Stdout = d.output
	cmd.Stderr = d.output
	if err := cmd.Start(); err != nil {
		t.Fatalf("start %s: %v", d.bin, err)
	}
	exited := make(chan struct{})
	go func() {
		cmd.Wait()
		close(exited)
	}()
	d.cmd, d.exited = cmd, exited
	return exited
}

// waitHealthy polls the health endpoint until it returns 204, daprd exits
// (errExited) or startTimeout passes.
func (d *Daprd) waitHealthy(exited chan struct{}) error {
	url := fmt.Sprintf("http://127.0.0.1:%d/v1.0/healthz", d.HTTPPort)
	client := &http.Client{Timeout: time.Second}
	deadline := time.Now().Add(startTimeout)
	for {
		select {
		case <-exited:
			return errExited
		default:
		}
		if resp, err := client.Get(url); err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusNoContent {
				return nil
			}
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("daprd not healthy at %s after %v", url, startTimeout)
		}
		time.Sleep(pollInterval)
	}
}

// Kill stops the sidecar with SIGKILL, as a crash would, and waits for it
// to exit. Killing a sidecar that is not running does nothing.
func (d *Daprd) Kill(t testing.TB) {
	t.Helper()
	d.mu.Lock()
	cmd, exited := d.cmd, d.exited
	d.mu.Unlock()
	if cmd == nil {
		return
	}
	cmd.Process.Kill()
	select {
	case <-exited:
	case <-time.After(startTimeout):
		t.Errorf("daprd %s did not exit %v after SIGKILL", d.Prefix, startTimeout)
	}
}

// Binary returns the path of the daprd binary: $WSM_DAPRD when set, else
// what .ci/ensure-daprd prints, building the binary first if needed.
func Binary(t testing.TB) string {
	t.Helper()
	if p := os.Getenv("WSM_DAPRD"); p != "" {
		if _, err := os.Stat(p); err != nil {
			t.Fatalf("WSM_DAPRD=%s: %v", p, err)
		}
		return p
	}
	script := repoFile(t, ".ci/ensure-daprd")
	ctx, cancel := context.WithTimeout(context.Background(), buildTimeout)
	defer cancel()
	var out bytes.Buffer
	cmd := exec.CommandContext(ctx, script)
	cmd.Stdout = &out
	cmd.Stderr = os.Stderr // a build reports its progress here
	if err := cmd.Run(); err != nil {
		t.Fatalf("no daprd binary: %s failed: %v; set WSM_DAPRD to a daprd binary or fix the build", script, err)
	}
	p := strings.TrimSpace(out.String())
	if _, err := os.Stat(p); err != nil {
		t.Fatalf("no daprd binary: %s printed %q: %v", script, p, err)
	}
	return p
}

// EnsureRedis runs .ci/ensure-redis, which starts a Redis on
// DefaultRedisAddr unless one responds there.
func EnsureRedis(t testing.TB) {
	t.Helper()
	script := repoFile(t, ".ci/ensure-redis")
	out, err := exec.Command(script).CombinedOutput()
	if err != nil {
		t.Fatalf("no Redis on %s: %s failed: %v\n%s", DefaultRedisAddr, script, err, out)
	}
}

// repoFile finds a file of the repository by walking up from the test's
// working directory, which go test sets to the package directory.
func repoFile(t testing.TB, rel string) string {
	t.Helper()
	dir, err := os.Getwd()
	if err != nil {
		t.Fatalf("find %s: %v", rel, err)
	}
	for range 32 {
		p := filepath.Join(dir, rel)
		if _, err := os.Stat(p); err == nil {
			return p
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			break
		}
		dir = parent
	}
	t.Fatalf("find %s: not in any parent of the working directory", rel)
	return ""
}

func randomHex(t testing.TB, n int) string {
	t.Helper()
	b := make([]byte, n)
	if _, err := rand.Read(b); err != nil {
		t.Fatalf("random prefix: %v", err)
	}
	return hex.EncodeToString(b)
}

// syncBuffer collects a process's output from its copying goroutines.
type syncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

func (b *syncBuffer) Len() int {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Len()
}

func (b *syncBuffer) tail(n int) string {
	s := b.String()
	if len(s) > n {
		return "..." + s[len(s)-n:]
	}
	return s
}

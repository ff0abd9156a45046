package main

import (
	"bufio"
	"cmp"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/cloudevents/sdk-go/v2/event"
	"github.com/golang-jwt/jwt/v5"
	"github.com/lxzan/gws"

	"github.com/virtufin/websocketmanager/internal/daprtest"
	"github.com/virtufin/websocketmanager/projections"
	"github.com/virtufin/websocketmanager/schemas"
)

// Liveness settings of both instances in BenchmarkReclaimAfterKill. The
// baseline a reclaim is compared with is reclaimTTL plus one
// reclaimInterval: the survivor needs the TTL without a heartbeat before it
// calls the peer suspect, and up to one more interval before its next pass.
const (
	reclaimBeat     = time.Second
	reclaimTTL      = 3 * time.Second
	reclaimInterval = time.Second
)

// Bounds of the benchmark's waits and loops.
const (
	// connectConcurrency bounds the clients dialling at once, far below
	// the listen backlog, so no handshake waits in a queue until it times
	// out.
	connectConcurrency = 64
	// connectTimeout bounds connecting all clients. 10,000 took 8 to 26 s
	// on a 2-core machine, the longer times while other jobs ran.
	connectTimeout = 5 * time.Minute
	// reclaimTimeout bounds the wait from the kill to the last reclaim,
	// many times the baseline.
	reclaimTimeout = 2 * time.Minute
	// reclaimPoll is the time between two polls of the survivor. A poll
	// itself takes longer while thousands of connections are still listed.
	reclaimPoll = 50 * time.Millisecond
	// fdSlack covers the files a process holds besides the sockets of the
	// benchmark's connections.
	fdSlack = 1024
)

// BenchmarkReclaimAfterKill measures the time from SIGKILL of an instance
// holding N connections to the survivor's last reclaim of them, on the Dapr
// backend over Redis. Two wsm processes run, each with its own sidecar, and
// the sidecars share one key prefix. Every client connects to the first
// process, which is then killed together with its sidecar. The time ends at the first poll where
// the survivor's /v1/connections?instance=<dead> lists nothing, confirmed by
// N reclaimed events of exactly those connections in the survivor's stream.
//
// Each iteration runs the whole scenario with fresh processes; only the
// kill-to-reclaim part is timed. Run it with -benchtime=1x. Reported, each
// averaged over the iterations:
//
//   - s/reclaim: the measured time, and x-baseline, its ratio to the
//     baseline of reclaimTTL plus reclaimInterval;
//   - s/suspect: until the survivor logs the peer as suspect;
//   - s/last-event: until the time stamp of the last reclaimed event,
//     which does not depend on the polling.
func BenchmarkReclaimAfterKill(b *testing.B) {
	if testing.Short() {
		b.Skip("runs two Dapr sidecars, two wsm processes and up to 10,000 clients")
	}
	for _, n := range []int{1000, 10000} {
		b.Run(fmt.Sprintf("conns=%d", n), func(b *testing.B) {
			raiseNoFile(b, uint64(n+fdSlack))
			b.StopTimer()
			var sum reclaimTiming
			for range b.N {
				r := reclaimAfterKill(b, n)
				sum.total += r.total
				sum.suspect += r.suspect
				sum.lastEvent += r.lastEvent
			}
			baseline := reclaimTTL + reclaimInterval
			mean := func(d time.Duration) float64 { return d.Seconds() / float64(b.N) }
			b.ReportMetric(mean(sum.total), "s/reclaim")
			b.ReportMetric(mean(sum.total)/baseline.Seconds(), "x-baseline")
			b.ReportMetric(mean(sum.suspect), "s/suspect")
			b.ReportMetric(mean(sum.lastEvent), "s/last-event")
		})
	}
}

// reclaimTiming holds the times of one iteration, each from the kill.
type reclaimTiming struct {
	total     time.Duration // to the poll that found everything reclaimed
	suspect   time.Duration // to the survivor's "peer is suspect" line
	lastEvent time.Duration // to the time of the last reclaimed event
}

// reclaimAfterKill runs one iteration: it starts the pair, connects n
// clients to the victim, kills it with the timer running and stops the
// timer once the survivor has reclaimed every connection.
func reclaimAfterKill(b *testing.B, n int) reclaimTiming {
	prefix := "wsmbench-" + randomSuffix(b)
	topic := prefix + ".system-events"
	victimDaprd := daprtest.Sidecar(b, daprtest.Options{Prefix: prefix})
	survivorDaprd := daprtest.Sidecar(b, daprtest.Options{Prefix: prefix})
	// The victim logs at warn: at info it would log every connection.
	victim := startReclaimProc(b, victimDaprd, "pod-victim", topic, "warn")
	survivor := startReclaimProc(b, survivorDaprd, "pod-survivor", topic, "info")
	defer survivor.stop(b, survivorDaprd)
	defer victim.stop(b, victimDaprd)
	checkNoFile(b, victim, uint64(n+fdSlack))

	started := time.Now()
	clients := connectClients(b, victim, n)
	defer func() {
		for _, c := range clients {
			c.NetConn().Close()
		}
	}()
	b.Logf("conns=%d: connected in %v (%.0f connects/s)", n, time.Since(started).Round(time.Millisecond),
		float64(n)/time.Since(started).Seconds())
	want := map[string]bool{}
	for _, c := range clients {
		id, _ := c.Session().Load("id")
		want[id.(string)] = true
	}
	if len(want) != n {
		b.Fatalf("got %d distinct connection ids from welcomes, want %d", len(want), n)
	}
	waitUntil(b, time.Minute, "the survivor to list every connection of the victim", func() bool {
		count, err := survivor.connectionCount("pod-victim")
		return err == nil && count == n
	})

	b.StartTimer()
	killedAt := time.Now()
	if err := victim.cmd.Process.Signal(syscall.SIGKILL); err != nil {
		b.Fatalf("SIGKILL the victim: %v", err)
	}
	<-victim.done
	victimDaprd.Kill(b)

	// Listing thousands of open connections costs the survivor and its
	// sidecar more than a reclaim batch does, so polling the list from the
	// kill on slows the reclaim it measures. Until the connection that the
	// reclaimer takes last, in shard order, shows as closed, only that one
	// entry is polled. It is closed once the last reclaim lands, so the gate
	// never delays the end. If the reclaim order changes, the list is only
	// polled for longer.
	lastID := lastInReclaimOrder(want)
	var r reclaimTiming
	var polls, listings int
	gated := true
	deadline := killedAt.Add(reclaimTimeout)
	for ; ; polls++ {
		if time.Now().After(deadline) || polls > int(reclaimTimeout/reclaimPoll) {
			b.Fatalf("conns=%d: not reclaimed %v after SIGKILL (%d polls); survivor stderr:\n%s",
				n, time.Since(killedAt).Round(time.Millisecond), polls, survivor.stderrTail())
		}
		if gated {
			st, err := survivor.connectionState(lastID)
			gated = err != nil || st != "closed"
		}
		if !gated {
			listings++
			count, err := survivor.connectionCount("pod-victim")
			seen := time.Now()
			if err == nil && count == 0 {
				b.StopTimer()
				last, got, err := survivor.reclaimedEvents("pod-survivor", "pod-victim")
				if err == nil && sameSet(got, want) {
					r.total = seen.Sub(killedAt)
					r.lastEvent = last.Sub(killedAt)
					break
				}
				b.Logf("conns=%d: no connection listed after %v, but the log holds %d of %d reclaimed events (err %v)",
					n, seen.Sub(killedAt).Round(time.Millisecond), len(got), n, err)
				b.StartTimer()
			}
		}
		time.Sleep(reclaimPoll)
	}

	suspectAt, ok := survivor.firstLine("peer is suspect", killedAt)
	if !ok {
		b.Fatalf("conns=%d: the survivor reclaimed without logging the victim as suspect", n)
	}
	r.suspect = suspectAt.Sub(killedAt)
	b.Logf("conns=%d: reclaimed in %v (suspect after %v, last event stamped %v after the kill); %d polls, %d of them listing the open connections",
		n, r.total.Round(time.Millisecond), r.suspect.Round(time.Millisecond), r.lastEvent.Round(time.Millisecond),
		polls+1, listings)
	return r
}

func randomSuffix(b *testing.B) string {
	p := make([]byte, 6)
	if _, err := rand.Read(p); err != nil {
		b.Fatal(err)
	}
	return hex.EncodeToString(p)
}

// raiseNoFile raises this process's soft limit on open files to at least
// need, and the hard limit too when it is lower, which needs privilege.
// Child processes inherit the limit set here. Without a Setrlimit call they
// would get the soft limit this process started with, because the Go
// runtime raises its own limit at start and restores the old one in
// children.
func raiseNoFile(b *testing.B, need uint64) {
	var lim syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &lim); err != nil {
		b.Fatalf("read the open files limit: %v", err)
	}
	if lim.Cur < need {
		lim.Cur = need
		lim.Max = max(lim.Max, need)
	}
	if err := syscall.Setrlimit(syscall.RLIMIT_NOFILE, &lim); err != nil {
		b.Fatalf("set the open files limit to %d (hard %d): %v; raise `ulimit -n` before the run", lim.Cur, lim.Max, err)
	}
}

// checkNoFile fails the benchmark unless the soft limit on open files in
// the process's /proc/<pid>/limits is at least need.
func checkNoFile(b *testing.B, p *reclaimProc, need uint64) {
	raw, err := os.ReadFile(filepath.Join("/proc", strconv.Itoa(p.cmd.Process.Pid), "limits"))
	if err != nil {
		b.Fatalf("read the limits of %s: %v", p.id, err)
	}
	for line := range strings.SplitSeq(string(raw), "\n") {
		rest, ok := strings.CutPrefix(line, "Max open files")
		if !ok {
			continue
		}
		fields := strings.Fields(rest)
		if len(fields) == 0 {
			break
		}
		soft, err := strconv.ParseUint(fields[0], 10, 64)
		if fields[0] != "unlimited" && (err != nil || soft < need) {
			b.Fatalf("%s may open %s files, want at least %d", p.id, fields[0], need)
		}
		return
	}
	b.Fatalf("no open files limit in the limits of %s:\n%s", p.id, raw)
}

var (
	benchBuildOnce sync.Once
	benchBinPath   string
	benchBuildErr  error
)

// benchBinary builds the wsm binary once per benchmark run.
func benchBinary(b *testing.B) string {
	benchBuildOnce.Do(func() {
		dir, err := os.MkdirTemp("", "wsm-bench-bin")
		if err != nil {
			benchBuildErr = err
			return
		}
		benchBinPath = filepath.Join(dir, "wsm")
		if out, err := exec.Command("go", "build", "-o", benchBinPath, ".").CombinedOutput(); err != nil {
			benchBuildErr = fmt.Errorf("go build: %v\n%s", err, out)
		}
	})
	if benchBuildErr != nil {
		b.Fatal(benchBuildErr)
	}
	return benchBinPath
}

// reclaimProc is a wsm process of the benchmark. It stamps the stderr lines
// it watches for with the time they arrive, which is finer than the
// second-resolution time stamps in the lines.
type reclaimProc struct {
	id   string
	cmd  *exec.Cmd
	base string // http://host:port
	done chan struct{}

	mu    sync.Mutex
	lines []stampedLine // the last lines of stderr
}

type stampedLine struct {
	at   time.Time
	text string
}

// keptLines bounds the stderr lines a reclaimProc keeps.
const keptLines = 2000

func startReclaimProc(b *testing.B, d *daprtest.Daprd, instanceID, topic, logLevel string) *reclaimProc {
	cmd := exec.Command(benchBinary(b), "serve", "--backend", "dapr", "--dapr-address", d.GRPCAddr,
		"--listen", "127.0.0.1:0", "--instance-id", instanceID, "--events-topic", topic,
		"--heartbeat-interval", reclaimBeat.String(), "--heartbeat-ttl", reclaimTTL.String(),
		"--reclaim-interval", reclaimInterval.String(), "--log-level", logLevel)
	cmd.Env = append(os.Environ(), "WSM_JWT_SECRET="+testSecret)
	p := &reclaimProc{id: instanceID, cmd: cmd, done: make(chan struct{})}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		b.Fatal(err)
	}
	stderr, err := cmd.StderrPipe()
	if err != nil {
		b.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { p.stop(b, nil) })

	var pipes sync.WaitGroup
	pipes.Go(func() { p.readStderr(stderr) })
	addr := make(chan string, 1)
	pipes.Go(func() {
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			if rest, ok := strings.CutPrefix(sc.Text(), "wsm serving: clients connect to ws://"); ok {
				addr <- strings.TrimSuffix(strings.Fields(rest)[0], "/ws,")
			}
		}
		io.Copy(io.Discard, stdout)
	})
	// Wait closes the pipes, so it runs after both readers are done.
	go func() {
		pipes.Wait()
		cmd.Wait()
		close(p.done)
	}()

	select {
	case a := <-addr:
		p.base = "http://" + strings.TrimSuffix(a, "/ws")
	case <-p.done:
		b.Fatalf("wsm %s exited before serving:\n%s", instanceID, p.stderrTail())
	case <-time.After(time.Minute):
		b.Fatalf("wsm %s did not serve within a minute:\n%s", instanceID, p.stderrTail())
	}
	return p
}

func (p *reclaimProc) readStderr(r io.Reader) {
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		line := stampedLine{at: time.Now(), text: sc.Text()}
		p.mu.Lock()
		if len(p.lines) == keptLines {
			p.lines = append(p.lines[:0], p.lines[keptLines/2:]...)
		}
		p.lines = append(p.lines, line)
		p.mu.Unlock()
	}
	io.Copy(io.Discard, r)
}

// firstLine returns the arrival time of the first stderr line after since
// that contains msg.
func (p *reclaimProc) firstLine(msg string, since time.Time) (time.Time, bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, l := range p.lines {
		if l.at.After(since) && strings.Contains(l.text, msg) {
			return l.at, true
		}
	}
	return time.Time{}, false
}

func (p *reclaimProc) stderrTail() string {
	p.mu.Lock()
	defer p.mu.Unlock()
	var sb strings.Builder
	for _, l := range p.lines[max(0, len(p.lines)-40):] {
		sb.WriteString(l.text)
		sb.WriteByte('\n')
	}
	return sb.String()
}

// stop kills the process and, when given, its sidecar. Stopping twice does
// nothing more.
func (p *reclaimProc) stop(b *testing.B, d *daprtest.Daprd) {
	p.cmd.Process.Kill()
	select {
	case <-p.done:
	case <-time.After(30 * time.Second):
		b.Errorf("wsm %s did not exit 30s after SIGKILL", p.id)
	}
	if d != nil {
		d.Kill(b)
	}
}

func (p *reclaimProc) wsURL() string { return "ws" + strings.TrimPrefix(p.base, "http") + "/ws" }

// benchHTTP is the client of every poll; its timeout bounds one poll.
var benchHTTP = &http.Client{Timeout: 30 * time.Second}

// connectionCount returns how many open connections the process lists for
// an instance.
func (p *reclaimProc) connectionCount(instanceID string) (int, error) {
	resp, err := benchHTTP.Get(p.base + "/v1/connections?instance=" + url.QueryEscape(instanceID))
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return 0, fmt.Errorf("GET /v1/connections: %s", resp.Status)
	}
	var body struct {
		Count int `json:"count"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&body); err != nil {
		return 0, err
	}
	return body.Count, nil
}

// connectionState returns the state, open or closed, that the process
// shows for one connection.
func (p *reclaimProc) connectionState(connID string) (string, error) {
	resp, err := benchHTTP.Get(p.base + "/v1/connections/" + url.PathEscape(connID))
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return "", fmt.Errorf("GET /v1/connections/%s: %s", connID, resp.Status)
	}
	var body struct {
		State string `json:"state"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&body); err != nil {
		return "", err
	}
	return body.State, nil
}

// lastInReclaimOrder returns the connection id that a reclaimer appends
// last: it takes the ids by shard, then by id.
func lastInReclaimOrder(ids map[string]bool) string {
	var last string
	for id := range ids {
		if last == "" || cmp.Or(cmp.Compare(projections.ShardOf(id), projections.ShardOf(last)), strings.Compare(id, last)) > 0 {
			last = id
		}
	}
	return last
}

// reclaimedEvents replays the reclaimed events that instanceID wrote for
// connections of dead, and returns their connection ids and the latest
// event time.
func (p *reclaimProc) reclaimedEvents(instanceID, dead string) (time.Time, map[string]bool, error) {
	q := url.Values{"type": {schemas.TypeReclaimed}, "instance": {instanceID}}
	resp, err := benchHTTP.Get(p.base + "/v1/admin/replay?" + q.Encode())
	if err != nil {
		return time.Time{}, nil, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return time.Time{}, nil, fmt.Errorf("GET /v1/admin/replay: %s", resp.Status)
	}
	var last time.Time
	got := map[string]bool{}
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		var ev event.Event
		if err := json.Unmarshal(sc.Bytes(), &ev); err != nil {
			return last, got, fmt.Errorf("replay line %q: %w", sc.Text(), err)
		}
		var d schemas.Reclaimed
		if err := ev.DataAs(&d); err != nil {
			return last, got, fmt.Errorf("reclaimed event %s: %w", ev.ID(), err)
		}
		if d.DeadInstanceID != dead {
			continue
		}
		got[d.ConnectionID] = true
		if ev.Time().After(last) {
			last = ev.Time()
		}
	}
	return last, got, sc.Err()
}

// lightClient keeps a connection open with little memory. Its read loop
// replies to pings, and it stores its connection id from the welcome.
type lightClient struct {
	gws.BuiltinEventHandler
	welcome chan struct{}
}

func (h *lightClient) OnMessage(c *gws.Conn, m *gws.Message) {
	defer m.Close()
	var w struct {
		Type         string `json:"type"`
		ConnectionID string `json:"connectionId"`
	}
	if json.Unmarshal(m.Bytes(), &w) != nil || w.Type != "welcome" {
		return
	}
	c.Session().Store("id", w.ConnectionID)
	select {
	case h.welcome <- struct{}{}:
	default:
	}
}

// connectClients connects n clients, at most connectConcurrency at a time,
// four per user, each waiting for its welcome, so every connection is in
// the log when it returns.
func connectClients(b *testing.B, p *reclaimProc, n int) []*gws.Conn {
	ctx, cancel := context.WithTimeout(context.Background(), connectTimeout)
	defer cancel()
	conns := make([]*gws.Conn, n)
	var failed atomic.Int64
	var wg sync.WaitGroup
	sem := make(chan struct{}, connectConcurrency)
launch:
	for i := range n {
		select {
		case sem <- struct{}{}:
		case <-ctx.Done():
			failed.Add(int64(n - i)) // never started
			break launch
		}
		wg.Go(func() {
			defer func() { <-sem }()
			c, err := dialLight(p.wsURL(), fmt.Sprintf("user-%d", i/4))
			if err != nil {
				if failed.Add(1) == 1 {
					b.Errorf("client %d: %v", i, err)
				}
				return
			}
			conns[i] = c
		})
	}
	wg.Wait()
	if f := failed.Load(); f > 0 {
		for _, c := range conns {
			if c != nil {
				c.NetConn().Close()
			}
		}
		b.Fatalf("%d of %d clients failed to connect within %v", f, n, connectTimeout)
	}
	return conns
}

func dialLight(wsURL, user string) (*gws.Conn, error) {
	tok, err := jwt.NewWithClaims(jwt.SigningMethodHS256, jwt.MapClaims{
		"sub": user, "exp": time.Now().Add(time.Hour).Unix(),
	}).SignedString([]byte(testSecret))
	if err != nil {
		return nil, err
	}
	h := &lightClient{welcome: make(chan struct{}, 1)}
	c, _, err := gws.NewClient(h, &gws.ClientOption{
		Addr:               wsURL,
		RequestHeader:      http.Header{"Authorization": {"Bearer " + tok}},
		ReadBufferSize:     1024,
		ReadMaxPayloadSize: 16 << 10,
		HandshakeTimeout:   10 * time.Second,
	})
	if err != nil {
		return nil, err
	}
	go c.ReadLoop()
	select {
	case <-h.welcome:
		return c, nil
	case <-time.After(20 * time.Second):
		c.NetConn().Close()
		return nil, fmt.Errorf("no welcome within 20s")
	}
}

// waitUntil polls cond every 250 ms until it holds, failing after timeout.
func waitUntil(b *testing.B, timeout time.Duration, what string, cond func() bool) {
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			b.Fatalf("timed out after %v waiting for %s", timeout, what)
		}
		time.Sleep(250 * time.Millisecond)
	}
}

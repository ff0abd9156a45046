package main

import (
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"math/rand/v2"
	"net/http"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/cloudevents/sdk-go/v2/event"
	"github.com/lxzan/gws"

	"github.com/virtufin/websocketmanager/internal/daprtest"
	"github.com/virtufin/websocketmanager/schemas"
)

// Load and timing of the rolling restart.
const (
	rollPods    = 3
	rollClients = 60
	rollUsers   = 20 // clients share users, so each user has several connections
	// rollMaxConns bounds the connections one client opens. The trickle
	// cycles a client about every six seconds on average, and each drain
	// displaces it once at most, so a roll of under a minute stays far below.
	rollMaxConns = 40
	// rollMaxDialFailures bounds the failed dials of one client. A dial
	// fails when it races a pod that has just started draining.
	rollMaxDialFailures = 50
	rollDialRetry       = 25 * time.Millisecond
	rollWelcomeTimeout  = 15 * time.Second
	// rollChurnEvery is the pace of the trickle: one client closes with
	// 1000 and reconnects every interval.
	rollChurnEvery = 100 * time.Millisecond
	// rollShutdown is wsm's default --shutdown-timeout, which the test keeps.
	rollShutdown = 10 * time.Second
	// rollPausedPod is frozen in the middle of its drain for rollPause. Its
	// record then shows draining well past the heartbeat TTL while its peers
	// keep running reclaim passes.
	rollPausedPod = 1
	rollPause     = fleetTTL + 4*fleetReclaim
)

// balancer models the Service in front of a StatefulSet. It sends each
// dial to a ready pod chosen at random. A pod leaves it when it starts
// terminating, and its successor joins once it serves.
type balancer struct {
	mu    sync.Mutex
	ready map[string]string // pod name -> WebSocket URL
	// watchPod and watch, when set, report the first 1001 close that a
	// connection to that pod receives.
	watchPod string
	watch    chan struct{}
}

// pick returns the preferred pod when it is ready, else a random ready one.
func (b *balancer) pick(prefer string) (pod, url string, ok bool) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if addr, found := b.ready[prefer]; found {
		return prefer, addr, true
	}
	if len(b.ready) == 0 {
		return "", "", false
	}
	pods := slices.Sorted(maps.Keys(b.ready))
	pod = pods[rand.IntN(len(pods))]
	return pod, b.ready[pod], true
}

func (b *balancer) set(pod, url string) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.ready[pod] = url
}

func (b *balancer) remove(pod string) {
	b.mu.Lock()
	defer b.mu.Unlock()
	delete(b.ready, pod)
}

// watchGoingAway returns a channel that receives once when a connection to
// pod is closed with 1001.
func (b *balancer) watchGoingAway(pod string) <-chan struct{} {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.watchPod, b.watch = pod, make(chan struct{}, 1)
	return b.watch
}

func (b *balancer) goingAway(pod string) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.watch != nil && b.watchPod == pod {
		select {
		case b.watch <- struct{}{}:
		default:
		}
	}
}

// rollConn is one connection a client got: whom it reached, and how it
// ended.
type rollConn struct {
	pod     string
	socket  *gws.Conn
	welcome chan struct{}
	closed  chan struct{}

	// Written on the read goroutine before welcome is closed.
	id, instance, incarnation string
	welcomed                  bool
	// code is the close code the server sent, 0 without a close frame.
	// Written before closed is closed.
	code uint16
	// byClient marks a connection the client closed itself with 1000.
	byClient atomic.Bool
}

func (c *rollConn) open() bool {
	select {
	case <-c.closed:
		return false
	default:
		return true
	}
}

type rollHandler struct {
	gws.BuiltinEventHandler
	conn *rollConn
	lb   *balancer
}

func (h *rollHandler) OnMessage(_ *gws.Conn, msg *gws.Message) {
	defer msg.Close()
	var body struct {
		Type         string `json:"type"`
		ConnectionID string `json:"connectionId"`
		InstanceID   string `json:"instanceId"`
		Incarnation  string `json:"incarnation"`
	}
	if h.conn.welcomed || json.Unmarshal(msg.Bytes(), &body) != nil || body.Type != "welcome" {
		return
	}
	h.conn.id, h.conn.instance, h.conn.incarnation, h.conn.welcomed = body.ConnectionID, body.InstanceID, body.Incarnation, true
	close(h.conn.welcome)
}

func (h *rollHandler) OnClose(_ *gws.Conn, err error) {
	var closeErr *gws.CloseError
	if errors.As(err, &closeErr) {
		h.conn.code = closeErr.Code
	}
	if h.conn.code == 1001 {
		h.lb.goingAway(h.conn.pod)
	}
	close(h.conn.closed)
}

// rollClient is one user's app: it keeps one connection open, reconnects
// through the balancer when a draining pod closes it with 1001, and closes
// and reopens it when the trickle picks it.
type rollClient struct {
	user, token string
	first       string // pod of the first dial, so the clients start evenly spread
	lb          *balancer
	cycle       chan struct{}

	mu       sync.Mutex
	conns    []*rollConn
	problems []string
	// unwelcomed counts, per pod, the sockets closed with 1001 before
	// their welcome message. Their ids never reach the client.
	unwelcomed map[string]int
}

func (c *rollClient) problem(format string, args ...any) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.problems = append(c.problems, fmt.Sprintf(format, args...))
}

func (c *rollClient) connections() ([]*rollConn, []string, map[string]int) {
	c.mu.Lock()
	defer c.mu.Unlock()
	return slices.Clone(c.conns), slices.Clone(c.problems), maps.Clone(c.unwelcomed)
}

// current returns the last connection and whether it is open.
func (c *rollClient) current() (*rollConn, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if len(c.conns) == 0 {
		return nil, false
	}
	last := c.conns[len(c.conns)-1]
	return last, last.open()
}

// run keeps a connection until stop is closed, then returns and leaves the
// last connection as it is.
func (c *rollClient) run(stop <-chan struct{}) {
	prefer := c.first
	failures := 0
	for n := 0; n < rollMaxConns; {
		select {
		case <-stop:
			return
		default:
		}
		conn, err := c.connect(prefer)
		if err != nil {
			failures++
			if failures > rollMaxDialFailures {
				c.problem("gave up after %d failed dials, last: %v", failures, err)
				return
			}
			select {
			case <-stop:
				return
			case <-time.After(rollDialRetry):
			}
			continue
		}
		n++
		prefer = ""

		select {
		case <-conn.closed:
			if conn.code != 1001 {
				c.problem("connection %s on %s closed with %d, want only 1001 from a draining pod", conn.id, conn.pod, conn.code)
			}
			// A client closed with 1001 (going away) reconnects at once,
			// and the balancer no longer sends it to the draining pod.
		case <-c.cycle:
			if conn.socket.WriteClose(1000, []byte("cycling")) == nil {
				conn.byClient.Store(true)
			}
			select {
			case <-conn.closed:
			case <-time.After(rollWelcomeTimeout):
				c.problem("connection %s on %s did not close within %v of the client's close", conn.id, conn.pod, rollWelcomeTimeout)
				return
			}
		case <-stop:
			return
		}
	}
}

var errNoReadyPod = errors.New("no ready pod")

func (c *rollClient) connect(prefer string) (*rollConn, error) {
	pod, url, ok := c.lb.pick(prefer)
	if !ok {
		return nil, errNoReadyPod
	}
	conn := &rollConn{pod: pod, welcome: make(chan struct{}), closed: make(chan struct{})}
	header := http.Header{"Authorization": {"Bearer " + c.token}}
	socket, _, err := gws.NewClient(&rollHandler{conn: conn, lb: c.lb}, &gws.ClientOption{Addr: url, RequestHeader: header})
	if err != nil {
		return nil, fmt.Errorf("dial %s: %w", pod, err)
	}
	conn.socket = socket
	go socket.ReadLoop()

	select {
	case <-conn.welcome:
		c.mu.Lock()
		c.conns = append(c.conns, conn)
		c.mu.Unlock()
		return conn, nil
	case <-conn.closed:
		// A pod that starts draining during the handshake, or while it
		// appends the connected event, closes the socket with 1001 before
		// the welcome message.
		if conn.code != 1001 {
			c.problem("%s closed a socket with %d before the welcome message, want 1001 or a welcome", pod, conn.code)
		}
		c.mu.Lock()
		if c.unwelcomed == nil {
			c.unwelcomed = map[string]int{}
		}
		c.unwelcomed[pod]++
		c.mu.Unlock()
		return nil, fmt.Errorf("%s closed the socket with %d before the welcome message", pod, conn.code)
	case <-time.After(rollWelcomeTimeout):
		socket.NetConn().Close()
		c.problem("no welcome message from %s within %v", pod, rollWelcomeTimeout)
		return nil, fmt.Errorf("no welcome message from %s within %v", pod, rollWelcomeTimeout)
	}
}

// instanceRecord is an entry of GET /v1/instances.
type instanceRecord struct {
	InstanceID      string `json:"instanceId"`
	Incarnation     string `json:"incarnation"`
	State           string `json:"state"`
	ConnectionCount int    `json:"connectionCount"`
	ReclaimedBy     string `json:"reclaimedBy"`
}

func instanceRecords(t *testing.T, svc *service) map[string]instanceRecord {
	t.Helper()
	var body struct {
		Instances []instanceRecord `json:"instances"`
	}
	getJSON(t, svc.base+"/v1/instances", &body)
	out := map[string]instanceRecord{}
	for _, r := range body.Instances {
		out[r.InstanceID] = r
	}
	return out
}

// connectionState returns the state of a connection entry ("open" or
// "closed") and how it was closed, or "" when there is no entry.
func connectionState(t *testing.T, svc *service, id string) (state, kind string) {
	t.Helper()
	resp, err := http.Get(svc.base + "/v1/connections/" + id)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if resp.StatusCode == http.StatusNotFound {
		return "", ""
	}
	var body struct {
		State  string `json:"state"`
		Closed *struct {
			Kind string `json:"kind"`
		} `json:"closed"`
	}
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("GET connection %s: %s", id, resp.Status)
	}
	if err := json.NewDecoder(resp.Body).Decode(&body); err != nil {
		t.Fatalf("GET connection %s: decode: %v", id, err)
	}
	if body.Closed != nil {
		kind = body.Closed.Kind
	}
	return body.State, kind
}

// rolled is one incarnation the roll stopped, and what replaced it.
type rolled struct {
	pod, incarnation, successor string
	exitCode                    int
	exitedAfter                 time.Duration
	paused                      bool
}

// TestFleetRollingRestart rolls a fleet of three instances one pod at a
// time under client load, as a StatefulSet update does. Each drain must
// close every socket it holds with 1001 and one server_shutdown event. No
// peer and no successor may reclaim anything. The views and the topic must
// match what the clients saw, and the views must rebuild from the log. One
// drain is frozen for longer than the heartbeat TTL, so a peer that treated
// a draining instance like a silent one would reclaim it.
func TestFleetRollingRestart(t *testing.T) {
	if testing.Short() {
		t.Skip("runs seven Dapr sidecars and six wsm processes")
	}
	prefix := fleetPrefix(t)
	topic := prefix + ".system-events"

	sub := startSubscriber(t, topic)
	subDaprd := daprtest.Prepare(t, daprtest.Options{Prefix: prefix, AppID: "wsm-subscriber", AppPort: sub.port})
	subDaprd.Start(t)

	lb := &balancer{ready: map[string]string{}}
	pods := make([]string, rollPods)
	sidecars := make([]*daprtest.Daprd, rollPods)
	svcs := make([]*service, rollPods)
	for i := range rollPods {
		pods[i] = fmt.Sprintf("pod-%d", i)
		sidecars[i] = daprtest.Sidecar(t, daprtest.Options{Prefix: prefix})
		svcs[i] = startDaprService(t, sidecars[i], pods[i], topic)
		lb.set(pods[i], svcs[i].wsURL())
	}

	clients := make([]*rollClient, rollClients)
	for i := range clients {
		user := fmt.Sprintf("user-%d", i%rollUsers)
		clients[i] = &rollClient{user: user, token: token(t, user), first: pods[i%rollPods], lb: lb, cycle: make(chan struct{}, 1)}
	}
	stop := make(chan struct{})
	var loops sync.WaitGroup
	for _, c := range clients {
		loops.Go(func() { c.run(stop) })
	}
	stopClients := sync.OnceFunc(func() { close(stop) })
	t.Cleanup(stopClients)
	waitFor(t, 30*time.Second, "every client to hold a connection", func() bool {
		for _, c := range clients {
			if _, open := c.current(); !open {
				return false
			}
		}
		return true
	})

	// The trickle closes and reopens one client's connection every
	// interval.
	stopChurn := make(chan struct{})
	var churn sync.WaitGroup
	var cycles atomic.Int64
	churn.Go(func() {
		tick := time.NewTicker(rollChurnEvery)
		defer tick.Stop()
		for {
			select {
			case <-stopChurn:
				return
			case <-tick.C:
			}
			select {
			case clients[rand.IntN(len(clients))].cycle <- struct{}{}:
				cycles.Add(1)
			default:
			}
		}
	})
	endChurn := sync.OnceFunc(func() { close(stopChurn); churn.Wait() })
	t.Cleanup(endChurn)

	var rolls []rolled
	for i, pod := range pods {
		peer := svcs[(i+1)%rollPods]
		record := instanceRecords(t, svcs[i])[pod]
		if record.Incarnation == "" || record.State != schemas.StateServing {
			t.Fatalf("%s before its roll: record %+v, want a serving incarnation", pod, record)
		}
		roll := rolled{pod: pod, incarnation: record.Incarnation, paused: i == rollPausedPod}

		// Kubernetes removes a terminating pod from the Service endpoints
		// at about the time it sends SIGTERM.
		lb.remove(pod)
		var goingAway <-chan struct{}
		if roll.paused {
			goingAway = lb.watchGoingAway(pod)
		}
		start := time.Now()
		if err := svcs[i].cmd.Process.Signal(syscall.SIGTERM); err != nil {
			t.Fatalf("SIGTERM %s: %v", pod, err)
		}
		if roll.paused {
			// The pod is frozen once it has announced draining and started
			// closing sockets, as a CPU-starved pod would be.
			select {
			case <-goingAway:
			case <-time.After(rollShutdown):
				t.Fatalf("%s: no client got a 1001 close within %v of SIGTERM", pod, rollShutdown)
			}
			svcs[i].cmd.Process.Signal(syscall.SIGSTOP)
			time.Sleep(rollPause) // the length of the freeze is the point, not a poll
			svcs[i].cmd.Process.Signal(syscall.SIGCONT)
		}
		select {
		case <-svcs[i].done:
		case <-time.After(rollShutdown + 5*time.Second):
			t.Fatalf("%s did not exit within %v of SIGTERM", pod, rollShutdown+5*time.Second)
		}
		roll.exitedAfter = time.Since(start)
		roll.exitCode = svcs[i].cmd.ProcessState.ExitCode()
		if roll.exitCode != 0 {
			t.Errorf("%s exited with %d after SIGTERM, want 0", pod, roll.exitCode)
		}
		if roll.exitedAfter > rollShutdown {
			t.Errorf("%s exited %v after SIGTERM, want within the shutdown timeout %v", pod, roll.exitedAfter, rollShutdown)
		}

		// A restarted pod gets a new sidecar, because the whole pod is
		// replaced. The old sidecar stops after wsm exited, which daprd's
		// --dapr-block-shutdown-duration arranges in a cluster.
		sidecars[i].Kill(t)
		sidecars[i] = daprtest.Sidecar(t, daprtest.Options{Prefix: prefix})
		svcs[i] = startDaprService(t, sidecars[i], pod, topic)
		waitFor(t, 20*time.Second, pod+"'s successor to be listed serving", func() bool {
			got := instanceRecords(t, peer)[pod]
			if got.Incarnation == roll.incarnation || got.State != schemas.StateServing {
				return false
			}
			roll.successor = got.Incarnation
			return true
		})
		lb.set(pod, svcs[i].wsURL())
		rolls = append(rolls, roll)
		t.Logf("%s: incarnation %s exited with %d after %v (paused: %v), and its successor %s serves",
			pod, roll.incarnation, roll.exitCode, roll.exitedAfter.Round(time.Millisecond), roll.paused, roll.successor)
	}

	endChurn()
	stopClients()
	waited := make(chan struct{})
	go func() { loops.Wait(); close(waited) }()
	select {
	case <-waited:
	case <-time.After(30 * time.Second):
		t.Fatal("client loops did not stop within 30s")
	}

	checkRollingRestart(t, clients, rolls, svcs, sidecars[rollPods-1], sub)
	t.Logf("load: %d clients, %d trickle cycles", len(clients), cycles.Load())
}

// checkRollingRestart compares what the clients saw with the views, the
// log and the topic.
func checkRollingRestart(t *testing.T, clients []*rollClient, rolls []rolled, svcs []*service, sidecar *daprtest.Daprd, sub *subscriber) {
	stopped := map[string]rolled{}
	successors := map[string]bool{}
	for _, r := range rolls {
		stopped[r.incarnation] = r
		successors[r.successor] = true
	}

	// What the clients saw.
	all := map[string]*rollConn{}
	open := map[string]bool{}
	goneAway := map[string]int{}   // 1001 closes per pod
	unwelcomed := map[string]int{} // 1001 closes before the welcome message per pod
	for _, c := range clients {
		conns, problems, early := c.connections()
		for _, p := range problems {
			t.Errorf("client of %s: %s", c.user, p)
		}
		for pod, n := range early {
			unwelcomed[pod] += n
		}
		for _, conn := range conns {
			all[conn.id] = conn
			if conn.instance != conn.pod {
				t.Errorf("connection %s: welcome names instance %q, dialed %q", conn.id, conn.instance, conn.pod)
			}
			// The state is read once, because the checks below compare the
			// views with this snapshot.
			switch {
			case conn.open():
				open[conn.id] = true
				if _, ok := stopped[conn.incarnation]; ok {
					t.Errorf("connection %s is still open on the stopped incarnation %s of %s", conn.id, conn.incarnation, conn.pod)
				}
			case conn.code == 1001:
				goneAway[conn.pod]++
				if _, ok := stopped[conn.incarnation]; !ok {
					t.Errorf("connection %s got 1001 from incarnation %s of %s, which was not stopped", conn.id, conn.incarnation, conn.pod)
				}
			}
		}
	}

	// The views list exactly the connections open on a client, and each
	// closed one ends with a disconnect.
	waitFor(t, 30*time.Second, "every instance to list exactly the open client connections", func() bool {
		for _, svc := range svcs {
			if !sameSet(openConnectionIDs(t, svc, ""), open) {
				return false
			}
		}
		return true
	})
	for id := range all {
		state, kind := connectionState(t, svcs[0], id)
		switch {
		case open[id] && state != "open":
			t.Errorf("connection %s is open on its client, but its entry is %q", id, state)
		case !open[id] && (state != "closed" || kind != "disconnected"):
			t.Errorf("connection %s is closed on its client, but its entry is %q (closed by %q), want closed by a disconnect", id, state, kind)
		}
	}

	events := replayDapr(t, sidecar)
	connected := map[string]int{}
	connectedOn := map[string]string{} // pod by connection id
	disconnected := map[string][]schemas.Disconnected{}
	beats := map[string][]event.Event{} // by incarnation
	lifecycle := map[string]bool{}      // ids of the events the topic must carry
	for _, ev := range events {
		switch ev.Type() {
		case schemas.TypeConnected:
			var data schemas.Connected
			if err := ev.DataAs(&data); err != nil {
				t.Fatalf("connected event %s: %v", ev.ID(), err)
			}
			connected[ev.Subject()]++
			connectedOn[ev.Subject()] = data.InstanceID
			lifecycle[ev.ID()] = true
		case schemas.TypeDisconnected:
			var data schemas.Disconnected
			if err := ev.DataAs(&data); err != nil {
				t.Fatalf("disconnected event %s: %v", ev.ID(), err)
			}
			disconnected[ev.Subject()] = append(disconnected[ev.Subject()], data)
			lifecycle[ev.ID()] = true
		case schemas.TypeReclaimed:
			// A clean roll reclaims nothing. A reclaim of a draining
			// incarnation is the failure this test looks for.
			var data schemas.Reclaimed
			if err := ev.DataAs(&data); err != nil {
				t.Fatalf("reclaimed event %s: %v", ev.ID(), err)
			}
			if r, ok := stopped[data.DeadIncarnation]; ok {
				t.Errorf("connection %s of the draining incarnation %s of %s was reclaimed by %s", data.ConnectionID, data.DeadIncarnation, r.pod, data.ReclaimedBy)
			} else {
				t.Errorf("connection %s of incarnation %s of %s was reclaimed by %s, want no reclaim in a clean roll", data.ConnectionID, data.DeadIncarnation, data.DeadInstanceID, data.ReclaimedBy)
			}
			lifecycle[ev.ID()] = true
		case schemas.TypeHeartbeat:
			var beat schemas.Heartbeat
			if err := ev.DataAs(&beat); err != nil {
				t.Fatalf("heartbeat %s: %v", ev.ID(), err)
			}
			beats[beat.Incarnation] = append(beats[beat.Incarnation], ev)
		}
	}

	// A connection whose welcome message no client got was closed by a
	// drain while its connected event was being appended.
	orphans := map[string]int{} // per pod
	orphaned := 0
	for id := range connected {
		if all[id] != nil {
			continue
		}
		pod := connectedOn[id]
		orphans[pod]++
		orphaned++
		closes := disconnected[id]
		if len(closes) != 1 || closes[0].Reason != schemas.ReasonServerShutdown || closes[0].CloseCode != 1001 {
			t.Errorf("connection %s on %s: no client got its welcome message, and its disconnected events are %+v, want one with %s and 1001",
				id, pod, closes, schemas.ReasonServerShutdown)
		}
	}
	for pod, n := range orphans {
		if n > unwelcomed[pod] {
			t.Errorf("%s: %d connections in the log that no client got a welcome message for, but clients saw only %d sockets closed before it",
				pod, n, unwelcomed[pod])
		}
	}

	// Every connection has one connected event and, once closed, one
	// disconnected event, with server_shutdown and 1001 when a drain
	// closed it.
	shutdowns := map[string]int{} // server_shutdown events per pod
	for id, conn := range all {
		if connected[id] != 1 {
			t.Errorf("connection %s: %d connected events, want 1", id, connected[id])
		}
		closes := disconnected[id]
		if open[id] {
			if len(closes) != 0 {
				t.Errorf("connection %s is open on its client but has %d disconnected events", id, len(closes))
			}
			continue
		}
		if len(closes) != 1 {
			t.Errorf("connection %s: %d disconnected events, want 1", id, len(closes))
			continue
		}
		got := closes[0]
		if got.Reason == schemas.ReasonServerShutdown {
			shutdowns[conn.pod]++
			if _, ok := stopped[got.Incarnation]; !ok {
				t.Errorf("connection %s: server_shutdown from incarnation %s, which was not stopped", id, got.Incarnation)
			}
		}
		switch {
		case conn.code == 1001 && (got.Reason != schemas.ReasonServerShutdown || got.CloseCode != 1001):
			t.Errorf("connection %s closed by a drain: disconnected with %s and %d, want %s and 1001", id, got.Reason, got.CloseCode, schemas.ReasonServerShutdown)
		case conn.byClient.Load() && got.Reason != schemas.ReasonClientClosed && got.Reason != schemas.ReasonServerShutdown:
			t.Errorf("connection %s closed by its client: disconnected with %s, want %s, or %s when a drain crossed the close",
				id, got.Reason, schemas.ReasonClientClosed, schemas.ReasonServerShutdown)
		case got.Reason == schemas.ReasonServerShutdown && conn.code != 1001 && !conn.byClient.Load():
			t.Errorf("connection %s: disconnected with %s, but its client got close code %d, want 1001", id, got.Reason, conn.code)
		}
	}

	// Each stopped incarnation's heartbeats end with draining, then stopped
	// with no connection left. Each successor serves.
	for _, r := range rolls {
		history := beats[r.incarnation]
		slices.SortFunc(history, func(a, b event.Event) int {
			return strings.Compare(fmt.Sprint(a.Extensions()[schemas.SequenceExtension]), fmt.Sprint(b.Extensions()[schemas.SequenceExtension]))
		})
		states := make([]string, len(history))
		var last schemas.Heartbeat
		for i, ev := range history {
			if err := ev.DataAs(&last); err != nil {
				t.Fatalf("heartbeat %s: %v", ev.ID(), err)
			}
			states[i] = last.State
		}
		n := len(states)
		if n < 2 || states[n-2] != schemas.StateDraining || states[n-1] != schemas.StateStopped ||
			slices.Index(states, schemas.StateDraining) != n-2 {
			t.Errorf("%s incarnation %s: heartbeat states %v, want ... serving, draining, stopped", r.pod, r.incarnation, states)
			continue
		}
		if last.ConnectionCount != 0 {
			t.Errorf("%s incarnation %s: stopped heartbeat counts %d connections, want 0", r.pod, r.incarnation, last.ConnectionCount)
		}
		drain := history[n-1].Time().Sub(history[n-2].Time())
		t.Logf("%s: draining to stopped heartbeat %v, SIGTERM to exit %v, %d clients closed with 1001, %d server_shutdown events",
			r.pod, drain.Round(time.Millisecond), r.exitedAfter.Round(time.Millisecond), goneAway[r.pod], shutdowns[r.pod])
		// The frozen drain must have outlasted the TTL by two reclaim
		// passes, or it proved nothing about drain protection.
		if r.paused && drain < fleetTTL+2*fleetReclaim {
			t.Errorf("%s: the frozen drain lasted %v, want at least %v so peers watched it past the TTL", r.pod, drain, fleetTTL+2*fleetReclaim)
		}
		successorBeats := beats[r.successor]
		if len(successorBeats) == 0 {
			t.Errorf("%s: no heartbeat of the successor %s", r.pod, r.successor)
		}
		for _, ev := range successorBeats {
			var beat schemas.Heartbeat
			if err := ev.DataAs(&beat); err != nil {
				t.Fatalf("heartbeat %s: %v", ev.ID(), err)
			}
			if beat.State == schemas.StateDraining || beat.State == schemas.StateStopped {
				t.Errorf("%s: the successor %s announced %s", r.pod, r.successor, beat.State)
			}
		}
	}
	for _, record := range instanceRecords(t, svcs[0]) {
		if !successors[record.Incarnation] || record.State != schemas.StateServing || record.ReclaimedBy != "" {
			t.Errorf("instance record %+v, want a successor serving and unclaimed", record)
		}
	}

	// The topic carries every connect and disconnect, some more than once.
	var got map[string]int
	waitFor(t, 30*time.Second, "every lifecycle event on the topic", func() bool {
		got, _ = sub.counts()
		for id := range lifecycle {
			if got[id] == 0 {
				return false
			}
		}
		return true
	})
	duplicates := 0
	bySource := map[string]int{} // duplicates per event type and source
	sub.mu.Lock()
	for id, n := range got {
		if n > 1 {
			duplicates += n - 1
			ev := sub.events[id]
			bySource[ev.Type()+" from "+ev.Source()] += n - 1
		}
	}
	sub.mu.Unlock()
	for _, key := range slices.Sorted(maps.Keys(bySource)) {
		t.Logf("topic: %d duplicates of %s", bySource[key], key)
	}
	if _, bad := sub.counts(); len(bad) > 0 {
		t.Errorf("subscriber got %d messages that are not wsm CloudEvents, first: %s", len(bad), bad[0])
	}
	t.Logf("%d connections (%d open at the end) and %d more closed before their welcome message, %d lifecycle events, all on the topic with %d duplicates",
		len(all), len(open), orphaned, len(lifecycle), duplicates)

	verifyDapr(t, sidecar)
}

package projections_test

import (
	"fmt"
	"math/rand/v2"
	"slices"
	"testing"
	"time"

	"github.com/cloudevents/sdk-go/v2/event"

	"github.com/virtufin/websocketmanager/eventlog"
	"github.com/virtufin/websocketmanager/projections"
	"github.com/virtufin/websocketmanager/schemas"
)

// t0 is the time of second 0 in the fixtures; at(n) is second n.
var t0 = time.Date(2025, 3, 1, 12, 0, 0, 0, time.UTC)

func at(sec int) time.Time { return t0.Add(time.Duration(sec) * time.Second) }

// Fixed connection details of every connected event in the fixtures.
const (
	remoteAddr = "127.0.0.1:40000"
	userAgent  = "projections-test"
)

// finish gives an event a chosen id and stream sequence, and fails the test
// when it does not validate, so fixtures stay within the schemas.
func finish(t testing.TB, ev *event.Event, err error, id string, seq uint64) *event.Event {
	t.Helper()
	if err != nil {
		t.Fatalf("build event %s: %v", id, err)
	}
	ev.SetID(id)
	if seq > 0 {
		ev.SetExtension(schemas.SequenceExtension, schemas.FormatSequence(seq))
	}
	if err := schemas.Validate(ev); err != nil {
		t.Fatalf("event %s: %v", id, err)
	}
	return ev
}

func connectedEv(t testing.TB, id string, seq uint64, sec int, connID, instance, incarnation, user string) *event.Event {
	t.Helper()
	ev, err := schemas.NewConnected(schemas.Envelope{InstanceID: instance, Time: at(sec)}, schemas.Connected{
		ConnectionID: connID, InstanceID: instance, Incarnation: incarnation, UserID: user,
		RemoteAddr: remoteAddr, UserAgent: userAgent, ConnectedAt: at(sec),
	})
	return finish(t, ev, err, id, seq)
}

func disconnectedEv(t testing.TB, id string, seq uint64, sec int, connID, instance, incarnation, user, reason string, code int) *event.Event {
	t.Helper()
	ev, err := schemas.NewDisconnected(schemas.Envelope{InstanceID: instance, Time: at(sec)}, schemas.Disconnected{
		ConnectionID: connID, InstanceID: instance, Incarnation: incarnation, UserID: user,
		CloseCode: code, Reason: reason, DisconnectedAt: at(sec),
	})
	return finish(t, ev, err, id, seq)
}

func heartbeatEv(t testing.TB, id string, seq uint64, sec int, instance, incarnation, state string, startedSec, count int) *event.Event {
	t.Helper()
	ev, err := schemas.NewHeartbeat(schemas.Envelope{InstanceID: instance, Time: at(sec)}, schemas.Heartbeat{
		InstanceID: instance, Incarnation: incarnation, State: state, ConnectionCount: count,
		StartedAt: at(startedSec), Address: "127.0.0.1:8080", Version: "test",
	})
	return finish(t, ev, err, id, seq)
}

// reclaimedEv is a reclaim by incarnation byIncarnation of instance
// byInstance, the source of the event.
func reclaimedEv(t testing.TB, id string, seq uint64, sec int, byInstance, byIncarnation, connID, user, deadInstance, deadIncarnation string) *event.Event {
	t.Helper()
	ev, err := schemas.NewReclaimed(schemas.Envelope{InstanceID: byInstance, Time: at(sec)}, schemas.Reclaimed{
		ConnectionID: connID, UserID: user, DeadInstanceID: deadInstance, DeadIncarnation: deadIncarnation,
		ReclaimedBy: byIncarnation, LastHeartbeatAt: at(sec - 15),
	})
	return finish(t, ev, err, id, seq)
}

// fold folds events into a fresh Set and fails the test on an error.
func fold(t testing.TB, events ...*event.Event) *projections.Set {
	t.Helper()
	s := projections.NewSet()
	for _, ev := range events {
		if err := projections.Fold(s, ev); err != nil {
			t.Fatalf("Fold(%s %s): %v", ev.Type(), ev.ID(), err)
		}
	}
	return s
}

// checkSame fails the test with every differing key when two sets do not
// encode to the same views.
func checkSame(t testing.TB, what string, got, want *projections.Set) {
	t.Helper()
	diffs := projections.Diff(got, want)
	for _, d := range diffs {
		t.Errorf("%s: %s", what, d)
	}
}

// history is a generated log: events in the order they were emitted, and
// the same events split by the stream that appended them.
type history struct {
	events  []*event.Event
	streams map[string][]*event.Event
	order   []string // stream names in order of first event
}

// historyGen simulates a small fleet and records what it would append.
type historyGen struct {
	t     testing.TB
	rnd   *rand.Rand
	sec   int
	seqs  map[string]uint64
	h     *history
	open  map[string]openConn // live connections by id
	conns int
}

type openConn struct{ instance, incarnation, user string }

func (g *historyGen) tick() int { g.sec++; return g.sec }

func (g *historyGen) emit(instance, incarnation string, build func(seq uint64, sec int) *event.Event) {
	stream := eventlog.StreamName(instance, incarnation)
	g.seqs[stream]++
	ev := build(g.seqs[stream], g.tick())
	if _, ok := g.h.streams[stream]; !ok {
		g.h.order = append(g.h.order, stream)
	}
	g.h.streams[stream] = append(g.h.streams[stream], ev)
	g.h.events = append(g.h.events, ev)
}

func (g *historyGen) id() string { return fmt.Sprintf("ev-%05d", len(g.h.events)+1) }

func (g *historyGen) connect(instance, incarnation string) {
	g.conns++
	connID := fmt.Sprintf("conn-%03d", g.conns)
	// One connection in six is anonymous.
	user := ""
	if n := g.rnd.IntN(6); n > 0 {
		user = fmt.Sprintf("user-%d", n)
	}
	g.open[connID] = openConn{instance, incarnation, user}
	g.emit(instance, incarnation, func(seq uint64, sec int) *event.Event {
		return connectedEv(g.t, g.id(), seq, sec, connID, instance, incarnation, user)
	})
}

func (g *historyGen) disconnect(connID, reason string, code int) {
	c := g.open[connID]
	delete(g.open, connID)
	g.emit(c.instance, c.incarnation, func(seq uint64, sec int) *event.Event {
		return disconnectedEv(g.t, g.id(), seq, sec, connID, c.instance, c.incarnation, c.user, reason, code)
	})
}

func (g *historyGen) heartbeat(instance, incarnation, state string, startedSec int) {
	count := 0
	for _, c := range g.open {
		if c.instance == instance && c.incarnation == incarnation {
			count++
		}
	}
	g.emit(instance, incarnation, func(seq uint64, sec int) *event.Event {
		return heartbeatEv(g.t, g.id(), seq, sec, instance, incarnation, state, startedSec, count)
	})
}

func (g *historyGen) reclaim(byInstance, byIncarnation, connID string, c openConn) {
	delete(g.open, connID)
	g.emit(byInstance, byIncarnation, func(seq uint64, sec int) *event.Event {
		return reclaimedEv(g.t, g.id(), seq, sec, byInstance, byIncarnation, connID, c.user, c.instance, c.incarnation)
	})
}

// connsOf lists the live connections of an incarnation, sorted.
func (g *historyGen) connsOf(instance, incarnation string) []string {
	var out []string
	for id, c := range g.open {
		if c.instance == instance && c.incarnation == incarnation {
			out = append(out, id)
		}
	}
	slices.Sort(out)
	return out
}

// churn runs n random steps on the given incarnations: connects,
// disconnects with assorted reasons, and heartbeats.
func (g *historyGen) churn(n int, incs [][2]string, started map[[2]string]int) {
	reasons := []struct {
		reason string
		code   int
	}{
		{schemas.ReasonClientClosed, 1000}, {schemas.ReasonPingTimeout, 1001}, {schemas.ReasonKicked, 4000},
		{schemas.ReasonConnectionLost, 1006}, {schemas.ReasonMessageTooBig, 1009},
	}
	for range n {
		inc := incs[g.rnd.IntN(len(incs))]
		switch r := g.rnd.IntN(10); {
		case r < 5:
			g.connect(inc[0], inc[1])
		case r < 8:
			if live := g.connsOf(inc[0], inc[1]); len(live) > 0 {
				why := reasons[g.rnd.IntN(len(reasons))]
				g.disconnect(live[g.rnd.IntN(len(live))], why.reason, why.code)
			}
		default:
			g.heartbeat(inc[0], inc[1], schemas.StateServing, started[inc])
		}
	}
}

// generateHistory simulates a fleet of four instances. The first
// incarnation of pod-a dies, and its next one reclaims its connections at
// startup, while pod-b reclaims one of them too. pod-c dies and pod-b
// reclaims its connections, including one that pod-c closed just before it
// died. pod-d drains and stops. Users hold connections on several instances.
func generateHistory(t testing.TB, seed uint64, steps int) *history {
	t.Helper()
	g := &historyGen{
		t: t, rnd: rand.New(rand.NewPCG(seed, 0x5eed)),
		seqs: map[string]uint64{}, open: map[string]openConn{},
		h: &history{streams: map[string][]*event.Event{}},
	}
	a1, a2 := [2]string{"pod-a", "inc-a1"}, [2]string{"pod-a", "inc-a2"}
	b1, c1, d1 := [2]string{"pod-b", "inc-b1"}, [2]string{"pod-c", "inc-c1"}, [2]string{"pod-d", "inc-d1"}
	started := map[[2]string]int{}
	for _, inc := range [][2]string{a1, b1, c1, d1} {
		started[inc] = g.sec
		g.heartbeat(inc[0], inc[1], schemas.StateStarting, started[inc])
		g.heartbeat(inc[0], inc[1], schemas.StateServing, started[inc])
	}
	g.churn(steps, [][2]string{a1, b1, c1, d1}, started)

	// pod-d drains: it closes its sockets and stops.
	g.heartbeat(d1[0], d1[1], schemas.StateDraining, started[d1])
	for _, id := range g.connsOf(d1[0], d1[1]) {
		g.disconnect(id, schemas.ReasonServerShutdown, 1001)
	}
	g.heartbeat(d1[0], d1[1], schemas.StateStopped, started[d1])

	// pod-c closes one socket and dies; pod-b reclaims all it saw open,
	// including the one just closed, as its views lagged.
	cConns := g.connsOf(c1[0], c1[1])
	if len(cConns) == 0 {
		g.connect(c1[0], c1[1])
		cConns = g.connsOf(c1[0], c1[1])
	}
	closed := cConns[0]
	closedConn := g.open[closed]
	g.disconnect(closed, schemas.ReasonClientClosed, 1000)
	g.reclaim(b1[0], b1[1], closed, closedConn)
	for _, id := range g.connsOf(c1[0], c1[1]) {
		g.reclaim(b1[0], b1[1], id, g.open[id])
	}

	// pod-a restarts as a new incarnation and reclaims its old one's
	// connections; pod-b also reclaims one of them, a second reclaimer.
	started[a2] = g.sec + 1
	g.heartbeat(a2[0], a2[1], schemas.StateStarting, started[a2])
	aConns := g.connsOf(a1[0], a1[1])
	for i, id := range aConns {
		c := g.open[id]
		g.reclaim(a2[0], a2[1], id, c)
		if i == 0 {
			g.reclaim(b1[0], b1[1], id, c)
		}
	}
	g.heartbeat(a2[0], a2[1], schemas.StateServing, started[a2])

	g.churn(steps/2, [][2]string{a2, b1}, started)
	return g.h
}

// interleave returns the history's events in another order that keeps each
// stream's own order. At every step pick chooses among the streams that can
// go next, given how many events each has left.
//
// A reclaimed event of an incarnation goes only after a heartbeat of that
// incarnation, as in the live views: a reclaimer acts on the dead
// incarnation's record, so a heartbeat of it was folded first. A rebuild in
// time order depends on ApplyClaims where clock skew breaks that order (see
// TestFoldReclaimBeforeHeartbeat). Everything else of the dead stream, its
// disconnects included, may come before or after the reclaim.
func interleave(h *history, pick func(streams []string, left []int) int) []*event.Event {
	next := map[string]int{}
	heartbeats := map[string]bool{} // streams with a heartbeat taken
	ready := func(stream string) bool {
		if next[stream] == len(h.streams[stream]) {
			return false
		}
		ev := h.streams[stream][next[stream]]
		if ev.Type() != schemas.TypeReclaimed {
			return true
		}
		var r schemas.Reclaimed
		if err := ev.DataAs(&r); err != nil {
			panic(err)
		}
		return heartbeats[eventlog.StreamName(r.DeadInstanceID, r.DeadIncarnation)]
	}

	out := make([]*event.Event, 0, len(h.events))
	for len(out) < len(h.events) {
		var streams []string
		var left []int
		for _, s := range h.order {
			if ready(s) {
				streams = append(streams, s)
				left = append(left, len(h.streams[s])-next[s])
			}
		}
		s := streams[pick(streams, left)]
		ev := h.streams[s][next[s]]
		out = append(out, ev)
		next[s]++
		if ev.Type() == schemas.TypeHeartbeat {
			heartbeats[s] = true
		}
	}
	return out
}

// uniformStream picks any ready stream with equal chance.
func uniformStream(rnd *rand.Rand) func([]string, []int) int {
	return func(streams []string, _ []int) int { return rnd.IntN(len(streams)) }
}

// uniformEvent picks a stream with a chance in proportion to the events it
// has left, which mixes long streams into short ones.
func uniformEvent(rnd *rand.Rand) func([]string, []int) int {
	return func(_ []string, left []int) int {
		total := 0
		for _, n := range left {
			total += n
		}
		k := rnd.IntN(total)
		for i, n := range left {
			if k < n {
				return i
			}
			k -= n
		}
		return len(left) - 1
	}
}

// streamsFirst always picks the earliest ready stream in priority, so each
// stream runs to its end, or to a reclaim it must wait for, before the next.
func streamsFirst(priority []string) func([]string, []int) int {
	return func(streams []string, _ []int) int {
		for _, p := range priority {
			if i := slices.Index(streams, p); i >= 0 {
				return i
			}
		}
		return 0
	}
}

// permutations returns every ordering of names.
func permutations(names []string) [][]string {
	if len(names) <= 1 {
		return [][]string{slices.Clone(names)}
	}
	var out [][]string
	for i, first := range names {
		rest := slices.Concat(names[:i], names[i+1:])
		for _, p := range permutations(rest) {
			out = append(out, append([]string{first}, p...))
		}
	}
	return out
}

package projections_test

import (
	"fmt"
	"math/rand/v2"
	"slices"
	"testing"

	"github.com/cloudevents/sdk-go/v2/event"

	"github.com/virtufin/websocketmanager/projections"
	"github.com/virtufin/websocketmanager/schemas"
)

// Expected views, built by hand.

func openEntry(connID, instance, incarnation, user string, sec int) *projections.Connection {
	return &projections.Connection{
		ConnectionID: connID, InstanceID: instance, Incarnation: incarnation, UserID: user,
		RemoteAddr: remoteAddr, UserAgent: userAgent, ConnectedAt: at(sec),
	}
}

func closedEntry(c *projections.Connection, closure projections.Closure) *projections.Connection {
	c.Closed = &closure
	return c
}

func byDisconnect(id string, sec int, reason string, code int) projections.Closure {
	return projections.Closure{Kind: projections.ClosedByDisconnect, Reason: reason, Code: code, At: at(sec), EventID: id}
}

func byReclaim(id string, sec int, by string) projections.Closure {
	return projections.Closure{Kind: projections.ClosedByReclaim, Reason: "reclaimed", At: at(sec), EventID: id, By: by}
}

func instanceRecord(instance, incarnation, state string, startedSec, lastSec int, seq uint64, count int) *projections.Instance {
	return &projections.Instance{
		InstanceID: instance, Incarnation: incarnation, State: state, StartedAt: at(startedSec),
		LastHeartbeatAt: at(lastSec), HeartbeatSeq: seq, ConnectionCount: count,
		Address: "127.0.0.1:8080", Version: "test",
	}
}

// views assembles an expected Set.
type views struct {
	conns     []*projections.Connection
	instances []*projections.Instance
	index     []string
	shards    map[string]map[string]string // instance -> connection -> incarnation
	users     map[string]map[string]string // user -> connection -> instance
}

func (v views) set() *projections.Set {
	s := projections.NewSet()
	for _, c := range v.conns {
		s.Connections[c.ConnectionID] = c
	}
	for _, i := range v.instances {
		s.Instances[i.InstanceID] = i
	}
	if len(v.index) > 0 {
		s.Index = &projections.InstanceIndex{Instances: map[string]bool{}}
		for _, id := range v.index {
			s.Index.Instances[id] = true
		}
	}
	for instance, conns := range v.shards {
		for conn, inc := range conns {
			ref := projections.ShardRef{InstanceID: instance, Shard: projections.ShardOf(conn)}
			if s.Shards[ref] == nil {
				s.Shards[ref] = &projections.Shard{Connections: map[string]string{}}
			}
			s.Shards[ref].Connections[conn] = inc
		}
	}
	for user, conns := range v.users {
		s.Users[user] = &projections.UserIndex{Connections: conns}
	}
	return s
}

func TestFoldEventTypes(t *testing.T) {
	const pa, a1, a2 = "pod-a", "inc-a1", "inc-a2"
	tests := []struct {
		name   string
		events func(t *testing.T) []*event.Event
		want   views
	}{
		{
			name: "connected",
			events: func(t *testing.T) []*event.Event {
				return []*event.Event{connectedEv(t, "e1", 1, 1, "c1", pa, a1, "u1")}
			},
			want: views{
				conns:  []*projections.Connection{openEntry("c1", pa, a1, "u1", 1)},
				shards: map[string]map[string]string{pa: {"c1": a1}},
				users:  map[string]map[string]string{"u1": {"c1": pa}},
			},
		},
		{
			name: "anonymous connected has no user index",
			events: func(t *testing.T) []*event.Event {
				return []*event.Event{connectedEv(t, "e1", 1, 1, "c1", pa, a1, "")}
			},
			want: views{
				conns:  []*projections.Connection{openEntry("c1", pa, a1, "", 1)},
				shards: map[string]map[string]string{pa: {"c1": a1}},
			},
		},
		{
			name: "two connections of one user",
			events: func(t *testing.T) []*event.Event {
				return []*event.Event{
					connectedEv(t, "e1", 1, 1, "c1", pa, a1, "u1"),
					connectedEv(t, "e2", 1, 2, "c2", "pod-b", "inc-b1", "u1"),
				}
			},
			want: views{
				conns:  []*projections.Connection{openEntry("c1", pa, a1, "u1", 1), openEntry("c2", "pod-b", "inc-b1", "u1", 2)},
				shards: map[string]map[string]string{pa: {"c1": a1}, "pod-b": {"c2": "inc-b1"}},
				users:  map[string]map[string]string{"u1": {"c1": pa, "c2": "pod-b"}},
			},
		},
		{
			name: "disconnected after connected",
			events: func(t *testing.T) []*event.Event {
				return []*event.Event{
					connectedEv(t, "e1", 1, 1, "c1", pa, a1, "u1"),
					disconnectedEv(t, "e2", 2, 5, "c1", pa, a1, "u1", schemas.ReasonPingTimeout, 1001),
				}
			},
			want: views{conns: []*projections.Connection{
				closedEntry(openEntry("c1", pa, a1, "u1", 1), byDisconnect("e2", 5, schemas.ReasonPingTimeout, 1001)),
			}},
		},
		{
			name: "disconnected before connected",
			events: func(t *testing.T) []*event.Event {
				return []*event.Event{
					disconnectedEv(t, "e2", 2, 5, "c1", pa, a1, "u1", schemas.ReasonPingTimeout, 1001),
					connectedEv(t, "e1", 1, 1, "c1", pa, a1, "u1"),
				}
			},
			want: views{conns: []*projections.Connection{
				closedEntry(openEntry("c1", pa, a1, "u1", 1), byDisconnect("e2", 5, schemas.ReasonPingTimeout, 1001)),
			}},
		},
		{
			name: "disconnected without connected",
			events: func(t *testing.T) []*event.Event {
				return []*event.Event{disconnectedEv(t, "e2", 2, 5, "c1", pa, a1, "u1", schemas.ReasonKicked, 4000)}
			},
			want: views{conns: []*projections.Connection{{
				ConnectionID: "c1", InstanceID: pa, Incarnation: a1, UserID: "u1",
				Closed: &projections.Closure{Kind: projections.ClosedByDisconnect, Reason: schemas.ReasonKicked, Code: 4000, At: at(5), EventID: "e2"},
			}}},
		},
		{
			name: "reclaimed before connected",
			events: func(t *testing.T) []*event.Event {
				return []*event.Event{
					reclaimedEv(t, "r1", 1, 30, "pod-b", "inc-b1", "c1", "u1", pa, a1),
					connectedEv(t, "e1", 1, 1, "c1", pa, a1, "u1"),
				}
			},
			want: views{conns: []*projections.Connection{
				closedEntry(openEntry("c1", pa, a1, "u1", 1), byReclaim("r1", 30, "inc-b1")),
			}},
		},
		{
			name: "disconnect outranks an earlier reclaim",
			events: func(t *testing.T) []*event.Event {
				return []*event.Event{
					connectedEv(t, "e1", 1, 1, "c1", pa, a1, "u1"),
					reclaimedEv(t, "r1", 1, 30, "pod-b", "inc-b1", "c1", "u1", pa, a1),
					disconnectedEv(t, "e2", 2, 40, "c1", pa, a1, "u1", schemas.ReasonClientClosed, 1000),
				}
			},
			want: views{conns: []*projections.Connection{
				closedEntry(openEntry("c1", pa, a1, "u1", 1), byDisconnect("e2", 40, schemas.ReasonClientClosed, 1000)),
			}},
		},
		{
			name: "reclaim after disconnect changes nothing",
			events: func(t *testing.T) []*event.Event {
				return []*event.Event{
					connectedEv(t, "e1", 1, 1, "c1", pa, a1, "u1"),
					disconnectedEv(t, "e2", 2, 5, "c1", pa, a1, "u1", schemas.ReasonClientClosed, 1000),
					reclaimedEv(t, "r1", 1, 30, "pod-b", "inc-b1", "c1", "u1", pa, a1),
				}
			},
			want: views{conns: []*projections.Connection{
				closedEntry(openEntry("c1", pa, a1, "u1", 1), byDisconnect("e2", 5, schemas.ReasonClientClosed, 1000)),
			}},
		},
		{
			name: "earliest of two reclaims wins",
			events: func(t *testing.T) []*event.Event {
				return []*event.Event{
					connectedEv(t, "e1", 1, 1, "c1", pa, a1, "u1"),
					reclaimedEv(t, "r2", 1, 31, "pod-c", "inc-c1", "c1", "u1", pa, a1),
					reclaimedEv(t, "r1", 1, 30, "pod-b", "inc-b1", "c1", "u1", pa, a1),
				}
			},
			want: views{conns: []*projections.Connection{
				closedEntry(openEntry("c1", pa, a1, "u1", 1), byReclaim("r1", 30, "inc-b1")),
			}},
		},
		{
			name: "reclaims at the same time rank by event id",
			events: func(t *testing.T) []*event.Event {
				return []*event.Event{
					connectedEv(t, "e1", 1, 1, "c1", pa, a1, "u1"),
					reclaimedEv(t, "r2", 1, 30, "pod-c", "inc-c1", "c1", "u1", pa, a1),
					reclaimedEv(t, "r1", 1, 30, "pod-b", "inc-b1", "c1", "u1", pa, a1),
				}
			},
			want: views{conns: []*projections.Connection{
				closedEntry(openEntry("c1", pa, a1, "u1", 1), byReclaim("r1", 30, "inc-b1")),
			}},
		},
		{
			name: "heartbeat",
			events: func(t *testing.T) []*event.Event {
				return []*event.Event{heartbeatEv(t, "h1", 4, 10, pa, a1, schemas.StateServing, 0, 2)}
			},
			want: views{
				instances: []*projections.Instance{instanceRecord(pa, a1, schemas.StateServing, 0, 10, 4, 2)},
				index:     []string{pa},
			},
		},
		{
			name: "older heartbeat of the same incarnation is ignored",
			events: func(t *testing.T) []*event.Event {
				return []*event.Event{
					heartbeatEv(t, "h2", 5, 15, pa, a1, schemas.StateServing, 0, 3),
					heartbeatEv(t, "h1", 4, 10, pa, a1, schemas.StateStarting, 0, 0),
				}
			},
			want: views{
				instances: []*projections.Instance{instanceRecord(pa, a1, schemas.StateServing, 0, 15, 5, 3)},
				index:     []string{pa},
			},
		},
		{
			name: "stopped instance leaves the index",
			events: func(t *testing.T) []*event.Event {
				return []*event.Event{
					heartbeatEv(t, "h1", 1, 10, pa, a1, schemas.StateServing, 0, 0),
					heartbeatEv(t, "h2", 2, 15, pa, a1, schemas.StateStopped, 0, 0),
				}
			},
			want: views{instances: []*projections.Instance{instanceRecord(pa, a1, schemas.StateStopped, 0, 15, 2, 0)}},
		},
		{
			name: "newer incarnation replaces the record",
			events: func(t *testing.T) []*event.Event {
				return []*event.Event{
					heartbeatEv(t, "h1", 9, 10, pa, a1, schemas.StateServing, 0, 5),
					heartbeatEv(t, "h2", 1, 60, pa, a2, schemas.StateStarting, 50, 0),
					heartbeatEv(t, "h3", 10, 15, pa, a1, schemas.StateServing, 0, 6),
				}
			},
			want: views{
				instances: []*projections.Instance{instanceRecord(pa, a2, schemas.StateStarting, 50, 60, 1, 0)},
				index:     []string{pa},
			},
		},
		{
			name: "same start time ranks incarnations by name",
			events: func(t *testing.T) []*event.Event {
				return []*event.Event{
					heartbeatEv(t, "h2", 1, 11, pa, a2, schemas.StateServing, 0, 0),
					heartbeatEv(t, "h1", 1, 10, pa, a1, schemas.StateServing, 0, 0),
				}
			},
			want: views{
				instances: []*projections.Instance{instanceRecord(pa, a2, schemas.StateServing, 0, 11, 1, 0)},
				index:     []string{pa},
			},
		},
		{
			name: "reclaim claims the dead incarnation",
			events: func(t *testing.T) []*event.Event {
				return []*event.Event{
					heartbeatEv(t, "h1", 1, 10, pa, a1, schemas.StateServing, 0, 1),
					connectedEv(t, "e1", 2, 11, "c1", pa, a1, "u1"),
					reclaimedEv(t, "r1", 1, 40, "pod-c", "inc-c1", "c1", "u1", pa, a1),
					reclaimedEv(t, "r2", 1, 41, "pod-b", "inc-b1", "c1", "u1", pa, a1),
					// A late heartbeat of the reclaimed incarnation does not
					// bring it back.
					heartbeatEv(t, "h2", 3, 12, pa, a1, schemas.StateServing, 0, 1),
				}
			},
			want: views{
				conns: []*projections.Connection{closedEntry(openEntry("c1", pa, a1, "u1", 11), byReclaim("r1", 40, "inc-c1"))},
				instances: []*projections.Instance{func() *projections.Instance {
					i := instanceRecord(pa, a1, schemas.StateServing, 0, 12, 3, 1)
					i.ReclaimedBy = "inc-b1" // the lower incarnation name of the two reclaimers
					return i
				}()},
			},
		},
		{
			name: "reclaim of an older incarnation leaves the record",
			events: func(t *testing.T) []*event.Event {
				return []*event.Event{
					heartbeatEv(t, "h1", 1, 60, pa, a2, schemas.StateServing, 50, 0),
					reclaimedEv(t, "r1", 1, 61, pa, a2, "c1", "", pa, a1),
				}
			},
			want: views{
				conns:     []*projections.Connection{{ConnectionID: "c1", InstanceID: pa, Incarnation: a1, Closed: &projections.Closure{Kind: projections.ClosedByReclaim, Reason: "reclaimed", At: at(61), EventID: "r1", By: a2}}},
				instances: []*projections.Instance{instanceRecord(pa, a2, schemas.StateServing, 50, 60, 1, 0)},
				index:     []string{pa},
			},
		},
		{
			name: "unknown type folds to nothing",
			events: func(t *testing.T) []*event.Event {
				ev := connectedEv(t, "e1", 1, 1, "c1", pa, a1, "u1")
				ev.SetType(schemas.TypePrefix + "connection.teleported")
				return []*event.Event{ev}
			},
			want: views{},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := fold(t, tt.events(t)...)
			checkSame(t, "folded views", got, tt.want.set())
		})
	}
}

// TestFoldCloseBeforeConnect checks the case that order-insensitivity rests
// on: a close folded before its connect leaves a tombstone, and the connect
// does not put the connection back into any index.
func TestFoldCloseBeforeConnect(t *testing.T) {
	const instance, incarnation = "pod-a", "inc-a1"
	closers := map[string]func(t *testing.T) *event.Event{
		"disconnected": func(t *testing.T) *event.Event {
			return disconnectedEv(t, "e2", 2, 5, "c1", instance, incarnation, "u1", schemas.ReasonClientClosed, 1000)
		},
		"reclaimed": func(t *testing.T) *event.Event {
			return reclaimedEv(t, "r1", 1, 30, "pod-b", "inc-b1", "c1", "u1", instance, incarnation)
		},
	}
	for _, name := range slices.Sorted(func(yield func(string) bool) {
		for k := range closers {
			if !yield(k) {
				return
			}
		}
	}) {
		t.Run(name, func(t *testing.T) {
			s := fold(t, closers[name](t), connectedEv(t, "e1", 1, 1, "c1", instance, incarnation, "u1"))

			c := s.Connections["c1"]
			if c == nil || c.Open() || c.Closed.Kind != name {
				t.Fatalf("entry = %+v, want a tombstone closed by %s", c, name)
			}
			if c.ConnectedAt != at(1) || c.RemoteAddr != remoteAddr {
				t.Errorf("tombstone connectedAt %v remoteAddr %q, want the connect's %v and %q", c.ConnectedAt, c.RemoteAddr, at(1), remoteAddr)
			}
			shard := s.Shards[projections.ShardRef{InstanceID: instance, Shard: projections.ShardOf("c1")}]
			if shard != nil && shard.Connections["c1"] != "" {
				t.Errorf("shard still lists c1: %v", shard.Connections)
			}
			if u := s.Users["u1"]; u != nil && u.Connections["c1"] != "" {
				t.Errorf("user index still lists c1: %v", u.Connections)
			}
		})
	}
}

func TestFoldRejectsBadEvents(t *testing.T) {
	tests := []struct {
		name string
		edit func(ev *event.Event)
	}{
		{"data not JSON", func(ev *event.Event) { ev.DataEncoded = []byte("not json") }},
		{"data of the wrong shape", func(ev *event.Event) { ev.DataEncoded = []byte(`{"connectionId":7}`) }},
		{"sequence not a number", func(ev *event.Event) { ev.SetExtension(schemas.SequenceExtension, "0000000000000000000x") }},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ev := connectedEv(t, "e1", 1, 1, "c1", "pod-a", "inc-a1", "u1")
			tt.edit(ev)
			s := projections.NewSet()
			if err := projections.Fold(s, ev); err == nil {
				t.Errorf("Fold accepted an event with %s", tt.name)
			}
			checkSame(t, "views after a rejected event", s, projections.NewSet())
		})
	}
}

// TestFoldIdempotent folds a generated history with every event twice in a
// row, and the whole history twice, and expects the views of one fold.
func TestFoldIdempotent(t *testing.T) {
	for _, seed := range []uint64{1, 2, 3} {
		h := generateHistory(t, seed, 120)
		once := fold(t, h.events...)

		var doubled []*event.Event
		for _, ev := range h.events {
			doubled = append(doubled, ev, ev)
		}
		checkSame(t, "each event folded twice", fold(t, doubled...), once)
		checkSame(t, "history folded twice", fold(t, append(slices.Clone(h.events), h.events...)...), once)

		// Redelivering any one event at any later point changes nothing.
		rnd := rand.New(rand.NewPCG(seed, 7))
		for range 20 {
			i := rnd.IntN(len(h.events))
			j := i + rnd.IntN(len(h.events)-i)
			replayed := slices.Insert(slices.Clone(h.events), j+1, h.events[i])
			checkSame(t, "event redelivered later", fold(t, replayed...), once)
		}
	}
}

// TestFoldOrderInsensitive folds many reorderings of a generated history,
// each keeping every stream's own order, and expects the same views as the
// order the events were emitted in.
func TestFoldOrderInsensitive(t *testing.T) {
	for _, seed := range []uint64{1, 2, 3} {
		h := generateHistory(t, seed, 80)
		if len(h.order) != 5 {
			t.Fatalf("history has streams %v, want five", h.order)
		}
		want := fold(t, h.events...)
		checkHistoryViews(t, h, want)

		orders := map[string][]*event.Event{}
		rnd := rand.New(rand.NewPCG(seed, 11))
		for i := range 40 {
			orders[fmt.Sprintf("uniform stream %d", i)] = interleave(h, uniformStream(rnd))
			orders[fmt.Sprintf("uniform event %d", i)] = interleave(h, uniformEvent(rnd))
		}
		for _, p := range permutations(h.order) {
			orders[fmt.Sprintf("streams in order %v", p)] = interleave(h, streamsFirst(p))
		}
		for name, events := range orders {
			if len(events) != len(h.events) {
				t.Fatalf("seed %d, %s: %d events, want %d", seed, name, len(events), len(h.events))
			}
			got := fold(t, events...)
			if diffs := projections.Diff(got, want); len(diffs) > 0 {
				t.Errorf("seed %d, %s: %d views differ from the emitted order, first:\n%s", seed, name, len(diffs), diffs[0])
			}
		}
	}
}

// TestFoldReclaimBeforeHeartbeat covers the one order the fold does not
// absorb: a reclaim folded before any heartbeat of the incarnation it
// reclaims finds no record to claim, so the heartbeat folded later leaves
// that incarnation live. The live views never see that order, and a rebuild
// only when clocks are skewed by more than the heartbeat TTL; ApplyClaims
// then copies the claim from the live record.
func TestFoldReclaimBeforeHeartbeat(t *testing.T) {
	heartbeat := heartbeatEv(t, "h1", 1, 10, "pod-c", "inc-c1", schemas.StateServing, 0, 1)
	connect := connectedEv(t, "e1", 2, 11, "c1", "pod-c", "inc-c1", "u1")
	reclaim := reclaimedEv(t, "r1", 1, 40, "pod-b", "inc-b1", "c1", "u1", "pod-c", "inc-c1")

	live := fold(t, heartbeat, connect, reclaim)
	if rec := live.Instances["pod-c"]; rec == nil || rec.ReclaimedBy != "inc-b1" {
		t.Fatalf("record after the causal order = %+v, want it reclaimed by inc-b1", rec)
	}

	rebuilt := fold(t, reclaim, heartbeat, connect)
	// NOTE: the fold keeps no claim for an incarnation it has no record of.
	if rec := rebuilt.Instances["pod-c"]; rec == nil || rec.ReclaimedBy != "" {
		t.Fatalf("record after the reclaim came first = %+v; if the fold now keeps the claim, drop this test's NOTE", rec)
	}
	projections.ApplyClaims(rebuilt, live)
	checkSame(t, "rebuilt views after ApplyClaims", rebuilt, live)
}

// checkHistoryViews checks what the generated fleet must end with, so the
// order tests compare views that hold something.
func checkHistoryViews(t *testing.T, h *history, s *projections.Set) {
	t.Helper()
	if s.Index == nil || !s.Index.Instances["pod-a"] || !s.Index.Instances["pod-b"] || len(s.Index.Instances) != 2 {
		t.Errorf("instance index = %+v, want pod-a and pod-b", s.Index)
	}
	if c := s.Instances["pod-c"]; c == nil || c.ReclaimedBy != "inc-b1" {
		t.Errorf("pod-c record = %+v, want it reclaimed by inc-b1", c)
	}
	if a := s.Instances["pod-a"]; a == nil || a.Incarnation != "inc-a2" || a.ReclaimedBy != "" {
		t.Errorf("pod-a record = %+v, want the live incarnation inc-a2", a)
	}
	if d := s.Instances["pod-d"]; d == nil || d.State != schemas.StateStopped {
		t.Errorf("pod-d record = %+v, want it stopped", d)
	}

	var open, closed, reclaimed int
	for _, c := range s.Connections {
		switch {
		case c.Open():
			open++
		case c.Closed.Kind == projections.ClosedByReclaim:
			reclaimed++
		default:
			closed++
		}
	}
	if open == 0 || closed == 0 || reclaimed == 0 {
		t.Errorf("history ends with %d open, %d disconnected, %d reclaimed connections; want some of each", open, closed, reclaimed)
	}
}

// BenchmarkFold measures Fold into an in-memory Set that contains one shard
// of benchShardSize open connections, their entries and their user indexes.
// One op folds one event. The connected case folds the connect of a new
// connection of that shard, the disconnected case the disconnect of one of
// its open connections.
func BenchmarkFold(b *testing.B) {
	f := newShardFixture(b)
	seq := uint64(len(f.open))

	b.Run(fmt.Sprintf("connected/shard=%d", benchShardSize), func(b *testing.B) {
		s := fold(b, f.open...)
		ev := benchConnected(b, seq+1, f.newConn, benchUser(0))
		b.ReportAllocs()
		// Every fold after the first replaces the open entry it left,
		// which takes the same steps as adding it.
		for b.Loop() {
			if err := projections.Fold(s, ev); err != nil {
				b.Fatal(err)
			}
		}
		if n := len(s.Shards[projections.ShardRef{InstanceID: benchInstance, Shard: f.shard}].Connections); n != benchShardSize+1 {
			b.Fatalf("shard contains %d connections after the connect, want %d", n, benchShardSize+1)
		}
	})

	b.Run(fmt.Sprintf("disconnected/shard=%d", benchShardSize), func(b *testing.B) {
		s := fold(b, f.open...)
		connID, user := f.conns[0], benchUser(0)
		ev := benchDisconnected(b, seq+1, connID, user)
		entry := s.Connections[connID]
		shard := s.Shards[projections.ShardRef{InstanceID: benchInstance, Shard: f.shard}]
		index := s.Users[user]
		b.ReportAllocs()
		for b.Loop() {
			if err := projections.Fold(s, ev); err != nil {
				b.Fatal(err)
			}
			if entry.Open() || len(shard.Connections) != benchShardSize-1 {
				b.Fatalf("after the disconnect the entry is open=%t and the shard has %d connections, want closed and %d", entry.Open(), len(shard.Connections), benchShardSize-1)
			}
			// Open the connection again, so the next op folds a real
			// disconnect rather than one already folded. These three
			// writes are part of the op.
			entry.Closed = nil
			shard.Connections[connID] = benchIncarnation
			index.Connections[connID] = benchInstance
		}
	})
}

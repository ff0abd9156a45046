package workers

import (
	"context"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/cloudevents/sdk-go/v2/event"
	"github.com/rs/zerolog"

	"github.com/virtufin/websocketmanager/eventlog"
	"github.com/virtufin/websocketmanager/internal/embedded"
	"github.com/virtufin/websocketmanager/projections"
	"github.com/virtufin/websocketmanager/schemas"
)

// waitTimeout bounds every wait of these tests. Appends to the embedded
// store take milliseconds, so a wait that runs out is a hang.
const waitTimeout = 10 * time.Second

// Liveness settings of the fleet tests, in fake-clock time.
const (
	testTTL   = 15 * time.Second
	testGrace = 30 * time.Second
)

func testCtx(t testing.TB) context.Context {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), waitTimeout)
	t.Cleanup(cancel)
	return ctx
}

// eventually polls cond until it holds, and fails the test when
// waitTimeout passes first.
func eventually(t testing.TB, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(waitTimeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for %s", waitTimeout, what)
		}
		time.Sleep(2 * time.Millisecond)
	}
}

// fakeClock is an observer clock that moves only through Advance.
type fakeClock struct {
	mu  sync.Mutex
	now time.Time
}

func newFakeClock() *fakeClock {
	return &fakeClock{now: time.Date(2025, 6, 1, 12, 0, 0, 0, time.UTC)}
}

func (c *fakeClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

func (c *fakeClock) Advance(d time.Duration) {
	c.mu.Lock()
	c.now = c.now.Add(d)
	c.mu.Unlock()
}

// fleet is a set of instances sharing one embedded store, each with a log,
// writer, heartbeat, membership and reclaimer of its own, as separate
// processes would have against a shared Dapr state store.
type fleet struct {
	store *embedded.Store
	clock *fakeClock
	seq   int
}

func newFleet(t testing.TB) *fleet {
	t.Helper()
	store, err := embedded.Open(t.TempDir(), embedded.Options{})
	if err != nil {
		t.Fatalf("open embedded store: %v", err)
	}
	t.Cleanup(func() { store.Close() })
	return &fleet{store: store, clock: newFakeClock()}
}

func (f *fleet) newLog() *eventlog.Log {
	return eventlog.Open(f.store, eventlog.Options{Validate: schemas.Validate, Projector: projections.Projector{}})
}

func (f *fleet) views() projections.Reader { return projections.Reader{Store: f.store} }

type node struct {
	f         *fleet
	id        Identity
	log       *eventlog.Log
	writer    *eventlog.Writer
	beat      *Heartbeat
	members   *Membership
	reclaimer *Reclaimer
}

// node starts an incarnation of instanceID with a new stream and workers
// that run on the fleet's fake clock.
func (f *fleet) node(t testing.TB, instanceID string) *node {
	t.Helper()
	f.seq++
	id := Identity{
		InstanceID:  instanceID,
		Incarnation: fmt.Sprintf("inc-%03d", f.seq),
		StartedAt:   time.Now().Add(time.Duration(f.seq) * time.Millisecond).UTC(),
		Address:     "127.0.0.1:0",
		Version:     "test",
	}
	n := &node{f: f, id: id, log: f.newLog()}
	var err error
	n.writer, err = n.log.NewWriter(testCtx(t), id.Stream())
	if err != nil {
		t.Fatalf("new writer for %s: %v", id.Stream(), err)
	}
	t.Cleanup(func() { n.writer.Close(context.Background()) })

	n.beat = &Heartbeat{ID: id, Log: n.writer, Views: f.views(), Logger: zerolog.Nop()}
	n.members, err = NewMembership(MembershipConfig{
		Views: f.views(), Self: instanceID, TTL: testTTL, DrainGrace: testGrace, Now: f.clock.Now,
	})
	if err != nil {
		t.Fatalf("new membership: %v", err)
	}
	n.reclaimer = &Reclaimer{ID: id, Log: n.writer, Store: f.store, Members: n.members, BatchSize: 4, Logger: zerolog.Nop()}
	return n
}

func (n *node) heartbeat(t testing.TB, state string) {
	t.Helper()
	if err := n.beat.Beat(testCtx(t), state); err != nil {
		t.Fatalf("heartbeat of %s: %v", n.id.Stream(), err)
	}
}

// heartbeatAt appends a heartbeat whose event time, the sender's clock, is
// at.
func (n *node) heartbeatAt(t testing.TB, state string, at time.Time) {
	t.Helper()
	ev, err := schemas.NewHeartbeat(schemas.Envelope{InstanceID: n.id.InstanceID, Time: at}, schemas.Heartbeat{
		InstanceID: n.id.InstanceID, Incarnation: n.id.Incarnation, State: state,
		StartedAt: n.id.StartedAt, Address: n.id.Address, Version: n.id.Version,
	})
	if err != nil {
		t.Fatalf("build heartbeat: %v", err)
	}
	n.append(t, ev)
}

func (n *node) append(t testing.TB, events ...*event.Event) {
	t.Helper()
	if _, err := n.writer.Append(testCtx(t), events...); err != nil {
		t.Fatalf("append to %s: %v", n.id.Stream(), err)
	}
}

// connect appends a connected event for each connection id, each with a
// user of its own.
func (n *node) connect(t testing.TB, connIDs ...string) {
	t.Helper()
	for _, id := range connIDs {
		ev, err := schemas.NewConnected(schemas.Envelope{InstanceID: n.id.InstanceID}, schemas.Connected{
			ConnectionID: id, InstanceID: n.id.InstanceID, Incarnation: n.id.Incarnation,
			UserID: "user-" + id, RemoteAddr: "127.0.0.1:40000", UserAgent: "test", ConnectedAt: time.Now(),
		})
		if err != nil {
			t.Fatalf("build connected: %v", err)
		}
		n.append(t, ev)
	}
}

func (n *node) disconnect(t testing.TB, connID string) {
	t.Helper()
	ev, err := schemas.NewDisconnected(schemas.Envelope{InstanceID: n.id.InstanceID}, schemas.Disconnected{
		ConnectionID: connID, InstanceID: n.id.InstanceID, Incarnation: n.id.Incarnation, UserID: "user-" + connID,
		CloseCode: 1001, Reason: schemas.ReasonServerShutdown, DisconnectedAt: time.Now(),
	})
	if err != nil {
		t.Fatalf("build disconnected: %v", err)
	}
	n.append(t, ev)
}

func (n *node) pass(t testing.TB) PassStats {
	t.Helper()
	stats, err := n.reclaimer.Pass(testCtx(t))
	if err != nil {
		t.Fatalf("reclaim pass of %s: %v", n.id.Stream(), err)
	}
	return stats
}

func connIDs(prefix string, n int) []string {
	out := make([]string, n)
	for i := range out {
		out[i] = fmt.Sprintf("%s-%02d", prefix, i)
	}
	return out
}

// record returns an instance record, failing the test when it is missing.
func (f *fleet) record(t testing.TB, instanceID string) *projections.Instance {
	t.Helper()
	rec, _, err := f.views().Instance(testCtx(t), instanceID)
	if err != nil {
		t.Fatalf("read record of %s: %v", instanceID, err)
	}
	if rec == nil {
		t.Fatalf("no record of %s", instanceID)
	}
	return rec
}

func (f *fleet) indexed(t testing.TB, instanceID string) bool {
	t.Helper()
	ids, err := f.views().InstanceIDs(testCtx(t))
	if err != nil {
		t.Fatalf("read instance index: %v", err)
	}
	for _, id := range ids {
		if id == instanceID {
			return true
		}
	}
	return false
}

// held returns the connections an instance's shards hold, by id, with the
// incarnation of each.
func (f *fleet) held(t testing.TB, instanceID string) map[string]string {
	t.Helper()
	m, err := f.views().InstanceConnections(testCtx(t), instanceID)
	if err != nil {
		t.Fatalf("read shards of %s: %v", instanceID, err)
	}
	return m
}

func (f *fleet) connOpen(t testing.TB, connID string) bool {
	t.Helper()
	c, err := f.views().Connection(testCtx(t), connID)
	if err != nil {
		t.Fatalf("read connection %s: %v", connID, err)
	}
	return c.Open()
}

// reclaims counts the reclaimed events of each connection in the whole log,
// and records who appended them.
func (f *fleet) reclaims(t testing.TB) (count map[string]int, by map[string]string) {
	t.Helper()
	count, by = map[string]int{}, map[string]string{}
	_, err := eventlog.Open(f.store, eventlog.Options{}).Replay(testCtx(t), nil, func(rec eventlog.Record) error {
		if rec.Event.Type() != schemas.TypeReclaimed {
			return nil
		}
		var d schemas.Reclaimed
		if err := rec.Event.DataAs(&d); err != nil {
			return err
		}
		count[d.ConnectionID]++
		by[d.ConnectionID] = d.ReclaimedBy
		return nil
	})
	if err != nil {
		t.Fatalf("replay the log: %v", err)
	}
	return count, by
}

// verify fails the test when the live views differ from a rebuild of the
// log.
func (f *fleet) verify(t testing.TB) {
	t.Helper()
	res, err := projections.Verify(testCtx(t), f.store)
	if err != nil {
		t.Fatalf("verify views: %v", err)
	}
	for _, d := range res.Differences {
		t.Errorf("view differs from the rebuild: %s", d)
	}
}

// passEvery is the reclaim interval the fleet tests simulate.
const passEvery = 5 * time.Second

// tick moves the fake clock forward by d in steps of passEvery. At each
// step every beater heartbeats and every observer runs a reclaim pass. It
// returns the stats of all passes summed.
func (f *fleet) tick(t testing.TB, d time.Duration, beaters, observers []*node) PassStats {
	t.Helper()
	var sum PassStats
	for elapsed := time.Duration(0); elapsed < d; elapsed += passEvery {
		f.clock.Advance(min(passEvery, d-elapsed))
		for _, n := range beaters {
			n.heartbeat(t, schemas.StateServing)
		}
		for _, n := range observers {
			s := n.pass(t)
			sum.Peers += s.Peers
			sum.Claimed += s.Claimed
			sum.Lost += s.Lost
			sum.Connections += s.Connections
		}
	}
	return sum
}

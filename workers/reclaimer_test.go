package workers

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/cloudevents/sdk-go/v2/event"
	"github.com/rs/zerolog"

	"github.com/virtufin/websocketmanager/eventlog"
	"github.com/virtufin/websocketmanager/schemas"
)

// checkReclaimedOnce fails the test unless each connection has exactly one
// reclaimed event in the log, and no other connection has any.
func checkReclaimedOnce(t *testing.T, f *fleet, conns []string) map[string]string {
	t.Helper()
	count, by := f.reclaims(t)
	for _, id := range conns {
		if count[id] != 1 {
			t.Errorf("connection %s: got %d reclaimed events, want 1", id, count[id])
		}
	}
	if len(count) != len(conns) {
		t.Errorf("got reclaimed events for %d connections, want %d", len(count), len(conns))
	}
	return by
}

func TestReclaimersRaceInPass(t *testing.T) {
	f := newFleet(t)
	a, b, d := f.node(t, "pod-a"), f.node(t, "pod-b"), f.node(t, "pod-d")
	conns := connIDs("d", 20)
	for _, n := range []*node{a, b, d} {
		n.heartbeat(t, schemas.StateServing)
	}
	d.connect(t, conns...)
	a.pass(t)
	b.pass(t)
	if stats := f.tick(t, testTTL-passEvery, []*node{a, b}, []*node{a, b}); stats.Claimed != 0 {
		t.Fatalf("claimed before the TTL ran out: %+v", stats)
	}

	// One more interval and pod-d's counter has been unchanged for the TTL.
	f.clock.Advance(passEvery)
	a.heartbeat(t, schemas.StateServing)
	b.heartbeat(t, schemas.StateServing)
	var wg sync.WaitGroup
	stats := make([]PassStats, 2)
	errs := make([]error, 2)
	for i, n := range []*node{a, b} {
		wg.Go(func() { stats[i], errs[i] = n.reclaimer.Pass(testCtx(t)) })
	}
	wg.Wait()

	for i, err := range errs {
		if err != nil {
			t.Fatalf("pass %d: %v", i, err)
		}
	}
	if got := stats[0].Claimed + stats[1].Claimed; got != 1 {
		t.Fatalf("got %d claims won, want exactly 1 (stats %+v)", got, stats)
	}
	by := checkReclaimedOnce(t, f, conns)
	winner := a.id.Incarnation
	if stats[1].Claimed == 1 {
		winner = b.id.Incarnation
	}
	for id, claimer := range by {
		if claimer != winner {
			t.Errorf("connection %s reclaimed by %s, want the claim winner %s", id, claimer, winner)
		}
	}
	if got := f.record(t, "pod-d").ReclaimedBy; got != winner {
		t.Errorf("pod-d record: got ReclaimedBy %q, want %q", got, winner)
	}
	if f.indexed(t, "pod-d") {
		t.Errorf("pod-d is still in the instance index")
	}
	if got := len(f.held(t, "pod-d")); got != 0 {
		t.Errorf("pod-d shards hold %d connections, want 0", got)
	}
	f.verify(t)
}

func TestReclaimersRaceOnClaim(t *testing.T) {
	f := newFleet(t)
	a, b := f.node(t, "pod-a"), f.node(t, "pod-b")
	var all []string
	var dead []*node
	for i := range 5 {
		d := f.node(t, fmt.Sprintf("pod-d%d", i))
		d.heartbeat(t, schemas.StateServing)
		conns := connIDs(d.id.InstanceID, 8)
		d.connect(t, conns...)
		all = append(all, conns...)
		dead = append(dead, d)
	}

	for _, d := range dead {
		start := make(chan struct{})
		type outcome struct {
			claimed bool
			err     error
		}
		results := make([]outcome, 2)
		var wg sync.WaitGroup
		for i, r := range []*Reclaimer{a.reclaimer, b.reclaimer} {
			wg.Go(func() {
				<-start
				_, claimed, err := r.reclaim(testCtx(t), d.id.InstanceID, d.id.Incarnation, 0, "")
				results[i] = outcome{claimed, err}
			})
		}
		close(start)
		wg.Wait()

		won := 0
		for i, res := range results {
			switch {
			case res.claimed && res.err == nil:
				won++
			case res.claimed:
				t.Errorf("%s reclaimer %d: won the claim but failed: %v", d.id.InstanceID, i, res.err)
			case res.err != nil && !errors.Is(res.err, ErrClaimLost):
				t.Errorf("%s reclaimer %d: got %v, want nil or ErrClaimLost", d.id.InstanceID, i, res.err)
			}
		}
		if won != 1 {
			t.Errorf("%s: got %d winners, want 1 (results %+v)", d.id.InstanceID, won, results)
		}
	}
	checkReclaimedOnce(t, f, all)
	f.verify(t)
}

func TestSlowPeerNeverReclaimed(t *testing.T) {
	f := newFleet(t)
	a, s := f.node(t, "pod-a"), f.node(t, "pod-s")
	a.heartbeat(t, schemas.StateServing)
	s.heartbeat(t, schemas.StateServing)
	s.connect(t, connIDs("s", 3)...)

	// The slow peer beats every 12 s, less often than the 5 s reclaim
	// interval but within the 15 s TTL. Two minutes of observer time.
	for sec := 1; sec <= 120; sec++ {
		f.clock.Advance(time.Second)
		if sec%12 == 0 {
			s.heartbeat(t, schemas.StateServing)
		}
		if sec%5 != 0 {
			continue
		}
		a.heartbeat(t, schemas.StateServing)
		if stats := a.pass(t); stats.Claimed != 0 {
			t.Fatalf("second %d: claimed %d incarnations, want 0", sec, stats.Claimed)
		}
		for _, p := range a.members.Peers() {
			if p.State != PeerAlive {
				t.Fatalf("second %d: slow peer is %v after %v quiet, want alive", sec, p.State, p.Quiet)
			}
		}
	}

	if got := f.record(t, "pod-s").ReclaimedBy; got != "" {
		t.Errorf("slow peer record: got ReclaimedBy %q, want none", got)
	}
	if got := len(f.held(t, "pod-s")); got != 3 {
		t.Errorf("slow peer holds %d connections, want 3", got)
	}
	f.verify(t)
}

func TestSkewedHeartbeatTimeIgnored(t *testing.T) {
	tests := []struct {
		name      string
		skew      time.Duration
		beating   bool
		wantClaim bool
	}{
		{"ahead and dead", 5 * time.Hour, false, true},
		{"behind and dead", -5 * time.Hour, false, true},
		{"ahead and beating", 5 * time.Hour, true, false},
		{"behind and beating", -5 * time.Hour, true, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := newFleet(t)
			a, k := f.node(t, "pod-a"), f.node(t, "pod-k")
			conns := connIDs("k", 2)
			a.heartbeat(t, schemas.StateServing)
			k.heartbeatAt(t, schemas.StateServing, time.Now().Add(tt.skew))
			k.connect(t, conns...)

			// A heartbeat hours old by the sender's clock condemns no one
			// at first sight.
			if stats := a.pass(t); stats.Claimed != 0 {
				t.Fatalf("first pass: claimed %d, want 0", stats.Claimed)
			}
			claimed := 0
			for range 12 {
				f.clock.Advance(passEvery)
				a.heartbeat(t, schemas.StateServing)
				if tt.beating {
					k.heartbeatAt(t, schemas.StateServing, time.Now().Add(tt.skew))
				}
				claimed += a.pass(t).Claimed
			}

			if got := claimed == 1; got != tt.wantClaim {
				t.Errorf("got %d claims, want claimed %v", claimed, tt.wantClaim)
			}
			if got := len(f.held(t, "pod-k")) == 0; got != tt.wantClaim {
				t.Errorf("pod-k connections reclaimed: got %v, want %v", got, tt.wantClaim)
			}
			f.verify(t)
		})
	}
}

func TestNewIncarnationDuringReclaim(t *testing.T) {
	f := newFleet(t)
	a, d1 := f.node(t, "pod-a"), f.node(t, "pod-d")
	old := connIDs("old", 5)
	a.heartbeat(t, schemas.StateServing)
	d1.heartbeat(t, schemas.StateServing)
	d1.connect(t, old...)
	a.pass(t)
	f.tick(t, testTTL-passEvery, []*node{a}, []*node{a})
	f.clock.Advance(passEvery)
	a.heartbeat(t, schemas.StateServing)

	// pod-d restarts between the claim and the reclaimed events.
	var d2 *node
	a.reclaimer.afterClaim = func() {
		d2 = f.node(t, "pod-d")
		d2.heartbeat(t, schemas.StateStarting)
		d2.connect(t, "new-1")
	}
	stats := a.pass(t)

	if stats.Claimed != 1 || stats.Connections != len(old) {
		t.Fatalf("got %+v, want 1 claim and %d connections", stats, len(old))
	}
	checkReclaimedOnce(t, f, old)
	if !f.connOpen(t, "new-1") {
		t.Errorf("connection new-1 of the new incarnation was closed")
	}
	rec := f.record(t, "pod-d")
	if rec.Incarnation != d2.id.Incarnation || rec.ReclaimedBy != "" {
		t.Errorf("pod-d record: got incarnation %s reclaimed by %q, want %s unclaimed", rec.Incarnation, rec.ReclaimedBy, d2.id.Incarnation)
	}
	if !f.indexed(t, "pod-d") {
		t.Errorf("the new incarnation of pod-d was removed from the instance index")
	}
	if held := f.held(t, "pod-d"); len(held) != 1 || held["new-1"] != d2.id.Incarnation {
		t.Errorf("pod-d shards: got %v, want only new-1 of %s", held, d2.id.Incarnation)
	}
	f.verify(t)
}

func TestNewIncarnationBeforeClaim(t *testing.T) {
	f := newFleet(t)
	a, d1 := f.node(t, "pod-a"), f.node(t, "pod-d")
	old := connIDs("old", 3)
	a.heartbeat(t, schemas.StateServing)
	d1.heartbeat(t, schemas.StateServing)
	d1.connect(t, old...)
	a.pass(t)
	f.tick(t, testTTL-passEvery, []*node{a}, []*node{a})
	f.clock.Advance(passEvery)
	peers, err := a.members.Observe(testCtx(t))
	if err != nil {
		t.Fatalf("observe: %v", err)
	}
	if len(peers) != 1 || peers[0].State != PeerSuspect {
		t.Fatalf("got %+v, want pod-d suspect", peers)
	}

	// pod-d restarts after the observation and before the claim.
	d2 := f.node(t, "pod-d")
	d2.heartbeat(t, schemas.StateStarting)
	_, err = a.reclaimer.ReclaimIncarnation(testCtx(t), "pod-d", d1.id.Incarnation)

	if !errors.Is(err, ErrClaimLost) {
		t.Fatalf("reclaim a superseded incarnation: got %v, want ErrClaimLost", err)
	}
	if rec := f.record(t, "pod-d"); rec.ReclaimedBy != "" {
		t.Errorf("the new incarnation was claimed by %s", rec.ReclaimedBy)
	}
	// The new incarnation reclaims what the old one left, at its startup.
	n, err := d2.reclaimer.ReclaimPrevious(testCtx(t))
	if err != nil || n != len(old) {
		t.Fatalf("reclaim previous: got (%d, %v), want (%d, nil)", n, err, len(old))
	}
	checkReclaimedOnce(t, f, old)
	f.verify(t)
}

func TestHeartbeatAfterObservationRefutes(t *testing.T) {
	f := newFleet(t)
	a, d := f.node(t, "pod-a"), f.node(t, "pod-d")
	a.heartbeat(t, schemas.StateServing)
	d.heartbeat(t, schemas.StateServing)
	d.connect(t, "d-1")
	a.pass(t)
	f.tick(t, testTTL-passEvery, []*node{a}, []*node{a})
	f.clock.Advance(passEvery)
	peers, err := a.members.Observe(testCtx(t))
	if err != nil {
		t.Fatalf("observe: %v", err)
	}
	if len(peers) != 1 || peers[0].State != PeerSuspect {
		t.Fatalf("got %+v, want pod-d suspect", peers)
	}

	// pod-d was only slow: its heartbeat lands between the observation and
	// the claim.
	d.heartbeat(t, schemas.StateServing)
	n, claimed, err := a.reclaimer.handle(testCtx(t), a.id, peers[0])

	if !errors.Is(err, ErrClaimLost) {
		t.Errorf("claim after a fresh heartbeat: got %v, want ErrClaimLost", err)
	}
	if claimed || n != 0 {
		t.Errorf("got claimed %v and %d reclaimed, want neither", claimed, n)
	}
	if got := f.record(t, "pod-d").ReclaimedBy; got != "" {
		t.Errorf("pod-d record: got ReclaimedBy %q, want none", got)
	}
	if !f.connOpen(t, "d-1") {
		t.Errorf("connection d-1 of the slow peer was closed")
	}
	f.verify(t)
}

// failingAppender passes the first allowed appends through and fails the
// rest, like a reclaimer that dies part way.
type failingAppender struct {
	next Appender

	mu      sync.Mutex // the reclaimer appends several batches at once
	allowed int
	calls   int
}

var errDied = errors.New("reclaimer process died")

func (a *failingAppender) Append(ctx context.Context, events ...*event.Event) ([]eventlog.Position, error) {
	a.mu.Lock()
	a.calls++
	if a.allowed == 0 {
		a.mu.Unlock()
		return nil, errDied
	}
	a.allowed--
	a.mu.Unlock()
	return a.next.Append(ctx, events...)
}

// syncBuffer is a log sink that tests read while the workers write.
type syncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

// lines returns the logged JSON objects whose message is msg.
func (b *syncBuffer) lines(t *testing.T, msg string) []map[string]any {
	t.Helper()
	b.mu.Lock()
	defer b.mu.Unlock()
	var out []map[string]any
	for _, line := range bytes.Split(b.buf.Bytes(), []byte("\n")) {
		if len(line) == 0 {
			continue
		}
		var m map[string]any
		if err := json.Unmarshal(line, &m); err != nil {
			t.Fatalf("log line %q is not JSON: %v", line, err)
		}
		if m["message"] == msg {
			out = append(out, m)
		}
	}
	return out
}

func TestTakeOverAbandonedClaim(t *testing.T) {
	f := newFleet(t)
	a, d, x := f.node(t, "pod-a"), f.node(t, "pod-d"), f.node(t, "pod-x")
	var logs syncBuffer
	a.reclaimer.Logger = zerolog.New(&logs)
	conns := connIDs("d", 6)
	a.heartbeat(t, schemas.StateServing)
	d.heartbeat(t, schemas.StateServing)
	d.connect(t, conns...)

	// pod-x, which a never saw alive, claims pod-d and dies at once.
	if _, err := x.reclaimer.Claim(testCtx(t), "pod-d", d.id.Incarnation); err != nil {
		t.Fatalf("claim by pod-x: %v", err)
	}
	if stats := a.pass(t); stats.Claimed != 0 {
		t.Fatalf("first sight of the claim: claimed %d, want 0", stats.Claimed)
	}
	stats := f.tick(t, testTTL, []*node{a}, []*node{a})

	if stats.Claimed != 1 || stats.Connections != len(conns) {
		t.Fatalf("got %+v, want 1 claim taken over and %d connections", stats, len(conns))
	}
	for id, claimer := range checkReclaimedOnce(t, f, conns) {
		if claimer != a.id.Incarnation {
			t.Errorf("connection %s reclaimed by %s, want %s", id, claimer, a.id.Incarnation)
		}
	}
	if got := f.record(t, "pod-d").ReclaimedBy; got != a.id.Incarnation {
		t.Errorf("pod-d record: got ReclaimedBy %q, want %q", got, a.id.Incarnation)
	}
	if f.indexed(t, "pod-d") {
		t.Errorf("pod-d is still in the instance index")
	}
	won := logs.lines(t, "claim won")
	if len(won) != 1 {
		t.Fatalf("got %d 'claim won' log lines, want 1", len(won))
	}
	wantFields := map[string]string{
		"instance_id": "pod-d", "incarnation": d.id.Incarnation,
		"reclaimed_by": a.id.Incarnation, "abandoned_by": x.id.Incarnation,
	}
	for k, want := range wantFields {
		if got := won[0][k]; got != want {
			t.Errorf("'claim won' field %s: got %v, want %s", k, got, want)
		}
	}
	if got := logs.lines(t, "reclaimed the connections of a dead incarnation"); len(got) != 1 || got[0]["connections"] != float64(len(conns)) {
		t.Errorf("got reclaim summary lines %v, want one with connections %d", got, len(conns))
	}
	f.verify(t)
}

func TestTakeOverPartialReclaim(t *testing.T) {
	f := newFleet(t)
	a, d, x := f.node(t, "pod-a"), f.node(t, "pod-d"), f.node(t, "pod-x")
	conns := connIDs("d", 10)
	a.heartbeat(t, schemas.StateServing)
	d.heartbeat(t, schemas.StateServing)
	d.connect(t, conns...)
	a.pass(t)

	// pod-x claims pod-d, appends one batch of 5 reclaimed events and dies.
	// The fold of that batch drops pod-d from the index. With two batches
	// of the same size in flight, either may be the one that lands.
	x.reclaimer.Log = &failingAppender{next: x.writer, allowed: 1}
	x.reclaimer.BatchSize = 5
	n, err := x.reclaimer.ReclaimIncarnation(testCtx(t), "pod-d", d.id.Incarnation)
	if !errors.Is(err, errDied) || n != 5 {
		t.Fatalf("partial reclaim by pod-x: got (%d, %v), want (5, %v)", n, err, errDied)
	}
	if f.indexed(t, "pod-d") {
		t.Fatalf("pod-d is still indexed after pod-x's first batch")
	}

	f.clock.Advance(time.Second)
	a.heartbeat(t, schemas.StateServing)
	if stats := a.pass(t); stats.Claimed != 0 {
		t.Fatalf("first sight of the claim: claimed %d, want 0", stats.Claimed)
	}
	stats := f.tick(t, testTTL, []*node{a}, []*node{a})

	if stats.Claimed != 1 || stats.Connections != 5 {
		t.Fatalf("got %+v, want 1 claim taken over and the 5 connections left", stats)
	}
	checkReclaimedOnce(t, f, conns)
	if got := len(f.held(t, "pod-d")); got != 0 {
		t.Errorf("pod-d shards hold %d connections, want 0", got)
	}
	if got := len(a.members.Peers()); got != 0 {
		t.Errorf("membership tracks %d peers after the takeover, want 0", got)
	}
	f.verify(t)
}

func TestReclaimStopsAfterFailedBatch(t *testing.T) {
	f := newFleet(t)
	d, x := f.node(t, "pod-d"), f.node(t, "pod-x")
	d.heartbeat(t, schemas.StateServing)
	d.connect(t, connIDs("d", 40)...)

	// 10 batches of 4; the third append fails. The batches already in
	// flight may still try, but no batch starts after the failure is seen.
	failing := &failingAppender{next: x.writer, allowed: 2}
	x.reclaimer.Log = failing
	n, err := x.reclaimer.ReclaimIncarnation(testCtx(t), "pod-d", d.id.Incarnation)
	if !errors.Is(err, errDied) {
		t.Fatalf("reclaim error: got %v, want %v", err, errDied)
	}
	if n != 8 {
		t.Errorf("reclaimed: got %d, want the 8 of the two appends that succeeded", n)
	}
	if limit := 2 + reclaimPipeline; failing.calls > limit {
		t.Errorf("appends tried: got %d, want at most %d (two successes, then the batches in flight)", failing.calls, limit)
	}
	if got := len(f.held(t, "pod-d")); got != 32 {
		t.Errorf("pod-d shards hold %d connections, want the 32 not reclaimed", got)
	}
}

func TestLiveClaimerIsNotTakenOver(t *testing.T) {
	f := newFleet(t)
	a, b, d := f.node(t, "pod-a"), f.node(t, "pod-b"), f.node(t, "pod-d")
	conns := connIDs("d", 3)
	for _, n := range []*node{a, b, d} {
		n.heartbeat(t, schemas.StateServing)
	}
	d.connect(t, conns...)
	a.pass(t)

	// pod-b claims pod-d and stalls before reclaiming, while it keeps
	// beating.
	if _, err := b.reclaimer.Claim(testCtx(t), "pod-d", d.id.Incarnation); err != nil {
		t.Fatalf("claim by pod-b: %v", err)
	}
	if stats := f.tick(t, 4*passEvery, []*node{a, b}, []*node{a}); stats.Claimed != 0 || stats.Connections != 0 {
		t.Fatalf("took over the claim of a live claimer: %+v", stats)
	}

	// pod-b dies. Then a reclaims it and takes over its claim on pod-d.
	if stats := f.tick(t, 5*passEvery, []*node{a}, []*node{a}); stats.Claimed != 2 {
		t.Errorf("got %d claims, want 2: pod-b, then pod-d's abandoned claim", stats.Claimed)
	}
	checkReclaimedOnce(t, f, conns)
	if got := f.record(t, "pod-b").ReclaimedBy; got != a.id.Incarnation {
		t.Errorf("pod-b record: got ReclaimedBy %q, want %q", got, a.id.Incarnation)
	}
	f.verify(t)
}

func TestStoppedPeer(t *testing.T) {
	tests := []struct {
		name     string
		leftover bool
	}{
		{"drained cleanly", false},
		{"left a connection", true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := newFleet(t)
			a, p := f.node(t, "pod-a"), f.node(t, "pod-p")
			a.heartbeat(t, schemas.StateServing)
			p.heartbeat(t, schemas.StateServing)
			p.connect(t, "p-1", "p-2")
			a.pass(t)

			p.heartbeat(t, schemas.StateDraining)
			p.disconnect(t, "p-1")
			if !tt.leftover {
				p.disconnect(t, "p-2")
			}
			p.heartbeat(t, schemas.StateStopped)
			f.clock.Advance(time.Second)
			if stats := a.pass(t); stats.Claimed != 0 {
				t.Fatalf("pass right after the stop: claimed %d, want 0", stats.Claimed)
			}
			stats := f.tick(t, testTTL, []*node{a}, []*node{a})

			wantClaims, wantReclaimed := 0, []string(nil)
			if tt.leftover {
				wantClaims, wantReclaimed = 1, []string{"p-2"}
			}
			if stats.Claimed != wantClaims {
				t.Errorf("got %d claims, want %d", stats.Claimed, wantClaims)
			}
			checkReclaimedOnce(t, f, wantReclaimed)
			wantBy := ""
			if tt.leftover {
				wantBy = a.id.Incarnation
			}
			if got := f.record(t, "pod-p").ReclaimedBy; got != wantBy {
				t.Errorf("pod-p record: got ReclaimedBy %q, want %q", got, wantBy)
			}
			if got := len(a.members.Peers()); got != 0 {
				t.Errorf("membership tracks %d peers, want 0 once the stopped peer is done", got)
			}
			f.verify(t)
		})
	}
}

func TestReclaimPrevious(t *testing.T) {
	f := newFleet(t)
	p1 := f.node(t, "pod-p")
	conns := connIDs("p", 3)
	p1.heartbeat(t, schemas.StateServing)
	p1.connect(t, conns...)

	p2 := f.node(t, "pod-p")
	n, err := p2.reclaimer.ReclaimPrevious(testCtx(t))
	if err != nil || n != len(conns) {
		t.Fatalf("reclaim previous: got (%d, %v), want (%d, nil)", n, err, len(conns))
	}
	p2.heartbeat(t, schemas.StateServing)

	checkReclaimedOnce(t, f, conns)
	rec := f.record(t, "pod-p")
	if rec.Incarnation != p2.id.Incarnation || !rec.Live() {
		t.Errorf("pod-p record: got incarnation %s live %v, want %s live", rec.Incarnation, rec.Live(), p2.id.Incarnation)
	}
	if !f.indexed(t, "pod-p") {
		t.Errorf("pod-p is not in the instance index after its new heartbeat")
	}
	f.verify(t)
}

// recordingPublication records the streams a reclaimer enqueues for
// draining.
type recordingPublication struct {
	mu      sync.Mutex
	streams []string
}

func (p *recordingPublication) Enqueue(stream string) {
	p.mu.Lock()
	p.streams = append(p.streams, stream)
	p.mu.Unlock()
}

func (p *recordingPublication) list() []string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return append([]string(nil), p.streams...)
}

func TestRunReclaimsDeadPeer(t *testing.T) {
	f := newFleet(t)
	a, d := f.node(t, "pod-a"), f.node(t, "pod-d")
	conns := connIDs("d", 4)
	d.heartbeat(t, schemas.StateServing)
	d.connect(t, conns...)

	members, err := NewMembership(MembershipConfig{Views: f.views(), Self: "pod-a", TTL: 150 * time.Millisecond, DrainGrace: time.Millisecond})
	if err != nil {
		t.Fatalf("new membership: %v", err)
	}
	var drains recordingPublication
	a.reclaimer.Members = members
	a.reclaimer.Interval = 20 * time.Millisecond
	a.reclaimer.Publication = &drains
	a.beat.Interval = 30 * time.Millisecond

	ctx, cancel := context.WithCancel(testCtx(t))
	var wg sync.WaitGroup
	wg.Go(func() { a.beat.Run(ctx) })
	runErr := make(chan error, 1)
	wg.Go(func() { runErr <- a.reclaimer.Run(ctx) })

	eventually(t, "pod-d's connections reclaimed", func() bool { return len(f.held(t, "pod-d")) == 0 })
	eventually(t, "pod-d's stream queued for draining", func() bool { return len(drains.list()) == 1 })
	cancel()
	wg.Wait()

	if err := <-runErr; err != nil {
		t.Errorf("Run: got %v, want nil after cancel", err)
	}
	if got := drains.list(); got[0] != d.id.Stream() {
		t.Errorf("queued stream %s, want %s", got[0], d.id.Stream())
	}
	if rec := f.record(t, "pod-a"); !rec.Live() {
		t.Errorf("pod-a was reclaimed: its record is %+v", rec)
	}
	checkReclaimedOnce(t, f, conns)
	f.verify(t)
}

func TestReclaimerValidate(t *testing.T) {
	f := newFleet(t)
	n := f.node(t, "pod-a")
	tests := []struct {
		name   string
		change func(r *Reclaimer)
	}{
		{"no incarnation", func(r *Reclaimer) { r.ID.Incarnation = "" }},
		{"no log", func(r *Reclaimer) { r.Log = nil }},
		{"no store", func(r *Reclaimer) { r.Store = nil }},
		{"no members", func(r *Reclaimer) { r.Members = nil }},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := &Reclaimer{ID: n.id, Log: n.writer, Store: f.store, Members: n.members}
			tt.change(r)
			if err := r.Run(testCtx(t)); !errors.Is(err, ErrInvalidConfig) {
				t.Errorf("Run: got %v, want ErrInvalidConfig", err)
			}
		})
	}
	r := &Reclaimer{ID: n.id, Log: n.writer, Store: f.store, Members: n.members}
	if err := r.Validate(); err != nil {
		t.Errorf("complete reclaimer: got %v, want nil", err)
	}
}

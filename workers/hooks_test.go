package workers

import (
	"context"
	"errors"
	"sync"
	"testing"
	"time"

	"github.com/virtufin/websocketmanager/internal/embedded"
	"github.com/virtufin/websocketmanager/schemas"
)

// reclaimHooks records the calls of a Reclaimer's OnPass, OnClaim and
// OnReclaimed.
type reclaimHooks struct {
	mu        sync.Mutex
	passes    []PassStats
	passErrs  int
	won, lost int
	appends   []int // events per OnReclaimed call
}

func (h *reclaimHooks) install(r *Reclaimer) {
	r.OnPass = func(s PassStats, err error) {
		h.mu.Lock()
		defer h.mu.Unlock()
		h.passes = append(h.passes, s)
		if err != nil {
			h.passErrs++
		}
	}
	r.OnClaim = func(won bool) {
		h.mu.Lock()
		defer h.mu.Unlock()
		if won {
			h.won++
		} else {
			h.lost++
		}
	}
	r.OnReclaimed = func(n int) {
		h.mu.Lock()
		defer h.mu.Unlock()
		h.appends = append(h.appends, n)
	}
}

func (h *reclaimHooks) claims() (won, lost int) {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.won, h.lost
}

func (h *reclaimHooks) reclaimed() (total int, appends []int) {
	h.mu.Lock()
	defer h.mu.Unlock()
	for _, n := range h.appends {
		total += n
	}
	return total, append([]int(nil), h.appends...)
}

func (h *reclaimHooks) passStats() (passes, claimed, connections, failed int) {
	h.mu.Lock()
	defer h.mu.Unlock()
	for _, s := range h.passes {
		claimed += s.Claimed
		connections += s.Connections
	}
	return len(h.passes), claimed, connections, h.passErrs
}

func TestReclaimerClaimHooks(t *testing.T) {
	f := newFleet(t)
	a, b, d := f.node(t, "pod-a"), f.node(t, "pod-b"), f.node(t, "pod-d")
	d.heartbeat(t, schemas.StateServing)
	conns := connIDs("d", 6)
	d.connect(t, conns...)
	var hooksA, hooksB reclaimHooks
	hooksA.install(a.reclaimer)
	hooksB.install(b.reclaimer)

	n, err := a.reclaimer.ReclaimIncarnation(testCtx(t), d.id.InstanceID, d.id.Incarnation)
	if err != nil || n != len(conns) {
		t.Fatalf("ReclaimIncarnation: got (%d, %v), want (%d, nil)", n, err, len(conns))
	}
	if won, lost := hooksA.claims(); won != 1 || lost != 0 {
		t.Errorf("winner's OnClaim: got %d won and %d lost, want 1 and 0", won, lost)
	}
	total, appends := hooksA.reclaimed()
	if total != len(conns) {
		t.Errorf("OnReclaimed total: got %d, want %d", total, len(conns))
	}
	if len(appends) != 2 {
		t.Errorf("OnReclaimed calls: got %v, want 2 appends with a batch size of 4", appends)
	}

	// The record now shows pod-a's claim, so pod-b's compare-and-swap loses.
	if _, err := b.reclaimer.Claim(testCtx(t), d.id.InstanceID, d.id.Incarnation); !errors.Is(err, ErrClaimLost) {
		t.Fatalf("second Claim: got %v, want ErrClaimLost", err)
	}
	// An incarnation the record does not show is lost too.
	if _, err := b.reclaimer.ReclaimIncarnation(testCtx(t), a.id.InstanceID, "inc-none"); !errors.Is(err, ErrClaimLost) {
		t.Fatalf("ReclaimIncarnation of an unknown incarnation: got %v, want ErrClaimLost", err)
	}
	if won, lost := hooksB.claims(); won != 0 || lost != 2 {
		t.Errorf("loser's OnClaim: got %d won and %d lost, want 0 and 2", won, lost)
	}
	if total, _ := hooksB.reclaimed(); total != 0 {
		t.Errorf("loser's OnReclaimed total: got %d, want 0", total)
	}
}

func TestReclaimerOnPassFromRun(t *testing.T) {
	f := newFleet(t)
	a, d := f.node(t, "pod-a"), f.node(t, "pod-d")
	conns := connIDs("d", 3)
	d.heartbeat(t, schemas.StateServing)
	d.connect(t, conns...)

	members, err := NewMembership(MembershipConfig{Views: f.views(), Self: "pod-a", TTL: 150 * time.Millisecond, DrainGrace: time.Millisecond})
	if err != nil {
		t.Fatalf("new membership: %v", err)
	}
	var hooks reclaimHooks
	hooks.install(a.reclaimer)
	a.reclaimer.Members = members
	a.reclaimer.Interval = 20 * time.Millisecond
	a.beat.Interval = 30 * time.Millisecond

	ctx, cancel := context.WithCancel(testCtx(t))
	var wg sync.WaitGroup
	wg.Go(func() { a.beat.Run(ctx) })
	wg.Go(func() { _ = a.reclaimer.Run(ctx) })
	eventually(t, "a pass that reclaims pod-d", func() bool {
		_, _, connections, _ := hooks.passStats()
		return connections == len(conns)
	})
	cancel()
	wg.Wait()

	passes, claimed, connections, failed := hooks.passStats()
	if passes < 1 {
		t.Errorf("OnPass calls: got %d, want at least 1", passes)
	}
	if claimed != 1 {
		t.Errorf("claims over all passes: got %d, want 1", claimed)
	}
	if connections != len(conns) {
		t.Errorf("connections over all passes: got %d, want %d", connections, len(conns))
	}
	if failed != 0 {
		t.Errorf("passes with an error: got %d, want 0", failed)
	}
	if won, _ := hooks.claims(); won != 1 {
		t.Errorf("OnClaim won: got %d, want 1", won)
	}
}

func TestPublisherOnPublish(t *testing.T) {
	f := newFleet(t)
	n := f.node(t, "pod-a")
	broker := &flakyPubSub{PubSub: embedded.NewPubSub()}
	sub := subscribe(t, broker, DefaultTopic)

	var mu sync.Mutex
	var ok, failed int
	pub := newTestPublisher(t, f, broker, func(c *PublisherConfig) {
		c.OnPublish = func(err error) {
			mu.Lock()
			defer mu.Unlock()
			if err != nil {
				failed++
				return
			}
			ok++
		}
	})
	counts := func() (int, int) {
		mu.Lock()
		defer mu.Unlock()
		return ok, failed
	}
	stop := follow(t, pub, n.id.Stream())

	n.connect(t, "c1")
	eventually(t, "the first event published", func() bool { return sub.count() == 1 })
	broker.down.Store(true)
	n.connect(t, "c2")
	eventually(t, "two failed attempts", func() bool { return broker.failures.Load() >= 2 })
	broker.down.Store(false)
	eventually(t, "the second event published", func() bool { return sub.count() == 2 })
	if err := stop(); err != nil {
		t.Fatalf("Follow: %v", err)
	}

	gotOK, gotFailed := counts()
	if gotOK != 2 {
		t.Errorf("OnPublish successes: got %d, want 2", gotOK)
	}
	if want := int(broker.failures.Load()); gotFailed != want {
		t.Errorf("OnPublish failures: got %d, want %d, one per failed attempt", gotFailed, want)
	}
}

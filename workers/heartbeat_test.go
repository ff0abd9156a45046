package workers

import (
	"context"
	"errors"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/virtufin/websocketmanager/schemas"
)

func TestHeartbeatFencedOnceThenRejoin(t *testing.T) {
	f := newFleet(t)
	n, peer := f.node(t, "pod-n"), f.node(t, "pod-b")
	var fenced atomic.Int32
	var fencedBy atomic.Value
	n.beat.OnFenced = func(by string) {
		fenced.Add(1)
		fencedBy.Store(by)
	}
	n.heartbeat(t, schemas.StateServing)
	if _, err := peer.reclaimer.Claim(testCtx(t), "pod-n", n.id.Incarnation); err != nil {
		t.Fatalf("claim by pod-b: %v", err)
	}

	n.heartbeat(t, schemas.StateServing)
	n.heartbeat(t, schemas.StateServing)

	if got := fenced.Load(); got != 1 {
		t.Fatalf("OnFenced ran %d times over two heartbeats, want 1", got)
	}
	if got := fencedBy.Load(); got != peer.id.Incarnation {
		t.Errorf("OnFenced got reclaimedBy %v, want %s", got, peer.id.Incarnation)
	}
	if !n.beat.Fenced() {
		t.Errorf("Fenced: got false after the claim, want true")
	}
	if f.indexed(t, "pod-n") {
		t.Errorf("the fenced incarnation is still in the instance index")
	}

	// Rejoin as a new incarnation on a new stream.
	next := f.node(t, "pod-n")
	if err := n.beat.Rejoin(next.id, next.writer); err != nil {
		t.Fatalf("rejoin: %v", err)
	}
	if n.beat.Fenced() {
		t.Errorf("Fenced: got true after Rejoin, want false")
	}
	if got := n.beat.Identity().Incarnation; got != next.id.Incarnation {
		t.Errorf("Identity after Rejoin: got %s, want %s", got, next.id.Incarnation)
	}
	n.heartbeat(t, schemas.StateServing)

	rec := f.record(t, "pod-n")
	if rec.Incarnation != next.id.Incarnation {
		t.Errorf("record incarnation: got %s, want %s", rec.Incarnation, next.id.Incarnation)
	}
	if !rec.Live() {
		t.Errorf("record of the new incarnation is not live: %+v", rec)
	}
	if !f.indexed(t, "pod-n") {
		t.Errorf("the new incarnation is not in the instance index")
	}
	if got := fenced.Load(); got != 1 {
		t.Errorf("OnFenced ran %d times in all, want 1", got)
	}
	f.verify(t)
}

func TestHeartbeatFencedAgainAfterRejoin(t *testing.T) {
	f := newFleet(t)
	n, peer := f.node(t, "pod-n"), f.node(t, "pod-b")
	var fenced atomic.Int32
	n.beat.OnFenced = func(string) { fenced.Add(1) }
	n.heartbeat(t, schemas.StateServing)
	if _, err := peer.reclaimer.Claim(testCtx(t), "pod-n", n.id.Incarnation); err != nil {
		t.Fatalf("claim by pod-b: %v", err)
	}
	n.heartbeat(t, schemas.StateServing)

	next := f.node(t, "pod-n")
	if err := n.beat.Rejoin(next.id, next.writer); err != nil {
		t.Fatalf("rejoin: %v", err)
	}
	n.heartbeat(t, schemas.StateServing)
	if _, err := peer.reclaimer.Claim(testCtx(t), "pod-n", next.id.Incarnation); err != nil {
		t.Fatalf("claim of the new incarnation: %v", err)
	}
	n.heartbeat(t, schemas.StateServing)

	if got := fenced.Load(); got != 2 {
		t.Errorf("OnFenced ran %d times, want once per claimed incarnation, 2", got)
	}
}

func TestHeartbeatRejoinValidates(t *testing.T) {
	f := newFleet(t)
	n := f.node(t, "pod-n")
	tests := []struct {
		name string
		id   Identity
		log  Appender
	}{
		{"no incarnation", Identity{InstanceID: "pod-n"}, n.writer},
		{"no instance", Identity{Incarnation: "inc-x"}, n.writer},
		{"no appender", Identity{InstanceID: "pod-n", Incarnation: "inc-x"}, nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if err := n.beat.Rejoin(tt.id, tt.log); !errors.Is(err, ErrInvalidConfig) {
				t.Errorf("got %v, want ErrInvalidConfig", err)
			}
			if got := n.beat.Identity(); got != n.id {
				t.Errorf("a rejected Rejoin changed the identity to %+v", got)
			}
		})
	}
}

func TestHeartbeatRunBeatsUntilCanceled(t *testing.T) {
	f := newFleet(t)
	n := f.node(t, "pod-n")
	n.beat.Interval = 10 * time.Millisecond
	n.beat.SetState(schemas.StateServing)

	ctx, cancel := context.WithCancel(testCtx(t))
	var wg sync.WaitGroup
	wg.Go(func() { n.beat.Run(ctx) })
	eventually(t, "three heartbeats", func() bool {
		rec, _, err := f.views().Instance(testCtx(t), "pod-n")
		return err == nil && rec != nil && rec.HeartbeatSeq >= 3
	})
	cancel()
	wg.Wait()

	if got := f.record(t, "pod-n").State; got != schemas.StateServing {
		t.Errorf("record state: got %s, want %s", got, schemas.StateServing)
	}
}

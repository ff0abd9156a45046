package workers

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/virtufin/websocketmanager/projections"
	"github.com/virtufin/websocketmanager/schemas"
)

// sighting is one observation of a peer's record in a state machine test.
type sighting struct {
	after       time.Duration // observer time since the previous sighting
	incarnation string
	seq         uint64
	state       string
	reclaimedBy string
	sentAt      time.Duration // LastHeartbeatAt relative to the observer's start
	want        PeerState
	wantSettled bool
}

func TestAdvanceStateMachine(t *testing.T) {
	const ttl, grace = 15 * time.Second, 30 * time.Second
	serving, draining, stopped := schemas.StateServing, schemas.StateDraining, schemas.StateStopped
	tests := []struct {
		name      string
		sightings []sighting
	}{
		{"first sight starts the timer", []sighting{
			{0, "i1", 7, serving, "", 0, PeerAlive, false},
			{14 * time.Second, "i1", 7, serving, "", 0, PeerAlive, false},
			{time.Second, "i1", 7, serving, "", 0, PeerSuspect, false},
		}},
		{"higher counter refutes suspicion", []sighting{
			{0, "i1", 1, serving, "", 0, PeerAlive, false},
			{16 * time.Second, "i1", 1, serving, "", 0, PeerSuspect, false},
			{time.Second, "i1", 2, serving, "", 0, PeerAlive, false},
			{14 * time.Second, "i1", 2, serving, "", 0, PeerAlive, false},
		}},
		{"newer incarnation refutes suspicion", []sighting{
			{0, "i1", 4, serving, "", 0, PeerAlive, false},
			{20 * time.Second, "i1", 4, serving, "", 0, PeerSuspect, false},
			{time.Second, "i2", 1, schemas.StateStarting, "", 0, PeerAlive, false},
		}},
		{"lower counter counts as a change", []sighting{
			{0, "i1", 9, serving, "", 0, PeerAlive, false},
			{10 * time.Second, "i1", 3, serving, "", 0, PeerAlive, false},
			{10 * time.Second, "i1", 3, serving, "", 0, PeerAlive, false},
			{5 * time.Second, "i1", 3, serving, "", 0, PeerSuspect, false},
		}},
		{"draining gets the grace", []sighting{
			{0, "i1", 5, draining, "", 0, PeerDraining, false},
			{ttl, "i1", 5, draining, "", 0, PeerDraining, false},
			{grace - time.Second, "i1", 5, draining, "", 0, PeerDraining, false},
			{time.Second, "i1", 5, draining, "", 0, PeerSuspect, false},
		}},
		{"draining peer that keeps beating", []sighting{
			{0, "i1", 1, draining, "", 0, PeerDraining, false},
			{40 * time.Second, "i1", 2, draining, "", 0, PeerDraining, false},
			{40 * time.Second, "i1", 3, draining, "", 0, PeerDraining, false},
			{40 * time.Second, "i1", 4, draining, "", 0, PeerDraining, false},
		}},
		{"stopped settles after the TTL", []sighting{
			{0, "i1", 3, serving, "", 0, PeerAlive, false},
			{time.Second, "i1", 4, stopped, "", 0, PeerStopped, false},
			{ttl, "i1", 4, stopped, "", 0, PeerStopped, true},
		}},
		{"claim settles after the TTL", []sighting{
			{0, "i1", 3, serving, "", 0, PeerAlive, false},
			{20 * time.Second, "i1", 3, serving, "b1", 0, PeerReclaimed, false},
			{ttl - time.Second, "i1", 3, serving, "b1", 0, PeerReclaimed, false},
			{time.Second, "i1", 3, serving, "b1", 0, PeerReclaimed, true},
		}},
		{"new claimer restarts the claim timer", []sighting{
			{0, "i1", 3, serving, "b1", 0, PeerReclaimed, false},
			{ttl, "i1", 3, serving, "b1", 0, PeerReclaimed, true},
			{time.Second, "i1", 3, serving, "c1", 0, PeerReclaimed, false},
		}},
		{"restart after a claim is alive", []sighting{
			{0, "i1", 3, serving, "b1", 0, PeerReclaimed, false},
			{time.Second, "i2", 1, schemas.StateStarting, "", 0, PeerAlive, false},
		}},
		{"sender clock hours ahead, counter still", []sighting{
			{0, "i1", 2, serving, "", 5 * time.Hour, PeerAlive, false},
			{10 * time.Second, "i1", 2, serving, "", 5 * time.Hour, PeerAlive, false},
			{5 * time.Second, "i1", 2, serving, "", 5 * time.Hour, PeerSuspect, false},
		}},
		{"sender clock hours behind, counter moving", []sighting{
			{0, "i1", 2, serving, "", -5 * time.Hour, PeerAlive, false},
			{10 * time.Second, "i1", 3, serving, "", -5*time.Hour + 10*time.Second, PeerAlive, false},
			{10 * time.Second, "i1", 4, serving, "", -5*time.Hour + 20*time.Second, PeerAlive, false},
			{10 * time.Second, "i1", 5, serving, "", -5*time.Hour + 30*time.Second, PeerAlive, false},
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			start := time.Date(2025, 6, 1, 12, 0, 0, 0, time.UTC)
			now := start
			var prev *Peer
			for i, s := range tt.sightings {
				now = now.Add(s.after)
				rec := &projections.Instance{
					InstanceID: "pod-b", Incarnation: s.incarnation, HeartbeatSeq: s.seq, State: s.state,
					ReclaimedBy: s.reclaimedBy, LastHeartbeatAt: start.Add(s.sentAt),
				}
				got := advance(prev, rec, true, now, ttl, grace)
				if got.State != s.want {
					t.Errorf("sighting %d: got state %v, want %v", i, got.State, s.want)
				}
				if got.Settled != s.wantSettled {
					t.Errorf("sighting %d: got settled %v, want %v", i, got.Settled, s.wantSettled)
				}
				prev = &got
			}
		})
	}
}

func TestAdvanceQuietAndChanged(t *testing.T) {
	t0 := time.Date(2025, 6, 1, 12, 0, 0, 0, time.UTC)
	rec := &projections.Instance{InstanceID: "pod-b", Incarnation: "i1", HeartbeatSeq: 1, State: schemas.StateServing}

	first := advance(nil, rec, true, t0, time.Minute, time.Minute)
	second := advance(&first, rec, false, t0.Add(7*time.Second), time.Minute, time.Minute)

	if !second.Changed.Equal(t0) {
		t.Errorf("got Changed %v, want the first sighting %v", second.Changed, t0)
	}
	if second.Quiet != 7*time.Second {
		t.Errorf("got Quiet %v, want 7s", second.Quiet)
	}
	if second.Indexed {
		t.Errorf("got Indexed true, want false as observed")
	}
}

// newTestMembership returns a Membership on a fleet's store and clock.
func newTestMembership(t *testing.T, f *fleet, self string) *Membership {
	t.Helper()
	m, err := NewMembership(MembershipConfig{Views: f.views(), Self: self, TTL: testTTL, DrainGrace: testGrace, Now: f.clock.Now})
	if err != nil {
		t.Fatalf("new membership: %v", err)
	}
	return m
}

func TestMembershipBlindSpellRestartsTimers(t *testing.T) {
	f := newFleet(t)
	m := newTestMembership(t, f, "pod-a")
	rec := &projections.Instance{InstanceID: "pod-b", Incarnation: "i1", HeartbeatSeq: 1, State: schemas.StateServing}
	obs := []observation{{id: "pod-b", record: rec, indexed: true}}

	m.step(f.clock.Now(), obs)
	f.clock.Advance(testTTL + time.Second)
	// The observer saw nothing for longer than the TTL, so it cannot tell
	// a dead peer from its own blindness.
	got := m.step(f.clock.Now(), obs)
	if got[0].State != PeerAlive {
		t.Fatalf("after a gap longer than the TTL: got %v, want alive", got[0].State)
	}

	f.clock.Advance(testTTL / 2)
	if got := m.step(f.clock.Now(), obs); got[0].State != PeerAlive {
		t.Fatalf("half a TTL later: got %v, want alive", got[0].State)
	}
	f.clock.Advance(testTTL / 2)
	if got := m.step(f.clock.Now(), obs); got[0].State != PeerSuspect {
		t.Fatalf("a TTL of continuous watching later: got %v, want suspect", got[0].State)
	}
}

func TestMembershipFailedObserveRestartsTimers(t *testing.T) {
	f := newFleet(t)
	b := f.node(t, "pod-b")
	b.heartbeat(t, schemas.StateServing)
	m := newTestMembership(t, f, "pod-a")

	if _, err := m.Observe(testCtx(t)); err != nil {
		t.Fatalf("observe: %v", err)
	}
	f.clock.Advance(testTTL - time.Second)
	canceled, cancel := context.WithCancel(context.Background())
	cancel()
	if _, err := m.Observe(canceled); !errors.Is(err, context.Canceled) {
		t.Fatalf("observe with a canceled context: got %v, want context.Canceled", err)
	}
	f.clock.Advance(2 * time.Second)

	peers, err := m.Observe(testCtx(t))
	if err != nil {
		t.Fatalf("observe: %v", err)
	}
	if len(peers) != 1 || peers[0].State != PeerAlive {
		t.Fatalf("after a failed observation: got %+v, want pod-b alive", peers)
	}
}

func TestMembershipObserve(t *testing.T) {
	f := newFleet(t)
	a := f.node(t, "pod-a")
	b := f.node(t, "pod-b")
	c := f.node(t, "pod-c")
	for _, n := range []*node{a, b, c} {
		n.heartbeat(t, schemas.StateServing)
	}
	m := a.members

	peers, err := m.Observe(testCtx(t))
	if err != nil {
		t.Fatalf("observe: %v", err)
	}
	if len(peers) != 2 || peers[0].InstanceID != "pod-b" || peers[1].InstanceID != "pod-c" {
		t.Fatalf("got peers %+v, want pod-b and pod-c without self", peers)
	}

	// pod-c stops cleanly. The index drops it, but it stays tracked.
	c.heartbeat(t, schemas.StateStopped)
	f.clock.Advance(time.Second)
	b.heartbeat(t, schemas.StateServing)
	peers, err = m.Observe(testCtx(t))
	if err != nil {
		t.Fatalf("observe: %v", err)
	}
	if len(peers) != 2 {
		t.Fatalf("got %d peers, want 2", len(peers))
	}
	if got := peers[1]; got.State != PeerStopped || got.Indexed {
		t.Errorf("pod-c: got state %v indexed %v, want stopped and not indexed", got.State, got.Indexed)
	}

	live := m.Live()
	if len(live) != 1 || live[0].InstanceID != "pod-b" {
		t.Errorf("got live peers %+v, want only pod-b", live)
	}
	if !m.LiveIncarnation(b.id.Incarnation) {
		t.Errorf("LiveIncarnation(%s): got false, want true", b.id.Incarnation)
	}
	if m.LiveIncarnation(c.id.Incarnation) {
		t.Errorf("LiveIncarnation(%s) of a stopped peer: got true, want false", c.id.Incarnation)
	}
	if m.LiveIncarnation("never-seen") {
		t.Errorf("LiveIncarnation of an unknown incarnation: got true, want false")
	}

	m.Forget("pod-c", "other-incarnation")
	if got := len(m.Peers()); got != 2 {
		t.Errorf("after Forget of another incarnation: got %d peers, want 2", got)
	}
	m.Forget("pod-c", c.id.Incarnation)
	peers, err = m.Observe(testCtx(t))
	if err != nil {
		t.Fatalf("observe: %v", err)
	}
	if len(peers) != 1 || peers[0].InstanceID != "pod-b" {
		t.Errorf("after Forget: got peers %+v, want only pod-b", peers)
	}
}

func TestMembershipConfigValidate(t *testing.T) {
	f := newFleet(t)
	tests := []struct {
		name    string
		cfg     MembershipConfig
		wantErr bool
	}{
		{"complete", MembershipConfig{Views: f.views(), Self: "pod-a"}, false},
		{"no store", MembershipConfig{Self: "pod-a"}, true},
		{"no self", MembershipConfig{Views: f.views()}, true},
		{"negative ttl", MembershipConfig{Views: f.views(), Self: "pod-a", TTL: -time.Second}, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := NewMembership(tt.cfg)
			if (err != nil) != tt.wantErr {
				t.Fatalf("got error %v, want error %v", err, tt.wantErr)
			}
			if err != nil && !errors.Is(err, ErrInvalidConfig) {
				t.Errorf("got %v, want it to wrap ErrInvalidConfig", err)
			}
		})
	}
}

func TestMembershipDefaults(t *testing.T) {
	f := newFleet(t)
	m, err := NewMembership(MembershipConfig{Views: f.views(), Self: "pod-a"})
	if err != nil {
		t.Fatalf("new membership: %v", err)
	}
	if got := m.TTL(); got != DefaultHeartbeatTTL {
		t.Errorf("got TTL %v, want %v", got, DefaultHeartbeatTTL)
	}
	if got := m.cfg.DrainGrace; got != DefaultDrainGrace {
		t.Errorf("got drain grace %v, want %v", got, DefaultDrainGrace)
	}
}

func BenchmarkObserve100(b *testing.B) {
	f := newFleet(b)
	for i := range 100 {
		n := f.node(b, "pod-"+string(rune('a'+i/26))+string(rune('a'+i%26)))
		n.heartbeat(b, schemas.StateServing)
	}
	m, err := NewMembership(MembershipConfig{Views: f.views(), Self: "observer", Now: f.clock.Now})
	if err != nil {
		b.Fatalf("new membership: %v", err)
	}
	ctx := context.Background()

	b.ReportAllocs()
	for b.Loop() {
		f.clock.Advance(time.Second)
		peers, err := m.Observe(ctx)
		if err != nil {
			b.Fatalf("observe: %v", err)
		}
		if len(peers) != 100 {
			b.Fatalf("got %d peers, want 100", len(peers))
		}
	}
}

func BenchmarkStep100(b *testing.B) {
	f := newFleet(b)
	m, err := NewMembership(MembershipConfig{Views: f.views(), Self: "observer", Now: f.clock.Now})
	if err != nil {
		b.Fatalf("new membership: %v", err)
	}
	obs := make([]observation, 100)
	for i := range obs {
		id := "pod-" + string(rune('a'+i/26)) + string(rune('a'+i%26))
		obs[i] = observation{id: id, indexed: true, record: &projections.Instance{
			InstanceID: id, Incarnation: "i1", HeartbeatSeq: 1, State: schemas.StateServing,
		}}
	}

	b.ReportAllocs()
	for b.Loop() {
		f.clock.Advance(time.Second)
		for i := range obs {
			obs[i].record.HeartbeatSeq++
		}
		m.step(f.clock.Now(), obs)
	}
}

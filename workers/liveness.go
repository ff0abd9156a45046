package workers

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/rs/zerolog"

	"github.com/virtufin/websocketmanager/projections"
	"github.com/virtufin/websocketmanager/schemas"
)

// Liveness is judged by each observer on its own, from the heartbeat
// counter (projections.Instance.HeartbeatSeq) of each peer's record:
//
//   - A peer is tracked from the first time this observer reads its record.
//     Its timer starts then, so an observer that just started never condemns
//     anyone at once.
//   - Each observation compares the record's (incarnation, heartbeat
//     counter) pair with the previous one. When the pair changed, the timer
//     restarts: a newer incarnation or a higher counter refutes suspicion.
//   - The timer runs on the observer's clock (time.Now, whose monotonic
//     reading ignores wall-clock steps). The record's LastHeartbeatAt is the
//     sender's wall clock and is never compared, so skew between pods can
//     neither condemn nor save anyone.
//
// States and their transitions, evaluated on every observation:
//
//	alive     -> suspect    counter unchanged for TTL
//	alive     -> draining   a heartbeat announced "draining"
//	draining  -> suspect    counter unchanged for TTL plus the drain grace
//	suspect   -> alive      counter changed, or a newer incarnation appeared
//	any       -> stopped    a heartbeat announced "stopped"
//	any       -> reclaimed  the record carries a claim (ReclaimedBy)
//	stopped, reclaimed -> alive   a newer incarnation appeared
//
// A peer whose record is gone, or that the reclaimer reports finished
// through Forget, is no longer tracked.
//
// The observer is blind while it cannot read the views, and peers cannot
// heartbeat while the store is down. So when an observation fails, or two
// successful ones are further apart than the TTL, every timer restarts at
// the next successful observation: suspicion needs TTL of continuous
// watching.

// PeerState is a peer's place in the liveness state machine, as one
// observer judges it.
type PeerState int

// Peer states.
const (
	PeerAlive PeerState = iota + 1
	PeerDraining
	PeerSuspect
	PeerStopped
	PeerReclaimed
)

func (s PeerState) String() string {
	switch s {
	case PeerAlive:
		return "alive"
	case PeerDraining:
		return "draining"
	case PeerSuspect:
		return "suspect"
	case PeerStopped:
		return "stopped"
	case PeerReclaimed:
		return "reclaimed"
	}
	return fmt.Sprintf("PeerState(%d)", int(s))
}

// Live reports whether a peer in this state is a member of the fleet.
func (s PeerState) Live() bool { return s == PeerAlive || s == PeerDraining }

// Peer is one observer's view of the current incarnation of a peer
// instance.
type Peer struct {
	InstanceID   string
	Incarnation  string
	HeartbeatSeq uint64
	State        PeerState
	// Reported is the state the peer's last heartbeat announced: starting,
	// serving, draining or stopped.
	Reported string
	// ReclaimedBy is the incarnation that claimed this one, if any.
	ReclaimedBy string
	// Indexed is true when the instance index listed the peer.
	Indexed bool
	// Changed is when this observer last saw the (incarnation, counter)
	// pair change, on the observer's clock.
	Changed time.Time
	// Quiet is how long the pair had not changed at the last observation.
	Quiet time.Duration
	// ClaimSeen is when this observer first saw the current claim, or zero
	// without a claim.
	ClaimSeen time.Time
	// Settled marks a stopped peer whose record has not changed for TTL, or
	// a claimed peer whose claim has stood for TTL. Whatever the peer or its
	// claimer was doing has then ended or stalled.
	Settled bool
	// LastHeartbeatAt is the time of the last heartbeat on the sender's
	// clock, for display only.
	LastHeartbeatAt time.Time
}

// MembershipConfig configures a Membership.
type MembershipConfig struct {
	// Views reads the instance index and records. Required.
	Views projections.Reader
	// Self is this instance's id. Its own record is never tracked, so an
	// instance that cannot write its heartbeats never suspects itself.
	// Required.
	Self string
	// TTL is how long a counter may stay unchanged before its peer is
	// suspect. Zero means DefaultHeartbeatTTL.
	TTL time.Duration
	// DrainGrace is added to the TTL of a draining peer. Zero means
	// DefaultDrainGrace.
	DrainGrace time.Duration
	// Now reads the observer's clock. Nil means time.Now, which carries a
	// monotonic reading. A replacement must not go backwards.
	Now    func() time.Time
	Logger zerolog.Logger
}

// Validate reports every problem of the configuration at once.
func (c MembershipConfig) Validate() error {
	var errs []error
	if c.Views.Store == nil {
		errs = append(errs, fmt.Errorf("%w: membership: Views.Store is nil", ErrInvalidConfig))
	}
	if c.Self == "" {
		errs = append(errs, fmt.Errorf("%w: membership: Self is empty", ErrInvalidConfig))
	}
	if c.TTL < 0 || c.DrainGrace < 0 {
		errs = append(errs, fmt.Errorf("%w: membership: TTL %v and DrainGrace %v must not be negative", ErrInvalidConfig, c.TTL, c.DrainGrace))
	}
	return errors.Join(errs...)
}

// Membership tracks the liveness of the peers that share this instance's
// state store. Observe advances it, and the other methods return what the
// last observation found.
type Membership struct {
	cfg MembershipConfig

	// observing serializes Observe, so observations apply in clock order.
	observing sync.Mutex

	mu    sync.Mutex
	peers map[string]*Peer // by instance id
	// lastOK is when the last observation succeeded, or zero after a
	// failure.
	lastOK time.Time
}

// NewMembership returns a Membership that tracks no peer yet.
func NewMembership(cfg MembershipConfig) (*Membership, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	cfg.TTL = orDefault(cfg.TTL, DefaultHeartbeatTTL)
	cfg.DrainGrace = orDefault(cfg.DrainGrace, DefaultDrainGrace)
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	return &Membership{cfg: cfg, peers: map[string]*Peer{}}, nil
}

// TTL returns the time a counter may stay unchanged before its peer is
// suspect.
func (m *Membership) TTL() time.Duration { return m.cfg.TTL }

// observation is one peer's record as read by Observe. A nil record means
// the key is gone.
type observation struct {
	id      string
	record  *projections.Instance
	indexed bool
}

// Observe reads the instance index and the records of every indexed or
// still tracked peer, advances each peer's state, and returns all tracked
// peers sorted by instance id. Peers that left the index stay tracked
// until Forget, so a claim abandoned after the index dropped its instance is
// still seen.
func (m *Membership) Observe(ctx context.Context) ([]Peer, error) {
	m.observing.Lock()
	defer m.observing.Unlock()

	obs, err := m.read(ctx)
	if err != nil {
		m.mu.Lock()
		m.lastOK = time.Time{}
		m.mu.Unlock()
		return nil, err
	}
	return m.step(m.cfg.Now(), obs), nil
}

func (m *Membership) read(ctx context.Context) ([]observation, error) {
	indexed, err := m.cfg.Views.InstanceIDs(ctx)
	if err != nil {
		return nil, fmt.Errorf("workers: observe peers: %w", err)
	}

	m.mu.Lock()
	ids := make([]string, 0, len(indexed)+len(m.peers))
	for id := range m.peers {
		// InstanceIDs returns the ids sorted.
		if _, found := slices.BinarySearch(indexed, id); !found {
			ids = append(ids, id)
		}
	}
	m.mu.Unlock()
	obs := make([]observation, 0, len(indexed)+len(ids))
	for _, id := range indexed {
		if id != m.cfg.Self {
			obs = append(obs, observation{id: id, indexed: true})
		}
	}
	for _, id := range ids {
		obs = append(obs, observation{id: id})
	}
	if len(obs) == 0 {
		return nil, nil
	}

	keys := make([]string, len(obs))
	for i, o := range obs {
		keys[i] = projections.InstanceKey(o.id)
	}
	items, err := m.cfg.Views.Store.BulkGet(ctx, keys)
	if err != nil {
		return nil, fmt.Errorf("workers: observe peers: read instance records: %w", err)
	}
	for i, it := range items {
		if !it.Exists() {
			continue
		}
		rec := new(projections.Instance)
		if err := json.Unmarshal(it.Value, rec); err != nil {
			return nil, fmt.Errorf("workers: observe peers: decode %s: %w", it.Key, err)
		}
		obs[i].record = rec
	}
	return obs, nil
}

// step applies one observation made at now and returns the tracked peers.
func (m *Membership) step(now time.Time, obs []observation) []Peer {
	m.mu.Lock()
	defer m.mu.Unlock()

	// Restart every timer after a blind spell, since peers could not be
	// seen, and likely could not heartbeat, during it.
	if m.lastOK.IsZero() || now.Sub(m.lastOK) > m.cfg.TTL {
		for _, p := range m.peers {
			p.Changed = now
			if !p.ClaimSeen.IsZero() {
				p.ClaimSeen = now
			}
		}
	}
	m.lastOK = now

	for _, o := range obs {
		prev := m.peers[o.id]
		if o.record == nil {
			delete(m.peers, o.id)
			continue
		}
		next := advance(prev, o.record, o.indexed, now, m.cfg.TTL, m.cfg.DrainGrace)
		m.logTransition(prev, &next)
		if prev == nil {
			prev = new(Peer)
			m.peers[o.id] = prev
		}
		*prev = next
	}

	out := make([]Peer, 0, len(m.peers))
	for _, id := range slices.Sorted(maps.Keys(m.peers)) {
		out = append(out, *m.peers[id])
	}
	return out
}

// advance is the state machine. It returns a peer's state after observing
// its record at now, given the state after the previous observation, which
// is nil at first sight.
func advance(prev *Peer, rec *projections.Instance, indexed bool, now time.Time, ttl, drainGrace time.Duration) Peer {
	p := Peer{
		InstanceID:      rec.InstanceID,
		Incarnation:     rec.Incarnation,
		HeartbeatSeq:    rec.HeartbeatSeq,
		Reported:        rec.State,
		ReclaimedBy:     rec.ReclaimedBy,
		Indexed:         indexed,
		LastHeartbeatAt: rec.LastHeartbeatAt,
		Changed:         now,
	}
	sameIncarnation := prev != nil && prev.Incarnation == rec.Incarnation
	// Any change of the counter counts, not only a rise, because a counter
	// that went down means the views were rebuilt, which is no proof of
	// death.
	if sameIncarnation && prev.HeartbeatSeq == rec.HeartbeatSeq {
		p.Changed = prev.Changed
	}
	p.Quiet = max(now.Sub(p.Changed), 0)

	if rec.ReclaimedBy != "" {
		p.ClaimSeen = now
		if sameIncarnation && prev.ReclaimedBy == rec.ReclaimedBy && !prev.ClaimSeen.IsZero() {
			p.ClaimSeen = prev.ClaimSeen
		}
	}

	switch {
	case rec.ReclaimedBy != "":
		p.State = PeerReclaimed
		p.Settled = now.Sub(p.ClaimSeen) >= ttl
	case rec.State == schemas.StateStopped:
		p.State = PeerStopped
		p.Settled = p.Quiet >= ttl
	case rec.State == schemas.StateDraining && p.Quiet < ttl+drainGrace:
		p.State = PeerDraining
	case rec.State == schemas.StateDraining:
		p.State = PeerSuspect
	case p.Quiet >= ttl:
		p.State = PeerSuspect
	default:
		p.State = PeerAlive
	}
	return p
}

func (m *Membership) logTransition(prev, next *Peer) {
	if prev != nil && prev.Incarnation == next.Incarnation && prev.State == next.State {
		return
	}
	level := zerolog.InfoLevel
	if prev == nil {
		level = zerolog.DebugLevel
	}
	ev := m.cfg.Logger.WithLevel(level).Str("instance_id", next.InstanceID).Str("incarnation", next.Incarnation).
		Str("state", next.State.String()).Uint64("heartbeat_seq", next.HeartbeatSeq).Dur("quiet", next.Quiet)
	if prev != nil {
		ev = ev.Str("previous_state", prev.State.String()).Str("previous_incarnation", prev.Incarnation)
	}
	if next.ReclaimedBy != "" {
		ev = ev.Str("reclaimed_by", next.ReclaimedBy)
	}
	ev.Msg("peer state changed")
}

// Peers returns every tracked peer as of the last observation, sorted by
// instance id.
func (m *Membership) Peers() []Peer {
	return m.filter(func(*Peer) bool { return true })
}

// Live returns the peers that are alive or draining as of the last
// observation, sorted by instance id. This instance is not among them.
func (m *Membership) Live() []Peer {
	return m.filter(func(p *Peer) bool { return p.State.Live() })
}

func (m *Membership) filter(keep func(*Peer) bool) []Peer {
	m.mu.Lock()
	defer m.mu.Unlock()
	out := make([]Peer, 0, len(m.peers))
	for _, p := range m.peers {
		if keep(p) {
			out = append(out, *p)
		}
	}
	slices.SortFunc(out, func(a, b Peer) int { return strings.Compare(a.InstanceID, b.InstanceID) })
	return out
}

// LiveIncarnation reports whether incarnation is the current incarnation of
// a peer that is alive or draining. An incarnation this observer has never
// seen, such as one replaced by a restart, is not live.
func (m *Membership) LiveIncarnation(incarnation string) bool {
	m.mu.Lock()
	defer m.mu.Unlock()
	for _, p := range m.peers {
		if p.Incarnation == incarnation && p.State.Live() {
			return true
		}
	}
	return false
}

// Forget stops tracking a peer's incarnation. The reclaimer calls it once
// nothing of that incarnation is left to reclaim. A peer that the index
// still lists is tracked again, from first sight, at the next observation.
func (m *Membership) Forget(instanceID, incarnation string) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if p := m.peers[instanceID]; p != nil && p.Incarnation == incarnation {
		delete(m.peers, instanceID)
	}
}

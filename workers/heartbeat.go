package workers

import (
	"context"
	"fmt"
	"sync"
	"time"

	"github.com/rs/zerolog"

	"github.com/virtufin/websocketmanager/projections"
	"github.com/virtufin/websocketmanager/schemas"
)

// Heartbeat appends an instance.heartbeat event every Interval. Its fold
// keeps the instance record and the instance index current, and the record's
// heartbeat counter is what peers watch to tell a live instance from a dead
// one.
//
// After each heartbeat it reads its own record. When a peer has claimed
// this incarnation, the incarnation is fenced: OnFenced runs once, and the
// caller closes the sockets, opens a writer on a new stream and calls
// Rejoin, after which heartbeats announce the new incarnation.
//
// Set the fields before the first call. ID and Log change afterwards only
// through Rejoin; read them with Identity.
type Heartbeat struct {
	// ID is the incarnation the heartbeats announce. Required.
	ID Identity
	// Log appends to this incarnation's stream. Required.
	Log Appender
	// Views reads this instance's record after each heartbeat. Required.
	Views projections.Reader
	// Interval is the time between heartbeats of Run. Zero means
	// DefaultHeartbeatInterval.
	Interval time.Duration
	// Count returns the number of open connections; nil reports 0.
	Count func() int
	// OnFenced is called once per incarnation when a heartbeat finds that
	// incarnation claimed by a peer. It runs on the heartbeat's goroutine
	// and must not block, so start the fencing on another goroutine.
	OnFenced func(reclaimedBy string)
	Logger   zerolog.Logger

	mu     sync.Mutex
	state  string
	fenced bool
}

// SetState changes the state that the next heartbeats report.
func (h *Heartbeat) SetState(state string) {
	h.mu.Lock()
	h.state = state
	h.mu.Unlock()
}

func (h *Heartbeat) currentState() string {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.state == "" {
		return schemas.StateStarting
	}
	return h.state
}

// Identity returns the incarnation the heartbeats announce now.
func (h *Heartbeat) Identity() Identity {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.ID
}

// Fenced reports whether the current incarnation was found claimed.
func (h *Heartbeat) Fenced() bool {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.fenced
}

// Rejoin switches the heartbeat to a new incarnation and the Appender of its
// stream in one step, and clears the fenced mark. It does not beat. The
// next Beat, or the next tick of Run, announces the new incarnation in the
// current state.
func (h *Heartbeat) Rejoin(id Identity, log Appender) error {
	if id.InstanceID == "" || id.Incarnation == "" || log == nil {
		return fmt.Errorf("%w: rejoin needs an instance id, an incarnation and an Appender", ErrInvalidConfig)
	}
	h.mu.Lock()
	previous := h.ID.Incarnation
	h.ID, h.Log, h.fenced = id, log, false
	h.mu.Unlock()

	h.Logger.Info().Str("instance_id", id.InstanceID).Str("incarnation", id.Incarnation).
		Str("previous_incarnation", previous).Msg("heartbeat rejoined as a new incarnation")
	return nil
}

// Beat appends one heartbeat with the given state, which later heartbeats
// keep, then checks that this incarnation has not been reclaimed.
func (h *Heartbeat) Beat(ctx context.Context, state string) error {
	h.mu.Lock()
	h.state = state
	id, log := h.ID, h.Log
	h.mu.Unlock()

	count := 0
	if h.Count != nil {
		count = h.Count()
	}
	ev, err := schemas.NewHeartbeat(schemas.Envelope{InstanceID: id.InstanceID}, schemas.Heartbeat{
		InstanceID:      id.InstanceID,
		Incarnation:     id.Incarnation,
		State:           state,
		ConnectionCount: count,
		StartedAt:       id.StartedAt,
		Address:         id.Address,
		Version:         id.Version,
	})
	if err != nil {
		return err
	}
	if _, err := log.Append(ctx, ev); err != nil {
		return fmt.Errorf("workers: append heartbeat: %w", err)
	}
	return h.checkFenced(ctx, id)
}

// checkFenced reads this instance's record and runs OnFenced once when a
// peer has claimed the incarnation id. A Beat that raced with Rejoin checks
// an incarnation that is no longer current and changes nothing.
func (h *Heartbeat) checkFenced(ctx context.Context, id Identity) error {
	rec, _, err := h.Views.Instance(ctx, id.InstanceID)
	if err != nil {
		return fmt.Errorf("workers: read own instance record: %w", err)
	}
	if rec == nil || rec.Incarnation != id.Incarnation || rec.ReclaimedBy == "" {
		return nil
	}

	h.mu.Lock()
	first := !h.fenced && h.ID.Incarnation == id.Incarnation
	if first {
		h.fenced = true
	}
	h.mu.Unlock()
	if !first {
		return nil
	}

	h.Logger.Error().Str("instance_id", id.InstanceID).Str("incarnation", id.Incarnation).
		Str("reclaimed_by", rec.ReclaimedBy).Msg("this incarnation was reclaimed by a peer; fencing")
	if h.OnFenced != nil {
		h.OnFenced(rec.ReclaimedBy)
	}
	return nil
}

// Run beats every Interval, in the current state, until ctx ends, starting
// after a random part of a quarter interval. A failed beat is logged, at
// most once per DefaultWarnEvery, and the next one comes on schedule. It
// does not back off, because a longer wait would only make peers suspect
// this instance sooner.
func (h *Heartbeat) Run(ctx context.Context) {
	interval := orDefault(h.Interval, DefaultHeartbeatInterval)
	warn := newWarnLimiter(DefaultWarnEvery, nil)
	if !sleep(ctx, jitter(interval/4)) {
		return
	}
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		err := h.Beat(ctx, h.currentState())
		if err != nil && ctx.Err() == nil {
			if ok, suppressed := warn.allow(); ok {
				id := h.Identity()
				h.Logger.Warn().Err(err).Str("instance_id", id.InstanceID).Str("incarnation", id.Incarnation).
					Int("suppressed", suppressed).Msg("heartbeat failed")
			}
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

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
type Heartbeat struct {
	ID       Identity
	Log      Appender
	Views    projections.Reader
	Interval time.Duration
	// Count returns the number of open connections; nil reports 0.
	Count func() int
	// OnFenced is called once when a heartbeat finds this incarnation
	// reclaimed by another instance. It must not block.
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

// Beat appends one heartbeat with the given state, which later heartbeats
// keep, then checks that this incarnation has not been reclaimed.
func (h *Heartbeat) Beat(ctx context.Context, state string) error {
	h.SetState(state)
	count := 0
	if h.Count != nil {
		count = h.Count()
	}
	ev, err := schemas.NewHeartbeat(schemas.Envelope{InstanceID: h.ID.InstanceID}, schemas.Heartbeat{
		InstanceID:      h.ID.InstanceID,
		Incarnation:     h.ID.Incarnation,
		State:           state,
		ConnectionCount: count,
		StartedAt:       h.ID.StartedAt,
		Address:         h.ID.Address,
		Version:         h.ID.Version,
	})
	if err != nil {
		return err
	}
	if _, err := h.Log.Append(ctx, ev); err != nil {
		return fmt.Errorf("workers: append heartbeat: %w", err)
	}
	return h.checkFenced(ctx)
}

// checkFenced reads this instance's record; when another instance has
// claimed this incarnation, OnFenced runs once.
func (h *Heartbeat) checkFenced(ctx context.Context) error {
	rec, _, err := h.Views.Instance(ctx, h.ID.InstanceID)
	if err != nil {
		return fmt.Errorf("workers: read own instance record: %w", err)
	}
	if rec == nil || rec.Incarnation != h.ID.Incarnation || rec.ReclaimedBy == "" {
		return nil
	}
	h.mu.Lock()
	first := !h.fenced
	h.fenced = true
	h.mu.Unlock()
	if first {
		h.Logger.Error().Str("instance_id", h.ID.InstanceID).Str("incarnation", h.ID.Incarnation).
			Str("reclaimed_by", rec.ReclaimedBy).Msg("this incarnation was reclaimed by a peer; fencing")
		if h.OnFenced != nil {
			h.OnFenced(rec.ReclaimedBy)
		}
	}
	return nil
}

// Run beats every Interval, in the current state, until ctx ends. A failed
// beat is logged and the next one comes on schedule.
func (h *Heartbeat) Run(ctx context.Context) {
	if !sleep(ctx, jitter(h.Interval/4)) {
		return
	}
	t := time.NewTicker(h.Interval)
	defer t.Stop()
	for {
		if err := h.Beat(ctx, h.currentState()); err != nil && ctx.Err() == nil {
			h.Logger.Warn().Err(err).Str("instance_id", h.ID.InstanceID).Msg("heartbeat failed")
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

package workers

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"slices"
	"time"

	"github.com/cloudevents/sdk-go/v2/event"
	"github.com/rs/zerolog"

	"github.com/virtufin/websocketmanager/internal/state"
	"github.com/virtufin/websocketmanager/projections"
	"github.com/virtufin/websocketmanager/schemas"
)

// Reclaimer takes the connections of dead incarnations out of the views by
// appending one connection.reclaimed event per connection. Before it does, it
// claims the dead incarnation with a compare-and-swap on its instance record,
// so exactly one reclaimer acts for each.
type Reclaimer struct {
	ID     Identity
	Log    Appender
	Store  state.Store
	Logger zerolog.Logger
	// BatchSize is the number of reclaimed events per append. Default 256.
	BatchSize int
}

func (r *Reclaimer) views() projections.Reader { return projections.Reader{Store: r.Store} }

// ErrClaimLost reports that another reclaimer claimed the incarnation first,
// or that it heartbeat again and is alive.
var ErrClaimLost = errors.New("workers: claim lost")

// Claim marks an incarnation of an instance as reclaimed by this one. It
// fails with ErrClaimLost when the record no longer shows that incarnation
// unclaimed, or changed between the read and the write.
func (r *Reclaimer) Claim(ctx context.Context, instanceID, incarnation string) (*projections.Instance, error) {
	rec, etag, err := r.views().Instance(ctx, instanceID)
	if err != nil {
		return nil, err
	}
	if rec == nil || rec.Incarnation != incarnation || rec.ReclaimedBy != "" {
		return nil, fmt.Errorf("%w: %s/%s", ErrClaimLost, instanceID, incarnation)
	}
	rec.ReclaimedBy = r.ID.Incarnation
	raw, err := json.Marshal(rec)
	if err != nil {
		return nil, err
	}
	op := state.Op{Kind: state.Upsert, Key: projections.InstanceKey(instanceID), Value: raw, ETag: etag}
	if err := r.Store.Transact(ctx, []state.Op{op}); err != nil {
		if errors.Is(err, state.ErrETagMismatch) {
			return nil, fmt.Errorf("%w: %s/%s: %v", ErrClaimLost, instanceID, incarnation, err)
		}
		return nil, fmt.Errorf("workers: claim %s/%s: %w", instanceID, incarnation, err)
	}
	if err := r.dropFromIndex(ctx, instanceID); err != nil {
		return rec, err
	}
	return rec, nil
}

// dropFromIndex removes an instance from the instance index with a
// compare-and-swap, retrying while other writers change the index.
func (r *Reclaimer) dropFromIndex(ctx context.Context, instanceID string) error {
	for attempt := 0; attempt < 20; attempt++ {
		it, err := r.Store.Get(ctx, projections.InstanceIndexKey)
		if err != nil {
			return fmt.Errorf("workers: read instance index: %w", err)
		}
		var idx projections.InstanceIndex
		if it.Exists() {
			if err := json.Unmarshal(it.Value, &idx); err != nil {
				return fmt.Errorf("workers: decode instance index: %w", err)
			}
		}
		if !idx.Instances[instanceID] {
			return nil
		}
		delete(idx.Instances, instanceID)
		op := state.Op{Kind: state.Delete, Key: projections.InstanceIndexKey, ETag: it.ETag}
		if len(idx.Instances) > 0 {
			op.Kind = state.Upsert
			op.Value, _ = json.Marshal(idx)
		}
		err = r.Store.Transact(ctx, []state.Op{op})
		if err == nil {
			return nil
		}
		if !errors.Is(err, state.ErrETagMismatch) {
			return fmt.Errorf("workers: update instance index: %w", err)
		}
	}
	return fmt.Errorf("workers: update instance index: too many concurrent changes")
}

// ReclaimConnections appends a reclaimed event for every connection in the
// instance's shards whose incarnation match accepts, and returns how many it
// appended. The connections are read from the sharded index, never by
// scanning.
func (r *Reclaimer) ReclaimConnections(ctx context.Context, instanceID string, lastHeartbeat time.Time, match func(incarnation string) bool) (int, error) {
	held, err := r.views().InstanceConnections(ctx, instanceID)
	if err != nil {
		return 0, err
	}
	ids := slices.Sorted(maps.Keys(held))
	ids = slices.DeleteFunc(ids, func(id string) bool { return !match(held[id]) })
	if len(ids) == 0 {
		return 0, nil
	}

	batch := r.BatchSize
	if batch <= 0 {
		batch = 256
	}
	var n int
	for chunk := range slices.Chunk(ids, batch) {
		users, err := r.users(ctx, chunk)
		if err != nil {
			return n, err
		}
		events := make([]*event.Event, 0, len(chunk))
		for _, id := range chunk {
			ev, err := schemas.NewReclaimed(schemas.Envelope{InstanceID: r.ID.InstanceID}, schemas.Reclaimed{
				ConnectionID:    id,
				UserID:          users[id],
				DeadInstanceID:  instanceID,
				DeadIncarnation: held[id],
				ReclaimedBy:     r.ID.Incarnation,
				LastHeartbeatAt: lastHeartbeat,
			})
			if err != nil {
				return n, err
			}
			events = append(events, ev)
		}
		if _, err := r.Log.Append(ctx, events...); err != nil {
			return n, fmt.Errorf("workers: append reclaimed events: %w", err)
		}
		n += len(events)
	}
	return n, nil
}

// users returns the user id of each connection from its entry.
func (r *Reclaimer) users(ctx context.Context, ids []string) (map[string]string, error) {
	keys := make([]string, len(ids))
	for i, id := range ids {
		keys[i] = projections.ConnectionKey(id)
	}
	items, err := r.Store.BulkGet(ctx, keys)
	if err != nil {
		return nil, fmt.Errorf("workers: read connection entries: %w", err)
	}
	out := make(map[string]string, len(ids))
	for i, it := range items {
		if !it.Exists() {
			continue
		}
		var c projections.Connection
		if err := json.Unmarshal(it.Value, &c); err != nil {
			return nil, fmt.Errorf("workers: decode %s: %w", it.Key, err)
		}
		out[ids[i]] = c.UserID
	}
	return out, nil
}

// ReclaimPrevious reclaims what earlier incarnations of this instance id
// left in the views. It runs at startup before the first heartbeat: the
// sockets of an earlier incarnation died with its process, so every
// connection in this instance's shards that is not this incarnation's is a
// ghost.
func (r *Reclaimer) ReclaimPrevious(ctx context.Context) (int, error) {
	rec, _, err := r.views().Instance(ctx, r.ID.InstanceID)
	if err != nil {
		return 0, err
	}
	var last time.Time
	if rec != nil {
		last = rec.LastHeartbeatAt
		if rec.Incarnation != r.ID.Incarnation && rec.Live() {
			if _, err := r.Claim(ctx, r.ID.InstanceID, rec.Incarnation); err != nil && !errors.Is(err, ErrClaimLost) {
				return 0, err
			}
		}
	}
	n, err := r.ReclaimConnections(ctx, r.ID.InstanceID, last, func(inc string) bool { return inc != r.ID.Incarnation })
	if n > 0 {
		r.Logger.Info().Str("instance_id", r.ID.InstanceID).Int("connections", n).
			Msg("reclaimed connections of a previous incarnation")
	}
	return n, err
}

// ReclaimInstance claims the incarnation an instance record currently shows
// and reclaims its connections. It returns ErrClaimLost when the record is
// not live or another reclaimer got there first.
func (r *Reclaimer) ReclaimInstance(ctx context.Context, instanceID string) (int, error) {
	rec, _, err := r.views().Instance(ctx, instanceID)
	if err != nil {
		return 0, err
	}
	if !rec.Live() {
		return 0, fmt.Errorf("%w: %s is not live", ErrClaimLost, instanceID)
	}
	if _, err := r.Claim(ctx, instanceID, rec.Incarnation); err != nil {
		return 0, err
	}
	n, err := r.ReclaimConnections(ctx, instanceID, rec.LastHeartbeatAt, func(inc string) bool { return inc == rec.Incarnation })
	r.Logger.Info().Str("instance_id", instanceID).Str("incarnation", rec.Incarnation).Int("connections", n).
		Err(err).Msg("reclaimed a dead instance")
	return n, err
}

package projections

import (
	"context"
	"encoding/json"
	"fmt"
	"maps"
	"slices"
	"strings"

	"github.com/virtufin/websocketmanager/internal/state"
)

// Reader runs queries against the views. It reads through indexes only and
// never scans the store.
type Reader struct {
	Store state.Store
}

func (q Reader) getJSON(ctx context.Context, key string, v any) (bool, string, error) {
	it, err := q.Store.Get(ctx, key)
	if err != nil {
		return false, "", fmt.Errorf("projections: read %s: %w", key, err)
	}
	if !it.Exists() {
		return false, "", nil
	}
	if err := json.Unmarshal(it.Value, v); err != nil {
		return false, "", fmt.Errorf("projections: decode %s: %w", key, err)
	}
	return true, it.ETag, nil
}

// Connection returns a connection entry, or nil when the view has none. A
// closed connection comes back as its tombstone; check Open.
func (q Reader) Connection(ctx context.Context, connID string) (*Connection, error) {
	c := new(Connection)
	ok, _, err := q.getJSON(ctx, ConnectionKey(connID), c)
	if !ok || err != nil {
		return nil, err
	}
	return c, nil
}

// Instance returns an instance record with its ETag, or nil when there is
// none.
func (q Reader) Instance(ctx context.Context, instanceID string) (*Instance, string, error) {
	inst := new(Instance)
	ok, etag, err := q.getJSON(ctx, InstanceKey(instanceID), inst)
	if !ok || err != nil {
		return nil, "", err
	}
	return inst, etag, nil
}

// InstanceIDs returns the ids in the instance index, sorted.
func (q Reader) InstanceIDs(ctx context.Context) ([]string, error) {
	var idx InstanceIndex
	if _, _, err := q.getJSON(ctx, InstanceIndexKey, &idx); err != nil {
		return nil, err
	}
	return slices.Sorted(maps.Keys(idx.Instances)), nil
}

// Instances returns the records of the instances in the index.
func (q Reader) Instances(ctx context.Context) ([]*Instance, error) {
	ids, err := q.InstanceIDs(ctx)
	if err != nil || len(ids) == 0 {
		return nil, err
	}
	keys := make([]string, len(ids))
	for i, id := range ids {
		keys[i] = InstanceKey(id)
	}
	items, err := q.Store.BulkGet(ctx, keys)
	if err != nil {
		return nil, fmt.Errorf("projections: read instances: %w", err)
	}
	out := make([]*Instance, 0, len(items))
	for _, it := range items {
		if !it.Exists() {
			continue
		}
		inst := new(Instance)
		if err := json.Unmarshal(it.Value, inst); err != nil {
			return nil, fmt.Errorf("projections: decode %s: %w", it.Key, err)
		}
		out = append(out, inst)
	}
	return out, nil
}

// InstanceConnections returns the connection ids an instance's shards hold,
// each with the incarnation that holds it.
func (q Reader) InstanceConnections(ctx context.Context, instanceID string) (map[string]string, error) {
	items, err := q.Store.BulkGet(ctx, ShardKeys(instanceID))
	if err != nil {
		return nil, fmt.Errorf("projections: read shards of %s: %w", instanceID, err)
	}
	out := map[string]string{}
	for _, it := range items {
		if !it.Exists() {
			continue
		}
		var sh Shard
		if err := json.Unmarshal(it.Value, &sh); err != nil {
			return nil, fmt.Errorf("projections: decode %s: %w", it.Key, err)
		}
		maps.Copy(out, sh.Connections)
	}
	return out, nil
}

// UserConnections returns the ids of a user's connections, each with the
// instance that holds it.
func (q Reader) UserConnections(ctx context.Context, userID string) (map[string]string, error) {
	var u UserIndex
	if _, _, err := q.getJSON(ctx, UserKey(userID), &u); err != nil {
		return nil, err
	}
	if u.Connections == nil {
		u.Connections = map[string]string{}
	}
	return u.Connections, nil
}

// Filter selects connections in Connections. Empty fields match everything.
type Filter struct {
	UserID     string
	InstanceID string
}

// Connections returns the open connections that match the filter, sorted by
// id. Without a user filter it walks the instance index and the shards of
// each instance.
func (q Reader) Connections(ctx context.Context, f Filter) ([]*Connection, error) {
	var ids []string
	switch {
	case f.UserID != "":
		m, err := q.UserConnections(ctx, f.UserID)
		if err != nil {
			return nil, err
		}
		for id, inst := range m {
			if f.InstanceID == "" || inst == f.InstanceID {
				ids = append(ids, id)
			}
		}
	default:
		instances := []string{f.InstanceID}
		if f.InstanceID == "" {
			var err error
			if instances, err = q.InstanceIDs(ctx); err != nil {
				return nil, err
			}
		}
		for _, inst := range instances {
			m, err := q.InstanceConnections(ctx, inst)
			if err != nil {
				return nil, err
			}
			ids = slices.AppendSeq(ids, maps.Keys(m))
		}
	}
	slices.Sort(ids)
	return q.entries(ctx, ids)
}

// OpenConnections returns the entries of the given connection ids that are
// open, sorted by id. Ids without an entry are left out.
func (q Reader) OpenConnections(ctx context.Context, ids []string) ([]*Connection, error) {
	return q.entries(ctx, ids)
}

func (q Reader) entries(ctx context.Context, ids []string) ([]*Connection, error) {
	out := make([]*Connection, 0, len(ids))
	for chunk := range slices.Chunk(ids, 256) {
		keys := make([]string, len(chunk))
		for i, id := range chunk {
			keys[i] = ConnectionKey(id)
		}
		items, err := q.Store.BulkGet(ctx, keys)
		if err != nil {
			return nil, fmt.Errorf("projections: read connections: %w", err)
		}
		for _, it := range items {
			if !it.Exists() {
				continue
			}
			c := new(Connection)
			if err := json.Unmarshal(it.Value, c); err != nil {
				return nil, fmt.Errorf("projections: decode %s: %w", it.Key, err)
			}
			if c.Open() {
				out = append(out, c)
			}
		}
	}
	slices.SortFunc(out, func(a, b *Connection) int { return strings.Compare(a.ConnectionID, b.ConnectionID) })
	return out, nil
}

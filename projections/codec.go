package projections

import (
	"bytes"
	"encoding/json"
	"fmt"
)

// viewKind is the kind of view a key contains.
type viewKind int

const (
	kindConnection viewKind = iota + 1
	kindInstance
	kindIndex
	kindShard
	kindUser
)

// ref names one view key by what it holds, so keys never have to be parsed.
type ref struct {
	kind  viewKind
	id    string // connection, instance or user id
	shard int
}

func (r ref) key() string {
	switch r.kind {
	case kindConnection:
		return ConnectionKey(r.id)
	case kindInstance:
		return InstanceKey(r.id)
	case kindIndex:
		return InstanceIndexKey
	case kindShard:
		return ShardKey(r.id, r.shard)
	default:
		return UserKey(r.id)
	}
}

// refs lists the views an event reads or writes.
func (d decoded) refs() []ref {
	conn := func(connID, userID, instanceID string) []ref {
		out := []ref{{kind: kindConnection, id: connID}, {kind: kindShard, id: instanceID, shard: ShardOf(connID)}}
		if userID != "" {
			out = append(out, ref{kind: kindUser, id: userID})
		}
		return out
	}
	switch {
	case d.connected != nil:
		return conn(d.connected.ConnectionID, d.connected.UserID, d.connected.InstanceID)
	case d.disconnected != nil:
		return conn(d.disconnected.ConnectionID, d.disconnected.UserID, d.disconnected.InstanceID)
	case d.reclaimed != nil:
		r := d.reclaimed
		return append(conn(r.ConnectionID, r.UserID, r.DeadInstanceID),
			ref{kind: kindInstance, id: r.DeadInstanceID}, ref{kind: kindIndex})
	case d.heartbeat != nil:
		return []ref{{kind: kindInstance, id: d.heartbeat.InstanceID}, {kind: kindIndex}}
	}
	return nil
}

// load puts a stored value into the set; a nil value leaves the key absent.
func (s *Set) load(r ref, raw []byte) error {
	if raw == nil {
		return nil
	}
	var err error
	switch r.kind {
	case kindConnection:
		v := new(Connection)
		err = json.Unmarshal(raw, v)
		s.Connections[r.id] = v
	case kindInstance:
		v := new(Instance)
		err = json.Unmarshal(raw, v)
		s.Instances[r.id] = v
	case kindIndex:
		v := &InstanceIndex{}
		err = json.Unmarshal(raw, v)
		if v.Instances == nil {
			v.Instances = map[string]bool{}
		}
		s.Index = v
	case kindShard:
		v := &Shard{}
		err = json.Unmarshal(raw, v)
		if v.Connections == nil {
			v.Connections = map[string]string{}
		}
		s.Shards[ShardRef{r.id, r.shard}] = v
	case kindUser:
		v := &UserIndex{}
		err = json.Unmarshal(raw, v)
		if v.Connections == nil {
			v.Connections = map[string]string{}
		}
		s.Users[r.id] = v
	}
	if err != nil {
		return fmt.Errorf("projections: decode %s: %w", r.key(), err)
	}
	return nil
}

// encode renders the set's value of a key; nil means the key should not
// exist. Empty indexes are deleted rather than kept.
func (s *Set) encode(r ref) []byte {
	var v any
	switch r.kind {
	case kindConnection:
		if c := s.Connections[r.id]; c != nil {
			v = c
		}
	case kindInstance:
		if i := s.Instances[r.id]; i != nil {
			v = i
		}
	case kindIndex:
		if s.Index != nil && len(s.Index.Instances) > 0 {
			v = s.Index
		}
	case kindShard:
		if sh := s.Shards[ShardRef{r.id, r.shard}]; sh != nil && len(sh.Connections) > 0 {
			v = sh
		}
	case kindUser:
		if u := s.Users[r.id]; u != nil && len(u.Connections) > 0 {
			v = u
		}
	}
	if v == nil {
		return nil
	}
	raw, err := json.Marshal(v)
	if err != nil {
		// The view types hold only strings, numbers, times and maps of
		// strings, which always encode.
		panic(fmt.Sprintf("projections: encode %s: %v", r.key(), err))
	}
	return raw
}

// emptyIndex is the stored form of an index with no entries.
func emptyIndex(r ref) []byte {
	if r.kind == kindIndex {
		return []byte(`{"instances":{}}`)
	}
	return []byte(`{"connections":{}}`)
}

func sameValue(a, b []byte) bool {
	if a == nil || b == nil {
		return a == nil && b == nil
	}
	return bytes.Equal(a, b)
}

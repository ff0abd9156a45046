package projections

import (
	"encoding/json"
	"fmt"
	"strconv"
	"time"

	"github.com/cloudevents/sdk-go/v2/event"

	"github.com/virtufin/websocketmanager/schemas"
)

// Set is an in-memory copy of the views that some events touch. A nil map
// entry means the key is absent.
type Set struct {
	Connections map[string]*Connection // by connection id
	Instances   map[string]*Instance   // by instance id
	Index       *InstanceIndex         // nil when absent
	Shards      map[ShardRef]*Shard
	Users       map[string]*UserIndex // by user id
}

// ShardRef names one shard of an instance's connection index.
type ShardRef struct {
	InstanceID string
	Shard      int
}

// NewSet returns an empty Set.
func NewSet() *Set {
	return &Set{
		Connections: map[string]*Connection{},
		Instances:   map[string]*Instance{},
		Shards:      map[ShardRef]*Shard{},
		Users:       map[string]*UserIndex{},
	}
}

// decoded is an event with its data parsed for folding.
type decoded struct {
	ev           *event.Event
	seq          uint64
	connected    *schemas.Connected
	disconnected *schemas.Disconnected
	heartbeat    *schemas.Heartbeat
	reclaimed    *schemas.Reclaimed
}

func decode(ev *event.Event) (decoded, error) {
	d := decoded{ev: ev}
	if s, ok := ev.Extensions()[schemas.SequenceExtension].(string); ok {
		seq, err := strconv.ParseUint(s, 10, 64)
		if err != nil {
			return d, fmt.Errorf("projections: event %s: invalid sequence %q", ev.ID(), s)
		}
		d.seq = seq
	}
	var target any
	switch ev.Type() {
	case schemas.TypeConnected:
		d.connected = new(schemas.Connected)
		target = d.connected
	case schemas.TypeDisconnected:
		d.disconnected = new(schemas.Disconnected)
		target = d.disconnected
	case schemas.TypeHeartbeat:
		d.heartbeat = new(schemas.Heartbeat)
		target = d.heartbeat
	case schemas.TypeReclaimed:
		d.reclaimed = new(schemas.Reclaimed)
		target = d.reclaimed
	default:
		// Types this version does not know fold to nothing, so an older
		// instance can run beside a newer one.
		return d, nil
	}
	if err := json.Unmarshal(ev.Data(), target); err != nil {
		return d, fmt.Errorf("projections: event %s: decode %s data: %w", ev.ID(), ev.Type(), err)
	}
	return d, nil
}

// Fold applies one event to the set. The event's sequence extension, when
// present, orders heartbeats of one incarnation.
func Fold(s *Set, ev *event.Event) error {
	d, err := decode(ev)
	if err != nil {
		return err
	}
	s.fold(d)
	return nil
}

func (s *Set) fold(d decoded) {
	switch {
	case d.connected != nil:
		s.foldConnected(d.ev, d.connected)
	case d.disconnected != nil:
		s.foldDisconnected(d.ev, d.disconnected)
	case d.reclaimed != nil:
		s.foldReclaimed(d.ev, d.reclaimed)
	case d.heartbeat != nil:
		s.foldHeartbeat(d.seq, d.ev.Time(), d.heartbeat)
	}
}

func (s *Set) foldConnected(ev *event.Event, c *schemas.Connected) {
	entry := s.Connections[c.ConnectionID]
	if entry != nil && !entry.Open() {
		// A tombstone: the connection already ended.
		if entry.ConnectedAt.IsZero() {
			fillConnection(entry, c)
		}
		return
	}
	entry = &Connection{}
	fillConnection(entry, c)
	s.Connections[c.ConnectionID] = entry
	s.addToShard(c.InstanceID, c.ConnectionID, c.Incarnation)
	if c.UserID != "" {
		s.addToUser(c.UserID, c.ConnectionID, c.InstanceID)
	}
}

func fillConnection(entry *Connection, c *schemas.Connected) {
	entry.ConnectionID = c.ConnectionID
	entry.InstanceID = c.InstanceID
	entry.Incarnation = c.Incarnation
	entry.UserID = c.UserID
	entry.RemoteAddr = c.RemoteAddr
	entry.UserAgent = c.UserAgent
	entry.Subprotocol = c.Subprotocol
	entry.ConnectedAt = c.ConnectedAt.UTC()
}

func (s *Set) foldDisconnected(ev *event.Event, d *schemas.Disconnected) {
	s.close(d.ConnectionID, d.UserID, d.InstanceID, d.Incarnation, &Closure{
		Kind: ClosedByDisconnect, Reason: d.Reason, Code: d.CloseCode,
		At: d.DisconnectedAt.UTC(), EventID: ev.ID(),
	})
}

func (s *Set) foldReclaimed(ev *event.Event, r *schemas.Reclaimed) {
	s.close(r.ConnectionID, r.UserID, r.DeadInstanceID, r.DeadIncarnation, &Closure{
		Kind: ClosedByReclaim, Reason: "reclaimed", At: ev.Time().UTC(), EventID: ev.ID(), By: r.ReclaimedBy,
	})

	inst := s.Instances[r.DeadInstanceID]
	// NOTE: with no record of the dead incarnation yet, the claim is not
	// kept, and a heartbeat of it folded later leaves it live. The live views
	// never fold in that order, because a reclaimer acts on the record; a
	// rebuild can, when clocks are skewed, and relies on ApplyClaims.
	if inst == nil || inst.Incarnation != r.DeadIncarnation {
		return
	}
	if inst.ReclaimedBy == "" || r.ReclaimedBy < inst.ReclaimedBy {
		inst.ReclaimedBy = r.ReclaimedBy
	}
	s.syncIndex(inst)
}

// close turns a connection entry into a tombstone and drops it from the
// indexes. When two closures meet, the one that ranks first wins, so the
// result does not depend on the order they are folded in.
func (s *Set) close(connID, userID, instanceID, incarnation string, c *Closure) {
	entry := s.Connections[connID]
	if entry == nil {
		entry = &Connection{ConnectionID: connID, InstanceID: instanceID, Incarnation: incarnation, UserID: userID}
		s.Connections[connID] = entry
	}
	if entry.Closed == nil || closureBefore(c, entry.Closed) {
		entry.Closed = c
	}
	s.removeFromShard(instanceID, connID)
	if userID != "" {
		s.removeFromUser(userID, connID)
	}
}

func closureBefore(a, b *Closure) bool {
	if a.Kind != b.Kind {
		return a.Kind == ClosedByDisconnect
	}
	if !a.At.Equal(b.At) {
		return a.At.Before(b.At)
	}
	return a.EventID < b.EventID
}

func (s *Set) foldHeartbeat(seq uint64, at time.Time, h *schemas.Heartbeat) {
	inst := s.Instances[h.InstanceID]
	switch {
	case inst == nil || newerIncarnation(h, inst):
		inst = &Instance{InstanceID: h.InstanceID, Incarnation: h.Incarnation}
		s.Instances[h.InstanceID] = inst
	case inst.Incarnation != h.Incarnation:
		return // a heartbeat of an older incarnation
	case seq != 0 && seq <= inst.HeartbeatSeq:
		return // already folded, or older than what is
	}
	inst.State = h.State
	inst.StartedAt = h.StartedAt.UTC()
	inst.LastHeartbeatAt = at.UTC()
	inst.HeartbeatSeq = seq
	inst.ConnectionCount = h.ConnectionCount
	inst.Address = h.Address
	inst.Version = h.Version
	s.syncIndex(inst)
}

// newerIncarnation reports whether a heartbeat comes from a later start of
// the instance than the record.
func newerIncarnation(h *schemas.Heartbeat, inst *Instance) bool {
	if h.Incarnation == inst.Incarnation {
		return false
	}
	if !h.StartedAt.Equal(inst.StartedAt) {
		return h.StartedAt.After(inst.StartedAt)
	}
	return h.Incarnation > inst.Incarnation
}

func (s *Set) syncIndex(inst *Instance) {
	if s.Index == nil {
		s.Index = &InstanceIndex{Instances: map[string]bool{}}
	}
	if inst.Live() {
		s.Index.Instances[inst.InstanceID] = true
	} else {
		delete(s.Index.Instances, inst.InstanceID)
	}
}

func (s *Set) addToShard(instanceID, connID, incarnation string) {
	ref := ShardRef{instanceID, ShardOf(connID)}
	sh := s.Shards[ref]
	if sh == nil {
		sh = &Shard{Connections: map[string]string{}}
		s.Shards[ref] = sh
	}
	sh.Connections[connID] = incarnation
}

func (s *Set) removeFromShard(instanceID, connID string) {
	if sh := s.Shards[ShardRef{instanceID, ShardOf(connID)}]; sh != nil {
		delete(sh.Connections, connID)
	}
}

func (s *Set) addToUser(userID, connID, instanceID string) {
	u := s.Users[userID]
	if u == nil {
		u = &UserIndex{Connections: map[string]string{}}
		s.Users[userID] = u
	}
	u.Connections[connID] = instanceID
}

func (s *Set) removeFromUser(userID, connID string) {
	if u := s.Users[userID]; u != nil {
		delete(u.Connections, connID)
	}
}

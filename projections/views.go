// Package projections folds events into the views that reclaimers, health
// checks and the read API use, and rebuilds and verifies those views from the
// log.
//
// Fold is a pure function over an in-memory Set; Projector loads the keys a
// batch touches from the state store, folds, and turns the difference into
// conditional writes. Folding is idempotent and does not depend on the order
// of events of different streams: a connection closed before its connect is
// folded stays closed, because its entry becomes a tombstone rather than
// disappearing.
package projections

import (
	"hash/fnv"
	"strconv"
	"time"
)

// Key layout of the views. Dapr has no key scan, so every list is an index
// key.
const (
	Prefix           = "websocketmanager/"
	InstanceIndexKey = Prefix + "instances"
)

// ShardCount is the number of index keys each instance's connection ids are
// spread over, so that no single write grows with the instance's connection
// count: at 50,000 connections a shard holds about 780 ids, some 40 KiB. The
// reclaimer reads all shards of an instance in one bulk read. Changing it
// needs a rebuild of the views.
const ShardCount = 64

// ConnectionKey is the key of a connection entry.
func ConnectionKey(connID string) string { return Prefix + "connections/" + connID }

// InstanceKey is the key of an instance heartbeat record.
func InstanceKey(instanceID string) string { return Prefix + "instances/" + instanceID }

// ShardKey is the key of one shard of an instance's connection index.
func ShardKey(instanceID string, shard int) string {
	return Prefix + "instances/" + instanceID + "/connections/" + strconv.Itoa(shard)
}

// UserKey is the key of a user's connection index.
func UserKey(userID string) string { return Prefix + "users/" + userID }

// ShardOf returns the shard a connection id is indexed in.
func ShardOf(connID string) int {
	h := fnv.New32a()
	h.Write([]byte(connID))
	return int(h.Sum32() % ShardCount)
}

// ShardKeys returns every shard key of an instance.
func ShardKeys(instanceID string) []string {
	keys := make([]string, ShardCount)
	for i := range keys {
		keys[i] = ShardKey(instanceID, i)
	}
	return keys
}

// Connection is a connection entry. Once closed it stays as a tombstone, so
// that a connect folded late cannot bring it back.
type Connection struct {
	ConnectionID string    `json:"connectionId"`
	InstanceID   string    `json:"instanceId"`
	Incarnation  string    `json:"incarnation"`
	UserID       string    `json:"userId"`
	RemoteAddr   string    `json:"remoteAddr,omitempty"`
	UserAgent    string    `json:"userAgent,omitempty"`
	Subprotocol  string    `json:"subprotocol,omitempty"`
	ConnectedAt  time.Time `json:"connectedAt,omitzero"`
	Closed       *Closure  `json:"closed,omitempty"`
}

// Open reports whether the connection is live in the view.
func (c *Connection) Open() bool { return c != nil && c.Closed == nil }

// Closure records how a connection ended: a disconnected event, or a
// reclaimed one when its instance died.
type Closure struct {
	Kind    string    `json:"kind"` // "disconnected" or "reclaimed"
	Reason  string    `json:"reason"`
	Code    int       `json:"code,omitempty"`
	At      time.Time `json:"at"`
	EventID string    `json:"eventId"`
	By      string    `json:"by,omitempty"` // the reclaimer's incarnation
}

// Closure kinds, in order of precedence: a real disconnect outranks a reclaim
// of the same connection, whichever is folded first.
const (
	ClosedByDisconnect = "disconnected"
	ClosedByReclaim    = "reclaimed"
)

// Instance is an instance heartbeat record. It follows the newest incarnation
// of the instance id.
type Instance struct {
	InstanceID      string    `json:"instanceId"`
	Incarnation     string    `json:"incarnation"`
	State           string    `json:"state"`
	StartedAt       time.Time `json:"startedAt"`
	LastHeartbeatAt time.Time `json:"lastHeartbeatAt"` // on the sender's clock: for display only
	// HeartbeatSeq is the stream sequence of the last heartbeat folded: the
	// heartbeat counter that observers watch on their own clocks.
	HeartbeatSeq    uint64 `json:"heartbeatSeq"`
	ConnectionCount int    `json:"connectionCount"`
	Address         string `json:"address"`
	Version         string `json:"version"`
	// ReclaimedBy is the incarnation that claimed this incarnation's
	// connections after it died. A reclaimer sets it with a compare-and-swap
	// before it appends reclaimed events, whose fold sets it too.
	ReclaimedBy string `json:"reclaimedBy,omitempty"`
}

// Live reports whether the record's incarnation counts as a member of the
// fleet: it has not stopped and has not been reclaimed.
func (i *Instance) Live() bool {
	return i != nil && i.State != "stopped" && i.ReclaimedBy == ""
}

// InstanceIndex is the set of live instance ids.
type InstanceIndex struct {
	Instances map[string]bool `json:"instances"`
}

// Shard maps connection ids to the incarnation that holds them.
type Shard struct {
	Connections map[string]string `json:"connections"`
}

// UserIndex maps a user's connection ids to the instance that holds each.
type UserIndex struct {
	Connections map[string]string `json:"connections"`
}

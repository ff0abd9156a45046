package projections_test

import (
	"fmt"
	"testing"

	"github.com/cloudevents/sdk-go/v2/event"

	"github.com/virtufin/websocketmanager/projections"
	"github.com/virtufin/websocketmanager/schemas"
)

// benchShardSize is the number of open connections in the shard that the
// fold benchmarks touch: an instance with about 9,600 connections spread
// over projections.ShardCount shards.
const benchShardSize = 150

// benchUsers is the number of users the shard's connections belong to, so
// each user index contains three connections.
const benchUsers = 50

// Instance, incarnation and user agent of the benchmark events, at the
// length they have in production: UUIDv7 incarnation and connection ids and
// a browser's user agent.
const (
	benchInstance    = "pod-bench"
	benchIncarnation = "0190f3a2-7c1e-7b3a-9f6e-2d1c0b9a8e7f"
	benchUserAgent   = "Mozilla/5.0 (X11; Linux x86_64; rv:128.0) Gecko/20100101 Firefox/128.0"
)

// shardFixture is one shard of benchInstance with benchShardSize open
// connections, the events that opened them, and one more connection id of
// the same shard that is not open yet.
type shardFixture struct {
	shard   int
	open    []*event.Event // the connected events, sequences 1 to benchShardSize
	conns   []string       // connection ids of open, in order
	newConn string         // a connection id of the same shard, not in open
}

// newShardFixture picks connection ids that all fall into one shard and
// builds their connected events.
func newShardFixture(b *testing.B) *shardFixture {
	b.Helper()
	ids := sameShardIDs(benchShardSize + 1)
	f := &shardFixture{shard: projections.ShardOf(ids[0]), conns: ids[:benchShardSize], newConn: ids[benchShardSize]}
	for i, id := range f.conns {
		f.open = append(f.open, benchConnected(b, uint64(i+1), id, benchUser(i)))
	}
	return f
}

// sameShardIDs returns n connection ids in the form of UUIDs that all fall
// into the shard of the first one.
func sameShardIDs(n int) []string {
	var ids []string
	want := -1
	for i := 0; len(ids) < n; i++ {
		id := fmt.Sprintf("0190f3a2-8d2f-7c4b-a07f-%012x", i)
		shard := projections.ShardOf(id)
		if want < 0 {
			want = shard
		}
		if shard == want {
			ids = append(ids, id)
		}
	}
	return ids
}

func benchUser(i int) string { return fmt.Sprintf("user-%04d", i%benchUsers) }

func benchConnected(b *testing.B, seq uint64, connID, user string) *event.Event {
	ev, err := schemas.NewConnected(schemas.Envelope{InstanceID: benchInstance, Time: at(int(seq))}, schemas.Connected{
		ConnectionID: connID, InstanceID: benchInstance, Incarnation: benchIncarnation, UserID: user,
		RemoteAddr: "203.0.113.7:54321", UserAgent: benchUserAgent, ConnectedAt: at(int(seq)),
	})
	return finish(b, ev, err, fmt.Sprintf("ev-%06d", seq), seq)
}

func benchDisconnected(b *testing.B, seq uint64, connID, user string) *event.Event {
	ev, err := schemas.NewDisconnected(schemas.Envelope{InstanceID: benchInstance, Time: at(int(seq))}, schemas.Disconnected{
		ConnectionID: connID, InstanceID: benchInstance, Incarnation: benchIncarnation, UserID: user,
		CloseCode: 1000, Reason: schemas.ReasonClientClosed, DisconnectedAt: at(int(seq)),
	})
	return finish(b, ev, err, fmt.Sprintf("ev-%06d", seq), seq)
}

package projections_test

import (
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"testing"

	"github.com/cloudevents/sdk-go/v2/event"

	"github.com/virtufin/websocketmanager/eventlog"
	"github.com/virtufin/websocketmanager/eventlog/eventlogtest"
	"github.com/virtufin/websocketmanager/internal/state"
	"github.com/virtufin/websocketmanager/projections"
	"github.com/virtufin/websocketmanager/schemas"
)

// recordsOf wraps events of one stream as log records, at the sequences
// their sequence extension gives.
func recordsOf(t testing.TB, stream string, events ...*event.Event) []eventlog.Record {
	t.Helper()
	out := make([]eventlog.Record, len(events))
	for i, ev := range events {
		seq, err := strconv.ParseUint(ev.Extensions()[schemas.SequenceExtension].(string), 10, 64)
		if err != nil {
			t.Fatalf("event %s has no valid sequence: %v", ev.ID(), err)
		}
		out[i] = eventlog.Record{Stream: stream, Seq: seq, Event: ev}
	}
	return out
}

func mutations(t *testing.T, store state.Store, records []eventlog.Record) []state.Op {
	t.Helper()
	ops, err := projections.Projector{}.Mutations(t.Context(), store, records)
	if err != nil {
		t.Fatalf("Mutations: %v", err)
	}
	return ops
}

// liveViews reads every view in the store.
func liveViews(t *testing.T, store state.Store) *projections.Set {
	t.Helper()
	live, err := projections.LoadLive(t.Context(), store, projections.NewSet())
	if err != nil {
		t.Fatalf("LoadLive: %v", err)
	}
	return live
}

func opKeys(ops []state.Op) []string {
	keys := make([]string, len(ops))
	for i, op := range ops {
		keys[i] = op.Key
	}
	slices.Sort(keys)
	return keys
}

func TestProjectorMutations(t *testing.T) {
	store := eventlogtest.OpenEmbedded(t, t.TempDir())
	const stream = "pod-a/inc-a1"
	first := []*event.Event{
		heartbeatEv(t, "h1", 1, 1, "pod-a", "inc-a1", schemas.StateServing, 0, 0),
		connectedEv(t, "e1", 2, 2, "c1", "pod-a", "inc-a1", "u1"),
		connectedEv(t, "e2", 3, 3, "c2", "pod-a", "inc-a1", "u1"),
		connectedEv(t, "e3", 4, 4, "c3", "pod-a", "inc-a1", ""),
	}

	// On empty views every write creates its key, so each is conditional
	// on the key being absent.
	ops := mutations(t, store, recordsOf(t, stream, first...))
	wantKeys := []string{
		projections.InstanceIndexKey, projections.ConnectionKey("c1"), projections.ConnectionKey("c2"),
		projections.ConnectionKey("c3"), projections.InstanceKey("pod-a"), projections.UserKey("u1"),
	}
	for _, c := range []string{"c1", "c2", "c3"} {
		if k := projections.ShardKey("pod-a", projections.ShardOf(c)); !slices.Contains(wantKeys, k) {
			wantKeys = append(wantKeys, k)
		}
	}
	slices.Sort(wantKeys)
	if got := opKeys(ops); !slices.Equal(got, wantKeys) {
		t.Errorf("first batch writes\n %v\nwant\n %v", got, wantKeys)
	}
	for _, op := range ops {
		if op.Kind != state.Upsert || !op.MustNotExist || op.ETag != "" {
			t.Errorf("op on %s = kind %d, mustNotExist %v, etag %q; want an upsert of an absent key", op.Key, op.Kind, op.MustNotExist, op.ETag)
		}
	}
	if err := store.Transact(t.Context(), ops); err != nil {
		t.Fatalf("apply the first batch: %v", err)
	}

	// Projecting the same batch again finds nothing to write.
	for i := range 3 {
		if again := mutations(t, store, recordsOf(t, stream, first...)); len(again) != 0 {
			t.Fatalf("projection %d of an applied batch writes %v, want nothing", i+2, opKeys(again))
		}
	}

	// Closing c1 rewrites existing keys, each conditional on the ETag read.
	second := []*event.Event{disconnectedEv(t, "e4", 5, 5, "c1", "pod-a", "inc-a1", "u1", schemas.ReasonClientClosed, 1000)}
	ops = mutations(t, store, recordsOf(t, stream, second...))
	for _, op := range ops {
		it, err := store.Get(t.Context(), op.Key)
		if err != nil {
			t.Fatal(err)
		}
		if op.MustNotExist || op.ETag == "" || op.ETag != it.ETag {
			t.Errorf("op on %s = mustNotExist %v, etag %q; want conditional on the stored etag %q", op.Key, op.MustNotExist, op.ETag, it.ETag)
		}
	}

	// A concurrent write to one of those keys makes the batch fail whole.
	concurrent := connectedEv(t, "e5", 1, 6, "c4", "pod-b", "inc-b1", "u1")
	if err := store.Transact(t.Context(), mutations(t, store, recordsOf(t, "pod-b/inc-b1", concurrent))); err != nil {
		t.Fatalf("apply the concurrent batch: %v", err)
	}
	err := store.Transact(t.Context(), ops)
	if !errors.Is(err, state.ErrETagMismatch) {
		t.Fatalf("apply writes read before a concurrent change: got %v, want state.ErrETagMismatch", err)
	}
	if c, _ := (projections.Reader{Store: store}).Connection(t.Context(), "c1"); !c.Open() {
		t.Errorf("c1 = %+v after the failed batch, want it still open", c)
	}

	// Projected again from fresh reads, the batch applies and converges.
	if err := store.Transact(t.Context(), mutations(t, store, recordsOf(t, stream, second...))); err != nil {
		t.Fatalf("apply the re-projected batch: %v", err)
	}
	if again := mutations(t, store, recordsOf(t, stream, second...)); len(again) != 0 {
		t.Errorf("projection of an applied batch writes %v, want nothing", opKeys(again))
	}
	want := fold(t, append(append(slices.Clone(first), second...), concurrent)...)
	checkSame(t, "stored views", liveViews(t, store), want)
}

// TestProjectorKeepsEmptyIndexes checks that an index left empty is written
// as an empty document, conditional on its ETag, rather than deleted: a
// deleted key would accept a stale conditional write on Dapr's Redis store.
func TestProjectorKeepsEmptyIndexes(t *testing.T) {
	store := eventlogtest.OpenEmbedded(t, t.TempDir())
	const stream = "pod-a/inc-a1"
	connect := connectedEv(t, "e1", 1, 1, "c1", "pod-a", "inc-a1", "u1")
	if err := store.Transact(t.Context(), mutations(t, store, recordsOf(t, stream, connect))); err != nil {
		t.Fatal(err)
	}
	shardKey := projections.ShardKey("pod-a", projections.ShardOf("c1"))
	items, err := store.BulkGet(t.Context(), []string{shardKey, projections.UserKey("u1")})
	if err != nil {
		t.Fatal(err)
	}

	ops := mutations(t, store, recordsOf(t, stream, disconnectedEv(t, "e2", 2, 2, "c1", "pod-a", "inc-a1", "u1", schemas.ReasonKicked, 4000)))
	for _, it := range items {
		i := slices.IndexFunc(ops, func(op state.Op) bool { return op.Key == it.Key })
		if i < 0 {
			t.Errorf("no write to %s, want an upsert of an empty index", it.Key)
			continue
		}
		if ops[i].Kind != state.Upsert || ops[i].ETag != it.ETag {
			t.Errorf("write to %s = kind %d etag %q, want an upsert conditional on %q", it.Key, ops[i].Kind, ops[i].ETag, it.ETag)
		}
	}
	if err := store.Transact(t.Context(), ops); err != nil {
		t.Fatal(err)
	}
	after, _ := store.BulkGet(t.Context(), []string{shardKey, projections.UserKey("u1")})
	for _, it := range after {
		if got, want := string(it.Value), `{"connections":{}}`; got != want {
			t.Errorf("%s = %s after its last connection closed, want %s", it.Key, got, want)
		}
	}
	if again := mutations(t, store, recordsOf(t, stream, disconnectedEv(t, "e2", 2, 2, "c1", "pod-a", "inc-a1", "u1", schemas.ReasonKicked, 4000))); len(again) != 0 {
		t.Errorf("folding the disconnect again writes %v, want nothing", opKeys(again))
	}
}

func TestProjectorSkipsUnknownAndRejectsBad(t *testing.T) {
	store := eventlogtest.OpenEmbedded(t, t.TempDir())
	unknown := connectedEv(t, "e1", 1, 1, "c1", "pod-a", "inc-a1", "u1")
	unknown.SetType(schemas.TypePrefix + "connection.teleported")
	if ops := mutations(t, store, recordsOf(t, "pod-a/inc-a1", unknown)); len(ops) != 0 {
		t.Errorf("unknown event type writes %v, want nothing", opKeys(ops))
	}

	bad := connectedEv(t, "e2", 2, 2, "c2", "pod-a", "inc-a1", "u1")
	bad.DataEncoded = []byte(`{"connectionId":`)
	if _, err := (projections.Projector{}).Mutations(t.Context(), store, recordsOf(t, "pod-a/inc-a1", bad)); err == nil {
		t.Error("Mutations accepted an event whose data is not JSON")
	}
}

// BenchmarkProjectorMutations measures Projector.Mutations on the embedded
// store: one op reads the views a batch touches, folds the batch and
// encodes the writes, without committing them, so every op starts from the
// same views.
//
// In the connected and disconnected cases the store contains one shard of
// benchShardSize open connections, as on a busy instance. The batch is one
// event: the connect of a new connection of that shard, or the disconnect
// of one of its connections. In the batch=100 case the batch is 100
// connects into an empty store.
func BenchmarkProjectorMutations(b *testing.B) {
	store := eventlogtest.OpenEmbedded(b, b.TempDir())
	stream := eventlog.StreamName(benchInstance, benchIncarnation)
	f := newShardFixture(b)
	seed, err := projections.Projector{}.Mutations(b.Context(), store, recordsOf(b, stream, f.open...))
	if err != nil {
		b.Fatal(err)
	}
	if err := store.Transact(b.Context(), seed); err != nil {
		b.Fatal(err)
	}
	seq := uint64(len(f.open))
	shardKey := projections.ShardKey(benchInstance, f.shard)
	item, err := store.Get(b.Context(), shardKey)
	if err != nil {
		b.Fatal(err)
	}
	var stored projections.Shard
	if err := json.Unmarshal(item.Value, &stored); err != nil {
		b.Fatalf("decode %s: %v", shardKey, err)
	}
	if len(stored.Connections) != benchShardSize {
		b.Fatalf("%s contains %d connections, want %d", shardKey, len(stored.Connections), benchShardSize)
	}

	single := func(b *testing.B, ev *event.Event) {
		records := recordsOf(b, stream, ev)
		ops, err := projections.Projector{}.Mutations(b.Context(), store, records)
		if err != nil {
			b.Fatal(err)
		}
		if !slices.Contains(opKeys(ops), shardKey) {
			b.Fatalf("Mutations writes %v, want a write to %s", opKeys(ops), shardKey)
		}
		b.ReportAllocs()
		for b.Loop() {
			if _, err := (projections.Projector{}).Mutations(b.Context(), store, records); err != nil {
				b.Fatal(err)
			}
		}
	}
	b.Run(fmt.Sprintf("connected/shard=%d", benchShardSize), func(b *testing.B) {
		single(b, benchConnected(b, seq+1, f.newConn, benchUser(0)))
	})
	b.Run(fmt.Sprintf("disconnected/shard=%d", benchShardSize), func(b *testing.B) {
		single(b, benchDisconnected(b, seq+1, f.conns[0], benchUser(0)))
	})

	b.Run("batch=100/empty-views", func(b *testing.B) {
		store := eventlogtest.OpenEmbedded(b, b.TempDir())
		const stream = "pod-a/inc-a1"
		events := make([]*event.Event, 100)
		for i := range events {
			events[i] = connectedEv(b, fmt.Sprintf("e%d", i), uint64(i+1), i, fmt.Sprintf("c%d", i), "pod-a", "inc-a1", fmt.Sprintf("u%d", i%10))
		}
		records := recordsOf(b, stream, events...)
		b.ReportAllocs()
		for b.Loop() {
			if _, err := (projections.Projector{}).Mutations(b.Context(), store, records); err != nil {
				b.Fatal(err)
			}
		}
	})
}

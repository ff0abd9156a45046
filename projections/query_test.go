package projections_test

import (
	"fmt"
	"maps"
	"slices"
	"testing"

	"github.com/cloudevents/sdk-go/v2/event"

	"github.com/virtufin/websocketmanager/eventlog/eventlogtest"
	"github.com/virtufin/websocketmanager/projections"
	"github.com/virtufin/websocketmanager/schemas"
)

// bulkConns is how many anonymous connections pod-b holds besides c4 and
// c5, enough to spread over many shards.
const bulkConns = 40

// readerFixture projects a small fleet into an embedded store:
//
//	pod-a/inc-a1 serving:  c1 (u1), c2 (u2, closed), c3 (anonymous)
//	pod-b/inc-b1 serving:  c4 (u1), c5 (u2), bulk-00..bulk-39 (anonymous)
//	pod-c/inc-c1 stopped:  c6 (u1, closed on drain)
//	pod-d/inc-d1 no heartbeat yet: c7 (u3)
func readerFixture(t *testing.T) projections.Reader {
	t.Helper()
	store := eventlogtest.OpenEmbedded(t, t.TempDir())
	log := projectedLog(store)

	streams := map[string][]*event.Event{
		"pod-a/inc-a1": {
			heartbeatEv(t, "a-h1", 1, 1, "pod-a", "inc-a1", schemas.StateServing, 0, 0),
			connectedEv(t, "a-e1", 2, 2, "c1", "pod-a", "inc-a1", "u1"),
			connectedEv(t, "a-e2", 3, 3, "c2", "pod-a", "inc-a1", "u2"),
			connectedEv(t, "a-e3", 4, 4, "c3", "pod-a", "inc-a1", ""),
			disconnectedEv(t, "a-e4", 5, 5, "c2", "pod-a", "inc-a1", "u2", schemas.ReasonClientClosed, 1000),
		},
		"pod-b/inc-b1": {
			heartbeatEv(t, "b-h1", 1, 1, "pod-b", "inc-b1", schemas.StateServing, 0, 0),
			connectedEv(t, "b-e1", 2, 2, "c4", "pod-b", "inc-b1", "u1"),
			connectedEv(t, "b-e2", 3, 3, "c5", "pod-b", "inc-b1", "u2"),
		},
		"pod-c/inc-c1": {
			heartbeatEv(t, "c-h1", 1, 1, "pod-c", "inc-c1", schemas.StateServing, 0, 0),
			connectedEv(t, "c-e1", 2, 2, "c6", "pod-c", "inc-c1", "u1"),
			heartbeatEv(t, "c-h2", 3, 3, "pod-c", "inc-c1", schemas.StateDraining, 0, 1),
			disconnectedEv(t, "c-e2", 4, 4, "c6", "pod-c", "inc-c1", "u1", schemas.ReasonServerShutdown, 1001),
			heartbeatEv(t, "c-h3", 5, 5, "pod-c", "inc-c1", schemas.StateStopped, 0, 0),
		},
		"pod-d/inc-d1": {
			connectedEv(t, "d-e1", 1, 1, "c7", "pod-d", "inc-d1", "u3"),
		},
	}
	for i := range bulkConns {
		id := fmt.Sprintf("bulk-%02d", i)
		streams["pod-b/inc-b1"] = append(streams["pod-b/inc-b1"], connectedEv(t, "b-"+id, uint64(4+i), 4+i, id, "pod-b", "inc-b1", ""))
	}

	for _, stream := range slices.Sorted(maps.Keys(streams)) {
		w, err := log.NewWriter(t.Context(), stream)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := w.Append(t.Context(), streams[stream]...); err != nil {
			t.Fatalf("append to %s: %v", stream, err)
		}
		if err := w.Close(t.Context()); err != nil {
			t.Fatal(err)
		}
	}
	return projections.Reader{Store: store}
}

func bulkIDs() []string {
	ids := make([]string, bulkConns)
	for i := range ids {
		ids[i] = fmt.Sprintf("bulk-%02d", i)
	}
	return ids
}

func TestReaderConnections(t *testing.T) {
	q := readerFixture(t)
	tests := []struct {
		name   string
		filter projections.Filter
		want   []string
	}{
		{"every live instance", projections.Filter{}, slices.Concat(bulkIDs(), []string{"c1", "c3", "c4", "c5"})},
		{"by user", projections.Filter{UserID: "u1"}, []string{"c1", "c4"}},
		{"by user and instance", projections.Filter{UserID: "u1", InstanceID: "pod-b"}, []string{"c4"}},
		{"by user with none open", projections.Filter{UserID: "u1", InstanceID: "pod-c"}, nil},
		{"by instance", projections.Filter{InstanceID: "pod-a"}, []string{"c1", "c3"}},
		{"by instance across shards", projections.Filter{InstanceID: "pod-b"}, slices.Concat(bulkIDs(), []string{"c4", "c5"})},
		{"instance without a heartbeat", projections.Filter{InstanceID: "pod-d"}, []string{"c7"}},
		{"stopped instance", projections.Filter{InstanceID: "pod-c"}, nil},
		{"unknown user", projections.Filter{UserID: "nobody"}, nil},
		{"unknown instance", projections.Filter{InstanceID: "pod-z"}, nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			conns, err := q.Connections(t.Context(), tt.filter)
			if err != nil {
				t.Fatalf("Connections(%+v): %v", tt.filter, err)
			}
			var got []string
			for _, c := range conns {
				got = append(got, c.ConnectionID)
				if !c.Open() {
					t.Errorf("Connections returned closed connection %s", c.ConnectionID)
				}
				if tt.filter.UserID != "" && c.UserID != tt.filter.UserID {
					t.Errorf("connection %s of user %q returned for user %q", c.ConnectionID, c.UserID, tt.filter.UserID)
				}
				if tt.filter.InstanceID != "" && c.InstanceID != tt.filter.InstanceID {
					t.Errorf("connection %s on %q returned for instance %q", c.ConnectionID, c.InstanceID, tt.filter.InstanceID)
				}
			}
			if !slices.Equal(got, tt.want) {
				t.Errorf("Connections(%+v) = %v, want %v", tt.filter, got, tt.want)
			}
		})
	}
}

func TestReaderInstances(t *testing.T) {
	q := readerFixture(t)

	ids, err := q.InstanceIDs(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	if want := []string{"pod-a", "pod-b"}; !slices.Equal(ids, want) {
		t.Errorf("InstanceIDs = %v, want %v: stopped and silent instances are not members", ids, want)
	}

	insts, err := q.Instances(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, i := range insts {
		got = append(got, i.InstanceID+"/"+i.Incarnation+" "+i.State)
	}
	if want := []string{"pod-a/inc-a1 serving", "pod-b/inc-b1 serving"}; !slices.Equal(got, want) {
		t.Errorf("Instances = %v, want %v", got, want)
	}

	rec, etag, err := q.Instance(t.Context(), "pod-c")
	if err != nil || rec == nil {
		t.Fatalf("Instance(pod-c) = %+v, %v", rec, err)
	}
	if rec.State != schemas.StateStopped || rec.HeartbeatSeq != 5 || rec.Live() || etag == "" {
		t.Errorf("Instance(pod-c) = %+v with etag %q; want stopped at heartbeat 5, not live, with an etag", rec, etag)
	}
	if rec, etag, err := q.Instance(t.Context(), "pod-z"); rec != nil || etag != "" || err != nil {
		t.Errorf("Instance(pod-z) = %+v, %q, %v; want nil, no etag, no error", rec, etag, err)
	}
}

func TestReaderInstanceConnections(t *testing.T) {
	q := readerFixture(t)
	tests := []struct {
		instance string
		want     map[string]string
	}{
		{"pod-a", map[string]string{"c1": "inc-a1", "c3": "inc-a1"}},
		{"pod-c", map[string]string{}},
		{"pod-d", map[string]string{"c7": "inc-d1"}},
		{"pod-z", map[string]string{}},
	}
	for _, tt := range tests {
		got, err := q.InstanceConnections(t.Context(), tt.instance)
		if err != nil {
			t.Fatalf("InstanceConnections(%s): %v", tt.instance, err)
		}
		if !maps.Equal(got, tt.want) {
			t.Errorf("InstanceConnections(%s) = %v, want %v", tt.instance, got, tt.want)
		}
	}

	b, err := q.InstanceConnections(t.Context(), "pod-b")
	if err != nil {
		t.Fatal(err)
	}
	shards := map[int]bool{}
	for id := range b {
		shards[projections.ShardOf(id)] = true
	}
	if len(b) != bulkConns+2 || len(shards) < 10 {
		t.Errorf("InstanceConnections(pod-b) = %d connections over %d shards, want %d over at least 10", len(b), len(shards), bulkConns+2)
	}
}

func TestReaderConnectionAndUser(t *testing.T) {
	q := readerFixture(t)

	c, err := q.Connection(t.Context(), "c2")
	if err != nil || c == nil {
		t.Fatalf("Connection(c2) = %+v, %v", c, err)
	}
	if c.Open() || c.Closed.Reason != schemas.ReasonClientClosed || c.Closed.EventID != "a-e4" {
		t.Errorf("Connection(c2) = %+v, want the tombstone of its client close", c)
	}
	if c, err := q.Connection(t.Context(), "missing"); c != nil || err != nil {
		t.Errorf("Connection(missing) = %+v, %v; want nil, nil", c, err)
	}

	tests := []struct {
		user string
		want map[string]string
	}{
		{"u1", map[string]string{"c1": "pod-a", "c4": "pod-b"}},
		{"u2", map[string]string{"c5": "pod-b"}},
		{"u3", map[string]string{"c7": "pod-d"}},
		{"nobody", map[string]string{}},
	}
	for _, tt := range tests {
		got, err := q.UserConnections(t.Context(), tt.user)
		if err != nil {
			t.Fatalf("UserConnections(%s): %v", tt.user, err)
		}
		if got == nil || !maps.Equal(got, tt.want) {
			t.Errorf("UserConnections(%s) = %v, want %v", tt.user, got, tt.want)
		}
	}
}

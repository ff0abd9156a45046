package projections_test

import (
	"fmt"
	"slices"
	"testing"

	"github.com/virtufin/websocketmanager/projections"
)

// TestDiffKeyOrder builds two sets whose keys of every kind are shared and
// equal, shared and different, or on one side only, and checks that Diff
// returns exactly the differing keys, each once, in byte order.
func TestDiffKeyOrder(t *testing.T) {
	live, rebuilt := projections.NewSet(), projections.NewSet()
	var want []string
	for i := range 60 {
		id := fmt.Sprintf("id-%02d", i)
		onLive, onRebuilt, differ := i%4 != 1, i%4 != 2, i%4 == 3
		conn := func(agent string) *projections.Connection {
			return &projections.Connection{ConnectionID: id, InstanceID: "pod-a", Incarnation: "inc", UserID: "u", UserAgent: agent}
		}
		inst := func(version string) *projections.Instance {
			return &projections.Instance{InstanceID: id, Incarnation: "inc", State: "serving", Version: version}
		}
		shard := func(inc string) *projections.Shard {
			return &projections.Shard{Connections: map[string]string{id: inc}}
		}
		user := func(instance string) *projections.UserIndex {
			return &projections.UserIndex{Connections: map[string]string{id: instance}}
		}
		sr := projections.ShardRef{InstanceID: id, Shard: i % projections.ShardCount}
		if onLive {
			live.Connections[id], live.Instances[id], live.Shards[sr], live.Users[id] = conn("a"), inst("1"), shard("inc"), user("pod-a")
		}
		if onRebuilt {
			agent, version, inc, instance := "a", "1", "inc", "pod-a"
			if differ {
				agent, version, inc, instance = "b", "2", "inc-2", "pod-b"
			}
			rebuilt.Connections[id], rebuilt.Instances[id], rebuilt.Shards[sr], rebuilt.Users[id] = conn(agent), inst(version), shard(inc), user(instance)
		}
		if !onLive || !onRebuilt || differ {
			want = append(want, projections.ConnectionKey(id), projections.InstanceKey(id), projections.ShardKey(id, sr.Shard), projections.UserKey(id))
		}
	}
	rebuilt.Index = &projections.InstanceIndex{Instances: map[string]bool{"id-00": true}}
	want = append(want, projections.InstanceIndexKey)
	slices.Sort(want)

	diffs := projections.Diff(live, rebuilt)
	got := make([]string, len(diffs))
	for i, d := range diffs {
		got[i] = d.Key
		if d.Live == nil && d.Rebuilt == nil {
			t.Errorf("difference on %s has neither a live nor a rebuilt value", d.Key)
		}
	}
	if !slices.Equal(got, want) {
		t.Errorf("Diff keys =\n  %v\nwant\n  %v", got, want)
	}
	if diffs := projections.Diff(rebuilt, rebuilt); len(diffs) != 0 {
		t.Errorf("Diff of a set with itself = %v, want none", diffs)
	}
}

package projections

import (
	"context"
	"fmt"
	"slices"
	"strconv"
	"strings"

	"github.com/virtufin/websocketmanager/eventlog"
	"github.com/virtufin/websocketmanager/internal/state"
)

// RebuildStats counts what a rebuild read.
type RebuildStats struct {
	Events  int
	Streams int
}

// Rebuild folds the whole log into a fresh in-memory Set.
func Rebuild(ctx context.Context, log *eventlog.Log) (*Set, RebuildStats, error) {
	set := NewSet()
	var stats RebuildStats
	streams, err := log.Streams(ctx)
	if err != nil {
		return nil, stats, err
	}
	stats.Streams = len(streams)
	_, err = log.Replay(ctx, nil, func(rec eventlog.Record) error {
		stats.Events++
		d, err := decode(rec.Event)
		if err != nil {
			return fmt.Errorf("%s: %w", rec.Position(), err)
		}
		set.fold(d)
		return nil
	})
	return set, stats, err
}

// keyedRef is a view ref together with its store key.
type keyedRef struct {
	key string
	ref ref
}

// keyCount returns the number of keys the set holds a value for.
func (s *Set) keyCount() int {
	n := len(s.Connections) + len(s.Instances) + len(s.Shards) + len(s.Users)
	if s.Index != nil {
		n++
	}
	return n
}

// sortedRefs lists every key the set holds a value for, in key order. Each
// key is built once, before the sort, because a set can hold hundreds of
// thousands of them.
func (s *Set) sortedRefs() []keyedRef {
	out := make([]keyedRef, 0, s.keyCount())
	add := func(r ref) { out = append(out, keyedRef{key: r.key(), ref: r}) }
	for id := range s.Connections {
		add(ref{kind: kindConnection, id: id})
	}
	for id := range s.Instances {
		add(ref{kind: kindInstance, id: id})
	}
	if s.Index != nil {
		add(ref{kind: kindIndex})
	}
	for r := range s.Shards {
		add(ref{kind: kindShard, id: r.InstanceID, shard: r.Shard})
	}
	for id := range s.Users {
		add(ref{kind: kindUser, id: id})
	}
	slices.SortFunc(out, func(a, b keyedRef) int { return strings.Compare(a.key, b.key) })
	return out
}

// refs lists every key the set holds a value for, in key order.
func (s *Set) refs() []ref {
	keyed := s.sortedRefs()
	out := make([]ref, len(keyed))
	for i, k := range keyed {
		out[i] = k.ref
	}
	return out
}

// parseViewKey classifies a view key found by a scan. It returns false for
// keys that are not views, such as the log's.
func parseViewKey(key string) (ref, bool) {
	rest, ok := strings.CutPrefix(key, Prefix)
	if !ok {
		return ref{}, false
	}
	switch {
	case key == InstanceIndexKey:
		return ref{kind: kindIndex}, true
	case strings.HasPrefix(rest, "connections/"):
		return ref{kind: kindConnection, id: strings.TrimPrefix(rest, "connections/")}, true
	case strings.HasPrefix(rest, "users/"):
		return ref{kind: kindUser, id: strings.TrimPrefix(rest, "users/")}, true
	case strings.HasPrefix(rest, "instances/"):
		parts := strings.Split(strings.TrimPrefix(rest, "instances/"), "/")
		switch {
		case len(parts) == 1:
			return ref{kind: kindInstance, id: parts[0]}, true
		case len(parts) == 3 && parts[1] == "connections":
			n, err := strconv.Atoi(parts[2])
			if err != nil {
				return ref{}, false
			}
			return ref{kind: kindShard, id: parts[0], shard: n}, true
		}
	}
	return ref{}, false
}

// LoadLive reads the live views from the store. A store that can scan is
// read whole. Otherwise the keys read are those in expected plus every key
// the live indexes lead to, so an entry that only the live views hold is
// still found when an index names it.
func LoadLive(ctx context.Context, store state.Store, expected *Set) (*Set, error) {
	live := NewSet()
	if sc, ok := store.(state.Scanner); ok && store.Capabilities().Scan {
		err := sc.Scan(ctx, Prefix, func(it state.Item) error {
			r, ok := parseViewKey(it.Key)
			if !ok {
				return nil
			}
			return live.load(r, it.Value)
		})
		return live, err
	}

	seen := map[ref]bool{}
	read := func(refs []ref) error {
		var todo []ref
		for _, r := range refs {
			if !seen[r] {
				seen[r] = true
				todo = append(todo, r)
			}
		}
		for chunk := range slices.Chunk(todo, 256) {
			keys := make([]string, len(chunk))
			for i, r := range chunk {
				keys[i] = r.key()
			}
			items, err := store.BulkGet(ctx, keys)
			if err != nil {
				return fmt.Errorf("projections: read live views: %w", err)
			}
			for i, r := range chunk {
				if err := live.load(r, items[i].Value); err != nil {
					return err
				}
			}
		}
		return nil
	}

	if err := read(append(expected.refs(), ref{kind: kindIndex})); err != nil {
		return nil, err
	}
	// Follow the live indexes: instances lead to shards, shards to
	// connections, connections to users.
	var next []ref
	if live.Index != nil {
		for id := range live.Index.Instances {
			next = append(next, ref{kind: kindInstance, id: id})
		}
	}
	for id := range live.Instances {
		for i := range ShardCount {
			next = append(next, ref{kind: kindShard, id: id, shard: i})
		}
	}
	if err := read(next); err != nil {
		return nil, err
	}
	next = next[:0]
	for _, sh := range live.Shards {
		for conn := range sh.Connections {
			next = append(next, ref{kind: kindConnection, id: conn})
		}
	}
	if err := read(next); err != nil {
		return nil, err
	}
	next = next[:0]
	for _, c := range live.Connections {
		if c.UserID != "" {
			next = append(next, ref{kind: kindUser, id: c.UserID})
		}
	}
	return live, read(next)
}

// ApplyClaims copies onto a rebuilt set the reclaim claims that live records
// hold for the same incarnation. A claim is written by a reclaimer's
// compare-and-swap, and an incarnation that died holding no connections has
// no reclaimed event to rebuild it from.
func ApplyClaims(rebuilt, live *Set) {
	for id, l := range live.Instances {
		r := rebuilt.Instances[id]
		if r == nil || l.ReclaimedBy == "" || l.Incarnation != r.Incarnation || r.ReclaimedBy != "" {
			continue
		}
		r.ReclaimedBy = l.ReclaimedBy
		rebuilt.syncIndex(r)
	}
	if rebuilt.Index != nil && len(rebuilt.Index.Instances) == 0 {
		rebuilt.Index = nil
	}
}

// Difference is one key whose live value differs from the rebuilt one. A
// nil value means the key is absent on that side.
type Difference struct {
	Key     string
	Live    []byte
	Rebuilt []byte
}

func (d Difference) String() string {
	show := func(b []byte) string {
		if b == nil {
			return "(absent)"
		}
		return string(b)
	}
	return fmt.Sprintf("%s\n  live:    %s\n  rebuilt: %s", d.Key, show(d.Live), show(d.Rebuilt))
}

// Diff compares two sets key by key and returns the differences in key order.
// It merges the two sets' sorted keys, so each key is compared once.
func Diff(live, rebuilt *Set) []Difference {
	a, b := live.sortedRefs(), rebuilt.sortedRefs()
	var out []Difference
	var prev string
	for i, j := 0, 0; i < len(a) || j < len(b); {
		var next keyedRef
		switch {
		case j == len(b) || (i < len(a) && a[i].key < b[j].key):
			next = a[i]
			i++
		case i == len(a) || b[j].key < a[i].key:
			next = b[j]
			j++
		default: // the key is on both sides
			next = b[j]
			i++
			j++
		}
		// Two refs can build the same key, such as an instance id that
		// contains "/connections/". Such a key is compared once. No key is
		// empty, so the first one never matches prev.
		if next.key == prev {
			continue
		}
		prev = next.key
		l, r := live.encode(next.ref), rebuilt.encode(next.ref)
		if !sameValue(l, r) {
			out = append(out, Difference{Key: next.key, Live: l, Rebuilt: r})
		}
	}
	return out
}

// Replace writes a rebuilt set over the live views: keys that differ are
// written and keys only the live views hold are deleted. It is meant for a
// store no instance is writing to.
func Replace(ctx context.Context, store state.Store, live, rebuilt *Set) (int, error) {
	diffs := Diff(live, rebuilt)
	ops := make([]state.Op, 0, len(diffs))
	for _, d := range diffs {
		if d.Rebuilt == nil {
			ops = append(ops, state.Op{Kind: state.Delete, Key: d.Key})
		} else {
			ops = append(ops, state.Op{Kind: state.Upsert, Key: d.Key, Value: d.Rebuilt})
		}
	}
	for chunk := range slices.Chunk(ops, 512) {
		if err := store.Transact(ctx, chunk); err != nil {
			return 0, fmt.Errorf("projections: write rebuilt views: %w", err)
		}
	}
	return len(ops), nil
}

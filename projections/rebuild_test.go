package projections_test

import (
	"context"
	"encoding/json"
	"math/rand/v2"
	"strings"
	"testing"

	"github.com/cloudevents/sdk-go/v2/event"

	"github.com/virtufin/websocketmanager/eventlog"
	"github.com/virtufin/websocketmanager/eventlog/eventlogtest"
	"github.com/virtufin/websocketmanager/internal/embedded"
	"github.com/virtufin/websocketmanager/internal/state"
	"github.com/virtufin/websocketmanager/projections"
	"github.com/virtufin/websocketmanager/schemas"
)

// noScan hides the embedded store's Scan, the way a Dapr store has none, so
// LoadLive must find the live views through the indexes.
type noScan struct{ inner *embedded.Store }

func (s noScan) Get(ctx context.Context, key string) (state.Item, error) {
	return s.inner.Get(ctx, key)
}
func (s noScan) BulkGet(ctx context.Context, keys []string) ([]state.Item, error) {
	return s.inner.BulkGet(ctx, keys)
}
func (s noScan) Transact(ctx context.Context, ops []state.Op) error {
	return s.inner.Transact(ctx, ops)
}
func (s noScan) Capabilities() state.Capabilities { return state.Capabilities{Atomic: true} }
func (s noScan) Close() error                     { return s.inner.Close() }

// projectedLog opens a log that validates and projects every append.
func projectedLog(store state.Store) *eventlog.Log {
	return eventlog.Open(store, eventlog.Options{Validate: schemas.Validate, Projector: projections.Projector{}})
}

// appendHistory appends a history through one writer per stream, in the
// order it was emitted, with runs of one stream's events batched in
// appends of one to five events.
func appendHistory(t *testing.T, log *eventlog.Log, h *history, rnd *rand.Rand) {
	t.Helper()
	writers := map[string]*eventlog.Writer{}
	for _, stream := range h.order {
		w, err := log.NewWriter(t.Context(), stream)
		if err != nil {
			t.Fatalf("NewWriter(%s): %v", stream, err)
		}
		writers[stream] = w
	}

	streamOf := func(ev *event.Event) string {
		for s, evs := range h.streams {
			for _, e := range evs {
				if e == ev {
					return s
				}
			}
		}
		t.Fatalf("event %s is in no stream", ev.ID())
		return ""
	}
	for i := 0; i < len(h.events); {
		stream := streamOf(h.events[i])
		n := 1
		for max := 1 + rnd.IntN(5); n < max && i+n < len(h.events) && streamOf(h.events[i+n]) == stream; n++ {
		}
		if _, err := writers[stream].Append(t.Context(), h.events[i:i+n]...); err != nil {
			t.Fatalf("append %d events to %s: %v", n, stream, err)
		}
		i += n
	}

	for stream, w := range writers {
		if err := w.Close(t.Context()); err != nil {
			t.Fatalf("close writer of %s: %v", stream, err)
		}
	}
}

// rebuildAndLoad rebuilds the views from the log and reads the live ones.
func rebuildAndLoad(t *testing.T, log *eventlog.Log, store state.Store) (rebuilt, live *projections.Set) {
	t.Helper()
	rebuilt, _, err := projections.Rebuild(t.Context(), log)
	if err != nil {
		t.Fatalf("Rebuild: %v", err)
	}
	live, err = projections.LoadLive(t.Context(), store, rebuilt)
	if err != nil {
		t.Fatalf("LoadLive: %v", err)
	}
	return rebuilt, live
}

func TestRebuildEqualsLive(t *testing.T) {
	store := eventlogtest.OpenEmbedded(t, t.TempDir())
	log := projectedLog(store)
	h := generateHistory(t, 42, 150)
	appendHistory(t, log, h, rand.New(rand.NewPCG(42, 1)))

	rebuilt, stats, err := projections.Rebuild(t.Context(), log)
	if err != nil {
		t.Fatalf("Rebuild: %v", err)
	}
	if stats.Events != len(h.events) || stats.Streams != len(h.order) {
		t.Errorf("Rebuild read %d events in %d streams, want %d in %d", stats.Events, stats.Streams, len(h.events), len(h.order))
	}
	checkSame(t, "rebuilt against the folded history", rebuilt, fold(t, h.events...))
	checkHistoryViews(t, h, rebuilt)

	for name, s := range map[string]state.Store{"scan": store, "index walk": noScan{store}} {
		live, err := projections.LoadLive(t.Context(), s, rebuilt)
		if err != nil {
			t.Fatalf("LoadLive by %s: %v", name, err)
		}
		checkSame(t, "live views read by "+name, live, rebuilt)
	}

	res, err := projections.Verify(t.Context(), store)
	if err != nil {
		t.Fatalf("Verify: %v", err)
	}
	if !res.Equal() || res.Events != len(h.events) || res.Streams != len(h.order) || res.Keys == 0 {
		t.Errorf("Verify = %d events, %d streams, %d keys, %d differences; want %d events, %d streams, some keys, none",
			res.Events, res.Streams, res.Keys, len(res.Differences), len(h.events), len(h.order))
	}
}

// TestDiffFindsTampering changes single view keys behind the projector's
// back and expects Diff to name exactly that key, then Replace to repair it.
func TestDiffFindsTampering(t *testing.T) {
	store := eventlogtest.OpenEmbedded(t, t.TempDir())
	log := projectedLog(store)
	h := generateHistory(t, 7, 80)
	appendHistory(t, log, h, rand.New(rand.NewPCG(7, 1)))
	rebuilt, live := rebuildAndLoad(t, log, store)
	checkSame(t, "live views before tampering", live, rebuilt)

	var openID, user string
	for id, c := range rebuilt.Connections {
		if c.Open() && c.UserID != "" && (openID == "" || id < openID) {
			openID, user = id, c.UserID
		}
	}
	if openID == "" {
		t.Fatal("history has no open connection of a user")
	}

	tests := []struct {
		name       string
		key        string
		tamper     func(t *testing.T, key string)
		live       bool   // the key exists live after tampering
		rebuilt    bool   // the key exists in the rebuilt views
		showsValue string // text the String form must contain
	}{
		{
			name: "changed entry", key: projections.ConnectionKey(openID),
			tamper: func(t *testing.T, key string) {
				var c projections.Connection
				readJSON(t, store, key, &c)
				c.UserAgent = "tampered-agent"
				writeJSON(t, store, key, c)
			},
			live: true, rebuilt: true, showsValue: "tampered-agent",
		},
		{
			name: "deleted index", key: projections.UserKey(user),
			tamper: func(t *testing.T, key string) {
				if err := store.Transact(t.Context(), []state.Op{{Kind: state.Delete, Key: key}}); err != nil {
					t.Fatal(err)
				}
			},
			live: false, rebuilt: true, showsValue: "(absent)",
		},
		{
			name: "ghost connection", key: projections.ConnectionKey("ghost"),
			tamper: func(t *testing.T, key string) {
				writeJSON(t, store, key, projections.Connection{ConnectionID: "ghost", InstanceID: "pod-z", Incarnation: "inc-z", UserID: "nobody"})
			},
			live: true, rebuilt: false, showsValue: `"pod-z"`,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			tt.tamper(t, tt.key)
			rebuilt, live := rebuildAndLoad(t, log, store)

			diffs := projections.Diff(live, rebuilt)
			if len(diffs) != 1 || diffs[0].Key != tt.key {
				t.Fatalf("Diff = %v, want exactly one difference, on %s", diffs, tt.key)
			}
			d := diffs[0]
			if (d.Live != nil) != tt.live || (d.Rebuilt != nil) != tt.rebuilt {
				t.Errorf("difference has live %s and rebuilt %s; want live present %v, rebuilt present %v", d.Live, d.Rebuilt, tt.live, tt.rebuilt)
			}
			s := d.String()
			for _, part := range []string{tt.key, "live:", "rebuilt:", tt.showsValue} {
				if !strings.Contains(s, part) {
					t.Errorf("String() = %q, want it to contain %q", s, part)
				}
			}
			if res, err := projections.Verify(t.Context(), store); err != nil || res.Equal() {
				t.Errorf("Verify after tampering = %+v, %v; want a difference", res, err)
			}

			// Replace writes the rebuilt views back, repairing the key.
			n, err := projections.Replace(t.Context(), store, live, rebuilt)
			if err != nil || n != 1 {
				t.Fatalf("Replace = %d, %v; want 1 key written", n, err)
			}
			rebuilt, live = rebuildAndLoad(t, log, store)
			checkSame(t, "live views after Replace", live, rebuilt)
		})
	}
}

// TestApplyClaimsAfterClaimWithoutConnections follows a reclaimer that
// claims an incarnation which died holding no connections: no reclaimed
// event records the claim, so only ApplyClaims makes the rebuild match.
func TestApplyClaimsAfterClaimWithoutConnections(t *testing.T) {
	store := eventlogtest.OpenEmbedded(t, t.TempDir())
	log := projectedLog(store)
	w, err := log.NewWriter(t.Context(), "pod-e/inc-e1")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := w.Append(t.Context(), heartbeatEv(t, "h1", 1, 1, "pod-e", "inc-e1", schemas.StateServing, 0, 0)); err != nil {
		t.Fatal(err)
	}
	w.Close(t.Context())

	// The claim, as a reclaimer makes it: a compare-and-swap on the record
	// and on the index.
	reader := projections.Reader{Store: store}
	rec, etag, err := reader.Instance(t.Context(), "pod-e")
	if err != nil || rec == nil {
		t.Fatalf("Instance(pod-e) = %+v, %v", rec, err)
	}
	rec.ReclaimedBy = "inc-b1"
	raw, _ := json.Marshal(rec)
	idx, err := store.Get(t.Context(), projections.InstanceIndexKey)
	if err != nil {
		t.Fatal(err)
	}
	err = store.Transact(t.Context(), []state.Op{
		{Kind: state.Upsert, Key: projections.InstanceKey("pod-e"), Value: raw, ETag: etag},
		{Kind: state.Delete, Key: projections.InstanceIndexKey, ETag: idx.ETag},
	})
	if err != nil {
		t.Fatalf("claim pod-e: %v", err)
	}

	rebuilt, live := rebuildAndLoad(t, log, store)
	if diffs := projections.Diff(live, rebuilt); len(diffs) != 2 {
		t.Errorf("Diff before ApplyClaims = %v, want the record and the index", diffs)
	}
	projections.ApplyClaims(rebuilt, live)
	checkSame(t, "views after ApplyClaims", live, rebuilt)
	if res, err := projections.Verify(t.Context(), store); err != nil || !res.Equal() {
		t.Errorf("Verify = %+v, %v; want no difference", res, err)
	}
}

func TestApplyClaims(t *testing.T) {
	record := func(incarnation, claimedBy string) *projections.Instance {
		i := instanceRecord("pod-a", incarnation, schemas.StateServing, 0, 10, 3, 0)
		i.ReclaimedBy = claimedBy
		return i
	}
	tests := []struct {
		name        string
		rebuilt     *projections.Instance // nil for no record
		live        *projections.Instance
		wantClaim   string
		wantIndexed bool
	}{
		{"claim copied", record("inc-a1", ""), record("inc-a1", "inc-b1"), "inc-b1", false},
		{"other incarnation", record("inc-a2", ""), record("inc-a1", "inc-b1"), "", true},
		{"rebuilt already claimed", record("inc-a1", "inc-a2"), record("inc-a1", "inc-b1"), "inc-a2", false},
		{"live not claimed", record("inc-a1", ""), record("inc-a1", ""), "", true},
		{"no rebuilt record", nil, record("inc-a1", "inc-b1"), "", false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			rebuilt, live := projections.NewSet(), projections.NewSet()
			live.Instances["pod-a"] = tt.live
			if tt.rebuilt != nil {
				rebuilt.Instances["pod-a"] = tt.rebuilt
				if tt.rebuilt.Live() {
					rebuilt.Index = &projections.InstanceIndex{Instances: map[string]bool{"pod-a": true}}
				}
			}

			projections.ApplyClaims(rebuilt, live)

			got := rebuilt.Instances["pod-a"]
			if tt.rebuilt == nil {
				if got != nil {
					t.Errorf("ApplyClaims added a record %+v", got)
				}
				return
			}
			if got.ReclaimedBy != tt.wantClaim {
				t.Errorf("ReclaimedBy = %q, want %q", got.ReclaimedBy, tt.wantClaim)
			}
			indexed := rebuilt.Index != nil && rebuilt.Index.Instances["pod-a"]
			if indexed != tt.wantIndexed {
				t.Errorf("pod-a in the index = %v, want %v", indexed, tt.wantIndexed)
			}
			if rebuilt.Index != nil && len(rebuilt.Index.Instances) == 0 {
				t.Errorf("ApplyClaims left an empty index %+v, want nil", rebuilt.Index)
			}
		})
	}
}

func readJSON(t *testing.T, store state.Store, key string, v any) {
	t.Helper()
	it, err := store.Get(t.Context(), key)
	if err != nil || !it.Exists() {
		t.Fatalf("get %s: exists %v, %v", key, it.Exists(), err)
	}
	if err := json.Unmarshal(it.Value, v); err != nil {
		t.Fatalf("decode %s: %v", key, err)
	}
}

func writeJSON(t *testing.T, store state.Store, key string, v any) {
	t.Helper()
	raw, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	if err := store.Transact(t.Context(), []state.Op{{Kind: state.Upsert, Key: key, Value: raw}}); err != nil {
		t.Fatalf("write %s: %v", key, err)
	}
}

package eventlog_test

import (
	"bytes"
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/virtufin/websocketmanager/eventlog"
	"github.com/virtufin/websocketmanager/eventlog/eventlogtest"
	"github.com/virtufin/websocketmanager/internal/state"
	"github.com/virtufin/websocketmanager/schemas"
)

// TestReadScanMatchesBulkGet reads the same stream through the embedded
// store, which reads ranges with a cursor, and through a wrapper that cannot
// scan, which reads them key by key. Both must return the same records and
// the same errors, for intact, missing and damaged events.
func TestReadScanMatchesBulkGet(t *testing.T) {
	store := eventlogtest.OpenEmbedded(t, t.TempDir())
	ctx := t.Context()
	log := eventlog.Open(store, eventlog.Options{})

	const perStream = 10
	streams := []string{"pod-a/intact", "pod-a/gap", "pod-a/tail", "pod-a/damaged"}
	for _, stream := range streams {
		w, err := log.NewWriter(ctx, stream)
		if err != nil {
			t.Fatalf("NewWriter(%s): %v", stream, err)
		}
		for i := range perStream {
			at := time.Date(2025, 3, 1, 12, 0, i, 0, time.UTC)
			ev, err := schemas.NewConnected(schemas.Envelope{InstanceID: "pod-a", Time: at}, schemas.Connected{
				ConnectionID: fmt.Sprint("c", i), InstanceID: "pod-a", Incarnation: "inc", UserID: "u", ConnectedAt: at})
			if err != nil {
				t.Fatalf("build event: %v", err)
			}
			if _, err := w.Append(ctx, ev); err != nil {
				t.Fatalf("Append to %s: %v", stream, err)
			}
		}
		if err := w.Close(ctx); err != nil {
			t.Fatalf("close writer of %s: %v", stream, err)
		}
	}
	key := func(stream string, seq uint64) string {
		return eventlog.KeyPrefix + "streams/" + stream + "/events/" + schemas.FormatSequence(seq)
	}
	err := store.Transact(ctx, []state.Op{
		{Kind: state.Delete, Key: key("pod-a/gap", 5)},
		{Kind: state.Delete, Key: key("pod-a/tail", perStream)},
		{Kind: state.Upsert, Key: key("pod-a/damaged", 7), Value: []byte("00000000 {}")},
	})
	if err != nil {
		t.Fatalf("damage the log: %v", err)
	}

	byKey := eventlog.Open(noRollbackStore{store}, eventlog.Options{})
	for _, stream := range streams {
		for _, from := range []uint64{0, 1, 4, 9, 11} {
			for _, limit := range []int{1, 3, 100} {
				name := fmt.Sprintf("%s/from=%d/limit=%d", stream, from, limit)
				got, gotErr := log.Read(ctx, stream, from, limit)
				want, wantErr := byKey.Read(ctx, stream, from, limit)
				if fmt.Sprint(gotErr) != fmt.Sprint(wantErr) {
					t.Errorf("%s: scan error %v, key-by-key error %v", name, gotErr, wantErr)
				}
				if stream != "pod-a/intact" && from <= 1 && limit == 100 && !errors.Is(gotErr, eventlog.ErrCorrupt) {
					t.Errorf("%s: scan error %v, want one wrapping ErrCorrupt", name, gotErr)
				}
				if len(got) != len(want) {
					t.Errorf("%s: scan read %d records, key by key %d", name, len(got), len(want))
					continue
				}
				for i := range got {
					if got[i].Position() != want[i].Position() {
						t.Errorf("%s: record %d at %s, want %s", name, i, got[i].Position(), want[i].Position())
					}
					if !bytes.Equal(got[i].JSON, want[i].JSON) {
						t.Errorf("%s: record %d JSON %s, want %s", name, i, got[i].JSON, want[i].JSON)
					}
					if got[i].Event.ID() != want[i].Event.ID() {
						t.Errorf("%s: record %d event id %s, want %s", name, i, got[i].Event.ID(), want[i].Event.ID())
					}
				}
			}
		}
	}
}

package storechoice

import (
	"context"
	"errors"
	"testing"

	"github.com/virtufin/websocketmanager/internal/state"
)

// TestPebbleStoreETags checks that PebbleStore keeps the promises of the bbolt
// store that the benchmark relies on, so the two do the same work.
func TestPebbleStoreETags(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	st, err := OpenPebble(dir, PebbleOptions{})
	if err != nil {
		t.Fatal(err)
	}

	put := func(key, value, etag string, mustNotExist bool) error {
		t.Helper()
		return st.Transact(ctx, []state.Op{{Kind: state.Upsert, Key: key, Value: []byte(value), ETag: etag, MustNotExist: mustNotExist}})
	}
	if err := put("a", "1", "", true); err != nil {
		t.Fatalf("first write: %v", err)
	}
	if err := put("a", "2", "", true); !errors.Is(err, state.ErrETagMismatch) {
		t.Fatalf("MustNotExist on an existing key: got %v, want ErrETagMismatch", err)
	}
	a, err := st.Get(ctx, "a")
	if err != nil || string(a.Value) != "1" || a.ETag == "" {
		t.Fatalf("get a: got %+v, %v", a, err)
	}
	if err := put("a", "3", a.ETag+"0", false); !errors.Is(err, state.ErrETagMismatch) {
		t.Fatalf("stale etag: got %v, want ErrETagMismatch", err)
	}

	// A failed check anywhere leaves the whole transaction unwritten.
	err = st.Transact(ctx, []state.Op{
		{Kind: state.Upsert, Key: "b", Value: []byte("x")},
		{Kind: state.Upsert, Key: "a", Value: []byte("4"), ETag: "999999"},
	})
	if !errors.Is(err, state.ErrETagMismatch) {
		t.Fatalf("mixed transaction: got %v, want ErrETagMismatch", err)
	}
	if b, _ := st.Get(ctx, "b"); b.Exists() {
		t.Fatalf("b was written by a failed transaction")
	}

	if err := put("a", "5", a.ETag, false); err != nil {
		t.Fatalf("matching etag: %v", err)
	}

	// Versions survive a reopen, so an ETag is never handed out twice.
	if err := st.Close(); err != nil {
		t.Fatal(err)
	}
	if st, err = OpenPebble(dir, PebbleOptions{}); err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	before, _ := st.Get(ctx, "a")
	if err := put("c", "6", "", false); err != nil {
		t.Fatal(err)
	}
	items, err := st.BulkGet(ctx, []string{"a", "c", "missing"})
	if err != nil {
		t.Fatal(err)
	}
	if string(items[0].Value) != "5" || items[0].ETag != before.ETag {
		t.Errorf("a after reopen: got %+v, want value 5 and etag %s", items[0], before.ETag)
	}
	if items[1].ETag == before.ETag {
		t.Errorf("c got etag %s, already used by a", items[1].ETag)
	}
	if items[2].Exists() || items[2].ETag != "" {
		t.Errorf("missing key: got %+v, want empty item", items[2])
	}
}

package dapr_test

import (
	"bytes"
	"errors"
	"fmt"
	"strconv"
	"testing"

	"github.com/virtufin/websocketmanager/internal/dapr"
	"github.com/virtufin/websocketmanager/internal/daprtest"
	"github.com/virtufin/websocketmanager/internal/state"
)

// memStore is a state.in-memory component, which Dapr runs inside the
// sidecar: an atomic store to compare Redis with.
var memStore = daprtest.Component{Name: "memstore", Type: "state.in-memory"}

func TestStoreReadWrite(t *testing.T) {
	t.Parallel()
	d := daprtest.Sidecar(t, daprtest.Options{})
	s := open(t, d, dapr.Config{}).Store()

	if it := mustGet(t, s, "k/missing"); it.Exists() || it.ETag != "" {
		t.Errorf("Get of a missing key = %+v, want no value and no ETag", it)
	}

	binary := []byte{0, 1, 2, 0xff, '\n', '"', 0}
	mustTransact(t, s,
		upsert("k/text", `{"a":1}`),
		state.Op{Kind: state.Upsert, Key: "k/binary", Value: binary},
		state.Op{Kind: state.Upsert, Key: "k/empty", Value: []byte{}},
	)
	text := mustGet(t, s, "k/text")
	if string(text.Value) != `{"a":1}` || text.ETag == "" {
		t.Errorf("Get(k/text) = %q, etag %q; want the value and an ETag", text.Value, text.ETag)
	}
	if got := mustGet(t, s, "k/binary"); !bytes.Equal(got.Value, binary) {
		t.Errorf("Get(k/binary) = %v, want %v", got.Value, binary)
	}
	if got := mustGet(t, s, "k/empty"); !got.Exists() || len(got.Value) != 0 {
		t.Errorf("Get(k/empty) = %+v, want an existing empty value", got)
	}

	items, err := s.BulkGet(waitCtx(t), []string{"k/missing", "k/text", "k/empty", "k/text"})
	if err != nil {
		t.Fatalf("BulkGet: %v", err)
	}
	want := []struct {
		key    string
		exists bool
		value  string
	}{{"k/missing", false, ""}, {"k/text", true, `{"a":1}`}, {"k/empty", true, ""}, {"k/text", true, `{"a":1}`}}
	for i, w := range want {
		it := items[i]
		if it.Key != w.key || it.Exists() != w.exists || string(it.Value) != w.value {
			t.Errorf("BulkGet item %d = %s exists=%v %q, want %s exists=%v %q", i, it.Key, it.Exists(), it.Value, w.key, w.exists, w.value)
		}
	}
	if items[1].ETag != text.ETag {
		t.Errorf("BulkGet ETag = %q, Get ETag = %q; want the same", items[1].ETag, text.ETag)
	}

	// A conditional write with the current ETag applies and changes it.
	mustTransact(t, s, state.Op{Kind: state.Upsert, Key: "k/text", Value: []byte("v2"), ETag: text.ETag})
	if got := mustGet(t, s, "k/text"); string(got.Value) != "v2" || got.ETag == text.ETag {
		t.Errorf("after a conditional write k/text = %q, etag %q; want v2 and a new ETag", got.Value, got.ETag)
	}

	mustTransact(t, s, state.Op{Kind: state.Delete, Key: "k/text"}, state.Op{Kind: state.Delete, Key: "k/never"})
	if got := mustGet(t, s, "k/text"); got.Exists() {
		t.Errorf("Get after Delete = %+v, want absent", got)
	}
	if got, err := s.BulkGet(waitCtx(t), nil); err != nil || len(got) != 0 {
		t.Errorf("BulkGet(nil) = %v, %v; want no items", got, err)
	}
	if err := s.Transact(waitCtx(t), nil); err != nil {
		t.Errorf("Transact(nil) = %v, want nil", err)
	}
}

func TestStoreInvalidArguments(t *testing.T) {
	t.Parallel()
	d := daprtest.Sidecar(t, daprtest.Options{})
	s := open(t, d, dapr.Config{}).Store()
	before := s.Calls().Total()

	tests := []struct {
		name string
		call func() error
	}{
		{"get empty key", func() error { _, err := s.Get(waitCtx(t), ""); return err }},
		{"bulk get empty key", func() error { _, err := s.BulkGet(waitCtx(t), []string{"a", ""}); return err }},
		{"transact empty key", func() error { return s.Transact(waitCtx(t), []state.Op{upsert("", "x")}) }},
		{"transact unknown kind", func() error { return s.Transact(waitCtx(t), []state.Op{{Kind: 99, Key: "k"}}) }},
	}
	for _, tt := range tests {
		if err := tt.call(); !errors.Is(err, state.ErrInvalidArgument) {
			t.Errorf("%s: got %v, want state.ErrInvalidArgument", tt.name, err)
		}
	}
	if got := s.Calls().Total() - before; got != 0 {
		t.Errorf("invalid calls reached the sidecar %d times, want 0", got)
	}

	s.Close()
	if _, err := s.Get(waitCtx(t), "k"); !errors.Is(err, state.ErrClosed) {
		t.Errorf("Get after Close = %v, want state.ErrClosed", err)
	}
	if err := s.Transact(waitCtx(t), []state.Op{upsert("k", "v")}); !errors.Is(err, state.ErrClosed) {
		t.Errorf("Transact after Close = %v, want state.ErrClosed", err)
	}
}

// TestETagMismatch checks every way a conditional write can fail, on Redis
// and on Dapr's in-memory store, whose errors come back differently.
func TestETagMismatch(t *testing.T) {
	t.Parallel()
	d := daprtest.Sidecar(t, daprtest.Options{Components: []daprtest.Component{memStore}})
	stores := map[string]*dapr.Store{
		"redis":     open(t, d, dapr.Config{}).Store(),
		"in-memory": open(t, d, dapr.Config{StateStore: memStore.Name}).Store(),
	}
	for name, s := range stores {
		t.Run(name, func(t *testing.T) {
			mustTransact(t, s, upsert("e/key", "v1"))
			stale := mustGet(t, s, "e/key").ETag
			mustTransact(t, s, upsert("e/key", "v2"))
			current := mustGet(t, s, "e/key").ETag

			tests := []struct {
				name     string
				op       state.Op
				mismatch bool
			}{
				{"upsert with a stale etag", state.Op{Kind: state.Upsert, Key: "e/key", Value: []byte("x"), ETag: stale}, true},
				{"delete with a stale etag", state.Op{Kind: state.Delete, Key: "e/key", ETag: stale}, true},
				{"create an existing key", state.Op{Kind: state.Upsert, Key: "e/key", Value: []byte("x"), MustNotExist: true}, true},
				{"create a new key", state.Op{Kind: state.Upsert, Key: "e/new", Value: []byte("n"), MustNotExist: true}, false},
				{"create it again", state.Op{Kind: state.Upsert, Key: "e/new", Value: []byte("again"), MustNotExist: true}, true},
				{"upsert with the current etag", state.Op{Kind: state.Upsert, Key: "e/key", Value: []byte("v3"), ETag: current}, false},
			}
			for _, tt := range tests {
				err := s.Transact(waitCtx(t), []state.Op{tt.op})
				if got := errors.Is(err, state.ErrETagMismatch); got != tt.mismatch {
					t.Errorf("%s: got %v, want mismatch=%v", tt.name, err, tt.mismatch)
				}
			}
			if got := mustGet(t, s, "e/key"); string(got.Value) != "v3" {
				t.Errorf("e/key = %q, want v3: a failed write changed it", got.Value)
			}
			if got := mustGet(t, s, "e/new"); string(got.Value) != "n" {
				t.Errorf("e/new = %q, want n: the second create changed it", got.Value)
			}

			// A mismatch is the caller's problem: it is not retried and
			// leaves the breaker closed.
			_, st, counts := s.Pipeline().State()
			if st != "closed" || counts.TotalFailures != 0 {
				t.Errorf("breaker after mismatches = %s %+v, want closed with no failures", st, counts)
			}
		})
	}
}

// TestNonAtomicPartialFailure shows on real Redis what the event log's
// lag-by-one checkpoint exists for: a transaction with one stale ETag fails,
// and its other operations apply all the same. On the in-memory store none
// do.
func TestNonAtomicPartialFailure(t *testing.T) {
	t.Parallel()
	d := daprtest.Sidecar(t, daprtest.Options{Components: []daprtest.Component{memStore}})
	tests := []struct {
		name       string
		store      string
		atomic     bool
		wantBefore string // value of p/before and p/after after the transaction
	}{
		{"redis", daprtest.StateStore, false, "new"},
		{"in-memory", memStore.Name, true, "old"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := open(t, d, dapr.Config{StateStore: tt.store}).Store()
			if got := s.Capabilities(); got.Atomic != tt.atomic || got.Scan {
				t.Errorf("Capabilities() = %+v, want Atomic %v, Scan false", got, tt.atomic)
			}
			mustTransact(t, s, upsert("p/before", "old"), upsert("p/conflict", "v1"), upsert("p/after", "old"))
			stale := mustGet(t, s, "p/conflict").ETag
			mustTransact(t, s, upsert("p/conflict", "v2"))

			err := s.Transact(waitCtx(t), []state.Op{
				upsert("p/before", "new"),
				{Kind: state.Upsert, Key: "p/conflict", Value: []byte("lost"), ETag: stale},
				upsert("p/after", "new"),
				{Kind: state.Upsert, Key: "p/created", Value: []byte("new"), MustNotExist: true},
			})
			if !errors.Is(err, state.ErrETagMismatch) {
				t.Fatalf("Transact with a stale ETag = %v, want state.ErrETagMismatch", err)
			}
			t.Logf("error: %v", err)

			for key, want := range map[string]string{"p/before": tt.wantBefore, "p/after": tt.wantBefore, "p/conflict": "v2"} {
				if got := mustGet(t, s, key); string(got.Value) != want {
					t.Errorf("%s = %q after the failed transaction, want %q", key, got.Value, want)
				}
			}
			if got := mustGet(t, s, "p/created").Exists(); got == tt.atomic {
				t.Errorf("p/created exists = %v after the failed transaction, want %v", got, !tt.atomic)
			}
		})
	}
}

func TestBulkGetChunks(t *testing.T) {
	t.Parallel()
	d := daprtest.Sidecar(t, daprtest.Options{})
	const chunk, n = 100, 250
	s := open(t, d, dapr.Config{BulkGetChunk: chunk}).Store()

	var ops []state.Op
	var keys []string
	for i := range n {
		k := fmt.Sprintf("b/%04d", i)
		keys = append(keys, k)
		if i%5 != 0 { // every fifth key stays missing
			ops = append(ops, upsert(k, strconv.Itoa(i)))
		}
	}
	mustTransact(t, s, ops...)

	before := s.Calls()
	items, err := s.BulkGet(waitCtx(t), keys)
	if err != nil {
		t.Fatalf("BulkGet(%d keys): %v", n, err)
	}
	if got, want := s.Calls().BulkGet-before.BulkGet, uint64((n+chunk-1)/chunk); got != want {
		t.Errorf("BulkGet of %d keys made %d calls, want %d of at most %d keys", n, got, want, chunk)
	}
	if len(items) != n {
		t.Fatalf("BulkGet returned %d items, want %d", len(items), n)
	}
	for i, it := range items {
		wantExists := i%5 != 0
		if it.Key != keys[i] || it.Exists() != wantExists || (wantExists && string(it.Value) != strconv.Itoa(i)) {
			t.Errorf("item %d = %s exists=%v %q, want %s exists=%v %q", i, it.Key, it.Exists(), it.Value, keys[i], wantExists, strconv.Itoa(i))
		}
	}
}

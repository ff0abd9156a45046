package embedded

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/virtufin/websocketmanager/internal/state"
)

func openStore(t *testing.T, dir string, opts Options) *Store {
	t.Helper()
	s, err := Open(dir, opts)
	if err != nil {
		t.Fatalf("Open(%s, %+v): %v", dir, opts, err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

func upsert(key, value string) state.Op {
	return state.Op{Kind: state.Upsert, Key: key, Value: []byte(value)}
}

func mustTransact(t *testing.T, s state.Store, ops ...state.Op) {
	t.Helper()
	if err := s.Transact(t.Context(), ops); err != nil {
		t.Fatalf("Transact(%+v): %v", ops, err)
	}
}

func mustGet(t *testing.T, s state.Store, key string) state.Item {
	t.Helper()
	it, err := s.Get(t.Context(), key)
	if err != nil {
		t.Fatalf("Get(%s): %v", key, err)
	}
	if it.Key != key {
		t.Errorf("Get(%s) returned key %q", key, it.Key)
	}
	return it
}

func TestETagSemantics(t *testing.T) {
	tests := []struct {
		name    string
		present bool // key "k" holds "old" before the op
		op      func(etag string) state.Op
		wantErr error
		want    string // value of "k" afterwards; "" means absent
	}{
		{"unconditional upsert of a new key", false,
			func(string) state.Op { return upsert("k", "new") }, nil, "new"},
		{"unconditional upsert over a key", true,
			func(string) state.Op { return upsert("k", "new") }, nil, "new"},
		{"conditional upsert, matching etag", true,
			func(etag string) state.Op {
				return state.Op{Kind: state.Upsert, Key: "k", Value: []byte("new"), ETag: etag}
			}, nil, "new"},
		{"conditional upsert, stale etag", true,
			func(etag string) state.Op {
				return state.Op{Kind: state.Upsert, Key: "k", Value: []byte("new"), ETag: etag + "0"}
			}, state.ErrETagMismatch, "old"},
		{"conditional upsert of an absent key", false,
			func(string) state.Op { return state.Op{Kind: state.Upsert, Key: "k", Value: []byte("new"), ETag: "1"} }, state.ErrETagMismatch, ""},
		{"must not exist, absent", false,
			func(string) state.Op {
				return state.Op{Kind: state.Upsert, Key: "k", Value: []byte("new"), MustNotExist: true}
			}, nil, "new"},
		{"must not exist, present", true,
			func(string) state.Op {
				return state.Op{Kind: state.Upsert, Key: "k", Value: []byte("new"), MustNotExist: true}
			}, state.ErrETagMismatch, "old"},
		{"unconditional delete", true,
			func(string) state.Op { return state.Op{Kind: state.Delete, Key: "k"} }, nil, ""},
		{"unconditional delete of an absent key", false,
			func(string) state.Op { return state.Op{Kind: state.Delete, Key: "k"} }, nil, ""},
		{"conditional delete, matching etag", true,
			func(etag string) state.Op { return state.Op{Kind: state.Delete, Key: "k", ETag: etag} }, nil, ""},
		{"conditional delete, stale etag", true,
			func(etag string) state.Op { return state.Op{Kind: state.Delete, Key: "k", ETag: etag + "0"} }, state.ErrETagMismatch, "old"},
		{"empty key", false,
			func(string) state.Op { return upsert("", "new") }, state.ErrInvalidArgument, ""},
		{"unknown op kind", true,
			func(string) state.Op { return state.Op{Kind: 99, Key: "k"} }, state.ErrInvalidArgument, "old"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := openStore(t, t.TempDir(), Options{})
			var etag string
			if tt.present {
				mustTransact(t, s, upsert("k", "old"))
				etag = mustGet(t, s, "k").ETag
			}

			err := s.Transact(t.Context(), []state.Op{tt.op(etag)})
			if tt.wantErr == nil && err != nil {
				t.Fatalf("Transact: %v", err)
			}
			if tt.wantErr != nil && !errors.Is(err, tt.wantErr) {
				t.Fatalf("Transact: got %v, want an error wrapping %v", err, tt.wantErr)
			}

			it := mustGet(t, s, "k")
			if got := string(it.Value); got != tt.want || it.Exists() != (tt.want != "") {
				t.Errorf("k = %q (exists %v), want %q", got, it.Exists(), tt.want)
			}
			if tt.want == "" && it.ETag != "" {
				t.Errorf("absent key has etag %q, want empty", it.ETag)
			}
			if tt.want == "new" && it.ETag == etag {
				t.Errorf("etag stayed %q after a write", it.ETag)
			}
			if tt.want == "old" && it.ETag != etag {
				t.Errorf("etag changed from %q to %q though nothing was written", etag, it.ETag)
			}
		})
	}
}

func TestETagChangesOnEveryWrite(t *testing.T) {
	s := openStore(t, t.TempDir(), Options{})
	seen := map[string]bool{}
	for i := range 5 {
		// The same value each time: the etag is a version, not a hash.
		mustTransact(t, s, upsert("k", "same"))
		etag := mustGet(t, s, "k").ETag
		if etag == "" || seen[etag] {
			t.Fatalf("write %d gave etag %q, want a new non-empty one (seen %v)", i, etag, seen)
		}
		seen[etag] = true
	}
}

// TestTransactIsAtomic checks that one failed condition anywhere in a
// transaction leaves every key as it was.
func TestTransactIsAtomic(t *testing.T) {
	tests := []struct {
		name string
		bad  state.Op
	}{
		{"stale etag last", state.Op{Kind: state.Upsert, Key: "c", Value: []byte("x"), ETag: "stale"}},
		{"existing key must not exist", state.Op{Kind: state.Upsert, Key: "a", Value: []byte("x"), MustNotExist: true}},
		{"stale delete", state.Op{Kind: state.Delete, Key: "b", ETag: "stale"}},
		{"empty key", upsert("", "x")},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := openStore(t, t.TempDir(), Options{})
			mustTransact(t, s, upsert("a", "a0"), upsert("b", "b0"))
			before, err := s.BulkGet(t.Context(), []string{"a", "b", "c", "d"})
			if err != nil {
				t.Fatal(err)
			}

			ops := []state.Op{
				upsert("a", "a1"),
				{Kind: state.Delete, Key: "b"},
				upsert("d", "d1"),
				tt.bad,
			}
			if err := s.Transact(t.Context(), ops); err == nil {
				t.Fatal("Transact with a failing operation succeeded")
			}

			after, err := s.BulkGet(t.Context(), []string{"a", "b", "c", "d"})
			if err != nil {
				t.Fatal(err)
			}
			for i := range before {
				if string(after[i].Value) != string(before[i].Value) || after[i].ETag != before[i].ETag || after[i].Exists() != before[i].Exists() {
					t.Errorf("%s = %q (etag %q), want %q (etag %q) as before the failed transaction",
						before[i].Key, after[i].Value, after[i].ETag, before[i].Value, before[i].ETag)
				}
			}
		})
	}
}

func TestTransactOpsApplyInOrder(t *testing.T) {
	s := openStore(t, t.TempDir(), Options{})
	mustTransact(t, s, upsert("k", "1"), upsert("k", "2"), state.Op{Kind: state.Delete, Key: "gone"}, upsert("gone", "back"))
	if got := string(mustGet(t, s, "k").Value); got != "2" {
		t.Errorf("k = %q, want the later write, 2", got)
	}
	if got := string(mustGet(t, s, "gone").Value); got != "back" {
		t.Errorf("gone = %q, want back", got)
	}
}

func TestEmptyValueExists(t *testing.T) {
	s := openStore(t, t.TempDir(), Options{})
	mustTransact(t, s, state.Op{Kind: state.Upsert, Key: "empty", Value: []byte{}})
	it := mustGet(t, s, "empty")
	if !it.Exists() || len(it.Value) != 0 {
		t.Errorf("empty value reads as %q, exists %v; want an existing empty value", it.Value, it.Exists())
	}
}

func TestBulkGetOrderAndMissing(t *testing.T) {
	s := openStore(t, t.TempDir(), Options{})
	mustTransact(t, s, upsert("b", "vb"), upsert("a", "va"), upsert("c", "vc"))

	keys := []string{"c", "missing", "a", "a", "zzz", "b"}
	items, err := s.BulkGet(t.Context(), keys)
	if err != nil {
		t.Fatalf("BulkGet: %v", err)
	}
	if len(items) != len(keys) {
		t.Fatalf("BulkGet returned %d items for %d keys", len(items), len(keys))
	}
	want := []string{"vc", "", "va", "va", "", "vb"}
	for i, it := range items {
		if it.Key != keys[i] {
			t.Errorf("item %d has key %q, want %q", i, it.Key, keys[i])
		}
		if string(it.Value) != want[i] || it.Exists() != (want[i] != "") {
			t.Errorf("item %d (%s) = %q exists %v, want %q", i, keys[i], it.Value, it.Exists(), want[i])
		}
		if (it.ETag == "") == it.Exists() {
			t.Errorf("item %d (%s) has etag %q, want one exactly when the key exists", i, keys[i], it.ETag)
		}
	}

	empty, err := s.BulkGet(t.Context(), nil)
	if err != nil || len(empty) != 0 {
		t.Errorf("BulkGet(nil) = %v, %v, want no items", empty, err)
	}
}

func TestValuesAreCopies(t *testing.T) {
	s := openStore(t, t.TempDir(), Options{})
	value := []byte("original")
	mustTransact(t, s, state.Op{Kind: state.Upsert, Key: "k", Value: value})
	value[0] = 'X'

	it := mustGet(t, s, "k")
	if string(it.Value) != "original" {
		t.Fatalf("k = %q after the caller changed its slice, want original", it.Value)
	}
	it.Value[0] = 'Y'
	if got := string(mustGet(t, s, "k").Value); got != "original" {
		t.Errorf("k = %q after the reader changed its copy, want original", got)
	}
}

func TestScanByPrefix(t *testing.T) {
	s := openStore(t, t.TempDir(), Options{})
	for _, k := range []string{"p/b", "p/a", "p/c/1", "q/a", "p", "o/z", "p0"} {
		mustTransact(t, s, upsert(k, "v-"+k))
	}

	var got []string
	err := s.Scan(t.Context(), "p/", func(it state.Item) error {
		if string(it.Value) != "v-"+it.Key || it.ETag == "" {
			t.Errorf("Scan item %s = %q etag %q", it.Key, it.Value, it.ETag)
		}
		got = append(got, it.Key)
		return nil
	})
	if err != nil {
		t.Fatalf("Scan: %v", err)
	}
	if want := []string{"p/a", "p/b", "p/c/1"}; !slices.Equal(got, want) {
		t.Errorf("Scan(p/) = %v, want %v in byte order", got, want)
	}

	var none []string
	if err := s.Scan(t.Context(), "nothing/", func(it state.Item) error { none = append(none, it.Key); return nil }); err != nil || none != nil {
		t.Errorf("Scan of an unused prefix = %v, %v, want nothing", none, err)
	}

	// An error from fn ends the scan and is returned.
	stop := errors.New("stop")
	var calls int
	err = s.Scan(t.Context(), "", func(state.Item) error { calls++; return stop })
	if !errors.Is(err, stop) || calls != 1 {
		t.Errorf("Scan with a failing fn = %v after %d calls, want %v after 1", err, calls, stop)
	}

	if caps := s.Capabilities(); !caps.Atomic || !caps.Scan {
		t.Errorf("Capabilities = %+v, want atomic and scan", caps)
	}
}

func TestScanRange(t *testing.T) {
	s := openStore(t, t.TempDir(), Options{})
	for _, k := range []string{"e/001", "e/002", "e/003", "e/004", "f/001", "d/009"} {
		mustTransact(t, s, upsert(k, "v-"+k))
	}

	var got []string
	err := s.ScanRange(t.Context(), "e/002", "e/004", func(it state.Item) error {
		if string(it.Value) != "v-"+it.Key || it.ETag == "" {
			t.Errorf("ScanRange item %s = %q etag %q", it.Key, it.Value, it.ETag)
		}
		got = append(got, it.Key)
		return nil
	})
	if err != nil {
		t.Fatalf("ScanRange: %v", err)
	}
	if want := []string{"e/002", "e/003"}; !slices.Equal(got, want) {
		t.Errorf("ScanRange(e/002, e/004) = %v, want %v: start included, end excluded", got, want)
	}

	var none []string
	if err := s.ScanRange(t.Context(), "e/005", "e/999", func(it state.Item) error { none = append(none, it.Key); return nil }); err != nil || none != nil {
		t.Errorf("ScanRange past the last key = %v, %v, want nothing", none, err)
	}

	stop := errors.New("stop")
	var calls int
	err = s.ScanRange(t.Context(), "", "z", func(state.Item) error { calls++; return stop })
	if !errors.Is(err, stop) || calls != 1 {
		t.Errorf("ScanRange with a failing fn = %v after %d calls, want stop after 1", err, calls)
	}
}

func TestCanceledContext(t *testing.T) {
	s := openStore(t, t.TempDir(), Options{})
	ctx, cancel := context.WithCancel(t.Context())
	cancel()
	if _, err := s.Get(ctx, "k"); !errors.Is(err, context.Canceled) {
		t.Errorf("Get with a canceled context: got %v, want context.Canceled", err)
	}
	if err := s.Transact(ctx, []state.Op{upsert("k", "v")}); !errors.Is(err, context.Canceled) {
		t.Errorf("Transact with a canceled context: got %v, want context.Canceled", err)
	}
	if it := mustGet(t, s, "k"); it.Exists() {
		t.Errorf("Transact with a canceled context wrote k = %q", it.Value)
	}
}

func TestClosedStoreFails(t *testing.T) {
	s := openStore(t, t.TempDir(), Options{})
	mustTransact(t, s, upsert("k", "v"))
	if err := s.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	ctx := t.Context()
	calls := map[string]func() error{
		"Get":      func() error { _, err := s.Get(ctx, "k"); return err },
		"BulkGet":  func() error { _, err := s.BulkGet(ctx, []string{"k"}); return err },
		"Transact": func() error { return s.Transact(ctx, []state.Op{upsert("k", "v2")}) },
		"Scan":     func() error { return s.Scan(ctx, "", func(state.Item) error { return nil }) },
	}
	for _, name := range slices.Sorted(mapKeys(calls)) {
		if err := calls[name](); !errors.Is(err, state.ErrClosed) {
			t.Errorf("%s after Close: got %v, want state.ErrClosed", name, err)
		}
	}
	if err := s.Close(); err != nil {
		t.Errorf("second Close: %v", err)
	}
}

func mapKeys[V any](m map[string]V) func(func(string) bool) {
	return func(yield func(string) bool) {
		for k := range m {
			if !yield(k) {
				return
			}
		}
	}
}

func TestReopenKeepsData(t *testing.T) {
	dir := t.TempDir()
	s := openStore(t, dir, Options{})
	mustTransact(t, s, upsert("k", "v"))
	etag := mustGet(t, s, "k").ETag
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}

	again := openStore(t, dir, Options{})
	it := mustGet(t, again, "k")
	if string(it.Value) != "v" || it.ETag != etag {
		t.Errorf("after reopen k = %q etag %q, want v etag %q", it.Value, it.ETag, etag)
	}
	if want := filepath.Join(dir, FileName); again.Path() != want {
		t.Errorf("Path() = %q, want %q", again.Path(), want)
	}
	// Versions keep counting up across a reopen, so an etag read before it
	// can never match a later write.
	mustTransact(t, again, upsert("k", "v2"))
	if n, m := etagNumber(t, etag), etagNumber(t, mustGet(t, again, "k").ETag); m <= n {
		t.Errorf("etag after reopen and write = %d, want more than %d", m, n)
	}
}

func etagNumber(t *testing.T, etag string) uint64 {
	t.Helper()
	n, err := strconv.ParseUint(etag, 10, 64)
	if err != nil {
		t.Fatalf("etag %q is not a decimal version: %v", etag, err)
	}
	return n
}

func TestSecondWriterLocked(t *testing.T) {
	dir := t.TempDir()
	openStore(t, dir, Options{})

	start := time.Now()
	second, err := Open(dir, Options{LockTimeout: 100 * time.Millisecond})
	elapsed := time.Since(start)
	if err == nil {
		second.Close()
		t.Fatal("second writer opened a locked store")
	}
	if !errors.Is(err, ErrLocked) {
		t.Errorf("second writer: got %v, want ErrLocked", err)
	}
	// bbolt retries the lock every 50ms and gives up one retry before the
	// timeout, so only an upper bound holds.
	if elapsed > 5*time.Second {
		t.Errorf("second writer gave up after %v, want about the 100ms lock timeout", elapsed)
	}

	// A reader waits for the writer too.
	if r, err := Open(dir, Options{ReadOnly: true, LockTimeout: 50 * time.Millisecond}); !errors.Is(err, ErrLocked) {
		if r != nil {
			r.Close()
		}
		t.Errorf("reader while a writer holds the file: got %v, want ErrLocked", err)
	}
}

func TestReadOnlyOpen(t *testing.T) {
	dir := t.TempDir()
	w := openStore(t, dir, Options{})
	mustTransact(t, w, upsert("k", "v"))
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}

	// Several readers share the file.
	r1 := openStore(t, dir, Options{ReadOnly: true})
	r2 := openStore(t, dir, Options{ReadOnly: true})
	for i, r := range []*Store{r1, r2} {
		if got := string(mustGet(t, r, "k").Value); got != "v" {
			t.Errorf("reader %d: k = %q, want v", i+1, got)
		}
		if err := r.Transact(t.Context(), []state.Op{upsert("k", "x")}); !errors.Is(err, state.ErrInvalidArgument) {
			t.Errorf("reader %d Transact: got %v, want state.ErrInvalidArgument", i+1, err)
		}
	}

	// A writer waits while readers hold the file.
	if s, err := Open(dir, Options{LockTimeout: 50 * time.Millisecond}); !errors.Is(err, ErrLocked) {
		if s != nil {
			s.Close()
		}
		t.Errorf("writer while readers hold the file: got %v, want ErrLocked", err)
	}
	r1.Close()
	r2.Close()
	s := openStore(t, dir, Options{LockTimeout: time.Second})
	if got := string(mustGet(t, s, "k").Value); got != "v" {
		t.Errorf("writer after the readers closed: k = %q, want v", got)
	}
}

func TestReadOnlyMissingFile(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "none")
	if s, err := Open(dir, Options{ReadOnly: true}); err == nil {
		s.Close()
		t.Fatal("read-only open of a missing store succeeded")
	}
	if _, err := os.Stat(dir); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("read-only open created %s: %v", dir, err)
	}
}

func TestOpenCreatesDataDir(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "a", "b")
	s := openStore(t, dir, Options{})
	mustTransact(t, s, upsert("k", "v"))
	if _, err := os.Stat(filepath.Join(dir, FileName)); err != nil {
		t.Errorf("store file: %v", err)
	}
}

// TestConcurrentCompareAndSwap increments one counter from many goroutines
// with ETag compare-and-swap: every increment must count exactly once.
func TestConcurrentCompareAndSwap(t *testing.T) {
	s := openStore(t, t.TempDir(), Options{NoSync: true})
	const goroutines, each = 8, 25
	var wg sync.WaitGroup
	errs := make(chan error, goroutines)
	for g := range goroutines {
		wg.Go(func() {
			for i := 0; i < each; i++ {
				if err := increment(t.Context(), s, "counter"); err != nil {
					errs <- fmt.Errorf("goroutine %d increment %d: %w", g, i, err)
					return
				}
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	if got := string(mustGet(t, s, "counter").Value); got != strconv.Itoa(goroutines*each) {
		t.Errorf("counter = %s, want %d", got, goroutines*each)
	}
}

// increment adds one to a decimal counter, retrying on an ETag conflict up
// to a bound.
func increment(ctx context.Context, s state.Store, key string) error {
	for range 10_000 {
		it, err := s.Get(ctx, key)
		if err != nil {
			return err
		}
		n := 0
		if it.Exists() {
			if n, err = strconv.Atoi(string(it.Value)); err != nil {
				return err
			}
		}
		op := state.Op{Kind: state.Upsert, Key: key, Value: []byte(strconv.Itoa(n + 1)), ETag: it.ETag, MustNotExist: !it.Exists()}
		err = s.Transact(ctx, []state.Op{op})
		if !errors.Is(err, state.ErrETagMismatch) {
			return err
		}
	}
	return errors.New("no compare-and-swap succeeded in 10000 tries")
}

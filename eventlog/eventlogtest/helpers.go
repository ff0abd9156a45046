package eventlogtest

import (
	"context"
	"encoding/json"
	"fmt"
	"reflect"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/cloudevents/sdk-go/v2/event"

	"github.com/virtufin/websocketmanager/eventlog"
	"github.com/virtufin/websocketmanager/internal/state"
	"github.com/virtufin/websocketmanager/schemas"
)

// waitTimeout bounds every wait of the suite. Appends on the slowest backend
// take milliseconds, so a wait that runs out is a hang, not a slow store.
const waitTimeout = 10 * time.Second

// pollInterval is how often eventually checks its condition.
const pollInterval = 2 * time.Millisecond

// eventually polls cond until it holds, and fails the test when waitTimeout
// passes first.
func eventually(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(waitTimeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for %s", waitTimeout, what)
		}
		time.Sleep(pollInterval)
	}
}

// waitCtx returns a context that ends with the test or after waitTimeout.
func waitCtx(t *testing.T) context.Context {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), waitTimeout)
	t.Cleanup(cancel)
	return ctx
}

// eventKey is the store key of an event. It repeats the log's key layout,
// which eventlog does not export; checkEventKey fails the suite when the two
// differ.
func eventKey(stream string, seq uint64) string {
	return eventlog.KeyPrefix + "streams/" + stream + "/events/" + schemas.FormatSequence(seq)
}

// checkEventKey verifies that eventKey names a stored event of the stream.
func checkEventKey(t *testing.T, store state.Store, stream string, seq uint64) {
	t.Helper()
	it, err := store.Get(waitCtx(t), eventKey(stream, seq))
	if err != nil {
		t.Fatalf("get %s: %v", eventKey(stream, seq), err)
	}
	if !it.Exists() {
		t.Fatalf("no value at %s: the suite's copy of the event key layout no longer matches eventlog", eventKey(stream, seq))
	}
}

// connected builds a valid connection.connected event of the stream's
// instance and incarnation, with time at, or now when at is zero.
func connected(t *testing.T, stream, connID string, at time.Time) *event.Event {
	t.Helper()
	instance, incarnation := eventlog.SplitStreamName(stream)
	if at.IsZero() {
		at = time.Now()
	}
	ev, err := schemas.NewConnected(schemas.Envelope{InstanceID: instance, Time: at}, schemas.Connected{
		ConnectionID: connID,
		InstanceID:   instance,
		Incarnation:  incarnation,
		UserID:       "user-1",
		RemoteAddr:   "127.0.0.1:40000",
		UserAgent:    "eventlogtest",
		ConnectedAt:  at.UTC(),
	})
	if err != nil {
		t.Fatalf("build event: %v", err)
	}
	return ev
}

// batch builds n connected events of the stream, their connection ids
// numbered from first.
func batch(t *testing.T, stream string, first, n int) []*event.Event {
	t.Helper()
	instance, incarnation := eventlog.SplitStreamName(stream)
	out := make([]*event.Event, n)
	for i := range out {
		out[i] = connected(t, stream, fmt.Sprintf("%s-%s-%d", instance, incarnation, first+i), time.Time{})
	}
	return out
}

// newWriter opens a writer and closes it when the test ends.
func newWriter(t *testing.T, log *eventlog.Log, stream string) *eventlog.Writer {
	t.Helper()
	w, err := log.NewWriter(waitCtx(t), stream)
	if err != nil {
		t.Fatalf("NewWriter(%q): %v", stream, err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), waitTimeout)
		defer cancel()
		w.Close(ctx)
	})
	return w
}

// closeWriter closes a writer and fails the test if the queue does not drain.
func closeWriter(t *testing.T, w *eventlog.Writer) {
	t.Helper()
	if err := w.Close(waitCtx(t)); err != nil {
		t.Fatalf("close writer of %s: %v", w.Stream(), err)
	}
}

// appendEvents appends in one call and fails the test on an error.
func appendEvents(t *testing.T, w *eventlog.Writer, events ...*event.Event) []eventlog.Position {
	t.Helper()
	pos, err := w.Append(waitCtx(t), events...)
	if err != nil {
		t.Fatalf("append %d events to %s: %v", len(events), w.Stream(), err)
	}
	if len(pos) != len(events) {
		t.Fatalf("append %d events to %s returned %d positions", len(events), w.Stream(), len(pos))
	}
	return pos
}

// readAll reads a whole stream and fails the test on an error.
func readAll(t *testing.T, log *eventlog.Log, stream string) []eventlog.Record {
	t.Helper()
	recs, err := log.Read(waitCtx(t), stream, 1, 1<<20)
	if err != nil {
		t.Fatalf("read %s: %v", stream, err)
	}
	return recs
}

// canonical decodes an event's JSON form, so events compare equal whatever
// order their attributes were written in.
func canonical(t *testing.T, ev *event.Event) map[string]any {
	t.Helper()
	raw, err := ev.MarshalJSON()
	if err != nil {
		t.Fatalf("marshal event %s: %v", ev.ID(), err)
	}
	var m map[string]any
	if err := json.Unmarshal(raw, &m); err != nil {
		t.Fatalf("decode event %s: %v", ev.ID(), err)
	}
	return m
}

// checkRecords compares records read from a stream with the events appended
// to it, starting at sequence first.
func checkRecords(t *testing.T, got []eventlog.Record, stream string, first uint64, want []*event.Event) {
	t.Helper()
	if len(got) != len(want) {
		t.Fatalf("read %d records of %s, want %d", len(got), stream, len(want))
	}
	for i, rec := range got {
		seq := first + uint64(i)
		if rec.Stream != stream || rec.Seq != seq {
			t.Errorf("record %d is at %s, want %s", i, rec.Position(), eventlog.Position{Stream: stream, Seq: seq})
		}
		if rec.Event.ID() != want[i].ID() {
			t.Errorf("record at %s has id %s, want %s", rec.Position(), rec.Event.ID(), want[i].ID())
			continue
		}
		if g, w := canonical(t, rec.Event), canonical(t, want[i]); !reflect.DeepEqual(g, w) {
			t.Errorf("record at %s reads back as\n  %v\nwant\n  %v", rec.Position(), g, w)
		}
	}
}

// positions lists the positions first..last of a stream.
func positions(stream string, first, last uint64) []eventlog.Position {
	var out []eventlog.Position
	for s := first; s <= last; s++ {
		out = append(out, eventlog.Position{Stream: stream, Seq: s})
	}
	return out
}

// streamInfo returns the StreamInfo of one stream.
func streamInfo(t *testing.T, log *eventlog.Log, stream string) eventlog.StreamInfo {
	t.Helper()
	streams, err := log.Streams(waitCtx(t))
	if err != nil {
		t.Fatalf("Streams: %v", err)
	}
	for _, s := range streams {
		if s.Name == stream {
			return s
		}
	}
	t.Fatalf("Streams lists no %s: %v", stream, streams)
	return eventlog.StreamInfo{}
}

// countingStore counts the transactions that reach a store and can hold them
// back until released.
type countingStore struct {
	state.Store
	transacts atomic.Int64

	mu   sync.Mutex
	gate chan struct{} // nil when transactions pass at once
}

func (s *countingStore) Transact(ctx context.Context, ops []state.Op) error {
	s.transacts.Add(1)
	s.mu.Lock()
	gate := s.gate
	s.mu.Unlock()
	if gate != nil {
		select {
		case <-gate:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	return s.Store.Transact(ctx, ops)
}

// hold makes transactions wait until release is called.
func (s *countingStore) hold() {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.gate = make(chan struct{})
}

func (s *countingStore) release() {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.gate != nil {
		close(s.gate)
		s.gate = nil
	}
}

// markProjector replaces a real projector in the suite. It writes one marker
// key per record, named after its position, whose value is the event id. It
// can be set to fail its next calls or to add a write with a stale ETag to
// them.
type markProjector struct {
	mu        sync.Mutex
	staleKey  string // key whose current ETag differs from staleETag
	staleETag string
	conflicts int // next calls that add a write conditional on staleETag
	failures  int // next calls that return an error
	calls     int
	seen      []eventlog.Position
}

func markKey(p eventlog.Position) string {
	return "eventlogtest/marks/" + p.Stream + "/" + schemas.FormatSequence(p.Seq)
}

func (p *markProjector) Mutations(_ context.Context, _ state.Store, records []eventlog.Record) ([]state.Op, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.calls++
	for _, r := range records {
		p.seen = append(p.seen, r.Position())
	}
	if p.failures > 0 {
		p.failures--
		return nil, fmt.Errorf("eventlogtest: projector failure for %d records", len(records))
	}
	ops := make([]state.Op, 0, len(records)+1)
	for _, r := range records {
		ops = append(ops, state.Op{Kind: state.Upsert, Key: markKey(r.Position()), Value: []byte(r.Event.ID())})
	}
	if p.conflicts > 0 {
		p.conflicts--
		ops = append(ops, state.Op{Kind: state.Upsert, Key: p.staleKey, Value: []byte("stale"), ETag: p.staleETag})
	}
	return ops, nil
}

func (p *markProjector) stats() (calls int, seen []eventlog.Position) {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.calls, append([]eventlog.Position(nil), p.seen...)
}

// newStaleETag writes key twice and returns the ETag of the first write,
// which no longer matches on any backend.
func newStaleETag(t *testing.T, store state.Store, key string) string {
	t.Helper()
	ctx := waitCtx(t)
	if err := store.Transact(ctx, []state.Op{{Kind: state.Upsert, Key: key, Value: []byte("v1")}}); err != nil {
		t.Fatalf("write %s: %v", key, err)
	}
	first, err := store.Get(ctx, key)
	if err != nil {
		t.Fatalf("get %s: %v", key, err)
	}
	if err := store.Transact(ctx, []state.Op{{Kind: state.Upsert, Key: key, Value: []byte("v2"), ETag: first.ETag}}); err != nil {
		t.Fatalf("rewrite %s: %v", key, err)
	}
	return first.ETag
}

// checkMarks verifies that the projector wrote a marker for every position.
func checkMarks(t *testing.T, store state.Store, want []eventlog.Position) {
	t.Helper()
	keys := make([]string, len(want))
	for i, p := range want {
		keys[i] = markKey(p)
	}
	items, err := store.BulkGet(waitCtx(t), keys)
	if err != nil {
		t.Fatalf("read marks: %v", err)
	}
	for i, it := range items {
		if !it.Exists() {
			t.Errorf("no view write for %s", want[i])
		}
	}
}

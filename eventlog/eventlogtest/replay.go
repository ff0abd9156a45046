package eventlogtest

import (
	"context"
	"encoding/base64"
	"errors"
	"maps"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/virtufin/websocketmanager/eventlog"
	"github.com/virtufin/websocketmanager/internal/state"
)

// mergeFixture appends events with chosen times to three streams and returns
// the order Replay must deliver them in. Stream pod-a has an event older than
// its predecessor, and several events share a time, so the order tests the
// tie-breaks and that a stream's own order always wins over time.
func mergeFixture(t *testing.T, store state.Store) (*eventlog.Log, []eventlog.Position) {
	t.Helper()
	log := eventlog.Open(store, eventlog.Options{})
	base := time.Date(2025, 3, 1, 12, 0, 0, 0, time.UTC)
	at := func(s int) time.Time { return base.Add(time.Duration(s) * time.Second) }
	fixture := []struct {
		stream string
		times  []time.Time
	}{
		{"pod-a/inc-1", []time.Time{at(3), at(1), at(5)}},
		{"pod-b/inc-1", []time.Time{at(1), at(3), at(4)}},
		{"pod-c/inc-1", []time.Time{at(2), at(3)}},
	}
	for _, f := range fixture {
		w := newWriter(t, log, f.stream)
		for i, ts := range f.times {
			instance, incarnation := eventlog.SplitStreamName(f.stream)
			appendEvents(t, w, connected(t, f.stream, instance+"-"+incarnation+"-"+string(rune('a'+i)), ts))
		}
		closeWriter(t, w)
	}

	p := func(stream string, seq uint64) eventlog.Position { return eventlog.Position{Stream: stream, Seq: seq} }
	want := []eventlog.Position{
		p("pod-b/inc-1", 1), // t1
		p("pod-c/inc-1", 1), // t2
		p("pod-a/inc-1", 1), // t3, ties with b2 and c2, and pod-a sorts first
		p("pod-a/inc-1", 2), // t1, but only after a1
		p("pod-b/inc-1", 2), // t3
		p("pod-c/inc-1", 2), // t3
		p("pod-b/inc-1", 3), // t4
		p("pod-a/inc-1", 3), // t5
	}
	return log, want
}

// replayPositions replays from a cursor and returns what was delivered.
func replayPositions(t *testing.T, log *eventlog.Log, from eventlog.Cursor) ([]eventlog.Position, eventlog.Cursor) {
	t.Helper()
	var got []eventlog.Position
	cur, err := log.Replay(waitCtx(t), from, func(r eventlog.Record) error {
		got = append(got, r.Position())
		return nil
	})
	if err != nil {
		t.Fatalf("Replay from %v: %v", from, err)
	}
	return got, cur
}

// cursorAfter returns the cursor past the given positions.
func cursorAfter(delivered []eventlog.Position) eventlog.Cursor {
	c := eventlog.Cursor{}
	for _, p := range delivered {
		c.Advance(p)
	}
	return c
}

func testReplayMergeOrder(t *testing.T, open Factory) {
	b := open(t)
	log, want := mergeFixture(t, b.Store)

	got, cur := replayPositions(t, log, nil)
	if !slices.Equal(got, want) {
		t.Errorf("Replay order:\n got %v\nwant %v", got, want)
	}
	if wantCur := cursorAfter(want); !maps.Equal(cur, wantCur) {
		t.Errorf("Replay cursor = %v, want %v", cur, wantCur)
	}

	// The order is the same on every pass.
	if again, _ := replayPositions(t, log, eventlog.Cursor{}); !slices.Equal(again, got) {
		t.Errorf("second Replay order %v differs from the first %v", again, got)
	}
}

func testReplayFromCursor(t *testing.T, open Factory) {
	b := open(t)
	log, want := mergeFixture(t, b.Store)

	for k := range len(want) + 1 {
		from := cursorAfter(want[:k])
		// Resume through the string form, as a client does.
		parsed, err := eventlog.ParseCursor(from.String())
		if err != nil {
			t.Fatalf("ParseCursor(%q): %v", from.String(), err)
		}
		got, cur := replayPositions(t, log, parsed)
		if !slices.Equal(got, want[k:]) {
			t.Errorf("Replay after %d events:\n got %v\nwant %v", k, got, want[k:])
		}
		if wantCur := cursorAfter(want); !maps.Equal(cur, wantCur) {
			t.Errorf("Replay after %d events ends at cursor %v, want %v", k, cur, wantCur)
		}
		// Replay works on a copy: the caller's cursor is unchanged.
		if !maps.Equal(parsed, from) {
			t.Errorf("Replay changed the caller's cursor to %v, want %v", parsed, from)
		}
	}
}

func testReplayStop(t *testing.T, open Factory) {
	b := open(t)
	log, want := mergeFixture(t, b.Store)

	// ErrStop on the third event: it does not count as delivered.
	var calls int
	cur, err := log.Replay(waitCtx(t), nil, func(eventlog.Record) error {
		calls++
		if calls == 3 {
			return eventlog.ErrStop
		}
		return nil
	})
	if err != nil {
		t.Fatalf("Replay stopped with ErrStop returned %v, want nil", err)
	}
	if calls != 3 {
		t.Errorf("callback ran %d times after ErrStop on the third, want 3", calls)
	}
	if wantCur := cursorAfter(want[:2]); !maps.Equal(cur, wantCur) {
		t.Errorf("cursor after ErrStop = %v, want %v", cur, wantCur)
	}
	if rest, _ := replayPositions(t, log, cur); !slices.Equal(rest, want[2:]) {
		t.Errorf("Replay after ErrStop:\n got %v\nwant %v", rest, want[2:])
	}

	// Any other error ends the pass and is returned as it is.
	boom := errors.New("callback failed")
	_, err = log.Replay(waitCtx(t), nil, func(eventlog.Record) error { return boom })
	if !errors.Is(err, boom) {
		t.Errorf("Replay with a failing callback returned %v, want %v", err, boom)
	}
}

// follower runs Follow in a goroutine and collects what it delivers.
type follower struct {
	mu     sync.Mutex
	got    []eventlog.Position
	cancel context.CancelFunc
	done   chan struct{}
	cur    eventlog.Cursor
	err    error
}

// startFollow follows log from a cursor; stopAfter > 0 makes the callback
// return ErrStop once that many events arrived.
func startFollow(t *testing.T, log *eventlog.Log, from eventlog.Cursor, stopAfter int) *follower {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), waitTimeout)
	f := &follower{cancel: cancel, done: make(chan struct{})}
	go func() {
		defer close(f.done)
		cur, err := log.Follow(ctx, from, func(r eventlog.Record) error {
			f.mu.Lock()
			defer f.mu.Unlock()
			f.got = append(f.got, r.Position())
			if stopAfter > 0 && len(f.got) == stopAfter {
				return eventlog.ErrStop
			}
			return nil
		})
		f.cur, f.err = cur, err
	}()
	t.Cleanup(func() {
		cancel()
		<-f.done
	})
	return f
}

func (f *follower) delivered() []eventlog.Position {
	f.mu.Lock()
	defer f.mu.Unlock()
	return slices.Clone(f.got)
}

func (f *follower) waitFor(t *testing.T, n int) {
	t.Helper()
	eventually(t, "Follow to deliver events", func() bool { return len(f.delivered()) >= n })
}

// wait waits for Follow to return.
func (f *follower) wait(t *testing.T) {
	t.Helper()
	eventually(t, "Follow to return", func() bool {
		select {
		case <-f.done:
			return true
		default:
			return false
		}
	})
}

func testFollowSameLog(t *testing.T, open Factory) {
	b := open(t)
	// An hour-long poll interval leaves only the wake-up from this Log's
	// own commits to deliver new events in time.
	log := eventlog.Open(b.Store, eventlog.Options{PollInterval: time.Hour})
	const stream = "pod-a/inc-1"
	w := newWriter(t, log, stream)
	appendEvents(t, w, batch(t, stream, 1, 2)...)
	_, start := replayPositions(t, log, nil)

	f := startFollow(t, log, start, 0)
	appendEvents(t, w, batch(t, stream, 3, 1)...)
	f.waitFor(t, 1)
	for i := range 4 {
		appendEvents(t, w, batch(t, stream, 4+2*i, 2)...)
	}
	f.waitFor(t, 9)

	if got, want := f.delivered(), positions(stream, 3, 11); !slices.Equal(got, want) {
		t.Errorf("Follow delivered\n %v\nwant\n %v", got, want)
	}

	f.cancel()
	f.wait(t)
	if f.err != nil {
		t.Errorf("Follow returned %v after its context was canceled, want nil", f.err)
	}
	if f.cur[stream] != 11 {
		t.Errorf("Follow ended at cursor %v, want %s at 11", f.cur, stream)
	}
}

// testFollowCancelDuringPass cancels the context from inside the callback,
// so it ends while Follow is delivering rather than while it waits.
func testFollowCancelDuringPass(t *testing.T, open Factory) {
	b := open(t)
	log := eventlog.Open(b.Store, eventlog.Options{})
	const stream = "pod-a/inc-1"
	w := newWriter(t, log, stream)
	appendEvents(t, w, batch(t, stream, 1, 5)...)

	ctx, cancel := context.WithCancel(waitCtx(t))
	defer cancel()
	var calls int
	cur, err := log.Follow(ctx, nil, func(eventlog.Record) error {
		calls++
		cancel()
		return nil
	})
	if err != nil {
		t.Errorf("Follow canceled during a pass returned %v, want nil", err)
	}
	if calls != 1 {
		t.Errorf("callback ran %d times after the first canceled the context, want 1", calls)
	}
	if cur[stream] != 1 {
		t.Errorf("Follow ended at cursor %v, want %s at 1", cur, stream)
	}
}

func testFollowOtherLog(t *testing.T, open Factory) {
	b := open(t)
	log := eventlog.Open(b.Store, eventlog.Options{})
	streams := []string{"pod-a/inc-1", "pod-b/inc-1"}
	writers := []*eventlog.Writer{newWriter(t, log, streams[0]), newWriter(t, log, streams[1])}

	// A second Log acts as another process, so it finds new events only by
	// polling.
	other := eventlog.Open(b.Store, eventlog.Options{PollInterval: 5 * time.Millisecond})
	const each = 6
	f := startFollow(t, other, nil, 2*each)
	for i := range each {
		for j, w := range writers {
			appendEvents(t, w, batch(t, streams[j], i, 1)...)
		}
	}
	f.wait(t)
	if f.err != nil {
		t.Fatalf("Follow ended by ErrStop returned %v, want nil", f.err)
	}

	got := f.delivered()
	if len(got) != 2*each {
		t.Fatalf("Follow delivered %d events, want %d", len(got), 2*each)
	}
	for _, stream := range streams {
		var seqs []uint64
		for _, p := range got {
			if p.Stream == stream {
				seqs = append(seqs, p.Seq)
			}
		}
		if want := []uint64{1, 2, 3, 4, 5, 6}; !slices.Equal(seqs, want) {
			t.Errorf("Follow delivered %s sequences %v, want %v", stream, seqs, want)
		}
	}
	// The event whose callback returned ErrStop does not count as delivered.
	if want := cursorAfter(got[:len(got)-1]); !maps.Equal(f.cur, want) {
		t.Errorf("Follow ended at cursor %v, want %v", f.cur, want)
	}
}

func testCursorRoundTrip(t *testing.T, _ Factory) {
	tests := []struct {
		name string
		cur  eventlog.Cursor
	}{
		{"empty", eventlog.Cursor{}},
		{"one stream", eventlog.Cursor{"pod-a/inc-1": 1}},
		{"several streams", eventlog.Cursor{"pod-a/inc-1": 5, "pod-b/inc-2": 18, "pod-a/inc-3": 0}},
		{"largest sequence", eventlog.Cursor{"pod-a/inc-1": 1<<64 - 1}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := tt.cur.String()
			if strings.ContainsAny(s, "+/=") {
				t.Errorf("String() = %q, want URL-safe base64 without padding", s)
			}
			got, err := eventlog.ParseCursor(s)
			if err != nil {
				t.Fatalf("ParseCursor(%q): %v", s, err)
			}
			if !maps.Equal(got, tt.cur) {
				t.Errorf("ParseCursor(String()) = %v, want %v", got, tt.cur)
			}
		})
	}

	if s := eventlog.Cursor(nil).String(); s != "" {
		t.Errorf("nil cursor String() = %q, want empty", s)
	}

	// A parsed cursor can always be advanced, even one that encodes JSON null.
	null := base64.RawURLEncoding.EncodeToString([]byte("null"))
	c, err := eventlog.ParseCursor(null)
	if err != nil {
		t.Fatalf("ParseCursor(%q): %v", null, err)
	}
	c.Advance(eventlog.Position{Stream: "pod-a/inc-1", Seq: 3})
	if c["pod-a/inc-1"] != 3 {
		t.Errorf("Advance on a parsed null cursor gave %v, want pod-a/inc-1 at 3", c)
	}

	// Advance never moves a stream back.
	c.Advance(eventlog.Position{Stream: "pod-a/inc-1", Seq: 2})
	if c["pod-a/inc-1"] != 3 {
		t.Errorf("Advance to an older position moved the cursor to %v, want pod-a/inc-1 at 3", c)
	}

	// Clone is independent of the original.
	clone := c.Clone()
	clone.Advance(eventlog.Position{Stream: "pod-a/inc-1", Seq: 9})
	if c["pod-a/inc-1"] != 3 {
		t.Errorf("advancing a clone changed the original to %v", c)
	}
}

func testCursorInvalid(t *testing.T, _ Factory) {
	b64 := func(s string) string { return base64.RawURLEncoding.EncodeToString([]byte(s)) }
	tests := []struct {
		name   string
		cursor string
	}{
		{"not base64", "not a cursor!"},
		{"padded base64", base64.URLEncoding.EncodeToString([]byte(`{"a/b":12}`))},
		{"not JSON", b64("a/b=1")},
		{"JSON array", b64("[1,2]")},
		{"negative sequence", b64(`{"pod-a/inc-1":-1}`)},
		{"fractional sequence", b64(`{"pod-a/inc-1":1.5}`)},
		{"sequence as string", b64(`{"pod-a/inc-1":"1"}`)},
		{"stream without incarnation", b64(`{"pod-a":1}`)},
		{"stream without instance", b64(`{"/inc-1":1}`)},
		{"incarnation with slash", b64(`{"pod-a/inc-1/x":1}`)},
		{"too long", strings.Repeat("A", 1<<20+4)},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c, err := eventlog.ParseCursor(tt.cursor)
			if !errors.Is(err, eventlog.ErrInvalidCursor) {
				t.Errorf("ParseCursor = %v, %v, want an error wrapping ErrInvalidCursor", c, err)
			}
		})
	}
}

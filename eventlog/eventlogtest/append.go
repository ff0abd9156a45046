package eventlogtest

import (
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/cloudevents/sdk-go/v2/event"

	"github.com/virtufin/websocketmanager/eventlog"
	"github.com/virtufin/websocketmanager/schemas"
)

func testAppendOrder(t *testing.T, open Factory) {
	b := open(t)
	log := eventlog.Open(b.Store, eventlog.Options{})
	const stream = "pod-a/inc-1"
	w := newWriter(t, log, stream)

	var want []*event.Event
	var got []eventlog.Position
	for _, ev := range batch(t, stream, 1, 10) {
		got = append(got, appendEvents(t, w, ev)...)
		want = append(want, ev)
	}
	tail := batch(t, stream, 11, 5)
	got = append(got, appendEvents(t, w, tail...)...)
	want = append(want, tail...)

	if !slices.Equal(got, positions(stream, 1, 15)) {
		t.Errorf("positions = %v, want %s@1 to %s@15", got, stream, stream)
	}
	checkEventKey(t, b.Store, stream, 1)

	recs := readAll(t, log, stream)
	checkRecords(t, recs, stream, 1, want)
	for _, rec := range recs {
		seq, ok := rec.Event.Extensions()[schemas.SequenceExtension].(string)
		if !ok {
			t.Errorf("record at %s has no %s extension", rec.Position(), schemas.SequenceExtension)
			continue
		}
		if len(seq) != 20 || strings.Trim(seq, "0123456789") != "" {
			t.Errorf("record at %s has sequence %q, want 20 decimal digits", rec.Position(), seq)
		}
		if w := schemas.FormatSequence(rec.Seq); seq != w {
			t.Errorf("record at %s has sequence %q, want %q", rec.Position(), seq, w)
		}
	}
	// Append sets the extension on the caller's events too.
	if seq := want[14].Extensions()[schemas.SequenceExtension]; seq != schemas.FormatSequence(15) {
		t.Errorf("appended event has sequence %v, want %q", seq, schemas.FormatSequence(15))
	}
}

func testDurableAcrossReopen(t *testing.T, open Factory) {
	b := open(t)
	log := eventlog.Open(b.Store, eventlog.Options{})
	streams := []string{"pod-a/inc-1", "pod-b/inc-7"}
	want := map[string][]*event.Event{}
	for _, stream := range streams {
		w := newWriter(t, log, stream)
		for _, n := range []int{1, 5, 20} {
			evs := batch(t, stream, len(want[stream])+1, n)
			appendEvents(t, w, evs...)
			want[stream] = append(want[stream], evs...)
		}
		closeWriter(t, w)
	}

	reopened := eventlog.Open(b.Reopen(t), eventlog.Options{})
	infos, err := reopened.Streams(waitCtx(t))
	if err != nil {
		t.Fatalf("Streams after reopen: %v", err)
	}
	if len(infos) != len(streams) {
		t.Fatalf("Streams after reopen = %v, want %d streams", infos, len(streams))
	}
	for i, stream := range streams {
		if infos[i].Name != stream || infos[i].Head != 26 {
			t.Errorf("stream %d after reopen = %+v, want %s with head 26", i, infos[i], stream)
		}
		checkRecords(t, readAll(t, reopened, stream), stream, 1, want[stream])
	}
}

func testDurableAfterCrash(t *testing.T, open Factory) {
	b := open(t)
	if b.Crash == nil {
		t.Skip("backend cannot simulate a crash")
	}
	log := eventlog.Open(b.Store, eventlog.Options{})
	const stream = "pod-a/inc-1"
	w := newWriter(t, log, stream)
	var want []*event.Event
	for _, n := range []int{1, 3, 8} {
		evs := batch(t, stream, len(want)+1, n)
		appendEvents(t, w, evs...)
		want = append(want, evs...)
	}

	// The writer is abandoned, not closed: every event whose Append returned
	// must have survived.
	after := eventlog.Open(b.Crash(t), eventlog.Options{})
	if got := streamInfo(t, after, stream).Head; got != uint64(len(want)) {
		t.Errorf("head after crash = %d, want %d", got, len(want))
	}
	checkRecords(t, readAll(t, after, stream), stream, 1, want)

	// A restarted process is a new incarnation: the old stream stays taken.
	if _, err := after.NewWriter(waitCtx(t), stream); !errors.Is(err, eventlog.ErrStreamTaken) {
		t.Errorf("NewWriter on the crashed stream: got %v, want ErrStreamTaken", err)
	}
}

// testConcurrentAppends appends from many goroutines through one writer.
// The store holds back the first commit until every goroutine has called
// Append, so the rest queue behind it and must be group-committed.
func testConcurrentAppends(t *testing.T, open Factory) {
	b := open(t)
	counter := &countingStore{Store: b.Store}
	log := eventlog.Open(counter, eventlog.Options{})
	const stream = "pod-a/inc-1"
	w := newWriter(t, log, stream)

	const goroutines, callsEach = 32, 8
	type call struct {
		events []*event.Event
		pos    []eventlog.Position
	}
	calls := make([][]call, goroutines)
	for g := range goroutines {
		for c := range callsEach {
			// Calls of 1, 2 or 3 events, so batches mix call sizes.
			n := 1 + (g+c)%3
			evs := batch(t, stream, g*1000+c*10, n)
			calls[g] = append(calls[g], call{events: evs})
		}
	}

	before := counter.transacts.Load()
	counter.hold()
	var started atomic.Int64
	var wg sync.WaitGroup
	errs := make(chan error, goroutines*callsEach)
	for g := range goroutines {
		wg.Go(func() {
			ctx := waitCtx(t)
			for c := range calls[g] {
				started.Add(1)
				pos, err := w.Append(ctx, calls[g][c].events...)
				if err != nil {
					errs <- fmt.Errorf("goroutine %d call %d: %w", g, c, err)
					return
				}
				calls[g][c].pos = pos
			}
		})
	}
	eventually(t, "every goroutine to call Append", func() bool { return started.Load() >= goroutines })
	counter.release()
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	if t.Failed() {
		return
	}

	// Every event landed once, with no gap.
	recs := readAll(t, log, stream)
	total := 0
	for g := range calls {
		for _, c := range calls[g] {
			total += len(c.events)
		}
	}
	if len(recs) != total {
		t.Fatalf("read %d records, want %d", len(recs), total)
	}
	byID := map[string]eventlog.Position{}
	for i, rec := range recs {
		if rec.Seq != uint64(i+1) {
			t.Fatalf("record %d has sequence %d, want %d", i, rec.Seq, i+1)
		}
		if prev, dup := byID[rec.Event.ID()]; dup {
			t.Fatalf("event %s is stored at %s and %s", rec.Event.ID(), prev, rec.Position())
		}
		byID[rec.Event.ID()] = rec.Position()
	}

	// Each caller's positions are where its events are, in call order, and
	// one caller's later call lands after its earlier one.
	appends := 0
	for g := range calls {
		var last uint64
		for c, cl := range calls[g] {
			appends++
			for i, ev := range cl.events {
				if got := byID[ev.ID()]; got != cl.pos[i] {
					t.Errorf("goroutine %d call %d event %d: Append returned %s, read back at %s", g, c, i, cl.pos[i], got)
				}
				if cl.pos[i].Seq <= last {
					t.Errorf("goroutine %d call %d event %d at %s, not after the previous position %d", g, c, i, cl.pos[i], last)
				}
				last = cl.pos[i].Seq
			}
		}
	}

	transacts := counter.transacts.Load() - before
	t.Logf("%d appends of %d events committed in %d transactions", appends, total, transacts)
	if transacts >= int64(appends) {
		t.Errorf("%d appends took %d transactions, want fewer: appends are not group-committed", appends, transacts)
	}
}

func testReadFromAndLimit(t *testing.T, open Factory) {
	b := open(t)
	log := eventlog.Open(b.Store, eventlog.Options{})
	const stream = "pod-a/inc-1"
	w := newWriter(t, log, stream)
	evs := batch(t, stream, 1, 10)
	appendEvents(t, w, evs...)

	tests := []struct {
		name        string
		stream      string
		from        uint64
		limit       int
		first, last uint64 // 0, 0 for no records
	}{
		{"from zero reads from one", stream, 0, 100, 1, 10},
		{"from one with limit", stream, 1, 3, 1, 3},
		{"middle with limit", stream, 4, 3, 4, 6},
		{"limit past head", stream, 9, 5, 9, 10},
		{"last only", stream, 10, 1, 10, 10},
		{"past head", stream, 11, 5, 0, 0},
		{"zero limit", stream, 1, 0, 0, 0},
		{"negative limit", stream, 1, -1, 0, 0},
		{"unknown stream", "pod-z/inc-9", 1, 10, 0, 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := log.Read(waitCtx(t), tt.stream, tt.from, tt.limit)
			if err != nil {
				t.Fatalf("Read(%s, %d, %d): %v", tt.stream, tt.from, tt.limit, err)
			}
			if tt.last == 0 {
				if len(got) != 0 {
					t.Fatalf("Read(%s, %d, %d) = %d records, want none", tt.stream, tt.from, tt.limit, len(got))
				}
				return
			}
			checkRecords(t, got, tt.stream, tt.first, evs[tt.first-1:tt.last])
		})
	}

	head, err := log.Head(waitCtx(t), stream)
	if err != nil || head != 10 {
		t.Errorf("Head = %d, %v, want 10", head, err)
	}
}

func testStreamsListHeads(t *testing.T, open Factory) {
	b := open(t)
	log := eventlog.Open(b.Store, eventlog.Options{})
	infos, err := log.Streams(waitCtx(t))
	if err != nil || len(infos) != 0 {
		t.Fatalf("Streams of an empty log = %v, %v, want none", infos, err)
	}

	want := []eventlog.StreamInfo{
		{Name: "pod-b/inc-1", Head: 3},
		{Name: "pod-a/inc-1", Head: 0},
		{Name: "pod-c/inc-2", Head: 1},
	}
	for _, s := range want {
		w := newWriter(t, log, s.Name)
		if s.Head > 0 {
			appendEvents(t, w, batch(t, s.Name, 1, int(s.Head))...)
		}
	}

	got, err := log.Streams(waitCtx(t))
	if err != nil {
		t.Fatalf("Streams: %v", err)
	}
	if !slices.Equal(got, want) {
		t.Errorf("Streams = %+v, want %+v (in creation order)", got, want)
	}
	for _, s := range want {
		if h, err := log.Head(waitCtx(t), s.Name); err != nil || h != s.Head {
			t.Errorf("Head(%s) = %d, %v, want %d", s.Name, h, err, s.Head)
		}
	}
	if h, err := log.Head(waitCtx(t), "pod-z/inc-1"); err != nil || h != 0 {
		t.Errorf("Head of an unknown stream = %d, %v, want 0", h, err)
	}

	// A second Log, as another process opens it, reads the same streams.
	other := eventlog.Open(b.Store, eventlog.Options{})
	if got, err := other.Streams(waitCtx(t)); err != nil || !slices.Equal(got, want) {
		t.Errorf("Streams through a second Log = %+v, %v, want %+v", got, err, want)
	}
}

func testTwoWriters(t *testing.T, open Factory) {
	b := open(t)
	log := eventlog.Open(b.Store, eventlog.Options{})
	streams := []string{"pod-a/inc-1", "pod-b/inc-1"}
	const n = 40

	want := make([][]*event.Event, len(streams))
	var wg sync.WaitGroup
	errs := make(chan error, len(streams))
	for i, stream := range streams {
		w := newWriter(t, log, stream)
		want[i] = batch(t, stream, 1, n)
		wg.Go(func() {
			ctx := waitCtx(t)
			for j, ev := range want[i] {
				pos, err := w.Append(ctx, ev)
				if err != nil {
					errs <- fmt.Errorf("%s: append %d: %w", stream, j, err)
					return
				}
				if pos[0] != (eventlog.Position{Stream: stream, Seq: uint64(j + 1)}) {
					errs <- fmt.Errorf("%s: append %d returned %s, want sequence %d", stream, j, pos[0], j+1)
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

	for i, stream := range streams {
		checkRecords(t, readAll(t, log, stream), stream, 1, want[i])
		if got := streamInfo(t, log, stream).Head; got != n {
			t.Errorf("head of %s = %d, want %d", stream, got, n)
		}
	}
}

func testStreamTaken(t *testing.T, open Factory) {
	b := open(t)
	log := eventlog.Open(b.Store, eventlog.Options{})
	const stream = "pod-a/inc-1"
	w := newWriter(t, log, stream)
	appendEvents(t, w, batch(t, stream, 1, 2)...)

	if _, err := log.NewWriter(waitCtx(t), stream); !errors.Is(err, eventlog.ErrStreamTaken) {
		t.Errorf("second NewWriter: got %v, want ErrStreamTaken", err)
	}
	other := eventlog.Open(b.Store, eventlog.Options{})
	if _, err := other.NewWriter(waitCtx(t), stream); !errors.Is(err, eventlog.ErrStreamTaken) {
		t.Errorf("NewWriter through a second Log: got %v, want ErrStreamTaken", err)
	}
	closeWriter(t, w)
	if _, err := log.NewWriter(waitCtx(t), stream); !errors.Is(err, eventlog.ErrStreamTaken) {
		t.Errorf("NewWriter after the first writer closed: got %v, want ErrStreamTaken", err)
	}

	// The failed attempts changed nothing.
	if got := streamInfo(t, log, stream).Head; got != 2 {
		t.Errorf("head = %d, want 2", got)
	}
	if infos, _ := log.Streams(waitCtx(t)); len(infos) != 1 {
		t.Errorf("Streams = %+v, want one stream", infos)
	}
}

func testInvalidStreamName(t *testing.T, open Factory) {
	b := open(t)
	log := eventlog.Open(b.Store, eventlog.Options{})
	for _, name := range []string{"", "pod-a", "/inc-1", "pod-a/", "pod-a/inc-1/x"} {
		if w, err := log.NewWriter(waitCtx(t), name); err == nil {
			closeWriter(t, w)
			t.Errorf("NewWriter(%q) succeeded, want an error", name)
		}
	}
	if infos, err := log.Streams(waitCtx(t)); err != nil || len(infos) != 0 {
		t.Errorf("Streams after invalid names = %+v, %v, want none", infos, err)
	}
}

func testValidationRejectsAppend(t *testing.T, open Factory) {
	b := open(t)
	log := eventlog.Open(b.Store, eventlog.Options{Validate: schemas.Validate})
	const stream = "pod-a/inc-1"
	w := newWriter(t, log, stream)
	evs := batch(t, stream, 1, 4)
	appendEvents(t, w, evs[0])

	// A connected event without its required userId.
	broken := connected(t, stream, "pod-a-broken", evs[0].Time())
	var data map[string]any
	if err := json.Unmarshal(broken.Data(), &data); err != nil {
		t.Fatal(err)
	}
	delete(data, "userId")
	broken.DataEncoded, _ = json.Marshal(data)

	_, err := w.Append(waitCtx(t), evs[1], broken, evs[2])
	if !errors.Is(err, schemas.ErrInvalid) {
		t.Fatalf("Append with an invalid event: got %v, want an error wrapping schemas.ErrInvalid", err)
	}
	var ve *schemas.ValidationError
	if !errors.As(err, &ve) || ve.Field != "data.userId" {
		t.Errorf("Append error = %v, want a *schemas.ValidationError on data.userId", err)
	}

	if got := streamInfo(t, log, stream).Head; got != 1 {
		t.Errorf("head after the rejected append = %d, want 1", got)
	}
	it, err := b.Store.Get(waitCtx(t), eventKey(stream, 2))
	if err != nil || it.Exists() {
		t.Errorf("event key at sequence 2 after the rejected append: exists=%v, err=%v; want absent", it.Exists(), err)
	}
	for _, ev := range []*event.Event{evs[1], evs[2]} {
		if seq, ok := ev.Extensions()[schemas.SequenceExtension]; ok {
			t.Errorf("valid event %s of the rejected append got sequence %v", ev.ID(), seq)
		}
	}

	// The rejected append used no sequence.
	if pos := appendEvents(t, w, evs[1]); pos[0].Seq != 2 {
		t.Errorf("next append at %s, want sequence 2", pos[0])
	}
	checkRecords(t, readAll(t, log, stream), stream, 1, evs[:2])
}

// testAppendAfterClose checks that Close drains what is queued and that
// every later Append fails at once with ErrClosed rather than waiting for a
// commit that will never come.
func testAppendAfterClose(t *testing.T, open Factory) {
	b := open(t)
	log := eventlog.Open(b.Store, eventlog.Options{})
	const stream = "pod-a/inc-1"
	w := newWriter(t, log, stream)

	// Appends racing with Close: each one either lands or fails with
	// ErrClosed, and none hangs.
	const racers = 16
	var landed atomic.Int64
	var wg sync.WaitGroup
	errs := make(chan error, racers)
	for i := range racers {
		ev := batch(t, stream, i, 1)
		wg.Go(func() {
			_, err := w.Append(waitCtx(t), ev...)
			switch {
			case err == nil:
				landed.Add(1)
			case !errors.Is(err, eventlog.ErrClosed):
				errs <- fmt.Errorf("append racing with Close: %w", err)
			}
		})
	}
	closeWriter(t, w)
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	if got := streamInfo(t, log, stream).Head; got != uint64(landed.Load()) {
		t.Errorf("head = %d, want the %d appends that succeeded", got, landed.Load())
	}

	for i := range 50 {
		if _, err := w.Append(waitCtx(t), batch(t, stream, 100+i, 1)...); !errors.Is(err, eventlog.ErrClosed) {
			t.Fatalf("Append %d after Close: got %v, want ErrClosed", i, err)
		}
	}
	if err := w.Close(waitCtx(t)); err != nil {
		t.Errorf("second Close: %v", err)
	}
}

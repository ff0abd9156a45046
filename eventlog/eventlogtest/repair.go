package eventlogtest

import (
	"bytes"
	"errors"
	"slices"
	"strings"
	"testing"

	"github.com/cloudevents/sdk-go/v2/event"

	"github.com/virtufin/websocketmanager/eventlog"
	"github.com/virtufin/websocketmanager/internal/state"
)

// A damage changes one stored event through the raw store, the way a torn
// write, a bad disk or an unfinished commit would leave it.
type damage func(t *testing.T, store state.Store, stream string, seq uint64)

// flipByte changes one byte in the middle of the stored record.
func flipByte(t *testing.T, store state.Store, stream string, seq uint64) {
	t.Helper()
	raw := rawEvent(t, store, stream, seq)
	raw[len(raw)/2] ^= 0x20
	putRaw(t, store, eventKey(stream, seq), raw)
}

// truncate keeps the first half of the stored record, as a torn write does.
func truncate(t *testing.T, store state.Store, stream string, seq uint64) {
	t.Helper()
	raw := rawEvent(t, store, stream, seq)
	putRaw(t, store, eventKey(stream, seq), raw[:len(raw)/2])
}

// remove deletes the stored record.
func remove(t *testing.T, store state.Store, stream string, seq uint64) {
	t.Helper()
	if err := store.Transact(waitCtx(t), []state.Op{{Kind: state.Delete, Key: eventKey(stream, seq)}}); err != nil {
		t.Fatalf("delete %s: %v", eventKey(stream, seq), err)
	}
}

// orphan writes an intact record at seq, past the head, as a commit that
// wrote its events but never its head leaves on a store without rollback.
func orphan(t *testing.T, store state.Store, stream string, seq uint64) {
	t.Helper()
	putRaw(t, store, eventKey(stream, seq), rawEvent(t, store, stream, 1))
}

func rawEvent(t *testing.T, store state.Store, stream string, seq uint64) []byte {
	t.Helper()
	it, err := store.Get(waitCtx(t), eventKey(stream, seq))
	if err != nil {
		t.Fatalf("get %s: %v", eventKey(stream, seq), err)
	}
	if !it.Exists() {
		t.Fatalf("no event at %s", eventKey(stream, seq))
	}
	return bytes.Clone(it.Value)
}

func putRaw(t *testing.T, store state.Store, key string, value []byte) {
	t.Helper()
	if err := store.Transact(waitCtx(t), []state.Op{{Kind: state.Upsert, Key: key, Value: value}}); err != nil {
		t.Fatalf("write %s: %v", key, err)
	}
}

// tailCase is one stream set up, damaged and then repaired.
type tailCase struct {
	stream  string
	events  int
	damages map[uint64]damage
	// The expected RepairTail report.
	head    uint64
	dropped uint64
	orphans int
}

var tailCases = []tailCase{
	{stream: "flipped/inc-1", events: 5, damages: map[uint64]damage{5: flipByte}, head: 4, dropped: 1},
	{stream: "truncated/inc-1", events: 5, damages: map[uint64]damage{5: truncate}, head: 4, dropped: 1},
	{stream: "deleted/inc-1", events: 5, damages: map[uint64]damage{5: remove}, head: 4, dropped: 1},
	{stream: "torn-two/inc-1", events: 5, damages: map[uint64]damage{4: truncate, 5: remove}, head: 3, dropped: 2},
	{stream: "orphans/inc-1", events: 3, damages: map[uint64]damage{4: orphan, 6: orphan}, head: 3, orphans: 2},
	{stream: "torn-and-orphan/inc-1", events: 4, damages: map[uint64]damage{4: flipByte, 5: orphan}, head: 3, dropped: 1, orphans: 1},
	{stream: "all-torn/inc-1", events: 2, damages: map[uint64]damage{1: flipByte, 2: remove}, head: 0, dropped: 2},
	{stream: "intact/inc-1", events: 3, head: 3},
}

// setUpTails appends each case's events and returns them by stream, with
// the writers.
func setUpTails(t *testing.T, log *eventlog.Log, cases []tailCase) (map[string][]*event.Event, []*eventlog.Writer) {
	t.Helper()
	want := map[string][]*event.Event{}
	var writers []*eventlog.Writer
	for _, tc := range cases {
		w := newWriter(t, log, tc.stream)
		want[tc.stream] = batch(t, tc.stream, 1, tc.events)
		appendEvents(t, w, want[tc.stream]...)
		writers = append(writers, w)
	}
	return want, writers
}

// damageTails applies each case's damages through the raw store, in
// sequence order.
func damageTails(t *testing.T, store state.Store, cases []tailCase) {
	t.Helper()
	for _, tc := range cases {
		for _, seq := range slices.Sorted(mapKeys(tc.damages)) {
			tc.damages[seq](t, store, tc.stream, seq)
		}
	}
}

func mapKeys[K comparable, V any](m map[K]V) func(func(K) bool) {
	return func(yield func(K) bool) {
		for k := range m {
			if !yield(k) {
				return
			}
		}
	}
}

// checkRepaired runs RepairTail on every case and checks its report and the
// stream it leaves.
func checkRepaired(t *testing.T, log *eventlog.Log, cases []tailCase, want map[string][]*event.Event) {
	t.Helper()
	for _, tc := range cases {
		rep, err := log.RepairTail(waitCtx(t), tc.stream)
		if err != nil {
			t.Errorf("RepairTail(%s): %v", tc.stream, err)
			continue
		}
		checkReport(t, rep, tc)
		checkAfterRepair(t, log, tc, want[tc.stream])
	}
}

func checkReport(t *testing.T, rep eventlog.TailReport, tc tailCase) {
	t.Helper()
	if rep.Head != tc.head || rep.Dropped != tc.dropped || rep.Orphans != tc.orphans || rep.OldHead != uint64(tc.events) {
		t.Errorf("RepairTail(%s) = head %d, dropped %d, orphans %d, old head %d; want head %d, dropped %d, orphans %d, old head %d",
			tc.stream, rep.Head, rep.Dropped, rep.Orphans, rep.OldHead, tc.head, tc.dropped, tc.orphans, tc.events)
	}
	if got, want := rep.Repaired(), tc.dropped > 0 || tc.orphans > 0; got != want {
		t.Errorf("RepairTail(%s).Repaired() = %v, want %v", tc.stream, got, want)
	}
	if tc.dropped > 0 && !errors.Is(rep.FirstDamage, eventlog.ErrCorrupt) {
		t.Errorf("RepairTail(%s).FirstDamage = %v, want an error wrapping ErrCorrupt", tc.stream, rep.FirstDamage)
	}
}

// checkAfterRepair verifies that every intact event still reads, nothing is
// left past the new head, and a second repair finds nothing to do.
func checkAfterRepair(t *testing.T, log *eventlog.Log, tc tailCase, want []*event.Event) {
	t.Helper()
	if h := streamInfo(t, log, tc.stream).Head; h != tc.head {
		t.Errorf("head of %s after repair = %d, want %d", tc.stream, h, tc.head)
	}
	checkRecords(t, readAll(t, log, tc.stream), tc.stream, 1, want[:tc.head])
	for seq := tc.head + 1; seq <= uint64(tc.events)+8; seq++ {
		it, err := log.Store().Get(waitCtx(t), eventKey(tc.stream, seq))
		if err != nil || it.Exists() {
			t.Errorf("%s after repair: exists=%v, err=%v; want absent", eventKey(tc.stream, seq), it.Exists(), err)
		}
	}

	again, err := log.RepairTail(waitCtx(t), tc.stream)
	if err != nil || again.Repaired() || again.Head != tc.head {
		t.Errorf("second RepairTail(%s) = %+v, %v; want head %d and nothing repaired", tc.stream, again, err, tc.head)
	}
}

func testRepairTornTail(t *testing.T, open Factory) {
	b := open(t)
	log := eventlog.Open(b.Store, eventlog.Options{})
	want, writers := setUpTails(t, log, tailCases)
	checkEventKey(t, b.Store, tailCases[0].stream, 1)
	for _, w := range writers {
		closeWriter(t, w)
	}
	damageTails(t, b.Store, tailCases)

	// The damage is found by a restarted process.
	log = eventlog.Open(b.Reopen(t), eventlog.Options{})

	// Before the repair, reading up to the head fails at the first damaged
	// record and names its position.
	for _, tc := range tailCases {
		if tc.dropped == 0 {
			continue
		}
		first := tc.head + 1
		_, err := log.Read(waitCtx(t), tc.stream, 1, 100)
		if !errors.Is(err, eventlog.ErrCorrupt) {
			t.Errorf("Read(%s) before repair: got %v, want an error wrapping ErrCorrupt", tc.stream, err)
			continue
		}
		if pos := (eventlog.Position{Stream: tc.stream, Seq: first}).String(); !strings.Contains(err.Error(), pos) {
			t.Errorf("Read(%s) error %q does not name position %s", tc.stream, err, pos)
		}
	}

	checkRepaired(t, log, tailCases, want)
}

func testRepairAfterCrash(t *testing.T, open Factory) {
	b := open(t)
	if b.Crash == nil {
		t.Skip("backend cannot simulate a crash")
	}
	log := eventlog.Open(b.Store, eventlog.Options{})
	cases := []tailCase{
		{stream: "torn/inc-1", events: 6, damages: map[uint64]damage{6: truncate, 7: orphan}, head: 5, dropped: 1, orphans: 1},
		{stream: "clean/inc-1", events: 4, head: 4},
	}
	want, _ := setUpTails(t, log, cases)

	// The writers are abandoned, as a killed process leaves them.
	after := b.Crash(t)
	damageTails(t, after, cases)
	log = eventlog.Open(after, eventlog.Options{})

	reports, err := log.RepairTails(waitCtx(t), func(string) bool { return true })
	if err != nil {
		t.Fatalf("RepairTails: %v", err)
	}
	if len(reports) != 1 || reports[0].Stream != cases[0].stream {
		t.Fatalf("RepairTails reported %+v, want one report, on %s", reports, cases[0].stream)
	}
	checkReport(t, reports[0], cases[0])
	for _, tc := range cases {
		checkAfterRepair(t, log, tc, want[tc.stream])
	}
}

func testCorruptMiddle(t *testing.T, open Factory) {
	tests := []struct {
		name   string
		damage damage
	}{
		{"flipped byte", flipByte},
		{"truncated", truncate},
		{"deleted", remove},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			b := open(t)
			log := eventlog.Open(b.Store, eventlog.Options{})
			const stream = "pod-a/inc-1"
			w := newWriter(t, log, stream)
			evs := batch(t, stream, 1, 5)
			appendEvents(t, w, evs...)
			closeWriter(t, w)
			tt.damage(t, b.Store, stream, 3)

			_, err := log.Read(waitCtx(t), stream, 1, 10)
			if !errors.Is(err, eventlog.ErrCorrupt) {
				t.Fatalf("Read across the damaged record: got %v, want an error wrapping ErrCorrupt", err)
			}
			if pos := (eventlog.Position{Stream: stream, Seq: 3}).String(); !strings.Contains(err.Error(), pos) {
				t.Errorf("Read error %q does not name position %s", err, pos)
			}
			if _, err := log.Replay(waitCtx(t), nil, func(eventlog.Record) error { return nil }); !errors.Is(err, eventlog.ErrCorrupt) {
				t.Errorf("Replay across the damaged record: got %v, want an error wrapping ErrCorrupt", err)
			}

			// The records around the damage still read.
			before, err := log.Read(waitCtx(t), stream, 1, 2)
			if err != nil {
				t.Fatalf("Read before the damage: %v", err)
			}
			checkRecords(t, before, stream, 1, evs[:2])
			after, err := log.Read(waitCtx(t), stream, 4, 10)
			if err != nil {
				t.Fatalf("Read after the damage: %v", err)
			}
			checkRecords(t, after, stream, 4, evs[3:])

			// Damage below an intact head is not a torn tail: RepairTail
			// leaves the stream alone.
			rep, err := log.RepairTail(waitCtx(t), stream)
			if err != nil || rep.Repaired() || rep.Head != 5 {
				t.Errorf("RepairTail = %+v, %v; want head 5 and nothing repaired", rep, err)
			}
		})
	}
}

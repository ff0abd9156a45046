package eventlogtest

import (
	"slices"
	"testing"

	"github.com/virtufin/websocketmanager/eventlog"
)

const staleKey = "eventlogtest/stale"

// testProjectorConflictRetried makes the projector's first try carry a write
// with a stale ETag: the commit must project again and land with every view
// write and the checkpoint.
func testProjectorConflictRetried(t *testing.T, open Factory) {
	b := open(t)
	proj := &markProjector{staleKey: staleKey, staleETag: newStaleETag(t, b.Store, staleKey), conflicts: 1}
	log := eventlog.Open(b.Store, eventlog.Options{Projector: proj})
	const stream = "pod-a/inc-1"
	w := newWriter(t, log, stream)

	evs := batch(t, stream, 1, 3)
	appendEvents(t, w, evs...)
	calls, seen := proj.stats()
	if calls != 2 {
		t.Errorf("projector called %d times, want 2: one conflict, one retry", calls)
	}
	want := positions(stream, 1, 3)
	if wantSeen := append(slices.Clone(want), want...); !slices.Equal(seen, wantSeen) {
		t.Errorf("projector saw %v, want %v", seen, wantSeen)
	}
	checkMarks(t, b.Store, want)
	if it, err := b.Store.Get(waitCtx(t), staleKey); err != nil || string(it.Value) != "v2" {
		t.Errorf("%s = %q, %v after the conflict; want the value before it, v2", staleKey, it.Value, err)
	}

	// On a store with rollback the checkpoint moves with the commit; on one
	// without, it follows one commit behind and Close writes the last one.
	closeWriter(t, w)
	info := streamInfo(t, log, stream)
	if info.Head != 3 || info.Projected != 3 {
		t.Errorf("stream after the retried commit = %+v, want head 3 and projected 3", info)
	}
}

// testProjectorFailureLags makes projection fail past what a commit retries:
// the events must still commit, the checkpoint stay behind, and the next
// commit catch the views up first.
func testProjectorFailureLags(t *testing.T, open Factory) {
	tests := []struct {
		name      string
		failures  int
		conflicts int
		retries   int
	}{
		{name: "projector error", failures: 1},
		{name: "conflicts past retries", conflicts: 3, retries: 2},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			b := open(t)
			proj := &markProjector{
				staleKey: staleKey, staleETag: newStaleETag(t, b.Store, staleKey),
				failures: tt.failures, conflicts: tt.conflicts,
			}
			log := eventlog.Open(b.Store, eventlog.Options{Projector: proj, ProjectRetries: tt.retries})
			const stream = "pod-a/inc-1"
			w := newWriter(t, log, stream)

			first := batch(t, stream, 1, 2)
			if pos := appendEvents(t, w, first...); pos[1].Seq != 2 {
				t.Fatalf("append returned %v, want sequences 1 and 2", pos)
			}
			checkRecords(t, readAll(t, log, stream), stream, 1, first)
			if info := streamInfo(t, log, stream); info.Projected != 0 {
				t.Errorf("checkpoint after a failed projection = %d, want 0", info.Projected)
			}

			second := batch(t, stream, 3, 2)
			appendEvents(t, w, second...)
			closeWriter(t, w)
			checkMarks(t, b.Store, positions(stream, 1, 4))
			if info := streamInfo(t, log, stream); info.Head != 4 || info.Projected != 4 {
				t.Errorf("stream after catching up = %+v, want head 4 and projected 4", info)
			}
		})
	}
}

func testCatchUp(t *testing.T, open Factory) {
	b := open(t)
	streams := []string{"pod-a/inc-1", "pod-b/inc-1"}
	counts := []int{4, 2}

	// Events written without a projector leave the checkpoints at zero.
	plain := eventlog.Open(b.Store, eventlog.Options{})
	for i, stream := range streams {
		w := newWriter(t, plain, stream)
		appendEvents(t, w, batch(t, stream, 1, counts[i])...)
		closeWriter(t, w)
	}
	if got, err := plain.CatchUp(waitCtx(t), streams[0]); err != nil || got != 0 {
		t.Errorf("CatchUp without a projector = %d, %v; want 0 and nothing done", got, err)
	}

	// MaxBatch 3 makes the four events of pod-a take two rounds.
	proj := &markProjector{}
	log := eventlog.Open(b.Store, eventlog.Options{Projector: proj, MaxBatch: 3})
	got, err := log.CatchUp(waitCtx(t), streams[0])
	if err != nil || got != 4 {
		t.Fatalf("CatchUp(%s) = %d, %v; want 4", streams[0], got, err)
	}
	calls, seen := proj.stats()
	if want := positions(streams[0], 1, 4); calls != 2 || !slices.Equal(seen, want) {
		t.Errorf("projector called %d times with %v, want 2 calls with %v", calls, seen, want)
	}
	checkMarks(t, b.Store, positions(streams[0], 1, 4))
	if info := streamInfo(t, log, streams[1]); info.Projected != 0 {
		t.Errorf("CatchUp of %s moved the checkpoint of %s to %d", streams[0], streams[1], info.Projected)
	}

	// A stream already caught up is not folded again.
	if got, err := log.CatchUp(waitCtx(t), streams[0]); err != nil || got != 4 {
		t.Errorf("second CatchUp = %d, %v; want 4", got, err)
	}
	if again, _ := proj.stats(); again != calls {
		t.Errorf("second CatchUp called the projector %d more times, want none", again-calls)
	}

	n, err := log.CatchUpAll(waitCtx(t))
	if err != nil || n != counts[1] {
		t.Errorf("CatchUpAll = %d, %v; want %d events folded", n, err, counts[1])
	}
	checkMarks(t, b.Store, positions(streams[1], 1, 2))
	for i, stream := range streams {
		if info := streamInfo(t, log, stream); info.Projected != uint64(counts[i]) {
			t.Errorf("checkpoint of %s = %d, want %d", stream, info.Projected, counts[i])
		}
	}
}

package eventlog_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/cloudevents/sdk-go/v2/event"
	"github.com/rs/zerolog"

	"github.com/virtufin/websocketmanager/eventlog"
	"github.com/virtufin/websocketmanager/eventlog/eventlogtest"
	"github.com/virtufin/websocketmanager/internal/state"
	"github.com/virtufin/websocketmanager/schemas"
)

// outageWait bounds every wait of these tests.
const outageWait = 10 * time.Second

// queuedWait is how long an Append waits before it counts as queued. It is
// far shorter than any retry the tests wait for.
const queuedWait = 30 * time.Millisecond

const outageStream = "pod-a/inc-1"

// outageBackends are the stores the outage tests run on: bbolt as it is,
// and bbolt behind noRollbackStore, whose transactions apply in part.
var outageBackends = []struct {
	name string
	wrap func(state.Store) state.Store
}{
	{"embedded", func(s state.Store) state.Store { return s }},
	{"no-rollback", func(s state.Store) state.Store { return noRollbackStore{s} }},
}

// lineLog collects the JSON lines a zerolog logger writes and forwards them
// to t.Log until the test ends, because the commit goroutine may log later.
type lineLog struct {
	mu    sync.Mutex
	t     *testing.T
	done  bool
	lines []map[string]any
}

func newLineLog(t *testing.T) *lineLog {
	l := &lineLog{t: t}
	t.Cleanup(func() {
		l.mu.Lock()
		l.done = true
		l.mu.Unlock()
	})
	return l
}

func (l *lineLog) Write(p []byte) (int, error) {
	var line map[string]any
	_ = json.Unmarshal(p, &line)
	l.mu.Lock()
	defer l.mu.Unlock()
	l.lines = append(l.lines, line)
	if !l.done {
		l.t.Log(strings.TrimSpace(string(p)))
	}
	return len(p), nil
}

// count returns how many lines have the level and a message containing msg.
func (l *lineLog) count(level, msg string) int {
	l.mu.Lock()
	defer l.mu.Unlock()
	n := 0
	for _, line := range l.lines {
		if line["level"] == level && strings.Contains(fmt.Sprint(line["message"]), msg) {
			n++
		}
	}
	return n
}

// outageRig is a writer over a FaultyStore around a fresh embedded store.
type outageRig struct {
	faults *eventlogtest.FaultyStore
	log    *eventlog.Log
	w      *eventlog.Writer
	lines  *lineLog
	proj   *markProjector
}

func newOutageRig(t *testing.T, wrap func(state.Store) state.Store, opts eventlog.Options) *outageRig {
	t.Helper()
	b := eventlogtest.Embedded(t)
	faults := eventlogtest.NewFaultyStore(b.Store)
	lines := newLineLog(t)
	proj := &markProjector{}
	opts.Validate = schemas.Validate
	opts.Projector = proj
	opts.Logger = zerolog.New(lines)
	log := eventlog.Open(wrap(faults), opts)

	w, err := log.NewWriter(outageCtx(t), outageStream)
	if err != nil {
		t.Fatalf("NewWriter: %v", err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), outageWait)
		defer cancel()
		faults.Repair()
		_ = w.Close(ctx)
	})
	return &outageRig{faults: faults, log: log, w: w, lines: lines, proj: proj}
}

func outageCtx(t *testing.T) context.Context {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), outageWait)
	t.Cleanup(cancel)
	return ctx
}

// markProjector writes one key per record, so a test can see which events
// have their views.
type markProjector struct{}

func markKey(p eventlog.Position) string { return "test/marks/" + p.String() }

func (*markProjector) Mutations(ctx context.Context, store state.Store, records []eventlog.Record) ([]state.Op, error) {
	// Read like a real projector, so an outage fails the projection too.
	if _, err := store.Get(ctx, markKey(records[0].Position())); err != nil {
		return nil, err
	}
	ops := make([]state.Op, len(records))
	for i, r := range records {
		ops[i] = state.Op{Kind: state.Upsert, Key: markKey(r.Position()), Value: []byte(r.Event.ID())}
	}
	return ops, nil
}

// appendQueued appends with a short context and requires ErrQueued.
func appendQueued(t *testing.T, w *eventlog.Writer, events ...*event.Event) {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), queuedWait)
	defer cancel()
	_, err := w.Append(ctx, events...)
	if !errors.Is(err, eventlog.ErrQueued) {
		t.Fatalf("Append during the outage: got %v, want an error matching ErrQueued", err)
	}
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("Append during the outage: got %v, want it to match context.DeadlineExceeded too", err)
	}
}

func waitUntil(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(outageWait)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for %s", outageWait, what)
		}
		time.Sleep(2 * time.Millisecond)
	}
}

// checkStream reads the whole stream and checks that it holds want, in
// order, at sequences 1..len(want), each with its view mark.
func checkStream(t *testing.T, r *outageRig, want []*event.Event) {
	t.Helper()
	recs, err := r.log.Read(outageCtx(t), outageStream, 1, 1<<20)
	if err != nil {
		t.Fatalf("read %s: %v", outageStream, err)
	}
	if len(recs) != len(want) {
		t.Fatalf("records of %s: got %d, want %d", outageStream, len(recs), len(want))
	}
	for i, rec := range recs {
		if got, want := rec.Seq, uint64(i+1); got != want {
			t.Errorf("record %d: got sequence %d, want %d", i, got, want)
		}
		if got, want := rec.Event.ID(), want[i].ID(); got != want {
			t.Errorf("record at %s: got event %s, want %s", rec.Position(), got, want)
		}
		if got, want := rec.Event.Extensions()[schemas.SequenceExtension], schemas.FormatSequence(rec.Seq); got != want {
			t.Errorf("record at %s: got sequence extension %v, want %s", rec.Position(), got, want)
		}
	}

	if _, err := r.log.CatchUp(outageCtx(t), outageStream); err != nil {
		t.Fatalf("CatchUp: %v", err)
	}
	for _, rec := range recs {
		it, err := r.log.Store().Get(outageCtx(t), markKey(rec.Position()))
		if err != nil {
			t.Fatalf("read mark of %s: %v", rec.Position(), err)
		}
		if got, want := string(it.Value), rec.Event.ID(); got != want {
			t.Errorf("view mark of %s: got %q, want %q", rec.Position(), got, want)
		}
	}
}

// TestWriterRidesOutOutage appends while the store is down: the callers
// that give up get ErrQueued, those that wait get their positions, and
// after the store is back the stream holds every event once, in the order
// the appends were made.
func TestWriterRidesOutOutage(t *testing.T) {
	faults := []struct {
		name  string
		fault eventlogtest.Fault
	}{
		{"all calls fail", eventlogtest.FaultAll},
		{"writes fail", eventlogtest.FaultWrites},
		{"calls hang", eventlogtest.FaultHang},
	}
	for _, b := range outageBackends {
		for _, f := range faults {
			t.Run(b.name+"/"+f.name, func(t *testing.T) {
				r := newOutageRig(t, b.wrap, eventlog.Options{RetryMaxDelay: 20 * time.Millisecond})
				events := heartbeats(t, outageStream, 16)

				if _, err := r.w.Append(outageCtx(t), events[:2]...); err != nil {
					t.Fatalf("Append before the outage: %v", err)
				}

				r.faults.Break(f.fault, nil)
				for _, ev := range events[2:8] {
					appendQueued(t, r.w, ev)
				}

				// Appends that wait, started one at a time so their order
				// is known: each is queued before the next starts.
				type result struct {
					pos []eventlog.Position
					err error
				}
				results := make([]chan result, 0, 8)
				for i, ev := range events[8:] {
					ch := make(chan result, 1)
					results = append(results, ch)
					go func() {
						pos, err := r.w.Append(outageCtx(t), ev)
						ch <- result{pos, err}
					}()
					waitUntil(t, "the waiting append to be queued", func() bool { return r.w.Backlog() == 6+i+1 })
				}

				before := r.faults.Failures()
				if f.fault != eventlogtest.FaultHang {
					waitUntil(t, "the writer to retry", func() bool { return r.faults.Failures() >= before+3 })
				}
				if got := r.w.Backlog(); got != 14 {
					t.Errorf("Backlog during the outage: got %d, want 14", got)
				}
				r.faults.Repair()

				for i, ch := range results {
					var res result
					select {
					case res = <-ch:
					case <-time.After(outageWait):
						t.Fatalf("waiting append %d did not return after the store came back", i)
					}
					if res.err != nil {
						t.Fatalf("waiting append %d: %v", i, res.err)
					}
					if got, want := res.pos[0].Seq, uint64(9+i); got != want {
						t.Errorf("waiting append %d: got sequence %d, want %d", i, got, want)
					}
				}
				if got := r.w.Backlog(); got != 0 {
					t.Errorf("Backlog after recovery: got %d, want 0", got)
				}

				last := heartbeats(t, outageStream, 1)
				pos, err := r.w.Append(outageCtx(t), last...)
				if err != nil {
					t.Fatalf("Append after recovery: %v", err)
				}
				if got, want := pos[0].Seq, uint64(17); got != want {
					t.Errorf("Append after recovery: got sequence %d, want %d", got, want)
				}
				if err := r.w.Close(outageCtx(t)); err != nil {
					t.Fatalf("Close: %v", err)
				}
				checkStream(t, r, append(events, last...))

				if f.fault != eventlogtest.FaultHang {
					if got := r.lines.count("warn", "retrying"); got != 1 {
						t.Errorf("retry warnings: got %d, want 1 for an outage shorter than the warning interval", got)
					}
					if got := r.lines.count("info", "commit succeeded after the store recovered"); got != 1 {
						t.Errorf("recovery lines: got %d, want 1", got)
					}
				}
			})
		}
	}
}

// TestWriterLostReply has the store apply a commit and then fail it: the
// writer finds the events by their head and neither reports a failure nor
// writes them twice.
func TestWriterLostReply(t *testing.T) {
	for _, b := range outageBackends {
		t.Run(b.name, func(t *testing.T) {
			r := newOutageRig(t, b.wrap, eventlog.Options{RetryMaxDelay: 20 * time.Millisecond})
			events := heartbeats(t, outageStream, 4)

			r.faults.Break(eventlogtest.FaultLostReply, nil)
			pos, err := r.w.Append(outageCtx(t), events[:2]...)
			if err != nil {
				t.Fatalf("Append whose reply was lost: got %v, want nil", err)
			}
			if got, want := pos[1].Seq, uint64(2); got != want {
				t.Errorf("Append whose reply was lost: got last sequence %d, want %d", got, want)
			}
			r.faults.Repair()

			if _, err := r.w.Append(outageCtx(t), events[2:]...); err != nil {
				t.Fatalf("Append after the lost reply: %v", err)
			}
			if err := r.w.Close(outageCtx(t)); err != nil {
				t.Fatalf("Close: %v", err)
			}
			checkStream(t, r, events)
		})
	}
}

// TestWriterPermanentError checks that a commit the store rejects as
// invalid fails at once, is not retried, and uses no sequence.
func TestWriterPermanentError(t *testing.T) {
	tests := []struct {
		name string
		err  error
	}{
		{"invalid argument", fmt.Errorf("store rejects the request: %w", state.ErrInvalidArgument)},
		{"store closed", state.ErrClosed},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := newOutageRig(t, outageBackends[0].wrap, eventlog.Options{})
			events := heartbeats(t, outageStream, 3)
			if _, err := r.w.Append(outageCtx(t), events[0]); err != nil {
				t.Fatalf("first Append: %v", err)
			}

			r.faults.Break(eventlogtest.FaultWrites, tt.err)
			_, err := r.w.Append(outageCtx(t), heartbeats(t, outageStream, 1)...)
			if !errors.Is(err, tt.err) {
				t.Fatalf("Append rejected by the store: got %v, want an error matching %v", err, tt.err)
			}
			if errors.Is(err, eventlog.ErrQueued) {
				t.Errorf("Append rejected by the store: got %v, want no ErrQueued", err)
			}
			if got := r.faults.Failures(); got != 1 {
				t.Errorf("failed store calls: got %d, want 1 (no retry)", got)
			}
			r.faults.Repair()

			pos, err := r.w.Append(outageCtx(t), events[1:]...)
			if err != nil {
				t.Fatalf("Append after the rejection: %v", err)
			}
			if got, want := pos[0].Seq, uint64(2); got != want {
				t.Errorf("Append after the rejection: got sequence %d, want %d", got, want)
			}
			if err := r.w.Close(outageCtx(t)); err != nil {
				t.Fatalf("Close: %v", err)
			}
			checkStream(t, r, events)
		})
	}
}

// TestWriterQueueFull fills the queue during an outage: the next Append
// fails at once with ErrQueueFull, and the queued events land later.
func TestWriterQueueFull(t *testing.T) {
	r := newOutageRig(t, outageBackends[0].wrap, eventlog.Options{MaxQueue: 5, RetryMaxDelay: 20 * time.Millisecond})
	events := heartbeats(t, outageStream, 6)

	r.faults.Break(eventlogtest.FaultAll, nil)
	appendQueued(t, r.w, events[:3]...)
	appendQueued(t, r.w, events[3:5]...)

	start := time.Now()
	_, err := r.w.Append(outageCtx(t), events[5])
	if !errors.Is(err, eventlog.ErrQueueFull) {
		t.Fatalf("Append past MaxQueue: got %v, want an error matching ErrQueueFull", err)
	}
	if waited := time.Since(start); waited > time.Second {
		t.Errorf("Append past MaxQueue waited %v, want it to fail at once", waited)
	}

	r.faults.Repair()
	waitUntil(t, "the queued events to land", func() bool { return r.w.Backlog() == 0 })
	if _, err := r.w.Append(outageCtx(t), events[5]); err != nil {
		t.Fatalf("Append after the queue drained: %v", err)
	}
	if err := r.w.Close(outageCtx(t)); err != nil {
		t.Fatalf("Close: %v", err)
	}
	checkStream(t, r, events)
}

// TestWriterCloseRetries checks that Close keeps retrying while its
// context lasts and returns nil once the store is back.
func TestWriterCloseRetries(t *testing.T) {
	r := newOutageRig(t, outageBackends[0].wrap, eventlog.Options{RetryMaxDelay: 20 * time.Millisecond})
	events := heartbeats(t, outageStream, 3)

	r.faults.Break(eventlogtest.FaultAll, nil)
	appendQueued(t, r.w, events...)

	closed := make(chan error, 1)
	go func() { closed <- r.w.Close(outageCtx(t)) }()

	before := r.faults.Failures()
	waitUntil(t, "retries during Close", func() bool { return r.faults.Failures() >= before+3 })
	select {
	case err := <-closed:
		t.Fatalf("Close returned %v while the store was down, want it to keep retrying", err)
	default:
	}
	if _, err := r.w.Append(outageCtx(t), heartbeats(t, outageStream, 1)...); !errors.Is(err, eventlog.ErrClosed) {
		t.Errorf("Append during Close: got %v, want ErrClosed", err)
	}

	r.faults.Repair()
	select {
	case err := <-closed:
		if err != nil {
			t.Fatalf("Close after the store came back: %v", err)
		}
	case <-time.After(outageWait):
		t.Fatal("Close did not return after the store came back")
	}
	checkStream(t, r, events)
}

// TestWriterCloseGivesUp closes during an outage that outlasts Close's
// context: Close reports how many events were not committed, waiting
// Appends fail with ErrClosed, and nothing is written.
func TestWriterCloseGivesUp(t *testing.T) {
	faults := []struct {
		name  string
		fault eventlogtest.Fault
	}{
		{"all calls fail", eventlogtest.FaultAll},
		{"calls hang", eventlogtest.FaultHang},
	}
	for _, f := range faults {
		t.Run(f.name, func(t *testing.T) {
			r := newOutageRig(t, outageBackends[0].wrap, eventlog.Options{RetryMaxDelay: 20 * time.Millisecond})
			if _, err := r.w.Append(outageCtx(t), heartbeats(t, outageStream, 1)...); err != nil {
				t.Fatalf("Append before the outage: %v", err)
			}

			r.faults.Break(f.fault, nil)
			appendQueued(t, r.w, heartbeats(t, outageStream, 3)...)
			waiting := make(chan error, 1)
			go func() {
				_, err := r.w.Append(outageCtx(t), heartbeats(t, outageStream, 1)...)
				waiting <- err
			}()
			waitUntil(t, "the waiting append to be queued", func() bool { return r.w.Backlog() == 4 })

			ctx, cancel := context.WithTimeout(t.Context(), 100*time.Millisecond)
			defer cancel()
			err := r.w.Close(ctx)
			if !errors.Is(err, context.DeadlineExceeded) {
				t.Fatalf("Close during a lasting outage: got %v, want an error matching context.DeadlineExceeded", err)
			}
			if !strings.Contains(err.Error(), "4 events not committed") {
				t.Errorf("Close during a lasting outage: got %q, want it to count 4 events not committed", err)
			}

			select {
			case err := <-waiting:
				if !errors.Is(err, eventlog.ErrClosed) {
					t.Errorf("waiting Append after Close gave up: got %v, want ErrClosed", err)
				}
			case <-time.After(outageWait):
				t.Fatal("waiting Append did not return after Close gave up")
			}

			r.faults.Repair()
			err = r.w.Close(outageCtx(t))
			if !errors.Is(err, eventlog.ErrClosed) {
				t.Errorf("second Close: got %v, want an error matching ErrClosed", err)
			}
			if err == nil || !strings.Contains(err.Error(), "4 events not committed") {
				t.Errorf("second Close: got %v, want it to count 4 events not committed", err)
			}
			if h, err := r.log.Head(outageCtx(t), outageStream); err != nil || h != 1 {
				t.Errorf("head after Close gave up: got %d (err %v), want 1", h, err)
			}
		})
	}
}

// txCounter counts the transactions that reach a store.
type txCounter struct {
	state.Store
	n atomic.Int64
}

func (c *txCounter) Transact(ctx context.Context, ops []state.Op) error {
	c.n.Add(1)
	return c.Store.Transact(ctx, ops)
}

// TestWriterCommitWindow checks that appends arriving within CommitWindow
// of the first one share its commit.
func TestWriterCommitWindow(t *testing.T) {
	store := &txCounter{Store: eventlogtest.Embedded(t).Store}
	log := eventlog.Open(store, eventlog.Options{CommitWindow: 200 * time.Millisecond})
	w, err := log.NewWriter(outageCtx(t), outageStream)
	if err != nil {
		t.Fatalf("NewWriter: %v", err)
	}
	before := store.n.Load()

	const appends = 5
	errs := make(chan error, appends)
	for _, ev := range heartbeats(t, outageStream, appends) {
		go func() {
			_, err := w.Append(outageCtx(t), ev)
			errs <- err
		}()
	}
	for range appends {
		if err := <-errs; err != nil {
			t.Fatalf("Append: %v", err)
		}
	}
	if got := store.n.Load() - before; got > 2 {
		t.Errorf("transactions for %d appends within the window: got %d, want at most 2", appends, got)
	}
	if err := w.Close(outageCtx(t)); err != nil {
		t.Fatalf("Close: %v", err)
	}
	if h, err := log.Head(outageCtx(t), outageStream); err != nil || h != appends {
		t.Errorf("head: got %d (err %v), want %d", h, err, appends)
	}
}

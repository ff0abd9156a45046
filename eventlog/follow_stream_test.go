package eventlog_test

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/cloudevents/sdk-go/v2/event"

	"github.com/virtufin/websocketmanager/eventlog"
	"github.com/virtufin/websocketmanager/eventlog/eventlogtest"
	"github.com/virtufin/websocketmanager/schemas"
)

// followWait bounds every wait in these tests. A follower that needs longer
// is stuck.
const followWait = 10 * time.Second

func followCtx(t *testing.T) context.Context {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), followWait)
	t.Cleanup(cancel)
	return ctx
}

// heartbeats builds n valid heartbeat events of a stream's incarnation.
func heartbeats(t *testing.T, stream string, n int) []*event.Event {
	t.Helper()
	instance, incarnation := eventlog.SplitStreamName(stream)
	out := make([]*event.Event, n)
	for i := range out {
		ev, err := schemas.NewHeartbeat(schemas.Envelope{InstanceID: instance}, schemas.Heartbeat{
			InstanceID: instance, Incarnation: incarnation, State: schemas.StateServing,
			StartedAt: time.Now(), Address: "127.0.0.1:8080", Version: "test",
		})
		if err != nil {
			t.Fatalf("build heartbeat: %v", err)
		}
		out[i] = ev
	}
	return out
}

func appendAll(t *testing.T, w *eventlog.Writer, events []*event.Event) {
	t.Helper()
	if _, err := w.Append(followCtx(t), events...); err != nil {
		t.Fatalf("append to %s: %v", w.Stream(), err)
	}
}

// collector gathers what a follower delivers, page by page.
type collector struct {
	mu    sync.Mutex
	seqs  []uint64
	pages []int
}

func (c *collector) take(records []eventlog.Record) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.pages = append(c.pages, len(records))
	for _, r := range records {
		c.seqs = append(c.seqs, r.Seq)
	}
	return nil
}

func (c *collector) count() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.seqs)
}

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(followWait)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for %s", followWait, what)
		}
		time.Sleep(2 * time.Millisecond)
	}
}

type followResult struct {
	last uint64
	err  error
}

func startFollow(ctx context.Context, log *eventlog.Log, stream string, after uint64, fn func([]eventlog.Record) error) <-chan followResult {
	out := make(chan followResult, 1)
	go func() {
		last, err := log.FollowStream(ctx, stream, after, fn)
		out <- followResult{last, err}
	}()
	return out
}

func waitResult(t *testing.T, results <-chan followResult) followResult {
	t.Helper()
	select {
	case r := <-results:
		return r
	case <-time.After(followWait):
		t.Fatalf("FollowStream did not return within %v", followWait)
		return followResult{}
	}
}

func TestFollowStreamDeliversInOrder(t *testing.T) {
	store := eventlogtest.OpenEmbedded(t, t.TempDir())
	log := eventlog.Open(store, eventlog.Options{MaxBatch: 3})
	const stream, other = "pod-a/inc-1", "pod-b/inc-1"
	w, err := log.NewWriter(followCtx(t), stream)
	if err != nil {
		t.Fatalf("new writer: %v", err)
	}
	wOther, err := log.NewWriter(followCtx(t), other)
	if err != nil {
		t.Fatalf("new writer: %v", err)
	}
	appendAll(t, w, heartbeats(t, stream, 4))

	ctx, cancel := context.WithCancel(followCtx(t))
	defer cancel()
	var got collector
	results := startFollow(ctx, log, stream, 1, got.take)

	waitFor(t, "the 3 events after sequence 1", func() bool { return got.count() == 3 })
	appendAll(t, wOther, heartbeats(t, other, 2))
	appendAll(t, w, heartbeats(t, stream, 2))
	waitFor(t, "the 2 events appended while following", func() bool { return got.count() == 5 })
	cancel()
	res := waitResult(t, results)

	if res.err != nil {
		t.Fatalf("FollowStream: got error %v, want nil after cancel", res.err)
	}
	if res.last != 6 {
		t.Errorf("FollowStream returned %d, want 6", res.last)
	}
	want := []uint64{2, 3, 4, 5, 6}
	if fmt.Sprint(got.seqs) != fmt.Sprint(want) {
		t.Errorf("delivered sequences %v, want %v", got.seqs, want)
	}
	for i, n := range got.pages {
		if n > 3 {
			t.Errorf("page %d has %d events, want at most MaxBatch 3", i, n)
		}
	}
}

func TestFollowStreamPollsOtherProcesses(t *testing.T) {
	store := eventlogtest.OpenEmbedded(t, t.TempDir())
	writerLog := eventlog.Open(store, eventlog.Options{})
	// A second Log over the same store stands for another process. Its
	// writers' commits do not wake this follower, so only its polls find
	// them.
	readerLog := eventlog.Open(store, eventlog.Options{PollInterval: 10 * time.Millisecond})
	const stream = "pod-a/inc-1"
	w, err := writerLog.NewWriter(followCtx(t), stream)
	if err != nil {
		t.Fatalf("new writer: %v", err)
	}

	ctx, cancel := context.WithCancel(followCtx(t))
	defer cancel()
	var got collector
	results := startFollow(ctx, readerLog, stream, 0, got.take)
	appendAll(t, w, heartbeats(t, stream, 2))
	waitFor(t, "events appended through another Log", func() bool { return got.count() == 2 })
	cancel()

	if res := waitResult(t, results); res.err != nil || res.last != 2 {
		t.Errorf("FollowStream: got (%d, %v), want (2, nil)", res.last, res.err)
	}
}

func TestFollowStreamCallbackErrors(t *testing.T) {
	failure := errors.New("subscriber down")
	tests := []struct {
		name     string
		fnErr    error
		wantErr  error
		wantLast uint64
	}{
		{name: "stop", fnErr: eventlog.ErrStop, wantErr: nil, wantLast: 2},
		{name: "failure", fnErr: failure, wantErr: failure, wantLast: 2},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			store := eventlogtest.OpenEmbedded(t, t.TempDir())
			log := eventlog.Open(store, eventlog.Options{MaxBatch: 2})
			const stream = "pod-a/inc-1"
			w, err := log.NewWriter(followCtx(t), stream)
			if err != nil {
				t.Fatalf("new writer: %v", err)
			}
			appendAll(t, w, heartbeats(t, stream, 4))

			// Accept the first page, reject the second.
			pages := 0
			last, err := log.FollowStream(followCtx(t), stream, 0, func([]eventlog.Record) error {
				pages++
				if pages == 2 {
					return tt.fnErr
				}
				return nil
			})

			if !errors.Is(err, tt.wantErr) || (tt.wantErr == nil && err != nil) {
				t.Errorf("FollowStream error: got %v, want %v", err, tt.wantErr)
			}
			if last != tt.wantLast {
				t.Errorf("FollowStream returned %d, want %d: a rejected page is not delivered", last, tt.wantLast)
			}
		})
	}
}

func TestFollowStreamMissingStreamWaits(t *testing.T) {
	store := eventlogtest.OpenEmbedded(t, t.TempDir())
	log := eventlog.Open(store, eventlog.Options{})
	const stream = "pod-a/inc-1"

	ctx, cancel := context.WithCancel(followCtx(t))
	defer cancel()
	var got collector
	results := startFollow(ctx, log, stream, 0, got.take)
	w, err := log.NewWriter(followCtx(t), stream)
	if err != nil {
		t.Fatalf("new writer: %v", err)
	}
	appendAll(t, w, heartbeats(t, stream, 1))
	waitFor(t, "the first event of a stream created after the follow began", func() bool { return got.count() == 1 })
	cancel()

	if res := waitResult(t, results); res.err != nil || res.last != 1 {
		t.Errorf("FollowStream: got (%d, %v), want (1, nil)", res.last, res.err)
	}
}

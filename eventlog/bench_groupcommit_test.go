package eventlog_test

import (
	"context"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/cloudevents/sdk-go/v2/event"

	"github.com/virtufin/websocketmanager/eventlog"
	"github.com/virtufin/websocketmanager/internal/embedded"
	"github.com/virtufin/websocketmanager/internal/state"
	"github.com/virtufin/websocketmanager/projections"
	"github.com/virtufin/websocketmanager/schemas"
)

// groupCommitStore counts the transactions that reach the store, so the
// benchmark can report how many events each commit carried.
type groupCommitStore struct {
	state.Store
	commits atomic.Int64
}

func (s *groupCommitStore) Transact(ctx context.Context, ops []state.Op) error {
	s.commits.Add(1)
	return s.Store.Transact(ctx, ops)
}

// BenchmarkGroupCommit measures durable appends per second on the embedded
// store, with validation and projection as wsm runs them, when many
// goroutines append one event at a time.
//
// The baseline is the same Writer with MaxBatch 1: the same appenders, the
// same events and the same per-event work, but one fsync'd transaction per
// event. The appenders=1 case shows what a lone appender gets, waiting for
// each commit before it sends the next event.
//
// Each appender opens a connection and closes it again in turn, so the
// instance's shard keys stay small however large b.N is, and the cost of an
// event does not grow with the length of the run.
func BenchmarkGroupCommit(b *testing.B) {
	cases := []struct {
		name      string
		appenders int
		maxBatch  int // 0 for the default
	}{
		{"group/appenders=64", 64, 0},
		{"one-per-commit/appenders=64", 64, 1},
		{"group/appenders=1", 1, 0},
	}
	for _, c := range cases {
		b.Run(c.name, func(b *testing.B) {
			benchGroupCommit(b, c.appenders, c.maxBatch)
		})
	}
}

func benchGroupCommit(b *testing.B, appenders, maxBatch int) {
	ctx := context.Background()
	inner, err := embedded.Open(b.TempDir(), embedded.Options{})
	if err != nil {
		b.Fatal(err)
	}
	defer inner.Close()
	store := &groupCommitStore{Store: inner}
	log := eventlog.Open(store, eventlog.Options{
		Validate:  schemas.Validate,
		Projector: projections.Projector{},
		MaxBatch:  maxBatch,
	})
	const instance, incarnation = "pod-bench", "0190f3a2-7c1e-7b3a-9f6e-2d1c0b9a8e7f"
	stream := eventlog.StreamName(instance, incarnation)
	w, err := log.NewWriter(ctx, stream)
	if err != nil {
		b.Fatal(err)
	}
	before := store.commits.Load()

	var handedOut atomic.Int64
	failed := make(chan error, appenders)
	var wg sync.WaitGroup
	b.ReportAllocs()
	b.ResetTimer()
	for g := range appenders {
		wg.Go(func() {
			var connID string // the appender's open connection, if any
			for n := 0; handedOut.Add(1) <= int64(b.N); n++ {
				ev, err := groupCommitEvent(instance, incarnation, g, n, &connID)
				if err == nil {
					_, err = w.Append(ctx, ev)
				}
				if err != nil {
					failed <- err
					return
				}
			}
		})
	}
	wg.Wait()
	b.StopTimer()

	select {
	case err := <-failed:
		b.Fatal(err)
	default:
	}
	commits := store.commits.Load() - before
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "events/s")
	b.ReportMetric(float64(b.N)/float64(commits), "events/commit")

	if err := w.Close(ctx); err != nil {
		b.Fatal(err)
	}
	if head, err := log.Head(ctx, stream); err != nil || head != uint64(b.N) {
		b.Fatalf("stream head = %d, %v; want %d", head, err, b.N)
	}
}

// groupCommitEvent returns appender g's next event: a connect when it holds
// no connection, else the disconnect of the one it holds.
func groupCommitEvent(instance, incarnation string, g, n int, connID *string) (*event.Event, error) {
	env := schemas.Envelope{InstanceID: instance}
	user := fmt.Sprintf("user-%03d", g)
	if *connID != "" {
		id := *connID
		*connID = ""
		return schemas.NewDisconnected(env, schemas.Disconnected{
			ConnectionID: id, InstanceID: instance, Incarnation: incarnation, UserID: user,
			CloseCode: 1000, Reason: schemas.ReasonClientClosed, DisconnectedAt: time.Now(),
		})
	}
	*connID = fmt.Sprintf("conn-%03d-%09d", g, n)
	return schemas.NewConnected(env, schemas.Connected{
		ConnectionID: *connID, InstanceID: instance, Incarnation: incarnation, UserID: user,
		RemoteAddr: "10.1.2.3:54321", UserAgent: "Mozilla/5.0 (X11; Linux x86_64)", ConnectedAt: time.Now(),
	})
}

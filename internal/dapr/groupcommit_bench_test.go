package dapr_test

import (
	"context"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/cloudevents/sdk-go/v2/event"
	"github.com/rs/zerolog"

	"github.com/virtufin/websocketmanager/eventlog"
	"github.com/virtufin/websocketmanager/internal/dapr"
	"github.com/virtufin/websocketmanager/internal/daprtest"
	"github.com/virtufin/websocketmanager/projections"
	"github.com/virtufin/websocketmanager/schemas"
)

// groupCommitAppenders is how many goroutines append at once. It equals
// what BenchmarkAppendDapr runs on 2 CPUs (16 per CPU), and it stays fixed
// on other machines, so that batch sizes compare across them.
const groupCommitAppenders = 32

// groupCommitTimeout bounds one run of a case. The one-per-commit case
// commits a few hundred events per second on 2 cores, so 10,000 events fit.
const groupCommitTimeout = 5 * time.Minute

// BenchmarkGroupCommitDapr measures connected events per second through one
// Writer on Dapr's Redis state store, with validation and the real
// projector, when 32 goroutines append one event each at a time.
//
// The group case uses the Writer's default MaxBatch, so appends that queue
// while a commit is in flight share the next transaction. The baseline,
// one-per-commit, is the same Writer with MaxBatch 1: the same appenders,
// events and projector reads, but one transaction per event. Both cases use
// one sidecar and run back to back. Repeat the whole command to get
// repetitions, because -count runs all repetitions of one case before the
// other starts, and the two would then meet different load.
//
// Every event adds a connection to the instance's shards and to one of 100
// user indexes of the run, and those keys grow during a run, so compare
// runs of the same -benchtime=Nx only. The dapr-calls metrics count gRPC
// calls to the sidecar (retries included), not Redis commands.
func BenchmarkGroupCommitDapr(b *testing.B) {
	d := daprtest.Sidecar(b, daprtest.Options{})
	c, err := dapr.Open(b.Context(), dapr.Config{Address: d.GRPCAddr, NoPubSub: true}, zerolog.Nop())
	if err != nil {
		b.Fatal(err)
	}
	defer c.Close()

	var runs atomic.Int64 // fresh instance, connection and user ids per run, so no run reads another's keys
	for _, tc := range []struct {
		name     string
		maxBatch int // 0 for the default
	}{
		{"group", 0},
		{"one-per-commit", 1},
	} {
		b.Run(tc.name, func(b *testing.B) {
			instance := fmt.Sprintf("bench-%s-%d", tc.name, runs.Add(1))
			benchGroupCommitDapr(b, c.Store(), instance, tc.maxBatch)
		})
	}
}

func benchGroupCommitDapr(b *testing.B, store *dapr.Store, instance string, maxBatch int) {
	ctx, cancel := context.WithTimeout(context.Background(), groupCommitTimeout)
	defer cancel()
	log := eventlog.Open(store, eventlog.Options{
		Projector: projections.Projector{},
		Validate:  schemas.Validate,
		MaxBatch:  maxBatch,
	})
	stream := eventlog.StreamName(instance, "0190f3a2-7c1e-7b3a-9f6e-2d1c0b9a8e7f")
	w, err := log.NewWriter(ctx, stream)
	if err != nil {
		b.Fatal(err)
	}

	var handedOut atomic.Int64
	failed := make(chan error, groupCommitAppenders)
	var wg sync.WaitGroup
	before := store.Calls()
	b.ReportAllocs()
	b.ResetTimer()
	for range groupCommitAppenders {
		wg.Go(func() {
			for {
				n := handedOut.Add(1)
				if n > int64(b.N) {
					return
				}
				conn, user := fmt.Sprintf("%s-conn-%07d", instance, n), fmt.Sprintf("%s-user-%d", instance, n%100)
				ev, err := benchConnected(stream, conn, user)
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
	calls := store.Calls()

	select {
	case err := <-failed:
		b.Fatal(err)
	default:
	}
	if err := w.Close(ctx); err != nil {
		b.Fatal(err)
	}
	if head, err := log.Head(ctx, stream); err != nil || head != uint64(b.N) {
		b.Fatalf("stream head = %d, %v; want %d", head, err, b.N)
	}

	per100 := func(v uint64) float64 { return 100 * float64(v) / float64(b.N) }
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "events/s")
	b.ReportMetric(per100(calls.Total()-before.Total()), "dapr-calls/100events")
	b.ReportMetric(per100(calls.Get-before.Get), "get/100events")
	b.ReportMetric(per100(calls.BulkGet-before.BulkGet), "bulkget/100events")
	b.ReportMetric(per100(calls.Transact-before.Transact), "transact/100events")
}

// benchConnected builds a connected event without a testing.TB, so that
// appender goroutines can report errors instead of failing the benchmark.
func benchConnected(stream, connID, userID string) (*event.Event, error) {
	instance, incarnation := eventlog.SplitStreamName(stream)
	at := time.Now().UTC()
	return schemas.NewConnected(schemas.Envelope{InstanceID: instance, Time: at}, schemas.Connected{
		ConnectionID: connID, InstanceID: instance, Incarnation: incarnation, UserID: userID,
		RemoteAddr: "127.0.0.1:40000", UserAgent: "dapr-bench", ConnectedAt: at,
	})
}

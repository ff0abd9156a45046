package eventlog_test

import (
	"context"
	"strconv"
	"sync/atomic"
	"testing"
	"time"

	"github.com/cloudevents/sdk-go/v2/event"

	"github.com/virtufin/websocketmanager/eventlog"
	"github.com/virtufin/websocketmanager/internal/embedded"
	"github.com/virtufin/websocketmanager/internal/state"
	"github.com/virtufin/websocketmanager/schemas"
)

// transactCounter counts the transactions that reach a store.
type transactCounter struct {
	state.Store
	n atomic.Int64
}

func (s *transactCounter) Transact(ctx context.Context, ops []state.Op) error {
	s.n.Add(1)
	return s.Store.Transact(ctx, ops)
}

// appendBatchSize is the number of events each Append of the batch cases
// carries, all committed in one transaction.
const appendBatchSize = 128

// BenchmarkAppend measures the Writer on the embedded store, with and
// without fsync, without validation or projection.
//
// In the fsync and nosync cases, one op is one event, appended one per call
// from 16 goroutines per CPU. The events/commit metric shows how much group
// commit batches. In the batch cases, one op is one Append of
// appendBatchSize events from a single goroutine, which the Writer commits
// in one transaction.
func BenchmarkAppend(b *testing.B) {
	for _, fsync := range []bool{true, false} {
		name := "fsync"
		if !fsync {
			name = "nosync"
		}
		b.Run(name, func(b *testing.B) {
			benchAppendOne(b, fsync)
		})
	}
	for _, fsync := range []bool{true, false} {
		name := "batch=" + strconv.Itoa(appendBatchSize) + "/fsync"
		if !fsync {
			name = "batch=" + strconv.Itoa(appendBatchSize) + "/nosync"
		}
		b.Run(name, func(b *testing.B) {
			benchAppendBatch(b, fsync)
		})
	}
}

func benchAppendOne(b *testing.B, fsync bool) {
	w, counter, template, closeAll := openAppendWriter(b, fsync)
	defer closeAll()
	ctx := context.Background()
	var ids atomic.Int64
	before := counter.n.Load()

	b.ReportAllocs()
	b.SetParallelism(16)
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			ev := template.Clone()
			ev.SetID(strconv.FormatInt(ids.Add(1), 10))
			if _, err := w.Append(ctx, &ev); err != nil {
				b.Error(err)
				return
			}
		}
	})
	b.StopTimer()
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "events/s")
	if commits := counter.n.Load() - before; commits > 0 {
		b.ReportMetric(float64(b.N)/float64(commits), "events/commit")
	}
}

func benchAppendBatch(b *testing.B, fsync bool) {
	w, counter, template, closeAll := openAppendWriter(b, fsync)
	defer closeAll()
	ctx := context.Background()
	batch := make([]*event.Event, appendBatchSize)
	var id int64
	before := counter.n.Load()

	b.ReportAllocs()
	for b.Loop() {
		for i := range batch {
			ev := template.Clone()
			id++
			ev.SetID(strconv.FormatInt(id, 10))
			batch[i] = &ev
		}
		if _, err := w.Append(ctx, batch...); err != nil {
			b.Fatal(err)
		}
	}
	commits := counter.n.Load() - before
	events := float64(b.N * appendBatchSize)
	b.ReportMetric(events/b.Elapsed().Seconds(), "events/s")
	b.ReportMetric(events/float64(commits), "events/commit")
}

// openAppendWriter opens a Writer without validation or projection on a
// fresh embedded store, and returns it with the store's transaction counter,
// a connected event to clone and a function that closes the writer and the
// store.
func openAppendWriter(b *testing.B, fsync bool) (*eventlog.Writer, *transactCounter, *event.Event, func()) {
	b.Helper()
	store, err := embedded.Open(b.TempDir(), embedded.Options{NoSync: !fsync})
	if err != nil {
		b.Fatal(err)
	}
	counter := &transactCounter{Store: store}
	log := eventlog.Open(counter, eventlog.Options{})
	ctx := context.Background()
	w, err := log.NewWriter(ctx, "pod-a/inc-1")
	if err != nil {
		store.Close()
		b.Fatal(err)
	}
	closeAll := func() {
		w.Close(ctx)
		store.Close()
	}

	at := time.Now().UTC()
	template, err := schemas.NewConnected(schemas.Envelope{InstanceID: "pod-a", Time: at}, schemas.Connected{
		ConnectionID: "c", InstanceID: "pod-a", Incarnation: "inc-1", UserID: "u1",
		RemoteAddr: "127.0.0.1:40000", UserAgent: "bench", ConnectedAt: at,
	})
	if err != nil {
		closeAll()
		b.Fatal(err)
	}
	return w, counter, template, closeAll
}

package eventlog_test

import (
	"context"
	"strconv"
	"sync/atomic"
	"testing"
	"time"

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

// BenchmarkAppend appends one event per call from 16 goroutines per CPU
// through one Writer on the embedded store, with and without fsync. The
// events/commit metric shows how much group commit batches.
func BenchmarkAppend(b *testing.B) {
	for _, fsync := range []bool{true, false} {
		name := "fsync"
		if !fsync {
			name = "nosync"
		}
		b.Run(name, func(b *testing.B) {
			store, err := embedded.Open(b.TempDir(), embedded.Options{NoSync: !fsync})
			if err != nil {
				b.Fatal(err)
			}
			defer store.Close()
			counter := &transactCounter{Store: store}
			log := eventlog.Open(counter, eventlog.Options{})
			ctx := context.Background()
			w, err := log.NewWriter(ctx, "pod-a/inc-1")
			if err != nil {
				b.Fatal(err)
			}
			defer w.Close(ctx)

			at := time.Now().UTC()
			template, err := schemas.NewConnected(schemas.Envelope{InstanceID: "pod-a", Time: at}, schemas.Connected{
				ConnectionID: "c", InstanceID: "pod-a", Incarnation: "inc-1", UserID: "u1",
				RemoteAddr: "127.0.0.1:40000", UserAgent: "bench", ConnectedAt: at,
			})
			if err != nil {
				b.Fatal(err)
			}
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
			if commits := counter.n.Load() - before; commits > 0 {
				b.ReportMetric(float64(b.N)/float64(commits), "events/commit")
			}
		})
	}
}

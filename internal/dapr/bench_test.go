package dapr_test

import (
	"fmt"
	"sync/atomic"
	"testing"

	"github.com/rs/zerolog"

	"github.com/virtufin/websocketmanager/eventlog"
	"github.com/virtufin/websocketmanager/internal/dapr"
	"github.com/virtufin/websocketmanager/internal/daprtest"
	"github.com/virtufin/websocketmanager/projections"
	"github.com/virtufin/websocketmanager/schemas"
)

// BenchmarkAppendDapr appends connected events, one per call from 16
// goroutines per CPU, through one Writer with the real projector on Dapr's
// Redis state store. dapr-calls/100events counts every gRPC call to the
// sidecar, reads of the projector included.
func BenchmarkAppendDapr(b *testing.B) {
	d := daprtest.Sidecar(b, daprtest.Options{})
	c, err := dapr.Open(b.Context(), dapr.Config{Address: d.GRPCAddr, NoPubSub: true}, zerolog.Nop())
	if err != nil {
		b.Fatal(err)
	}
	defer c.Close()
	store := c.Store()
	log := eventlog.Open(store, eventlog.Options{Projector: projections.Projector{}, Validate: schemas.Validate})
	const stream = "pod-a/inc-1"
	w, err := log.NewWriter(b.Context(), stream)
	if err != nil {
		b.Fatal(err)
	}
	defer w.Close(b.Context())

	var ids atomic.Int64
	before := store.Calls()
	b.ReportAllocs()
	b.SetParallelism(16)
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			n := ids.Add(1)
			ev := connectedEvent(b, stream, fmt.Sprintf("conn-%d", n), fmt.Sprintf("user-%d", n%100))
			if _, err := w.Append(b.Context(), ev); err != nil {
				b.Error(err)
				return
			}
		}
	})
	b.StopTimer()
	calls := store.Calls()
	b.ReportMetric(100*float64(calls.Total()-before.Total())/float64(b.N), "dapr-calls/100events")
	if commits := calls.Transact - before.Transact; commits > 0 {
		b.ReportMetric(float64(b.N)/float64(commits), "events/transaction")
	}
}

package storechoice

import (
	"context"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/cloudevents/sdk-go/v2/event"

	"github.com/virtufin/websocketmanager/eventlog"
	"github.com/virtufin/websocketmanager/projections"
	"github.com/virtufin/websocketmanager/schemas"
)

// appenders is how many goroutines append at once in BenchmarkWriterAppend.
const appenders = 64

// BenchmarkWriterAppend runs the whole append path on each store: 64
// goroutines append one event at a time through one group-committing Writer
// that validates every event and projects it into the views. Each goroutine
// opens a connection and closes it again in turn, so the views stay the same
// size however long the run.
func BenchmarkWriterAppend(b *testing.B) {
	for _, e := range engines() {
		b.Run(e.name, func(b *testing.B) {
			ctx := context.Background()
			st, err := e.open(b.TempDir())
			if err != nil {
				b.Fatal(err)
			}
			defer st.Close()
			log := eventlog.Open(st, eventlog.Options{Validate: schemas.Validate, Projector: projections.Projector{}})
			stream := eventlog.StreamName(benchInstance, benchIncarnation)
			w, err := log.NewWriter(ctx, stream)
			if err != nil {
				b.Fatal(err)
			}

			var handedOut atomic.Int64
			failed := make(chan error, appenders)
			var wg sync.WaitGroup
			b.ReportAllocs()
			b.ResetTimer()
			for g := range appenders {
				wg.Go(func() {
					var open string
					for n := 0; handedOut.Add(1) <= int64(b.N); n++ {
						ev, err := churnEvent(g, n, &open)
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
			b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "events/s")
			if err := w.Close(ctx); err != nil {
				b.Fatal(err)
			}
			if head, err := log.Head(ctx, stream); err != nil || head != uint64(b.N) {
				b.Fatalf("stream head = %d, %v; want %d", head, err, b.N)
			}
		})
	}
}

// churnEvent returns appender g's next event: a connect when it holds no
// connection, else the disconnect of the one it holds.
func churnEvent(g, n int, open *string) (*event.Event, error) {
	env := schemas.Envelope{InstanceID: benchInstance}
	user := userID(uint64(g))
	if *open != "" {
		id := *open
		*open = ""
		return schemas.NewDisconnected(env, schemas.Disconnected{
			ConnectionID: id, InstanceID: benchInstance, Incarnation: benchIncarnation, UserID: user,
			CloseCode: 1000, Reason: schemas.ReasonClientClosed, DisconnectedAt: time.Now(),
		})
	}
	*open = fmt.Sprintf("conn-%03d-%09d", g, n)
	return schemas.NewConnected(env, schemas.Connected{
		ConnectionID: *open, InstanceID: benchInstance, Incarnation: benchIncarnation, UserID: user,
		RemoteAddr: "10.1.2.3:54321", UserAgent: "Mozilla/5.0 (X11; Linux x86_64)", ConnectedAt: time.Now(),
	})
}

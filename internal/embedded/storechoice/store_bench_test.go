package storechoice

import (
	"context"
	"fmt"
	"testing"

	"github.com/virtufin/websocketmanager/internal/state"
	"github.com/virtufin/websocketmanager/projections"
)

// preload is how many events a store holds before a timed run starts, so
// that no engine is measured on an empty file.
const preload = 20_000

func openLoaded(b *testing.B, e engine) (state.Store, *workload) {
	b.Helper()
	st, err := e.open(b.TempDir())
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { st.Close() })
	w := newWorkload(b)
	if err := w.fill(context.Background(), st, preload, 1000); err != nil {
		b.Fatal(err)
	}
	return st, w
}

// BenchmarkCommit measures one durable commit of n events with their view
// keys, the unit of work of the event log's group commit.
func BenchmarkCommit(b *testing.B) {
	ctx := context.Background()
	for _, n := range []int{1, 16, 128} {
		for _, e := range engines() {
			b.Run(fmt.Sprintf("events=%d/%s", n, e.name), func(b *testing.B) {
				st, w := openLoaded(b, e)
				b.ReportAllocs()
				commits := 0
				for b.Loop() {
					if err := w.commit(ctx, st, n); err != nil {
						b.Fatal(err)
					}
					commits++
				}
				b.ReportMetric(float64(commits*n)/b.Elapsed().Seconds(), "events/s")
			})
		}
	}
}

// BenchmarkBulkGet64 measures one bulk read of 64 keys: all connection index
// shards of an instance, as the reclaimer reads them, and 64 consecutive
// events, as a replay reads them.
func BenchmarkBulkGet64(b *testing.B) {
	ctx := context.Background()
	for _, e := range engines() {
		b.Run("shards/"+e.name, func(b *testing.B) {
			st, _ := openLoaded(b, e)
			keys := projections.ShardKeys(benchInstance)
			b.ReportAllocs()
			for b.Loop() {
				items, err := st.BulkGet(ctx, keys)
				if err != nil || !items[63].Exists() {
					b.Fatalf("bulk read: %v, last shard present %v", err, err == nil && items[63].Exists())
				}
			}
		})
		b.Run("events/"+e.name, func(b *testing.B) {
			st, w := openLoaded(b, e)
			keys := make([][]string, preload/64)
			for i := range keys {
				for j := range 64 {
					keys[i] = append(keys[i], w.eventKey(uint64(i*64+j+1)))
				}
			}
			b.ReportAllocs()
			i := 0
			for b.Loop() {
				items, err := st.BulkGet(ctx, keys[i%len(keys)])
				if err != nil || !items[63].Exists() {
					b.Fatalf("bulk read: %v", err)
				}
				i++
			}
		})
	}
}

// footprintEvents is the log size the footprint is taken at.
const footprintEvents = 100_000

// BenchmarkFootprint fills an empty store with 100,000 events in commits of
// 128, closes it and reports the space its files take. Run it with
// -benchtime 1x: each iteration is a whole fill.
func BenchmarkFootprint(b *testing.B) {
	ctx := context.Background()
	for _, e := range engines() {
		b.Run(e.name, func(b *testing.B) {
			var apparent, allocated int64
			var files int
			var payload float64
			for b.Loop() {
				dir := b.TempDir()
				st, err := e.open(dir)
				if err != nil {
					b.Fatal(err)
				}
				w := newWorkload(b)
				payload = w.avgEventSize() * footprintEvents
				if err := w.fill(ctx, st, footprintEvents, 128); err != nil {
					b.Fatal(err)
				}
				if err := st.Close(); err != nil {
					b.Fatal(err)
				}
				apparent, allocated, files, err = footprint(dir)
				if err != nil {
					b.Fatal(err)
				}
			}
			const mib = 1 << 20
			b.ReportMetric(float64(footprintEvents*b.N)/b.Elapsed().Seconds(), "events/s")
			b.ReportMetric(float64(apparent)/mib, "MiB-size")
			b.ReportMetric(float64(allocated)/mib, "MiB-on-disk")
			b.ReportMetric(payload/mib, "MiB-events")
			b.ReportMetric(float64(files), "files")
		})
	}
}

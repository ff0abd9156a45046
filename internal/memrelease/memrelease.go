// Package memrelease returns free heap memory to the operating system once
// a burst of allocation has settled.
//
// Go's collector lets the heap grow to about twice the live heap plus the
// goroutine stacks before it collects, and the runtime's background
// scavenger returns only the free memory above that goal. A connect storm
// allocates far more than it keeps: each connection builds, validates,
// encodes and folds its events. So after the storm the process holds about
// twice the memory its idle connections need, until the next burst reuses
// it. Releasing it once allocation has gone quiet makes the resident size
// follow the connections held, which is what memory requests, limits and
// autoscalers see.
package memrelease

import (
	"context"
	"runtime/debug"
	"runtime/metrics"
	"time"

	"github.com/rs/zerolog"
)

// Config sets when Run returns memory.
type Config struct {
	// Quiet is how long the allocation rate must stay at or below QuietRate
	// before free memory is returned. Zero disables Run.
	Quiet time.Duration
	// QuietRate is the allocation rate, in bytes per second, at or below
	// which the process counts as quiet. An idle instance allocates a
	// little for pings and heartbeats.
	QuietRate float64
	// MinFree is the least free heap memory, in bytes, worth a release: a
	// release costs one full collection.
	MinFree uint64
	// Interval is the time between two reads of the runtime's counters.
	Interval time.Duration
}

// Defaults: one read a second, quiet below 1 MiB/s for 5 s, and at least
// 32 MiB to give back.
const (
	DefaultQuiet     = 5 * time.Second
	DefaultQuietRate = 1 << 20
	DefaultMinFree   = 32 << 20
	DefaultInterval  = time.Second
)

// Sample is one reading of the runtime's memory counters.
type Sample struct {
	At time.Duration // monotonic time of the reading
	// Allocated is the total of bytes ever allocated on the heap.
	Allocated uint64
	// Free is heap memory that a collection could give back: the heap
	// still held from the operating system minus the live heap the last
	// collection marked. It counts dead objects not yet collected, free
	// spans not yet returned, and unused space in spans.
	Free uint64
}

// decider holds the pure decision rule, apart from the runtime, so it can
// be tested with made-up samples.
type decider struct {
	cfg Config

	started     bool
	last        Sample
	quietSince  time.Duration
	allocatedAt uint64 // Allocated at the last release, or at the start
}

// observe takes the next sample and reports whether to release now.
func (d *decider) observe(s Sample) bool {
	if !d.started {
		d.started = true
		d.last = s
		d.quietSince = s.At
		d.allocatedAt = s.Allocated
		return false
	}
	elapsed := (s.At - d.last.At).Seconds()
	if elapsed > 0 {
		rate := float64(s.Allocated-d.last.Allocated) / elapsed
		if rate > d.cfg.QuietRate {
			d.quietSince = s.At
		}
	}
	d.last = s

	if s.At-d.quietSince < d.cfg.Quiet {
		return false
	}
	// Release only after a burst: something sizeable was allocated since
	// the last release, and enough of the heap is free now.
	if s.Allocated-d.allocatedAt < d.cfg.MinFree || s.Free < d.cfg.MinFree {
		return false
	}
	return true
}

// released records a release whose collection ended with Allocated at
// allocated.
func (d *decider) released(allocated uint64) {
	d.allocatedAt = allocated
}

// Run polls the runtime's counters every cfg.Interval until ctx ends, and
// calls debug.FreeOSMemory when allocation has stayed quiet for cfg.Quiet
// after a burst. It returns at once when cfg.Quiet is zero.
func Run(ctx context.Context, cfg Config, logger zerolog.Logger) {
	if cfg.Quiet <= 0 {
		return
	}
	if cfg.Interval <= 0 {
		cfg.Interval = DefaultInterval
	}
	d := &decider{cfg: cfg}
	start := time.Now()
	t := time.NewTicker(cfg.Interval)
	defer t.Stop()
	for {
		s := read(time.Since(start))
		if d.observe(s) {
			before := residentHeap()
			began := time.Now()
			debug.FreeOSMemory()
			after := read(time.Since(start))
			d.released(after.Allocated)
			logger.Info().
				Uint64("free_bytes", s.Free).
				Uint64("released_bytes", sub(before, residentHeap())).
				Dur("took", time.Since(began)).
				Msg("returned free heap memory to the operating system after a burst")
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

var sampleNames = []string{
	"/gc/heap/allocs:bytes",
	"/memory/classes/heap/objects:bytes",
	"/memory/classes/heap/unused:bytes",
	"/memory/classes/heap/free:bytes",
	"/gc/heap/live:bytes",
}

func read(at time.Duration) Sample {
	m := make([]metrics.Sample, len(sampleNames))
	for i, name := range sampleNames {
		m[i].Name = name
	}
	metrics.Read(m)
	resident := value(m[1]) + value(m[2]) + value(m[3])
	return Sample{At: at, Allocated: value(m[0]), Free: sub(resident, value(m[4]))}
}

// residentHeap is the heap memory, stacks excluded, that the process holds
// from the operating system: everything the heap mapped minus what it
// returned.
func residentHeap() uint64 {
	m := []metrics.Sample{
		{Name: "/memory/classes/heap/objects:bytes"},
		{Name: "/memory/classes/heap/unused:bytes"},
		{Name: "/memory/classes/heap/free:bytes"},
	}
	metrics.Read(m)
	var total uint64
	for _, s := range m {
		total += value(s)
	}
	return total
}

func value(s metrics.Sample) uint64 {
	if s.Value.Kind() != metrics.KindUint64 {
		return 0
	}
	return s.Value.Uint64()
}

func sub(a, b uint64) uint64 {
	if b > a {
		return 0
	}
	return a - b
}

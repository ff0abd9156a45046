package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"sync"
	"time"
)

func runChurn(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("churn", flag.ContinueOnError)
	cfg := &clientConfig{}
	count := fs.Int("count", 0, "stop after this many cycles; 0 runs for --duration")
	fs.IntVar(&cfg.concurrency, "concurrency", 32, "cycles in progress at once")
	validate := registerClientFlags(fs, cfg)
	if err := parseFlags(fs, args, stderr); err != nil {
		return err
	}
	var extra []error
	if *count < 0 || *count > maxCount {
		extra = append(extra, fmt.Errorf("--count %d: must be 0 (run for --duration) to %d", *count, maxCount))
	}
	if err := validate(ctx, extra...); err != nil {
		return err
	}

	r := churn(ctx, cfg, *count, progressWriter(cfg, stderr))
	if err := r.write(stdout, cfg.jsonOutput); err != nil {
		return err
	}
	return r.failure()
}

// churn runs connect, welcome, close cycles at cfg.rate (unpaced when 0)
// with cfg.concurrency cycles in progress, until count cycles have
// started (when count > 0), cfg.duration has passed or ctx ends.
func churn(ctx context.Context, cfg *clientConfig, count int, progressOut io.Writer) *report {
	start := time.Now()
	runCtx, cancel := context.WithTimeout(ctx, cfg.duration)
	defer cancel()

	st := newStats()
	var background sync.WaitGroup
	progressCtx, stopProgress := context.WithCancel(runCtx)
	if progressOut != nil {
		background.Go(func() { progress(progressCtx, progressOut, st) })
	}

	d := &dialer{cfg: cfg}
	p := newPacer(cfg.rate, int64(count))
	var workers sync.WaitGroup
	for range cfg.concurrency {
		workers.Go(func() {
			for p.take(runCtx) {
				st.attempted.Add(1)
				cycleStart := time.Now()
				c, lat, err := d.connect(runCtx)
				if err != nil {
					st.addFailure(err, runEnded(runCtx))
					continue
				}
				st.addConnect(lat)
				if err := c.close(time.Now().Add(defaultCloseTimeout)); err != nil {
					st.addFailure(err, false)
					continue
				}
				st.addCycle(time.Since(cycleStart))
			}
		})
	}
	workers.Wait()
	stopProgress()
	background.Wait()
	elapsed := time.Since(start)

	r := st.report("churn", cfg, elapsed, ctx.Err() != nil)
	st.mu.Lock()
	cycle := summarize(st.cycle)
	st.mu.Unlock()
	r.Cycle = &cycle
	r.CyclesPerSec = float64(cycle.Count) / elapsed.Seconds()
	return r
}

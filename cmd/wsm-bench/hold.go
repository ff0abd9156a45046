package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"sync"
	"sync/atomic"
	"time"
)

func runHold(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("hold", flag.ContinueOnError)
	cfg := &clientConfig{}
	conns := fs.Int("conns", 100, "number of clients to open and hold")
	connLimit := fs.Int("conn-limit", defaultConnLimit, "maximum --conns this run accepts; raise it on purpose for large runs")
	fs.IntVar(&cfg.concurrency, "concurrency", 256, "connects in progress at once")
	validate := registerClientFlags(fs, cfg)
	if err := parseFlags(fs, args, stderr); err != nil {
		return err
	}
	var extra []error
	if *conns < 1 || *conns > *connLimit {
		extra = append(extra, fmt.Errorf("--conns %d: must be 1 to --conn-limit %d", *conns, *connLimit))
	}
	if err := validate(ctx, extra...); err != nil {
		return err
	}

	r := hold(ctx, cfg, *conns, progressWriter(cfg, stderr))
	if err := r.write(stdout, cfg.jsonOutput); err != nil {
		return err
	}
	return r.failure()
}

// progressWriter returns where progress lines go: nowhere with --quiet.
func progressWriter(cfg *clientConfig, stderr io.Writer) io.Writer {
	if cfg.quiet {
		return nil
	}
	return stderr
}

// hold opens n clients, keeps them open until cfg.duration has passed
// since the start or ctx ends, then closes them all with a close
// handshake. Progress lines go to progressOut unless it is nil.
func hold(ctx context.Context, cfg *clientConfig, n int, progressOut io.Writer) *report {
	start := time.Now()
	runCtx, cancel := context.WithTimeout(ctx, cfg.duration)
	defer cancel()

	st := newStats()
	var background sync.WaitGroup
	if progressOut != nil {
		background.Go(func() { progress(runCtx, progressOut, st) })
	}

	d := &dialer{cfg: cfg}
	p := newPacer(cfg.rate, int64(n))
	var mu sync.Mutex
	clients := make([]*client, 0, n)
	var workers sync.WaitGroup
	for range min(cfg.concurrency, n) {
		workers.Go(func() {
			for p.take(runCtx) {
				st.attempted.Add(1)
				c, lat, err := d.connect(runCtx)
				if err != nil {
					st.addFailure(err, runEnded(runCtx))
					continue
				}
				st.addConnect(lat)
				mu.Lock()
				clients = append(clients, c)
				mu.Unlock()
			}
		})
	}
	workers.Wait()
	<-runCtx.Done()
	interrupted := ctx.Err() != nil
	elapsed := time.Since(start)

	r := st.report("hold", cfg, elapsed, interrupted)
	for _, c := range clients {
		if c.dropped.Load() {
			r.Dropped++
		} else {
			r.Held++
		}
	}
	r.ClosedCleanly, r.CloseTimeouts = closeAll(clients, cfg.concurrency)
	background.Wait()
	return r
}

// closeAll closes clients with up to parallel close handshakes at once,
// all bounded by defaultCloseTimeout. Clients the server already dropped
// are skipped.
func closeAll(clients []*client, parallel int) (clean, timeouts int64) {
	deadline := time.Now().Add(defaultCloseTimeout)
	var next atomic.Int64
	var cleanCount, timeoutCount atomic.Int64
	var wg sync.WaitGroup
	for range min(parallel, len(clients)) {
		wg.Go(func() {
			for {
				i := next.Add(1) - 1
				if i >= int64(len(clients)) {
					return
				}
				c := clients[i]
				if c.dropped.Load() {
					continue
				}
				if err := c.close(deadline); errors.Is(err, errCloseTimeout) {
					timeoutCount.Add(1)
				} else {
					cleanCount.Add(1)
				}
			}
		})
	}
	wg.Wait()
	return cleanCount.Load(), timeoutCount.Load()
}

package main

import (
	"context"
	"sync/atomic"
	"time"
)

// pacer hands out numbered attempt slots at a fixed rate, up to a limit.
// It is safe for concurrent use by the workers of a run.
type pacer struct {
	start    time.Time
	interval time.Duration // 0 hands out slots at once
	limit    int64         // 0 means no limit
	next     atomic.Int64
}

func newPacer(rate float64, limit int64) *pacer {
	p := &pacer{start: time.Now(), limit: limit}
	if rate > 0 {
		p.interval = time.Duration(float64(time.Second) / rate)
	}
	return p
}

// take waits for the next slot and reports whether the caller may make an
// attempt: false once the limit is reached or ctx ends.
func (p *pacer) take(ctx context.Context) bool {
	n := p.next.Add(1) - 1
	if p.limit > 0 && n >= p.limit {
		return false
	}
	if p.interval > 0 {
		timer := time.NewTimer(time.Until(p.start.Add(time.Duration(n) * p.interval)))
		defer timer.Stop()
		select {
		case <-timer.C:
		case <-ctx.Done():
			return false
		}
	}
	return !runEnded(ctx)
}

// runEnded reports whether the run of ctx is over: canceled, or past its
// deadline even if the context's timer has not fired yet, because a dial
// that times out at the deadline can return before the timer does.
func runEnded(ctx context.Context) bool {
	if ctx.Err() != nil {
		return true
	}
	deadline, ok := ctx.Deadline()
	return ok && !time.Now().Before(deadline)
}

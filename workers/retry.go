package workers

import (
	"sync"
	"time"
)

// backoff yields capped, doubling waits with jitter. Build it with
// newBackoff, because the zero value never waits.
type backoff struct {
	min, max time.Duration
	next     time.Duration
}

func newBackoff(min, max time.Duration) *backoff {
	return &backoff{min: min, max: max, next: min}
}

// wait returns the next wait, between half and all of the current step, and
// doubles the step up to max. The random half keeps instances that failed
// together from retrying together.
func (b *backoff) wait() time.Duration {
	d := b.next
	b.next = min(2*b.next, b.max)
	return d/2 + jitter(d/2+1)
}

// reset starts the doubling again from min.
func (b *backoff) reset() { b.next = b.min }

// warnLimiter lets one warning through per period and counts the others.
type warnLimiter struct {
	every time.Duration
	now   func() time.Time

	mu         sync.Mutex
	last       time.Time
	suppressed int
}

func newWarnLimiter(every time.Duration, now func() time.Time) *warnLimiter {
	if now == nil {
		now = time.Now
	}
	return &warnLimiter{every: every, now: now}
}

// allow reports whether a warning may be logged now and, when it may, how
// many were suppressed since the last one logged.
func (l *warnLimiter) allow() (ok bool, suppressed int) {
	l.mu.Lock()
	defer l.mu.Unlock()
	now := l.now()
	if !l.last.IsZero() && now.Sub(l.last) < l.every {
		l.suppressed++
		return false, 0
	}
	l.last = now
	suppressed, l.suppressed = l.suppressed, 0
	return true, suppressed
}

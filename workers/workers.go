// Package workers holds the long-running loops of an instance: the
// heartbeat, the reclaimer and the catch-up of views. Each loop runs until
// its context ends and owns no socket state; what it learns about sockets it
// learns through the functions it is given.
package workers

import (
	"context"
	"math/rand/v2"
	"time"

	"github.com/cloudevents/sdk-go/v2/event"

	"github.com/virtufin/websocketmanager/eventlog"
)

// Appender appends events durably; *eventlog.Writer implements it.
type Appender interface {
	Append(ctx context.Context, events ...*event.Event) ([]eventlog.Position, error)
}

// Identity names this incarnation of the instance.
type Identity struct {
	InstanceID  string
	Incarnation string
	StartedAt   time.Time
	Address     string // where clients and peers reach this instance
	Version     string
}

// jitter returns a random duration in [0, d), so that instances started
// together do not run their loops in lockstep.
func jitter(d time.Duration) time.Duration {
	if d <= 0 {
		return 0
	}
	return rand.N(d)
}

// sleep waits for d or until ctx ends, and reports whether it waited fully.
func sleep(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-ctx.Done():
		return false
	}
}

// Package workers holds the long-running loops of an instance: the
// heartbeat, the liveness observer with the reclaimer it drives, and the
// lifecycle publisher. Each loop runs until its context ends and owns no
// socket state. What it learns about sockets, it learns through the
// functions it is given. Delivery, which runs no loop, routes the
// backend's sends and closes to the instance that holds the connection.
//
// Heartbeat, Membership, Reclaimer, Publisher and Delivery are safe for
// concurrent use once built. Callbacks they are given (Heartbeat.Count,
// Heartbeat.OnFenced) run on the loop's goroutine and must not block.
//
// The package does not promise exactly-once delivery of anything: a
// reclaimed event may be appended twice when a claim is taken over, and a
// lifecycle event may be published again after a restart. Both carry the
// same ids when repeated, and the views fold them idempotently.
package workers

import (
	"context"
	"errors"
	"math/rand/v2"
	"time"

	"github.com/cloudevents/sdk-go/v2/event"

	"github.com/virtufin/websocketmanager/eventlog"
)

// ErrInvalidConfig is wrapped by every configuration problem a constructor
// or Validate reports.
var ErrInvalidConfig = errors.New("workers: invalid configuration")

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

// Stream returns the name of the log stream this incarnation appends to.
func (id Identity) Stream() string { return eventlog.StreamName(id.InstanceID, id.Incarnation) }

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
	if d <= 0 {
		return ctx.Err() == nil
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-ctx.Done():
		return false
	}
}

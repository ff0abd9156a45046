package eventlog_test

import (
	"sync"
	"testing"
	"time"

	"github.com/virtufin/websocketmanager/eventlog"
	"github.com/virtufin/websocketmanager/eventlog/eventlogtest"
	"github.com/virtufin/websocketmanager/schemas"
)

// commitRecorder records the calls of Options.OnCommit and OnCommitRetry.
type commitRecorder struct {
	mu      sync.Mutex
	commits []eventlog.CommitInfo
	types   []string // event types of every committed record, in order
	retries []string // stream of every retry
}

func (c *commitRecorder) install(opts *eventlog.Options) {
	opts.OnCommit = func(info eventlog.CommitInfo) {
		c.mu.Lock()
		defer c.mu.Unlock()
		for _, r := range info.Records {
			c.types = append(c.types, r.Event.Type())
		}
		info.Records = append([]eventlog.Record(nil), info.Records...)
		c.commits = append(c.commits, info)
	}
	opts.OnCommitRetry = func(stream string, err error) {
		c.mu.Lock()
		defer c.mu.Unlock()
		c.retries = append(c.retries, stream)
	}
}

func (c *commitRecorder) committedEvents() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.types)
}

func (c *commitRecorder) retryCount() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.retries)
}

func (c *commitRecorder) snapshot() ([]eventlog.CommitInfo, []string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	return append([]eventlog.CommitInfo(nil), c.commits...), append([]string(nil), c.types...)
}

func TestWriterOnCommitReportsBatches(t *testing.T) {
	var rec commitRecorder
	opts := eventlog.Options{}
	rec.install(&opts)
	r := newOutageRig(t, outageBackends[0].wrap, opts)
	events := heartbeats(t, outageStream, 5)

	if _, err := r.w.Append(outageCtx(t), events[:3]...); err != nil {
		t.Fatalf("Append: %v", err)
	}
	if _, err := r.w.Append(outageCtx(t), events[3:]...); err != nil {
		t.Fatalf("Append: %v", err)
	}
	waitUntil(t, "OnCommit for every event", func() bool { return rec.committedEvents() == len(events) })

	commits, types := rec.snapshot()
	if len(commits) != 2 {
		t.Fatalf("OnCommit calls: got %d, want 2 (one per Append made in turn)", len(commits))
	}
	for i, want := range []int{3, 2} {
		c := commits[i]
		if c.Stream != outageStream {
			t.Errorf("commit %d stream: got %q, want %q", i, c.Stream, outageStream)
		}
		if len(c.Records) != want {
			t.Errorf("commit %d records: got %d, want %d", i, len(c.Records), want)
		}
		if c.Duration <= 0 {
			t.Errorf("commit %d duration: got %v, want > 0", i, c.Duration)
		}
		if c.FailedAttempts != 0 {
			t.Errorf("commit %d failed attempts: got %d, want 0 on a working store", i, c.FailedAttempts)
		}
	}
	if got, want := commits[1].Records[0].Seq, uint64(4); got != want {
		t.Errorf("second commit's first sequence: got %d, want %d", got, want)
	}
	for i, typ := range types {
		if typ != schemas.TypeHeartbeat {
			t.Errorf("committed record %d type: got %q, want %q", i, typ, schemas.TypeHeartbeat)
		}
	}
	if n := rec.retryCount(); n != 0 {
		t.Errorf("OnCommitRetry calls: got %d, want 0 on a working store", n)
	}
}

func TestWriterOnCommitRetryDuringOutage(t *testing.T) {
	var rec commitRecorder
	opts := eventlog.Options{RetryMaxDelay: 20 * time.Millisecond}
	rec.install(&opts)
	r := newOutageRig(t, outageBackends[0].wrap, opts)
	events := heartbeats(t, outageStream, 2)

	r.faults.Break(eventlogtest.FaultAll, nil)
	appendQueued(t, r.w, events...)
	waitUntil(t, "OnCommitRetry during the outage", func() bool { return rec.retryCount() >= 3 })
	if n := rec.committedEvents(); n != 0 {
		t.Errorf("events reported committed during the outage: got %d, want 0", n)
	}

	r.faults.Repair()
	waitUntil(t, "OnCommit after the repair", func() bool { return rec.committedEvents() == len(events) })

	commits, _ := rec.snapshot()
	if len(commits) != 1 {
		t.Fatalf("OnCommit calls: got %d, want 1", len(commits))
	}
	if got, want := commits[0].FailedAttempts, rec.retryCount(); got != want {
		t.Errorf("FailedAttempts: got %d, want %d, one per OnCommitRetry call", got, want)
	}
	rec.mu.Lock()
	defer rec.mu.Unlock()
	for i, stream := range rec.retries {
		if stream != outageStream {
			t.Errorf("retry %d stream: got %q, want %q", i, stream, outageStream)
		}
	}
}

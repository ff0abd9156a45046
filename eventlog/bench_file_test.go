package eventlog

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/cloudevents/sdk-go/v2/event"
	"github.com/google/uuid"

	"github.com/virtufin/websocketmanager/internal/embedded"
	"github.com/virtufin/websocketmanager/schemas"
)

// appendVsFileAppenders is the number of goroutines that append in both
// cases of BenchmarkAppendVsFile, as many as BenchmarkGroupCommit uses.
const appendVsFileAppenders = 64

// BenchmarkAppendVsFile compares the embedded log with a plain append-only
// file as the baseline. One op is one event appended and durable. Both cases
// take the same events from 64 goroutines, each calling Append with one
// event and waiting until that event is durable before the next.
//
//   - embedded: a Writer with default options on the embedded bbolt store,
//     without validation or projection (BenchmarkGroupCommit measures the
//     Writer with both).
//   - plain-file: fileAppender, a minimal group-committing appender that
//     writes each batch with one write call to an O_APPEND file and then
//     calls fsync.
//
// Both cases form batches by the same rule: a commit takes every event
// queued while the previous one synced, up to the Writer's default
// MaxBatch of 512, without waiting for a timer. Both encode each event in
// the commit goroutine with encodeRecord after setting its sequence
// extension, so every event has the same bytes in both. Both files sit in a
// b.TempDir, on the same file system.
func BenchmarkAppendVsFile(b *testing.B) {
	template := appendVsFileEvent(b)
	b.Run("embedded", func(b *testing.B) {
		benchAppendEmbedded(b, template)
	})
	b.Run("plain-file", func(b *testing.B) {
		benchAppendFile(b, template)
	})
}

func benchAppendEmbedded(b *testing.B, template *event.Event) {
	ctx := context.Background()
	store, err := embedded.Open(b.TempDir(), embedded.Options{})
	if err != nil {
		b.Fatal(err)
	}
	defer store.Close()
	var commits atomic.Int64
	log := Open(store, Options{OnCommit: func(CommitInfo) { commits.Add(1) }})
	const stream = "pod-bench/0190f3a2-7c1e-7b3a-9f6e-2d1c0b9a8e7f"
	w, err := log.NewWriter(ctx, stream)
	if err != nil {
		b.Fatal(err)
	}

	runAppenders(b, template, func(ev *event.Event) error {
		_, err := w.Append(ctx, ev)
		return err
	})
	reportAppendRate(b, commits.Load())

	if err := w.Close(ctx); err != nil {
		b.Fatal(err)
	}
	if head, err := log.Head(ctx, stream); err != nil || head != uint64(b.N) {
		b.Fatalf("stream head = %d, %v; want %d", head, err, b.N)
	}
}

func benchAppendFile(b *testing.B, template *event.Event) {
	path := filepath.Join(b.TempDir(), "events.log")
	f, err := openFileAppender(path, defaultMaxBatch())
	if err != nil {
		b.Fatal(err)
	}

	runAppenders(b, template, f.Append)
	reportAppendRate(b, f.commits.Load())

	if err := f.Close(); err != nil {
		b.Fatal(err)
	}
	checkFileLog(b, path, b.N)
}

// runAppenders times b.N appends of clones of template, made by
// appendVsFileAppenders goroutines that call appendOne one event at a time.
func runAppenders(b *testing.B, template *event.Event, appendOne func(*event.Event) error) {
	var handedOut atomic.Int64
	failed := make(chan error, appendVsFileAppenders)
	var wg sync.WaitGroup

	b.ReportAllocs()
	b.ResetTimer()
	for range appendVsFileAppenders {
		wg.Go(func() {
			for handedOut.Add(1) <= int64(b.N) {
				ev := template.Clone()
				ev.SetID(uuid.Must(uuid.NewV7()).String())
				if err := appendOne(&ev); err != nil {
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
}

func reportAppendRate(b *testing.B, commits int64) {
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "events/s")
	if commits > 0 {
		b.ReportMetric(float64(b.N)/float64(commits), "events/commit")
	}
}

// appendVsFileEvent returns a connected event of the size a browser client
// produces, built with the schemas constructor as socket.Server builds it.
func appendVsFileEvent(b *testing.B) *event.Event {
	b.Helper()
	at := time.Now().UTC()
	ev, err := schemas.NewConnected(schemas.Envelope{InstanceID: "pod-bench", Time: at}, schemas.Connected{
		ConnectionID: "0190f3a2-8d2f-7c4b-a07f-3e2d1c0b9a8e", InstanceID: "pod-bench",
		Incarnation: "0190f3a2-7c1e-7b3a-9f6e-2d1c0b9a8e7f", UserID: "user-0042",
		RemoteAddr: "203.0.113.7:54321", UserAgent: "Mozilla/5.0 (X11; Linux x86_64; rv:128.0) Gecko/20100101 Firefox/128.0",
		ConnectedAt: at,
	})
	if err != nil {
		b.Fatal(err)
	}
	return ev
}

func defaultMaxBatch() int {
	var o Options
	o.setDefaults()
	return o.MaxBatch
}

// fileAppender is the baseline of BenchmarkAppendVsFile: the least a
// group-committing log on a plain file has to do. Append queues the event
// and waits. One goroutine takes everything queued, up to maxBatch events,
// encodes it with encodeRecord, one record per line, writes the batch with
// one write call to a file opened with O_APPEND, calls f.Sync and releases
// the batch's appenders. On Linux f.Sync is fsync(2), while bbolt calls
// fdatasync(2). According to the fdatasync(2) man page, it skips metadata such
// as the modification time but not the file size, so after a write that
// grows the file both flush the size.
type fileAppender struct {
	f        *os.File
	maxBatch int
	commits  atomic.Int64

	mu     sync.Mutex
	queue  []*fileAppend
	closed bool
	notify chan struct{} // capacity 1: the queue grew or Close was called
	done   chan struct{} // closed when the commit goroutine exits
	err    error         // the first failed write or sync, set before done closes

	// Owned by the commit goroutine.
	next uint64 // sequence of the next event
	buf  []byte
}

type fileAppend struct {
	ev   *event.Event
	done chan error
}

var errFileAppenderClosed = errors.New("append to a closed file appender")

func openFileAppender(path string, maxBatch int) (*fileAppender, error) {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o600)
	if err != nil {
		return nil, err
	}
	a := &fileAppender{
		f:        f,
		maxBatch: maxBatch,
		notify:   make(chan struct{}, 1),
		done:     make(chan struct{}),
		next:     1,
	}
	go a.run()
	return a, nil
}

// Append queues ev and returns once it is written and synced.
func (a *fileAppender) Append(ev *event.Event) error {
	req := &fileAppend{ev: ev, done: make(chan error, 1)}
	a.mu.Lock()
	if a.closed {
		a.mu.Unlock()
		return errFileAppenderClosed
	}
	a.queue = append(a.queue, req)
	a.mu.Unlock()
	a.signal()
	return <-req.done
}

// Close commits what is queued, stops the commit goroutine and closes the
// file.
func (a *fileAppender) Close() error {
	a.mu.Lock()
	a.closed = true
	a.mu.Unlock()
	a.signal()
	<-a.done
	return errors.Join(a.err, a.f.Close())
}

func (a *fileAppender) signal() {
	select {
	case a.notify <- struct{}{}:
	default:
	}
}

func (a *fileAppender) run() {
	defer close(a.done)
	for {
		batch := a.take()
		if batch == nil {
			return
		}
		err := a.commit(batch)
		if err != nil && a.err == nil {
			a.err = err
		}
		for _, r := range batch {
			r.done <- err
		}
	}
}

// take waits until something is queued and removes up to maxBatch events
// from the front of the queue. It returns nil once Close was called and
// the queue is empty.
func (a *fileAppender) take() []*fileAppend {
	for {
		a.mu.Lock()
		if n := min(len(a.queue), a.maxBatch); n > 0 {
			batch := make([]*fileAppend, n)
			copy(batch, a.queue)
			clear(a.queue[:n])
			a.queue = a.queue[n:]
			if len(a.queue) == 0 {
				a.queue = nil
			}
			a.mu.Unlock()
			return batch
		}
		closed := a.closed
		a.mu.Unlock()
		if closed {
			return nil
		}
		<-a.notify
	}
}

func (a *fileAppender) commit(batch []*fileAppend) error {
	a.buf = a.buf[:0]
	for _, r := range batch {
		r.ev.SetExtension(schemas.SequenceExtension, schemas.FormatSequence(a.next))
		raw, err := encodeRecord(r.ev)
		if err != nil {
			return fmt.Errorf("encode event %s: %w", r.ev.ID(), err)
		}
		a.buf = append(append(a.buf, raw...), '\n')
		a.next++
	}
	if _, err := a.f.Write(a.buf); err != nil {
		return err
	}
	if err := a.f.Sync(); err != nil {
		return err
	}
	a.commits.Add(1)
	return nil
}

// checkFileLog fails the benchmark unless the file contains want records,
// one per line, and the last one decodes with sequence want.
func checkFileLog(b *testing.B, path string, want int) {
	b.Helper()
	raw, err := os.ReadFile(path)
	if err != nil {
		b.Fatal(err)
	}
	lines := bytes.Split(bytes.TrimSuffix(raw, []byte("\n")), []byte("\n"))
	if len(lines) != want {
		b.Fatalf("file contains %d records, want %d", len(lines), want)
	}
	last, err := DecodeRecord(lines[len(lines)-1])
	if err != nil {
		b.Fatalf("last record: %v", err)
	}
	if got, wantSeq := last.Extensions()[schemas.SequenceExtension], schemas.FormatSequence(uint64(want)); got != wantSeq {
		b.Fatalf("last record has sequence %v, want %s", got, wantSeq)
	}
}

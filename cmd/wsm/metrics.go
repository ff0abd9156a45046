package main

import (
	"context"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/virtufin/websocketmanager/eventlog"
	"github.com/virtufin/websocketmanager/internal/metrics"
	"github.com/virtufin/websocketmanager/internal/pubsub"
	"github.com/virtufin/websocketmanager/internal/state"
	"github.com/virtufin/websocketmanager/socket"
	"github.com/virtufin/websocketmanager/workers"
)

// serveMetrics are the Prometheus metrics of one serve process, on a
// registry of their own that GET /metrics serves. Its methods adapt the
// hooks of each package to the metrics package. All are safe for
// concurrent use and return at once, as the hooks require.
type serveMetrics struct {
	*metrics.Metrics
}

func newServeMetrics() (*serveMetrics, error) {
	m, err := metrics.New(prometheus.NewRegistry())
	if err != nil {
		return nil, err
	}
	return &serveMetrics{Metrics: m}, nil
}

// watchBackend creates the call series of the backend's operations at 0
// and sets each breaker's state gauge to its state now. Later changes
// arrive through dapr.Config.OnBreakerChange.
func (m *serveMetrics) watchBackend(be *backend) {
	ops := []string{metrics.OpGet, metrics.OpBulkGet, metrics.OpTransact}
	if be.name == "dapr" && be.pubsub != nil {
		ops = append(ops, metrics.OpPublish)
	}
	m.PresetBackendCalls(be.name, ops...)
	for _, p := range be.pipelines {
		name, st, _ := p.State()
		m.SetBreakerState(name, st)
	}
}

// instrumentLog sets the event log's commit hooks.
func (m *serveMetrics) instrumentLog(opts *eventlog.Options) {
	opts.OnCommit = m.committed
	opts.OnCommitRetry = func(string, error) { m.CommitRetried() }
}

func (m *serveMetrics) committed(c eventlog.CommitInfo) {
	// Batches are mostly runs of one type, so count runs rather than
	// look up the labelled counter once per event.
	run := 0
	for i, r := range c.Records {
		run++
		last := i == len(c.Records)-1
		if last || c.Records[i+1].Event.Type() != r.Event.Type() {
			m.EventsAppended(r.Event.Type(), run)
			run = 0
		}
	}
	m.Committed(len(c.Records), c.Duration)
}

// instrumentSocket sets the socket server's connection and send-queue
// hooks.
func (m *serveMetrics) instrumentSocket(cfg *socket.Config) {
	cfg.OnConnect = func(socket.ConnInfo) { m.ConnectionOpened() }
	cfg.OnDisconnect = func(_ socket.ConnInfo, r socket.CloseReason) { m.ConnectionClosed(r.Reason) }
	cfg.OnSendDrop = func(_ socket.ConnInfo, closed bool) { m.SendDropped(closed) }
}

// instrumentReclaimer sets the reclaimer's pass, claim and reclaimed
// connection hooks.
func (m *serveMetrics) instrumentReclaimer(r *workers.Reclaimer) {
	r.OnPass = func(_ workers.PassStats, err error) { m.ReclaimPass(err != nil) }
	r.OnClaim = m.ReclaimClaim
	r.OnReclaimed = m.ConnectionsReclaimed
}

// publishedLifecycle records one publish attempt of the lifecycle
// publisher.
func (m *serveMetrics) publishedLifecycle(err error) { m.Published(metrics.TopicLifecycle, err) }

// meterPublish returns ps with the outcome of each Publish recorded under
// the topic kind, for a publisher without an OnPublish hook of its own,
// such as the client message publisher.
func (m *serveMetrics) meterPublish(kind string, ps pubsub.PubSub) pubsub.PubSub {
	return meteredPubSub{PubSub: ps, kind: kind, m: m}
}

// meteredPubSub records each Publish to the pub/sub it wraps. Like the
// lifecycle publisher's hook, it leaves out a failure whose context had
// ended, since such a failure is not the pub/sub's.
type meteredPubSub struct {
	pubsub.PubSub
	kind string
	m    *serveMetrics
}

func (p meteredPubSub) Publish(ctx context.Context, msg pubsub.Message) error {
	err := p.PubSub.Publish(ctx, msg)
	if err == nil || ctx.Err() == nil {
		p.m.Published(p.kind, err)
	}
	return err
}

// daprCall records one call to the Dapr sidecar.
func (m *serveMetrics) daprCall(operation string, took time.Duration, err error) {
	m.BackendCall("dapr", operation, took, err)
}

// meterStore returns store with the duration and the error of each Get,
// BulkGet and Transact recorded under backend. When store also scans and
// takes snapshots, as the embedded store does, so does the result, without
// metrics for those.
func (m *serveMetrics) meterStore(backend string, store state.Store) state.Store {
	base := meteredStore{Store: store, backend: backend, m: m}
	scanner, canScan := store.(state.Scanner)
	snapshotter, canSnapshot := store.(state.Snapshotter)
	if canScan && canSnapshot {
		scan := meteredScanStore{meteredStore: base, scanner: scanner, snapshotter: snapshotter}
		if ranger, ok := store.(state.RangeScanner); ok {
			return meteredRangeStore{meteredScanStore: scan, ranger: ranger}
		}
		return scan
	}
	return base
}

// meteredStore records each call to the store it wraps.
type meteredStore struct {
	state.Store
	backend string
	m       *serveMetrics
}

func (s meteredStore) Get(ctx context.Context, key string) (state.Item, error) {
	start := time.Now()
	it, err := s.Store.Get(ctx, key)
	s.m.BackendCall(s.backend, metrics.OpGet, time.Since(start), err)
	return it, err
}

func (s meteredStore) BulkGet(ctx context.Context, keys []string) ([]state.Item, error) {
	start := time.Now()
	items, err := s.Store.BulkGet(ctx, keys)
	s.m.BackendCall(s.backend, metrics.OpBulkGet, time.Since(start), err)
	return items, err
}

func (s meteredStore) Transact(ctx context.Context, ops []state.Op) error {
	start := time.Now()
	err := s.Store.Transact(ctx, ops)
	s.m.BackendCall(s.backend, metrics.OpTransact, time.Since(start), err)
	return err
}

// meteredScanStore is a meteredStore that keeps the Scanner and
// Snapshotter of the store it wraps.
type meteredScanStore struct {
	meteredStore
	scanner     state.Scanner
	snapshotter state.Snapshotter
}

var (
	_ state.Scanner     = meteredScanStore{}
	_ state.Snapshotter = meteredScanStore{}
)

func (s meteredScanStore) Scan(ctx context.Context, prefix string, fn func(state.Item) error) error {
	return s.scanner.Scan(ctx, prefix, fn)
}

func (s meteredScanStore) Snapshot(ctx context.Context, fn func(state.Store) error) error {
	return s.snapshotter.Snapshot(ctx, fn)
}

// meteredRangeStore is a meteredScanStore that keeps the range scan of the
// store it wraps, so the log reads through the metrics wrapper as fast as
// without it.
type meteredRangeStore struct {
	meteredScanStore
	ranger state.RangeScanner
}

func (s meteredRangeStore) ScanRange(ctx context.Context, start, end string, fn func(state.Item) error) error {
	return s.ranger.ScanRange(ctx, start, end, fn)
}

// appendBacklog returns the backlog of the current incarnation's writer,
// for the backlog gauge. It reads the writer at each call, so it follows a
// fence to the new writer.
func (in *instance) appendBacklog() int {
	w := in.currentWriter()
	if w == nil {
		return 0
	}
	return w.Backlog()
}

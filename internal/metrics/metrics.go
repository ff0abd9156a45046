// Package metrics holds the Prometheus collectors of a wsm process: the
// WebSocket connections, the event log's group commit, the calls to the
// backend and their circuit breakers, the reclaimer, the lifecycle
// publisher and the /events feed.
//
// New registers every collector on the registry the caller passes, together
// with the standard Go runtime and process collectors, and never touches
// the global default registry. The packages that produce the numbers do not
// import this one: each exposes optional hooks, and the serve command
// connects them to the methods here.
//
// Every method of Metrics is safe for concurrent use and returns at once:
// a hook may call it from a connection's read goroutine or a writer's
// commit goroutine. A nil *Metrics ignores every call, so a caller that
// runs without metrics need not check.
//
// Labels take values from fixed sets: close reasons from schemas.Reasons,
// event types from schemas.Types, and the operations, topic kinds and
// breaker states listed below. A value outside its set is counted as
// "other", so a caller's mistake cannot make the series grow without bound.
// A scrape reads each collector on its own, so two metrics of one scrape
// may come from slightly different moments.
package metrics

import (
	"errors"
	"fmt"
	"net/http"
	"slices"
	"strings"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/virtufin/websocketmanager/internal/state"
	"github.com/virtufin/websocketmanager/schemas"
)

// Namespace prefixes every metric name of wsm.
const Namespace = "wsm"

// Operations of the backend, as the operation label of the backend call
// metrics names them.
const (
	OpGet      = "get"
	OpBulkGet  = "bulk_get"
	OpTransact = "transact"
	OpPublish  = "publish"
)

// Operations lists every operation label value.
var Operations = []string{OpGet, OpBulkGet, OpTransact, OpPublish}

// Topic kinds, as the topic label of the publish metrics names them. Topic
// names are deployment settings, so the label names the topic's purpose.
const (
	TopicLifecycle = "lifecycle" // connection and instance events of the log
	TopicMessages  = "messages"  // messages from the backend to clients
)

// TopicKinds lists every topic label value.
var TopicKinds = []string{TopicLifecycle, TopicMessages}

// Breaker states, as the resilience package names them, and the values of
// the breaker state gauge: 0 closed, 1 half-open, 2 open, so that a higher
// value is a worse state and max() over instances finds the worst.
const (
	BreakerClosed   = "closed"
	BreakerHalfOpen = "half-open"
	BreakerOpen     = "open"
)

var breakerValues = map[string]float64{BreakerClosed: 0, BreakerHalfOpen: 1, BreakerOpen: 2}

// other replaces a label value outside its fixed set.
const other = "other"

// Histogram buckets.
var (
	// batchBuckets are powers of two from 1 to 512 events, the event log's
	// default MaxBatch: one bucket per doubling shows whether appends are
	// grouped at all and whether commits hit the cap.
	batchBuckets = prometheus.ExponentialBuckets(1, 2, 10)

	// latencyBuckets double from 0.5 ms to about 16 s. An fsync of the
	// embedded store or a Redis round trip through Dapr takes about a
	// millisecond. A commit that retries through an outage takes seconds,
	// and the top bucket still lies above the 10 s attempt timeout.
	latencyBuckets = prometheus.ExponentialBuckets(0.0005, 2, 16)
)

// Metrics holds every collector of one wsm process. Create it with New.
type Metrics struct {
	registry *prometheus.Registry

	connectionsOpen prometheus.Gauge
	connects        prometheus.Counter
	disconnects     *prometheus.CounterVec
	droppedMessages prometheus.Counter
	queueFullCloses prometheus.Counter

	eventsAppended *prometheus.CounterVec
	batchSize      prometheus.Histogram
	commitDuration prometheus.Histogram
	commitRetries  prometheus.Counter
	backlog        atomic.Pointer[func() int]

	callDuration *prometheus.HistogramVec
	callErrors   *prometheus.CounterVec

	breakerState   *prometheus.GaugeVec
	breakerChanges *prometheus.CounterVec

	reclaimPasses        *prometheus.CounterVec
	reclaimClaims        *prometheus.CounterVec
	reclaimedConnections prometheus.Counter

	publishSuccesses *prometheus.CounterVec
	publishFailures  *prometheus.CounterVec

	feedSubscribers prometheus.Gauge
}

// New creates the collectors of wsm and registers them on reg, with the Go
// runtime and process collectors. It fails when reg already holds a
// collector of the same name, such as those of an earlier New.
func New(reg *prometheus.Registry) (*Metrics, error) {
	if reg == nil {
		return nil, errors.New("metrics: registry is nil")
	}
	m := &Metrics{registry: reg}

	m.connectionsOpen = prometheus.NewGauge(prometheus.GaugeOpts{
		Namespace: Namespace, Name: "connections_open",
		Help: "WebSocket connections whose connected event is appended and whose disconnected event is not yet.",
	})
	m.connects = prometheus.NewCounter(prometheus.CounterOpts{
		Namespace: Namespace, Name: "connects_total",
		Help: "WebSocket connections whose connected event was appended.",
	})
	m.disconnects = prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: Namespace, Name: "disconnects_total",
		Help: "WebSocket connections closed after their connected event, by the close reason of their disconnected event.",
	}, []string{"reason"})
	m.droppedMessages = prometheus.NewCounter(prometheus.CounterOpts{
		Namespace: Namespace, Name: "send_queue_dropped_messages_total",
		Help: "Messages never written to a client: refused by a full send queue, or discarded behind the slow-consumer close it caused.",
	})
	m.queueFullCloses = prometheus.NewCounter(prometheus.CounterOpts{
		Namespace: Namespace, Name: "send_queue_full_closes_total",
		Help: "Connections closed with 1008 (slow_consumer) because their send queue was full.",
	})

	m.eventsAppended = prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: Namespace, Subsystem: "eventlog", Name: "events_appended_total",
		Help: "Events committed to this process's stream, by event type without the common prefix.",
	}, []string{"type"})
	m.batchSize = prometheus.NewHistogram(prometheus.HistogramOpts{
		Namespace: Namespace, Subsystem: "eventlog", Name: "commit_batch_events",
		Help:    "Events per group commit.",
		Buckets: batchBuckets,
	})
	m.commitDuration = prometheus.NewHistogram(prometheus.HistogramOpts{
		Namespace: Namespace, Subsystem: "eventlog", Name: "commit_duration_seconds",
		Help:    "Time from the first attempt of a group commit until it was durable, retries included.",
		Buckets: latencyBuckets,
	})
	m.commitRetries = prometheus.NewCounter(prometheus.CounterOpts{
		Namespace: Namespace, Subsystem: "eventlog", Name: "commit_retries_total",
		Help: "Failed commit attempts that the writer retries, including failed reads of the stream head.",
	})
	backlog := prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Namespace: Namespace, Subsystem: "eventlog", Name: "append_backlog_events",
		Help: "Events accepted by the current writer and not yet committed or rejected.",
	}, m.readBacklog)

	m.callDuration = prometheus.NewHistogramVec(prometheus.HistogramOpts{
		Namespace: Namespace, Subsystem: "backend", Name: "call_duration_seconds",
		Help:    "Duration of one call to the backend (one attempt: retries are separate calls), by backend and operation.",
		Buckets: latencyBuckets,
	}, []string{"backend", "operation"})
	m.callErrors = prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: Namespace, Subsystem: "backend", Name: "call_errors_total",
		Help: "Calls to the backend that failed, by backend and operation. A conditional write that lost to a concurrent one is not counted.",
	}, []string{"backend", "operation"})

	m.breakerState = prometheus.NewGaugeVec(prometheus.GaugeOpts{
		Namespace: Namespace, Subsystem: "breaker", Name: "state",
		Help: "Circuit breaker state by dependency: 0 closed, 1 half-open, 2 open.",
	}, []string{"dependency"})
	m.breakerChanges = prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: Namespace, Subsystem: "breaker", Name: "state_changes_total",
		Help: "Circuit breaker state changes by dependency and the states left and entered.",
	}, []string{"dependency", "from", "to"})

	m.reclaimPasses = prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: Namespace, Subsystem: "reclaim", Name: "passes_total",
		Help: "Reclaim passes over the peers, by result: ok, or error when the pass returned one.",
	}, []string{"result"})
	m.reclaimClaims = prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: Namespace, Subsystem: "reclaim", Name: "claims_total",
		Help: "Claims on dead incarnations, by result: won, or lost to another reclaimer or a newer incarnation.",
	}, []string{"result"})
	m.reclaimedConnections = prometheus.NewCounter(prometheus.CounterOpts{
		Namespace: Namespace, Subsystem: "reclaim", Name: "connections_total",
		Help: "Connections of dead incarnations for which this process appended a reclaimed event.",
	})

	m.publishSuccesses = prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: Namespace, Subsystem: "publish", Name: "successes_total",
		Help: "Messages the pub/sub accepted, by topic kind: lifecycle or messages.",
	}, []string{"topic"})
	m.publishFailures = prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: Namespace, Subsystem: "publish", Name: "failures_total",
		Help: "Failed publish attempts, each retried or given up, by topic kind: lifecycle or messages.",
	}, []string{"topic"})

	m.feedSubscribers = prometheus.NewGauge(prometheus.GaugeOpts{
		Namespace: Namespace, Subsystem: "feed", Name: "subscribers",
		Help: "Clients subscribed to the /events feed of this process.",
	})

	m.preset()
	err := errors.Join(
		reg.Register(collectors.NewGoCollector()),
		reg.Register(collectors.NewProcessCollector(collectors.ProcessCollectorOpts{})),
		reg.Register(m.connectionsOpen), reg.Register(m.connects), reg.Register(m.disconnects),
		reg.Register(m.droppedMessages), reg.Register(m.queueFullCloses),
		reg.Register(m.eventsAppended), reg.Register(m.batchSize), reg.Register(m.commitDuration),
		reg.Register(m.commitRetries), reg.Register(backlog),
		reg.Register(m.callDuration), reg.Register(m.callErrors),
		reg.Register(m.breakerState), reg.Register(m.breakerChanges),
		reg.Register(m.reclaimPasses), reg.Register(m.reclaimClaims), reg.Register(m.reclaimedConnections),
		reg.Register(m.publishSuccesses), reg.Register(m.publishFailures),
		reg.Register(m.feedSubscribers),
	)
	if err != nil {
		return nil, fmt.Errorf("metrics: register: %w", err)
	}
	return m, nil
}

// preset creates every series of a fixed label set at 0, so a query for a
// reason or result that has not happened yet finds a zero, not nothing.
func (m *Metrics) preset() {
	for _, r := range schemas.Reasons {
		m.disconnects.WithLabelValues(r)
	}
	for _, t := range schemas.Types {
		m.eventsAppended.WithLabelValues(shortType(t))
	}
	for _, r := range []string{"ok", "error"} {
		m.reclaimPasses.WithLabelValues(r)
	}
	for _, r := range []string{"won", "lost"} {
		m.reclaimClaims.WithLabelValues(r)
	}
	for _, t := range TopicKinds {
		m.publishSuccesses.WithLabelValues(t)
		m.publishFailures.WithLabelValues(t)
	}
}

// Handler serves the registry in the Prometheus exposition formats. Errors
// while gathering are counted in promhttp_metric_handler_errors_total on
// the same registry, and the metrics that could be gathered are served.
func (m *Metrics) Handler() http.Handler {
	return promhttp.HandlerFor(m.registry, promhttp.HandlerOpts{
		Registry:          m.registry,
		ErrorHandling:     promhttp.ContinueOnError,
		EnableOpenMetrics: true,
	})
}

// ConnectionOpened counts a connection whose connected event was appended.
func (m *Metrics) ConnectionOpened() {
	if m == nil {
		return
	}
	m.connects.Inc()
	m.connectionsOpen.Inc()
}

// ConnectionClosed counts the end of a connection that ConnectionOpened
// counted, with the reason of its disconnected event.
func (m *Metrics) ConnectionClosed(reason string) {
	if m == nil {
		return
	}
	if !slices.Contains(schemas.Reasons, reason) {
		reason = other
	}
	m.disconnects.WithLabelValues(reason).Inc()
	m.connectionsOpen.Dec()
}

// SendDropped counts one message that was not written to its client.
// closed reports that dropping it closed the connection as a slow consumer.
func (m *Metrics) SendDropped(closed bool) {
	if m == nil {
		return
	}
	m.droppedMessages.Inc()
	if closed {
		m.queueFullCloses.Inc()
	}
}

// EventsAppended counts n committed events of one CloudEvent type.
func (m *Metrics) EventsAppended(eventType string, n int) {
	if m == nil || n <= 0 {
		return
	}
	m.eventsAppended.WithLabelValues(shortType(eventType)).Add(float64(n))
}

// Committed records one group commit: its size in events and the time
// from its first attempt until it was durable.
func (m *Metrics) Committed(events int, took time.Duration) {
	if m == nil {
		return
	}
	m.batchSize.Observe(float64(events))
	m.commitDuration.Observe(took.Seconds())
}

// CommitRetried counts one failed commit attempt that will be retried.
func (m *Metrics) CommitRetried() {
	if m == nil {
		return
	}
	m.commitRetries.Inc()
}

// SetAppendBacklog sets the function the backlog gauge reads at each
// scrape, such as the current writer's Backlog. Until it is set, or when f
// is nil, the gauge reads 0.
func (m *Metrics) SetAppendBacklog(f func() int) {
	if m == nil {
		return
	}
	if f == nil {
		m.backlog.Store(nil)
		return
	}
	m.backlog.Store(&f)
}

func (m *Metrics) readBacklog() float64 {
	f := m.backlog.Load()
	if f == nil {
		return 0
	}
	return float64((*f)())
}

// PresetBackendCalls creates the call series of a backend at 0 for each
// operation it serves.
func (m *Metrics) PresetBackendCalls(backend string, operations ...string) {
	if m == nil {
		return
	}
	for _, op := range operations {
		op = knownOperation(op)
		m.callDuration.WithLabelValues(backend, op)
		m.callErrors.WithLabelValues(backend, op)
	}
}

// BackendCall records one call to the backend. An error that reports a
// conditional write losing to a concurrent one (state.ErrETagMismatch) is
// not counted as an error, because the dependency responded and the
// caller retries by design.
func (m *Metrics) BackendCall(backend, operation string, took time.Duration, err error) {
	if m == nil {
		return
	}
	operation = knownOperation(operation)
	m.callDuration.WithLabelValues(backend, operation).Observe(took.Seconds())
	if err != nil && !errors.Is(err, state.ErrETagMismatch) {
		m.callErrors.WithLabelValues(backend, operation).Inc()
	}
}

// SetBreakerState sets the state gauge of a dependency's breaker, as at
// startup, before any change is reported.
func (m *Metrics) SetBreakerState(dependency, breakerState string) {
	if m == nil {
		return
	}
	if v, ok := breakerValues[breakerState]; ok {
		m.breakerState.WithLabelValues(dependency).Set(v)
	}
}

// BreakerChanged records a breaker state change. Its signature fits
// resilience.Config.OnStateChange.
func (m *Metrics) BreakerChanged(dependency, from, to string) {
	if m == nil {
		return
	}
	m.SetBreakerState(dependency, to)
	m.breakerChanges.WithLabelValues(dependency, knownBreaker(from), knownBreaker(to)).Inc()
}

// ReclaimPass counts one pass of the reclaim loop and whether it failed.
func (m *Metrics) ReclaimPass(failed bool) {
	if m == nil {
		return
	}
	result := "ok"
	if failed {
		result = "error"
	}
	m.reclaimPasses.WithLabelValues(result).Inc()
}

// ReclaimClaim counts the outcome of one claim on a dead incarnation.
func (m *Metrics) ReclaimClaim(won bool) {
	if m == nil {
		return
	}
	result := "lost"
	if won {
		result = "won"
	}
	m.reclaimClaims.WithLabelValues(result).Inc()
}

// ConnectionsReclaimed counts n reclaimed events appended.
func (m *Metrics) ConnectionsReclaimed(n int) {
	if m == nil || n <= 0 {
		return
	}
	m.reclaimedConnections.Add(float64(n))
}

// Published records one publish attempt to a topic of the given kind
// (TopicLifecycle or TopicMessages); err is nil when the pub/sub accepted
// the message.
func (m *Metrics) Published(topicKind string, err error) {
	if m == nil {
		return
	}
	if !slices.Contains(TopicKinds, topicKind) {
		topicKind = other
	}
	if err != nil {
		m.publishFailures.WithLabelValues(topicKind).Inc()
		return
	}
	m.publishSuccesses.WithLabelValues(topicKind).Inc()
}

// SetFeedSubscribers sets the number of /events feed subscribers. Its
// signature fits the feed's OnSubscribers callback.
func (m *Metrics) SetFeedSubscribers(n int) {
	if m == nil {
		return
	}
	m.feedSubscribers.Set(float64(n))
}

// shortType drops the common prefix of wsm's event types and maps a type
// outside schemas.Types to "other".
func shortType(t string) string {
	if !slices.Contains(schemas.Types, t) {
		return other
	}
	return strings.TrimPrefix(t, schemas.TypePrefix)
}

func knownOperation(op string) string {
	if slices.Contains(Operations, op) {
		return op
	}
	return other
}

func knownBreaker(s string) string {
	if _, ok := breakerValues[s]; ok {
		return s
	}
	return other
}

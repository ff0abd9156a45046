package main

import (
	"context"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/cloudevents/sdk-go/v2/event"
	"github.com/lxzan/gws"
	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"

	"github.com/virtufin/websocketmanager/eventlog"
	"github.com/virtufin/websocketmanager/eventlog/eventlogtest"
	"github.com/virtufin/websocketmanager/internal/daprtest"
	"github.com/virtufin/websocketmanager/internal/embedded"
	"github.com/virtufin/websocketmanager/internal/metrics"
	"github.com/virtufin/websocketmanager/internal/pubsub"
	"github.com/virtufin/websocketmanager/internal/state"
	"github.com/virtufin/websocketmanager/schemas"
	"github.com/virtufin/websocketmanager/socket"
)

// scrapeMetrics reads GET /metrics without credentials and parses the text
// exposition.
func scrapeMetrics(t *testing.T, svc *service) map[string]*dto.MetricFamily {
	t.Helper()
	resp, err := http.Get(svc.base + "/metrics")
	if err != nil {
		t.Fatalf("GET /metrics: %v", err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("GET /metrics without a token: got %s, want 200", resp.Status)
	}
	if ct := resp.Header.Get("Content-Type"); !strings.HasPrefix(ct, "text/plain") {
		t.Errorf("GET /metrics content type: got %q, want the text format", ct)
	}
	return parseMetrics(t, resp.Body)
}

func parseMetrics(t *testing.T, r io.Reader) map[string]*dto.MetricFamily {
	t.Helper()
	parser := expfmt.NewTextParser(model.UTF8Validation)
	families, err := parser.TextToMetricFamilies(r)
	if err != nil {
		t.Fatalf("parse /metrics: %v", err)
	}
	return families
}

// gatherMetrics serves one scrape of m in process and parses it.
func gatherMetrics(t *testing.T, m *serveMetrics) map[string]*dto.MetricFamily {
	t.Helper()
	rec := httptest.NewRecorder()
	m.Handler().ServeHTTP(rec, httptest.NewRequest(http.MethodGet, "/metrics", nil))
	if rec.Code != http.StatusOK {
		t.Fatalf("scrape: got status %d, want 200", rec.Code)
	}
	return parseMetrics(t, rec.Body)
}

// metricSample returns the value of the series of name whose labels
// include labels: a counter's or gauge's value, or a histogram's sample
// count. ok is false when no series matches.
func metricSample(families map[string]*dto.MetricFamily, name string, labels map[string]string) (v float64, ok bool) {
	for _, m := range families[name].GetMetric() {
		have := map[string]string{}
		for _, p := range m.GetLabel() {
			have[p.GetName()] = p.GetValue()
		}
		match := true
		for k, want := range labels {
			if have[k] != want {
				match = false
			}
		}
		if !match {
			continue
		}
		switch {
		case m.Counter != nil:
			return m.GetCounter().GetValue(), true
		case m.Gauge != nil:
			return m.GetGauge().GetValue(), true
		case m.Histogram != nil:
			return float64(m.GetHistogram().GetSampleCount()), true
		}
	}
	return 0, false
}

// TestMetricsThroughProcess connects real clients to a wsm process on the
// embedded backend, sends one client message and closes the clients, then
// checks what GET /metrics reports. The API token is set, and /metrics
// still needs none.
func TestMetricsThroughProcess(t *testing.T) {
	if testing.Short() {
		t.Skip("starts a process")
	}
	t.Setenv("WSM_API_TOKEN", "metrics-test-token-0123456789abcdef")
	const clients = 6
	svc := startService(t, t.TempDir())

	conns := dialAll(t, svc, clients)
	families := scrapeMetrics(t, svc)
	if got, _ := metricSample(families, "wsm_connections_open", nil); got != clients {
		t.Errorf("wsm_connections_open with every client connected: got %v, want %d", got, clients)
	}

	// A client message goes to the messages topic, in process here.
	if err := conns[0].conn.WriteString("hello"); err != nil {
		t.Fatalf("send a client message: %v", err)
	}
	for _, c := range conns {
		if err := c.conn.WriteClose(1000, []byte("bye")); err != nil {
			t.Fatalf("close client %s: %v", c.id, err)
		}
	}
	for _, c := range conns {
		select {
		case <-c.closed:
		case <-time.After(20 * time.Second):
			t.Fatalf("client %s still open 20s after its close frame", c.id)
		}
	}
	waitFor(t, 20*time.Second, "every disconnect and the client message in /metrics", func() bool {
		families = scrapeMetrics(t, svc)
		closes, _ := metricSample(families, "wsm_disconnects_total", map[string]string{"reason": schemas.ReasonClientClosed})
		published, _ := metricSample(families, "wsm_publish_successes_total", map[string]string{"topic": "messages"})
		return closes == clients && published == 1
	})

	connected := strings.TrimPrefix(schemas.TypeConnected, schemas.TypePrefix)
	disconnected := strings.TrimPrefix(schemas.TypeDisconnected, schemas.TypePrefix)
	heartbeat := strings.TrimPrefix(schemas.TypeHeartbeat, schemas.TypePrefix)
	tests := []struct {
		name   string
		metric string
		labels map[string]string
		want   func(float64) bool
		expect string
	}{
		{"connects", "wsm_connects_total", nil, equals(clients), "6"},
		{"open connections back to 0", "wsm_connections_open", nil, equals(0), "0"},
		{"client closes", "wsm_disconnects_total", map[string]string{"reason": schemas.ReasonClientClosed}, equals(clients), "6"},
		{"other reasons preset at 0", "wsm_disconnects_total", map[string]string{"reason": schemas.ReasonKicked}, equals(0), "0"},
		{"connected events appended", "wsm_eventlog_events_appended_total", map[string]string{"type": connected}, equals(clients), "6"},
		{"disconnected events appended", "wsm_eventlog_events_appended_total", map[string]string{"type": disconnected}, equals(clients), "6"},
		{"heartbeats appended", "wsm_eventlog_events_appended_total", map[string]string{"type": heartbeat}, above(0), "> 0"},
		{"batch size histogram", "wsm_eventlog_commit_batch_events", nil, above(0), "> 0 commits"},
		{"commit duration histogram", "wsm_eventlog_commit_duration_seconds", nil, above(0), "> 0 commits"},
		{"no commit retries", "wsm_eventlog_commit_retries_total", nil, equals(0), "0"},
		{"store transactions timed", "wsm_backend_call_duration_seconds",
			map[string]string{"backend": "embedded", "operation": "transact"}, above(0), "> 0 calls"},
		{"no store errors", "wsm_backend_call_errors_total",
			map[string]string{"backend": "embedded", "operation": "transact"}, equals(0), "0"},
		{"no send-queue drops", "wsm_send_queue_dropped_messages_total", nil, equals(0), "0"},
		{"client message published", "wsm_publish_successes_total", map[string]string{"topic": "messages"}, equals(1), "1"},
		{"no message publish failures", "wsm_publish_failures_total", map[string]string{"topic": "messages"}, equals(0), "0"},
		{"Go collector", "go_goroutines", nil, above(0), "> 0"},
		{"process collector", "process_resident_memory_bytes", nil, above(0), "> 0"},
	}
	for _, tc := range tests {
		got, ok := metricSample(families, tc.metric, tc.labels)
		if !ok {
			t.Errorf("%s: %s%v missing from /metrics", tc.name, tc.metric, tc.labels)
			continue
		}
		if !tc.want(got) {
			t.Errorf("%s: %s%v got %v, want %s", tc.name, tc.metric, tc.labels, got, tc.expect)
		}
	}
}

// TestMetricsFeedSubscribers subscribes to GET /events with the API token
// and checks that the feed's subscriber gauge follows.
func TestMetricsFeedSubscribers(t *testing.T) {
	if testing.Short() {
		t.Skip("starts a process")
	}
	const apiToken = "metrics-test-token-0123456789abcdef"
	t.Setenv("WSM_API_TOKEN", apiToken)
	svc := startService(t, t.TempDir())

	hdr := http.Header{}
	hdr.Set("Authorization", "Bearer "+apiToken)
	hdr.Set("Sec-WebSocket-Protocol", socket.FeedSubprotocol)
	closed := make(chan struct{})
	conn, _, err := gws.NewClient(&feedClient{closed: closed}, &gws.ClientOption{
		Addr: "ws" + strings.TrimPrefix(svc.base, "http") + "/events", RequestHeader: hdr,
	})
	if err != nil {
		t.Fatalf("subscribe to /events: %v", err)
	}
	go conn.ReadLoop()
	gauge := func() float64 {
		got, _ := metricSample(scrapeMetrics(t, svc), "wsm_feed_subscribers", nil)
		return got
	}
	waitFor(t, 20*time.Second, "wsm_feed_subscribers at 1", func() bool { return gauge() == 1 })

	if err := conn.WriteClose(1000, nil); err != nil {
		t.Fatalf("close the subscription: %v", err)
	}
	select {
	case <-closed:
	case <-time.After(20 * time.Second):
		t.Fatal("subscription still open 20s after its close frame")
	}
	waitFor(t, 20*time.Second, "wsm_feed_subscribers back at 0", func() bool { return gauge() == 0 })
}

// feedClient discards what the feed sends and reports the end of the
// connection.
type feedClient struct {
	gws.BuiltinEventHandler
	closed chan struct{}
}

func (c *feedClient) OnMessage(_ *gws.Conn, m *gws.Message) { m.Close() }

func (c *feedClient) OnClose(*gws.Conn, error) { close(c.closed) }

func equals(want float64) func(float64) bool { return func(got float64) bool { return got == want } }

func above(floor float64) func(float64) bool { return func(got float64) bool { return got > floor } }

// TestMetricsOnDapr checks the metrics that only the Dapr backend has: the
// sidecar calls, the breakers and the lifecycle publisher.
func TestMetricsOnDapr(t *testing.T) {
	if testing.Short() {
		t.Skip("runs a Dapr sidecar and a wsm process")
	}
	prefix := fleetPrefix(t)
	d := daprtest.Sidecar(t, daprtest.Options{Prefix: prefix})
	svc := startDaprService(t, d, "pod-m", prefix+".system-events")

	const clients = 2
	for _, c := range dialAll(t, svc, clients) {
		if err := c.conn.WriteClose(1000, nil); err != nil {
			t.Fatalf("close client %s: %v", c.id, err)
		}
	}
	// Each client's connected and disconnected events reach the topic, and
	// the reclaim loop, which starts within one interval, has made a pass.
	var families map[string]*dto.MetricFamily
	waitFor(t, 30*time.Second, "the lifecycle events published and a reclaim pass", func() bool {
		families = scrapeMetrics(t, svc)
		published, _ := metricSample(families, "wsm_publish_successes_total", map[string]string{"topic": "lifecycle"})
		passes, _ := metricSample(families, "wsm_reclaim_passes_total", map[string]string{"result": "ok"})
		return published >= 2*clients && passes > 0
	})

	tests := []struct {
		name   string
		metric string
		labels map[string]string
		want   func(float64) bool
		expect string
	}{
		{"state store breaker closed", "wsm_breaker_state", map[string]string{"dependency": "statestore"}, equals(0), "0"},
		{"pub/sub breaker closed", "wsm_breaker_state", map[string]string{"dependency": "pubsub"}, equals(0), "0"},
		{"sidecar transactions timed", "wsm_backend_call_duration_seconds",
			map[string]string{"backend": "dapr", "operation": "transact"}, above(0), "> 0 calls"},
		{"sidecar publishes timed", "wsm_backend_call_duration_seconds",
			map[string]string{"backend": "dapr", "operation": "publish"}, above(0), "> 0 calls"},
		{"no publish errors", "wsm_backend_call_errors_total",
			map[string]string{"backend": "dapr", "operation": "publish"}, equals(0), "0"},
		{"no lifecycle publish failures", "wsm_publish_failures_total", map[string]string{"topic": "lifecycle"}, equals(0), "0"},
		{"reclaim passes run", "wsm_reclaim_passes_total", map[string]string{"result": "ok"}, above(0), "> 0"},
		{"connects", "wsm_connects_total", nil, equals(clients), "2"},
	}
	for _, tc := range tests {
		got, ok := metricSample(families, tc.metric, tc.labels)
		if !ok {
			t.Errorf("%s: %s%v missing from /metrics", tc.name, tc.metric, tc.labels)
			continue
		}
		if !tc.want(got) {
			t.Errorf("%s: %s%v got %v, want %s", tc.name, tc.metric, tc.labels, got, tc.expect)
		}
	}
	if _, ok := metricSample(families, "wsm_breaker_state_changes_total", nil); ok {
		t.Errorf("wsm_breaker_state_changes_total: got a series, want none while no breaker changed state")
	}
}

func newTestServeMetrics(t *testing.T) *serveMetrics {
	t.Helper()
	m, err := newServeMetrics()
	if err != nil {
		t.Fatalf("newServeMetrics: %v", err)
	}
	return m
}

func TestCommittedCountsEventTypes(t *testing.T) {
	m := newTestServeMetrics(t)
	var records []eventlog.Record
	for _, typ := range []string{schemas.TypeConnected, schemas.TypeConnected, schemas.TypeDisconnected, schemas.TypeConnected} {
		ev := event.New()
		ev.SetType(typ)
		records = append(records, eventlog.Record{Event: &ev})
	}
	m.committed(eventlog.CommitInfo{Stream: "pod-a/inc-1", Records: records, Duration: time.Millisecond})
	families := gatherMetrics(t, m)

	tests := []struct {
		metric string
		labels map[string]string
		want   float64
	}{
		{"wsm_eventlog_events_appended_total", map[string]string{"type": "connection.connected"}, 3},
		{"wsm_eventlog_events_appended_total", map[string]string{"type": "connection.disconnected"}, 1},
		{"wsm_eventlog_commit_batch_events", nil, 1},
		{"wsm_eventlog_commit_duration_seconds", nil, 1},
	}
	for _, tc := range tests {
		if got, _ := metricSample(families, tc.metric, tc.labels); got != tc.want {
			t.Errorf("%s%v: got %v, want %v", tc.metric, tc.labels, got, tc.want)
		}
	}
}

func TestMeterPublishCountsAttempts(t *testing.T) {
	m := newTestServeMetrics(t)
	ps := embedded.NewPubSub()
	t.Cleanup(func() { ps.Close() })
	fail := true
	if err := ps.Subscribe(t.Context(), "t", func(context.Context, pubsub.Message) error {
		if fail {
			return errors.New("subscriber down")
		}
		return nil
	}); err != nil {
		t.Fatalf("Subscribe: %v", err)
	}
	metered := m.meterPublish(metrics.TopicMessages, ps)

	if err := metered.Publish(t.Context(), pubsub.Message{Topic: "t"}); err == nil {
		t.Fatal("Publish to a failing subscriber: got nil, want an error")
	}
	fail = false
	if err := metered.Publish(t.Context(), pubsub.Message{Topic: "t"}); err != nil {
		t.Fatalf("Publish: %v", err)
	}
	ended, cancel := context.WithCancel(t.Context())
	cancel()
	fail = true
	_ = metered.Publish(ended, pubsub.Message{Topic: "t"})
	families := gatherMetrics(t, m)

	tests := []struct {
		metric string
		want   float64
	}{
		{"wsm_publish_successes_total", 1},
		{"wsm_publish_failures_total", 1},
	}
	for _, tc := range tests {
		if got, _ := metricSample(families, tc.metric, map[string]string{"topic": "messages"}); got != tc.want {
			t.Errorf("%s{topic=messages}: got %v, want %v", tc.metric, got, tc.want)
		}
	}
}

func TestMeterStoreKeepsScanAndSnapshot(t *testing.T) {
	m := newTestServeMetrics(t)
	inner, err := embedded.Open(t.TempDir(), embedded.Options{})
	if err != nil {
		t.Fatalf("open embedded store: %v", err)
	}
	t.Cleanup(func() { inner.Close() })
	store := m.meterStore("embedded", inner)

	if _, ok := store.(state.Scanner); !ok {
		t.Error("metered embedded store: not a state.Scanner, want the inner store's Scan kept")
	}
	if _, ok := store.(state.Snapshotter); !ok {
		t.Error("metered embedded store: not a state.Snapshotter, want the inner store's Snapshot kept")
	}
	if _, ok := store.(state.RangeScanner); !ok {
		t.Error("metered embedded store: has no ScanRange, want the inner store's range scan kept for log reads")
	}
	if got, want := store.Capabilities(), inner.Capabilities(); got != want {
		t.Errorf("Capabilities: got %+v, want the inner store's %+v", got, want)
	}

	ctx := t.Context()
	if err := store.Transact(ctx, []state.Op{{Kind: state.Upsert, Key: "k", Value: []byte("v")}}); err != nil {
		t.Fatalf("Transact: %v", err)
	}
	if _, err := store.Get(ctx, "k"); err != nil {
		t.Fatalf("Get: %v", err)
	}
	if _, err := store.BulkGet(ctx, []string{"k", "missing"}); err != nil {
		t.Fatalf("BulkGet: %v", err)
	}
	conflict := state.Op{Kind: state.Upsert, Key: "k", Value: []byte("w"), MustNotExist: true}
	if err := store.Transact(ctx, []state.Op{conflict}); !errors.Is(err, state.ErrETagMismatch) {
		t.Fatalf("conditional Transact on an existing key: got %v, want ErrETagMismatch", err)
	}

	// A store that neither scans nor takes snapshots stays so when metered.
	faulty := eventlogtest.NewFaultyStore(inner)
	faulty.Break(eventlogtest.FaultAll, nil)
	broken := m.meterStore("embedded", faulty)
	if _, ok := broken.(state.Scanner); ok {
		t.Error("metered store without Scan: is a state.Scanner, want not")
	}
	if _, err := broken.Get(ctx, "k"); err == nil {
		t.Fatal("Get from a broken store: got nil, want an error")
	}
	families := gatherMetrics(t, m)

	tests := []struct {
		metric string
		op     string
		want   float64
	}{
		{"wsm_backend_call_duration_seconds", "transact", 2},
		{"wsm_backend_call_duration_seconds", "get", 2},
		{"wsm_backend_call_duration_seconds", "bulk_get", 1},
		{"wsm_backend_call_errors_total", "transact", 0},
		{"wsm_backend_call_errors_total", "get", 1},
	}
	for _, tc := range tests {
		labels := map[string]string{"backend": "embedded", "operation": tc.op}
		if got, _ := metricSample(families, tc.metric, labels); got != tc.want {
			t.Errorf("%s%v: got %v, want %v", tc.metric, labels, got, tc.want)
		}
	}
}

package metrics

import (
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"

	"github.com/virtufin/websocketmanager/internal/state"
	"github.com/virtufin/websocketmanager/schemas"
)

func newMetrics(t *testing.T) *Metrics {
	t.Helper()
	m, err := New(prometheus.NewRegistry())
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	return m
}

// scrape serves m's handler on loopback and parses one text exposition.
func scrape(t *testing.T, m *Metrics) map[string]*dto.MetricFamily {
	t.Helper()
	srv := httptest.NewServer(m.Handler())
	defer srv.Close()

	resp, err := http.Get(srv.URL)
	if err != nil {
		t.Fatalf("GET metrics: %v", err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("GET metrics: got %s, want 200", resp.Status)
	}
	parser := expfmt.NewTextParser(model.UTF8Validation)
	families, err := parser.TextToMetricFamilies(resp.Body)
	if err != nil {
		t.Fatalf("parse metrics: %v", err)
	}
	return families
}

// sample returns the value of the series of name with exactly labels: a
// counter's or gauge's value, or a histogram's sample count. ok is false
// when the series does not exist.
func sample(families map[string]*dto.MetricFamily, name string, labels map[string]string) (v float64, ok bool) {
	mf := families[name]
	if mf == nil {
		return 0, false
	}
	for _, m := range mf.GetMetric() {
		if !sameLabels(m.GetLabel(), labels) {
			continue
		}
		switch {
		case m.Counter != nil:
			return m.GetCounter().GetValue(), true
		case m.Gauge != nil:
			return m.GetGauge().GetValue(), true
		case m.Histogram != nil:
			return float64(m.GetHistogram().GetSampleCount()), true
		case m.Untyped != nil:
			return m.GetUntyped().GetValue(), true
		}
	}
	return 0, false
}

func sameLabels(got []*dto.LabelPair, want map[string]string) bool {
	if len(got) != len(want) {
		return false
	}
	for _, p := range got {
		if v, ok := want[p.GetName()]; !ok || v != p.GetValue() {
			return false
		}
	}
	return true
}

func TestNewPresetsFixedSeries(t *testing.T) {
	families := scrape(t, newMetrics(t))

	type series struct {
		name   string
		labels map[string]string
	}
	var want []series
	for _, r := range schemas.Reasons {
		want = append(want, series{"wsm_disconnects_total", map[string]string{"reason": r}})
	}
	for _, typ := range schemas.Types {
		want = append(want, series{"wsm_eventlog_events_appended_total", map[string]string{"type": strings.TrimPrefix(typ, schemas.TypePrefix)}})
	}
	for _, kind := range TopicKinds {
		want = append(want,
			series{"wsm_publish_successes_total", map[string]string{"topic": kind}},
			series{"wsm_publish_failures_total", map[string]string{"topic": kind}})
	}
	want = append(want,
		series{"wsm_connections_open", nil},
		series{"wsm_connects_total", nil},
		series{"wsm_send_queue_dropped_messages_total", nil},
		series{"wsm_send_queue_full_closes_total", nil},
		series{"wsm_eventlog_commit_batch_events", nil},
		series{"wsm_eventlog_commit_duration_seconds", nil},
		series{"wsm_eventlog_commit_retries_total", nil},
		series{"wsm_eventlog_append_backlog_events", nil},
		series{"wsm_reclaim_passes_total", map[string]string{"result": "ok"}},
		series{"wsm_reclaim_passes_total", map[string]string{"result": "error"}},
		series{"wsm_reclaim_claims_total", map[string]string{"result": "won"}},
		series{"wsm_reclaim_claims_total", map[string]string{"result": "lost"}},
		series{"wsm_reclaim_connections_total", nil},
		series{"wsm_feed_subscribers", nil},
	)
	for _, s := range want {
		v, ok := sample(families, s.name, s.labels)
		if !ok {
			t.Errorf("%s%v: missing after New", s.name, s.labels)
			continue
		}
		if v != 0 {
			t.Errorf("%s%v: got %v after New, want 0", s.name, s.labels, v)
		}
	}

	// The runtime and process collectors share the registry.
	for _, name := range []string{"go_goroutines", "process_cpu_seconds_total"} {
		if families[name] == nil {
			t.Errorf("%s: missing, want the standard collector's metric", name)
		}
	}
}

func TestRecordsEachHook(t *testing.T) {
	conflict := fmt.Errorf("transact: %w", state.ErrETagMismatch)
	tests := []struct {
		name   string
		record func(m *Metrics)
		metric string
		labels map[string]string
		want   float64
	}{
		{"connect counts", func(m *Metrics) { m.ConnectionOpened(); m.ConnectionOpened() },
			"wsm_connects_total", nil, 2},
		{"open gauge follows connects and disconnects", func(m *Metrics) {
			m.ConnectionOpened()
			m.ConnectionOpened()
			m.ConnectionClosed(schemas.ReasonKicked)
		}, "wsm_connections_open", nil, 1},
		{"disconnect by reason", func(m *Metrics) { m.ConnectionClosed(schemas.ReasonClientClosed) },
			"wsm_disconnects_total", map[string]string{"reason": "client_closed"}, 1},
		{"unknown reason is other", func(m *Metrics) { m.ConnectionClosed("bogus") },
			"wsm_disconnects_total", map[string]string{"reason": "other"}, 1},
		{"dropped message", func(m *Metrics) { m.SendDropped(true); m.SendDropped(false); m.SendDropped(false) },
			"wsm_send_queue_dropped_messages_total", nil, 3},
		{"queue-full close", func(m *Metrics) { m.SendDropped(true); m.SendDropped(false) },
			"wsm_send_queue_full_closes_total", nil, 1},
		{"events by short type", func(m *Metrics) { m.EventsAppended(schemas.TypeConnected, 3) },
			"wsm_eventlog_events_appended_total", map[string]string{"type": "connection.connected"}, 3},
		{"unknown event type is other", func(m *Metrics) { m.EventsAppended("x.y", 2) },
			"wsm_eventlog_events_appended_total", map[string]string{"type": "other"}, 2},
		{"batch size histogram", func(m *Metrics) { m.Committed(4, time.Millisecond); m.Committed(1, time.Millisecond) },
			"wsm_eventlog_commit_batch_events", nil, 2},
		{"commit duration histogram", func(m *Metrics) { m.Committed(4, time.Millisecond) },
			"wsm_eventlog_commit_duration_seconds", nil, 1},
		{"commit retries", func(m *Metrics) { m.CommitRetried(); m.CommitRetried() },
			"wsm_eventlog_commit_retries_total", nil, 2},
		{"backlog reads the function", func(m *Metrics) { m.SetAppendBacklog(func() int { return 7 }) },
			"wsm_eventlog_append_backlog_events", nil, 7},
		{"backlog without a function", func(m *Metrics) { m.SetAppendBacklog(nil) },
			"wsm_eventlog_append_backlog_events", nil, 0},
		{"backend calls preset", func(m *Metrics) { m.PresetBackendCalls("dapr", Operations...) },
			"wsm_backend_call_errors_total", map[string]string{"backend": "dapr", "operation": "bulk_get"}, 0},
		{"backend call latency", func(m *Metrics) { m.BackendCall("dapr", OpGet, time.Millisecond, nil) },
			"wsm_backend_call_duration_seconds", map[string]string{"backend": "dapr", "operation": "get"}, 1},
		{"backend call error", func(m *Metrics) { m.BackendCall("dapr", OpPublish, time.Millisecond, errors.New("down")) },
			"wsm_backend_call_errors_total", map[string]string{"backend": "dapr", "operation": "publish"}, 1},
		{"lost conditional write is no error", func(m *Metrics) {
			m.PresetBackendCalls("embedded", OpTransact)
			m.BackendCall("embedded", OpTransact, time.Millisecond, conflict)
		}, "wsm_backend_call_errors_total", map[string]string{"backend": "embedded", "operation": "transact"}, 0},
		{"breaker state at startup", func(m *Metrics) { m.SetBreakerState("statestore", BreakerClosed) },
			"wsm_breaker_state", map[string]string{"dependency": "statestore"}, 0},
		{"breaker open is 2", func(m *Metrics) { m.BreakerChanged("pubsub", BreakerClosed, BreakerOpen) },
			"wsm_breaker_state", map[string]string{"dependency": "pubsub"}, 2},
		{"breaker half-open is 1", func(m *Metrics) {
			m.BreakerChanged("pubsub", BreakerClosed, BreakerOpen)
			m.BreakerChanged("pubsub", BreakerOpen, BreakerHalfOpen)
		}, "wsm_breaker_state", map[string]string{"dependency": "pubsub"}, 1},
		{"breaker changes", func(m *Metrics) {
			m.BreakerChanged("statestore", BreakerClosed, BreakerOpen)
			m.BreakerChanged("statestore", BreakerHalfOpen, BreakerOpen)
			m.BreakerChanged("statestore", BreakerClosed, BreakerOpen)
		}, "wsm_breaker_state_changes_total", map[string]string{"dependency": "statestore", "from": "closed", "to": "open"}, 2},
		{"reclaim pass ok", func(m *Metrics) { m.ReclaimPass(false) },
			"wsm_reclaim_passes_total", map[string]string{"result": "ok"}, 1},
		{"reclaim pass error", func(m *Metrics) { m.ReclaimPass(true) },
			"wsm_reclaim_passes_total", map[string]string{"result": "error"}, 1},
		{"claims won", func(m *Metrics) { m.ReclaimClaim(true); m.ReclaimClaim(false) },
			"wsm_reclaim_claims_total", map[string]string{"result": "won"}, 1},
		{"claims lost", func(m *Metrics) { m.ReclaimClaim(false); m.ReclaimClaim(false) },
			"wsm_reclaim_claims_total", map[string]string{"result": "lost"}, 2},
		{"reclaimed connections", func(m *Metrics) { m.ConnectionsReclaimed(5); m.ConnectionsReclaimed(0) },
			"wsm_reclaim_connections_total", nil, 5},
		{"publish success", func(m *Metrics) { m.Published(TopicLifecycle, nil) },
			"wsm_publish_successes_total", map[string]string{"topic": "lifecycle"}, 1},
		{"publish failure", func(m *Metrics) { m.Published(TopicMessages, errors.New("down")) },
			"wsm_publish_failures_total", map[string]string{"topic": "messages"}, 1},
		{"feed subscribers", func(m *Metrics) { m.SetFeedSubscribers(3); m.SetFeedSubscribers(2) },
			"wsm_feed_subscribers", nil, 2},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			m := newMetrics(t)
			tc.record(m)
			got, ok := sample(scrape(t, m), tc.metric, tc.labels)
			if !ok {
				t.Fatalf("%s%v: missing", tc.metric, tc.labels)
			}
			if got != tc.want {
				t.Errorf("%s%v: got %v, want %v", tc.metric, tc.labels, got, tc.want)
			}
		})
	}
}

func TestHistogramBuckets(t *testing.T) {
	m := newMetrics(t)
	m.Committed(3, 3*time.Millisecond)
	families := scrape(t, m)

	tests := []struct {
		metric string
		le     float64 // the smallest bucket that holds the observation
	}{
		{"wsm_eventlog_commit_batch_events", 4},
		{"wsm_eventlog_commit_duration_seconds", 0.004},
	}
	for _, tc := range tests {
		h := families[tc.metric].GetMetric()[0].GetHistogram()
		var first float64
		for _, b := range h.GetBucket() {
			if b.GetCumulativeCount() > 0 {
				first = b.GetUpperBound()
				break
			}
		}
		if first != tc.le {
			t.Errorf("%s: first non-empty bucket le=%v, want le=%v", tc.metric, first, tc.le)
		}
	}
}

func TestNewTwiceOnOneRegistryFails(t *testing.T) {
	reg := prometheus.NewRegistry()
	if _, err := New(reg); err != nil {
		t.Fatalf("first New: %v", err)
	}
	if _, err := New(reg); err == nil {
		t.Fatal("second New on the same registry: got nil error, want a registration error")
	}
	if _, err := New(nil); err == nil {
		t.Fatal("New(nil): got nil error, want one")
	}
}

func TestNilMetricsIgnoresCalls(t *testing.T) {
	var m *Metrics
	m.ConnectionOpened()
	m.ConnectionClosed(schemas.ReasonClientClosed)
	m.SendDropped(true)
	m.EventsAppended(schemas.TypeConnected, 1)
	m.Committed(1, time.Millisecond)
	m.CommitRetried()
	m.SetAppendBacklog(func() int { return 1 })
	m.PresetBackendCalls("dapr", OpGet)
	m.BackendCall("dapr", OpGet, time.Millisecond, nil)
	m.SetBreakerState("statestore", BreakerOpen)
	m.BreakerChanged("statestore", BreakerClosed, BreakerOpen)
	m.ReclaimPass(false)
	m.ReclaimClaim(true)
	m.ConnectionsReclaimed(1)
	m.Published(TopicLifecycle, nil)
	m.SetFeedSubscribers(1)
}

// TestConcurrentUse calls several hooks from 8 goroutines, for -race, and
// checks that no count is lost.
func TestConcurrentUse(t *testing.T) {
	const workers, each = 8, 200
	m := newMetrics(t)
	var wg sync.WaitGroup
	for range workers {
		wg.Go(func() {
			for range each {
				m.ConnectionOpened()
				m.EventsAppended(schemas.TypeConnected, 1)
				m.Committed(1, time.Microsecond)
				m.BackendCall("embedded", OpTransact, time.Microsecond, nil)
				m.ConnectionClosed(schemas.ReasonClientClosed)
			}
		})
	}
	wg.Wait()

	families := scrape(t, m)
	tests := []struct {
		metric string
		labels map[string]string
		want   float64
	}{
		{"wsm_connects_total", nil, workers * each},
		{"wsm_disconnects_total", map[string]string{"reason": "client_closed"}, workers * each},
		{"wsm_connections_open", nil, 0},
		{"wsm_eventlog_commit_batch_events", nil, workers * each},
		{"wsm_backend_call_duration_seconds", map[string]string{"backend": "embedded", "operation": "transact"}, workers * each},
	}
	for _, tc := range tests {
		if got, _ := sample(families, tc.metric, tc.labels); got != tc.want {
			t.Errorf("%s%v: got %v, want %v", tc.metric, tc.labels, got, tc.want)
		}
	}
}

// TestMetricNamesFollowConventions checks the wsm_ metrics: _total on
// counters only, a unit suffix on histograms, and a help text on each.
func TestMetricNamesFollowConventions(t *testing.T) {
	families := scrape(t, newMetrics(t))
	var names []string
	for name := range families {
		if strings.HasPrefix(name, "wsm_") {
			names = append(names, name)
		}
	}
	sort.Strings(names)
	if len(names) == 0 {
		t.Fatal("no wsm_ metrics scraped")
	}
	for _, name := range names {
		mf := families[name]
		isCounter := mf.GetType() == dto.MetricType_COUNTER
		if got := strings.HasSuffix(name, "_total"); got != isCounter {
			t.Errorf("%s: type %v, ends in _total %v; want _total exactly on counters", name, mf.GetType(), got)
		}
		if mf.GetType() == dto.MetricType_HISTOGRAM && !strings.HasSuffix(name, "_seconds") && !strings.HasSuffix(name, "_events") {
			t.Errorf("%s: histogram without a unit suffix", name)
		}
		if mf.GetHelp() == "" {
			t.Errorf("%s: no help text", name)
		}
	}
}

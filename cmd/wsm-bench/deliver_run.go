package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"slices"
	"sync"
	"sync/atomic"
	"time"
)

// drainPoll is how often the drain checks whether every frame arrived.
const drainPoll = 5 * time.Millisecond

// apiStatusError is an API response with a status other than 2xx.
type apiStatusError struct {
	code int
	body string
}

func (e *apiStatusError) Error() string { return fmt.Sprintf("http %d: %s", e.code, e.body) }

// rejectedCredentials reports whether the API rejected the request's
// token: 401 for a missing one, 403 for a wrong one.
func rejectedCredentials(err error) bool {
	var status *apiStatusError
	return errors.As(err, &status) && (status.code == http.StatusUnauthorized || status.code == http.StatusForbidden)
}

// requestCause names the failure of an API request for the report.
func requestCause(err error) string {
	var status *apiStatusError
	if errors.As(err, &status) {
		return fmt.Sprintf("http %d", status.code)
	}
	return causeOf(err)
}

// sendStats collects the outcome of the requests of a run. It is safe for
// concurrent use.
type sendStats struct {
	attempted atomic.Int64
	succeeded atomic.Int64
	cutOff    atomic.Int64
	stalled   atomic.Bool
	rejected  atomic.Bool // the API rejected the token, so sending stopped

	mu          sync.Mutex
	latencies   []time.Duration
	failures    map[string]int
	firstErrors map[string]string
}

func (s *sendStats) addFailure(err error) {
	cause := requestCause(err)
	s.mu.Lock()
	defer s.mu.Unlock()
	s.failures[cause]++
	if _, ok := s.firstErrors[cause]; !ok {
		s.firstErrors[cause] = err.Error()
	}
}

// deliverRun is the state of one deliver run.
type deliverRun struct {
	cfg      *deliverConfig
	epoch    time.Time
	gate     *gate
	clients  []*deliverClient
	open     *stats
	send     *sendStats
	endpoint string
	payload  []byte
	http     *http.Client
}

// deliver opens cfg.clients clients, then sends messages through the API
// with cfg.senders senders until cfg.count requests or cfg.duration or ctx
// ends, waits up to cfg.drainTimeout for the frames still missing, closes
// the clients and reports. Progress lines go to progressOut unless it is
// nil.
func deliver(ctx context.Context, cfg *deliverConfig, progressOut io.Writer) *deliverReport {
	run := &deliverRun{
		cfg:     cfg,
		epoch:   time.Now(),
		gate:    newGate(cfg.window),
		open:    newStats(),
		send:    &sendStats{failures: map[string]int{}, firstErrors: map[string]string{}},
		payload: bytes.Repeat([]byte("x"), cfg.payloadBytes),
	}
	r := newDeliverReport(cfg)
	defer func() { r.Interrupted = ctx.Err() != nil }()

	run.openClients(ctx)
	r.addOpen(run.open, run.clients)
	clients := make([]*client, len(run.clients))
	for i, c := range run.clients {
		clients[i] = c.client
	}
	defer func() { r.ClosedCleanly, r.CloseTimeouts = closeAll(clients, cfg.client.concurrency) }()
	if r.OpenFailed > 0 || ctx.Err() != nil {
		return r
	}

	endpoint, err := cfg.endpoint(run.clients)
	if err != nil {
		r.addFailure("clients on several instances", err.Error())
		return r
	}
	run.endpoint, r.Endpoint = endpoint, endpoint
	transport := &http.Transport{
		MaxIdleConnsPerHost: cfg.senders,
		MaxConnsPerHost:     cfg.senders,
		IdleConnTimeout:     90 * time.Second,
		DisableCompression:  true,
	}
	defer transport.CloseIdleConnections()
	run.http = &http.Client{Transport: transport, Timeout: cfg.requestTimeout}

	sendStart := time.Since(run.epoch)
	run.sendAll(ctx, progressOut)
	sendEnd := time.Since(run.epoch)
	run.drain(ctx)
	r.addSend(run, sendStart, sendEnd)
	return r
}

// openClients opens the clients with cfg.client.concurrency connects at
// once, paced by --rate, all within openTimeout.
func (run *deliverRun) openClients(ctx context.Context) {
	cfg := run.cfg
	openCtx, cancel := context.WithTimeout(ctx, openTimeout)
	defer cancel()

	p := newPacer(cfg.client.rate, int64(cfg.clients))
	var mu sync.Mutex
	var workers sync.WaitGroup
	for range min(cfg.client.concurrency, cfg.clients) {
		workers.Go(func() {
			for p.take(openCtx) {
				i := run.open.attempted.Add(1) - 1
				c, lat, err := openDeliverClient(openCtx, cfg, uint64(i), run.gate, run.epoch)
				if err != nil {
					run.open.addFailure(err, ctx.Err() != nil)
					continue
				}
				run.open.addConnect(lat)
				mu.Lock()
				run.clients = append(run.clients, c)
				mu.Unlock()
			}
		})
	}
	workers.Wait()

	// Clients the pacer never handed out before openTimeout count as
	// failures too, so that every client is accounted for.
	missing := cfg.clients - len(run.clients) - int(run.open.failed()) - int(run.open.cutOff.Load())
	if missing > 0 && ctx.Err() == nil {
		run.open.mu.Lock()
		run.open.failures["open timeout"] += missing
		run.open.firstErrors["open timeout"] = fmt.Sprintf("%d clients not attempted within %v", missing, openTimeout)
		run.open.mu.Unlock()
	}
	run.gate.clients = run.clients
}

// sendAll runs the senders until the count, the duration, a stall or ctx
// ends them.
func (run *deliverRun) sendAll(ctx context.Context, progressOut io.Writer) {
	cfg := run.cfg
	stop, cancel := context.WithTimeout(ctx, cfg.client.duration)
	defer cancel()

	var background sync.WaitGroup
	progressCtx, stopProgress := context.WithCancel(stop)
	if progressOut != nil {
		background.Go(func() { run.progress(progressCtx, progressOut) })
	}

	limit := int64(maxCount)
	if cfg.count > 0 {
		limit = int64(cfg.count)
	}
	var next atomic.Int64
	var senders sync.WaitGroup
	for range cfg.senders {
		senders.Go(func() {
			var latencies []time.Duration
			defer func() {
				run.send.mu.Lock()
				run.send.latencies = append(run.send.latencies, latencies...)
				run.send.mu.Unlock()
			}()
			for {
				n := next.Add(1) - 1
				if n >= limit || runEnded(stop) {
					return
				}
				ok, stalled := run.gate.wait(stop, n, cfg.drainTimeout)
				if stalled {
					run.send.stalled.Store(true)
					cancel()
				}
				if !ok {
					return
				}
				start := time.Now()
				err := run.post(ctx)
				switch {
				case err == nil:
					run.send.succeeded.Add(1)
					latencies = append(latencies, time.Since(start))
				case ctx.Err() != nil:
					run.gate.failed.Add(1)
					run.send.cutOff.Add(1)
				default:
					run.gate.failed.Add(1)
					run.send.addFailure(err)
					if rejectedCredentials(err) {
						// Every further request would be rejected the same way.
						run.send.rejected.Store(true)
						cancel()
					}
				}
				run.send.attempted.Add(1)
			}
		})
	}
	senders.Wait()
	stopProgress()
	background.Wait()
}

// post sends one message through the API and reads the response.
func (run *deliverRun) post(ctx context.Context) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, run.endpoint, bytes.NewReader(run.payload))
	if err != nil {
		return err
	}
	req.Header.Set("Content-Type", "text/plain")
	if run.cfg.apiToken != "" {
		req.Header.Set("Authorization", "Bearer "+run.cfg.apiToken)
	}
	resp, err := run.http.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, maxResponseBytes))
	if resp.StatusCode < 200 || resp.StatusCode > 299 {
		return &apiStatusError{code: resp.StatusCode, body: string(bytes.TrimSpace(body[:min(len(body), 200)]))}
	}
	return err
}

// drain waits until every client has received a frame for each request
// that succeeded, or cfg.drainTimeout passes, or ctx ends.
func (run *deliverRun) drain(ctx context.Context) {
	want := run.send.succeeded.Load()
	deadline := time.Now().Add(run.cfg.drainTimeout)
	for ctx.Err() == nil && time.Now().Before(deadline) {
		if !slices.ContainsFunc(run.clients, func(c *deliverClient) bool { return c.received.Load() < want }) {
			return
		}
		time.Sleep(drainPoll)
	}
}

// progress prints a line to w every second until ctx ends: requests and
// frames so far and the frame rate of the last second.
func (run *deliverRun) progress(ctx context.Context, w io.Writer) {
	ticker := time.NewTicker(time.Second)
	defer ticker.Stop()
	start, last := time.Now(), int64(0)
	for {
		select {
		case <-ctx.Done():
			return
		case <-ticker.C:
			var frames int64
			for _, c := range run.clients {
				frames += c.received.Load()
			}
			fmt.Fprintf(w, "%5.0fs  requests %d  failed %d  frames %d  rate %d frames/s\n",
				time.Since(start).Seconds(), run.send.attempted.Load(), run.gate.failed.Load(), frames, frames-last)
			last = frames
		}
	}
}

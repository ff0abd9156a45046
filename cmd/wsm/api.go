package main

import (
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"time"

	"github.com/rs/zerolog"

	"github.com/virtufin/websocketmanager/eventlog"
	"github.com/virtufin/websocketmanager/internal/state"
	"github.com/virtufin/websocketmanager/projections"
	"github.com/virtufin/websocketmanager/workers"
)

// apiError is the body of every error response.
type apiError struct {
	Error string `json:"error"`
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	// Compact: indenting took about 6% of the CPU of a send to a user in a
	// profile of wsm-bench deliver.
	json.NewEncoder(w).Encode(v)
}

func writeError(w http.ResponseWriter, status int, msg string) {
	writeJSON(w, status, apiError{Error: msg})
}

// api serves the backend API, health, and the admin endpoints that replay
// and rebuild use while the service holds the store. Everything under /v1/
// requires the API token; health does not.
type api struct {
	store  state.Store
	log    *eventlog.Log
	views  projections.Reader
	ready  func(ctx context.Context) readiness
	logger zerolog.Logger

	auth apiAuth
	// delivery sends to and closes connections wherever they are.
	delivery *workers.Delivery
	// self returns this instance's current identity.
	self func() workers.Identity
	// peers returns the liveness observer's view of the other instances;
	// nil on the embedded backend, which has no peers.
	peers func() []workers.Peer

	// patterns lists the token-protected routes that routes registered.
	patterns []string
}

func (a *api) routes(mux *http.ServeMux) {
	a.handle(mux, "GET /v1/connections", a.listConnections)
	a.handle(mux, "GET /v1/connections/{id}", a.getConnection)
	a.handle(mux, "DELETE /v1/connections/{id}", a.closeConnection)
	a.handle(mux, "POST /v1/connections/{id}/messages", a.sendToConnection)
	a.handle(mux, "POST /v1/users/{id}/messages", a.sendToUser)
	a.handle(mux, "POST /v1/instances/{id}/messages", a.sendToInstance)
	a.handle(mux, "GET /v1/instances", a.listInstances)
	a.handle(mux, "GET /v1/admin/replay", a.replay)
	a.handle(mux, "POST /v1/admin/verify", a.verify)
	mux.HandleFunc("GET /healthz", a.healthz)
	mux.HandleFunc("GET /readyz", a.readyz)
}

// handle registers a token-protected route.
func (a *api) handle(mux *http.ServeMux, pattern string, h http.HandlerFunc) {
	a.patterns = append(a.patterns, pattern)
	mux.Handle(pattern, a.auth.wrap(h))
}

// connectionJSON is a connection entry as the API shows it.
type connectionJSON struct {
	*projections.Connection
	State string `json:"state"` // open or closed
}

func newConnectionJSON(c *projections.Connection) connectionJSON {
	s := "open"
	if !c.Open() {
		s = "closed"
	}
	return connectionJSON{Connection: c, State: s}
}

func (a *api) getConnection(w http.ResponseWriter, r *http.Request) {
	id := r.PathValue("id")
	c, err := a.views.Connection(r.Context(), id)
	if err != nil {
		a.storeError(w, "read connection", err)
		return
	}
	if c == nil {
		writeError(w, http.StatusNotFound, "connection "+id+" not found")
		return
	}
	writeJSON(w, http.StatusOK, newConnectionJSON(c))
}

func (a *api) storeError(w http.ResponseWriter, what string, err error) {
	a.logger.Error().Err(err).Msg(what + " failed")
	writeError(w, http.StatusServiceUnavailable, what+": state store unavailable: "+err.Error())
}

func (a *api) healthz(w http.ResponseWriter, r *http.Request) {
	writeJSON(w, http.StatusOK, map[string]string{"status": "ok"})
}

// Overall readiness states.
const (
	statusHealthy   = "Healthy"
	statusDegraded  = "Degraded"
	statusUnhealthy = "Unhealthy"
)

// readiness is the body of /readyz.
type readiness struct {
	Status       string                `json:"status"`
	Dependencies map[string]dependency `json:"dependencies"`
}

// dependency is one dependency's state: up or down for a probed store, or
// closed, half-open or open for a circuit breaker.
type dependency struct {
	State     string       `json:"state"`
	Error     string       `json:"error,omitempty"`
	LatencyMS int64        `json:"latencyMs,omitempty"`
	Breaker   *breakerJSON `json:"breaker,omitempty"`
}

// breakerJSON holds a breaker's counts since its last state change.
type breakerJSON struct {
	Requests            uint32 `json:"requests"`
	Successes           uint32 `json:"successes"`
	Failures            uint32 `json:"failures"`
	ConsecutiveFailures uint32 `json:"consecutiveFailures"`
}

func (a *api) readyz(w http.ResponseWriter, r *http.Request) {
	ctx, cancel := context.WithTimeout(r.Context(), 2*time.Second)
	defer cancel()
	rd := a.ready(ctx)
	status := http.StatusOK
	if rd.Status == statusUnhealthy {
		status = http.StatusServiceUnavailable
	}
	writeJSON(w, status, rd)
}

// checkStore reads one key to check that the store responds.
func checkStore(ctx context.Context, store state.Store) dependency {
	start := time.Now()
	_, err := store.Get(ctx, projections.InstanceIndexKey)
	d := dependency{State: "up", LatencyMS: time.Since(start).Milliseconds()}
	if err != nil {
		d.State, d.Error = "down", err.Error()
	}
	return d
}

func (a *api) replay(w http.ResponseWriter, r *http.Request) {
	q := r.URL.Query()
	f, err := filterFromValues(q.Get, q["type"], time.Now())
	if err != nil {
		writeError(w, http.StatusBadRequest, err.Error())
		return
	}
	follow := q.Get("follow") == "true"
	w.Header().Set("Content-Type", "application/x-ndjson")
	flusher, _ := w.(http.Flusher)
	flush := func() {
		if flusher != nil {
			flusher.Flush()
		}
	}
	if err := writeRecords(r.Context(), a.log, f, follow, w, flush); err != nil && r.Context().Err() == nil {
		// The status line is gone; the client sees a cut stream.
		a.logger.Error().Err(err).Msg("replay for a client failed")
	}
}

func (a *api) verify(w http.ResponseWriter, r *http.Request) {
	res, err := projections.Verify(r.Context(), a.store)
	if err != nil {
		if errors.Is(err, context.Canceled) {
			return
		}
		writeError(w, http.StatusInternalServerError, "verify: "+err.Error())
		return
	}
	writeJSON(w, http.StatusOK, newVerifyReport(res))
}

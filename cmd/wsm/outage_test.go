package main

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"testing"
	"time"

	"github.com/lxzan/gws"

	"github.com/virtufin/websocketmanager/internal/daprtest"
	"github.com/virtufin/websocketmanager/schemas"
)

// readyStatus returns /readyz's status code and body fields.
func readyStatus(t *testing.T, svc *service) (int, string, string) {
	t.Helper()
	resp, err := http.Get(svc.base + "/readyz")
	if err != nil {
		return 0, "", ""
	}
	defer resp.Body.Close()
	var body struct {
		Status       string `json:"status"`
		Dependencies map[string]struct {
			State string `json:"state"`
		} `json:"dependencies"`
	}
	if err := json.NewDecoder(io.LimitReader(resp.Body, 1<<20)).Decode(&body); err != nil {
		return resp.StatusCode, "", ""
	}
	return resp.StatusCode, body.Status, body.Dependencies["statestore"].State
}

// TestFleetSurvivesStateStoreOutage freezes the state store's Redis for 30
// seconds under two instances while clients connect and disconnect. The
// breakers must open and /readyz report it, connected clients must stay
// connected, and after recovery no event may be missing from the log or the
// topic, no connection may be reclaimed, and the views must verify.
func TestFleetSurvivesStateStoreOutage(t *testing.T) {
	if testing.Short() {
		t.Skip("freezes a Redis for 30 seconds under two instances")
	}
	prefix := fleetPrefix(t)
	topic := prefix + ".system-events"
	redis := daprtest.RedisServer(t)
	opts := daprtest.Options{Prefix: prefix, RedisAddr: redis.Addr, PubSubRedisAddr: daprtest.DefaultRedisAddr}

	sub := startSubscriber(t, topic)
	subOpts := opts
	subOpts.AppID, subOpts.AppPort = "wsm-subscriber", sub.port
	subDaprd := daprtest.Prepare(t, subOpts)
	subDaprd.Start(t)

	sidecars := []*daprtest.Daprd{daprtest.Sidecar(t, opts), daprtest.Sidecar(t, opts)}
	// After the outage each instance's breaker stays open for up to its 5 s
	// open timeout before its queued heartbeats commit. A peer that
	// recovered first must not count that as death, so the TTL here exceeds
	// the open timeout plus the writer's longest retry delay.
	ttl := []string{"--heartbeat-ttl", "10s"}
	svcs := []*service{
		startDaprService(t, sidecars[0], "pod-a", topic, ttl...),
		startDaprService(t, sidecars[1], "pod-b", topic, ttl...),
	}

	const perInstance = 10
	var kept, leaving []*client
	for i, svc := range svcs {
		for j := range perInstance {
			c, err := dial(t, svc.wsURL(), fmt.Sprintf("user-%d-%d", i, j))
			if err != nil {
				t.Fatal(err)
			}
			if j < 3 {
				leaving = append(leaving, c)
			} else {
				kept = append(kept, c)
			}
		}
	}

	redis.Pause(t)
	outageStart := time.Now()

	// Clients come and go while the store is frozen.
	for _, c := range leaving {
		c.conn.WriteClose(1000, []byte("leaving during the outage"))
	}
	var arrivals []*closeRecorder
	for i := range 4 {
		r := &closeRecorder{welcome: make(chan struct{}, 1), code: make(chan uint16, 1)}
		hdr := http.Header{"Authorization": {"Bearer " + token(t, fmt.Sprintf("late-%d", i))}}
		conn, _, err := gws.NewClient(r, &gws.ClientOption{Addr: svcs[i%2].wsURL(), RequestHeader: hdr})
		if err != nil {
			continue // refused outright: nothing may be logged for it
		}
		go conn.ReadLoop()
		arrivals = append(arrivals, r)
	}

	waitFor(t, 25*time.Second, "/readyz to report the open state store breaker", func() bool {
		code, status, store := readyStatus(t, svcs[0])
		return code == http.StatusServiceUnavailable && status == statusUnhealthy && store == "open"
	})
	if wait := 30*time.Second - time.Since(outageStart); wait > 0 {
		time.Sleep(wait) // the outage lasts 30 s by design, not as a poll
	}
	for _, c := range kept {
		select {
		case <-c.closed:
			t.Errorf("client %s was closed during the outage, want it kept", c.id)
		default:
		}
	}
	redis.Resume(t)

	// Each instance's breaker closes on its own next calls, so both must
	// report healthy before their views are read.
	waitFor(t, 60*time.Second, "/readyz of both instances to report healthy again", func() bool {
		for _, svc := range svcs {
			code, status, _ := readyStatus(t, svc)
			if code != http.StatusOK || status != statusHealthy {
				return false
			}
		}
		return true
	})

	wantOpen := map[string]bool{}
	for _, c := range kept {
		wantOpen[c.id] = true
	}
	var lastList string
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("last listing of the views: %s", lastList)
		}
	})
	waitFor(t, 90*time.Second, "the views to list exactly the kept connections", func() bool {
		got, err := listOpenConnections(svcs[1], "")
		if err != nil {
			lastList = err.Error()
			return false
		}
		lastList = fmt.Sprintf("%d open, want %d: %v", len(got), len(wantOpen), got)
		for id := range got {
			if !wantOpen[id] {
				return false
			}
		}
		return len(got) == len(wantOpen)
	})

	evs := replayDapr(t, sidecars[0])
	connected, disconnected := map[string]int{}, map[string]int{}
	want := map[string]bool{}
	for _, ev := range evs {
		switch ev.Type() {
		case schemas.TypeConnected:
			connected[ev.Subject()]++
		case schemas.TypeDisconnected:
			disconnected[ev.Subject()]++
		case schemas.TypeReclaimed:
			t.Errorf("connection %s was reclaimed, want no reclaim: both instances lived through the outage", ev.Subject())
		}
		if ev.Type() != schemas.TypeHeartbeat {
			want[ev.ID()] = true
		}
	}
	for _, c := range leaving {
		if disconnected[c.id] != 1 {
			t.Errorf("client %s left during the outage: %d disconnected events, want 1", c.id, disconnected[c.id])
		}
	}
	for _, c := range kept {
		if connected[c.id] != 1 || disconnected[c.id] != 0 {
			t.Errorf("kept client %s: %d connected and %d disconnected events, want 1 and 0", c.id, connected[c.id], disconnected[c.id])
		}
	}
	for id, n := range connected {
		if n != 1 || (!wantOpen[id] && disconnected[id] != 1) {
			t.Errorf("connection %s: %d connected and %d disconnected events; a closed connection needs exactly one of each", id, n, disconnected[id])
		}
	}
	for i, r := range arrivals {
		select {
		case <-r.welcome:
			// Welcomed only once its connected event was durable, which a
			// frozen store cannot make within the append timeout.
			t.Errorf("client %d that connected during the outage was welcomed", i)
		default:
		}
	}

	waitFor(t, 60*time.Second, "every lifecycle event on the topic", func() bool {
		got, _ := sub.counts()
		for id := range want {
			if got[id] == 0 {
				return false
			}
		}
		return true
	})
	verifyDapr(t, sidecars[1])
}

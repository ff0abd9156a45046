package main

import (
	"net/http"
	"testing"
	"time"

	"github.com/virtufin/websocketmanager/internal/daprtest"
	"github.com/virtufin/websocketmanager/schemas"
)

// startDaprApp starts wsm on a port picked beforehand and its sidecar with
// --app-port set to it, so the sidecar reads wsm's subscriptions. wsm runs
// first: the sidecar reports healthy only once the app listens, and wsm
// waits for the sidecar's gRPC API, which is up before that.
func startDaprApp(t *testing.T, prefix, instanceID, topic string) (*service, *daprtest.Daprd) {
	t.Helper()
	port := freeLoopbackPort(t)
	d := daprtest.Prepare(t, daprtest.Options{Prefix: prefix, AppPort: port})
	svc := startDaprServiceThen(t, d, instanceID, topic, func() { d.Start(t) },
		"--listen", loopbackAddr(port), "--topic-prefix", prefix+".")
	return svc, d
}

// TestBackendAPIAcrossDaprFleet requests a send and a close from one
// instance for a connection another instance holds, over real sidecars and
// Redis.
func TestBackendAPIAcrossDaprFleet(t *testing.T) {
	if testing.Short() {
		t.Skip("runs three Dapr sidecars and two wsm processes")
	}
	prefix := fleetPrefix(t)
	topic := prefix + ".system-events"
	sub := startSubscriber(t, topic)
	daprtest.Prepare(t, daprtest.Options{Prefix: prefix, AppID: "wsm-subscriber", AppPort: sub.port}).Start(t)

	a, sidecarA := startDaprApp(t, prefix, "pod-a", topic)
	b, _ := startDaprApp(t, prefix, "pod-b", topic)
	onA := dialRecording(t, a, "erin")
	onB := dialRecording(t, b, "erin")
	v1 := a.base + "/v1"

	t.Run("send to the other instance", func(t *testing.T) {
		r := call(t, http.MethodPost, v1+"/connections/"+onB.id+"/messages", "", []byte("across the fleet"),
			map[string]string{"Content-Type": "text/plain", "traceparent": testTraceparent})
		if got := checkResult(t, "text send", r, http.StatusAccepted, "queued"); got.InstanceID != "pod-b" {
			t.Errorf("text send: holder %q, want pod-b", got.InstanceID)
		}
		if got, want := onB.nextFrame(t), (frame{payload: "across the fleet"}); got != want {
			t.Errorf("client on pod-b got %+v, want %+v", got, want)
		}

		r = call(t, http.MethodPost, v1+"/connections/"+onB.id+"/messages", "", []byte{7, 0, 7},
			map[string]string{"Content-Type": "application/octet-stream"})
		checkResult(t, "binary send", r, http.StatusAccepted, "queued")
		if got, want := onB.nextFrame(t), (frame{binary: true, payload: "\x07\x00\x07"}); got != want {
			t.Errorf("client on pod-b got %+v, want %+v", got, want)
		}
	})

	t.Run("send to a user on both instances", func(t *testing.T) {
		r := call(t, http.MethodPost, v1+"/users/erin/messages", "", []byte("to erin"), nil)
		var body struct {
			Delivered int `json:"delivered"`
			Queued    int `json:"queued"`
			Unknown   int `json:"unknown"`
		}
		r.decode(t, &body)
		if r.status != http.StatusOK || body.Delivered != 1 || body.Queued != 1 || body.Unknown != 0 {
			t.Errorf("send to erin: got %d %s, want 200 with 1 delivered and 1 queued", r.status, r.body)
		}
		for _, c := range []*recordingClient{onA, onB} {
			if got, want := c.nextFrame(t), (frame{payload: "to erin"}); got != want {
				t.Errorf("client %s got %+v, want %+v", c.id, got, want)
			}
		}
	})

	t.Run("send to every connection of the other instance", func(t *testing.T) {
		r := call(t, http.MethodPost, v1+"/instances/pod-b/messages", "", []byte("to pod-b"),
			map[string]string{"Content-Type": "text/plain", "traceparent": testTraceparent})
		var body instanceResultBody
		r.decode(t, &body)
		if r.status != http.StatusAccepted || body.Result != "queued" || body.InstanceID != "pod-b" {
			t.Errorf("send to pod-b: got %d %s, want 202 queued for pod-b", r.status, r.body)
		}
		if got, want := onB.nextFrame(t), (frame{payload: "to pod-b"}); got != want {
			t.Errorf("client on pod-b got %+v, want %+v", got, want)
		}
		select {
		case f := <-onA.frames:
			t.Errorf("client on pod-a got %+v from a send to pod-b, want nothing", f)
		case <-time.After(200 * time.Millisecond):
		}
	})

	t.Run("instances", func(t *testing.T) {
		waitFor(t, apiTimeout, "pod-a to judge pod-b alive", func() bool {
			var body struct {
				Instances []struct {
					InstanceID string `json:"instanceId"`
					Liveness   string `json:"liveness"`
				} `json:"instances"`
			}
			getJSON(t, v1+"/instances", &body)
			got := map[string]string{}
			for _, i := range body.Instances {
				got[i.InstanceID] = i.Liveness
			}
			return got["pod-a"] == "alive" && got["pod-b"] == "alive"
		})
	})

	t.Run("kick through the other instance", func(t *testing.T) {
		r := call(t, http.MethodDelete, v1+"/connections/"+onB.id+"?reason=moved", "", nil,
			map[string]string{"traceparent": testTraceparent})
		checkResult(t, "kick", r, http.StatusAccepted, "queued")
		if code := onB.closeCode(t); code != 4000 {
			t.Errorf("client on pod-b closed with %d, want 4000", code)
		}

		var evID string
		waitFor(t, apiTimeout, "the kick's disconnected event in the log", func() bool {
			evs := replayDapr(t, sidecarA, "--type", "connection.disconnected", "--subject", onB.id)
			if len(evs) == 0 {
				return false
			}
			ev := evs[0]
			evID = ev.ID()
			var d schemas.Disconnected
			if err := ev.DataAs(&d); err != nil {
				t.Fatal(err)
			}
			tp, _ := ev.Extensions()[schemas.TraceparentExtension].(string)
			if d.Reason != schemas.ReasonKicked || d.CloseCode != 4000 || d.Detail != "moved" || tp != testTraceparent {
				t.Errorf("disconnected event: got reason %q code %d detail %q traceparent %q, want kicked 4000 \"moved\" %q",
					d.Reason, d.CloseCode, d.Detail, tp, testTraceparent)
			}
			return true
		})

		// The published copy keeps the trace context through Dapr.
		waitFor(t, apiTimeout, "the disconnected event on the events topic", func() bool {
			sub.mu.Lock()
			defer sub.mu.Unlock()
			ev, ok := sub.events[evID]
			if ok {
				if tp, _ := ev.Extensions()[schemas.TraceparentExtension].(string); tp != testTraceparent {
					t.Errorf("published disconnected event: traceparent %q, want %q", tp, testTraceparent)
				}
			}
			return ok
		})

		r = call(t, http.MethodDelete, v1+"/connections/"+onB.id, "", nil, nil)
		checkResult(t, "kick of the closed connection", r, http.StatusNotFound, "unknown")
		r = call(t, http.MethodPost, v1+"/connections/no-such-connection/messages", "", []byte("x"), nil)
		checkResult(t, "send to an unknown connection", r, http.StatusNotFound, "unknown")
	})
}

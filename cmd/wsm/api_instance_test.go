package main

import (
	"bytes"
	"net/http"
	"testing"
	"time"

	"github.com/virtufin/websocketmanager/socket"
)

// instanceResultBody is the body of a send to an instance.
type instanceResultBody struct {
	Error      string `json:"error"`
	InstanceID string `json:"instanceId"`
	Result     string `json:"result"`
	Delivered  int    `json:"delivered"`
	Unknown    int    `json:"unknown"`
	Detail     string `json:"detail"`
}

// TestBackendAPISendToInstance sends to every connection of an instance
// through a real process on the embedded backend. The targets are the
// process itself, an instance id it never saw, and an earlier instance in
// the same data directory, which the process reclaimed at startup.
func TestBackendAPISendToInstance(t *testing.T) {
	if testing.Short() {
		t.Skip("starts a process")
	}
	t.Setenv(apiTokenEnv, testAPIToken)
	dataDir := t.TempDir()

	old := startService(t, dataDir, "--instance-id", "pod-old")
	dialRecording(t, old, "frank")
	old.cmd.Process.Kill()
	<-old.done

	svc := startService(t, dataDir, "--instance-id", "pod-new")
	v1 := svc.base + "/v1"
	clients := []*recordingClient{dialRecording(t, svc, "grace"), dialRecording(t, svc, "grace"), dialRecording(t, svc, "heidi")}

	t.Run("this instance", func(t *testing.T) {
		r := call(t, http.MethodPost, v1+"/instances/pod-new/messages", testAPIToken, []byte(`{"to":"all"}`),
			map[string]string{"Content-Type": "application/json", "traceparent": testTraceparent})
		var body instanceResultBody
		r.decode(t, &body)
		if r.status != http.StatusOK || body.Result != "delivered" || body.InstanceID != "pod-new" {
			t.Errorf("send to pod-new: got %d %s, want 200 delivered for pod-new", r.status, r.body)
		}
		if body.Delivered != len(clients) || body.Unknown != 0 {
			t.Errorf("send to pod-new: got %d delivered and %d unknown, want %d and 0", body.Delivered, body.Unknown, len(clients))
		}
		for _, c := range clients {
			if got, want := c.nextFrame(t), (frame{payload: `{"to":"all"}`}); got != want {
				t.Errorf("%s got %+v, want %+v", c.id, got, want)
			}
		}

		r = call(t, http.MethodPost, v1+"/instances/pod-new/messages", testAPIToken, []byte{9, 0},
			map[string]string{"Content-Type": "application/octet-stream"})
		r.decode(t, &body)
		if r.status != http.StatusOK || body.Delivered != len(clients) {
			t.Errorf("binary send to pod-new: got %d %s, want 200 with %d delivered", r.status, r.body, len(clients))
		}
		for _, c := range clients {
			if got, want := c.nextFrame(t), (frame{binary: true, payload: "\x09\x00"}); got != want {
				t.Errorf("%s got %+v, want %+v", c.id, got, want)
			}
		}
	})

	t.Run("unknown instances", func(t *testing.T) {
		tests := []struct {
			instance   string
			wantDetail string
		}{
			{"pod-never", "no instance with this id in the views"},
			{"pod-old", "the instance is no longer live"},
		}
		for _, tt := range tests {
			r := call(t, http.MethodPost, v1+"/instances/"+tt.instance+"/messages", testAPIToken, []byte("x"), nil)
			var body instanceResultBody
			r.decode(t, &body)
			if r.status != http.StatusNotFound || body.Result != "unknown" || body.Error == "" {
				t.Errorf("send to %s: got %d %s, want 404 unknown with an error", tt.instance, r.status, r.body)
			}
			if body.Detail != tt.wantDetail {
				t.Errorf("send to %s: detail %q, want %q", tt.instance, body.Detail, tt.wantDetail)
			}
		}
		for _, c := range clients {
			select {
			case f := <-c.frames:
				t.Errorf("%s got %+v from a send to another instance, want nothing", c.id, f)
			case <-time.After(100 * time.Millisecond):
			}
		}
	})

	t.Run("errors", func(t *testing.T) {
		tests := []struct {
			name        string
			contentType string
			body        []byte
			wantStatus  int
		}{
			{"over the write limit", "application/octet-stream", make([]byte, socket.DefaultWriteLimit+1), http.StatusRequestEntityTooLarge},
			{"text not UTF-8", "text/plain", []byte{0xff}, http.StatusBadRequest},
			{"not text nor binary", "image/png", []byte("x"), http.StatusUnsupportedMediaType},
		}
		for _, tt := range tests {
			r := call(t, http.MethodPost, v1+"/instances/pod-new/messages", testAPIToken, tt.body,
				map[string]string{"Content-Type": tt.contentType})
			if r.status != tt.wantStatus || !bytes.Contains(r.body, []byte(`"error"`)) {
				t.Errorf("%s: got %d %.200s, want %d with a JSON error", tt.name, r.status, r.body, tt.wantStatus)
			}
		}
		if r := call(t, http.MethodPost, v1+"/instances/pod-new/messages", "", []byte("x"), nil); r.status != http.StatusUnauthorized {
			t.Errorf("without the token: got %d, want 401", r.status)
		}
	})
}

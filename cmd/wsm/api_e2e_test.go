package main

import (
	"bytes"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"slices"
	"strings"
	"testing"

	"github.com/virtufin/websocketmanager/schemas"
	"github.com/virtufin/websocketmanager/socket"
)

// TestBackendAPIAuth checks the token on every /v1 route of a real process:
// 401 with a Bearer challenge without one, 403 with a wrong one, and health
// outside the token.
func TestBackendAPIAuth(t *testing.T) {
	if testing.Short() {
		t.Skip("starts a process")
	}
	t.Setenv(apiTokenEnv, testAPIToken)
	svc := startService(t, t.TempDir())

	for _, pattern := range v1Patterns() {
		method, path, _ := strings.Cut(pattern, " ")
		path = strings.ReplaceAll(path, "{id}", "x")
		t.Run(pattern, func(t *testing.T) {
			tests := []struct {
				name       string
				hdr        map[string]string
				wantStatus int
			}{
				{"no header", nil, http.StatusUnauthorized},
				{"other scheme", map[string]string{"Authorization": "Basic " + testAPIToken}, http.StatusUnauthorized},
				{"wrong token", map[string]string{"Authorization": "Bearer " + testAPIToken + "x"}, http.StatusForbidden},
			}
			for _, tt := range tests {
				r := call(t, method, svc.base+path, "", nil, tt.hdr)
				var body struct {
					Error string `json:"error"`
				}
				r.decode(t, &body)
				if r.status != tt.wantStatus || body.Error == "" {
					t.Errorf("%s: got %d %s, want %d with a JSON error", tt.name, r.status, r.body, tt.wantStatus)
				}
				challenge := r.header.Get("WWW-Authenticate")
				if tt.wantStatus == http.StatusUnauthorized && !strings.HasPrefix(challenge, "Bearer") {
					t.Errorf("%s: WWW-Authenticate %q, want a Bearer challenge", tt.name, challenge)
				}
			}
		})
	}

	for _, path := range []string{"/healthz", "/readyz"} {
		if r := call(t, http.MethodGet, svc.base+path, "", nil, nil); r.status != http.StatusOK {
			t.Errorf("GET %s without a token: got %d, want 200", path, r.status)
		}
	}
	if r := call(t, http.MethodGet, svc.base+"/v1/connections", testAPIToken, nil, nil); r.status != http.StatusOK {
		t.Errorf("GET /v1/connections with the token: got %d %s, want 200", r.status, r.body)
	}
}

// TestBackendAPIOnEmbedded drives sends, kicks and listing through a real
// process on the embedded backend, where this instance holds every
// connection.
func TestBackendAPIOnEmbedded(t *testing.T) {
	if testing.Short() {
		t.Skip("starts a process")
	}
	t.Setenv(apiTokenEnv, testAPIToken)
	dataDir := t.TempDir()
	svc := startService(t, dataDir)
	v1 := svc.base + "/v1"

	alice1, alice2 := dialRecording(t, svc, "alice"), dialRecording(t, svc, "alice")
	bob := dialRecording(t, svc, "bob")

	t.Run("send", func(t *testing.T) {
		r := call(t, http.MethodPost, v1+"/connections/"+alice1.id+"/messages", testAPIToken, []byte(`{"hello":1}`),
			map[string]string{"Content-Type": "application/json"})
		b := checkResult(t, "text send", r, http.StatusOK, "delivered")
		if b.ConnectionID != alice1.id || b.InstanceID == "" {
			t.Errorf("text send: got connection %q on %q, want %q on this instance", b.ConnectionID, b.InstanceID, alice1.id)
		}
		if got, want := alice1.nextFrame(t), (frame{payload: `{"hello":1}`}); got != want {
			t.Errorf("alice1 got %+v, want %+v", got, want)
		}

		r = call(t, http.MethodPost, v1+"/connections/"+bob.id+"/messages", testAPIToken, []byte{0, 1, 0xff},
			map[string]string{"Content-Type": "application/octet-stream"})
		checkResult(t, "binary send", r, http.StatusOK, "delivered")
		if got, want := bob.nextFrame(t), (frame{binary: true, payload: "\x00\x01\xff"}); got != want {
			t.Errorf("bob got %+v, want %+v", got, want)
		}
	})

	t.Run("send errors", func(t *testing.T) {
		tests := []struct {
			name        string
			conn        string
			contentType string
			body        []byte
			wantStatus  int
		}{
			{"unknown connection", "no-such-connection", "text/plain", []byte("x"), http.StatusNotFound},
			{"over the write limit", bob.id, "application/octet-stream", make([]byte, socket.DefaultWriteLimit+1), http.StatusRequestEntityTooLarge},
			{"text not UTF-8", bob.id, "text/plain; charset=utf-8", []byte{0xff, 0xfe}, http.StatusBadRequest},
			{"not text nor binary", bob.id, "image/png", []byte("x"), http.StatusUnsupportedMediaType},
		}
		for _, tt := range tests {
			r := call(t, http.MethodPost, v1+"/connections/"+tt.conn+"/messages", testAPIToken, tt.body,
				map[string]string{"Content-Type": tt.contentType})
			if r.status != tt.wantStatus || !bytes.Contains(r.body, []byte(`"error"`)) {
				t.Errorf("%s: got %d %.200s, want %d with a JSON error", tt.name, r.status, r.body, tt.wantStatus)
			}
		}
		r := call(t, http.MethodPost, v1+"/connections/"+bob.id+"/messages", testAPIToken, make([]byte, socket.DefaultWriteLimit),
			map[string]string{"Content-Type": "application/octet-stream"})
		checkResult(t, "send of exactly the write limit", r, http.StatusOK, "delivered")
		if f := bob.nextFrame(t); len(f.payload) != socket.DefaultWriteLimit {
			t.Errorf("bob got %d bytes, want %d", len(f.payload), socket.DefaultWriteLimit)
		}
	})

	t.Run("send to user", func(t *testing.T) {
		r := call(t, http.MethodPost, v1+"/users/alice/messages", testAPIToken, []byte("to all of alice"), map[string]string{"Content-Type": "text/plain"})
		var body struct {
			UserID    string       `json:"userId"`
			Delivered int          `json:"delivered"`
			Queued    int          `json:"queued"`
			Unknown   int          `json:"unknown"`
			Results   []resultBody `json:"results"`
		}
		r.decode(t, &body)
		if r.status != http.StatusOK || body.UserID != "alice" || body.Delivered != 2 || body.Queued != 0 || body.Unknown != 0 || len(body.Results) != 2 {
			t.Fatalf("send to alice: got %d %s, want 200 with 2 delivered", r.status, r.body)
		}
		for _, c := range []*recordingClient{alice1, alice2} {
			if got, want := c.nextFrame(t), (frame{payload: "to all of alice"}); got != want {
				t.Errorf("%s got %+v, want %+v", c.id, got, want)
			}
		}
		r = call(t, http.MethodPost, v1+"/users/nobody/messages", testAPIToken, []byte("x"), nil)
		r.decode(t, &body)
		if r.status != http.StatusOK || len(body.Results) != 0 {
			t.Errorf("send to a user without connections: got %d %s, want 200 and no results", r.status, r.body)
		}
	})

	t.Run("pagination", func(t *testing.T) {
		all := map[string]bool{alice1.id: true, alice2.id: true, bob.id: true}
		for range 5 {
			all[dialRecording(t, svc, "carol").id] = true
		}
		var got []string
		cursor := ""
		pages := 0
		for ; pages < 10; pages++ {
			var page struct {
				Connections []struct {
					ConnectionID string `json:"connectionId"`
					State        string `json:"state"`
				} `json:"connections"`
				Count int    `json:"count"`
				Next  string `json:"next"`
			}
			r := call(t, http.MethodGet, v1+"/connections?limit=3&cursor="+url.QueryEscape(cursor), testAPIToken, nil, nil)
			if r.status != http.StatusOK {
				t.Fatalf("page %d: got %d %s, want 200", pages, r.status, r.body)
			}
			r.decode(t, &page)
			if page.Count != len(all) {
				t.Errorf("page %d: count %d, want %d", pages, page.Count, len(all))
			}
			if len(page.Connections) > 3 {
				t.Errorf("page %d: %d entries, want at most the limit 3", pages, len(page.Connections))
			}
			for _, c := range page.Connections {
				got = append(got, c.ConnectionID)
			}
			if page.Next == "" {
				pages++
				break
			}
			cursor = page.Next
		}
		if pages != 3 {
			t.Errorf("pages for %d connections at 3 a page: got %d, want 3", len(all), pages)
		}
		if !slices.IsSorted(got) || len(slices.Compact(slices.Clone(got))) != len(got) {
			t.Errorf("ids over all pages are not strictly ascending: %v", got)
		}
		if len(got) != len(all) {
			t.Errorf("got %d ids over all pages, want %d", len(got), len(all))
		}
		for _, id := range got {
			if !all[id] {
				t.Errorf("listed %s, which the test did not open", id)
			}
		}

		if ids := openConnectionIDs(t, svc, "?user=alice"); len(ids) != 2 || !ids[alice1.id] || !ids[alice2.id] {
			t.Errorf("?user=alice: got %v, want alice's 2 connections", ids)
		}
		for _, q := range []string{"limit=0", "limit=1001", "limit=ten", "cursor=bm90LW91cnM"} {
			if r := call(t, http.MethodGet, v1+"/connections?"+q, testAPIToken, nil, nil); r.status != http.StatusBadRequest {
				t.Errorf("?%s: got %d, want 400", q, r.status)
			}
		}
	})

	t.Run("kick", func(t *testing.T) {
		r := call(t, http.MethodDelete, v1+"/connections/"+alice2.id+"?code=4100&reason=too+many+sessions", testAPIToken, nil,
			map[string]string{"traceparent": testTraceparent})
		checkResult(t, "kick with code", r, http.StatusOK, "delivered")
		if code := alice2.closeCode(t); code != 4100 {
			t.Errorf("alice2 closed with %d, want 4100", code)
		}
		r = call(t, http.MethodDelete, v1+"/connections/"+bob.id, testAPIToken, nil, nil)
		checkResult(t, "kick", r, http.StatusOK, "delivered")
		if code := bob.closeCode(t); code != socket.DefaultKickCode {
			t.Errorf("bob closed with %d, want %d", code, socket.DefaultKickCode)
		}

		for _, q := range []string{"?code=1000", "?code=5000", "?code=x", "?reason=" + strings.Repeat("r", 1025)} {
			if r := call(t, http.MethodDelete, v1+"/connections/"+alice1.id+q, testAPIToken, nil, nil); r.status != http.StatusBadRequest {
				t.Errorf("DELETE %.30s: got %d, want 400", q, r.status)
			}
		}
		waitFor(t, apiTimeout, "the kicked connections to leave the views", func() bool {
			ids := openConnectionIDs(t, svc, "")
			return !ids[alice2.id] && !ids[bob.id]
		})
		r = call(t, http.MethodDelete, v1+"/connections/"+bob.id, testAPIToken, nil, nil)
		checkResult(t, "kick of a closed connection", r, http.StatusNotFound, "unknown")

		// Read through the running service, with the token from the
		// environment.
		var found bool
		for _, ev := range replay(t, dataDir, "--type", "connection.disconnected", "--subject", alice2.id) {
			var d schemas.Disconnected
			if err := ev.DataAs(&d); err != nil {
				t.Fatal(err)
			}
			tp, _ := ev.Extensions()[schemas.TraceparentExtension].(string)
			found = true
			if d.Reason != schemas.ReasonKicked || d.CloseCode != 4100 || d.Detail != "too many sessions" || tp != testTraceparent {
				t.Errorf("disconnected event: got reason %q code %d detail %q traceparent %q, want kicked 4100 \"too many sessions\" %q",
					d.Reason, d.CloseCode, d.Detail, tp, testTraceparent)
			}
		}
		if !found {
			t.Errorf("no disconnected event for %s in the log", alice2.id)
		}
	})

	t.Run("instances", func(t *testing.T) {
		var body struct {
			Instances []struct {
				InstanceID string `json:"instanceId"`
				State      string `json:"state"`
				Liveness   string `json:"liveness"`
			} `json:"instances"`
		}
		getJSON(t, v1+"/instances", &body)
		if len(body.Instances) != 1 || body.Instances[0].Liveness != "alive" || body.Instances[0].State != schemas.StateServing {
			t.Errorf("instances: got %+v, want this instance, serving and alive", body.Instances)
		}
	})

	t.Run("replay needs the token", func(t *testing.T) {
		cmd := exec.Command(wsmBinary(t), "replay", "--data-dir", dataDir)
		for _, kv := range os.Environ() {
			if !strings.HasPrefix(kv, apiTokenEnv+"=") {
				cmd.Env = append(cmd.Env, kv)
			}
		}
		out, err := cmd.CombinedOutput()
		if err == nil || !strings.Contains(string(out), "401") {
			t.Errorf("wsm replay without %s: got %v, %q; want a failure naming 401", apiTokenEnv, err, out)
		}
		verify(t, dataDir) // with the token
	})
}

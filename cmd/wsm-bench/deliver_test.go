package main

import (
	"bytes"
	"context"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/virtufin/websocketmanager/socket"
)

// smokeAPIToken is the backend API token of the smoke test's wsm.
const smokeAPIToken = "wsm-bench-smoke-api-token-0123"

// deliverScopes are the scopes with the client count each test run uses.
var deliverScopes = []struct {
	scope   string
	clients int
}{
	{scopeConnection, 1},
	{scopeUser, 4},
	{scopeInstance, 50},
}

// deliverJSON runs wsm-bench deliver with args plus --json --quiet, checks
// the exit code and decodes the report.
func deliverJSON(t *testing.T, ctx context.Context, wantCode int, args ...string) *deliverReport {
	t.Helper()
	var stdout, stderr bytes.Buffer
	args = append(append([]string{"deliver"}, args...), "--json", "--quiet")
	if code := run(ctx, args, &stdout, &stderr); code != wantCode {
		t.Fatalf("wsm-bench %s: exit code %d, want %d; stderr:\n%s\nstdout:\n%s",
			strings.Join(args, " "), code, wantCode, stderr.String(), stdout.String())
	}
	var r deliverReport
	if err := json.Unmarshal(stdout.Bytes(), &r); err != nil {
		t.Fatalf("decode report: %v\n%s", err, stdout.String())
	}
	return &r
}

// checkDelivered checks that a run delivered every message it sent to
// every one of its clients.
func checkDelivered(t *testing.T, r *deliverReport, clients int) {
	t.Helper()
	for _, c := range []struct {
		name      string
		got, want int64
	}{
		{"opened", r.Opened, int64(clients)},
		{"open failed", r.OpenFailed, 0},
		{"failed", r.Failed, 0},
		{"frames expected", r.FramesExpected, r.Succeeded * int64(clients)},
		{"frames received", r.FramesReceived, r.FramesExpected},
		{"frames lost", r.FramesLost, 0},
		{"frames beyond expected", r.FramesSurplus, 0},
		{"frames unexpected", r.FramesUnexpected, 0},
		{"clients dropped", r.ClientsDropped, 0},
		{"closed cleanly", r.ClosedCleanly, int64(clients)},
		{"request latency count", int64(r.Request.Count), r.Succeeded},
	} {
		if c.got != c.want {
			t.Errorf("%s: got %d, want %d (failures %v)", c.name, c.got, c.want, r.FirstErrors)
		}
	}
	if r.Succeeded == 0 {
		t.Errorf("succeeded: got 0, want some requests")
	}
	if r.Stalled {
		t.Error("stalled: got true, want false")
	}
	if r.MessagesPerSec <= 0 {
		t.Errorf("messages/s: got %v, want more than 0", r.MessagesPerSec)
	}
	if r.Request.P50 <= 0 || r.Request.P50 > r.Request.P99 || r.Request.P99 > r.Request.Max {
		t.Errorf("request latency: got %+v, want 0 < p50 <= p99 <= max", r.Request)
	}
}

// startAuthBaseline runs the baseline in-process with client tokens
// verified against smokeSecret.
func startAuthBaseline(t *testing.T) *baselineServer {
	t.Helper()
	auth, err := socket.NewAuthenticator(socket.AuthConfig{Secret: []byte(smokeSecret), AllowAnonymous: true})
	if err != nil {
		t.Fatal(err)
	}
	srv, err := startBaselineConfig(baselineConfig{
		listen: "127.0.0.1:0", readLimit: defaultBaselineReadLimit, ping: defaultBaselinePing, auth: auth,
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { srv.close() })
	return srv
}

func TestDeliverAgainstBaseline(t *testing.T) {
	t.Parallel()
	srv := startAuthBaseline(t)
	for _, tc := range deliverScopes {
		t.Run(tc.scope, func(t *testing.T) {
			r := deliverJSON(t, t.Context(), 0, "--url", srv.url(), "--scope", tc.scope, "--clients", strconv.Itoa(tc.clients),
				"--duration", "1s", "--token-secret", smokeSecret)
			checkDelivered(t, r, tc.clients)
			t.Logf("baseline, %s: %.0f messages/s, request latency %+v", tc.scope, r.MessagesPerSec, r.Request)
		})
	}
}

// TestSmokeDeliverAgainstWSM is the CI smoke run of deliver: every scope
// against a real wsm process, through its API with a token.
func TestSmokeDeliverAgainstWSM(t *testing.T) {
	if testing.Short() {
		t.Skip("builds and runs wsm")
	}
	t.Parallel()
	url := startWSM(t, apiTokenEnv+"="+smokeAPIToken)
	for _, tc := range deliverScopes {
		t.Run(tc.scope, func(t *testing.T) {
			r := deliverJSON(t, t.Context(), 0, "--url", url, "--scope", tc.scope, "--clients", strconv.Itoa(tc.clients),
				"--duration", "1s", "--token-secret", smokeSecret, "--api-token", smokeAPIToken, "--payload-bytes", "100")
			checkDelivered(t, r, tc.clients)
			t.Logf("wsm, %s: %.0f messages/s, request latency %+v", tc.scope, r.MessagesPerSec, r.Request)
		})
	}

	// A wrong token stops the run at the first rejection, and the report shows it.
	r := deliverJSON(t, t.Context(), 1, "--url", url, "--duration", "1m", "--anonymous", "--api-token", "wrong-"+smokeAPIToken)
	if !r.Rejected {
		t.Error("with a wrong API token: rejected is false, want true")
	}
	if r.Failed < 1 || r.Failed > 4 || r.Failures["http 403"] != int(r.Failed) || r.Succeeded != 0 {
		t.Errorf("with a wrong API token: got %d failed (%v) and %d succeeded, want 1 to 4 (the senders in flight), all http 403, and 0",
			r.Failed, r.Failures, r.Succeeded)
	}
}

func TestDeliverStopsAtCount(t *testing.T) {
	t.Parallel()
	srv := startTestBaseline(t)
	r := deliverJSON(t, t.Context(), 0, "--url", srv.url(), "--scope", scopeInstance, "--clients", "3", "--count", "200",
		"--senders", "8", "--anonymous")
	if r.Requests != 200 || r.Succeeded != 200 {
		t.Errorf("requests: got %d, %d succeeded, want 200 and 200", r.Requests, r.Succeeded)
	}
	checkDelivered(t, r, 3)
}

// fakeAPI responds to every send with status and never writes a frame, so a
// run against it loses every message it sends.
func fakeAPI(t *testing.T, status int) string {
	t.Helper()
	api := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.WriteHeader(status)
		w.Write([]byte(`{"delivered":1}`))
	}))
	t.Cleanup(api.Close)
	return api.URL
}

func TestDeliverReportsLostFrames(t *testing.T) {
	t.Parallel()
	srv := startTestBaseline(t)
	start := time.Now()
	r := deliverJSON(t, t.Context(), 1, "--url", srv.url(), "--api", fakeAPI(t, http.StatusOK), "--count", "10",
		"--drain-timeout", "300ms", "--anonymous")
	if r.Succeeded != 10 || r.FramesExpected != 10 || r.FramesLost != 10 || r.FramesReceived != 0 {
		t.Errorf("got %d succeeded, %d expected, %d lost, %d received; want 10, 10, 10, 0",
			r.Succeeded, r.FramesExpected, r.FramesLost, r.FramesReceived)
	}
	if elapsed := time.Since(start); elapsed > 10*time.Second {
		t.Errorf("run took %v, want about the 300ms drain timeout", elapsed)
	}
}

func TestDeliverStallsOnSilentClients(t *testing.T) {
	t.Parallel()
	srv := startTestBaseline(t)
	start := time.Now()
	r := deliverJSON(t, t.Context(), 1, "--url", srv.url(), "--api", fakeAPI(t, http.StatusOK), "--window", "4",
		"--duration", "1m", "--drain-timeout", "300ms", "--anonymous")
	if !r.Stalled {
		t.Error("stalled: got false, want true")
	}
	if r.Requests != 4 {
		t.Errorf("requests: got %d, want the window of 4", r.Requests)
	}
	if elapsed := time.Since(start); elapsed > 20*time.Second {
		t.Errorf("run took %v, want it to stop soon after the 300ms drain timeout, not after --duration", elapsed)
	}
}

func TestDeliverCountsFailedRequests(t *testing.T) {
	t.Parallel()
	srv := startTestBaseline(t)
	r := deliverJSON(t, t.Context(), 1, "--url", srv.url(), "--api", fakeAPI(t, http.StatusServiceUnavailable), "--count", "7",
		"--anonymous")
	if r.Failed != 7 || r.Failures["http 503"] != 7 {
		t.Errorf("failed: got %d (%v), want 7 with http 503", r.Failed, r.Failures)
	}
	if r.FramesExpected != 0 || r.FramesLost != 0 {
		t.Errorf("frames: got %d expected and %d lost, want none for failed requests", r.FramesExpected, r.FramesLost)
	}
}

func TestDeliverStopsOnMissingToken(t *testing.T) {
	t.Parallel()
	srv := startTestBaseline(t)
	start := time.Now()
	r := deliverJSON(t, t.Context(), 1, "--url", srv.url(), "--api", fakeAPI(t, http.StatusUnauthorized), "--duration", "1m",
		"--anonymous")
	if !r.Rejected {
		t.Error("rejected: got false, want true")
	}
	if r.Requests > 4 {
		t.Errorf("requests: got %d, want at most the 4 senders in flight at the first 401", r.Requests)
	}
	if elapsed := time.Since(start); elapsed > 20*time.Second {
		t.Errorf("run took %v, want it to stop at the first 401, not after --duration", elapsed)
	}
}

func TestBaselineSendRoutes(t *testing.T) {
	srv := startTestBaseline(t)
	r := deliverJSON(t, t.Context(), 0, "--url", srv.url(), "--scope", scopeInstance, "--clients", "2", "--count", "1", "--anonymous")
	checkDelivered(t, r, 2)

	tests := []struct {
		name        string
		path        string
		contentType string
		body        []byte
		wantStatus  int
		wantBody    string
	}{
		{"unknown connection", "/v1/connections/nobody/messages", "text/plain", []byte("x"), http.StatusNotFound, `"error"`},
		{"user without connections", "/v1/users/nobody/messages", "text/plain", []byte("x"), http.StatusOK, `{"delivered":0}`},
		{"other instance", "/v1/instances/pod-a/messages", "text/plain", []byte("x"), http.StatusNotFound, `"error"`},
		{"text not UTF-8", "/v1/users/nobody/messages", "text/plain", []byte{0xff}, http.StatusBadRequest, "UTF-8"},
		{"binary", "/v1/users/nobody/messages", "application/octet-stream", []byte{0xff}, http.StatusOK, `{"delivered":0}`},
		{"over the write limit", "/v1/users/nobody/messages", "text/plain", make([]byte, socket.DefaultWriteLimit+1), http.StatusRequestEntityTooLarge, "write limit"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			resp, err := http.Post(srv.apiURL()+tt.path, tt.contentType, bytes.NewReader(tt.body))
			if err != nil {
				t.Fatal(err)
			}
			defer resp.Body.Close()
			var body bytes.Buffer
			body.ReadFrom(resp.Body)
			if resp.StatusCode != tt.wantStatus {
				t.Errorf("status: got %d, want %d (%s)", resp.StatusCode, tt.wantStatus, body.String())
			}
			if !strings.Contains(body.String(), tt.wantBody) {
				t.Errorf("body: got %q, want it to contain %q", body.String(), tt.wantBody)
			}
		})
	}
}

func TestDeliverUsageErrors(t *testing.T) {
	t.Setenv(secretEnv, "")
	t.Setenv(apiTokenEnv, "")
	for _, tc := range []struct {
		name       string
		args       []string
		wantStderr []string
	}{
		{"unknown scope", []string{"--scope", "fleet", "--anonymous"}, []string{`--scope "fleet"`}},
		{"several clients of one connection", []string{"--clients", "3", "--anonymous"}, []string{"--clients 3", "takes 1"}},
		{"anonymous user scope", []string{"--scope", "user", "--anonymous"}, []string{"--scope user", "--token-secret"}},
		{"user scope over several users", []string{"--scope", "user", "--token-secret", smokeSecret, "--users", "3"}, []string{"--users 3"}},
		{"clients over the limit", []string{"--scope", "instance", "--clients", "20000", "--anonymous"}, []string{"--clients 20000", "--conn-limit 10000"}},
		{"several targets", []string{"--url", "ws://127.0.0.1:1/ws", "--url", "ws://127.0.0.1:2/ws", "--anonymous"}, []string{"one target"}},
		{"remote API", []string{"--api", "http://192.0.2.1:8080", "--anonymous"}, []string{"--api", "loopback", "--allow-remote"}},
		{"API with a path", []string{"--api", "http://127.0.0.1:8080/v1", "--anonymous"}, []string{"only scheme, host and port"}},
		{"payload over the write limit", []string{"--payload-bytes", "2000000", "--anonymous"}, []string{"--payload-bytes 2000000"}},
		{"every problem at once", []string{"--senders", "0", "--window", "0", "--count", "-1", "--drain-timeout", "0s"},
			[]string{"--senders 0", "--window 0", "--count -1", "--drain-timeout 0s", "no credentials"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var stdout, stderr bytes.Buffer
			if code := run(t.Context(), append([]string{"deliver"}, tc.args...), &stdout, &stderr); code != 2 {
				t.Errorf("exit code: got %d, want 2; stderr:\n%s", code, stderr.String())
			}
			for _, want := range tc.wantStderr {
				if !strings.Contains(stderr.String(), want) {
					t.Errorf("stderr: got %q, want it to contain %q", stderr.String(), want)
				}
			}
		})
	}
}

func TestDeliverTableReport(t *testing.T) {
	srv := startTestBaseline(t)
	var stdout, stderr bytes.Buffer
	args := []string{"deliver", "--url", srv.url(), "--count", "20", "--anonymous", "--quiet"}
	if code := run(t.Context(), args, &stdout, &stderr); code != 0 {
		t.Fatalf("exit code: got %d, want 0; stderr:\n%s", code, stderr.String())
	}
	for _, want := range []string{`(?m)^frames received +20$`, `(?m)^messages delivered/s +[0-9.]+$`, `(?m)^API request +20 +[0-9.]+ms`} {
		if !regexp.MustCompile(want).MatchString(stdout.String()) {
			t.Errorf("table: got\n%s\nwant it to match %q", stdout.String(), want)
		}
	}
}

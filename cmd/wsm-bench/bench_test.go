package main

import (
	"bytes"
	"context"
	"encoding/json"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/golang-jwt/jwt/v5"
)

// startTestBaseline runs the baseline server in-process on a free port.
func startTestBaseline(t *testing.T) *baselineServer {
	t.Helper()
	srv, err := startBaseline("127.0.0.1:0", defaultBaselineReadLimit, defaultBaselinePing)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { srv.close() })
	return srv
}

// runJSON runs wsm-bench with args plus --json --quiet and decodes the
// report it prints.
func runJSON(t *testing.T, ctx context.Context, args ...string) *report {
	t.Helper()
	var stdout, stderr bytes.Buffer
	args = append(args, "--json", "--quiet")
	if code := run(ctx, args, &stdout, &stderr); code != 0 {
		t.Fatalf("wsm-bench %s: exit code %d, want 0; stderr:\n%s", strings.Join(args, " "), code, stderr.String())
	}
	var r report
	if err := json.Unmarshal(stdout.Bytes(), &r); err != nil {
		t.Fatalf("decode report: %v\n%s", err, stdout.String())
	}
	return &r
}

// waitFor polls cond every 10 ms until it holds or timeout passes.
func waitFor(t *testing.T, timeout time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for %s", timeout, what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// remoteIPs returns the distinct client addresses of the open connections.
func (s *baselineServer) remoteIPs() map[netip.Addr]int {
	s.mu.Lock()
	defer s.mu.Unlock()
	ips := map[netip.Addr]int{}
	for c := range s.conns {
		ap, err := netip.ParseAddrPort(c.RemoteAddr().String())
		if err == nil {
			ips[ap.Addr()]++
		}
	}
	return ips
}

func checkHoldReport(t *testing.T, r *report, conns int64) {
	t.Helper()
	for _, c := range []struct {
		name      string
		got, want int64
	}{
		{"attempted", r.Attempted, conns},
		{"succeeded", r.Succeeded, conns},
		{"failed", r.Failed, 0},
		{"held", r.Held, conns},
		{"dropped", r.Dropped, 0},
		{"closed cleanly", r.ClosedCleanly, conns},
		{"close timeouts", r.CloseTimeouts, 0},
		{"connect latency count", int64(r.Connect.Count), conns},
	} {
		if c.got != c.want {
			t.Errorf("%s: got %d, want %d (failures %v)", c.name, c.got, c.want, r.FirstErrors)
		}
	}
	if r.Connect.P50 <= 0 || r.Connect.P50 > r.Connect.P99 || r.Connect.P99 > r.Connect.Max {
		t.Errorf("connect latency: got %+v, want 0 < p50 <= p99 <= max", r.Connect)
	}
}

func checkChurnReport(t *testing.T, r *report, seconds, rate float64) {
	t.Helper()
	if r.Failed != 0 {
		t.Errorf("failed: got %d, want 0 (%v)", r.Failed, r.FirstErrors)
	}
	if r.Cycle == nil {
		t.Fatal("cycle latency: got none, want a summary")
	}
	// Pacing allows one cycle per slot, so the count cannot pass the rate.
	if want := seconds * rate; float64(r.Cycle.Count) < 0.75*want || float64(r.Cycle.Count) > want+1 {
		t.Errorf("cycles: got %d, want about %.0f", r.Cycle.Count, want)
	}
	if r.CyclesPerSec > rate*1.05 {
		t.Errorf("cycles/s: got %.1f, want at most %.0f", r.CyclesPerSec, rate)
	}
}

func TestHoldAgainstBaselineSpreadsSources(t *testing.T) {
	t.Parallel()
	srv := startTestBaseline(t)

	ips := make(chan map[netip.Addr]int, 1)
	go func() {
		// Sample the server while the clients are held.
		deadline := time.Now().Add(10 * time.Second)
		for time.Now().Before(deadline) {
			if got := srv.remoteIPs(); sum(got) == 200 {
				ips <- got
				return
			}
			time.Sleep(10 * time.Millisecond)
		}
		ips <- srv.remoteIPs()
	}()

	r := runJSON(t, t.Context(), "hold", "--url", srv.url(), "--conns", "200",
		"--sources", "127.0.0.1-127.0.0.4", "--duration", "2s", "--anonymous")
	checkHoldReport(t, r, 200)
	if r.Sources != 4 {
		t.Errorf("sources: got %d, want 4", r.Sources)
	}

	got := <-ips
	if len(got) != 4 {
		t.Fatalf("client addresses seen by the server: got %v, want 4 addresses", got)
	}
	for ip, n := range got {
		if n != 50 {
			t.Errorf("connections from %s: got %d, want 50", ip, n)
		}
	}
	waitFor(t, 5*time.Second, "the server to see every client close", func() bool { return sum(srv.remoteIPs()) == 0 })
}

func sum(m map[netip.Addr]int) int {
	var n int
	for _, v := range m {
		n += v
	}
	return n
}

func TestChurnAgainstBaseline(t *testing.T) {
	t.Parallel()
	srv := startTestBaseline(t)
	r := runJSON(t, t.Context(), "churn", "--url", srv.url(), "--rate", "100", "--duration", "2s", "--anonymous")
	checkChurnReport(t, r, 2, 100)
}

func TestChurnStopsAtCount(t *testing.T) {
	t.Parallel()
	srv := startTestBaseline(t)
	r := runJSON(t, t.Context(), "churn", "--url", srv.url(), "--count", "50", "--concurrency", "8", "--anonymous")
	if r.Attempted != 50 || r.Cycle == nil || r.Cycle.Count != 50 {
		t.Errorf("attempted %d, cycles %v: want 50 and 50", r.Attempted, r.Cycle)
	}
}

func TestHoldSpreadsOverSeveralURLs(t *testing.T) {
	t.Parallel()
	a, b := startTestBaseline(t), startTestBaseline(t)
	done := make(chan *report, 1)
	go func() {
		done <- runJSON(t, t.Context(), "hold", "--url", a.url(), "--url", b.url(), "--conns", "20", "--duration", "1s", "--anonymous")
	}()
	waitFor(t, 5*time.Second, "10 clients on each server", func() bool {
		return sum(a.remoteIPs()) == 10 && sum(b.remoteIPs()) == 10
	})
	checkHoldReport(t, <-done, 20)
}

// TestInterruptStillReports cancels the context of run, as Ctrl-C does
// through signal.NotifyContext in main.
func TestInterruptStillReports(t *testing.T) {
	t.Parallel()
	srv := startTestBaseline(t)
	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	go func() {
		deadline := time.Now().Add(10 * time.Second)
		for sum(srv.remoteIPs()) < 30 && time.Now().Before(deadline) {
			time.Sleep(10 * time.Millisecond)
		}
		cancel()
	}()

	start := time.Now()
	r := runJSON(t, ctx, "hold", "--url", srv.url(), "--conns", "30", "--duration", "5m", "--anonymous")
	if !r.Interrupted {
		t.Error("interrupted: got false, want true")
	}
	if elapsed := time.Since(start); elapsed > 30*time.Second {
		t.Errorf("run took %v after the interrupt, want well under the 5m duration", elapsed)
	}

	// The server counts a client at the upgrade, before the client has its
	// welcome, so the interrupt may cut off the last few.
	for _, c := range []struct {
		name      string
		got, want int64
	}{
		{"attempted", r.Attempted, 30},
		{"succeeded plus cut off", r.Succeeded + r.CutOff, 30},
		{"failed", r.Failed, 0},
		{"held", r.Held, r.Succeeded},
		{"closed cleanly", r.ClosedCleanly, r.Succeeded},
	} {
		if c.got != c.want {
			t.Errorf("%s: got %d, want %d", c.name, c.got, c.want)
		}
	}
}

func TestTokensCarryDistinctSubjects(t *testing.T) {
	for _, tc := range []struct {
		users int
		i     uint64
		want  string
	}{
		{0, 0, "bench-user-0"},
		{0, 7, "bench-user-7"},
		{3, 7, "bench-user-1"},
		{1, 7, "bench-user-0"},
	} {
		raw, err := mintToken("secret", userFor(tc.i, tc.users))
		if err != nil {
			t.Fatal(err)
		}
		claims := jwt.MapClaims{}
		if _, err := jwt.ParseWithClaims(raw, claims, func(*jwt.Token) (any, error) { return []byte("secret"), nil },
			jwt.WithValidMethods([]string{"HS256"})); err != nil {
			t.Fatalf("parse minted token: %v", err)
		}
		if got := claims["sub"]; got != tc.want {
			t.Errorf("client %d of %d users: got sub %v, want %s", tc.i, tc.users, got, tc.want)
		}
	}
}

func TestSummarizePercentiles(t *testing.T) {
	ds := make([]time.Duration, 100)
	for i := range ds {
		ds[len(ds)-1-i] = time.Duration(i+1) * time.Millisecond
	}
	got := summarize(ds)
	want := latency{Count: 100, P50: 50, P90: 90, P99: 99, Max: 100}
	if got != want {
		t.Errorf("summarize 1..100 ms: got %+v, want %+v", got, want)
	}
	if got := summarize(nil); got != (latency{}) {
		t.Errorf("summarize nothing: got %+v, want zero", got)
	}
}

func TestParseSources(t *testing.T) {
	for _, tc := range []struct {
		in        string
		wantFirst string
		wantLen   int
		wantErr   string
	}{
		{"4", "127.0.0.1", 4, ""},
		{"127.0.0.1-127.0.0.16", "127.0.0.1", 16, ""},
		{"127.0.0.255-127.0.1.1", "127.0.0.255", 3, ""},
		{"0", "", 0, "count must be 1 to"},
		{"10.0.0.1-10.0.0.2", "", 0, "inside 127.0.0.0/8"},
		{"127.0.0.9-127.0.0.2", "", 0, "ascending"},
		{"127.0.0.1-127.0.255.255", "", 0, "more than 1024"},
		{"lo", "", 0, "want a count or a range"},
	} {
		got, err := parseSources(tc.in)
		if tc.wantErr != "" {
			if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
				t.Errorf("parseSources(%q): got error %v, want one containing %q", tc.in, err, tc.wantErr)
			}
			continue
		}
		if err != nil {
			t.Errorf("parseSources(%q): got error %v, want none", tc.in, err)
			continue
		}
		if len(got) != tc.wantLen || got[0].String() != tc.wantFirst {
			t.Errorf("parseSources(%q): got %d addresses from %v, want %d from %s", tc.in, len(got), got[0], tc.wantLen, tc.wantFirst)
		}
	}
}

func TestCheckTarget(t *testing.T) {
	for _, tc := range []struct {
		url         string
		allowRemote bool
		wantErr     string
	}{
		{"ws://127.0.0.1:8080/ws", false, ""},
		{"ws://127.3.4.5:8080/ws", false, ""},
		{"ws://[::1]:8080/ws", false, ""},
		{"ws://localhost:8080/ws", false, ""},
		// 192.0.2.0/24 is TEST-NET-1: checked as a string, never dialed.
		{"ws://192.0.2.1:8080/ws", false, "not loopback; pass --allow-remote"},
		{"ws://192.0.2.1:8080/ws", true, ""},
		{"http://127.0.0.1:8080/ws", false, "scheme must be ws or wss"},
		{"ws:///ws", false, "missing host"},
	} {
		err := checkTarget(t.Context(), tc.url, tc.allowRemote)
		switch {
		case tc.wantErr == "" && err != nil:
			t.Errorf("checkTarget(%q, allowRemote %v): got %v, want no error", tc.url, tc.allowRemote, err)
		case tc.wantErr != "" && (err == nil || !strings.Contains(err.Error(), tc.wantErr)):
			t.Errorf("checkTarget(%q, allowRemote %v): got %v, want an error containing %q", tc.url, tc.allowRemote, err, tc.wantErr)
		}
	}
}

func TestUsageErrors(t *testing.T) {
	t.Setenv(secretEnv, "")
	for _, tc := range []struct {
		name       string
		args       []string
		wantCode   int
		wantStderr []string
	}{
		{"no command", nil, 2, []string{"usage: wsm-bench"}},
		{"unknown command", []string{"flood"}, 2, []string{`unknown command "flood"`}},
		{"remote target", []string{"hold", "--url", "ws://192.0.2.1:8080/ws", "--anonymous"}, 2,
			[]string{"192.0.2.1", "not loopback", "--allow-remote"}},
		{"no credentials", []string{"hold"}, 2, []string{"--token-secret", secretEnv, "--anonymous"}},
		{"both credentials", []string{"hold", "--anonymous", "--token-secret", "s"}, 2, []string{"pass one, not both"}},
		{"conns over the limit", []string{"hold", "--anonymous", "--conns", "20000"}, 2, []string{"--conns 20000", "--conn-limit 10000"}},
		{"duration over the cap", []string{"churn", "--anonymous", "--duration", "1h"}, 2, []string{"--duration 1h0m0s", "at most 10m0s"}},
		{"every problem at once", []string{"churn", "--rate", "-1", "--count", "-1"}, 2,
			[]string{"--rate -1", "--count -1", "no credentials"}},
		{"bad sources", []string{"hold", "--anonymous", "--sources", "10.0.0.1-10.0.0.4"}, 2, []string{"--sources", "127.0.0.0/8"}},
		{"stray argument", []string{"hold", "--anonymous", "extra"}, 2, []string{`unexpected argument "extra"`}},
		{"undefined flag", []string{"churn", "--conns", "5"}, 2, []string{"flag provided but not defined: -conns"}},
		{"remote listen", []string{"baseline", "--listen", "0.0.0.0:0"}, 2, []string{"--listen", "loopback", "--allow-remote"}},
		{"bad ping interval", []string{"baseline", "--ping-interval", "0s"}, 2, []string{"--ping-interval 0s"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var stdout, stderr bytes.Buffer
			if code := run(t.Context(), tc.args, &stdout, &stderr); code != tc.wantCode {
				t.Errorf("exit code: got %d, want %d; stderr:\n%s", code, tc.wantCode, stderr.String())
			}
			for _, want := range tc.wantStderr {
				if !strings.Contains(stderr.String(), want) {
					t.Errorf("stderr: got %q, want it to contain %q", stderr.String(), want)
				}
			}
		})
	}
}

func TestTableReport(t *testing.T) {
	srv := startTestBaseline(t)
	var stdout, stderr bytes.Buffer
	args := []string{"hold", "--url", srv.url(), "--conns", "5", "--duration", "200ms", "--anonymous", "--quiet"}
	if code := run(t.Context(), args, &stdout, &stderr); code != 0 {
		t.Fatalf("exit code: got %d, want 0; stderr:\n%s", code, stderr.String())
	}
	for _, want := range []string{"succeeded           5", "connect (dial to welcome)  5", "p99"} {
		if !strings.Contains(stdout.String(), want) {
			t.Errorf("table: got\n%s\nwant it to contain %q", stdout.String(), want)
		}
	}
}

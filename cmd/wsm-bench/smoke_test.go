package main

import (
	"bufio"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// smokeSecret is the JWT secret the smoke test's wsm verifies tokens with.
const smokeSecret = "wsm-bench-smoke-secret-0123456789"

// startWSM builds wsm, starts it on a free loopback port with anonymous
// clients allowed and env added to its environment, and returns its
// WebSocket URL from the line it prints.
func startWSM(t *testing.T, env ...string) string {
	t.Helper()
	dir := t.TempDir()
	bin := filepath.Join(dir, "wsm")
	build := exec.Command("go", "build", "-o", bin, "github.com/virtufin/websocketmanager/cmd/wsm")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("go build wsm: %v\n%s", err, out)
	}

	cmd := exec.Command(bin, "serve", "--listen", "127.0.0.1:0", "--data-dir", filepath.Join(dir, "data"),
		"--allow-anonymous", "--log-level", "warn")
	cmd.Env = append(append(os.Environ(), secretEnv+"="+smokeSecret), env...)
	var logs strings.Builder
	cmd.Stderr = &lockedWriter{w: &logs}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatalf("start wsm: %v", err)
	}
	exited := make(chan struct{})
	urls := make(chan string, 1)
	go func() {
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			if rest, ok := strings.CutPrefix(sc.Text(), "wsm serving: clients connect to "); ok {
				url, _, _ := strings.Cut(rest, ",")
				urls <- url
				break
			}
		}
		io.Copy(io.Discard, stdout)
		cmd.Wait()
		close(exited)
	}()
	t.Cleanup(func() {
		cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-exited:
		case <-time.After(15 * time.Second):
			t.Error("wsm did not stop within 15s of SIGTERM; killing it")
			cmd.Process.Kill()
			<-exited
		}
		// cmd.Wait has returned, so nothing writes to logs any more.
		if t.Failed() {
			t.Logf("wsm stderr:\n%s", logs.String())
		}
	})

	select {
	case url := <-urls:
		return url
	case <-exited:
		t.Fatal("wsm exited before it printed where clients connect")
	case <-time.After(30 * time.Second):
		t.Fatal("wsm printed no \"wsm serving\" line within 30s")
	}
	return ""
}

// lockedWriter makes a builder safe to write from the process's copier
// while the test reads it.
type lockedWriter struct {
	mu sync.Mutex
	w  *strings.Builder
}

func (l *lockedWriter) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.w.Write(p)
}

// TestSmokeAgainstWSM is the CI smoke run: hold and churn against a real
// wsm process, with minted tokens and anonymous clients.
func TestSmokeAgainstWSM(t *testing.T) {
	if testing.Short() {
		t.Skip("builds and runs wsm")
	}
	t.Parallel()
	url := startWSM(t)

	r := runJSON(t, t.Context(), "hold", "--url", url, "--conns", "300", "--sources", "4",
		"--duration", "3s", "--token-secret", smokeSecret, "--users", "30")
	checkHoldReport(t, r, 300)
	t.Logf("hold: connect latency %+v", r.Connect)

	r = runJSON(t, t.Context(), "churn", "--url", url, "--rate", "100", "--duration", "2s", "--anonymous")
	checkChurnReport(t, r, 2, 100)
	t.Logf("churn: %.1f cycles/s, cycle latency %+v", r.CyclesPerSec, *r.Cycle)
}

package main

import (
	"bufio"
	"errors"
	"fmt"
	"net/http"
	"os/exec"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/lxzan/gws"

	"github.com/virtufin/websocketmanager/schemas"
)

func dialAll(t *testing.T, svc *service, n int) []*client {
	t.Helper()
	out := make([]*client, n)
	for i := range out {
		c, err := dial(t, svc.wsURL(), fmt.Sprintf("user-%d", i))
		if err != nil {
			t.Fatalf("client %d: %v", i, err)
		}
		out[i] = c
	}
	return out
}

// closeCode returns the close code a client received, or 0 for none.
type closeRecorder struct {
	gws.BuiltinEventHandler
	welcome chan struct{}
	code    chan uint16
}

func (h *closeRecorder) OnMessage(_ *gws.Conn, m *gws.Message) {
	m.Close()
	select {
	case h.welcome <- struct{}{}:
	default:
	}
}

func (h *closeRecorder) OnClose(_ *gws.Conn, err error) {
	var ce *gws.CloseError
	if errors.As(err, &ce) {
		h.code <- ce.Code
		return
	}
	h.code <- 0
}

func TestShutdownClosesClientsWith1001(t *testing.T) {
	if testing.Short() {
		t.Skip("starts a process")
	}
	dataDir := t.TempDir()
	svc := startService(t, dataDir)

	const n = 20
	recs := make([]*closeRecorder, n)
	for i := range recs {
		recs[i] = &closeRecorder{welcome: make(chan struct{}, 1), code: make(chan uint16, 1)}
		hdr := http.Header{"Authorization": {"Bearer " + token(t, "u")}}
		conn, _, err := gws.NewClient(recs[i], &gws.ClientOption{Addr: svc.wsURL(), RequestHeader: hdr})
		if err != nil {
			t.Fatal(err)
		}
		go conn.ReadLoop()
		select {
		case <-recs[i].welcome:
		case <-time.After(10 * time.Second):
			t.Fatalf("client %d got no welcome", i)
		}
	}

	svc.cmd.Process.Signal(syscall.SIGTERM)
	for i, r := range recs {
		select {
		case code := <-r.code:
			if code != 1001 {
				t.Errorf("client %d: close code %d, want 1001", i, code)
			}
		case <-time.After(15 * time.Second):
			t.Fatalf("client %d was not closed within 15s of SIGTERM", i)
		}
	}
	select {
	case <-svc.done:
	case <-time.After(15 * time.Second):
		t.Fatal("wsm did not exit within 15s of SIGTERM")
	}
	if code := svc.cmd.ProcessState.ExitCode(); code != 0 {
		t.Fatalf("exit code = %d, want 0\n%s", code, svc.stderr.String())
	}

	var shutdowns int
	var states []string
	for _, ev := range replay(t, dataDir) {
		switch ev.Type() {
		case schemas.TypeDisconnected:
			var d schemas.Disconnected
			ev.DataAs(&d)
			if d.Reason == schemas.ReasonServerShutdown && d.CloseCode == 1001 {
				shutdowns++
			}
		case schemas.TypeHeartbeat:
			var h schemas.Heartbeat
			ev.DataAs(&h)
			states = append(states, h.State)
		}
	}
	if shutdowns != n {
		t.Errorf("got %d server_shutdown disconnects with code 1001, want %d", shutdowns, n)
	}
	if len(states) < 2 || states[len(states)-2] != schemas.StateDraining || states[len(states)-1] != schemas.StateStopped {
		t.Errorf("heartbeat states end with %v, want ... draining, stopped", states)
	}
	verify(t, dataDir)
}

func TestUpgradeRejectsBadTokens(t *testing.T) {
	if testing.Short() {
		t.Skip("starts a process")
	}
	dataDir := t.TempDir()
	svc := startService(t, dataDir)

	tests := []struct {
		name string
		hdr  http.Header
		url  string
	}{
		{"no token", http.Header{}, svc.wsURL()},
		{"garbage", http.Header{"Authorization": {"Bearer not.a.jwt"}}, svc.wsURL()},
		{"wrong secret in query", http.Header{}, svc.wsURL() + "?access_token=" + wrongToken(t)},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, resp, err := gws.NewClient(gws.BuiltinEventHandler{}, &gws.ClientOption{Addr: tt.url, RequestHeader: tt.hdr})
			if err == nil {
				t.Fatal("upgrade succeeded, want 401")
			}
			if resp == nil || resp.StatusCode != http.StatusUnauthorized {
				t.Fatalf("got response %v (err %v), want 401", resp, err)
			}
		})
	}

	// A good token in the query parameter works, as browsers send it.
	c, _, err := gws.NewClient(gws.BuiltinEventHandler{}, &gws.ClientOption{Addr: svc.wsURL() + "?access_token=" + token(t, "q")})
	if err != nil {
		t.Fatalf("query token: %v", err)
	}
	c.WriteClose(1000, nil)

	svc.cmd.Process.Signal(syscall.SIGTERM)
	<-svc.done
	if got := len(replay(t, dataDir, "--type", "connection.connected")); got != 1 {
		t.Errorf("got %d connected events, want 1: rejected upgrades must leave no event", got)
	}
}

func wrongToken(t *testing.T) string {
	t.Helper()
	tok := token(t, "x")
	// Flip a character of the signature.
	last := tok[len(tok)-2]
	repl := byte('A')
	if last == 'A' {
		repl = 'B'
	}
	return tok[:len(tok)-2] + string(repl) + tok[len(tok)-1:]
}

func TestReplayFiltersOnStoppedStore(t *testing.T) {
	if testing.Short() {
		t.Skip("starts a process")
	}
	dataDir := t.TempDir()
	svc := startService(t, dataDir, "--instance-id", "pod-filter")
	cs := dialAll(t, svc, 3)
	for _, c := range cs {
		c.conn.WriteClose(1000, nil)
		<-c.closed
	}
	waitFor(t, 10*time.Second, "connections to close", func() bool { return len(openConnectionIDs(t, svc, "")) == 0 })
	svc.cmd.Process.Signal(syscall.SIGTERM)
	<-svc.done

	all := replay(t, dataDir)
	if len(all) == 0 {
		t.Fatal("replay printed nothing")
	}
	tests := []struct {
		name string
		args []string
		want func(evType, subject string) bool
	}{
		{"type", []string{"--type", "connection.disconnected"}, func(ty, _ string) bool { return ty == schemas.TypeDisconnected }},
		{"two types", []string{"--type", "connection.connected,connection.disconnected"},
			func(ty, _ string) bool { return ty == schemas.TypeConnected || ty == schemas.TypeDisconnected }},
		{"subject", []string{"--subject", cs[1].id}, func(_, s string) bool { return s == cs[1].id }},
		{"instance", []string{"--instance", "pod-filter"}, func(string, string) bool { return true }},
		{"other instance", []string{"--instance", "pod-other"}, func(string, string) bool { return false }},
		{"until long ago", []string{"--until", "2000-01-01T00:00:00Z"}, func(string, string) bool { return false }},
		{"since an hour", []string{"--since", "1h"}, func(string, string) bool { return true }},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var want int
			for _, ev := range all {
				if tt.want(ev.Type(), ev.Subject()) {
					want++
				}
			}
			got := replay(t, dataDir, tt.args...)
			if len(got) != want {
				t.Errorf("replay %s printed %d events, want %d", strings.Join(tt.args, " "), len(got), want)
			}
		})
	}

	out, err := exec.Command(wsmBinary(t), "replay", "--data-dir", t.TempDir()+"/none").CombinedOutput()
	if err == nil || !strings.Contains(string(out), "no store in") {
		t.Errorf("replay of a missing data dir: err %v, output %q; want a failure naming the missing store", err, out)
	}
}

// TestReplayFollowThroughService tails the log of a running service: a
// client that connects after `wsm replay --follow` started shows up in it.
func TestReplayFollowThroughService(t *testing.T) {
	if testing.Short() {
		t.Skip("starts a process")
	}
	dataDir := t.TempDir()
	svc := startService(t, dataDir)

	cmd := exec.Command(wsmBinary(t), "replay", "--data-dir", dataDir, "--follow", "--type", "connection.connected")
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	lines := make(chan string, 16)
	go func() {
		sc := bufio.NewScanner(out)
		sc.Buffer(make([]byte, 1<<20), 1<<20)
		for sc.Scan() {
			lines <- sc.Text()
		}
		close(lines)
	}()

	c, err := dial(t, svc.wsURL(), "follower")
	if err != nil {
		t.Fatal(err)
	}
	deadline := time.After(15 * time.Second)
	for {
		select {
		case line, ok := <-lines:
			if !ok {
				t.Fatal("replay --follow ended before the connect showed up")
			}
			if strings.Contains(line, c.id) {
				if err := cmd.Process.Signal(syscall.SIGINT); err != nil {
					t.Fatal(err)
				}
				if err := cmd.Wait(); err != nil {
					t.Errorf("replay --follow after SIGINT: %v, want exit 0", err)
				}
				return
			}
		case <-deadline:
			t.Fatalf("connected event of %s not printed by replay --follow within 15s", c.id)
		}
	}
}

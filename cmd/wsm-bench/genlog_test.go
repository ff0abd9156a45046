package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// TestGenlogPassesVerify writes a small log with genlog, then checks it
// with the real wsm binary: rebuild --verify accepts it, and replay prints
// as many events as genlog wrote and readlines counts.
func TestGenlogPassesVerify(t *testing.T) {
	if testing.Short() {
		t.Skip("builds and runs wsm")
	}
	t.Parallel()
	ctx, cancel := context.WithTimeout(t.Context(), 2*time.Minute)
	defer cancel()
	dir := t.TempDir()
	data := filepath.Join(dir, "data")

	const events = 3000
	var stdout, stderr bytes.Buffer
	args := []string{"genlog", "--data-dir", data, "--events", "3000", "--open", "40", "--crash-every", "800", "--json", "--quiet"}
	if code := run(ctx, args, &stdout, &stderr); code != 0 {
		t.Fatalf("wsm-bench %s: exit code %d, want 0; stderr:\n%s", strings.Join(args, " "), code, stderr.String())
	}
	var gen genlogReport
	if err := json.Unmarshal(stdout.Bytes(), &gen); err != nil {
		t.Fatalf("decode genlog report: %v\n%s", err, stdout.String())
	}
	if gen.Events != events {
		t.Errorf("genlog reported %d events, want %d", gen.Events, events)
	}
	if sum := gen.Connected + gen.Disconnected + gen.Reclaimed + gen.Heartbeats; sum != events {
		t.Errorf("genlog's counts by type add up to %d, want %d: %+v", sum, events, gen)
	}
	// A crash lasts until the restart, 30 to 40 s of event time or 24,000
	// to 32,000 events of 8 instances, so a log this short contains one.
	if gen.Crashes != 1 || gen.Reclaimed == 0 {
		t.Errorf("genlog simulated %d crashes with %d reclaimed events, want 1 crash with reclaimed events", gen.Crashes, gen.Reclaimed)
	}
	if want := 8 + gen.Crashes; gen.Streams != want {
		t.Errorf("genlog wrote %d streams, want %d: one per instance and one per restart", gen.Streams, want)
	}

	wsm := buildWSMBinary(t, ctx, dir)
	out, err := exec.CommandContext(ctx, wsm, "rebuild", "--verify", "--data-dir", data).CombinedOutput()
	if err != nil {
		t.Fatalf("wsm rebuild --verify: %v\n%s", err, out)
	}
	if want := "views match the log: 3000 events"; !strings.HasPrefix(string(out), want) {
		t.Errorf("wsm rebuild --verify printed %q, want it to start with %q", out, want)
	}

	lines := filepath.Join(dir, "events.jsonl")
	f, err := os.Create(lines)
	if err != nil {
		t.Fatal(err)
	}
	replay := exec.CommandContext(ctx, wsm, "replay", "--data-dir", data)
	replay.Stdout = f
	var replayErr bytes.Buffer
	replay.Stderr = &replayErr
	err = replay.Run()
	f.Close()
	if err != nil {
		t.Fatalf("wsm replay: %v\n%s", err, replayErr.String())
	}
	if n := countLines(t, lines); n != events {
		t.Errorf("wsm replay printed %d lines, want %d", n, events)
	}

	stdout.Reset()
	stderr.Reset()
	if code := run(ctx, []string{"readlines", "--file", lines, "--json"}, &stdout, &stderr); code != 0 {
		t.Fatalf("wsm-bench readlines: exit code %d, want 0; stderr:\n%s", code, stderr.String())
	}
	var read readlinesReport
	if err := json.Unmarshal(stdout.Bytes(), &read); err != nil {
		t.Fatalf("decode readlines report: %v\n%s", err, stdout.String())
	}
	if read.Events != events {
		t.Errorf("readlines counted %d events, want %d", read.Events, events)
	}
}

func TestGenlogRejectsNonEmptyDir(t *testing.T) {
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "wsm.db"), []byte("x"), 0o600); err != nil {
		t.Fatal(err)
	}
	var stdout, stderr bytes.Buffer
	code := run(t.Context(), []string{"genlog", "--data-dir", dir, "--events", "1000"}, &stdout, &stderr)
	if code != 2 {
		t.Errorf("exit code %d, want 2", code)
	}
	if !strings.Contains(stderr.String(), "not empty") {
		t.Errorf("stderr %q does not say the directory is not empty", stderr.String())
	}
}

func TestReadLines(t *testing.T) {
	const event = `{"specversion":"1.0","id":"a","source":"urn:x","type":"t","time":"2026-01-02T15:04:05Z","data":{"k":1}}`
	cases := []struct {
		name    string
		input   string
		events  int
		wantErr string
	}{
		{"two events", event + "\n" + event + "\n", 2, ""},
		{"no final newline", event + "\n" + event, 2, ""},
		{"blank line skipped", event + "\n\n" + event + "\n", 2, ""},
		{"empty input", "", 0, ""},
		{"invalid JSON", event + "\n{\"id\":\n", 1, "line 2"},
		{"missing type", `{"specversion":"1.0","id":"a"}` + "\n", 0, "line 1: not a CloudEvent"},
		{"invalid time", `{"id":"a","type":"t","time":"yesterday"}` + "\n", 0, "line 1"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			n, _, err := readLines(t.Context(), strings.NewReader(c.input))
			if n != c.events {
				t.Errorf("counted %d events, want %d", n, c.events)
			}
			switch {
			case c.wantErr == "" && err != nil:
				t.Errorf("unexpected error: %v", err)
			case c.wantErr != "" && (err == nil || !strings.Contains(err.Error(), c.wantErr)):
				t.Errorf("error %v, want one containing %q", err, c.wantErr)
			}
		})
	}
}

func TestReadLinesRejectsLongLine(t *testing.T) {
	long := `{"id":"a","type":"t","data":"` + strings.Repeat("x", maxEventLineBytes) + `"}` + "\n"
	_, _, err := readLines(t.Context(), strings.NewReader(long))
	if !errors.Is(err, bufio.ErrTooLong) {
		t.Errorf("error %v, want bufio.ErrTooLong", err)
	}
}

// buildWSMBinary builds the wsm command into dir and returns its path.
func buildWSMBinary(t *testing.T, ctx context.Context, dir string) string {
	t.Helper()
	bin := filepath.Join(dir, "wsm")
	build := exec.CommandContext(ctx, "go", "build", "-o", bin, "github.com/virtufin/websocketmanager/cmd/wsm")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("go build wsm: %v\n%s", err, out)
	}
	return bin
}

func countLines(t *testing.T, path string) int {
	t.Helper()
	raw, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return bytes.Count(raw, []byte("\n"))
}

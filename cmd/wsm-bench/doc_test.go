package main

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestParseBenchLine(t *testing.T) {
	r, ok := parseBenchLine("BenchmarkAppendVsFile/embedded-2   26376   82199 ns/op   31.55 events/commit   12166 events/s   8548 B/op   47 allocs/op")
	if !ok {
		t.Fatal("a go test benchmark line was not parsed")
	}
	if r.Name != "BenchmarkAppendVsFile/embedded" {
		t.Errorf("name %q, want the GOMAXPROCS suffix removed", r.Name)
	}
	if r.Procs != 2 {
		t.Errorf("procs %d, want 2", r.Procs)
	}
	if r.Iterations != 26376 {
		t.Errorf("iterations %d, want 26376", r.Iterations)
	}
	if r.Metrics["events/s"] != 12166 || r.Metrics["allocs/op"] != 47 {
		t.Errorf("metrics %v, want events/s 12166 and allocs/op 47", r.Metrics)
	}

	for _, line := range []string{
		"goos: linux",
		"PASS",
		"ok  	github.com/virtufin/websocketmanager/eventlog	12.3s",
		"BenchmarkX 10 12 ns/op extra",
		"BenchmarkX ten 12 ns/op",
		"--- FAIL: BenchmarkConnectCycle/wsm-dapr",
	} {
		if _, ok := parseBenchLine(line); ok {
			t.Errorf("%q parsed as a benchmark line", line)
		}
	}
}

func TestMedian(t *testing.T) {
	for _, tc := range []struct {
		in   []float64
		want float64
	}{
		{[]float64{3}, 3},
		{[]float64{5, 1, 3}, 3},
		{[]float64{4, 1, 3, 2}, 2.5},
	} {
		if got := median(tc.in); got != tc.want {
			t.Errorf("median(%v) = %v, want %v", tc.in, got, tc.want)
		}
	}
}

// TestRenderDoc renders a results directory with two rounds of a few
// figures and checks the ratios, targets and missing figures in the output.
func TestRenderDoc(t *testing.T) {
	dir := t.TempDir()
	write := func(name, text string) {
		t.Helper()
		if err := os.WriteFile(filepath.Join(dir, name), []byte(text), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	write("append.txt", `goos: linux
cpu: Test CPU 9000
BenchmarkAppendVsFile/embedded-2     100  1 ns/op  2000 events/s
BenchmarkAppendVsFile/plain-file-2   100  1 ns/op  5000 events/s
BenchmarkAppendVsFile/embedded-2     100  1 ns/op  3000 events/s
BenchmarkAppendVsFile/plain-file-2   100  1 ns/op  5000 events/s
`)
	write("reclaim.txt", `BenchmarkReclaimAfterKill/conns=10000-2  1  7.0e9 ns/op  7.0 s/reclaim  1.75 x-baseline
`)
	write("load-memory.txt", `BenchmarkIdleConns/conns=10000/server=raw-gws 1 100000 conns/GiB 10 KiB/conn 100000 conns/GiB-at-peak
BenchmarkIdleConns/conns=10000/server=wsm 1 80000 conns/GiB 13 KiB/conn 50000 conns/GiB-at-peak
`)
	write("meta.env", "date=2026-12-04 23:00 UTC\ncommit=abc1234\ngomaxprocs=2\n")
	write("steps.tsv", "append\tgo test -bench AppendVsFile ./eventlog/\t30\t0\t1.5\n")

	rs, err := readResults(dir)
	if err != nil {
		t.Fatal(err)
	}
	md, err := readMeta(filepath.Join(dir, "meta.env"))
	if err != nil {
		t.Fatal(err)
	}
	steps, err := readSteps(filepath.Join(dir, "steps.tsv"))
	if err != nil {
		t.Fatal(err)
	}
	var out bytes.Buffer
	if err := renderDoc(&out, rs, md, steps); err != nil {
		t.Fatal(err)
	}
	doc := out.String()

	for _, want := range []string{
		"| CPU | Test CPU 9000 |",
		"| commit | `abc1234` |",
		// Rounds 0.40 and 0.60, median 0.50, target at least 0.5.
		"| Appended events per second against a plain file: 64 appenders | events/s | 2,500 | 5,000 (plain file + fsync) | **0.50** (0.40 to 0.60) | ≥ 0.50 | meets target |",
		// 7 s against the 4 s baseline; the target is (4 + 1) / 4.
		"| Time from SIGKILL to the last reclaim: 10,000 connections | s/reclaim | 7.00 | 4.00 (TTL + one interval) | **1.75** | ≤ 1.25 | **misses target** |",
		"| Idle connections per GiB of server memory: 10,000 connections, settled | conns/GiB | 80,000 | 100,000 (raw gws) | **0.80** | ≥ 0.70 | meets target |",
		"| Idle connections per GiB at the peak of the connect storm: 10,000 connections, peak | conns/GiB-at-peak | 50,000 | 100,000 (raw gws) | **0.50** | none |  |",
		"```sh\ngo test -bench AppendVsFile ./eventlog/\n```",
		"| append | 30 | 0 | 1.5 |",
	} {
		if !strings.Contains(doc, want) {
			t.Errorf("document lacks %q", want)
		}
	}
	if !strings.Contains(doc, "| Messages per second from the backend API to clients: all cases | msgs/s | not measured |") {
		t.Error("a figure without results is missing from the summary")
	}
	if got := number(999.9); got != "1,000" {
		t.Errorf("number(999.9) = %q, want 1,000", got)
	}
	if !strings.Contains(doc, "## Messages per second from the backend API to clients") ||
		!strings.Contains(doc, "Not measured in this run.") {
		t.Error("a figure without results is not marked as not measured")
	}
	if t.Failed() {
		t.Logf("document:\n%s", doc)
	}
}

package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"maps"
	"slices"
	"sync"
	"sync/atomic"
	"text/tabwriter"
	"time"
)

// stats collects the outcome of a run. It is safe for concurrent use.
// NOTE: it keeps every latency sample, 8 bytes each, so an unpaced churn
// at tens of thousands of cycles/s for the full 10 minutes needs hundreds
// of megabytes.
type stats struct {
	attempted atomic.Int64
	succeeded atomic.Int64
	cutOff    atomic.Int64

	mu          sync.Mutex
	connect     []time.Duration
	cycle       []time.Duration
	failures    map[string]int
	firstErrors map[string]string // first error text per failure cause
}

func newStats() *stats {
	return &stats{failures: map[string]int{}, firstErrors: map[string]string{}}
}

func (s *stats) addConnect(d time.Duration) {
	s.succeeded.Add(1)
	s.mu.Lock()
	s.connect = append(s.connect, d)
	s.mu.Unlock()
}

func (s *stats) addCycle(d time.Duration) {
	s.mu.Lock()
	s.cycle = append(s.cycle, d)
	s.mu.Unlock()
}

// addFailure records a failed connect or close. An attempt the end of
// the run cut off counts apart from the failures.
func (s *stats) addFailure(err error, cutOff bool) {
	if cutOff {
		s.cutOff.Add(1)
		return
	}
	cause := causeOf(err)
	s.mu.Lock()
	s.failures[cause]++
	if _, ok := s.firstErrors[cause]; !ok {
		s.firstErrors[cause] = err.Error()
	}
	s.mu.Unlock()
}

func (s *stats) failed() int64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	var n int
	for _, v := range s.failures {
		n += v
	}
	return int64(n)
}

// latency summarizes a set of durations in milliseconds.
type latency struct {
	Count int     `json:"count"`
	P50   float64 `json:"p50Ms"`
	P90   float64 `json:"p90Ms"`
	P99   float64 `json:"p99Ms"`
	Max   float64 `json:"maxMs"`
}

// summarize returns nearest-rank percentiles of ds.
func summarize(ds []time.Duration) latency {
	if len(ds) == 0 {
		return latency{}
	}
	sorted := slices.Clone(ds)
	slices.Sort(sorted)
	rank := func(p float64) float64 {
		i := int(p*float64(len(sorted))+0.999999) - 1
		i = max(0, min(i, len(sorted)-1))
		return ms(sorted[i])
	}
	return latency{Count: len(sorted), P50: rank(0.50), P90: rank(0.90), P99: rank(0.99), Max: ms(sorted[len(sorted)-1])}
}

func ms(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }

// report is the result of a hold or churn run, printed as a table or JSON.
type report struct {
	Command     string   `json:"command"`
	Targets     []string `json:"targets"`
	Sources     int      `json:"sources,omitempty"`
	Interrupted bool     `json:"interrupted"`
	ElapsedSec  float64  `json:"elapsedSeconds"`
	Attempted   int64    `json:"attempted"`
	Succeeded   int64    `json:"succeeded"`
	Failed      int64    `json:"failed"`
	// CutOff counts connects still in progress when the run ended.
	CutOff int64 `json:"cutOffByEnd"`
	// Held and the close counts are for hold only.
	Held          int64 `json:"held,omitempty"`
	Dropped       int64 `json:"droppedWhileHeld,omitempty"`
	ClosedCleanly int64 `json:"closedCleanly,omitempty"`
	CloseTimeouts int64 `json:"closeTimeouts,omitempty"`
	// CyclesPerSec and Cycle are for churn only.
	CyclesPerSec float64           `json:"cyclesPerSecond,omitempty"`
	Connect      latency           `json:"connectLatency"`
	Cycle        *latency          `json:"cycleLatency,omitempty"`
	Failures     map[string]int    `json:"failures"`
	FirstErrors  map[string]string `json:"firstErrors,omitempty"`
}

func (s *stats) report(command string, cfg *clientConfig, elapsed time.Duration, interrupted bool) *report {
	s.mu.Lock()
	defer s.mu.Unlock()
	r := &report{
		Command:     command,
		Targets:     cfg.urls,
		Sources:     len(cfg.sources),
		Interrupted: interrupted,
		ElapsedSec:  elapsed.Seconds(),
		Attempted:   s.attempted.Load(),
		Succeeded:   s.succeeded.Load(),
		CutOff:      s.cutOff.Load(),
		Connect:     summarize(s.connect),
		Failures:    maps.Clone(s.failures),
		FirstErrors: maps.Clone(s.firstErrors),
	}
	for _, n := range s.failures {
		r.Failed += int64(n)
	}
	return r
}

// failure returns an error when any attempt failed, so that the exit code
// of wsm-bench reports a failed run to a calling script.
func (r *report) failure() error {
	if r.Failed == 0 {
		return nil
	}
	return fmt.Errorf("%d of %d attempts failed; the report lists the causes", r.Failed, r.Attempted)
}

// write prints r as JSON or as an aligned table.
func (r *report) write(w io.Writer, asJSON bool) error {
	if asJSON {
		enc := json.NewEncoder(w)
		enc.SetIndent("", "  ")
		return enc.Encode(r)
	}

	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintf(tw, "command\t%s\n", r.Command)
	for _, t := range r.Targets {
		fmt.Fprintf(tw, "target\t%s\n", t)
	}
	if r.Sources > 0 {
		fmt.Fprintf(tw, "source addresses\t%d\n", r.Sources)
	}
	fmt.Fprintf(tw, "elapsed\t%.2fs\n", r.ElapsedSec)
	if r.Interrupted {
		fmt.Fprintf(tw, "interrupted\tyes\n")
	}
	fmt.Fprintf(tw, "attempted\t%d\n", r.Attempted)
	fmt.Fprintf(tw, "succeeded\t%d\n", r.Succeeded)
	fmt.Fprintf(tw, "failed\t%d\n", r.Failed)
	fmt.Fprintf(tw, "cut off by the end\t%d\n", r.CutOff)
	if r.Command == "hold" {
		fmt.Fprintf(tw, "held to the end\t%d\n", r.Held)
		fmt.Fprintf(tw, "dropped while held\t%d\n", r.Dropped)
		fmt.Fprintf(tw, "closed cleanly\t%d\n", r.ClosedCleanly)
		fmt.Fprintf(tw, "close timeouts\t%d\n", r.CloseTimeouts)
	}
	if r.Cycle != nil {
		fmt.Fprintf(tw, "cycles/s\t%.1f\n", r.CyclesPerSec)
	}
	fmt.Fprintf(tw, "\nlatency\tcount\tp50\tp90\tp99\tmax\n")
	row := func(name string, l latency) {
		fmt.Fprintf(tw, "%s\t%d\t%.2fms\t%.2fms\t%.2fms\t%.2fms\n", name, l.Count, l.P50, l.P90, l.P99, l.Max)
	}
	row("connect (dial to welcome)", r.Connect)
	if r.Cycle != nil {
		row("cycle (dial to close)", *r.Cycle)
	}
	if len(r.Failures) > 0 {
		fmt.Fprintf(tw, "\nfailure\tcount\tfirst error\n")
		for _, cause := range slices.Sorted(maps.Keys(r.Failures)) {
			fmt.Fprintf(tw, "%s\t%d\t%s\n", cause, r.Failures[cause], r.FirstErrors[cause])
		}
	}
	return tw.Flush()
}

// progress prints a line to w every second until ctx ends: clients
// connected and failed so far, and the connect rate of the last second.
func progress(ctx context.Context, w io.Writer, s *stats) {
	ticker := time.NewTicker(time.Second)
	defer ticker.Stop()
	start, last := time.Now(), int64(0)
	for {
		select {
		case <-ctx.Done():
			return
		case <-ticker.C:
			ok := s.succeeded.Load()
			fmt.Fprintf(w, "%5.0fs  connected %d  failed %d  rate %d/s\n", time.Since(start).Seconds(), ok, s.failed(), ok-last)
			last = ok
		}
	}
}

package main

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"time"
)

// maxEventLineBytes bounds one JSON line. The schemas cap every string
// field of a wsm event at 1 KiB or less, so an event takes a few KiB at most.
const maxEventLineBytes = 1 << 20

// cloudEvent is a CloudEvent in structured JSON mode with the attributes
// wsm writes. Data stays undecoded.
type cloudEvent struct {
	SpecVersion     string          `json:"specversion"`
	ID              string          `json:"id"`
	Source          string          `json:"source"`
	Type            string          `json:"type"`
	Subject         string          `json:"subject"`
	Time            time.Time       `json:"time"`
	DataContentType string          `json:"datacontenttype"`
	DataSchema      string          `json:"dataschema"`
	Sequence        string          `json:"sequence"`
	Traceparent     string          `json:"traceparent"`
	Data            json.RawMessage `json:"data"`
}

// readlinesReport is the summary of a readlines run.
type readlinesReport struct {
	File            string  `json:"file"`
	Events          int     `json:"events"`
	Bytes           int64   `json:"bytes"`
	Seconds         float64 `json:"seconds"`
	EventsPerSecond float64 `json:"eventsPerSecond"`
}

func runReadlines(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("readlines", flag.ContinueOnError)
	fs.Usage = func() {
		fmt.Fprint(fs.Output(), `Usage: wsm-bench readlines --file FILE [--json]

Read a file of CloudEvents, one JSON object a line as "wsm replay" prints
them, decode each line with encoding/json into a struct of the CloudEvents
attributes (data left undecoded), and count them. This is the least work
any tool that reads the events does, the baseline for replay and rebuild.
It fails on the first line that is not such an object or lacks an id or a
type. Blank lines are skipped.

Flags:
`)
		fs.PrintDefaults()
	}
	file := fs.String("file", "", "JSON lines file to read, - for standard input (required)")
	jsonOutput := fs.Bool("json", false, "print the summary as JSON")
	if err := parseFlags(fs, args, stderr); err != nil {
		return err
	}
	if *file == "" {
		return &usageError{errors.New("--file is required")}
	}

	in := os.Stdin
	if *file != "-" {
		f, err := os.Open(*file)
		if err != nil {
			return err
		}
		defer f.Close()
		in = f
	}
	start := time.Now()
	events, bytes, err := readLines(ctx, in)
	if err != nil {
		return fmt.Errorf("%s: %w", *file, err)
	}
	elapsed := time.Since(start)

	rep := readlinesReport{File: *file, Events: events, Bytes: bytes, Seconds: elapsed.Seconds(),
		EventsPerSecond: float64(events) / max(elapsed.Seconds(), 1e-9)}
	if *jsonOutput {
		enc := json.NewEncoder(stdout)
		enc.SetIndent("", "  ")
		return enc.Encode(rep)
	}
	fmt.Fprintf(stdout, "wsm-bench readlines: %d events, %.1f MiB in %.2f s, %.0f events/s\n",
		rep.Events, float64(rep.Bytes)/(1<<20), rep.Seconds, rep.EventsPerSecond)
	return nil
}

// readLines decodes every line of r and returns the number of events and
// bytes read. It checks ctx every 4096 lines.
func readLines(ctx context.Context, r io.Reader) (events int, bytes int64, err error) {
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64<<10), maxEventLineBytes)
	line := 0
	for sc.Scan() {
		line++
		raw := sc.Bytes()
		bytes += int64(len(raw)) + 1
		if len(raw) == 0 {
			continue
		}
		if line%4096 == 0 {
			if err := ctx.Err(); err != nil {
				return events, bytes, err
			}
		}
		var ev cloudEvent
		if err := json.Unmarshal(raw, &ev); err != nil {
			return events, bytes, fmt.Errorf("line %d: %w", line, err)
		}
		if ev.ID == "" || ev.Type == "" {
			return events, bytes, fmt.Errorf("line %d: not a CloudEvent: missing id or type", line)
		}
		events++
	}
	if err := sc.Err(); err != nil {
		return events, bytes, fmt.Errorf("after line %d: %w", line, err)
	}
	return events, bytes, nil
}

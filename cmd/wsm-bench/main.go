// Command wsm-bench loads a running wsm, or its raw gws baseline, with real
// WebSocket clients and reports connect latency, messages delivered through
// the backend API per second, and failures.
//
//	wsm-bench hold     --url ws://127.0.0.1:8080/ws --conns 1000 --anonymous
//	wsm-bench churn    --url ws://127.0.0.1:8080/ws --rate 200 --duration 10s --anonymous
//	wsm-bench baseline --listen 127.0.0.1:0
//	wsm-bench deliver  --url ws://127.0.0.1:8080/ws --scope instance --clients 1000 --anonymous
//	wsm-bench doc      --results /tmp/wsm-bench-suite.XXXXXX --out docs/benchmarks.md
//
// Every run is bounded in time and size, and targets must resolve to
// loopback unless --allow-remote is passed. Ctrl-C stops a run and still
// prints its report. The exit code is 1 when any connect, close or API
// request failed, or when a deliver run lost a frame.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"syscall"
)

const usage = `usage: wsm-bench <command> [flags]

commands:
  hold      open N clients, hold them, close them, report connect latency
  churn     cycle connect, welcome, close at a target rate
  baseline  serve a raw gws WebSocket endpoint to compare wsm against
  deliver   send messages through the API to N clients, report messages/s
  genlog    write an embedded data directory with a log of N events
  readlines decode and count a file of CloudEvents JSON lines
  doc       write docs/benchmarks.md from the results of .ci/bench-suite

Run "wsm-bench <command> -h" for the flags of a command.
`

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	code := run(ctx, os.Args[1:], os.Stdout, os.Stderr)
	stop()
	os.Exit(code)
}

// run executes one command and returns the process exit code: 0 on
// success, 1 when the run failed or any attempt in it failed, 2 for bad
// usage.
func run(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 {
		fmt.Fprint(stderr, usage)
		return 2
	}

	var err error
	switch args[0] {
	case "hold":
		err = runHold(ctx, args[1:], stdout, stderr)
	case "churn":
		err = runChurn(ctx, args[1:], stdout, stderr)
	case "baseline":
		err = runBaseline(ctx, args[1:], stdout, stderr)
	case "deliver":
		err = runDeliver(ctx, args[1:], stdout, stderr)
	case "genlog":
		err = runGenlog(ctx, args[1:], stdout, stderr)
	case "readlines":
		err = runReadlines(ctx, args[1:], stdout, stderr)
	case "doc":
		err = runDoc(ctx, args[1:], stdout, stderr)
	case "-h", "-help", "--help", "help":
		fmt.Fprint(stdout, usage)
		return 0
	default:
		fmt.Fprintf(stderr, "wsm-bench: unknown command %q\n\n%s", args[0], usage)
		return 2
	}

	switch {
	case err == nil:
		return 0
	case errors.Is(err, flag.ErrHelp):
		return 0
	case errors.As(err, new(*usageError)):
		fmt.Fprintf(stderr, "wsm-bench %s: %v\n", args[0], err)
		return 2
	default:
		fmt.Fprintf(stderr, "wsm-bench %s: %v\n", args[0], err)
		return 1
	}
}

// usageError is a bad flag or argument, for which run exits with code 2.
type usageError struct{ err error }

func (e *usageError) Error() string { return e.err.Error() }
func (e *usageError) Unwrap() error { return e.err }

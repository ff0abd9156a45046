// Command wsm runs the WebSocket connection manager and its audit tools.
//
//	wsm [serve] [flags]        run an instance (the default subcommand)
//	wsm replay [flags]         print the event log as CloudEvents JSON lines
//	wsm rebuild [--verify]     fold the log into fresh views; compare or replace
//	wsm version                print the version
package main

import (
	"context"
	"fmt"
	"io"
	"os"
	"os/signal"
	"syscall"
)

// version is set at build time with -ldflags "-X main.version=...".
var version = "dev"

// Exit codes.
const (
	exitOK       = 0
	exitFailure  = 1 // the command ran and failed, or found a difference
	exitBadUsage = 2 // wrong flags or configuration
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	os.Exit(run(ctx, os.Args[1:], os.Stdout, os.Stderr, os.Getenv))
}

func run(ctx context.Context, args []string, stdout, stderr io.Writer, env func(string) string) int {
	cmd := "serve"
	if len(args) > 0 && len(args[0]) > 0 && args[0][0] != '-' {
		cmd, args = args[0], args[1:]
	}
	if cmd == "serve" && len(args) == 1 && (args[0] == "-h" || args[0] == "-help" || args[0] == "--help") {
		// Before the serve flags, name the other subcommands.
		usage(stderr)
		fmt.Fprintln(stderr)
	}
	switch cmd {
	case "serve":
		return runServe(ctx, args, stdout, stderr, env)
	case "replay":
		return runReplay(ctx, args, stdout, stderr, env)
	case "rebuild":
		return runRebuild(ctx, args, stdout, stderr, env)
	case "version":
		fmt.Fprintln(stdout, "wsm", version)
		return exitOK
	case "help":
		usage(stdout)
		return exitOK
	default:
		fmt.Fprintf(stderr, "wsm: unknown command %q\n\n", cmd)
		usage(stderr)
		return exitBadUsage
	}
}

func usage(w io.Writer) {
	fmt.Fprint(w, `Usage:
  wsm [serve] [flags]      run an instance (see wsm serve -h)
  wsm replay [flags]       print the event log as CloudEvents JSON lines (see wsm replay -h)
  wsm rebuild [--verify]   fold the log into fresh views and compare them with, or write them over, the live ones
  wsm version              print the version
`)
}

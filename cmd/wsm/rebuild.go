package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/http"
	"os"

	"github.com/virtufin/websocketmanager/eventlog"
	"github.com/virtufin/websocketmanager/internal/embedded"
	"github.com/virtufin/websocketmanager/projections"
)

// verifyReport is the JSON form of a verify result, as the running service
// returns it.
type verifyReport struct {
	Equal       bool             `json:"equal"`
	Events      int              `json:"events"`
	Streams     int              `json:"streams"`
	Keys        int              `json:"keys"`
	Differences []verifyDiffJSON `json:"differences"`
}

type verifyDiffJSON struct {
	Key     string          `json:"key"`
	Live    json.RawMessage `json:"live"`
	Rebuilt json.RawMessage `json:"rebuilt"`
}

func newVerifyReport(r projections.VerifyResult) verifyReport {
	rep := verifyReport{Equal: r.Equal(), Events: r.Events, Streams: r.Streams, Keys: r.Keys, Differences: []verifyDiffJSON{}}
	for _, d := range r.Differences {
		raw := func(b []byte) json.RawMessage {
			if b == nil {
				return json.RawMessage("null")
			}
			return b
		}
		rep.Differences = append(rep.Differences, verifyDiffJSON{Key: d.Key, Live: raw(d.Live), Rebuilt: raw(d.Rebuilt)})
	}
	return rep
}

// print writes the report for people: a summary line, then each difference.
func (r verifyReport) print(w io.Writer) {
	for _, d := range r.Differences {
		fmt.Fprintf(w, "%s\n  live:    %s\n  rebuilt: %s\n", d.Key, d.Live, d.Rebuilt)
	}
	if r.Equal {
		fmt.Fprintf(w, "views match the log: %d events in %d streams, %d view keys compared\n", r.Events, r.Streams, r.Keys)
		return
	}
	fmt.Fprintf(w, "views differ from the log in %d of %d keys (%d events in %d streams); live is what the store holds, rebuilt is what the log folds to\n",
		len(r.Differences), r.Keys, r.Events, r.Streams)
}

func runRebuild(ctx context.Context, args []string, stdout, stderr io.Writer, env func(string) string) int {
	fs := flag.NewFlagSet("wsm rebuild", flag.ContinueOnError)
	fs.SetOutput(stderr)
	where := bindStoreFlags(fs, env)
	verify := fs.Bool("verify", false, "compare the rebuilt views with the live ones and exit 1 on a difference, writing nothing")
	if err := fs.Parse(args); err != nil {
		return exitBadUsage
	}
	if fs.NArg() > 0 {
		fmt.Fprintf(stderr, "wsm rebuild: unexpected argument %q\n", fs.Arg(0))
		return exitBadUsage
	}
	if err := where.validate(); err != nil {
		fmt.Fprintf(stderr, "wsm rebuild: %v\n", err)
		return exitBadUsage
	}

	if !*verify {
		if where.backend != "embedded" {
			fmt.Fprintln(stderr, "wsm rebuild: writing views is only offered on the embedded backend; use --verify on dapr")
			return exitBadUsage
		}
		return rebuildInPlace(ctx, where.dataDir, stdout, stderr)
	}

	var rep verifyReport
	err := withLog(ctx, where, func(log *eventlog.Log) error {
		res, err := projections.Verify(ctx, log.Store())
		rep = newVerifyReport(res)
		return err
	}, func(base string) error {
		var err error
		rep, err = verifyRemote(ctx, base, env(apiTokenEnv))
		return err
	})
	if err != nil {
		fmt.Fprintf(stderr, "wsm rebuild: %v\n", err)
		return exitFailure
	}
	rep.print(stdout)
	if !rep.Equal {
		return exitFailure
	}
	return exitOK
}

func verifyRemote(ctx context.Context, base, token string) (verifyReport, error) {
	var rep verifyReport
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, base+"/v1/admin/verify", nil)
	if err != nil {
		return rep, err
	}
	setAPIToken(req, token)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return rep, fmt.Errorf("verify through the running service: %w", err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		var e apiError
		json.NewDecoder(io.LimitReader(resp.Body, 64<<10)).Decode(&e)
		return rep, fmt.Errorf("running service returned %s: %s", resp.Status, e.Error)
	}
	return rep, json.NewDecoder(resp.Body).Decode(&rep)
}

// rebuildInPlace folds the log and writes the result over the live views. It
// needs the store file to itself: the service must be stopped.
func rebuildInPlace(ctx context.Context, dataDir string, stdout, stderr io.Writer) int {
	store, err := embedded.Open(dataDir, embedded.Options{})
	switch {
	case errors.Is(err, embedded.ErrLocked):
		fmt.Fprintf(stderr, "wsm rebuild: %v; stop the service first, or use --verify, which works while it runs\n", err)
		return exitFailure
	case errors.Is(err, os.ErrNotExist):
		fmt.Fprintf(stderr, "wsm rebuild: no store in %s\n", dataDir)
		return exitFailure
	case err != nil:
		fmt.Fprintf(stderr, "wsm rebuild: %v\n", err)
		return exitFailure
	}
	defer store.Close()

	rebuilt, stats, err := projections.Rebuild(ctx, eventlog.Open(store, eventlog.Options{}))
	if err != nil {
		fmt.Fprintf(stderr, "wsm rebuild: %v\n", err)
		return exitFailure
	}
	live, err := projections.LoadLive(ctx, store, rebuilt)
	if err != nil {
		fmt.Fprintf(stderr, "wsm rebuild: %v\n", err)
		return exitFailure
	}
	projections.ApplyClaims(rebuilt, live)
	n, err := projections.Replace(ctx, store, live, rebuilt)
	if err != nil {
		fmt.Fprintf(stderr, "wsm rebuild: %v\n", err)
		return exitFailure
	}
	fmt.Fprintf(stdout, "rebuilt views from %d events in %d streams; %d keys written or deleted\n", stats.Events, stats.Streams, n)
	return exitOK
}

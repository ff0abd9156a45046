package main

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"time"

	"github.com/virtufin/websocketmanager/eventlog"
	"github.com/virtufin/websocketmanager/schemas"
)

// replayFilter selects events for replay. Empty fields match everything.
type replayFilter struct {
	Since    time.Time
	Until    time.Time
	Types    []string
	Subject  string
	Instance string
}

// parseTimeArg accepts an RFC 3339 time or a duration meaning that long
// before now.
func parseTimeArg(name, v string, now time.Time) (time.Time, error) {
	if v == "" {
		return time.Time{}, nil
	}
	if t, err := time.Parse(time.RFC3339Nano, v); err == nil {
		return t, nil
	}
	if d, err := time.ParseDuration(v); err == nil && d >= 0 {
		return now.Add(-d), nil
	}
	return time.Time{}, fmt.Errorf("--%s %q: want an RFC 3339 time such as 2026-01-02T15:04:05Z or a duration such as 1h", name, v)
}

// expandType accepts a full event type or its short form, such as
// connection.connected.
func expandType(t string) (string, error) {
	if !strings.HasPrefix(t, schemas.TypePrefix) {
		t = schemas.TypePrefix + t
	}
	if !slices.Contains(schemas.Types, t) {
		return "", fmt.Errorf("--type %q: unknown event type; want one of %s", t, strings.Join(schemas.Types, ", "))
	}
	return t, nil
}

// filterFromValues reads a filter from flags or query parameters of the same
// names; types may be repeated or comma-separated.
func filterFromValues(get func(string) string, types []string, now time.Time) (replayFilter, error) {
	var f replayFilter
	var errs []error
	var err error
	if f.Since, err = parseTimeArg("since", get("since"), now); err != nil {
		errs = append(errs, err)
	}
	if f.Until, err = parseTimeArg("until", get("until"), now); err != nil {
		errs = append(errs, err)
	}
	for _, group := range types {
		for t := range strings.SplitSeq(group, ",") {
			if t = strings.TrimSpace(t); t == "" {
				continue
			}
			full, err := expandType(t)
			if err != nil {
				errs = append(errs, err)
				continue
			}
			f.Types = append(f.Types, full)
		}
	}
	f.Subject = get("subject")
	f.Instance = get("instance")
	if !f.Since.IsZero() && !f.Until.IsZero() && f.Until.Before(f.Since) {
		errs = append(errs, fmt.Errorf("--until %s is before --since %s", f.Until.Format(time.RFC3339), f.Since.Format(time.RFC3339)))
	}
	return f, errors.Join(errs...)
}

// values renders the filter as query parameters for a running service.
func (f replayFilter) values() url.Values {
	v := url.Values{}
	if !f.Since.IsZero() {
		v.Set("since", f.Since.Format(time.RFC3339Nano))
	}
	if !f.Until.IsZero() {
		v.Set("until", f.Until.Format(time.RFC3339Nano))
	}
	for _, t := range f.Types {
		v.Add("type", t)
	}
	if f.Subject != "" {
		v.Set("subject", f.Subject)
	}
	if f.Instance != "" {
		v.Set("instance", f.Instance)
	}
	return v
}

// match reports whether a record passes the filter. The instance filter
// matches the instance that wrote the event.
func (f replayFilter) match(rec eventlog.Record) bool {
	ev := rec.Event
	t := ev.Time()
	if !f.Since.IsZero() && t.Before(f.Since) {
		return false
	}
	if !f.Until.IsZero() && !t.Before(f.Until) {
		return false
	}
	if len(f.Types) > 0 && !slices.Contains(f.Types, ev.Type()) {
		return false
	}
	if f.Subject != "" && ev.Subject() != f.Subject {
		return false
	}
	if f.Instance != "" {
		if inst, _ := eventlog.SplitStreamName(rec.Stream); inst != f.Instance {
			return false
		}
	}
	return true
}

// writeRecords replays (and with follow, tails) the log through the filter,
// writing each event as one JSON line. flush runs after every write batch.
func writeRecords(ctx context.Context, log *eventlog.Log, f replayFilter, follow bool, w io.Writer, flush func()) error {
	bw := bufio.NewWriterSize(w, 64<<10)
	emit := func(rec eventlog.Record) error {
		if !f.match(rec) {
			return nil
		}
		// A record read from the store carries the event's JSON as stored,
		// which is what MarshalJSON would return, so it is written as is.
		raw := rec.JSON
		if raw == nil {
			var err error
			if raw, err = rec.Event.MarshalJSON(); err != nil {
				return err
			}
		}
		bw.Write(raw)
		return bw.WriteByte('\n')
	}
	if !follow {
		_, err := log.Replay(ctx, nil, emit)
		if ferr := bw.Flush(); err == nil {
			err = ferr
		}
		flush()
		return err
	}

	// Flush at least every 100 ms while following, so lines show up live.
	done := make(chan struct{})
	defer close(done)
	flushes := make(chan struct{}, 1)
	go func() {
		t := time.NewTicker(100 * time.Millisecond)
		defer t.Stop()
		for {
			select {
			case <-done:
				return
			case <-t.C:
				select {
				case flushes <- struct{}{}:
				default:
				}
			}
		}
	}()
	_, err := log.Follow(ctx, nil, func(rec eventlog.Record) error {
		if err := emit(rec); err != nil {
			return err
		}
		select {
		case <-flushes:
			if err := bw.Flush(); err != nil {
				return err
			}
			flush()
		default:
		}
		return nil
	})
	bw.Flush()
	flush()
	return err
}

// stringList is a flag that may be repeated.
type stringList []string

func (s *stringList) String() string     { return strings.Join(*s, ",") }
func (s *stringList) Set(v string) error { *s = append(*s, v); return nil }

func runReplay(ctx context.Context, args []string, stdout, stderr io.Writer, env func(string) string) int {
	fs := flag.NewFlagSet("wsm replay", flag.ContinueOnError)
	fs.SetOutput(stderr)
	where := bindStoreFlags(fs, env)
	since := fs.String("since", "", "only events at or after this RFC 3339 time, or this long ago (such as 1h)")
	until := fs.String("until", "", "only events before this RFC 3339 time, or this long ago")
	var types stringList
	fs.Var(&types, "type", "only events of this type, full or short such as connection.connected; repeatable")
	subject := fs.String("subject", "", "only events with this subject: a connection id, or an instance id for heartbeats")
	instance := fs.String("instance", "", "only events written by this instance id")
	follow := fs.Bool("follow", false, "keep printing new events until interrupted")
	if err := fs.Parse(args); err != nil {
		return exitBadUsage
	}
	if fs.NArg() > 0 {
		fmt.Fprintf(stderr, "wsm replay: unexpected argument %q\n", fs.Arg(0))
		return exitBadUsage
	}
	if err := where.validate(); err != nil {
		fmt.Fprintf(stderr, "wsm replay: %v\n", err)
		return exitBadUsage
	}
	vals := map[string]string{"since": *since, "until": *until, "subject": *subject, "instance": *instance}
	f, err := filterFromValues(func(k string) string { return vals[k] }, types, time.Now())
	if err != nil {
		fmt.Fprintf(stderr, "wsm replay: %v\n", err)
		return exitBadUsage
	}

	err = withLog(ctx, where, func(log *eventlog.Log) error {
		return writeRecords(ctx, log, f, *follow, stdout, func() {})
	}, func(base string) error {
		q := f.values()
		if *follow {
			q.Set("follow", "true")
		}
		return streamFrom(ctx, base+"/v1/admin/replay?"+q.Encode(), env(apiTokenEnv), stdout)
	})
	if err != nil && ctx.Err() == nil {
		fmt.Fprintf(stderr, "wsm replay: %v\n", err)
		return exitFailure
	}
	return exitOK
}

// streamFrom copies a running service's response body to w. It sends the
// API token when one is set.
func streamFrom(ctx context.Context, u, token string, w io.Writer) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
	if err != nil {
		return err
	}
	setAPIToken(req, token)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return fmt.Errorf("read through the running service: %w", err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		var e apiError
		json.NewDecoder(io.LimitReader(resp.Body, 64<<10)).Decode(&e)
		return fmt.Errorf("running service returned %s: %s", resp.Status, e.Error)
	}
	_, err = io.Copy(w, resp.Body)
	if ctx.Err() != nil {
		return nil
	}
	return err
}

func envOr(env func(string) string, name, def string) string {
	if v := env(name); v != "" {
		return v
	}
	return def
}

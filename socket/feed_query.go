package socket

import (
	"encoding/json"
	"errors"
	"fmt"
	"net/url"
	"slices"
	"strings"

	"github.com/virtufin/websocketmanager/eventlog"
	"github.com/virtufin/websocketmanager/schemas"
)

// Query parameters of GET /events.
const (
	// FeedTypeParam selects event types, full or short (connection.connected).
	// It may be repeated or hold a comma-separated list.
	FeedTypeParam = "type"
	// FeedSubjectParam selects events by subject: a connection id, or an
	// instance id for heartbeats. It may be repeated.
	FeedSubjectParam = "subject"
	// FeedUserParam selects events whose data has this userId. It may be
	// repeated. Heartbeats have no user, so it excludes them.
	FeedUserParam = "user"
	// FeedInstanceParam selects events by the instance in their source,
	// the one that wrote them. It may be repeated.
	FeedInstanceParam = "instance"
	// FeedCursorParam resumes the feed after the event whose frame carried
	// this cursor.
	FeedCursorParam = "cursor"
	// FeedFromParam picks where a feed without a cursor starts: "now", the
	// default, or "start", the oldest event in the log.
	FeedFromParam = "from"
)

// Values of FeedFromParam.
const (
	FeedFromNow   = "now"
	FeedFromStart = "start"
)

// ErrInvalidFeedQuery reports a GET /events query that cannot be served.
var ErrInvalidFeedQuery = errors.New("socket: invalid event feed query")

// feedQuery is a parsed GET /events query.
type feedQuery struct {
	filter feedFilter
	// cursor is the position the feed resumes after, when hasCursor is set.
	cursor    eventlog.Cursor
	hasCursor bool
	fromStart bool
}

// feedFilter selects the events a subscriber receives. Each set that is
// not empty must contain the event's value, so values of one parameter
// combine with OR and different parameters with AND.
type feedFilter struct {
	types     map[string]bool
	subjects  map[string]bool
	users     map[string]bool
	instances map[string]bool
}

// parseFeedQuery reads the query of a GET /events request and reports
// every problem in it at once.
func parseFeedQuery(q url.Values) (feedQuery, error) {
	var out feedQuery
	var problems []error
	problem := func(format string, args ...any) {
		problems = append(problems, fmt.Errorf("%w: "+format, append([]any{ErrInvalidFeedQuery}, args...)...))
	}

	for name := range q {
		switch name {
		case FeedTypeParam, FeedSubjectParam, FeedUserParam, FeedInstanceParam, FeedCursorParam, FeedFromParam, AccessTokenParam:
		default:
			problem("unknown parameter %q; the feed accepts %s", name,
				strings.Join([]string{FeedTypeParam, FeedSubjectParam, FeedUserParam, FeedInstanceParam, FeedCursorParam, FeedFromParam, AccessTokenParam}, ", "))
		}
	}

	for _, group := range q[FeedTypeParam] {
		for t := range strings.SplitSeq(group, ",") {
			t = strings.TrimSpace(t)
			if t == "" {
				continue
			}
			full, err := expandFeedType(t)
			if err != nil {
				problems = append(problems, err)
				continue
			}
			out.filter.types = addTo(out.filter.types, full)
		}
	}
	for _, p := range []struct {
		name string
		set  *map[string]bool
	}{
		{FeedSubjectParam, &out.filter.subjects},
		{FeedUserParam, &out.filter.users},
		{FeedInstanceParam, &out.filter.instances},
	} {
		for _, v := range q[p.name] {
			if v == "" {
				problem("parameter %q is empty; leave it out to match every value", p.name)
				continue
			}
			*p.set = addTo(*p.set, v)
		}
	}

	if vs, ok := q[FeedCursorParam]; ok {
		if len(vs) > 1 {
			problem("parameter %q is given %d times, want it once", FeedCursorParam, len(vs))
		}
		cur, err := eventlog.ParseCursor(vs[0])
		if err != nil {
			problem("parameter %q: %v; use the %s attribute of a frame the feed sent", FeedCursorParam, err, CursorExtension)
		}
		out.cursor, out.hasCursor = cur, true
	}
	switch from := q.Get(FeedFromParam); from {
	case "", FeedFromNow:
	case FeedFromStart:
		out.fromStart = true
	default:
		problem("parameter %q is %q, want %q or %q", FeedFromParam, from, FeedFromNow, FeedFromStart)
	}
	if out.hasCursor && q.Has(FeedFromParam) {
		problem("parameters %q and %q exclude each other: a cursor says where to resume", FeedCursorParam, FeedFromParam)
	}
	return out, errors.Join(problems...)
}

func addTo(set map[string]bool, v string) map[string]bool {
	if set == nil {
		set = map[string]bool{}
	}
	set[v] = true
	return set
}

// expandFeedType accepts a log event type, full or in its short form such
// as connection.connected.
func expandFeedType(t string) (string, error) {
	full := t
	if !strings.HasPrefix(full, schemas.TypePrefix) {
		full = schemas.TypePrefix + full
	}
	if slices.Contains(schemas.Types, full) {
		return full, nil
	}
	if slices.Contains(schemas.PublishOnlyTypes, full) {
		return "", fmt.Errorf("%w: type %q is published to a pub/sub topic and never enters the log, so the feed never carries it", ErrInvalidFeedQuery, t)
	}
	return "", fmt.Errorf("%w: unknown event type %q; want one of %s", ErrInvalidFeedQuery, t, strings.Join(schemas.Types, ", "))
}

// match reports whether a record passes the filter.
func (f feedFilter) match(rec eventlog.Record) bool {
	ev := rec.Event
	if f.types != nil && !f.types[ev.Type()] {
		return false
	}
	if f.subjects != nil && !f.subjects[ev.Subject()] {
		return false
	}
	if f.instances != nil {
		inst, _ := schemas.InstanceFromSource(ev.Source())
		if !f.instances[inst] {
			return false
		}
	}
	if f.users != nil {
		user, ok := eventUserID(ev.Data())
		if !ok || !f.users[user] {
			return false
		}
	}
	return true
}

// eventUserID returns the userId field of an event's data, and false when
// the data has none.
func eventUserID(data []byte) (string, bool) {
	var d struct {
		UserID *string `json:"userId"`
	}
	if err := json.Unmarshal(data, &d); err != nil || d.UserID == nil {
		return "", false
	}
	return *d.UserID, true
}

package main

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"maps"
	"mime"
	"net/http"
	"slices"
	"strconv"
	"strings"

	"github.com/virtufin/websocketmanager/projections"
	"github.com/virtufin/websocketmanager/socket"
	"github.com/virtufin/websocketmanager/workers"
)

// Page sizes of GET /v1/connections. 100 entries are some 30 KiB of JSON;
// 1000 bound what one request reads from the store.
const (
	defaultPageLimit = 100
	maxPageLimit     = 1000
)

// maxKickDetailBytes is the longest detail the disconnected event accepts.
const maxKickDetailBytes = 1024

// cursorPrefix versions the cursor, which is otherwise the last connection
// id of the previous page.
const cursorPrefix = "c1:"

func encodeCursor(lastID string) string {
	return base64.RawURLEncoding.EncodeToString([]byte(cursorPrefix + lastID))
}

func decodeCursor(c string) (string, error) {
	if c == "" {
		return "", nil
	}
	raw, err := base64.RawURLEncoding.DecodeString(c)
	id, ok := strings.CutPrefix(string(raw), cursorPrefix)
	if err != nil || !ok || id == "" {
		return "", errors.New("cursor is not one this API returned")
	}
	return id, nil
}

func pageLimit(s string) (int, error) {
	if s == "" {
		return defaultPageLimit, nil
	}
	n, err := strconv.Atoi(s)
	if err != nil || n < 1 || n > maxPageLimit {
		return 0, fmt.Errorf("limit %q: want an integer from 1 to %d", s, maxPageLimit)
	}
	return n, nil
}

// connectionsPage is the body of GET /v1/connections.
type connectionsPage struct {
	Connections []connectionJSON `json:"connections"`
	// Count is how many open connections the indexes list for the filter,
	// over all pages.
	Count int `json:"count"`
	// Next is the cursor of the next page, absent on the last one.
	Next string `json:"next,omitempty"`
}

// listConnections returns open connections in connection id order, one
// page at a time. The ids come from the index keys; only the page's
// entries are read.
func (a *api) listConnections(w http.ResponseWriter, r *http.Request) {
	q := r.URL.Query()
	limit, err := pageLimit(q.Get("limit"))
	if err != nil {
		writeError(w, http.StatusBadRequest, err.Error())
		return
	}
	after, err := decodeCursor(q.Get("cursor"))
	if err != nil {
		writeError(w, http.StatusBadRequest, err.Error())
		return
	}

	ids, err := a.connectionIDs(r.Context(), q.Get("user"), q.Get("instance"))
	if err != nil {
		a.storeError(w, "list connections", err)
		return
	}
	rest := ids
	if after != "" {
		i, found := slices.BinarySearch(ids, after)
		if found {
			i++
		}
		rest = ids[i:]
	}
	page, used, err := a.openEntries(r.Context(), rest, limit)
	if err != nil {
		a.storeError(w, "list connections", err)
		return
	}

	body := connectionsPage{Connections: make([]connectionJSON, len(page)), Count: len(ids)}
	for i, c := range page {
		body.Connections[i] = newConnectionJSON(c)
	}
	if used < len(rest) && len(page) > 0 {
		body.Next = encodeCursor(page[len(page)-1].ConnectionID)
	}
	writeJSON(w, http.StatusOK, body)
}

// connectionIDs returns the sorted ids of the connections the indexes list
// for a user, an instance, both, or neither (every indexed instance).
func (a *api) connectionIDs(ctx context.Context, user, instance string) ([]string, error) {
	var ids []string
	if user != "" {
		m, err := a.views.UserConnections(ctx, user)
		if err != nil {
			return nil, err
		}
		for id, inst := range m {
			if instance == "" || inst == instance {
				ids = append(ids, id)
			}
		}
		slices.Sort(ids)
		return ids, nil
	}

	instances := []string{instance}
	if instance == "" {
		var err error
		if instances, err = a.views.InstanceIDs(ctx); err != nil {
			return nil, err
		}
	}
	for _, inst := range instances {
		m, err := a.views.InstanceConnections(ctx, inst)
		if err != nil {
			return nil, err
		}
		ids = slices.AppendSeq(ids, maps.Keys(m))
	}
	slices.Sort(ids)
	return slices.Compact(ids), nil
}

// openEntries reads the entries of ids in order until it has limit open
// ones, and returns them with how many ids it went through. An id whose
// entry is missing or closed (an index that lags its entries) is skipped.
func (a *api) openEntries(ctx context.Context, ids []string, limit int) ([]*projections.Connection, int, error) {
	out := make([]*projections.Connection, 0, min(limit, len(ids)))
	used := 0
	for chunk := range slices.Chunk(ids, limit) {
		keys := make([]string, len(chunk))
		for i, id := range chunk {
			keys[i] = projections.ConnectionKey(id)
		}
		items, err := a.store.BulkGet(ctx, keys)
		if err != nil {
			return nil, 0, fmt.Errorf("read connections: %w", err)
		}
		byKey := make(map[string][]byte, len(items))
		for _, it := range items {
			if it.Exists() {
				byKey[it.Key] = it.Value
			}
		}
		for i, id := range chunk {
			raw, ok := byKey[keys[i]]
			used++
			if !ok {
				continue
			}
			c := new(projections.Connection)
			if err := json.Unmarshal(raw, c); err != nil {
				return nil, 0, fmt.Errorf("decode connection %s: %w", id, err)
			}
			if !c.Open() {
				continue
			}
			out = append(out, c)
			if len(out) == limit {
				return out, used, nil
			}
		}
	}
	return out, used, nil
}

// resultJSON is the body of a send or close for one connection.
type resultJSON struct {
	Error string `json:"error,omitempty"`
	workers.Result
}

// userResultJSON is the body of a send to a user.
type userResultJSON struct {
	UserID    string           `json:"userId"`
	Delivered int              `json:"delivered"`
	Queued    int              `json:"queued"`
	Unknown   int              `json:"unknown"`
	Results   []workers.Result `json:"results"`
}

// writeResult writes 200 for delivered, 202 for queued and 404 for
// unknown.
func writeResult(w http.ResponseWriter, res workers.Result) {
	switch res.Outcome {
	case workers.Delivered:
		writeJSON(w, http.StatusOK, resultJSON{Result: res})
	case workers.Queued:
		writeJSON(w, http.StatusAccepted, resultJSON{Result: res})
	default:
		writeJSON(w, http.StatusNotFound, resultJSON{Error: "connection " + res.ConnectionID + ": " + res.Detail, Result: res})
	}
}

// deliveryError writes the response to a failed send or close.
func (a *api) deliveryError(w http.ResponseWriter, what string, err error) {
	switch {
	case errors.Is(err, socket.ErrPayloadTooLarge):
		writeError(w, http.StatusRequestEntityTooLarge, err.Error())
	case errors.Is(err, socket.ErrInvalidUTF8):
		writeError(w, http.StatusBadRequest, err.Error()+"; send binary data as application/octet-stream")
	case errors.Is(err, socket.ErrInvalidReason):
		writeError(w, http.StatusBadRequest, err.Error())
	case errors.Is(err, context.Canceled):
		// The client went away, so no response can reach it.
	default:
		a.logger.Error().Err(err).Msg(what + " failed")
		writeError(w, http.StatusServiceUnavailable, what+": state store or pub/sub unavailable: "+err.Error())
	}
}

// readMessage reads the body of a send as one frame: binary for
// application/octet-stream, text for text/*, JSON, XML or no content type.
// It writes 413, 415 or 400 itself and then returns false.
func (a *api) readMessage(w http.ResponseWriter, r *http.Request) (workers.Message, bool) {
	binary, ok := frameKind(r.Header.Get("Content-Type"))
	if !ok {
		writeError(w, http.StatusUnsupportedMediaType,
			"content type "+r.Header.Get("Content-Type")+" is neither text nor application/octet-stream")
		return workers.Message{}, false
	}
	limit := a.delivery.MaxPayload()
	if r.ContentLength > int64(limit) {
		writeError(w, http.StatusRequestEntityTooLarge, fmt.Sprintf("body of %d bytes exceeds the write limit of %d", r.ContentLength, limit))
		return workers.Message{}, false
	}
	payload, err := io.ReadAll(http.MaxBytesReader(w, r.Body, int64(limit)))
	var tooLarge *http.MaxBytesError
	switch {
	case errors.As(err, &tooLarge):
		writeError(w, http.StatusRequestEntityTooLarge, fmt.Sprintf("body exceeds the write limit of %d bytes", limit))
		return workers.Message{}, false
	case err != nil:
		writeError(w, http.StatusBadRequest, "read body: "+err.Error())
		return workers.Message{}, false
	}
	return workers.Message{Binary: binary, Payload: payload, Traceparent: traceparent(r)}, true
}

// frameKind maps a content type to a frame: binary for
// application/octet-stream, text for text types, and false for others.
func frameKind(contentType string) (binary, ok bool) {
	if contentType == "" {
		return false, true
	}
	mt, _, err := mime.ParseMediaType(contentType)
	if err != nil {
		return false, false
	}
	switch {
	case mt == "application/octet-stream":
		return true, true
	case strings.HasPrefix(mt, "text/"), mt == "application/json", strings.HasSuffix(mt, "+json"),
		mt == "application/xml", strings.HasSuffix(mt, "+xml"):
		return false, true
	}
	return false, false
}

func (a *api) sendToConnection(w http.ResponseWriter, r *http.Request) {
	m, ok := a.readMessage(w, r)
	if !ok {
		return
	}
	res, err := a.delivery.Send(r.Context(), r.PathValue("id"), m)
	if err != nil {
		a.deliveryError(w, "send", err)
		return
	}
	writeResult(w, res)
}

func (a *api) sendToUser(w http.ResponseWriter, r *http.Request) {
	m, ok := a.readMessage(w, r)
	if !ok {
		return
	}
	user := r.PathValue("id")
	results, err := a.delivery.SendUser(r.Context(), user, m)
	if err != nil {
		a.deliveryError(w, "send to user", err)
		return
	}
	body := userResultJSON{UserID: user, Results: results}
	if body.Results == nil {
		body.Results = []workers.Result{}
	}
	for _, res := range results {
		switch res.Outcome {
		case workers.Delivered:
			body.Delivered++
		case workers.Queued:
			body.Queued++
		default:
			body.Unknown++
		}
	}
	writeJSON(w, http.StatusOK, body)
}

// closeConnection kicks a connection: code (4000-4999, default the kick
// code) and reason (free text for the disconnected event's detail) come
// from the query.
func (a *api) closeConnection(w http.ResponseWriter, r *http.Request) {
	q := r.URL.Query()
	var code uint16
	if s := q.Get("code"); s != "" {
		n, err := strconv.ParseUint(s, 10, 16)
		if err != nil || n < 4000 || n > 4999 {
			writeError(w, http.StatusBadRequest, fmt.Sprintf("code %q: want a close code from 4000 to 4999", s))
			return
		}
		code = uint16(n)
	}
	detail := q.Get("reason")
	if len(detail) > maxKickDetailBytes {
		writeError(w, http.StatusBadRequest, fmt.Sprintf("reason is %d bytes; at most %d", len(detail), maxKickDetailBytes))
		return
	}

	res, err := a.delivery.Close(r.Context(), r.PathValue("id"), workers.Close{Code: code, Detail: detail, Traceparent: traceparent(r)})
	if err != nil {
		a.deliveryError(w, "close", err)
		return
	}
	writeResult(w, res)
}

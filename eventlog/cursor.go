package eventlog

import (
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
)

// Cursor is a position in every stream at once: for each stream, the last
// sequence already delivered. A stream missing from the cursor starts at its
// beginning. Its string form is opaque to clients.
type Cursor map[string]uint64

// ErrInvalidCursor reports a cursor string that does not parse.
var ErrInvalidCursor = errors.New("eventlog: invalid cursor")

// maxCursorLen bounds a cursor string, so a client cannot make the server
// decode an arbitrarily large one.
const maxCursorLen = 1 << 20

// Clone returns a copy that can be advanced independently.
func (c Cursor) Clone() Cursor {
	if c == nil {
		return Cursor{}
	}
	return maps.Clone(c)
}

// Advance records that the event at p was delivered.
func (c Cursor) Advance(p Position) {
	if p.Seq > c[p.Stream] {
		c[p.Stream] = p.Seq
	}
}

// String encodes the cursor as URL-safe base64 of a JSON object.
func (c Cursor) String() string {
	if len(c) == 0 {
		return ""
	}
	raw, _ := json.Marshal(map[string]uint64(c))
	return base64.RawURLEncoding.EncodeToString(raw)
}

// ParseCursor decodes a cursor string; the empty string is the start of the
// log.
func ParseCursor(s string) (Cursor, error) {
	if s == "" {
		return Cursor{}, nil
	}
	if len(s) > maxCursorLen {
		return nil, fmt.Errorf("%w: %d bytes, the limit is %d", ErrInvalidCursor, len(s), maxCursorLen)
	}
	raw, err := base64.RawURLEncoding.DecodeString(s)
	if err != nil {
		return nil, fmt.Errorf("%w: %v", ErrInvalidCursor, err)
	}
	var m map[string]uint64
	if err := json.Unmarshal(raw, &m); err != nil {
		return nil, fmt.Errorf("%w: %v", ErrInvalidCursor, err)
	}
	if m == nil {
		// JSON null decodes to a nil map, on which Advance would panic.
		m = map[string]uint64{}
	}
	for stream := range m {
		if err := validateStreamName(stream); err != nil {
			return nil, fmt.Errorf("%w: %v", ErrInvalidCursor, err)
		}
	}
	return Cursor(m), nil
}

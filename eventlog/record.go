package eventlog

import (
	"bytes"
	"encoding/hex"
	"errors"
	"fmt"
	"hash/crc32"
	"strconv"

	"github.com/cloudevents/sdk-go/v2/event"
)

// ErrCorrupt reports a stored record whose checksum or encoding is wrong.
var ErrCorrupt = errors.New("eventlog: corrupt record")

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

// Record is one event at its position in the log.
type Record struct {
	Stream string
	Seq    uint64
	Event  *event.Event
	// JSON is Event in structured-mode JSON as stored, which equals what
	// Event.MarshalJSON returns. It is set on records read from the store
	// and nil on others. Callers must not modify it.
	JSON []byte
}

// Position returns where the record is.
func (r Record) Position() Position { return Position{Stream: r.Stream, Seq: r.Seq} }

// Position is an event's place in the log: its stream and its sequence in
// that stream, counted from 1.
type Position struct {
	Stream string
	Seq    uint64
}

func (p Position) String() string { return p.Stream + "@" + strconv.FormatUint(p.Seq, 10) }

// encodeRecord renders an event as stored: the CRC-32C of the JSON in eight
// hex digits, a space, then the event in structured JSON mode. Text keeps the
// value readable in any state store; the checksum finds a torn or damaged
// value.
func encodeRecord(ev *event.Event) ([]byte, error) {
	body, err := ev.MarshalJSON()
	if err != nil {
		return nil, err
	}
	out := make([]byte, 9, 9+len(body))
	var sum [4]byte
	c := crc32.Checksum(body, castagnoli)
	sum[0], sum[1], sum[2], sum[3] = byte(c>>24), byte(c>>16), byte(c>>8), byte(c)
	hex.Encode(out[:8], sum[:])
	out[8] = ' '
	return append(out, body...), nil
}

// DecodeRecord parses a stored value back into an event, checking its
// checksum. Every failure wraps ErrCorrupt.
func DecodeRecord(raw []byte) (*event.Event, error) {
	ev, _, err := decodeRecord(bytes.Clone(raw))
	return ev, err
}

// decodeRecord is DecodeRecord on a value the caller owns and will not
// modify. It also returns the event's JSON, which is a subslice of raw.
func decodeRecord(raw []byte) (*event.Event, []byte, error) {
	if len(raw) < 10 || raw[8] != ' ' {
		return nil, nil, fmt.Errorf("%w: %d bytes, no checksum header", ErrCorrupt, len(raw))
	}
	var sum [4]byte
	if _, err := hex.Decode(sum[:], raw[:8]); err != nil {
		return nil, nil, fmt.Errorf("%w: checksum header: %v", ErrCorrupt, err)
	}
	body := raw[9:]
	want := uint32(sum[0])<<24 | uint32(sum[1])<<16 | uint32(sum[2])<<8 | uint32(sum[3])
	if got := crc32.Checksum(body, castagnoli); got != want {
		return nil, nil, fmt.Errorf("%w: checksum %08x, want %08x", ErrCorrupt, got, want)
	}
	ev := event.New()
	if err := ev.UnmarshalJSON(body); err != nil {
		return nil, nil, fmt.Errorf("%w: %v", ErrCorrupt, err)
	}
	return &ev, body, nil
}

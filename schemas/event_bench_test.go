package schemas_test

import (
	"encoding/hex"
	"encoding/json"
	"hash/crc32"
	"testing"
	"time"

	"github.com/cloudevents/sdk-go/v2/event"
	"github.com/google/uuid"

	"github.com/virtufin/websocketmanager/eventlog"
	"github.com/virtufin/websocketmanager/schemas"
)

// Field values of the benchmark events, at the lengths that real clients
// produce: UUIDv7 ids and a browser's user agent.
const (
	benchInstance    = "pod-bench"
	benchIncarnation = "0190f3a2-7c1e-7b3a-9f6e-2d1c0b9a8e7f"
	benchConnection  = "0190f3a2-8d2f-7c4b-a07f-3e2d1c0b9a8e"
	benchUser        = "user-0042"
	benchUserAgent   = "Mozilla/5.0 (X11; Linux x86_64; rv:128.0) Gecko/20100101 Firefox/128.0"
)

var benchTime = time.Date(2026, 12, 4, 10, 0, 0, 0, time.UTC)

// BenchmarkEventEncode measures what wsm does to a lifecycle event before
// the log stores it. One op of the schemas case builds the event with the
// schemas constructor and checks it with schemas.Validate. Then it sets the
// sequence extension and encodes the event as the log stores it, checksum
// header and structured JSON. socket.Server and eventlog.Writer run these
// steps in the same order.
//
// The plain-json case is the baseline: one op builds a struct with the same
// attributes and data, encodes it with encoding/json and adds the same
// checksum header, without the CloudEvents SDK and without validation. Its
// record has the same length as the stored one (759 bytes for the connected
// event), which the benchmark checks before it starts. The
// validate-only case runs schemas.Validate alone on a built event.
func BenchmarkEventEncode(b *testing.B) {
	connected := schemas.Connected{
		ConnectionID: benchConnection, InstanceID: benchInstance, Incarnation: benchIncarnation,
		UserID: benchUser, RemoteAddr: "203.0.113.7:54321", UserAgent: benchUserAgent,
		ConnectedAt: benchTime,
	}
	disconnected := schemas.Disconnected{
		ConnectionID: benchConnection, InstanceID: benchInstance, Incarnation: benchIncarnation,
		UserID: benchUser, CloseCode: 1000, Reason: schemas.ReasonClientClosed,
		DisconnectedAt: benchTime.Add(time.Minute),
	}
	env := schemas.Envelope{InstanceID: benchInstance, Time: benchTime}

	b.Run("connected", func(b *testing.B) {
		build := func() (*event.Event, error) { return schemas.NewConnected(env, connected) }
		plain := func(id, seq string) ([]byte, error) {
			return json.Marshal(plainEvent[schemas.Connected]{
				plainEnvelope: newPlainEnvelope(schemas.TypeConnected, id, connected.ConnectionID, seq), Data: connected,
			})
		}
		benchEventEncode(b, build, plain)
	})
	b.Run("disconnected", func(b *testing.B) {
		build := func() (*event.Event, error) { return schemas.NewDisconnected(env, disconnected) }
		plain := func(id, seq string) ([]byte, error) {
			return json.Marshal(plainEvent[schemas.Disconnected]{
				plainEnvelope: newPlainEnvelope(schemas.TypeDisconnected, id, disconnected.ConnectionID, seq), Data: disconnected,
			})
		}
		benchEventEncode(b, build, plain)
	})
}

func benchEventEncode(b *testing.B, build func() (*event.Event, error), plain func(id, seq string) ([]byte, error)) {
	checkStoredForm(b, build, plain)

	b.Run("schemas", func(b *testing.B) {
		b.ReportAllocs()
		var seq uint64
		for b.Loop() {
			seq++
			ev, err := build()
			if err != nil {
				b.Fatal(err)
			}
			if err := schemas.Validate(ev); err != nil {
				b.Fatal(err)
			}
			ev.SetExtension(schemas.SequenceExtension, schemas.FormatSequence(seq))
			if _, err := storedRecord(ev); err != nil {
				b.Fatal(err)
			}
		}
	})

	b.Run("validate-only", func(b *testing.B) {
		ev, err := build()
		if err != nil {
			b.Fatal(err)
		}
		b.ReportAllocs()
		for b.Loop() {
			if err := schemas.Validate(ev); err != nil {
				b.Fatal(err)
			}
		}
	})

	b.Run("plain-json", func(b *testing.B) {
		b.ReportAllocs()
		var seq uint64
		for b.Loop() {
			seq++
			body, err := plain(uuid.Must(uuid.NewV7()).String(), schemas.FormatSequence(seq))
			if err != nil {
				b.Fatal(err)
			}
			checksummed(body)
		}
	})
}

// checkStoredForm fails the benchmark when storedRecord no longer writes
// the format that eventlog.DecodeRecord reads, when the built event does
// not validate, or when the baseline encodes a different number of bytes.
func checkStoredForm(b *testing.B, build func() (*event.Event, error), plain func(id, seq string) ([]byte, error)) {
	b.Helper()
	ev, err := build()
	if err != nil {
		b.Fatal(err)
	}
	if err := schemas.Validate(ev); err != nil {
		b.Fatal(err)
	}
	ev.SetExtension(schemas.SequenceExtension, schemas.FormatSequence(1))
	raw, err := storedRecord(ev)
	if err != nil {
		b.Fatal(err)
	}
	back, err := eventlog.DecodeRecord(raw)
	if err != nil {
		b.Fatalf("eventlog.DecodeRecord failed on the output of storedRecord: %v; make storedRecord match encodeRecord in eventlog", err)
	}
	if back.ID() != ev.ID() {
		b.Fatalf("decoded event id = %q, want %q", back.ID(), ev.ID())
	}

	body, err := plain(ev.ID(), schemas.FormatSequence(1))
	if err != nil {
		b.Fatal(err)
	}
	if got, want := len(checksummed(body)), len(raw); got != want {
		b.Fatalf("plain-json record is %d bytes, want %d as the stored record: give plainEvent the same attributes and data", got, want)
	}
}

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

// storedRecord encodes an event in the record format of the event log: the
// CRC-32C of the structured JSON in eight hex digits, a space, then the
// JSON. eventlog keeps its encoder unexported, and checkStoredForm checks
// that eventlog.DecodeRecord accepts this output.
func storedRecord(ev *event.Event) ([]byte, error) {
	body, err := ev.MarshalJSON()
	if err != nil {
		return nil, err
	}
	return checksummed(body), nil
}

func checksummed(body []byte) []byte {
	out := make([]byte, 9, 9+len(body))
	c := crc32.Checksum(body, castagnoli)
	sum := [4]byte{byte(c >> 24), byte(c >> 16), byte(c >> 8), byte(c)}
	hex.Encode(out[:8], sum[:])
	out[8] = ' '
	return append(out, body...)
}

// plainEnvelope is the set of CloudEvents attributes that the schemas
// constructors and the writer set, as plain struct fields.
type plainEnvelope struct {
	SpecVersion     string    `json:"specversion"`
	ID              string    `json:"id"`
	Source          string    `json:"source"`
	Type            string    `json:"type"`
	Subject         string    `json:"subject"`
	Time            time.Time `json:"time"`
	DataContentType string    `json:"datacontenttype"`
	DataSchema      string    `json:"dataschema"`
	Sequence        string    `json:"sequence"`
}

type plainEvent[T any] struct {
	plainEnvelope
	Data T `json:"data"`
}

func newPlainEnvelope(typ, id, subject, seq string) plainEnvelope {
	return plainEnvelope{
		SpecVersion: event.CloudEventsVersionV1, ID: id, Source: schemas.Source(benchInstance),
		Type: typ, Subject: subject, Time: benchTime, DataContentType: event.ApplicationJSON,
		DataSchema: schemas.SchemaURI(typ), Sequence: seq,
	}
}

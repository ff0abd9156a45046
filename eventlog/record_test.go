package eventlog

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"hash/crc32"
	"reflect"
	"testing"
	"time"

	"github.com/cloudevents/sdk-go/v2/event"

	"github.com/virtufin/websocketmanager/schemas"
)

// sampleEvents returns one event of each type, as the schemas constructors
// build them, with a sequence set as a Writer sets it.
func sampleEvents(t testing.TB) []*event.Event {
	t.Helper()
	env := schemas.Envelope{InstanceID: "pod-a", Time: time.Date(2025, 3, 1, 12, 0, 0, 123456789, time.UTC), Traceparent: "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"}
	at := env.Time
	build := []func() (*event.Event, error){
		func() (*event.Event, error) {
			return schemas.NewConnected(env, schemas.Connected{ConnectionID: "c1", InstanceID: "pod-a", Incarnation: "inc-1",
				UserID: "u1", RemoteAddr: "127.0.0.1:5000", UserAgent: "test \"agent\" ü", Subprotocol: "json", ConnectedAt: at})
		},
		func() (*event.Event, error) {
			return schemas.NewDisconnected(env, schemas.Disconnected{ConnectionID: "c1", InstanceID: "pod-a", Incarnation: "inc-1",
				UserID: "u1", CloseCode: 1000, Reason: schemas.ReasonClientClosed, DisconnectedAt: at})
		},
		func() (*event.Event, error) {
			return schemas.NewHeartbeat(env, schemas.Heartbeat{InstanceID: "pod-a", Incarnation: "inc-1", State: schemas.StateServing,
				ConnectionCount: 3, StartedAt: at, Address: "127.0.0.1:8080", Version: "dev"})
		},
		func() (*event.Event, error) {
			return schemas.NewReclaimed(env, schemas.Reclaimed{ConnectionID: "c1", UserID: "u1", DeadInstanceID: "pod-b",
				DeadIncarnation: "inc-9", ReclaimedBy: "inc-1", LastHeartbeatAt: at})
		},
	}
	out := make([]*event.Event, len(build))
	for i, b := range build {
		ev, err := b()
		if err != nil {
			t.Fatalf("build event %d: %v", i, err)
		}
		ev.SetExtension(schemas.SequenceExtension, schemas.FormatSequence(uint64(i+1)))
		out[i] = ev
	}
	return out
}

// eventFields decodes an event's JSON form, so two events compare equal
// whatever order their attributes were written in.
func eventFields(t testing.TB, ev *event.Event) map[string]any {
	t.Helper()
	raw, err := ev.MarshalJSON()
	if err != nil {
		t.Fatalf("marshal event: %v", err)
	}
	var m map[string]any
	if err := json.Unmarshal(raw, &m); err != nil {
		t.Fatalf("decode event JSON %s: %v", raw, err)
	}
	return m
}

func mustEncode(t testing.TB, ev *event.Event) []byte {
	t.Helper()
	raw, err := encodeRecord(ev)
	if err != nil {
		t.Fatalf("encodeRecord: %v", err)
	}
	return raw
}

func TestRecordRoundTrip(t *testing.T) {
	for _, ev := range sampleEvents(t) {
		t.Run(ev.Type(), func(t *testing.T) {
			raw := mustEncode(t, ev)
			if raw[8] != ' ' {
				t.Errorf("record starts %q, want eight hex digits and a space", raw[:9])
			}
			got, err := DecodeRecord(raw)
			if err != nil {
				t.Fatalf("DecodeRecord: %v", err)
			}
			if g, w := eventFields(t, got), eventFields(t, ev); !reflect.DeepEqual(g, w) {
				t.Errorf("DecodeRecord(encodeRecord(ev)) =\n  %v\nwant\n  %v", g, w)
			}
			if !got.Time().Equal(ev.Time()) {
				t.Errorf("time = %v, want %v", got.Time(), ev.Time())
			}
			if !bytes.Equal(got.Data(), ev.Data()) {
				t.Errorf("data = %s, want %s", got.Data(), ev.Data())
			}
		})
	}
}

// TestRecordJSONMatchesMarshal checks that the JSON a decoded record keeps
// is byte for byte what MarshalJSON returns for its event, so wsm replay may
// print the stored JSON in place of encoding the event again.
func TestRecordJSONMatchesMarshal(t *testing.T) {
	events := sampleEvents(t)
	// A time in another zone, and characters that HTML-safe JSON encoders
	// escape.
	zone := time.FixedZone("UTC+5:30", 5*3600+1800)
	env := schemas.Envelope{InstanceID: "pod-<a>", Time: time.Date(2025, 3, 1, 17, 30, 0, 1000, zone)}
	odd, err := schemas.NewConnected(env, schemas.Connected{ConnectionID: "c&2", InstanceID: "pod-<a>", Incarnation: "inc-1",
		UserID: "u\u2028", UserAgent: "<script>&\x00\t", ConnectedAt: env.Time})
	if err != nil {
		t.Fatalf("build event: %v", err)
	}
	odd.SetExtension(schemas.SequenceExtension, schemas.FormatSequence(7))
	events = append(events, odd)

	for i, ev := range events {
		t.Run(fmt.Sprint(i, "-", ev.Type()), func(t *testing.T) {
			got, body, err := decodeRecord(mustEncode(t, ev))
			if err != nil {
				t.Fatalf("decodeRecord: %v", err)
			}
			again, err := got.MarshalJSON()
			if err != nil {
				t.Fatalf("MarshalJSON: %v", err)
			}
			if !bytes.Equal(body, again) {
				t.Errorf("stored JSON\n  %s\nMarshalJSON of the decoded event\n  %s", body, again)
			}
		})
	}
}

func TestDecodeRecordRejects(t *testing.T) {
	valid := mustEncode(t, sampleEvents(t)[0])
	flip := func(i int) []byte {
		b := bytes.Clone(valid)
		b[i] ^= 0x01
		return b
	}
	tests := []struct {
		name string
		raw  []byte
	}{
		{"nil", nil},
		{"empty", []byte{}},
		{"header only", valid[:9]},
		{"no space", append(bytes.Clone(valid[:8]), valid[9:]...)},
		{"header not hex", append([]byte("zzzzzzzz "), valid[9:]...)},
		{"flipped header digit", flip(0)},
		{"flipped separator", flip(8)},
		{"flipped body byte", flip(len(valid) / 2)},
		{"flipped last byte", flip(len(valid) - 1)},
		{"truncated body", valid[:len(valid)-1]},
		{"extra byte", append(bytes.Clone(valid), '\n')},
		{"body not an event", recordOf([]byte(`{"hello":"world"}`))},
		{"body not JSON", recordOf([]byte(`not json`))},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ev, err := DecodeRecord(tt.raw)
			if !errors.Is(err, ErrCorrupt) {
				t.Errorf("DecodeRecord = %v, %v; want an error wrapping ErrCorrupt", ev, err)
			}
		})
	}
}

// recordOf frames any body with a correct checksum.
func recordOf(body []byte) []byte {
	return append(fmt.Appendf(nil, "%08x ", crc32.Checksum(body, castagnoli)), body...)
}

func FuzzDecodeRecord(f *testing.F) {
	for _, ev := range sampleEvents(f) {
		raw := mustEncode(f, ev)
		f.Add(raw)
		f.Add(raw[:len(raw)/2])
	}
	f.Add([]byte{})
	f.Add([]byte("00000000 {}"))
	f.Add(recordOf([]byte(`{"specversion":"1.0","id":"x","source":"s","type":"t"}`)))
	f.Add(recordOf([]byte(`{"specversion":"1.0","id":"x","source":"s","type":"t","data_base64":"AAE="}`)))

	template := sampleEvents(f)[0]
	f.Fuzz(func(t *testing.T, raw []byte) {
		// Any input: no panic, and every failure wraps ErrCorrupt.
		ev, err := DecodeRecord(raw)
		if err != nil {
			if !errors.Is(err, ErrCorrupt) {
				t.Fatalf("DecodeRecord error %v does not wrap ErrCorrupt", err)
			}
		} else {
			// What decodes encodes again to a record of the same event.
			again, err := encodeRecord(ev)
			if err != nil {
				t.Fatalf("re-encode a decoded record: %v", err)
			}
			ev2, err := DecodeRecord(again)
			if err != nil {
				t.Fatalf("decode a re-encoded record: %v", err)
			}
			if g, w := eventFields(t, ev2), eventFields(t, ev); !reflect.DeepEqual(g, w) {
				t.Fatalf("re-encoded record decodes to\n  %v\nwant\n  %v", g, w)
			}
		}

		// A valid encoding of an event carrying the input round-trips, and
		// any single flipped bit in it is caught.
		built := template.Clone()
		built.SetSubject(string(raw))
		if err := built.SetData(event.ApplicationJSON, map[string]string{"payload": string(raw)}); err != nil {
			t.Fatalf("set data: %v", err)
		}
		enc, err := encodeRecord(&built)
		if err != nil {
			t.Fatalf("encodeRecord: %v", err)
		}
		got, err := DecodeRecord(enc)
		if err != nil {
			t.Fatalf("DecodeRecord of a valid encoding: %v", err)
		}
		if g, w := eventFields(t, got), eventFields(t, &built); !reflect.DeepEqual(g, w) {
			t.Fatalf("round trip gave\n  %v\nwant\n  %v", g, w)
		}
		i := len(raw) % len(enc)
		enc[i] ^= 0x01
		if _, err := DecodeRecord(enc); !errors.Is(err, ErrCorrupt) {
			t.Fatalf("DecodeRecord with byte %d flipped = %v, want an error wrapping ErrCorrupt", i, err)
		}
	})
}

func BenchmarkDecodeRecord(b *testing.B) {
	raw := mustEncode(b, sampleEvents(b)[0])
	b.SetBytes(int64(len(raw)))
	b.ReportAllocs()
	for b.Loop() {
		if _, err := DecodeRecord(raw); err != nil {
			b.Fatal(err)
		}
	}
}

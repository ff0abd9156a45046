package schemas

import (
	"encoding/json"
	"errors"
	"strings"
	"testing"
	"time"
)

func validConnected() Connected {
	return Connected{
		ConnectionID: "c1", InstanceID: "pod-a", Incarnation: "inc-1", UserID: "u1",
		RemoteAddr: "127.0.0.1:5000", UserAgent: "test", ConnectedAt: time.Now().UTC(),
	}
}

func TestConstructorsProduceValidEvents(t *testing.T) {
	env := Envelope{InstanceID: "pod-a"}
	now := time.Now()
	build := map[string]func() (any, error){
		TypeConnected: func() (any, error) { return NewConnected(env, validConnected()) },
		TypeDisconnected: func() (any, error) {
			return NewDisconnected(env, Disconnected{ConnectionID: "c1", InstanceID: "pod-a", Incarnation: "i", UserID: "u1",
				CloseCode: 1000, Reason: ReasonClientClosed, DisconnectedAt: now})
		},
		TypeHeartbeat: func() (any, error) {
			return NewHeartbeat(env, Heartbeat{InstanceID: "pod-a", Incarnation: "i", State: StateServing, StartedAt: now, Address: "127.0.0.1:8080", Version: "dev"})
		},
		TypeReclaimed: func() (any, error) {
			return NewReclaimed(env, Reclaimed{ConnectionID: "c1", DeadInstanceID: "pod-b", DeadIncarnation: "j", ReclaimedBy: "i", LastHeartbeatAt: now})
		},
	}
	for _, typ := range Types {
		t.Run(strings.TrimPrefix(typ, TypePrefix), func(t *testing.T) {
			v, err := build[typ]()
			if err != nil {
				t.Fatalf("construct: %v", err)
			}
			ev := v.(interface{ Type() string })
			if ev.Type() != typ {
				t.Fatalf("type = %q, want %q", ev.Type(), typ)
			}
		})
	}
	for _, typ := range Types {
		v, _ := build[typ]()
		if err := validateAny(v); err != nil {
			t.Errorf("%s: %v", typ, err)
		}
	}
}

func TestValidateNamesField(t *testing.T) {
	tests := []struct {
		name  string
		edit  func(d map[string]any)
		field string
	}{
		{"missing user", func(d map[string]any) { delete(d, "userId") }, "data.userId"},
		{"empty connection", func(d map[string]any) { d["connectionId"] = "" }, "data.connectionId"},
		{"bad time", func(d map[string]any) { d["connectedAt"] = "yesterday" }, "data.connectedAt"},
		{"unknown field", func(d map[string]any) { d["color"] = "red" }, "data"},
		{"wrong type", func(d map[string]any) { d["remoteAddr"] = 7 }, "data.remoteAddr"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ev, err := NewConnected(Envelope{InstanceID: "pod-a"}, validConnected())
			if err != nil {
				t.Fatal(err)
			}
			var d map[string]any
			if err := json.Unmarshal(ev.Data(), &d); err != nil {
				t.Fatal(err)
			}
			tt.edit(d)
			raw, _ := json.Marshal(d)
			ev.DataEncoded = raw

			err = Validate(ev)
			var ve *ValidationError
			if !errors.As(err, &ve) {
				t.Fatalf("Validate = %v, want a *ValidationError", err)
			}
			if !errors.Is(err, ErrInvalid) {
				t.Errorf("error %v does not wrap ErrInvalid", err)
			}
			if ve.Field != tt.field {
				t.Errorf("field = %q, want %q (error: %v)", ve.Field, tt.field, err)
			}
		})
	}
}

func TestValidateEnvelope(t *testing.T) {
	tests := []struct {
		name  string
		edit  func(ev *eventT)
		field string
	}{
		{"foreign source", func(ev *eventT) { ev.SetSource("urn:other:pod-a") }, "source"},
		{"unknown type", func(ev *eventT) { ev.SetType(TypePrefix + "connection.teleported") }, "type"},
		{"subject mismatch", func(ev *eventT) { ev.SetSubject("c2") }, "subject"},
		{"wrong schema", func(ev *eventT) { ev.SetDataSchema("https://example.invalid/x.json") }, "dataschema"},
		{"short sequence", func(ev *eventT) { ev.SetExtension(SequenceExtension, "12") }, SequenceExtension},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ev, err := NewConnected(Envelope{InstanceID: "pod-a"}, validConnected())
			if err != nil {
				t.Fatal(err)
			}
			tt.edit(ev)
			var ve *ValidationError
			if err := Validate(ev); !errors.As(err, &ve) || ve.Field != tt.field {
				t.Errorf("Validate = %v, want an error on field %q", err, tt.field)
			}
		})
	}
}

func TestFormatSequenceSortsAsText(t *testing.T) {
	a, b := FormatSequence(9), FormatSequence(10)
	if len(a) != SequenceWidth || !(a < b) {
		t.Errorf("FormatSequence(9) = %q, FormatSequence(10) = %q; want %d digits sorting as numbers", a, b, SequenceWidth)
	}
}

package schemas

import (
	"encoding/base64"
	"encoding/json"
	"errors"
	"testing"
	"time"
)

func validMessage() MessageReceived {
	return MessageReceived{
		ConnectionID: "c1", InstanceID: "pod-a", Incarnation: "inc-1", UserID: "u1",
		Payload: "hello", ReceivedAt: time.Now().UTC(),
	}
}

func TestMessageReceivedValid(t *testing.T) {
	binary := validMessage()
	binary.Binary = true
	binary.Payload = base64.StdEncoding.EncodeToString([]byte{0, 1, 2, 0xff})
	anonymous := validMessage()
	anonymous.UserID = ""
	empty := validMessage()
	empty.Payload = ""

	tests := []struct {
		name string
		data MessageReceived
	}{
		{"text", validMessage()},
		{"binary", binary},
		{"anonymous", anonymous},
		{"empty text", empty},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ev, err := NewMessageReceived(Envelope{InstanceID: "pod-a"}, tt.data)
			if err != nil {
				t.Fatal(err)
			}
			if got, want := ev.Type(), TypeMessageReceived; got != want {
				t.Errorf("type = %q, want %q", got, want)
			}
			if got, want := ev.Subject(), tt.data.ConnectionID; got != want {
				t.Errorf("subject = %q, want %q", got, want)
			}
			if got, want := ev.DataSchema(), SchemaURI(TypeMessageReceived); got != want {
				t.Errorf("dataschema = %q, want %q", got, want)
			}
			if err := Validate(ev); err != nil {
				t.Errorf("Validate = %v, want nil", err)
			}
		})
	}
}

func TestMessageReceivedInvalid(t *testing.T) {
	tests := []struct {
		name  string
		edit  func(d map[string]any)
		field string
	}{
		{"missing binary", func(d map[string]any) { delete(d, "binary") }, "data.binary"},
		{"missing payload", func(d map[string]any) { delete(d, "payload") }, "data.payload"},
		{"binary not base64", func(d map[string]any) { d["binary"] = true; d["payload"] = "not base64!" }, "data.payload"},
		{"binary unpadded", func(d map[string]any) { d["binary"] = true; d["payload"] = "AAE" }, "data.payload"},
		{"payload not a string", func(d map[string]any) { d["payload"] = 7 }, "data.payload"},
		{"bad time", func(d map[string]any) { d["receivedAt"] = "now" }, "data.receivedAt"},
		{"unknown field", func(d map[string]any) { d["color"] = "red" }, "data"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ev, err := NewMessageReceived(Envelope{InstanceID: "pod-a"}, validMessage())
			if err != nil {
				t.Fatal(err)
			}
			var d map[string]any
			if err := json.Unmarshal(ev.Data(), &d); err != nil {
				t.Fatal(err)
			}
			tt.edit(d)
			ev.DataEncoded, _ = json.Marshal(d)

			err = Validate(ev)
			var ve *ValidationError
			if !errors.As(err, &ve) {
				t.Fatalf("Validate = %v, want a *ValidationError", err)
			}
			if ve.Field != tt.field {
				t.Errorf("field = %q, want %q (%v)", ve.Field, tt.field, err)
			}
			if !errors.Is(err, ErrInvalid) {
				t.Errorf("Validate = %v, want it to wrap ErrInvalid", err)
			}
		})
	}
}

func TestMessageReceivedSubjectMustBeConnection(t *testing.T) {
	ev, err := NewMessageReceived(Envelope{InstanceID: "pod-a"}, validMessage())
	if err != nil {
		t.Fatal(err)
	}
	ev.SetSubject("someone-else")

	var ve *ValidationError
	if err := Validate(ev); !errors.As(err, &ve) || ve.Field != "subject" {
		t.Errorf("Validate = %v, want a subject error", err)
	}
}

func TestMessageReceivedIsPublishOnly(t *testing.T) {
	for _, typ := range Types {
		if typ == TypeMessageReceived {
			t.Errorf("Types contains %s, want it only in PublishOnlyTypes: the log never holds it", typ)
		}
	}
	if _, err := SchemaFile(TypeMessageReceived); err != nil {
		t.Errorf("SchemaFile(%s) = %v, want the embedded schema", TypeMessageReceived, err)
	}
}

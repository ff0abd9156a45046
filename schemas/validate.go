package schemas

import (
	"bytes"
	"embed"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"

	"github.com/cloudevents/sdk-go/v2/event"
	"github.com/santhosh-tekuri/jsonschema/v6"
	"github.com/santhosh-tekuri/jsonschema/v6/kind"
	"golang.org/x/text/language"
	"golang.org/x/text/message"
)

//go:embed v1/*.json
var schemaFiles embed.FS

// SchemaVersion is the version of the data schemas that constructors name in
// the dataschema attribute.
const SchemaVersion = "v1"

// SchemaURI returns the dataschema attribute of an event type: the $id of its
// embedded schema file.
func SchemaURI(typ string) string {
	return "https://schemas.virtufin.com/websocketmanager/" + strings.TrimPrefix(typ, TypePrefix) + "/" + SchemaVersion + ".json"
}

// SchemaFile returns the embedded JSON Schema of an event type's data.
func SchemaFile(typ string) ([]byte, error) {
	return schemaFiles.ReadFile(SchemaVersion + "/" + strings.TrimPrefix(typ, TypePrefix) + ".json")
}

// ErrInvalid is wrapped by every validation failure.
var ErrInvalid = errors.New("schemas: invalid event")

// ValidationError names the attribute or data field that broke the rules.
type ValidationError struct {
	Type    string // event type, possibly empty when the type itself is wrong
	Field   string // "id", "source", "data.userId", ...
	Problem string
}

func (e *ValidationError) Error() string {
	if e.Type == "" {
		return fmt.Sprintf("schemas: invalid event: %s: %s", e.Field, e.Problem)
	}
	return fmt.Sprintf("schemas: invalid %s event: %s: %s", e.Type, e.Field, e.Problem)
}

func (e *ValidationError) Unwrap() error { return ErrInvalid }

// messagePrinter renders schema errors in English.
var messagePrinter = message.NewPrinter(language.English)

var compiledSchemas = sync.OnceValues(func() (map[string]*jsonschema.Schema, error) {
	c := jsonschema.NewCompiler()
	c.AssertFormat()
	all := slices.Concat(Types, PublishOnlyTypes)
	out := make(map[string]*jsonschema.Schema, len(all))
	for _, typ := range all {
		raw, err := SchemaFile(typ)
		if err != nil {
			return nil, err
		}
		doc, err := jsonschema.UnmarshalJSON(bytes.NewReader(raw))
		if err != nil {
			return nil, fmt.Errorf("schemas: parse schema of %s: %w", typ, err)
		}
		if err := c.AddResource(SchemaURI(typ), doc); err != nil {
			return nil, fmt.Errorf("schemas: add schema of %s: %w", typ, err)
		}
		s, err := c.Compile(SchemaURI(typ))
		if err != nil {
			return nil, fmt.Errorf("schemas: compile schema of %s: %w", typ, err)
		}
		out[typ] = s
	}
	return out, nil
})

// Validate checks an event's envelope attributes and its data against the
// schema of its type. The error is a *ValidationError naming the first field
// found wrong.
func Validate(ev *event.Event) error {
	typ := ev.Type()
	fail := func(field, problem string) error {
		return &ValidationError{Type: typ, Field: field, Problem: problem}
	}

	if err := ev.Validate(); err != nil {
		return fail("envelope", err.Error())
	}
	if ev.SpecVersion() != event.CloudEventsVersionV1 {
		return fail("specversion", fmt.Sprintf("got %q, want %q", ev.SpecVersion(), event.CloudEventsVersionV1))
	}
	schemas, err := compiledSchemas()
	if err != nil {
		return err
	}
	schema, ok := schemas[typ]
	if !ok {
		return &ValidationError{Field: "type", Problem: fmt.Sprintf("unknown type %q", typ)}
	}
	if _, ok := InstanceFromSource(ev.Source()); !ok {
		return fail("source", fmt.Sprintf("got %q, want %s<instance-id>", ev.Source(), SourcePrefix))
	}
	if ev.Subject() == "" {
		return fail("subject", "missing")
	}
	if ev.Time().IsZero() {
		return fail("time", "missing")
	}
	if ev.DataContentType() != event.ApplicationJSON {
		return fail("datacontenttype", fmt.Sprintf("got %q, want %q", ev.DataContentType(), event.ApplicationJSON))
	}
	if ev.DataSchema() != SchemaURI(typ) {
		return fail("dataschema", fmt.Sprintf("got %q, want %q", ev.DataSchema(), SchemaURI(typ)))
	}
	if seq, ok := ev.Extensions()[SequenceExtension]; ok {
		s, isString := seq.(string)
		if !isString || len(s) != SequenceWidth || strings.Trim(s, "0123456789") != "" {
			return fail(SequenceExtension, fmt.Sprintf("got %v, want %d decimal digits", seq, SequenceWidth))
		}
	}

	data, err := jsonschema.UnmarshalJSON(bytes.NewReader(ev.Data()))
	if err != nil {
		return fail("data", "not JSON: "+err.Error())
	}
	if err := schema.Validate(data); err != nil {
		var ve *jsonschema.ValidationError
		if errors.As(err, &ve) {
			return fail(dataField(ve), leafMessage(ve))
		}
		return fail("data", err.Error())
	}
	return checkSubject(ev, typ, fail)
}

// checkSubject verifies that the subject names what the data is about, so a
// subscriber filtering by subject receives the same events a fold uses.
func checkSubject(ev *event.Event, typ string, fail func(string, string) error) error {
	var ids struct {
		ConnectionID string `json:"connectionId"`
		InstanceID   string `json:"instanceId"`
	}
	if err := json.Unmarshal(ev.Data(), &ids); err != nil {
		return fail("data", err.Error())
	}
	want := ids.ConnectionID
	if typ == TypeHeartbeat {
		want = ids.InstanceID
	}
	if ev.Subject() != want {
		return fail("subject", fmt.Sprintf("got %q, want %q from the data", ev.Subject(), want))
	}
	return nil
}

// dataField renders the location of the deepest failing keyword as
// data.<field>, the way an operator reads it.
func dataField(ve *jsonschema.ValidationError) string {
	leaf := ve
	for len(leaf.Causes) > 0 {
		leaf = leaf.Causes[0]
	}
	loc := leaf.InstanceLocation
	// A missing required property is reported on its parent; name the property.
	if len(loc) == 0 {
		if missing := requiredMissing(leaf); missing != "" {
			return "data." + missing
		}
		return "data"
	}
	return "data." + strings.Join(loc, ".")
}

func requiredMissing(ve *jsonschema.ValidationError) string {
	if req, ok := ve.ErrorKind.(*kind.Required); ok && len(req.Missing) > 0 {
		return req.Missing[0]
	}
	return ""
}

func leafMessage(ve *jsonschema.ValidationError) string {
	leaf := ve
	for len(leaf.Causes) > 0 {
		leaf = leaf.Causes[0]
	}
	return leaf.ErrorKind.LocalizedString(messagePrinter)
}

// Package schemas defines the wsm event vocabulary: the CloudEvents type
// strings, the data carried by each type, constructors that fill in the
// envelope attributes, and validation against the JSON Schema files embedded
// in this package.
//
// Everything here is safe for concurrent use. The package does not depend on
// storage or sockets: it builds and checks events, nothing more.
package schemas

import (
	"fmt"
	"strings"
	"time"

	"github.com/cloudevents/sdk-go/v2/event"
	"github.com/google/uuid"
)

// TypePrefix starts every event type wsm emits.
const TypePrefix = "com.virtufin.websocketmanager."

// Event types. Each has a data struct below and a JSON Schema file named after
// the last two dot-separated parts of the type and the schema version.
const (
	TypeConnected    = TypePrefix + "connection.connected"
	TypeDisconnected = TypePrefix + "connection.disconnected"
	TypeHeartbeat    = TypePrefix + "instance.heartbeat"
	TypeReclaimed    = TypePrefix + "connection.reclaimed"

	// TypeMessageReceived is a message a client sent. It is published to
	// a topic as it arrives and never appended to the log.
	TypeMessageReceived = TypePrefix + "message.received"
)

// SourcePrefix starts the source attribute; the instance id follows it.
const SourcePrefix = "urn:virtufin:websocketmanager:"

// SequenceExtension is the CloudEvents extension attribute that holds an
// event's position in its stream, zero-padded to SequenceWidth digits so that
// positions sort as text.
const SequenceExtension = "sequence"

// TraceparentExtension carries a W3C trace context, when one is active.
const TraceparentExtension = "traceparent"

// SequenceWidth is the number of digits of a formatted sequence: enough for
// any uint64.
const SequenceWidth = 20

// Types lists every event type the log holds, in the order of the table in
// the docs. Replay, the event feed and the views see only these.
var Types = []string{TypeConnected, TypeDisconnected, TypeHeartbeat, TypeReclaimed}

// PublishOnlyTypes lists the event types that are published to a topic
// but never appended to the log. Validate accepts them like Types.
var PublishOnlyTypes = []string{TypeMessageReceived}

// Source returns the source attribute of events emitted by an instance.
func Source(instanceID string) string { return SourcePrefix + instanceID }

// InstanceFromSource returns the instance id in a source attribute, and false
// when the source is not one wsm writes.
func InstanceFromSource(source string) (string, bool) {
	id, ok := strings.CutPrefix(source, SourcePrefix)
	return id, ok && id != ""
}

// FormatSequence renders a stream position as the sequence extension value.
func FormatSequence(seq uint64) string { return fmt.Sprintf("%0*d", SequenceWidth, seq) }

// Envelope holds the attributes every constructor needs besides the data.
type Envelope struct {
	InstanceID  string    // source instance; required
	Time        time.Time // event time; zero means now
	Traceparent string    // W3C traceparent of the cause, if any
}

func newEvent(env Envelope, typ, subject string, data any) (*event.Event, error) {
	ev := event.New(event.CloudEventsVersionV1)
	ev.SetID(uuid.Must(uuid.NewV7()).String())
	ev.SetSource(Source(env.InstanceID))
	ev.SetType(typ)
	ev.SetSubject(subject)

	t := env.Time
	if t.IsZero() {
		t = time.Now()
	}
	ev.SetTime(t.UTC())
	ev.SetDataSchema(SchemaURI(typ))
	if env.Traceparent != "" {
		ev.SetExtension(TraceparentExtension, env.Traceparent)
	}
	if err := ev.SetData(event.ApplicationJSON, data); err != nil {
		return nil, fmt.Errorf("schemas: encode %s data: %w", typ, err)
	}
	return &ev, nil
}

// NewConnected builds a connection.connected event.
func NewConnected(env Envelope, d Connected) (*event.Event, error) {
	return newEvent(env, TypeConnected, d.ConnectionID, d)
}

// NewDisconnected builds a connection.disconnected event.
func NewDisconnected(env Envelope, d Disconnected) (*event.Event, error) {
	return newEvent(env, TypeDisconnected, d.ConnectionID, d)
}

// NewHeartbeat builds an instance.heartbeat event; its subject is the
// instance id.
func NewHeartbeat(env Envelope, d Heartbeat) (*event.Event, error) {
	return newEvent(env, TypeHeartbeat, d.InstanceID, d)
}

// NewReclaimed builds a connection.reclaimed event. Its source is the
// reclaiming instance and its subject the reclaimed connection.
func NewReclaimed(env Envelope, d Reclaimed) (*event.Event, error) {
	return newEvent(env, TypeReclaimed, d.ConnectionID, d)
}

// NewMessageReceived builds a message.received event. Its subject is the
// connection the message came from.
func NewMessageReceived(env Envelope, d MessageReceived) (*event.Event, error) {
	return newEvent(env, TypeMessageReceived, d.ConnectionID, d)
}

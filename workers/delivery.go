package workers

import (
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"slices"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/cloudevents/sdk-go/v2/event"
	"github.com/google/uuid"
	"github.com/rs/zerolog"

	"github.com/virtufin/websocketmanager/internal/pubsub"
	"github.com/virtufin/websocketmanager/projections"
	"github.com/virtufin/websocketmanager/schemas"
	"github.com/virtufin/websocketmanager/socket"
)

// A backend may request a send to a connection, or its close, from any
// instance. The instance that holds the connection acts on it. Any other
// forwards the request as a command over pub/sub to the holder's own
// topic. Step by step:
//
//   - The connection is on this instance's socket server: act at once.
//   - Else read its entry in the views. No open entry, or an entry that
//     names this instance (an earlier incarnation, or a close in
//     progress): nothing to act on.
//   - Else read the holder's instance record. When the record shows the
//     entry's incarnation, not stopped and not reclaimed, publish the
//     command to InstanceTopic(prefix, holder). Otherwise the holder is
//     gone, and a reclaimer closes the connection soon.
//
// The holder's Delivery receives the command through Handle and acts on
// the connection if it still holds it with the incarnation the command
// names. A send to every connection of another instance is one broadcast
// command on that instance's topic, which the holder executes only while
// its incarnation is the one the command names. Commands are CloudEvents
// of their own types, published and received but never appended to the
// event log.

// Command types.
const (
	TypeCommandSend  = schemas.TypePrefix + "command.send"
	TypeCommandClose = schemas.TypePrefix + "command.close"
	// TypeCommandBroadcast is a frame for every connection of the instance
	// that receives the command.
	TypeCommandBroadcast = schemas.TypePrefix + "command.broadcast"
)

// instanceTopicInfix sits between the topic prefix and the instance id.
const instanceTopicInfix = "wsm.instance."

// InstanceTopic returns the topic an instance receives its commands on.
// NOTE: nothing deletes the topic of an instance id that never comes back,
// such as a pod of a Deployment. On Redis each stays as a short stream.
func InstanceTopic(prefix, instanceID string) string {
	return prefix + instanceTopicInfix + instanceID
}

// Outcome is the result of a request for one connection.
type Outcome string

// Outcomes.
const (
	// Delivered: this instance holds the connection and queued the frame,
	// or started the close.
	Delivered Outcome = "delivered"
	// Queued: the command was published to the instance that holds the
	// connection.
	Queued Outcome = "queued"
	// Unknown: no open connection with that id that a live instance holds.
	Unknown Outcome = "unknown"
)

// Result is the outcome for one connection.
type Result struct {
	ConnectionID string  `json:"connectionId"`
	InstanceID   string  `json:"instanceId,omitempty"` // the holder, when known
	Outcome      Outcome `json:"result"`
	// Detail explains why the outcome is Unknown.
	Detail string `json:"detail,omitempty"`
}

// Message is a frame for one or more connections.
type Message struct {
	Binary  bool
	Payload []byte
	// Traceparent is the W3C trace context of the request, or empty.
	Traceparent string
}

// Close is a request to kick a connection.
type Close struct {
	// Code is the close code, 4000-4999; zero means the holder's kick code.
	Code uint16
	// Detail is free text for the disconnected event, never sent to the
	// client.
	Detail      string
	Traceparent string
}

// Sockets is the part of this instance's socket server that a Delivery
// uses. *socket.Server implements it.
type Sockets interface {
	Lookup(connID string) (socket.ConnInfo, bool)
	Send(connID string, binary bool, payload []byte) error
	SendAll(binary bool, payload []byte) (delivered, closing int, err error)
	KickWith(connID string, opts socket.KickOptions) error
	// Incarnation returns the incarnation that new connections get.
	Incarnation() string
}

// CommandPublisher publishes a message; pubsub.PubSub implements it.
type CommandPublisher interface {
	Publish(ctx context.Context, m pubsub.Message) error
}

// DeliveryConfig configures a Delivery.
type DeliveryConfig struct {
	// InstanceID is this instance's id. Required.
	InstanceID string
	// Views reads connection entries and instance records. Required.
	Views projections.Reader
	// Sockets is this instance's socket server. Required.
	Sockets Sockets
	// PubSub carries commands to other instances. Required.
	PubSub CommandPublisher
	// TopicPrefix starts every instance's command topic, so that fleets
	// sharing one broker stay apart. Empty by default.
	TopicPrefix string
	// MaxPayload is the largest payload accepted. Zero means
	// socket.DefaultWriteLimit. It must not exceed the holders' write
	// limit, or they reject the frame after it was reported queued.
	MaxPayload int
	Logger     zerolog.Logger
}

// Validate reports every problem of the configuration at once.
func (c DeliveryConfig) Validate() error {
	var errs []error
	bad := func(what string) { errs = append(errs, fmt.Errorf("%w: delivery: %s", ErrInvalidConfig, what)) }
	if c.InstanceID == "" {
		bad("InstanceID is empty")
	}
	if c.Views.Store == nil {
		bad("Views.Store is nil")
	}
	if c.Sockets == nil {
		bad("Sockets is nil")
	}
	if c.PubSub == nil {
		bad("PubSub is nil")
	}
	if c.MaxPayload < 0 {
		bad(fmt.Sprintf("MaxPayload %d is negative", c.MaxPayload))
	}
	return errors.Join(errs...)
}

// Delivery routes sends and closes to the instance that holds each
// connection, and executes the commands other instances route here. It
// keeps no state of its own and is safe for concurrent use.
type Delivery struct {
	cfg DeliveryConfig
}

// NewDelivery checks cfg and returns a Delivery.
func NewDelivery(cfg DeliveryConfig) (*Delivery, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	cfg.MaxPayload = cmp.Or(cfg.MaxPayload, socket.DefaultWriteLimit)
	return &Delivery{cfg: cfg}, nil
}

// Topic returns the topic this instance receives commands on.
func (d *Delivery) Topic() string { return InstanceTopic(d.cfg.TopicPrefix, d.cfg.InstanceID) }

// MaxPayload returns the largest payload Send, SendUser and SendInstance
// accept.
func (d *Delivery) MaxPayload() int { return d.cfg.MaxPayload }

// target names a connection and the incarnation expected to hold it.
type target struct {
	ConnectionID string `json:"connectionId"`
	Incarnation  string `json:"incarnation"`
}

// sendData is the data of a send command.
type sendData struct {
	Targets []target `json:"targets"`
	Binary  bool     `json:"binary"`
	Payload []byte   `json:"payload"` // base64 in JSON
}

// closeData is the data of a close command.
type closeData struct {
	Target target `json:"target"`
	Code   uint16 `json:"code,omitempty"`
	Detail string `json:"detail,omitempty"`
}

// Reasons a result is Unknown.
const (
	detailNoEntry   = "no open connection with this id in the views"
	detailNotHere   = "the views place it on this instance, which no longer holds it"
	detailOwnerGone = "the instance holding it is no longer live; it will be reclaimed"
	detailClosing   = "the connection is closing"
)

func (d *Delivery) checkPayload(m Message) error {
	if len(m.Payload) > d.cfg.MaxPayload {
		return fmt.Errorf("%w: %d bytes, limit %d", socket.ErrPayloadTooLarge, len(m.Payload), d.cfg.MaxPayload)
	}
	if !m.Binary && !utf8.Valid(m.Payload) {
		return socket.ErrInvalidUTF8
	}
	return nil
}

// Send sends m to one connection, wherever it is. It fails with an error
// matching socket.ErrPayloadTooLarge or socket.ErrInvalidUTF8 for a
// payload no instance would send, and with other errors when the views or
// the pub/sub cannot be reached.
func (d *Delivery) Send(ctx context.Context, connID string, m Message) (Result, error) {
	if err := d.checkPayload(m); err != nil {
		return Result{}, fmt.Errorf("send to %s: %w", connID, err)
	}
	if _, ok := d.cfg.Sockets.Lookup(connID); ok {
		return d.sendLocal(connID, m), nil
	}

	c, res, err := d.remoteEntry(ctx, connID)
	if err != nil || c == nil {
		return res, err
	}
	if err := d.publishSend(ctx, c.InstanceID, []target{{c.ConnectionID, c.Incarnation}}, m); err != nil {
		return Result{}, err
	}
	return res, nil
}

// SendUser sends m to every open connection of a user, one command per
// holding instance, and returns a result per connection sorted by id. A
// user without connections gets no results and no error. When a publish
// fails, the error is returned and connections handled before it may
// already have the message.
func (d *Delivery) SendUser(ctx context.Context, userID string, m Message) ([]Result, error) {
	if err := d.checkPayload(m); err != nil {
		return nil, fmt.Errorf("send to user %s: %w", userID, err)
	}
	index, err := d.cfg.Views.UserConnections(ctx, userID)
	if err != nil {
		return nil, fmt.Errorf("send to user %s: %w", userID, err)
	}

	// A connection this instance holds is open and needs no entry read;
	// the others need their entries for the owner's incarnation.
	results := make([]Result, 0, len(index))
	var others []string
	for id := range index {
		if d.held(id) {
			results = append(results, d.sendLocal(id, m))
		} else {
			others = append(others, id)
		}
	}
	conns, err := d.cfg.Views.OpenConnections(ctx, others)
	if err != nil {
		return results, fmt.Errorf("send to user %s: %w", userID, err)
	}

	remote := map[string][]*projections.Connection{}
	for _, c := range conns {
		switch {
		case d.held(c.ConnectionID):
			// It connected here between the two reads.
			results = append(results, d.sendLocal(c.ConnectionID, m))
		case c.InstanceID == d.cfg.InstanceID:
			results = append(results, unknown(c.ConnectionID, c.InstanceID, detailNotHere))
		default:
			remote[c.InstanceID] = append(remote[c.InstanceID], c)
		}
	}

	for _, inst := range slices.Sorted(maps.Keys(remote)) {
		rec, _, err := d.cfg.Views.Instance(ctx, inst)
		if err != nil {
			return results, fmt.Errorf("send to user %s: %w", userID, err)
		}
		var targets []target
		for _, c := range remote[inst] {
			if !holds(rec, c) {
				results = append(results, unknown(c.ConnectionID, inst, detailOwnerGone))
				continue
			}
			targets = append(targets, target{c.ConnectionID, c.Incarnation})
		}
		if len(targets) == 0 {
			continue
		}
		if err := d.publishSend(ctx, inst, targets, m); err != nil {
			return results, fmt.Errorf("send to user %s: %w", userID, err)
		}
		for _, tg := range targets {
			results = append(results, Result{ConnectionID: tg.ConnectionID, InstanceID: inst, Outcome: Queued})
		}
	}
	slices.SortFunc(results, func(a, b Result) int { return strings.Compare(a.ConnectionID, b.ConnectionID) })
	return results, nil
}

// Close kicks one connection, wherever it is. A code outside 4000-4999
// fails with an error matching socket.ErrInvalidReason.
func (d *Delivery) Close(ctx context.Context, connID string, cl Close) (Result, error) {
	if cl.Code != 0 && (cl.Code < 4000 || cl.Code > 4999) {
		return Result{}, fmt.Errorf("close %s: %w: code %d is outside 4000-4999", connID, socket.ErrInvalidReason, cl.Code)
	}
	if _, ok := d.cfg.Sockets.Lookup(connID); ok {
		return d.closeLocal(connID, cl)
	}

	c, res, err := d.remoteEntry(ctx, connID)
	if err != nil || c == nil {
		return res, err
	}
	data := closeData{Target: target{c.ConnectionID, c.Incarnation}, Code: cl.Code, Detail: cl.Detail}
	if err := d.publish(ctx, c.InstanceID, TypeCommandClose, connID, cl.Traceparent, data); err != nil {
		return Result{}, err
	}
	return res, nil
}

// remoteEntry reads the entry of a connection this instance does not hold.
// It returns the entry with a Queued result when a live peer holds it, and
// no entry with an Unknown result otherwise.
func (d *Delivery) remoteEntry(ctx context.Context, connID string) (*projections.Connection, Result, error) {
	c, err := d.cfg.Views.Connection(ctx, connID)
	if err != nil {
		return nil, Result{}, err
	}
	if !c.Open() {
		return nil, unknown(connID, "", detailNoEntry), nil
	}
	if c.InstanceID == d.cfg.InstanceID {
		return nil, unknown(connID, c.InstanceID, detailNotHere), nil
	}
	rec, _, err := d.cfg.Views.Instance(ctx, c.InstanceID)
	if err != nil {
		return nil, Result{}, err
	}
	if !holds(rec, c) {
		return nil, unknown(connID, c.InstanceID, detailOwnerGone), nil
	}
	return c, Result{ConnectionID: connID, InstanceID: c.InstanceID, Outcome: Queued}, nil
}

// holds reports whether an instance record shows the incarnation of c
// still live.
func holds(rec *projections.Instance, c *projections.Connection) bool {
	return rec.Live() && rec.Incarnation == c.Incarnation
}

func (d *Delivery) held(connID string) bool {
	_, ok := d.cfg.Sockets.Lookup(connID)
	return ok
}

func unknown(connID, instanceID, detail string) Result {
	return Result{ConnectionID: connID, InstanceID: instanceID, Outcome: Unknown, Detail: detail}
}

func (d *Delivery) sendLocal(connID string, m Message) Result {
	err := d.cfg.Sockets.Send(connID, m.Binary, m.Payload)
	switch {
	case err == nil:
		return Result{ConnectionID: connID, InstanceID: d.cfg.InstanceID, Outcome: Delivered}
	case errors.Is(err, socket.ErrClosing):
		return unknown(connID, d.cfg.InstanceID, detailClosing)
	default:
		return unknown(connID, d.cfg.InstanceID, detailNotHere)
	}
}

func (d *Delivery) closeLocal(connID string, cl Close) (Result, error) {
	err := d.cfg.Sockets.KickWith(connID, socket.KickOptions{Code: cl.Code, Detail: cl.Detail, Traceparent: cl.Traceparent})
	switch {
	case err == nil:
		return Result{ConnectionID: connID, InstanceID: d.cfg.InstanceID, Outcome: Delivered}, nil
	case errors.Is(err, socket.ErrClosing):
		return unknown(connID, d.cfg.InstanceID, detailClosing), nil
	case errors.Is(err, socket.ErrNotFound):
		return unknown(connID, d.cfg.InstanceID, detailNotHere), nil
	}
	return Result{}, err
}

func (d *Delivery) publishSend(ctx context.Context, instanceID string, targets []target, m Message) error {
	subject := targets[0].ConnectionID
	data := sendData{Targets: targets, Binary: m.Binary, Payload: m.Payload}
	return d.publish(ctx, instanceID, TypeCommandSend, subject, m.Traceparent, data)
}

// publish sends a command to an instance's topic.
func (d *Delivery) publish(ctx context.Context, instanceID, typ, subject, traceparent string, data any) error {
	ev := event.New(event.CloudEventsVersionV1)
	ev.SetID(uuid.Must(uuid.NewV7()).String())
	ev.SetSource(schemas.Source(d.cfg.InstanceID))
	ev.SetType(typ)
	ev.SetSubject(subject)
	ev.SetTime(time.Now().UTC())
	if traceparent != "" {
		ev.SetExtension(schemas.TraceparentExtension, traceparent)
	}
	if err := ev.SetData(event.ApplicationJSON, data); err != nil {
		return fmt.Errorf("workers: encode %s: %w", typ, err)
	}
	raw, err := json.Marshal(ev)
	if err != nil {
		return fmt.Errorf("workers: encode %s: %w", typ, err)
	}

	topic := InstanceTopic(d.cfg.TopicPrefix, instanceID)
	if err := d.cfg.PubSub.Publish(ctx, pubsub.Message{Topic: topic, ContentType: pubsub.ContentTypeCloudEvent, Data: raw}); err != nil {
		return fmt.Errorf("workers: forward %s to %s: %w", typ, instanceID, err)
	}
	d.cfg.Logger.Debug().Str("event_id", ev.ID()).Str("subject", subject).Str("instance_id", instanceID).
		Str("type", typ).Str("traceparent", traceparent).Msg("command forwarded")
	return nil
}

// Handle executes a command routed to this instance. It is the
// pubsub.Handler of Topic. A command whose connection this instance no
// longer holds with the named incarnation is logged at Debug and
// acknowledged, and so is one that cannot be decoded, logged at Warn: no
// redelivery would change either. It returns nil in every case.
func (d *Delivery) Handle(_ context.Context, m pubsub.Message) error {
	var ev event.Event
	if err := json.Unmarshal(m.Data, &ev); err != nil {
		d.cfg.Logger.Warn().Err(err).Str("topic", m.Topic).Msg("dropping a command that is not a CloudEvent")
		return nil
	}
	traceparent, _ := ev.Extensions()[schemas.TraceparentExtension].(string)
	logger := d.cfg.Logger.With().Str("event_id", ev.ID()).Str("source", ev.Source()).Logger()

	switch ev.Type() {
	case TypeCommandSend:
		var data sendData
		if err := ev.DataAs(&data); err != nil {
			logger.Warn().Err(err).Msg("dropping a send command whose data cannot be decoded")
			return nil
		}
		for _, tg := range data.Targets {
			if !d.holdsTarget(logger, tg) {
				continue
			}
			if err := d.cfg.Sockets.Send(tg.ConnectionID, data.Binary, data.Payload); err != nil {
				logger.Debug().Err(err).Str("conn_id", tg.ConnectionID).Msg("forwarded message not sent")
				continue
			}
			logger.Debug().Str("conn_id", tg.ConnectionID).Str("traceparent", traceparent).Msg("forwarded message queued")
		}
	case TypeCommandClose:
		var data closeData
		if err := ev.DataAs(&data); err != nil {
			logger.Warn().Err(err).Msg("dropping a close command whose data cannot be decoded")
			return nil
		}
		if !d.holdsTarget(logger, data.Target) {
			return nil
		}
		opts := socket.KickOptions{Code: data.Code, Detail: data.Detail, Traceparent: traceparent}
		if err := d.cfg.Sockets.KickWith(data.Target.ConnectionID, opts); err != nil {
			logger.Debug().Err(err).Str("conn_id", data.Target.ConnectionID).Msg("forwarded close not started")
			return nil
		}
		logger.Debug().Str("conn_id", data.Target.ConnectionID).Str("traceparent", traceparent).Msg("forwarded close started")
	case TypeCommandBroadcast:
		d.handleBroadcast(logger, ev, traceparent)
	default:
		logger.Warn().Str("type", ev.Type()).Msg("dropping a command of an unknown type")
	}
	return nil
}

// holdsTarget reports whether this instance holds the target connection
// with the incarnation the command names.
func (d *Delivery) holdsTarget(logger zerolog.Logger, tg target) bool {
	info, ok := d.cfg.Sockets.Lookup(tg.ConnectionID)
	if !ok || info.Incarnation != tg.Incarnation {
		logger.Debug().Str("conn_id", tg.ConnectionID).Str("incarnation", tg.Incarnation).
			Msg("command for a connection no longer here; nothing to do")
		return false
	}
	return true
}

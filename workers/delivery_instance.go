package workers

import (
	"context"
	"fmt"

	"github.com/cloudevents/sdk-go/v2/event"
	"github.com/rs/zerolog"
)

// Reasons an instance result is Unknown.
const (
	detailNoInstance   = "no instance with this id in the views"
	detailInstanceGone = "the instance is no longer live"
)

// InstanceResult is the outcome of a send to every connection of an
// instance.
type InstanceResult struct {
	InstanceID string  `json:"instanceId"`
	Outcome    Outcome `json:"result"`
	// Delivered counts the connections this instance queued the frame
	// for, and Unknown those it found closing. Both are 0 unless the
	// outcome is Delivered, because a holder reached through pub/sub
	// reports no counts back.
	Delivered int `json:"delivered"`
	Unknown   int `json:"unknown"`
	// Detail explains why the outcome is Unknown.
	Detail string `json:"detail,omitempty"`
}

// broadcastData is the data of a broadcast command.
type broadcastData struct {
	// Incarnation is the one the holder's record showed when the command
	// was sent. A later incarnation of the same instance id drops it.
	Incarnation string `json:"incarnation"`
	Binary      bool   `json:"binary"`
	Payload     []byte `json:"payload"` // base64 in JSON
}

// SendInstance sends m to every open connection of an instance. This
// instance writes to its own socket server's connections without reading
// the views. For another instance it reads that instance's record and,
// when the record is live, publishes one command that the holder executes
// on the connections it holds when the command arrives. It fails like
// Send.
func (d *Delivery) SendInstance(ctx context.Context, instanceID string, m Message) (InstanceResult, error) {
	if err := d.checkPayload(m); err != nil {
		return InstanceResult{}, fmt.Errorf("send to instance %s: %w", instanceID, err)
	}
	if instanceID == d.cfg.InstanceID {
		delivered, closing, err := d.cfg.Sockets.SendAll(m.Binary, m.Payload)
		if err != nil {
			return InstanceResult{}, fmt.Errorf("send to instance %s: %w", instanceID, err)
		}
		return InstanceResult{InstanceID: instanceID, Outcome: Delivered, Delivered: delivered, Unknown: closing}, nil
	}

	rec, _, err := d.cfg.Views.Instance(ctx, instanceID)
	if err != nil {
		return InstanceResult{}, fmt.Errorf("send to instance %s: %w", instanceID, err)
	}
	switch {
	case rec == nil:
		return InstanceResult{InstanceID: instanceID, Outcome: Unknown, Detail: detailNoInstance}, nil
	case !rec.Live():
		return InstanceResult{InstanceID: instanceID, Outcome: Unknown, Detail: detailInstanceGone}, nil
	}

	data := broadcastData{Incarnation: rec.Incarnation, Binary: m.Binary, Payload: m.Payload}
	if err := d.publish(ctx, instanceID, TypeCommandBroadcast, instanceID, m.Traceparent, data); err != nil {
		return InstanceResult{}, fmt.Errorf("send to instance %s: %w", instanceID, err)
	}
	return InstanceResult{InstanceID: instanceID, Outcome: Queued}, nil
}

// handleBroadcast executes a broadcast command routed to this instance,
// unless it names an incarnation other than the socket server's current
// one.
func (d *Delivery) handleBroadcast(logger zerolog.Logger, ev event.Event, traceparent string) {
	var data broadcastData
	if err := ev.DataAs(&data); err != nil {
		logger.Warn().Err(err).Msg("dropping a broadcast command whose data cannot be decoded")
		return
	}
	if current := d.cfg.Sockets.Incarnation(); data.Incarnation != current {
		logger.Debug().Str("incarnation", data.Incarnation).Str("current_incarnation", current).
			Msg("broadcast for another incarnation of this instance; nothing to do")
		return
	}
	delivered, closing, err := d.cfg.Sockets.SendAll(data.Binary, data.Payload)
	if err != nil {
		logger.Warn().Err(err).Msg("dropping a broadcast command the socket server rejects")
		return
	}
	logger.Debug().Int("delivered", delivered).Int("closing", closing).Str("traceparent", traceparent).
		Msg("forwarded broadcast queued")
}

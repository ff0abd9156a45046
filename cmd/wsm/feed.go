package main

import (
	"context"
	"time"

	"github.com/virtufin/websocketmanager/internal/metrics"
	"github.com/virtufin/websocketmanager/socket"
	"github.com/virtufin/websocketmanager/workers"
)

// drainMessagesTimeout bounds how long the drain waits for queued client
// messages to reach their topic, so a topic that is down cannot use up
// the shutdown timeout before the log writer is closed.
const drainMessagesTimeout = 2 * time.Second

// newFeed builds the GET /events feed over the instance's log. It accepts
// JWTs signed with WSM_JWT_SECRET that carry the events:read scope, and
// the backend API token.
func (in *instance) newFeed(auth *socket.Authenticator) (*socket.Feed, error) {
	cfg := in.cfg
	return socket.NewFeed(socket.FeedConfig{
		APIToken:     cfg.APIToken,
		Buffer:       cfg.FeedBuffer,
		SlowTimeout:  cfg.FeedSlowTimeout,
		SocketBuffer: cfg.FeedSocketBuffer,
		PingInterval: cfg.PingInterval,
		PongTimeout:  cfg.PongTimeout,

		OnSubscribers: in.metrics.SetFeedSubscribers,
	}, in.log, auth, in.baseLogger.With().Str("instance_id", cfg.InstanceID).Logger())
}

// newMessagePublisher builds the publisher of client messages. Run it on
// the publish loops' context.
func (in *instance) newMessagePublisher() (*workers.MessagePublisher, error) {
	return workers.NewMessagePublisher(workers.MessagePublisherConfig{
		PubSub:     in.metrics.meterPublish(metrics.TopicMessages, in.be.pubsub),
		InstanceID: in.cfg.InstanceID,
		Topic:      in.cfg.MessagesTopic,
		Logger:     in.baseLogger,
	})
}

// onClientMessage is the socket server's OnMessage hook. It runs on the
// connection's read goroutine and only queues the message, which
// MessagePublisher.Enqueue does without blocking.
func (in *instance) onClientMessage(info socket.ConnInfo, binary bool, payload []byte) {
	// A dropped message is counted and logged by the publisher.
	_ = in.messages.Enqueue(workers.ClientMessage{
		ConnectionID: info.ID,
		Incarnation:  info.Incarnation,
		UserID:       info.UserID,
		Binary:       binary,
		Payload:      payload,
		ReceivedAt:   time.Now().UTC(),
	})
}

// closeMessages stops taking client messages and gives the queued ones a
// bounded share of the drain to reach their topic.
func (in *instance) closeMessages(ctx context.Context) {
	ctx, cancel := context.WithTimeout(ctx, drainMessagesTimeout)
	defer cancel()
	// Close logs how many messages it could not publish in time.
	_ = in.messages.Close(ctx)
}

package main

import (
	"context"
	"net/http"
	"time"

	"github.com/rs/zerolog"

	"github.com/virtufin/websocketmanager/internal/dapr"
	"github.com/virtufin/websocketmanager/workers"
)

// daprAppTokenEnv is the environment variable with Dapr's app API token,
// set for the app and its sidecar alike when the pod names an app token
// secret.
const daprAppTokenEnv = "APP_API_TOKEN"

// startDelivery builds this instance's Delivery and subscribes it to the
// instance's command topic until ctx ends: through the in-process pub/sub
// on the embedded backend, and on Dapr through the app-side subscription it
// mounts on mux under /dapr/. It must run before the HTTP server serves,
// because the sidecar reads the subscriptions once, at its start.
func (in *instance) startDelivery(ctx context.Context, mux *http.ServeMux) (*workers.Delivery, error) {
	logger := in.baseLogger.With().Str("instance_id", in.cfg.InstanceID).Logger()
	d, err := workers.NewDelivery(workers.DeliveryConfig{
		InstanceID:  in.cfg.InstanceID,
		Views:       in.views,
		Sockets:     in.sock,
		PubSub:      in.be.pubsub,
		TopicPrefix: in.cfg.TopicPrefix,
		Logger:      logger,
	})
	if err != nil {
		return nil, err
	}
	if in.cfg.Backend != "dapr" {
		return d, in.be.pubsub.Subscribe(ctx, d.Topic(), d.Handle)
	}

	subs, err := dapr.NewSubscriptions(dapr.SubscriptionsConfig{PubSub: in.cfg.PubSub, AppToken: in.cfg.DaprAppToken, Logger: logger})
	if err != nil {
		return nil, err
	}
	mux.Handle("/dapr/", subs)
	if err := subs.Subscribe(ctx, d.Topic(), d.Handle); err != nil {
		return nil, err
	}
	go warnUnlisted(ctx, subs, logger, in.cfg.Listen)
	return d, nil
}

// subscribeGrace is how long the sidecar may take to read the
// subscriptions once wsm serves. A sidecar with --app-port reads them
// within a second of the port opening.
const subscribeGrace = 30 * time.Second

// warnUnlisted logs a warning when the sidecar has not read the
// subscriptions within subscribeGrace, which means it runs without
// --app-port and commands forwarded to this instance never arrive. It
// returns when ctx ends or after the check.
func warnUnlisted(ctx context.Context, subs *dapr.Subscriptions, logger zerolog.Logger, listen string) {
	t := time.NewTimer(subscribeGrace)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return
	case <-t.C:
	}
	if !subs.Listed() {
		logger.Warn().Str("listen", listen).Dur("waited", subscribeGrace).
			Msg("the Dapr sidecar has not read GET /dapr/subscribe, so sends and closes forwarded to this instance are lost; start daprd with --app-port set to wsm's port")
	}
}

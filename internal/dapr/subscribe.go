package dapr

import (
	"context"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"sync"

	"github.com/rs/zerolog"

	"github.com/virtufin/websocketmanager/internal/pubsub"
)

// Dapr delivers pub/sub messages to an app by calling it. At its start the
// sidecar requests the app's list of topics (GET /dapr/subscribe), then
// POSTs each message of those topics to the route the app named, as a
// structured CloudEvent, and reads the outcome from the status in the JSON
// response: SUCCESS, RETRY or DROP. A 404 response drops the message too,
// and any other failure has it redelivered. The sidecar must be started
// with --app-port set to the port the app serves these routes on.

// Paths Subscriptions serves. DeliverPrefix is followed by the escaped
// topic name.
const (
	SubscribePath = "/dapr/subscribe"
	DeliverPrefix = "/dapr/deliver/"
)

// AppTokenHeader carries the app API token the sidecar sends with each call
// when it has one (APP_API_TOKEN).
const AppTokenHeader = "dapr-api-token"

// maxDeliveryBytes bounds one delivered message. The largest command wsm
// publishes is a 1 MiB payload in base64 plus its envelope.
const maxDeliveryBytes = 4 << 20

// Errors of Subscriptions.Subscribe.
var (
	ErrSubscribeLate   = errors.New("dapr: the sidecar already read the subscriptions")
	ErrTopicSubscribed = errors.New("dapr: topic already subscribed")
)

// Delivery outcomes, as the sidecar reads them from the answer's status.
const (
	statusSuccess = "SUCCESS"
	statusRetry   = "RETRY"
)

// SubscriptionsConfig configures Subscriptions.
type SubscriptionsConfig struct {
	// PubSub names the Dapr pub/sub component the topics belong to.
	// Required.
	PubSub string
	// AppToken, when set, is the token the sidecar must send in
	// AppTokenHeader: Dapr sets APP_API_TOKEN for both when the app token
	// secret is configured. Empty means the header is not checked.
	AppToken string
	Logger   zerolog.Logger
}

// Subscriptions is the app side of Dapr's programmatic subscription: an
// http.Handler for SubscribePath and the routes under DeliverPrefix, to be
// mounted on the app's own listener at "/dapr/". Subscribe registers a
// topic and its handler; it must be called before the listener serves,
// because the sidecar reads the list once, at its start.
//
// Only callers on a loopback address are served, because the sidecar
// shares the app's network namespace. Set AppToken as well where a proxy in
// the pod forwards outside traffic from a loopback address.
//
// A handler returning nil acknowledges the message (SUCCESS). An error has
// it redelivered (RETRY), so a handler must return nil for messages that
// no retry can help. Handlers run on the HTTP server's goroutines,
// possibly several at once. All methods are safe for concurrent use.
type Subscriptions struct {
	cfg      SubscriptionsConfig
	tokenSum [sha256.Size]byte

	mu     sync.Mutex
	topics map[string]*subscription // by topic
	listed bool                     // the sidecar has read the list
}

type subscription struct {
	topic string
	h     pubsub.Handler
	ctx   context.Context
	done  bool // its context ended, set by a context.AfterFunc
}

// NewSubscriptions returns Subscriptions without topics.
func NewSubscriptions(cfg SubscriptionsConfig) (*Subscriptions, error) {
	if cfg.PubSub == "" {
		return nil, fmt.Errorf("%w: subscriptions: pub/sub component name is empty", ErrConfig)
	}
	s := &Subscriptions{cfg: cfg, topics: map[string]*subscription{}}
	if cfg.AppToken != "" {
		s.tokenSum = sha256.Sum256([]byte(cfg.AppToken))
	}
	return s, nil
}

// Subscribe registers h for topic until ctx ends. It has the contract of
// pubsub.PubSub.Subscribe, but only before the sidecar has read the
// subscriptions: later it fails with ErrSubscribeLate, as the sidecar would
// not learn of the topic before its next start. Messages arriving after ctx
// ends get the status RETRY, so they wait for this app's next start.
func (s *Subscriptions) Subscribe(ctx context.Context, topic string, h pubsub.Handler) error {
	if topic == "" || h == nil {
		return fmt.Errorf("dapr: subscribe: topic and handler are required")
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.listed {
		return fmt.Errorf("subscribe to %s: %w; it takes effect only when the sidecar restarts", topic, ErrSubscribeLate)
	}
	if old, ok := s.topics[topic]; ok && !old.done {
		return fmt.Errorf("subscribe to %s: %w", topic, ErrTopicSubscribed)
	}
	sub := &subscription{topic: topic, h: h, ctx: ctx}
	s.topics[topic] = sub
	context.AfterFunc(ctx, func() {
		s.mu.Lock()
		sub.done = true
		s.mu.Unlock()
	})
	return nil
}

// Listed reports whether the sidecar has read the subscriptions.
func (s *Subscriptions) Listed() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.listed
}

// Route returns the path the sidecar delivers a topic's messages to.
func Route(topic string) string { return DeliverPrefix + url.PathEscape(topic) }

// subscriptionJSON is one entry of the response to SubscribePath.
type subscriptionJSON struct {
	PubSubName string `json:"pubsubname"`
	Topic      string `json:"topic"`
	Route      string `json:"route"`
}

// ServeHTTP serves the sidecar's requests under /dapr/.
func (s *Subscriptions) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if !fromLoopback(r) {
		writeStatus(w, http.StatusForbidden, map[string]string{"error": "dapr routes are served to the local sidecar only"})
		return
	}
	if s.cfg.AppToken != "" {
		sum := sha256.Sum256([]byte(r.Header.Get(AppTokenHeader)))
		if subtle.ConstantTimeCompare(sum[:], s.tokenSum[:]) != 1 {
			writeStatus(w, http.StatusUnauthorized, map[string]string{"error": "missing or wrong " + AppTokenHeader})
			return
		}
	}

	switch {
	case r.URL.Path == SubscribePath && r.Method == http.MethodGet:
		s.list(w)
	case strings.HasPrefix(r.URL.Path, DeliverPrefix) && r.Method == http.MethodPost:
		s.deliver(w, r)
	default:
		// The sidecar also requests /dapr/config, which wsm does not use, so
		// it gets a 404.
		writeStatus(w, http.StatusNotFound, map[string]string{"error": "no such dapr route"})
	}
}

func (s *Subscriptions) list(w http.ResponseWriter) {
	s.mu.Lock()
	s.listed = true
	out := make([]subscriptionJSON, 0, len(s.topics))
	for _, sub := range s.topics {
		if !sub.done {
			out = append(out, subscriptionJSON{PubSubName: s.cfg.PubSub, Topic: sub.topic, Route: Route(sub.topic)})
		}
	}
	s.mu.Unlock()
	slices.SortFunc(out, func(a, b subscriptionJSON) int { return strings.Compare(a.Topic, b.Topic) })

	s.cfg.Logger.Info().Int("topics", len(out)).Str("pubsub", s.cfg.PubSub).Msg("the Dapr sidecar read the subscriptions")
	writeStatus(w, http.StatusOK, out)
}

func (s *Subscriptions) deliver(w http.ResponseWriter, r *http.Request) {
	topic, err := url.PathUnescape(strings.TrimPrefix(r.URL.EscapedPath(), DeliverPrefix))
	s.mu.Lock()
	sub := s.topics[topic]
	s.mu.Unlock()
	if err != nil || sub == nil {
		// Dapr drops a message that gets a 404 response, because no process of this app
		// version will ever take it.
		writeStatus(w, http.StatusNotFound, map[string]string{"error": "no subscription for this route"})
		return
	}

	// The AfterFunc that sets done runs in a goroutine of its own, so a
	// message can arrive after the context ended but before done is set.
	s.mu.Lock()
	done := sub.done || sub.ctx.Err() != nil
	s.mu.Unlock()
	if done {
		writeStatus(w, http.StatusOK, map[string]string{"status": statusRetry})
		return
	}

	body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, maxDeliveryBytes))
	if err != nil {
		s.cfg.Logger.Warn().Err(err).Str("topic", topic).Msg("reading a delivered message failed; the sidecar retries it")
		writeStatus(w, http.StatusOK, map[string]string{"status": statusRetry})
		return
	}
	m := pubsub.Message{Topic: topic, ContentType: r.Header.Get("Content-Type"), Data: body}
	if err := sub.h(r.Context(), m); err != nil {
		s.cfg.Logger.Warn().Err(err).Str("topic", topic).Msg("handling a delivered message failed; the sidecar retries it")
		writeStatus(w, http.StatusOK, map[string]string{"status": statusRetry})
		return
	}
	writeStatus(w, http.StatusOK, map[string]string{"status": statusSuccess})
}

// fromLoopback reports whether the request came from a loopback address.
func fromLoopback(r *http.Request) bool {
	host, _, err := net.SplitHostPort(r.RemoteAddr)
	if err != nil {
		return false
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}

func writeStatus(w http.ResponseWriter, code int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	_ = json.NewEncoder(w).Encode(v)
}

package workers

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/cloudevents/sdk-go/v2/event"
	"github.com/rs/zerolog"

	"github.com/virtufin/websocketmanager/internal/embedded"
	"github.com/virtufin/websocketmanager/internal/pubsub"
	"github.com/virtufin/websocketmanager/schemas"
	"github.com/virtufin/websocketmanager/socket"
)

const testTrace = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"

// fakeSockets is a socket server that records what it is asked to do.
type fakeSockets struct {
	mu          sync.Mutex
	incarnation string
	conns       map[string]socket.ConnInfo
	sent        map[string][]string // payloads by connection id
	kicks       map[string]socket.KickOptions
}

func newFakeSockets() *fakeSockets {
	return &fakeSockets{conns: map[string]socket.ConnInfo{}, sent: map[string][]string{}, kicks: map[string]socket.KickOptions{}}
}

func (s *fakeSockets) add(connID, incarnation string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.conns[connID] = socket.ConnInfo{ID: connID, Incarnation: incarnation}
}

func (s *fakeSockets) Lookup(connID string) (socket.ConnInfo, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	c, ok := s.conns[connID]
	return c, ok
}

func (s *fakeSockets) Send(connID string, _ bool, payload []byte) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if _, ok := s.conns[connID]; !ok {
		return socket.ErrNotFound
	}
	s.sent[connID] = append(s.sent[connID], string(payload))
	return nil
}

func (s *fakeSockets) SendAll(_ bool, payload []byte) (delivered, closing int, err error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for id := range s.conns {
		s.sent[id] = append(s.sent[id], string(payload))
		delivered++
	}
	return delivered, 0, nil
}

func (s *fakeSockets) Incarnation() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.incarnation
}

func (s *fakeSockets) KickWith(connID string, opts socket.KickOptions) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if _, ok := s.conns[connID]; !ok {
		return socket.ErrNotFound
	}
	s.kicks[connID] = opts
	delete(s.conns, connID)
	return nil
}

func (s *fakeSockets) messages(connID string) []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]string(nil), s.sent[connID]...)
}

func (s *fakeSockets) kick(connID string) (socket.KickOptions, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	k, ok := s.kicks[connID]
	return k, ok
}

// deliveryNode is an instance of a delivery test: its node in the fleet,
// its sockets and its Delivery subscribed to its topic.
type deliveryNode struct {
	*node
	sockets  *fakeSockets
	delivery *Delivery
}

func newDeliveryNode(t *testing.T, f *fleet, ps pubsub.PubSub, instanceID string) *deliveryNode {
	t.Helper()
	n := &deliveryNode{node: f.node(t, instanceID), sockets: newFakeSockets()}
	n.sockets.incarnation = n.id.Incarnation
	n.heartbeat(t, schemas.StateServing)
	var err error
	n.delivery, err = NewDelivery(DeliveryConfig{
		InstanceID: instanceID, Views: f.views(), Sockets: n.sockets, PubSub: ps, TopicPrefix: "test.", Logger: zerolog.Nop(),
	})
	if err != nil {
		t.Fatal(err)
	}
	if err := ps.Subscribe(testCtx(t), n.delivery.Topic(), n.delivery.Handle); err != nil {
		t.Fatal(err)
	}
	return n
}

// open appends a connected event of user and gives the socket to the node.
func (n *deliveryNode) open(t *testing.T, connID, user string) {
	t.Helper()
	ev, err := schemas.NewConnected(schemas.Envelope{InstanceID: n.id.InstanceID}, schemas.Connected{
		ConnectionID: connID, InstanceID: n.id.InstanceID, Incarnation: n.id.Incarnation,
		UserID: user, RemoteAddr: "127.0.0.1:40000", UserAgent: "test", ConnectedAt: time.Now(),
	})
	if err != nil {
		t.Fatal(err)
	}
	n.append(t, ev)
	n.sockets.add(connID, n.id.Incarnation)
}

func newDeliveryFleet(t *testing.T) (*fleet, *embedded.PubSub) {
	t.Helper()
	ps := embedded.NewPubSub()
	t.Cleanup(func() { ps.Close() })
	return newFleet(t), ps
}

func TestDeliverySendRoutes(t *testing.T) {
	f, ps := newDeliveryFleet(t)
	a := newDeliveryNode(t, f, ps, "pod-a")
	b := newDeliveryNode(t, f, ps, "pod-b")
	c := newDeliveryNode(t, f, ps, "pod-c")
	a.open(t, "conn-a", "u")
	b.open(t, "conn-b", "u")
	c.open(t, "conn-c", "u")
	c.heartbeat(t, schemas.StateStopped)
	a.connect(t, "conn-a-old") // in the views of pod-a, but not on its sockets
	b.open(t, "conn-closed", "u")
	b.disconnect(t, "conn-closed")

	tests := []struct {
		conn       string
		want       Outcome
		wantDetail string
	}{
		{"conn-a", Delivered, ""},
		{"conn-b", Queued, ""},
		{"conn-c", Unknown, detailOwnerGone},
		{"conn-a-old", Unknown, detailNotHere},
		{"conn-closed", Unknown, detailNoEntry},
		{"conn-never", Unknown, detailNoEntry},
	}
	for _, tt := range tests {
		t.Run(tt.conn, func(t *testing.T) {
			res, err := a.delivery.Send(testCtx(t), tt.conn, Message{Payload: []byte("hi " + tt.conn)})
			if err != nil {
				t.Fatalf("Send: %v", err)
			}
			if res.Outcome != tt.want || res.Detail != tt.wantDetail || res.ConnectionID != tt.conn {
				t.Errorf("got %+v, want outcome %s with detail %q", res, tt.want, tt.wantDetail)
			}
		})
	}

	if got := a.sockets.messages("conn-a"); len(got) != 1 || got[0] != "hi conn-a" {
		t.Errorf("pod-a's socket got %q, want [\"hi conn-a\"]", got)
	}
	if got := b.sockets.messages("conn-b"); len(got) != 1 || got[0] != "hi conn-b" {
		t.Errorf("pod-b's socket got %q, want the forwarded [\"hi conn-b\"]", got)
	}
	if got := c.sockets.messages("conn-c"); len(got) != 0 {
		t.Errorf("stopped pod-c's socket got %q, want nothing", got)
	}
}

func TestDeliveryCloseForwardsTrace(t *testing.T) {
	f, ps := newDeliveryFleet(t)
	a := newDeliveryNode(t, f, ps, "pod-a")
	b := newDeliveryNode(t, f, ps, "pod-b")
	a.open(t, "conn-a", "u")
	b.open(t, "conn-b", "u")

	for _, conn := range []string{"conn-a", "conn-b"} {
		res, err := a.delivery.Close(testCtx(t), conn, Close{Code: 4003, Detail: "policy", Traceparent: testTrace})
		if err != nil {
			t.Fatalf("Close %s: %v", conn, err)
		}
		want := map[string]Outcome{"conn-a": Delivered, "conn-b": Queued}[conn]
		if res.Outcome != want {
			t.Errorf("Close %s: got %s, want %s", conn, res.Outcome, want)
		}
	}
	for _, n := range []*deliveryNode{a, b} {
		conn := "conn-" + strings.TrimPrefix(n.id.InstanceID, "pod-")
		k, ok := n.sockets.kick(conn)
		want := socket.KickOptions{Code: 4003, Detail: "policy", Traceparent: testTrace}
		if !ok || k != want {
			t.Errorf("kick of %s: got %+v (done %v), want %+v", conn, k, ok, want)
		}
	}

	if _, err := a.delivery.Close(testCtx(t), "conn-a", Close{Code: 1000}); !errors.Is(err, socket.ErrInvalidReason) {
		t.Errorf("Close with code 1000: got %v, want ErrInvalidReason", err)
	}
}

func TestDeliverySendUser(t *testing.T) {
	f, ps := newDeliveryFleet(t)
	a := newDeliveryNode(t, f, ps, "pod-a")
	b := newDeliveryNode(t, f, ps, "pod-b")
	c := newDeliveryNode(t, f, ps, "pod-c")
	a.open(t, "u1-a", "u1")
	b.open(t, "u1-b1", "u1")
	b.open(t, "u1-b2", "u1")
	c.open(t, "u1-c", "u1")
	b.open(t, "u2-b", "u2")
	c.heartbeat(t, schemas.StateStopped)

	results, err := a.delivery.SendUser(testCtx(t), "u1", Message{Binary: true, Payload: []byte{0, 1, 2}})
	if err != nil {
		t.Fatal(err)
	}
	want := []Result{
		{ConnectionID: "u1-a", InstanceID: "pod-a", Outcome: Delivered},
		{ConnectionID: "u1-b1", InstanceID: "pod-b", Outcome: Queued},
		{ConnectionID: "u1-b2", InstanceID: "pod-b", Outcome: Queued},
		{ConnectionID: "u1-c", InstanceID: "pod-c", Outcome: Unknown, Detail: detailOwnerGone},
	}
	if fmt.Sprint(results) != fmt.Sprint(want) {
		t.Errorf("results:\n got %+v\nwant %+v", results, want)
	}
	for _, conn := range []string{"u1-b1", "u1-b2"} {
		if got := b.sockets.messages(conn); len(got) != 1 || got[0] != "\x00\x01\x02" {
			t.Errorf("pod-b's %s got %q, want the binary payload once", conn, got)
		}
	}
	if got := b.sockets.messages("u2-b"); len(got) != 0 {
		t.Errorf("another user's connection got %q, want nothing", got)
	}

	none, err := a.delivery.SendUser(testCtx(t), "nobody", Message{Payload: []byte("x")})
	if err != nil || len(none) != 0 {
		t.Errorf("SendUser to a user without connections: got %v, %v; want no results and no error", none, err)
	}
}

func TestDeliverySendInstance(t *testing.T) {
	f, ps := newDeliveryFleet(t)
	a := newDeliveryNode(t, f, ps, "pod-a")
	b := newDeliveryNode(t, f, ps, "pod-b")
	c := newDeliveryNode(t, f, ps, "pod-c")
	a.open(t, "a1", "u1")
	a.open(t, "a2", "")
	b.open(t, "b1", "u1")
	b.open(t, "b2", "u2")
	c.open(t, "c1", "u1")
	c.heartbeat(t, schemas.StateStopped)

	// Record the trace context of the commands that reach pod-b's topic.
	var mu sync.Mutex
	var traces []string
	record := func(_ context.Context, m pubsub.Message) error {
		var ev event.Event
		if err := json.Unmarshal(m.Data, &ev); err != nil {
			return err
		}
		tp, _ := ev.Extensions()[schemas.TraceparentExtension].(string)
		mu.Lock()
		traces = append(traces, tp)
		mu.Unlock()
		return nil
	}
	if err := ps.Subscribe(testCtx(t), b.delivery.Topic(), record); err != nil {
		t.Fatal(err)
	}

	tests := []struct {
		instance string
		want     InstanceResult
	}{
		{"pod-a", InstanceResult{InstanceID: "pod-a", Outcome: Delivered, Delivered: 2}},
		{"pod-b", InstanceResult{InstanceID: "pod-b", Outcome: Queued}},
		{"pod-c", InstanceResult{InstanceID: "pod-c", Outcome: Unknown, Detail: detailInstanceGone}},
		{"pod-x", InstanceResult{InstanceID: "pod-x", Outcome: Unknown, Detail: detailNoInstance}},
	}
	for _, tt := range tests {
		t.Run(tt.instance, func(t *testing.T) {
			res, err := a.delivery.SendInstance(testCtx(t), tt.instance, Message{Payload: []byte("to " + tt.instance), Traceparent: testTrace})
			if err != nil {
				t.Fatalf("SendInstance: %v", err)
			}
			if res != tt.want {
				t.Errorf("got %+v, want %+v", res, tt.want)
			}
		})
	}

	for _, conn := range []string{"a1", "a2"} {
		if got := a.sockets.messages(conn); len(got) != 1 || got[0] != "to pod-a" {
			t.Errorf("pod-a's %s got %q, want [\"to pod-a\"]", conn, got)
		}
	}
	for _, conn := range []string{"b1", "b2"} {
		if got := b.sockets.messages(conn); len(got) != 1 || got[0] != "to pod-b" {
			t.Errorf("pod-b's %s got %q, want the forwarded [\"to pod-b\"]", conn, got)
		}
	}
	if got := c.sockets.messages("c1"); len(got) != 0 {
		t.Errorf("stopped pod-c's socket got %q, want nothing", got)
	}
	mu.Lock()
	defer mu.Unlock()
	if len(traces) != 1 || traces[0] != testTrace {
		t.Errorf("traceparent of the commands to pod-b: got %q, want [%q]", traces, testTrace)
	}
}

func TestDeliveryBroadcastForOtherIncarnation(t *testing.T) {
	f, ps := newDeliveryFleet(t)
	b := newDeliveryNode(t, f, ps, "pod-b")
	b.open(t, "b1", "u")
	command := func(incarnation string) string {
		return `{"specversion":"1.0","id":"x1","source":"urn:virtufin:websocketmanager:pod-a","type":"` + TypeCommandBroadcast +
			`","datacontenttype":"application/json","data":{"incarnation":"` + incarnation + `","payload":"aGk="}}`
	}

	for _, incarnation := range []string{"earlier", b.id.Incarnation} {
		if err := b.delivery.Handle(testCtx(t), pubsub.Message{Topic: b.delivery.Topic(), Data: []byte(command(incarnation))}); err != nil {
			t.Errorf("Handle for incarnation %s: got %v, want nil", incarnation, err)
		}
	}
	if got := b.sockets.messages("b1"); len(got) != 1 || got[0] != "hi" {
		t.Errorf("b1 got %q, want only the broadcast for the current incarnation, [\"hi\"]", got)
	}
}

func TestDeliveryRejectsPayloads(t *testing.T) {
	f, ps := newDeliveryFleet(t)
	a := newDeliveryNode(t, f, ps, "pod-a")
	d, err := NewDelivery(DeliveryConfig{InstanceID: "pod-a", Views: f.views(), Sockets: a.sockets, PubSub: ps, MaxPayload: 8})
	if err != nil {
		t.Fatal(err)
	}

	tests := []struct {
		name string
		msg  Message
		want error
	}{
		{"too large", Message{Binary: true, Payload: make([]byte, 9)}, socket.ErrPayloadTooLarge},
		{"text not UTF-8", Message{Payload: []byte{0xff}}, socket.ErrInvalidUTF8},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if _, err := d.Send(testCtx(t), "c", tt.msg); !errors.Is(err, tt.want) {
				t.Errorf("Send: got %v, want %v", err, tt.want)
			}
			if _, err := d.SendUser(testCtx(t), "u", tt.msg); !errors.Is(err, tt.want) {
				t.Errorf("SendUser: got %v, want %v", err, tt.want)
			}
			if _, err := d.SendInstance(testCtx(t), "pod-a", tt.msg); !errors.Is(err, tt.want) {
				t.Errorf("SendInstance: got %v, want %v", err, tt.want)
			}
		})
	}
}

// failingPubSub fails every publish.
type failingPubSub struct{ pubsub.PubSub }

func (failingPubSub) Publish(context.Context, pubsub.Message) error { return errors.New("broker down") }

func TestDeliveryPublishFailure(t *testing.T) {
	f, ps := newDeliveryFleet(t)
	a := newDeliveryNode(t, f, ps, "pod-a")
	b := newDeliveryNode(t, f, ps, "pod-b")
	b.open(t, "conn-b", "u")
	d, err := NewDelivery(DeliveryConfig{InstanceID: "pod-a", Views: f.views(), Sockets: a.sockets, PubSub: failingPubSub{}})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := d.Send(testCtx(t), "conn-b", Message{Payload: []byte("x")}); err == nil {
		t.Error("Send through a failing broker: got no error")
	}
	if _, err := d.Close(testCtx(t), "conn-b", Close{}); err == nil {
		t.Error("Close through a failing broker: got no error")
	}
	if _, err := d.SendInstance(testCtx(t), "pod-b", Message{Payload: []byte("x")}); err == nil {
		t.Error("SendInstance through a failing broker: got no error")
	}
}

func TestDeliveryHandle(t *testing.T) {
	f, ps := newDeliveryFleet(t)
	b := newDeliveryNode(t, f, ps, "pod-b")
	b.open(t, "conn-b", "u")
	stale := `{"specversion":"1.0","id":"x1","source":"urn:virtufin:websocketmanager:pod-a","type":"` + TypeCommandSend +
		`","datacontenttype":"application/json","data":{"targets":[{"connectionId":"conn-b","incarnation":"old"}],"payload":"aGk="}}`
	// A close as daprd 1.14 delivers it, with the attributes it adds.
	fromDapr := `{"data":{"target":{"connectionId":"conn-b","incarnation":"` + b.id.Incarnation + `"},"code":4009},` +
		`"datacontenttype":"application/json","id":"x2","pubsubname":"pubsub","source":"urn:virtufin:websocketmanager:pod-a",` +
		`"specversion":"1.0","time":"2026-12-04T21:01:21Z","topic":"test.wsm.instance.pod-b","traceid":"` + testTrace + `",` +
		`"traceparent":"` + testTrace + `","tracestate":"","type":"` + TypeCommandClose + `"}`

	tests := []struct {
		name string
		data string
	}{
		{"not JSON", "garbage"},
		{"unknown type", `{"specversion":"1.0","id":"x0","source":"s","type":"other"}`},
		{"stale incarnation", stale},
		{"from dapr", fromDapr},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if err := b.delivery.Handle(testCtx(t), pubsub.Message{Topic: b.delivery.Topic(), Data: []byte(tt.data)}); err != nil {
				t.Errorf("Handle: got %v, want nil", err)
			}
		})
	}
	if got := b.sockets.messages("conn-b"); len(got) != 0 {
		t.Errorf("a send for an older incarnation reached the socket: %q", got)
	}
	k, ok := b.sockets.kick("conn-b")
	if want := (socket.KickOptions{Code: 4009, Traceparent: testTrace}); !ok || k != want {
		t.Errorf("kick from the Dapr-shaped command: got %+v (done %v), want %+v", k, ok, want)
	}
}

func TestDeliveryConfigValidate(t *testing.T) {
	err := DeliveryConfig{MaxPayload: -1}.Validate()
	if !errors.Is(err, ErrInvalidConfig) {
		t.Fatalf("got %v, want ErrInvalidConfig", err)
	}
	for _, frag := range []string{"InstanceID", "Views.Store", "Sockets", "PubSub", "MaxPayload -1"} {
		if !strings.Contains(err.Error(), frag) {
			t.Errorf("error %q does not mention %s", err, frag)
		}
	}
	if got, want := InstanceTopic("fleet.", "pod-a"), "fleet.wsm.instance.pod-a"; got != want {
		t.Errorf("InstanceTopic: got %q, want %q", got, want)
	}
}

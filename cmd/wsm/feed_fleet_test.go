package main

import (
	"encoding/base64"
	"encoding/json"
	"net/url"
	"slices"
	"testing"
	"time"

	"github.com/cloudevents/sdk-go/v2/event"
	"github.com/lxzan/gws"

	"github.com/virtufin/websocketmanager/internal/daprtest"
	"github.com/virtufin/websocketmanager/schemas"
)

// TestFleetFeedResumesOnOtherInstance reads the feed of one instance,
// then resumes its cursor on another: a cursor is a position in the shared
// log, so the second instance sends exactly the events the first did not.
func TestFleetFeedResumesOnOtherInstance(t *testing.T) {
	if testing.Short() {
		t.Skip("runs two Dapr sidecars and two wsm processes")
	}
	prefix := fleetPrefix(t)
	topic := prefix + ".system-events"
	sideA := daprtest.Sidecar(t, daprtest.Options{Prefix: prefix})
	sideB := daprtest.Sidecar(t, daprtest.Options{Prefix: prefix})
	podA := startDaprService(t, sideA, "feed-a", topic)
	podB := startDaprService(t, sideB, "feed-b", topic)

	// Connects only: heartbeats of two instances would make the
	// comparison with the replay depend on the poll timing.
	const filter = "type=connection.connected"
	fromA := subscribeFeed(t, podA.feedURL("from=start&"+filter), nil, true)
	a1, err := dial(t, podA.wsURL(), "fleet-feed-1")
	if err != nil {
		t.Fatal(err)
	}
	b1, err := dial(t, podB.wsURL(), "fleet-feed-2")
	if err != nil {
		t.Fatal(err)
	}
	var before []feedEvent
	for _, c := range []*client{a1, b1} {
		if !slices.ContainsFunc(before, eventOf(schemas.TypeConnected, c.id)) {
			before = append(before, fromA.until(t, "connect of "+c.id, eventOf(schemas.TypeConnected, c.id))...)
		}
	}
	fromA.conn.WriteClose(1000, nil)
	cursor := before[len(before)-1].cursor

	var away []*client
	for i, svc := range []*service{podA, podB, podA, podB} {
		c, err := dial(t, svc.wsURL(), "fleet-feed-away")
		if err != nil {
			t.Fatalf("client %d: %v", i, err)
		}
		away = append(away, c)
	}

	fromB := subscribeFeed(t, podB.feedURL("cursor="+url.QueryEscape(cursor)+"&"+filter), nil, true)
	var after []feedEvent
	for _, c := range away {
		if !slices.ContainsFunc(after, eventOf(schemas.TypeConnected, c.id)) {
			after = append(after, fromB.until(t, "connect of "+c.id, eventOf(schemas.TypeConnected, c.id))...)
		}
	}
	select {
	case f := <-fromB.frames:
		t.Errorf("extra frame %s %s after the expected ones", f.event.Type(), f.event.Subject())
	case <-time.After(time.Second):
	}

	// Together the two reads are the log's connects, each once.
	var logged []string
	for _, ev := range replayDapr(t, sideB, "--type", "connection.connected") {
		logged = append(logged, ev.ID())
	}
	got := slices.Concat(frameIDs(before), frameIDs(after))
	slices.Sort(got)
	slices.Sort(logged)
	if !slices.Equal(got, logged) {
		t.Errorf("instance A then B sent %d connects\n%v\nwant each connect in the log once, %d:\n%v", len(got), got, len(logged), logged)
	}
	for _, f := range after {
		if slices.Contains(frameIDs(before), f.event.ID()) {
			t.Errorf("instance B repeated %s, which instance A sent before the cursor", f.event.ID())
		}
	}
	t.Logf("%d connects from instance A, %d from instance B after its cursor", len(before), len(after))
}

// TestFleetPublishesClientMessages sends a text and a binary message from a
// client and reads them from the messages topic through a subscriber app.
func TestFleetPublishesClientMessages(t *testing.T) {
	if testing.Short() {
		t.Skip("runs two Dapr sidecars and a wsm process")
	}
	prefix := fleetPrefix(t)
	messages := prefix + ".client-messages"
	sub := startSubscriber(t, messages)
	subDaprd := daprtest.Prepare(t, daprtest.Options{Prefix: prefix, AppID: "wsm-subscriber", AppPort: sub.port})
	subDaprd.Start(t)

	side := daprtest.Sidecar(t, daprtest.Options{Prefix: prefix})
	svc := startDaprService(t, side, "msg-pod", prefix+".system-events", "--messages-topic", messages)
	c, err := dial(t, svc.wsURL(), "sender")
	if err != nil {
		t.Fatal(err)
	}

	binary := []byte{0, 1, 2, 0xfe, 0xff}
	if err := c.conn.WriteString(`{"hello":"world"}`); err != nil {
		t.Fatal(err)
	}
	if err := c.conn.WriteMessage(gws.OpcodeBinary, binary); err != nil {
		t.Fatal(err)
	}

	var evs []event.Event
	waitFor(t, 30*time.Second, "two message.received events on the topic", func() bool {
		evs = sub.eventsOfType(schemas.TypeMessageReceived)
		return len(evs) >= 2
	})
	if len(evs) != 2 {
		t.Fatalf("%d message.received events, want 2", len(evs))
	}
	slices.SortFunc(evs, func(a, b event.Event) int {
		var da, db schemas.MessageReceived
		json.Unmarshal(a.Data(), &da)
		json.Unmarshal(b.Data(), &db)
		return da.ReceivedAt.Compare(db.ReceivedAt)
	})

	tests := []struct {
		binary  bool
		payload string
	}{
		{false, `{"hello":"world"}`},
		{true, base64.StdEncoding.EncodeToString(binary)},
	}
	counts, bad := sub.counts()
	if len(bad) > 0 {
		t.Errorf("subscriber got %d messages that are not wsm CloudEvents, first: %s", len(bad), bad[0])
	}
	for i, ev := range evs {
		if err := schemas.Validate(&ev); err != nil {
			t.Errorf("event %d: %v", i, err)
		}
		if counts[ev.ID()] != 1 {
			t.Errorf("event %s arrived %d times, want once", ev.ID(), counts[ev.ID()])
		}
		if ev.Subject() != c.id || ev.Source() != schemas.Source("msg-pod") {
			t.Errorf("event %d: subject %q source %q, want %q %q", i, ev.Subject(), ev.Source(), c.id, schemas.Source("msg-pod"))
		}
		var d schemas.MessageReceived
		if err := json.Unmarshal(ev.Data(), &d); err != nil {
			t.Fatalf("event %d: data: %v", i, err)
		}
		if d.Binary != tests[i].binary || d.Payload != tests[i].payload {
			t.Errorf("event %d: binary %v payload %q, want %v %q", i, d.Binary, d.Payload, tests[i].binary, tests[i].payload)
		}
		if d.UserID != "sender" || d.InstanceID != "msg-pod" || d.ConnectionID != c.id {
			t.Errorf("event %d: user %q instance %q connection %q, want sender, msg-pod, %s", i, d.UserID, d.InstanceID, d.ConnectionID, c.id)
		}
	}
}

// eventsOfType returns the events of one type the subscriber received.
func (s *subscriber) eventsOfType(typ string) []event.Event {
	s.mu.Lock()
	defer s.mu.Unlock()
	var out []event.Event
	for _, ev := range s.events {
		if ev.Type() == typ {
			out = append(out, ev)
		}
	}
	return out
}

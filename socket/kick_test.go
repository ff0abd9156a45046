package socket

import (
	"errors"
	"testing"

	"github.com/virtufin/websocketmanager/schemas"
)

func TestKickWithCodeDetailAndTrace(t *testing.T) {
	ts := newTestServer(t, baseConfig(), AuthConfig{}, nil)
	client := dialGWS(t, ts, bearer(userToken(t, "pia")))
	w := client.welcome(t)

	const tp = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
	err := ts.srv.KickWith(w.ConnectionID, KickOptions{Code: 4321, Detail: "moved to another plan", Traceparent: tp})
	if err != nil {
		t.Fatalf("KickWith: %v", err)
	}

	if got := client.closeFrame(t).Code; got != 4321 {
		t.Errorf("close code seen by the client: got %d, want 4321", got)
	}
	d := ts.app.waitDisconnected(t, w.ConnectionID)
	checkDisconnected(t, d, 4321, schemas.ReasonKicked)
	if d.Detail != "moved to another plan" {
		t.Errorf("detail: got %q, want the kick's detail", d.Detail)
	}
	var got string
	for _, ev := range ts.app.snapshot() {
		if ev.Type() == schemas.TypeDisconnected && ev.Subject() == w.ConnectionID {
			got, _ = ev.Extensions()[schemas.TraceparentExtension].(string)
		}
	}
	if got != tp {
		t.Errorf("traceparent of the disconnected event: got %q, want %q", got, tp)
	}
}

func TestKickWithDefaultsAndErrors(t *testing.T) {
	ts := newTestServer(t, baseConfig(), AuthConfig{}, nil)
	client := dialGWS(t, ts, bearer(userToken(t, "quinn")))
	w := client.welcome(t)

	if err := ts.srv.KickWith(w.ConnectionID, KickOptions{Code: 1000}); !errors.Is(err, ErrInvalidReason) {
		t.Errorf("KickWith code 1000: got %v, want ErrInvalidReason", err)
	}
	if err := ts.srv.KickWith(w.ConnectionID, KickOptions{}); err != nil {
		t.Fatalf("KickWith zero options: %v", err)
	}
	if got := client.closeFrame(t).Code; got != DefaultKickCode {
		t.Errorf("close code seen by the client: got %d, want %d", got, DefaultKickCode)
	}
	d := ts.app.waitDisconnected(t, w.ConnectionID)
	checkDisconnected(t, d, int(DefaultKickCode), schemas.ReasonKicked)
	for _, ev := range ts.app.snapshot() {
		if _, ok := ev.Extensions()[schemas.TraceparentExtension]; ok && ev.Subject() == w.ConnectionID {
			t.Errorf("event %s has a traceparent, want none without a trace", ev.Type())
		}
	}

	if err := ts.srv.KickWith(w.ConnectionID, KickOptions{}); !errors.Is(err, ErrNotFound) {
		t.Errorf("KickWith of a closed connection: got %v, want ErrNotFound", err)
	}
}

package main

import (
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
)

func TestAPIAuthWrap(t *testing.T) {
	ok := http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { w.WriteHeader(http.StatusNoContent) })
	tests := []struct {
		name   string
		token  string // the configured token
		header string // the Authorization header sent
		want   int
	}{
		{"open without a token", "", "", http.StatusNoContent},
		{"right token", testAPIToken, "Bearer " + testAPIToken, http.StatusNoContent},
		{"scheme in lower case", testAPIToken, "bearer " + testAPIToken, http.StatusNoContent},
		{"no header", testAPIToken, "", http.StatusUnauthorized},
		{"empty bearer", testAPIToken, "Bearer ", http.StatusUnauthorized},
		{"basic", testAPIToken, "Basic " + testAPIToken, http.StatusUnauthorized},
		{"wrong token", testAPIToken, "Bearer nope", http.StatusForbidden},
		{"token as a prefix", testAPIToken, "Bearer " + testAPIToken[:10], http.StatusForbidden},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			req := httptest.NewRequest(http.MethodGet, "/v1/connections", nil)
			if tt.header != "" {
				req.Header.Set("Authorization", tt.header)
			}
			rec := httptest.NewRecorder()
			newAPIAuth(tt.token).wrap(ok).ServeHTTP(rec, req)
			if rec.Code != tt.want {
				t.Errorf("status: got %d, want %d", rec.Code, tt.want)
			}
			challenge := rec.Header().Get("WWW-Authenticate")
			if (rec.Code == http.StatusUnauthorized) != strings.HasPrefix(challenge, "Bearer") {
				t.Errorf("status %d with WWW-Authenticate %q, want a Bearer challenge exactly on 401", rec.Code, challenge)
			}
			if strings.Contains(rec.Body.String(), testAPIToken) {
				t.Errorf("the answer contains the token: %s", rec.Body)
			}
		})
	}
}

func TestValidTraceparent(t *testing.T) {
	tests := []struct {
		tp   string
		want bool
	}{
		{testTraceparent, true},
		{"01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-later", true},
		{"", false},
		{"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra", false},
		{"ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01", false},
		{"00-00000000000000000000000000000000-00f067aa0ba902b7-01", false},
		{"00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01", false},
		{"00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01", false},
		{"00_4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01", false},
	}
	for _, tt := range tests {
		if got := validTraceparent(tt.tp); got != tt.want {
			t.Errorf("validTraceparent(%q): got %v, want %v", tt.tp, got, tt.want)
		}
	}
}

func TestFrameKind(t *testing.T) {
	tests := []struct {
		contentType      string
		wantBinary, want bool
	}{
		{"", false, true},
		{"application/octet-stream", true, true},
		{"text/plain; charset=utf-8", false, true},
		{"application/json", false, true},
		{"application/cloudevents+json", false, true},
		{"application/xml", false, true},
		{"image/png", false, false},
		{"not a type;;", false, false},
	}
	for _, tt := range tests {
		binary, ok := frameKind(tt.contentType)
		if binary != tt.wantBinary || ok != tt.want {
			t.Errorf("frameKind(%q): got %v, %v; want %v, %v", tt.contentType, binary, ok, tt.wantBinary, tt.want)
		}
	}
}

func TestCursorRoundTrip(t *testing.T) {
	for _, id := range []string{"0190c4a2-7b1e-7c3d-8e9f-0a1b2c3d4e5f", "x", "with spaces and / slashes"} {
		got, err := decodeCursor(encodeCursor(id))
		if err != nil || got != id {
			t.Errorf("decodeCursor(encodeCursor(%q)): got %q, %v; want the id back", id, got, err)
		}
	}
	for _, c := range []string{"!!!", "eA", encodeCursor("")} {
		if _, err := decodeCursor(c); err == nil {
			t.Errorf("decodeCursor(%q): got no error", c)
		}
	}
}

// FuzzDecodeCursor feeds arbitrary cursors: decoding never panics, and
// whatever decodes encodes to a cursor that decodes the same.
func FuzzDecodeCursor(f *testing.F) {
	f.Add(encodeCursor("0190c4a2-7b1e-7c3d-8e9f-0a1b2c3d4e5f"))
	f.Add("")
	f.Add("YzE6")
	f.Fuzz(func(t *testing.T, c string) {
		id, err := decodeCursor(c)
		if err != nil || id == "" {
			return
		}
		again, err := decodeCursor(encodeCursor(id))
		if err != nil || again != id {
			t.Errorf("round trip of %q: got %q, %v", id, again, err)
		}
	})
}

// FuzzTraceparent feeds arbitrary headers: a value accepted is always 55
// characters of version 00 or longer for a later version.
func FuzzTraceparent(f *testing.F) {
	f.Add(testTraceparent)
	f.Add("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-")
	f.Fuzz(func(t *testing.T, tp string) {
		if !validTraceparent(tp) {
			return
		}
		if len(tp) < 55 || (strings.HasPrefix(tp, "00") && len(tp) != 55) {
			t.Errorf("accepted %q", tp)
		}
	})
}

package main

import (
	"crypto/sha256"
	"crypto/subtle"
	"net/http"
	"strings"
)

// apiTokenEnv names the environment variable with the backend API's bearer
// token. It is never a flag: flags show up in ps.
const apiTokenEnv = "WSM_API_TOKEN"

// minAPITokenBytes rejects tokens short enough to guess: 16 random bytes
// already hold 128 bits.
const minAPITokenBytes = 16

// apiAuth guards the backend API with one bearer token, compared in
// constant time. A request without credentials gets 401 with a Bearer
// challenge; one with a wrong token gets 403. An empty token lets every
// request through, which the configuration allows on loopback only.
type apiAuth struct {
	sum  [sha256.Size]byte
	open bool
}

func newAPIAuth(token string) apiAuth {
	if token == "" {
		return apiAuth{open: true}
	}
	return apiAuth{sum: sha256.Sum256([]byte(token))}
}

func (a apiAuth) wrap(next http.Handler) http.Handler {
	if a.open {
		return next
	}
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		got, ok := bearerToken(r)
		if !ok {
			w.Header().Set("WWW-Authenticate", `Bearer realm="wsm"`)
			writeError(w, http.StatusUnauthorized, "missing bearer token: send Authorization: Bearer <"+apiTokenEnv+">")
			return
		}
		// Comparing digests keeps the time independent of the length too.
		sum := sha256.Sum256([]byte(got))
		if subtle.ConstantTimeCompare(sum[:], a.sum[:]) != 1 {
			writeError(w, http.StatusForbidden, "wrong bearer token")
			return
		}
		next.ServeHTTP(w, r)
	})
}

// bearerToken returns the token of an Authorization: Bearer header. The
// scheme is case-insensitive (RFC 9110, section 11.1).
func bearerToken(r *http.Request) (string, bool) {
	h := r.Header.Get("Authorization")
	scheme, token, ok := strings.Cut(h, " ")
	if !ok || !strings.EqualFold(scheme, "Bearer") {
		return "", false
	}
	token = strings.TrimSpace(token)
	return token, token != ""
}

// setAPIToken adds the backend API token to a request that replay or
// rebuild sends to the running service.
func setAPIToken(r *http.Request, token string) {
	if token != "" {
		r.Header.Set("Authorization", "Bearer "+token)
	}
}

// traceparent returns the request's W3C traceparent header when it is
// well formed, else "": a malformed trace context is dropped, not passed
// on (W3C Trace Context, section 3.2).
func traceparent(r *http.Request) string {
	tp := strings.TrimSpace(r.Header.Get("traceparent"))
	if !validTraceparent(tp) {
		return ""
	}
	return tp
}

// validTraceparent checks version 00 of the format: two hex digits of
// version, 32 of trace id, 16 of parent id and 2 of flags, separated by
// dashes, with neither id all zeros. Later versions may append fields.
func validTraceparent(tp string) bool {
	const v0Len = 55
	if len(tp) < v0Len || (len(tp) > v0Len && (tp[:2] == "00" || tp[v0Len] != '-')) {
		return false
	}
	parts := strings.Split(tp[:v0Len], "-")
	if len(parts) != 4 || tp[:2] == "ff" {
		return false
	}
	for i, want := range []int{2, 32, 16, 2} {
		if len(parts[i]) != want || !isLowerHex(parts[i]) {
			return false
		}
	}
	return strings.Trim(parts[1], "0") != "" && strings.Trim(parts[2], "0") != ""
}

func isLowerHex(s string) bool {
	for _, c := range s {
		if !('0' <= c && c <= '9' || 'a' <= c && c <= 'f') {
			return false
		}
	}
	return true
}

package socket

import (
	"crypto/sha256"
	"crypto/subtle"
	"errors"
	"fmt"
	"net/http"
	"slices"
	"strings"

	"github.com/golang-jwt/jwt/v5"
)

// DefaultFeedScope is the scope a JWT needs to subscribe to the event feed.
const DefaultFeedScope = "events:read"

// ErrScopeMissing reports a valid token whose scope claim lacks the scope
// the event feed requires. The feed responds with 403, not 401, because
// the token is valid but its holder is not allowed.
var ErrScopeMissing = errors.New("socket: token lacks the required scope")

// feedPrincipal is the identity of a feed subscriber.
type feedPrincipal struct {
	userID   string // the token's sub; empty for the API token
	apiToken bool
}

// feedAuth admits feed subscribers by bearer token: the backend API token,
// or a JWT that the Authenticator accepts and whose scope claim contains
// the feed's scope. Anonymous access is never allowed, whatever the
// Authenticator allows on GET /ws, because the feed shows every user's
// connections.
type feedAuth struct {
	jwt   *Authenticator
	scope string
	// apiTokenHash is the SHA-256 of the API token, nil when none is set.
	// Comparing hashes in constant time does not reveal the token's
	// length through timing.
	apiTokenHash []byte
}

func newFeedAuth(jwt *Authenticator, apiToken, scope string) *feedAuth {
	a := &feedAuth{jwt: jwt, scope: scope}
	if apiToken != "" {
		sum := sha256.Sum256([]byte(apiToken))
		a.apiTokenHash = sum[:]
	}
	return a
}

// authorize checks the request's bearer token. Errors matching
// ErrTokenMissing, ErrTokenInvalid, ErrTokenExpired or ErrAuthNotConfigured
// call for 401, and ErrScopeMissing for 403. None of them contains the
// token.
func (a *feedAuth) authorize(r *http.Request) (feedPrincipal, error) {
	raw, err := bearerToken(r)
	if err != nil {
		return feedPrincipal{}, err
	}
	if raw == "" {
		return feedPrincipal{}, ErrTokenMissing
	}

	if a.apiTokenHash != nil {
		sum := sha256.Sum256([]byte(raw))
		if subtle.ConstantTimeCompare(sum[:], a.apiTokenHash) == 1 {
			return feedPrincipal{apiToken: true}, nil
		}
	}

	claims, err := a.jwt.ParseToken(raw)
	if err != nil {
		return feedPrincipal{}, err
	}
	scopes, err := tokenScopes(raw)
	if err != nil {
		return feedPrincipal{}, err
	}
	if !slices.Contains(scopes, a.scope) {
		return feedPrincipal{userID: claims.UserID}, fmt.Errorf("%w: the event feed needs scope %q", ErrScopeMissing, a.scope)
	}
	return feedPrincipal{userID: claims.UserID}, nil
}

// tokenScopes returns the scope claim of a token whose signature
// ParseToken has already verified: a space-separated string, as RFC 8693
// section 4.2 defines it, or an array of strings. A token without the
// claim has no scopes.
func tokenScopes(raw string) ([]string, error) {
	var claims jwt.MapClaims
	if _, _, err := jwt.NewParser().ParseUnverified(raw, &claims); err != nil {
		return nil, fmt.Errorf("%w: malformed", ErrTokenInvalid)
	}

	switch v := claims["scope"].(type) {
	case nil:
		return nil, nil
	case string:
		return strings.Fields(v), nil
	case []any:
		out := make([]string, 0, len(v))
		for _, s := range v {
			str, ok := s.(string)
			if !ok {
				return nil, fmt.Errorf("%w: scope claim contains a %T, want strings", ErrTokenInvalid, s)
			}
			out = append(out, str)
		}
		return out, nil
	default:
		return nil, fmt.Errorf("%w: scope claim is a %T, want a string or an array of strings", ErrTokenInvalid, v)
	}
}

// rejectFeedAuth writes the response to a failed authorization: 403 with
// the insufficient_scope challenge of RFC 6750 section 3.1 for a token that
// lacks the scope, and 401 otherwise.
func (f *Feed) rejectFeedAuth(w http.ResponseWriter, r *http.Request, err error) {
	if errors.Is(err, ErrScopeMissing) {
		w.Header().Set("WWW-Authenticate", fmt.Sprintf(`Bearer realm="wsm", error="insufficient_scope", scope=%q`, f.cfg.Scope))
		writeJSONError(w, http.StatusForbidden, errorBody{Error: "forbidden", Message: err.Error()})
		f.logger.Debug().Err(err).Str("remote_addr", r.RemoteAddr).Msg("feed subscription rejected: scope missing")
		return
	}

	challenge := `Bearer realm="wsm"`
	if !errors.Is(err, ErrTokenMissing) {
		challenge += `, error="invalid_token"`
	}
	w.Header().Set("WWW-Authenticate", challenge)
	writeJSONError(w, http.StatusUnauthorized, errorBody{Error: "unauthorized", Message: err.Error()})
	f.logger.Debug().Err(err).Str("remote_addr", r.RemoteAddr).Msg("feed subscription rejected: unauthorized")
}

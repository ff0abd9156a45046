package socket

import (
	"errors"
	"fmt"
	"net/http"
	"strings"
	"time"

	"github.com/golang-jwt/jwt/v5"
)

// Authentication errors. None of them, nor anything wrapping them, contains
// the token, so they are safe to log and to return to the client.
var (
	ErrTokenMissing      = errors.New("socket: bearer token missing")
	ErrTokenInvalid      = errors.New("socket: bearer token invalid")
	ErrTokenExpired      = errors.New("socket: bearer token expired")
	ErrAuthNotConfigured = errors.New("socket: bearer token received but no token secret is configured")
)

// AccessTokenParam is the query parameter that carries the token when the
// client cannot set an Authorization header, as browsers cannot on a
// WebSocket (RFC 6750 section 2.3). NOTE: a token in the URL can end up in
// proxy access logs, so tokens should be short-lived.
const AccessTokenParam = "access_token"

// maxTokenBytes bounds the work spent on a token before its signature is
// checked. A JWT carrying a user id and the registered claims is a few
// hundred bytes.
const maxTokenBytes = 8 << 10

// minSecretBytes is the shortest HS256 key RFC 7518 section 3.2 allows: a
// key as long as the SHA-256 output.
const minSecretBytes = 32

// AuthConfig configures an Authenticator. The zero value accepts no one.
type AuthConfig struct {
	// Secret is the HS256 key. Empty means tokens cannot be checked, so
	// any request that presents one is rejected.
	Secret []byte

	// AllowAnonymous admits requests without a token, with user id "".
	AllowAnonymous bool

	// Leeway is the clock skew tolerated on exp and nbf. Zero, the default,
	// tolerates none.
	Leeway time.Duration
}

// Authenticator checks HS256 JWT bearer tokens. It is safe for concurrent use.
type Authenticator struct {
	secret         []byte
	allowAnonymous bool
	parser         *jwt.Parser
}

// Claims are the parts of a verified token the server uses.
type Claims struct {
	UserID    string    // the sub claim, never empty
	ExpiresAt time.Time // the exp claim, always present
	NotBefore time.Time // the nbf claim, zero when absent
	IssuedAt  time.Time // the iat claim, zero when absent
}

// NewAuthenticator checks cfg and builds an Authenticator.
func NewAuthenticator(cfg AuthConfig) (*Authenticator, error) {
	var problems []error
	if len(cfg.Secret) > 0 && len(cfg.Secret) < minSecretBytes {
		problems = append(problems, fmt.Errorf("%w: token secret has %d bytes, want at least %d for HS256", ErrInvalidConfig, len(cfg.Secret), minSecretBytes))
	}
	if cfg.Leeway < 0 {
		problems = append(problems, fmt.Errorf("%w: token leeway %s is negative", ErrInvalidConfig, cfg.Leeway))
	}
	if err := errors.Join(problems...); err != nil {
		return nil, err
	}

	parser := jwt.NewParser(
		jwt.WithValidMethods([]string{jwt.SigningMethodHS256.Alg()}),
		jwt.WithExpirationRequired(),
		jwt.WithLeeway(cfg.Leeway),
	)
	return &Authenticator{
		secret:         append([]byte(nil), cfg.Secret...),
		allowAnonymous: cfg.AllowAnonymous,
		parser:         parser,
	}, nil
}

// Authenticate returns the user id of the request's bearer token, taken from
// the Authorization header or else from the access_token query parameter.
// Without a token it returns "" and nil when anonymous access is allowed,
// and ErrTokenMissing otherwise. A token that is present but fails any check
// is rejected even when anonymous access is allowed.
func (a *Authenticator) Authenticate(r *http.Request) (userID string, err error) {
	raw, err := bearerToken(r)
	if err != nil {
		return "", err
	}

	if raw == "" {
		if a.allowAnonymous {
			return "", nil
		}
		return "", ErrTokenMissing
	}

	claims, err := a.ParseToken(raw)
	if err != nil {
		return "", err
	}
	return claims.UserID, nil
}

// bearerToken extracts the raw token. An empty result means the request
// carries none.
func bearerToken(r *http.Request) (string, error) {
	header := r.Header.Get("Authorization")
	if header == "" {
		return r.URL.Query().Get(AccessTokenParam), nil
	}

	scheme, token, found := strings.Cut(header, " ")
	if !found || !strings.EqualFold(scheme, "Bearer") {
		return "", fmt.Errorf("%w: Authorization header does not use the Bearer scheme", ErrTokenInvalid)
	}

	token = strings.TrimSpace(token)
	if token == "" {
		return "", fmt.Errorf("%w: Authorization header has an empty Bearer token", ErrTokenInvalid)
	}
	return token, nil
}

// ParseToken verifies raw as an HS256 JWT and returns its claims. It
// requires exp, checks exp and nbf with the configured leeway, and requires
// a non-empty sub.
func (a *Authenticator) ParseToken(raw string) (Claims, error) {
	if len(a.secret) == 0 {
		return Claims{}, ErrAuthNotConfigured
	}
	if len(raw) > maxTokenBytes {
		return Claims{}, fmt.Errorf("%w: token longer than %d bytes", ErrTokenInvalid, maxTokenBytes)
	}

	var registered jwt.RegisteredClaims
	_, err := a.parser.ParseWithClaims(raw, &registered, a.key)
	if err != nil {
		return Claims{}, classifyTokenError(err)
	}

	if registered.Subject == "" {
		return Claims{}, fmt.Errorf("%w: sub claim missing", ErrTokenInvalid)
	}
	return claimsFrom(&registered), nil
}

func (a *Authenticator) key(*jwt.Token) (any, error) { return a.secret, nil }

// classifyTokenError maps jwt's error to a sentinel with a fixed phrase.
// The jwt library's own text can quote parts of the decoded token, so it is
// dropped rather than wrapped.
func classifyTokenError(err error) error {
	switch {
	case errors.Is(err, jwt.ErrTokenExpired):
		return ErrTokenExpired
	case errors.Is(err, jwt.ErrTokenNotValidYet):
		return fmt.Errorf("%w: not valid yet (nbf)", ErrTokenInvalid)
	case errors.Is(err, jwt.ErrTokenRequiredClaimMissing):
		return fmt.Errorf("%w: exp claim missing", ErrTokenInvalid)
	case errors.Is(err, jwt.ErrTokenMalformed):
		return fmt.Errorf("%w: malformed", ErrTokenInvalid)
	case errors.Is(err, jwt.ErrTokenSignatureInvalid):
		return fmt.Errorf("%w: signature or algorithm rejected, want HS256", ErrTokenInvalid)
	case errors.Is(err, jwt.ErrTokenUnverifiable):
		return fmt.Errorf("%w: unverifiable", ErrTokenInvalid)
	default:
		return fmt.Errorf("%w: claims rejected", ErrTokenInvalid)
	}
}

func claimsFrom(r *jwt.RegisteredClaims) Claims {
	c := Claims{UserID: r.Subject}
	if r.ExpiresAt != nil {
		c.ExpiresAt = r.ExpiresAt.Time
	}
	if r.NotBefore != nil {
		c.NotBefore = r.NotBefore.Time
	}
	if r.IssuedAt != nil {
		c.IssuedAt = r.IssuedAt.Time
	}
	return c
}

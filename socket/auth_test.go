package socket

import (
	"errors"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/golang-jwt/jwt/v5"
)

func newTestAuthenticator(t *testing.T, cfg AuthConfig) *Authenticator {
	t.Helper()

	a, err := NewAuthenticator(cfg)
	if err != nil {
		t.Fatalf("NewAuthenticator: %v", err)
	}
	return a
}

func TestAuthenticate(t *testing.T) {
	now := time.Now()
	valid := userToken(t, "alice")
	expired := makeToken(t, jwt.SigningMethodHS256, testSecret, jwt.MapClaims{"sub": "alice", "exp": now.Add(-time.Second).Unix()})
	notYet := makeToken(t, jwt.SigningMethodHS256, testSecret, jwt.MapClaims{"sub": "alice", "exp": now.Add(time.Hour).Unix(), "nbf": now.Add(time.Hour).Unix()})
	noExp := makeToken(t, jwt.SigningMethodHS256, testSecret, jwt.MapClaims{"sub": "alice"})
	emptySub := makeToken(t, jwt.SigningMethodHS256, testSecret, jwt.MapClaims{"sub": "", "exp": now.Add(time.Hour).Unix()})
	hs512 := makeToken(t, jwt.SigningMethodHS512, testSecret, jwt.MapClaims{"sub": "alice", "exp": now.Add(time.Hour).Unix()})
	algNone := makeToken(t, jwt.SigningMethodNone, jwt.UnsafeAllowNoneSignatureType, jwt.MapClaims{"sub": "alice", "exp": now.Add(time.Hour).Unix()})
	wrongKey := makeToken(t, jwt.SigningMethodHS256, []byte("ffffffffffffffffffffffffffffffff"), jwt.MapClaims{"sub": "alice", "exp": now.Add(time.Hour).Unix()})

	tests := []struct {
		name      string
		cfg       AuthConfig
		header    string
		query     string
		wantUser  string
		wantError error
	}{
		{"header token", AuthConfig{Secret: testSecret}, "Bearer " + valid, "", "alice", nil},
		{"lowercase scheme", AuthConfig{Secret: testSecret}, "bearer " + valid, "", "alice", nil},
		{"query token", AuthConfig{Secret: testSecret}, "", valid, "alice", nil},
		{"header wins over query", AuthConfig{Secret: testSecret}, "Bearer " + valid, "garbage", "alice", nil},
		{"no token", AuthConfig{Secret: testSecret}, "", "", "", ErrTokenMissing},
		{"no token, anonymous", AuthConfig{Secret: testSecret, AllowAnonymous: true}, "", "", "", nil},
		{"bad token, anonymous", AuthConfig{Secret: testSecret, AllowAnonymous: true}, "Bearer " + wrongKey, "", "", ErrTokenInvalid},
		{"expired", AuthConfig{Secret: testSecret}, "Bearer " + expired, "", "", ErrTokenExpired},
		{"expired within leeway", AuthConfig{Secret: testSecret, Leeway: time.Minute}, "Bearer " + expired, "", "alice", nil},
		{"not valid yet", AuthConfig{Secret: testSecret}, "Bearer " + notYet, "", "", ErrTokenInvalid},
		{"exp missing", AuthConfig{Secret: testSecret}, "Bearer " + noExp, "", "", ErrTokenInvalid},
		{"sub empty", AuthConfig{Secret: testSecret}, "Bearer " + emptySub, "", "", ErrTokenInvalid},
		{"HS512", AuthConfig{Secret: testSecret}, "Bearer " + hs512, "", "", ErrTokenInvalid},
		{"alg none", AuthConfig{Secret: testSecret}, "Bearer " + algNone, "", "", ErrTokenInvalid},
		{"wrong key", AuthConfig{Secret: testSecret}, "Bearer " + wrongKey, "", "", ErrTokenInvalid},
		{"malformed", AuthConfig{Secret: testSecret}, "Bearer abc.def", "", "", ErrTokenInvalid},
		{"empty bearer", AuthConfig{Secret: testSecret}, "Bearer ", "", "", ErrTokenInvalid},
		{"basic scheme", AuthConfig{Secret: testSecret}, "Basic dXNlcjpwYXNz", "", "", ErrTokenInvalid},
		{"too long", AuthConfig{Secret: testSecret}, "Bearer " + strings.Repeat("a", maxTokenBytes+1), "", "", ErrTokenInvalid},
		{"token without secret", AuthConfig{AllowAnonymous: true}, "Bearer " + valid, "", "", ErrAuthNotConfigured},
		{"no token, no secret, anonymous", AuthConfig{AllowAnonymous: true}, "", "", "", nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			a := newTestAuthenticator(t, tt.cfg)
			target := "/ws"
			if tt.query != "" {
				target += "?" + AccessTokenParam + "=" + tt.query
			}
			r := httptest.NewRequest(http.MethodGet, target, nil)
			if tt.header != "" {
				r.Header.Set("Authorization", tt.header)
			}

			user, err := a.Authenticate(r)

			if !errors.Is(err, tt.wantError) {
				t.Fatalf("error: got %v, want %v", err, tt.wantError)
			}
			if user != tt.wantUser {
				t.Errorf("user id: got %q, want %q", user, tt.wantUser)
			}
			if err != nil && len(tt.header) > len("Bearer ")+8 && strings.Contains(err.Error(), strings.TrimPrefix(tt.header, "Bearer ")) {
				t.Errorf("error %q contains the token", err)
			}
		})
	}
}

func TestParseTokenClaims(t *testing.T) {
	a := newTestAuthenticator(t, AuthConfig{Secret: testSecret})
	exp := time.Now().Add(time.Hour).Truncate(time.Second)
	nbf := time.Now().Add(-time.Minute).Truncate(time.Second)
	raw := makeToken(t, jwt.SigningMethodHS256, testSecret, jwt.MapClaims{"sub": "zoe", "exp": exp.Unix(), "nbf": nbf.Unix(), "iat": nbf.Unix()})

	claims, err := a.ParseToken(raw)
	if err != nil {
		t.Fatalf("ParseToken: %v", err)
	}
	if claims.UserID != "zoe" {
		t.Errorf("UserID: got %q, want zoe", claims.UserID)
	}
	if !claims.ExpiresAt.Equal(exp) {
		t.Errorf("ExpiresAt: got %v, want %v", claims.ExpiresAt, exp)
	}
	if !claims.NotBefore.Equal(nbf) {
		t.Errorf("NotBefore: got %v, want %v", claims.NotBefore, nbf)
	}
	if !claims.IssuedAt.Equal(nbf) {
		t.Errorf("IssuedAt: got %v, want %v", claims.IssuedAt, nbf)
	}
}

func TestNewAuthenticatorRejectsBadConfig(t *testing.T) {
	tests := []struct {
		name string
		cfg  AuthConfig
	}{
		{"short secret", AuthConfig{Secret: []byte("too short")}},
		{"negative leeway", AuthConfig{Secret: testSecret, Leeway: -time.Second}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if _, err := NewAuthenticator(tt.cfg); !errors.Is(err, ErrInvalidConfig) {
				t.Errorf("NewAuthenticator: got %v, want ErrInvalidConfig", err)
			}
		})
	}
}

func TestAuthenticatorCopiesSecret(t *testing.T) {
	secret := append([]byte(nil), testSecret...)
	a := newTestAuthenticator(t, AuthConfig{Secret: secret})
	raw := userToken(t, "yuri")

	secret[0] ^= 0xff

	if _, err := a.ParseToken(raw); err != nil {
		t.Errorf("ParseToken after the caller changed its secret slice: %v", err)
	}
}

func FuzzParseToken(f *testing.F) {
	exp := time.Now().Add(time.Hour).Unix()
	for _, claims := range []jwt.MapClaims{
		{"sub": "alice", "exp": exp},
		{"sub": "", "exp": exp},
		{"sub": "alice"},
		{"sub": 42, "exp": "soon"},
	} {
		token, err := jwt.NewWithClaims(jwt.SigningMethodHS256, claims).SignedString(testSecret)
		if err != nil {
			f.Fatalf("sign seed token: %v", err)
		}
		f.Add(token)
	}
	f.Add("")
	f.Add("a.b.c")
	f.Add("eyJhbGciOiJub25lIn0.e30.")
	f.Add("....")

	a, err := NewAuthenticator(AuthConfig{Secret: testSecret})
	if err != nil {
		f.Fatalf("NewAuthenticator: %v", err)
	}
	f.Fuzz(func(t *testing.T, raw string) {
		claims, err := a.ParseToken(raw)
		if err != nil {
			if !strings.HasPrefix(err.Error(), "socket: ") {
				t.Errorf("error %q lacks the socket: prefix", err)
			}
			if len(raw) >= 8 && strings.Contains(err.Error(), raw) {
				t.Errorf("error %q contains the token", err)
			}
			return
		}
		if claims.UserID == "" {
			t.Errorf("accepted token %q has an empty user id", raw)
		}
		if claims.ExpiresAt.IsZero() {
			t.Errorf("accepted token %q has no exp", raw)
		}
	})
}

package provider_test

import (
	"context"
	"errors"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/caddy-oidc/caddy-oidc/internal/provider"
)

// Issue 11.5: an ID token (aud = client_id, the default bearer_audience) is
// never accepted as a bearer access token.
func TestAccessTokenNeverAnIDToken(t *testing.T) {
	idp, p := setup(t)
	ctx := context.Background()
	aud := []string{clientID}
	access := func(mod func(c map[string]any)) map[string]any {
		c := map[string]any{"iss": idp.Issuer, "sub": "user-1", "aud": clientID, "exp": time.Now().Add(time.Hour).Unix(), "iat": time.Now().Unix(), "scope": "openid"}
		if mod != nil {
			mod(c)
		}
		return c
	}
	for name, tok := range map[string]string{
		"plain JWT":                idp.Sign(access(nil)),
		"at+jwt":                   idp.SignTyped("at+jwt", access(nil)),
		"application/AT+JWT":       idp.SignTyped("application/AT+JWT", access(nil)),
		"Keycloak typ Bearer":      idp.Sign(access(func(c map[string]any) { c["typ"] = "Bearer" })),
		"Cognito token_use access": idp.Sign(access(func(c map[string]any) { c["token_use"] = "access" })),
	} {
		if _, err := p.VerifyAccessToken(ctx, tok, aud, time.Minute); err != nil {
			t.Errorf("%s: a real access token refused: %v", name, err)
		}
	}

	idToken := idp.Claims(clientID, "n") // what the IdP issues at login
	for name, tok := range map[string]string{
		"real ID token (nonce)":      idp.Sign(idToken),
		"ID token with at_hash only": idp.Sign(access(func(c map[string]any) { c["at_hash"] = "x4Yx" })),
		"typ id_token+jwt":           idp.SignTyped("id_token+jwt", access(nil)),
		"typ application/id+jwt":     idp.SignTyped("application/id+jwt", access(nil)),
		"Keycloak typ ID claim":      idp.Sign(access(func(c map[string]any) { c["typ"] = "ID" })),
		"Cognito token_use id":       idp.Sign(access(func(c map[string]any) { c["token_use"] = "id" })),
		"typ logout+jwt":             idp.SignTyped("logout+jwt", access(nil)),
	} {
		t.Run(name, func(t *testing.T) {
			_, err := p.VerifyAccessToken(ctx, tok, aud, time.Minute)
			if !errors.Is(err, provider.ErrInvalidToken) {
				t.Fatalf("got %v, want ErrInvalidToken", err)
			}
			if !strings.Contains(err.Error(), "ID token") && !strings.Contains(err.Error(), "not an access token") && !strings.Contains(err.Error(), "typ") {
				t.Errorf("unclear refusal: %v", err)
			}
		})
	}
}

// Issue 11.3: an introspected token must be an active access token for one
// of the accepted audiences.
func TestIntrospectChecksKindAndAudience(t *testing.T) {
	idp, p := setup(t)
	ctx := context.Background()
	c := provider.Client{ID: clientID, Secret: "s"}
	audiences := []string{"api", "api2"}
	introspect := func(body string) error {
		idp.OnIntrospect(func(w http.ResponseWriter, r *http.Request) {
			w.Header().Set("Content-Type", "application/json")
			_, _ = w.Write([]byte(body))
		})
		_, err := p.Introspect(ctx, c, "opaque-token", audiences, "")
		return err
	}
	for _, body := range []string{
		`{"active":true,"sub":"u","aud":"api"}`,
		`{"active":true,"sub":"u","aud":["other","api2"]}`,
		`{"active":true,"client_id":"api"}`,
		`{"active":true,"sub":"u","aud":"api","token_type":"Bearer"}`,
		`{"active":true,"sub":"u","aud":"api","token_type":"access_token"}`,
		`{"active":true,"sub":"u","aud":"api","token_type":"DPoP"}`,
		`{"active":true,"sub":"u","aud":"api","token_type":"urn:ietf:params:oauth:token-type:access_token"}`,
		`{"active":true,"sub":"u","aud":"api","token_use":"access_token"}`,
		`{"active":true,"sub":"u","aud":"api","iss":"` + idp.Issuer + `"}`,
	} {
		if err := introspect(body); err != nil {
			t.Errorf("%s refused: %v", body, err)
		}
	}
	for name, body := range map[string]string{
		"inactive":                          `{"active":false,"aud":"api"}`,
		"active as a string":                `{"active":"true","aud":"api"}`,
		"refresh token":                     `{"active":true,"aud":"api","token_type":"refresh_token"}`,
		"ID token":                          `{"active":true,"aud":"api","token_type":"id_token"}`,
		"RFC 8693 refresh token URI":        `{"active":true,"aud":"api","token_type":"urn:ietf:params:oauth:token-type:refresh_token"}`,
		"token_type not a string":           `{"active":true,"aud":"api","token_type":1}`,
		"token_use id_token":                `{"active":true,"aud":"api","token_use":"id_token"}`,
		"token_use refresh_token":           `{"active":true,"aud":"api","token_use":"refresh_token"}`,
		"another audience":                  `{"active":true,"aud":"other"}`,
		"another audience list":             `{"active":true,"aud":["other","more"]}`,
		"aud wins over a fitting client_id": `{"active":true,"aud":"other","client_id":"api"}`,
		"no aud, another client_id":         `{"active":true,"client_id":"other"}`,
		"neither aud nor client_id":         `{"active":true}`,
		"aud of the wrong type":             `{"active":true,"aud":{"api":true}}`,
		"another issuer":                    `{"active":true,"aud":"api","iss":"https://evil.example"}`,
		"expired":                           `{"active":true,"aud":"api","exp":1}`,
	} {
		t.Run(name, func(t *testing.T) {
			if err := introspect(body); !errors.Is(err, provider.ErrInvalidToken) {
				t.Errorf("%s: got %v, want ErrInvalidToken", body, err)
			}
		})
	}
	if _, err := p.Introspect(ctx, c, "opaque-token", nil, ""); !errors.Is(err, provider.ErrInvalidToken) {
		t.Errorf("no accepted audience: got %v, want ErrInvalidToken", err)
	}
	// A client-credentials token (oidc-provider) names no sub: its client is
	// the subject; a token naming neither carries no identity at all.
	idp.OnIntrospect(func(w http.ResponseWriter, r *http.Request) {
		_, _ = w.Write([]byte(`{"active":true,"aud":"api","client_id":"robot"}`))
	})
	if ac, err := p.Introspect(ctx, c, "opaque-token", audiences, ""); err != nil || ac.Claims["sub"] != "robot" {
		t.Errorf("client-credentials token: %v, sub %v; want the client_id as sub", err, ac)
	}
	idp.OnIntrospect(func(w http.ResponseWriter, r *http.Request) {
		_, _ = w.Write([]byte(`{"active":true,"aud":"api"}`))
	})
	if err := introspect(`{"active":true,"aud":"api"}`); !errors.Is(err, provider.ErrInvalidToken) {
		t.Errorf("a token with neither sub nor client_id: %v, want ErrInvalidToken", err)
	}
	// An endpoint set in the config wins over discovery's (Hydra's admin API).
	var hit bool
	other := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		hit = true
		_, _ = w.Write([]byte(`{"active":true,"sub":"u","aud":"api"}`))
	}))
	defer other.Close()
	if _, err := p.Introspect(ctx, c, "opaque-token", audiences, other.URL+"/admin/oauth2/introspect"); err != nil || !hit {
		t.Errorf("introspection_endpoint override: %v, hit %v", err, hit)
	}
}

// Issue 16.7: an IdP's 429 is an unavailable IdP (the session is kept,
// the caller answers 503), at every endpoint, whatever its body says.
func TestIdP429IsUnavailable(t *testing.T) {
	idp, p := setup(t)
	ctx := context.Background()
	c := provider.Client{ID: clientID, Secret: "s"}
	idp.SetDiscovery("revocation_endpoint", idp.Issuer+"/revoke")
	tooMany := func(body string) http.HandlerFunc {
		return func(w http.ResponseWriter, r *http.Request) {
			w.Header().Set("Content-Type", "application/json")
			w.Header().Set("Retry-After", "3600")
			w.WriteHeader(http.StatusTooManyRequests)
			_, _ = w.Write([]byte(body))
		}
	}
	for _, body := range []string{`{"error":"slow_down"}`, `{"error":"invalid_grant"}`, ``, `{"error":"invalid_request"}`} {
		idp.OnToken(tooMany(body))
		if _, err := p.Refresh(ctx, c, "rt"); !errors.Is(err, provider.ErrUnavailable) || errors.Is(err, provider.ErrInvalidGrant) {
			t.Errorf("refresh, 429 %s: got %v, want ErrUnavailable only", body, err)
		}
		if _, err := p.Exchange(ctx, c, "code", "http://app/cb", "v"); !errors.Is(err, provider.ErrUnavailable) || errors.Is(err, provider.ErrInvalidGrant) {
			t.Errorf("code exchange, 429 %s: got %v, want ErrUnavailable only", body, err)
		}
	}
	idp.OnIntrospect(tooMany(`{"active":false}`))
	if _, err := p.Introspect(ctx, c, "opaque", []string{"api"}, ""); !errors.Is(err, provider.ErrUnavailable) {
		t.Errorf("introspection 429: got %v, want ErrUnavailable", err)
	}
	idp.OnUserInfo(tooMany(`{"sub":"user-1"}`))
	if _, err := p.UserInfo(ctx, "at", provider.UserInfoOptions{ClientID: "app", Subject: "user-1"}); !errors.Is(err, provider.ErrUnavailable) {
		t.Errorf("userinfo 429: got %v, want ErrUnavailable", err)
	}
	idp.OnRevoke(tooMany(``))
	if err := p.Revoke(ctx, c, "rt", "refresh_token"); !errors.Is(err, provider.ErrUnavailable) {
		t.Errorf("revocation 429: got %v, want ErrUnavailable", err)
	}
	idp.OnRevoke(func(w http.ResponseWriter, r *http.Request) { w.WriteHeader(http.StatusBadRequest) })
	if err := p.Revoke(ctx, c, "rt", "refresh_token"); err == nil || errors.Is(err, provider.ErrUnavailable) {
		t.Errorf("revocation 400: got %v, want a plain error", err)
	}
}

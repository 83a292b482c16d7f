package provider_test

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/lestrrat-go/jwx/v2/jwa"

	"github.com/caddy-oidc/caddy-oidc/internal/provider"
	"github.com/caddy-oidc/caddy-oidc/internal/testidp"
)

func TestVerifyAuthorizationResponse(t *testing.T) {
	idp, p := setup(t)
	idp.SetDiscovery("authorization_signing_alg_values_supported", []string{"RS256"})
	ctx := context.Background()
	rp := p.Bind(provider.Client{ID: clientID, Secret: "s"}, provider.RPOptions{ClockSkew: 5 * time.Second})
	response := func(mod func(c map[string]any)) map[string]any {
		now := time.Now()
		c := map[string]any{"iss": idp.Issuer, "aud": clientID, "exp": now.Add(time.Minute).Unix(), "iat": now.Unix(),
			"code": "the-code", "state": "the-state"}
		if mod != nil {
			mod(c)
		}
		return c
	}

	params, err := rp.VerifyAuthorizationResponse(ctx, idp.Sign(response(nil)))
	if err != nil {
		t.Fatalf("a valid response is refused: %v", err)
	}
	if params.Get("code") != "the-code" || params.Get("state") != "the-state" || params.Get("iss") != idp.Issuer {
		t.Errorf("params %v", params)
	}
	if params.Has("aud") || params.Has("exp") {
		t.Errorf("JWT claims leak into the response parameters: %v", params)
	}
	// An error response is signed the same way and comes back as one.
	params, err = rp.VerifyAuthorizationResponse(ctx, idp.Sign(response(func(c map[string]any) {
		delete(c, "code")
		c["error"] = "access_denied"
	})))
	if err != nil || params.Get("error") != "access_denied" {
		t.Errorf("error response: %v, %v", params, err)
	}

	bad := map[string]string{
		"bad signature":      testidp.SignWith(jwa.RS256, testidp.ForeignKey("k1"), "k1", response(nil)),
		"wrong aud":          idp.Sign(response(func(c map[string]any) { c["aud"] = "another-client" })),
		"expired":            idp.Sign(response(func(c map[string]any) { c["exp"] = time.Now().Add(-time.Minute).Unix() })),
		"no exp":             idp.Sign(response(func(c map[string]any) { delete(c, "exp") })),
		"missing iss":        idp.Sign(response(func(c map[string]any) { delete(c, "iss") })),
		"wrong iss":          idp.Sign(response(func(c map[string]any) { c["iss"] = "https://evil.example" })),
		"alg none":           testidp.Unsigned(response(nil)),
		"HS256 with pub key": testidp.SignWith(jwa.HS256, idp.PublicKeyBytes(), "k1", response(nil)),
		"encrypted":          "a.b.c.d.e",
		"not a JWT":          "code=x",
	}
	for name, raw := range bad {
		t.Run(name, func(t *testing.T) {
			if params, err := rp.VerifyAuthorizationResponse(ctx, raw); !errors.Is(err, provider.ErrInvalidToken) {
				t.Errorf("got %v, %v; want ErrInvalidToken", params, err)
			}
		})
	}

	t.Run("algorithm the IdP does not announce for responses", func(t *testing.T) {
		idp.AddECKey("ec-1") // ES256 signs from now on; its key is in the JWKS
		if _, err := rp.VerifyAuthorizationResponse(ctx, idp.Sign(response(nil))); !errors.Is(err, provider.ErrInvalidToken) {
			t.Errorf("got %v, want ErrInvalidToken", err)
		}
	})
}

package provider_test

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/caddy-oidc/caddy-oidc/internal/provider"
)

// With Algorithms (profile fapi2: PS256, ES256, EdDSA), an ID token signed
// with an algorithm the IdP announces but the profile forbids (RS256) is
// refused; without them it is accepted.
func TestVerifyIDTokenAlgorithmsLimit(t *testing.T) {
	idp, p := setup(t)
	ctx := context.Background()
	raw := idp.Sign(idp.Claims(clientID, "n"))
	opts := provider.VerifyOptions{ClientID: clientID, Nonce: "n", ClockSkew: time.Minute}
	if _, err := p.VerifyIDToken(ctx, raw, opts); err != nil {
		t.Fatalf("RS256 without a limit: %v", err)
	}
	opts.Algorithms = []string{"PS256", "ES256", "EdDSA"}
	if _, err := p.VerifyIDToken(ctx, raw, opts); !errors.Is(err, provider.ErrInvalidToken) {
		t.Errorf("RS256 under the FAPI 2.0 limit: got %v, want ErrInvalidToken", err)
	}
}

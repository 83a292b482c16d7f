package provider

import (
	"context"
	"fmt"
	"net/url"
	"slices"
	"strings"

	"github.com/lestrrat-go/jwx/v2/jwt"
)

// jarmRegistered are the JWT claims of a JARM response that are not
// authorization response parameters.
var jarmRegistered = []string{"aud", "exp", "iat", "nbf", "jti"}

// VerifyAuthorizationResponse checks a JWT-secured authorization response
// (JARM: the response parameter of response_mode jwt, query.jwt,
// fragment.jwt or form_post.jwt): signed by the IdP with an algorithm of
// its authorization_signing_alg_values_supported (default RS256), iss the
// issuer, aud this client, exp not passed. It returns the response's
// parameters (code, state, iss, or error...), to be used as a plain
// callback's query. The response travels through the browser: an unknown
// kid shares the rate-limited JWKS refetch budget of untrusted input.
// Encrypted responses are not supported.
func (rp *RelyingParty) VerifyAuthorizationResponse(ctx context.Context, raw string) (url.Values, error) {
	if strings.Count(raw, ".") == 4 {
		return nil, fmt.Errorf("the authorization response is encrypted, which is not supported: %w", ErrInvalidToken)
	}
	announced := func(d *Discovery) []string {
		if len(d.AuthorizationSigningAlgValuesSupported) == 0 {
			return []string{"RS256"} // JARM §5's default
		}
		return d.AuthorizationSigningAlgValuesSupported
	}
	d, withKey, err := rp.p.signedByAlgs(ctx, raw, "authorization response", restrictAlgs(announced, rp.algs), false)
	if err != nil {
		return nil, err
	}
	tok, err := jwt.Parse([]byte(raw),
		withKey,
		jwt.WithValidate(true),
		jwt.WithClock(jwt.ClockFunc(rp.now)),
		jwt.WithAudience(rp.client.ID),
		jwt.WithAcceptableSkew(rp.skew),
		jwt.WithRequiredClaim("exp"),
	)
	if err != nil {
		return nil, fmt.Errorf("validating the authorization response: %v: %w", err, ErrInvalidToken)
	}
	claims, err := tok.AsMap(ctx)
	if err != nil {
		return nil, fmt.Errorf("reading the authorization response: %v: %w", err, ErrInvalidToken)
	}
	if want := rp.p.expectedIssuer(d, claims); tok.Issuer() != want {
		return nil, fmt.Errorf("authorization response issuer %q is not %q: %w", clip(tok.Issuer()), want, ErrInvalidToken)
	}
	params := url.Values{}
	for k, v := range claims {
		if slices.Contains(jarmRegistered, k) {
			continue
		}
		if s, ok := v.(string); ok {
			params.Set(k, s)
		}
	}
	return params, nil
}

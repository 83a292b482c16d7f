package provider

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"time"

	"github.com/lestrrat-go/jwx/v2/jwt"
)

// AccessClaims is what a verified or introspected access token says.
type AccessClaims struct {
	Claims map[string]any
	// Expiry is when the token stops being valid; zero if the IdP gave none.
	Expiry time.Time
}

// IsJWT tells a JWT access token (three dot-separated parts) from an opaque one.
func IsJWT(token string) bool { return strings.Count(token, ".") == 2 }

// VerifyAccessToken checks a JWT access token (RFC 9068 or the IdP's own
// JWT profile): signature by the IdP with an announced asymmetric
// algorithm, iss, one of audiences in aud, exp (required) and nbf.
func (p *Provider) VerifyAccessToken(ctx context.Context, raw string, audiences []string, skew time.Duration) (*AccessClaims, error) {
	_, withKey, err := p.signedBy(ctx, raw, "access token", "at+jwt", "JWT", "application/at+jwt")
	if err != nil {
		return nil, err
	}
	tok, err := jwt.Parse([]byte(raw),
		withKey,
		jwt.WithValidate(true),
		jwt.WithIssuer(p.issuer),
		jwt.WithAcceptableSkew(skew),
		jwt.WithRequiredClaim("exp"),
	)
	if err != nil {
		return nil, fmt.Errorf("validating access token: %v: %w", err, ErrInvalidToken)
	}
	if !slices.ContainsFunc(tok.Audience(), func(a string) bool { return slices.Contains(audiences, a) }) {
		return nil, fmt.Errorf("access token audience %v is not one of %v: %w", tok.Audience(), audiences, ErrInvalidToken)
	}
	claims, err := tok.AsMap(ctx)
	if err != nil {
		return nil, fmt.Errorf("reading access token claims: %v: %w", err, ErrInvalidToken)
	}
	return &AccessClaims{Claims: claims, Expiry: tok.Expiration()}, nil
}

// Introspect asks the IdP about an opaque token (RFC 7662), authenticated
// like the token endpoint. An inactive token is ErrInvalidToken; an IdP
// that cannot answer is ErrUnavailable.
func (p *Provider) Introspect(ctx context.Context, c Client, token string) (*AccessClaims, error) {
	d, err := p.Discovery(ctx)
	if err != nil {
		return nil, err
	}
	if d.IntrospectionEndpoint == "" {
		return nil, fmt.Errorf("the IdP has no introspection endpoint for opaque tokens: %w", ErrInvalidToken)
	}
	resp, err := p.postForm(ctx, d, d.IntrospectionEndpoint, c, url.Values{"token": {token}, "token_type_hint": {"access_token"}})
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("introspection endpoint: HTTP %d: %w", resp.StatusCode, ErrUnavailable)
	}
	var claims map[string]any
	if err := json.NewDecoder(resp.Body).Decode(&claims); err != nil {
		return nil, fmt.Errorf("decoding the introspection response: %v: %w", err, ErrUnavailable)
	}
	if active, _ := claims["active"].(bool); !active {
		return nil, fmt.Errorf("the IdP says the token is not active: %w", ErrInvalidToken)
	}
	if iss, ok := claims["iss"].(string); ok && iss != p.issuer {
		return nil, fmt.Errorf("introspected token is from issuer %q: %w", iss, ErrInvalidToken)
	}
	ac := &AccessClaims{Claims: claims}
	if exp, ok := claims["exp"].(float64); ok {
		ac.Expiry = time.Unix(int64(exp), 0)
		if time.Now().After(ac.Expiry) {
			return nil, fmt.Errorf("introspected token expired: %w", ErrInvalidToken)
		}
	}
	return ac, nil
}

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
// algorithm, iss, one of audiences in aud, exp (required) and nbf. An ID
// token is never an access token, even one whose aud fits: a token typed as
// an ID token, or carrying nonce or at_hash (claims only ID tokens have,
// Core §2 and §3.1.3.6), or marked as one by Cognito's token_use or
// Keycloak's typ claim, is refused. It is untrusted input: an unknown kid
// shares the rate-limited refetch budget.
func (p *Provider) VerifyAccessToken(ctx context.Context, raw string, audiences []string, skew time.Duration) (*AccessClaims, error) {
	_, withKey, err := p.signedBy(ctx, raw, "access token", false, "at+jwt", "jwt")
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
	for _, c := range []string{"nonce", "at_hash"} {
		if _, ok := claims[c]; ok {
			return nil, fmt.Errorf("the bearer token has a %s claim: it is an ID token, never accepted as an access token: %w", c, ErrInvalidToken)
		}
	}
	if use, ok := claims["token_use"].(string); ok && !strings.EqualFold(use, "access") && !strings.EqualFold(use, "access_token") {
		return nil, fmt.Errorf("the bearer token has token_use %q: it is not an access token: %w", clip(use), ErrInvalidToken)
	}
	if typ, ok := claims["typ"].(string); ok && strings.EqualFold(typ, "ID") {
		return nil, fmt.Errorf("the bearer token has typ claim %q: it is an ID token, never accepted as an access token: %w", typ, ErrInvalidToken)
	}
	return &AccessClaims{Claims: claims, Expiry: tok.Expiration()}, nil
}

// accessTokenTypes are the token_type values (RFC 7662 §2.2, lowercased)
// that name an access token: RFC 6750 and 9449 types, and RFC 8693's URI.
var accessTokenTypes = []string{"access_token", "bearer", "dpop", "urn:ietf:params:oauth:token-type:access_token"}

// Introspect asks the IdP about an opaque token (RFC 7662), authenticated
// like the token endpoint. The token must be active, an access token when
// token_type (or token_use) says what it is, from this issuer when iss is
// given, not expired, and for one of audiences: its aud (string or list)
// names one, or, lacking aud, its client_id is one. Anything else is
// ErrInvalidToken; an IdP that cannot answer (5xx, 429) is ErrUnavailable.
//
// endpoint, when set, is used instead of the discovery document's. A
// token without sub (client credentials) gets its client_id as subject,
// as RFC 9068 §2.2 has it for JWT access tokens.
func (p *Provider) Introspect(ctx context.Context, c Client, token string, audiences []string, endpoint string) (*AccessClaims, error) {
	if len(audiences) == 0 {
		return nil, fmt.Errorf("no accepted audience configured for introspected tokens: %w", ErrInvalidToken)
	}
	d, err := p.Discovery(ctx)
	if err != nil {
		return nil, err
	}
	if endpoint == "" {
		endpoint = c.endpoint(d, "introspection_endpoint", d.IntrospectionEndpoint)
	}
	if endpoint == "" {
		return nil, fmt.Errorf("the IdP has no introspection endpoint for opaque tokens (set introspection_endpoint): %w", ErrInvalidToken)
	}
	resp, err := p.postForm(ctx, d, endpoint, c, url.Values{"token": {token}, "token_type_hint": {"access_token"}})
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
	if tt, ok := claims["token_type"]; ok {
		s, _ := tt.(string)
		if !slices.Contains(accessTokenTypes, strings.ToLower(s)) {
			return nil, fmt.Errorf("introspected token has token_type %q: it is not an access token: %w", clip(s), ErrInvalidToken)
		}
	}
	if tu, ok := claims["token_use"]; ok {
		s, _ := tu.(string)
		if !strings.EqualFold(s, "access_token") && !strings.EqualFold(s, "access") {
			return nil, fmt.Errorf("introspected token has token_use %q: it is not an access token: %w", clip(s), ErrInvalidToken)
		}
	}
	if iss, ok := claims["iss"].(string); ok && iss != p.issuer {
		return nil, fmt.Errorf("introspected token is from issuer %q: %w", clip(iss), ErrInvalidToken)
	}
	if err := introspectedAudience(claims, audiences); err != nil {
		return nil, err
	}
	if sub, _ := claims["sub"].(string); sub == "" {
		cid, _ := claims["client_id"].(string)
		if cid == "" {
			return nil, fmt.Errorf("introspected token names neither sub nor client_id: %w", ErrInvalidToken)
		}
		claims["sub"] = cid
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

// introspectedAudience checks that an introspected token is for one of
// audiences: by aud when present (RFC 7662 §2.2), else by client_id.
func introspectedAudience(claims map[string]any, audiences []string) error {
	if aud, ok := claims["aud"]; ok {
		var list []string
		switch a := aud.(type) {
		case string:
			list = []string{a}
		case []any:
			for _, v := range a {
				if s, ok := v.(string); ok {
					list = append(list, s)
				}
			}
		}
		if slices.ContainsFunc(list, func(a string) bool { return slices.Contains(audiences, a) }) {
			return nil
		}
		return fmt.Errorf("introspected token audience %q is not one of %v: %w", clip(fmt.Sprint(list)), audiences, ErrInvalidToken)
	}
	cid, _ := claims["client_id"].(string)
	if cid != "" && slices.Contains(audiences, cid) {
		return nil
	}
	return fmt.Errorf("introspected token has no aud and client_id %q is not one of %v: %w", clip(cid), audiences, ErrInvalidToken)
}

// UnverifiedIssuer reads a JWT's iss claim without verifying anything, to
// route a token to the relying party that will verify it; "" if it is not
// a JWT.
func UnverifiedIssuer(token string) string {
	if !IsJWT(token) {
		return ""
	}
	tok, err := jwt.ParseInsecure([]byte(token))
	if err != nil {
		return ""
	}
	return tok.Issuer()
}

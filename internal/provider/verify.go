package provider

import (
	"context"
	"crypto/subtle"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/lestrrat-go/jwx/v2/jwa"
	"github.com/lestrrat-go/jwx/v2/jws"
	"github.com/lestrrat-go/jwx/v2/jwt"
)

// ErrInvalidToken wraps every reason a token (ID, access, logout or
// introspected) is refused: definitive, unlike ErrUnavailable.
var ErrInvalidToken = errors.New("invalid token")

// VerifyOptions says what an ID token must satisfy beyond its signature.
type VerifyOptions struct {
	ClientID string
	// Nonce, when set, must equal the token's nonce claim (at login).
	Nonce string
	// Subject, when set, must equal the token's sub claim (at refresh).
	Subject string
	// ClockSkew is tolerated on exp, iat and nbf.
	ClockSkew time.Duration
	// MaxAge bounds how old iat may be. Default: 10 min + ClockSkew.
	MaxAge time.Duration
	// FromTokenEndpoint says the token came from the IdP's token endpoint
	// response (code exchange, refresh), not from anything a client sent.
	// Its unknown kid then gets a JWKS refetch of its own, whatever budget
	// untrusted input has spent, and a key it cannot find is ErrUnavailable
	// (our key set is behind), never ErrInvalidToken.
	FromTokenEndpoint bool
	// Now is the clock exp, nbf and the iat age are checked against.
	// Default: time.Now.
	Now func() time.Time
	// Algorithms, when set, limit the signature algorithms to these among
	// those the IdP announces (FAPI 2.0: PS256, ES256, EdDSA).
	Algorithms []string
}

// restrictAlgs limits what announced gives to allowed (all when allowed is
// empty): an IdP announcing only other algorithms then verifies nothing.
func restrictAlgs(announced func(*Discovery) []string, allowed []string) func(*Discovery) []string {
	if len(allowed) == 0 {
		return announced
	}
	return func(d *Discovery) []string {
		var out []string
		for _, a := range announced(d) {
			if slices.Contains(allowed, a) {
				out = append(out, a)
			}
		}
		if out == nil {
			out = []string{"none-allowed"} // never a JWS algorithm: refuses all
		}
		return out
	}
}

// asymmetric lists the signature algorithms the module accepts. Symmetric
// ones are left out on purpose: with them a confused verifier can be fed the
// IdP's public key as an HMAC secret.
var asymmetric = []string{"RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512", "EdDSA"}

// VerifyIDToken checks an ID token as OpenID Connect Core §3.1.3.7 requires:
// signature by a key of the IdP with an algorithm the IdP announces (never
// "none"), iss, aud, azp, exp, iat and nonce. It returns the token's claims.
func (p *Provider) VerifyIDToken(ctx context.Context, raw string, o VerifyOptions) (map[string]any, error) {
	d, withKey, err := p.signedByAlgs(ctx, raw, "ID token", restrictAlgs(idTokenAlgs, o.Algorithms), o.FromTokenEndpoint)
	if err != nil {
		return nil, err
	}
	now := o.Now
	if now == nil {
		now = time.Now
	}
	tok, err := jwt.Parse([]byte(raw),
		withKey,
		jwt.WithValidate(true),
		jwt.WithClock(jwt.ClockFunc(now)),
		jwt.WithAudience(o.ClientID),
		jwt.WithAcceptableSkew(o.ClockSkew),
		jwt.WithRequiredClaim("iat"),
		jwt.WithRequiredClaim("sub"),
		jwt.WithRequiredClaim("exp"),
	)
	if err != nil {
		return nil, fmt.Errorf("validating ID token: %v: %w", err, ErrInvalidToken)
	}
	maxAge := o.MaxAge
	if maxAge <= 0 {
		maxAge = 10*time.Minute + o.ClockSkew
	}
	if age := now().Sub(tok.IssuedAt()); age > maxAge {
		return nil, fmt.Errorf("ID token was issued %s ago: %w", age.Round(time.Second), ErrInvalidToken)
	}
	claims, err := tok.AsMap(ctx)
	if err != nil {
		return nil, fmt.Errorf("reading ID token claims: %v: %w", err, ErrInvalidToken)
	}
	// iss is checked here rather than by jwt.WithIssuer: with Entra ID's
	// multi-tenant endpoints the expected value depends on the token's tid.
	if want := p.expectedIssuer(d, claims); tok.Issuer() != want {
		return nil, fmt.Errorf("ID token issuer %q is not %q: %w", tok.Issuer(), want, ErrInvalidToken)
	}
	// Core §3.1.3.7 (4, 5): several audiences need azp, and azp must be us.
	azp, _ := claims["azp"].(string)
	if len(tok.Audience()) > 1 && azp == "" {
		return nil, fmt.Errorf("ID token has several audiences and no azp: %w", ErrInvalidToken)
	}
	if azp != "" && azp != o.ClientID {
		return nil, fmt.Errorf("ID token azp %q is not this client: %w", azp, ErrInvalidToken)
	}
	nonce, _ := claims["nonce"].(string)
	if o.Nonce != "" && subtle.ConstantTimeCompare([]byte(nonce), []byte(o.Nonce)) != 1 {
		return nil, fmt.Errorf("ID token nonce does not match the login attempt: %w", ErrInvalidToken)
	}
	if o.Subject != "" && tok.Subject() != o.Subject {
		return nil, fmt.Errorf("ID token subject changed: %w", ErrInvalidToken)
	}
	return claims, nil
}

// signedBy checks a compact JWS's header (one signature, an asymmetric
// algorithm the IdP announces, typ if typs is given) and finds the IdP key
// that must have signed it; what names the token in errors, and
// fromTokenEndpoint says where it came from (see VerifyOptions). It returns
// the jwt.Parse option that verifies the signature with that key and algorithm.
func (p *Provider) signedBy(ctx context.Context, raw, what string, fromTokenEndpoint bool, typs ...string) (*Discovery, jwt.ParseOption, error) {
	return p.signedByAlgs(ctx, raw, what, idTokenAlgs, fromTokenEndpoint, typs...)
}

// idTokenAlgs are the algorithms the IdP announces for ID tokens, which it
// also uses for its other tokens.
func idTokenAlgs(d *Discovery) []string {
	if len(d.IDTokenSigningAlgValuesSupported) == 0 {
		return []string{"RS256"} // the default of Discovery §3
	}
	return d.IDTokenSigningAlgValuesSupported
}

// signedByAlgs is signedBy with the announced algorithms read by announced
// (UserInfo has its own list).
func (p *Provider) signedByAlgs(ctx context.Context, raw, what string, announced func(*Discovery) []string, fromTokenEndpoint bool, typs ...string) (*Discovery, jwt.ParseOption, error) {
	d, err := p.Discovery(ctx)
	if err != nil {
		return nil, nil, err
	}
	msg, err := jws.Parse([]byte(raw))
	if err != nil {
		return nil, nil, fmt.Errorf("parsing %s: %v: %w", what, err, ErrInvalidToken)
	}
	sigs := msg.Signatures()
	if len(sigs) != 1 {
		return nil, nil, fmt.Errorf("%s has %d signatures, want 1: %w", what, len(sigs), ErrInvalidToken)
	}
	hdr := sigs[0].ProtectedHeaders()
	if typ := mediaType(hdr.Type()); len(typs) > 0 && typ != "" && !slices.Contains(typs, typ) {
		if strings.HasPrefix(typ, "id_token") || strings.HasPrefix(typ, "id+") {
			return nil, nil, fmt.Errorf("%s is typed as an ID token (typ %q); an ID token is never accepted as one: %w", what, clip(hdr.Type()), ErrInvalidToken)
		}
		return nil, nil, fmt.Errorf("%s has typ %q (want one of %v): %w", what, clip(hdr.Type()), typs, ErrInvalidToken)
	}
	alg := hdr.Algorithm().String()
	allowed := announced(d)
	if !slices.Contains(allowed, alg) || !slices.Contains(asymmetric, alg) {
		return nil, nil, fmt.Errorf("%s algorithm %q is not accepted (IdP announces %v): %w", what, clip(alg), allowed, ErrInvalidToken)
	}
	key, err := p.signingKey(ctx, d.JWKSURI, hdr.KeyID(), alg, fromTokenEndpoint)
	if err != nil {
		return nil, nil, err
	}
	return d, jwt.WithKey(jwa.SignatureAlgorithm(alg), key), nil
}

// mediaType normalises a JOSE typ for comparison: RFC 7515 §4.1.9 compares
// media types case-insensitively and lets "application/" be left out.
func mediaType(typ string) string {
	typ = strings.ToLower(typ)
	return strings.TrimPrefix(typ, "application/")
}

package provider

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"mime"
	"net/http"
	"slices"
	"time"

	"github.com/lestrrat-go/jwx/v2/jwt"
)

// UserInfoOptions say whose UserInfo is fetched, and for which client.
type UserInfoOptions struct {
	// ClientID must be in a signed response's aud, when it has one.
	ClientID string
	// Subject is the ID token's sub: UserInfo about anyone else is refused.
	Subject string
	// ClockSkew is tolerated on a signed response's exp, iat and nbf.
	ClockSkew time.Duration
	// Now is the clock those are checked against. Default: time.Now.
	Now func() time.Time
}

// UserInfo fetches the UserInfo endpoint's claims with the access token
// (as a Bearer header, Core §5.3.1). Its sub must be the ID token's
// (§5.3.2): a mismatch is ErrInvalidToken. No endpoint: no claims.
//
// A signed response (application/jwt, §5.3.2) is verified like an ID
// token: an asymmetric algorithm the IdP announces for UserInfo (or, if it
// announces none, for ID tokens), a key of the IdP, and iss and aud when
// present. A plain JSON response is accepted as well, even from an IdP that
// can sign: whether it signs for this client is the client's registration,
// which discovery does not show, and JSON comes over the same TLS
// connection to the endpoint discovery named as the token response does.
// An encrypted response (JWE) is not supported: ErrUnavailable, so a login
// goes on with the ID token's claims.
func (p *Provider) UserInfo(ctx context.Context, accessToken string, o UserInfoOptions) (map[string]any, error) {
	return p.userInfo(ctx, Client{}, accessToken, o)
}

// userInfo is UserInfo as client c: with c's DPoP key the token goes as
// "DPoP" with a proof (RFC 9449 §7.1), with c's certificate to the mTLS alias.
func (p *Provider) userInfo(ctx context.Context, c Client, accessToken string, o UserInfoOptions) (map[string]any, error) {
	d, err := p.Discovery(ctx)
	if err != nil {
		return nil, err
	}
	if d.UserinfoEndpoint == "" {
		return nil, nil
	}
	hc, err := p.httpClient(c)
	if err != nil {
		return nil, err
	}
	endpoint := c.endpoint(d, "userinfo_endpoint", d.UserinfoEndpoint)
	scheme := "Bearer "
	if c.DPoP != nil {
		scheme = "DPoP "
	}
	resp, err := c.DPoP.do(hc, accessToken, "the userinfo endpoint", func() (*http.Request, error) {
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, endpoint, nil)
		if err != nil {
			return nil, err
		}
		req.Header.Set("Authorization", scheme+accessToken)
		req.Header.Set("Accept", "application/json, application/jwt")
		return req, nil
	})
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("userinfo endpoint: HTTP %d: %w", resp.StatusCode, ErrUnavailable)
	}
	// The caller's client may lack the limited transport: cap here as well.
	body, err := io.ReadAll(io.LimitReader(resp.Body, MaxResponseBytes+1))
	if err != nil {
		return nil, fmt.Errorf("reading userinfo: %v: %w", err, ErrUnavailable)
	}
	if len(body) > MaxResponseBytes {
		return nil, fmt.Errorf("userinfo exceeds %d bytes: %w", MaxResponseBytes, ErrUnavailable)
	}
	var claims map[string]any
	switch mt, _, _ := mime.ParseMediaType(resp.Header.Get("Content-Type")); mt {
	case "application/json":
		if err := json.Unmarshal(body, &claims); err != nil {
			return nil, fmt.Errorf("decoding userinfo: %v: %w", err, ErrUnavailable)
		}
	case "application/jwt":
		if claims, err = p.verifyUserInfo(ctx, d, string(bytes.TrimSpace(body)), o); err != nil {
			return nil, err
		}
	default:
		return nil, fmt.Errorf("userinfo endpoint answered %q; want application/json or application/jwt: %w", clip(mt), ErrUnavailable)
	}
	if sub, _ := claims["sub"].(string); sub != o.Subject {
		return nil, fmt.Errorf("userinfo is about sub %q, not the ID token's: %w", clip(sub), ErrInvalidToken)
	}
	return claims, nil
}

// userInfoAlgs are the algorithms a signed UserInfo may use: those the IdP
// announces for UserInfo, else those of its ID tokens (an IdP that signs
// without saying so still signs with its keys).
func userInfoAlgs(d *Discovery) []string {
	if len(d.UserinfoSigningAlgValuesSupported) > 0 {
		return d.UserinfoSigningAlgValuesSupported
	}
	return idTokenAlgs(d)
}

// verifyUserInfo checks a signed UserInfo response and returns its claims.
func (p *Provider) verifyUserInfo(ctx context.Context, d *Discovery, raw string, o UserInfoOptions) (map[string]any, error) {
	if bytes.Count([]byte(raw), []byte(".")) == 4 {
		return nil, fmt.Errorf("the userinfo response is encrypted (JWE), which is not supported: register the client without userinfo_encrypted_response_alg: %w", ErrUnavailable)
	}
	// The response answers our own request to the endpoint discovery named:
	// an unknown kid is the IdP's newest key, as for the token endpoint.
	_, withKey, err := p.signedByAlgs(ctx, raw, "signed userinfo", userInfoAlgs, true)
	if err != nil {
		return nil, err
	}
	now := o.Now
	if now == nil {
		now = time.Now
	}
	tok, err := jwt.Parse([]byte(raw), withKey, jwt.WithValidate(true), jwt.WithClock(jwt.ClockFunc(now)),
		jwt.WithAcceptableSkew(o.ClockSkew))
	if err != nil {
		return nil, fmt.Errorf("validating signed userinfo: %v: %w", err, ErrInvalidToken)
	}
	claims, err := tok.AsMap(ctx)
	if err != nil {
		return nil, fmt.Errorf("reading signed userinfo claims: %v: %w", err, ErrInvalidToken)
	}
	// Core §5.3.2: iss and aud SHOULD be present; when they are, they must
	// be the IdP and this client, or the answer was meant for someone else.
	if _, has := claims["iss"]; has {
		if want := p.expectedIssuer(d, claims); tok.Issuer() != want {
			return nil, fmt.Errorf("signed userinfo issuer %q is not %q: %w", clip(tok.Issuer()), want, ErrInvalidToken)
		}
	}
	if _, has := claims["aud"]; has && !slices.Contains(tok.Audience(), o.ClientID) {
		return nil, fmt.Errorf("signed userinfo audience %v does not include this client: %w", tok.Audience(), ErrInvalidToken)
	}
	return claims, nil
}

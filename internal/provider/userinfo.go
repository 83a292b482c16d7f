package provider

import (
	"context"
	"encoding/json"
	"fmt"
	"mime"
	"net/http"
)

// UserInfo fetches the UserInfo endpoint's claims with the access token
// (as a Bearer header, Core §5.3.1). Its sub must be the ID token's
// (§5.3.2): a mismatch is ErrInvalidToken. No endpoint: no claims.
func (p *Provider) UserInfo(ctx context.Context, accessToken, subject string) (map[string]any, error) {
	return p.userInfo(ctx, Client{}, accessToken, subject)
}

// userInfo is UserInfo as client c: with c's DPoP key the token goes as
// "DPoP" with a proof (RFC 9449 §7.1), with c's certificate to the mTLS alias.
func (p *Provider) userInfo(ctx context.Context, c Client, accessToken, subject string) (map[string]any, error) {
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
		req.Header.Set("Accept", "application/json")
		return req, nil
	})
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("userinfo endpoint: HTTP %d: %w", resp.StatusCode, ErrUnavailable)
	}
	if mt, _, _ := mime.ParseMediaType(resp.Header.Get("Content-Type")); mt != "application/json" {
		return nil, fmt.Errorf("userinfo endpoint answered %q; only JSON userinfo is supported: %w", mt, ErrUnavailable)
	}
	var claims map[string]any
	if err := json.NewDecoder(resp.Body).Decode(&claims); err != nil {
		return nil, fmt.Errorf("decoding userinfo: %v: %w", err, ErrUnavailable)
	}
	if sub, _ := claims["sub"].(string); sub != subject {
		return nil, fmt.Errorf("userinfo is about sub %q, not the ID token's: %w", sub, ErrInvalidToken)
	}
	return claims, nil
}

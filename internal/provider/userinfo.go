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
	d, err := p.Discovery(ctx)
	if err != nil {
		return nil, err
	}
	if d.UserinfoEndpoint == "" {
		return nil, nil
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, d.UserinfoEndpoint, nil)
	if err != nil {
		return nil, err
	}
	req.Header.Set("Authorization", "Bearer "+accessToken)
	req.Header.Set("Accept", "application/json")
	resp, err := p.hc.Do(req)
	if err != nil {
		return nil, fmt.Errorf("calling the userinfo endpoint: %v: %w", err, ErrUnavailable)
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

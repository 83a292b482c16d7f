package provider

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"strings"
	"time"
)

// ErrInvalidGrant is the IdP's definitive refusal of a code or refresh
// token (RFC 6749 §5.2 invalid_grant): the only refresh error that ends a session.
var ErrInvalidGrant = errors.New("invalid_grant")

// TokenResponse is a successful token endpoint answer.
type TokenResponse struct {
	AccessToken  string `json:"access_token"`
	TokenType    string `json:"token_type"`
	RefreshToken string `json:"refresh_token,omitempty"`
	ExpiresIn    int64  `json:"expires_in,omitempty"`
	IDToken      string `json:"id_token,omitempty"`
	Scope        string `json:"scope,omitempty"`
}

// Expiry converts expires_in to an absolute time; zero when the IdP gave none.
func (t *TokenResponse) Expiry(now time.Time) time.Time {
	if t.ExpiresIn <= 0 {
		return time.Time{}
	}
	return now.Add(time.Duration(t.ExpiresIn) * time.Second)
}

// TokenError is an OAuth error answer from the token endpoint.
type TokenError struct {
	Status      int
	Code        string `json:"error"`
	Description string `json:"error_description,omitempty"`
}

func (e *TokenError) Error() string {
	if e.Description != "" {
		return fmt.Sprintf("token endpoint: HTTP %d %s: %s", e.Status, e.Code, e.Description)
	}
	return fmt.Sprintf("token endpoint: HTTP %d %s", e.Status, e.Code)
}

// Unwrap classifies the error: a 429 (whatever its body says; Retry-After
// is not honoured, the caller's own backoff applies), a 5xx or an
// unparseable answer means the IdP is unavailable; invalid_grant is
// definitive.
func (e *TokenError) Unwrap() error {
	switch {
	case e.Status == http.StatusTooManyRequests:
		return ErrUnavailable
	case e.Code == "invalid_grant":
		return ErrInvalidGrant
	case e.Status >= 500 || e.Code == "" || e.Code == "temporarily_unavailable":
		return ErrUnavailable
	}
	return nil
}

// Exchange redeems an authorization code (RFC 6749 §4.1.3 with the PKCE verifier of RFC 7636).
func (p *Provider) Exchange(ctx context.Context, c Client, code, redirectURI, verifier string) (*TokenResponse, error) {
	form := url.Values{
		"grant_type":    {"authorization_code"},
		"code":          {code},
		"redirect_uri":  {redirectURI},
		"code_verifier": {verifier},
	}
	return p.token(ctx, c, form)
}

// Refresh spends a refresh token (RFC 6749 §6).
func (p *Provider) Refresh(ctx context.Context, c Client, refreshToken string) (*TokenResponse, error) {
	form := url.Values{
		"grant_type":    {"refresh_token"},
		"refresh_token": {refreshToken},
	}
	return p.token(ctx, c, form)
}

func (p *Provider) token(ctx context.Context, c Client, form url.Values) (*TokenResponse, error) {
	d, err := p.Discovery(ctx)
	if err != nil {
		return nil, err
	}
	resp, err := p.post(ctx, d, c.endpoint(d, "token_endpoint", d.TokenEndpoint), c, form, true)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		te := &TokenError{Status: resp.StatusCode}
		_ = json.NewDecoder(resp.Body).Decode(te)
		return nil, te
	}
	var tr TokenResponse
	if err := json.NewDecoder(resp.Body).Decode(&tr); err != nil {
		return nil, fmt.Errorf("decoding token response: %v: %w", err, ErrUnavailable)
	}
	if tr.AccessToken == "" {
		return nil, fmt.Errorf("token response has no access_token: %w", ErrUnavailable)
	}
	if tt := strings.ToLower(tr.TokenType); tt != "" && tt != "bearer" && tt != "dpop" {
		return nil, fmt.Errorf("token response has token_type %q: %w", tr.TokenType, ErrInvalidToken)
	}
	// A client that sent a proof and got a plain bearer token has an IdP
	// that ignores DPoP for it: fail loudly rather than send the token
	// unbound (and as DPoP to UserInfo, which would refuse it).
	if c.DPoP != nil && !strings.EqualFold(tr.TokenType, "dpop") {
		return nil, fmt.Errorf("asked for a DPoP-bound token, got token_type %q: the IdP does not bind this client's tokens: %w", tr.TokenType, ErrInvalidToken)
	}
	return &tr, nil
}

// Revoke asks the IdP to revoke a token (RFC 7009). The result is advisory:
// the session ends locally whatever the IdP answers. A 429 or 5xx is
// ErrUnavailable (worth a retry later), any other refusal a plain error.
func (p *Provider) Revoke(ctx context.Context, c Client, token, hint string) error {
	d, err := p.Discovery(ctx)
	if err != nil {
		return err
	}
	if d.RevocationEndpoint == "" {
		return nil
	}
	resp, err := p.post(ctx, d, c.endpoint(d, "revocation_endpoint", d.RevocationEndpoint), c, url.Values{"token": {token}, "token_type_hint": {hint}}, true)
	if err != nil {
		return err
	}
	resp.Body.Close()
	switch {
	case resp.StatusCode == http.StatusOK:
		return nil
	case resp.StatusCode == http.StatusTooManyRequests || resp.StatusCode >= 500:
		return fmt.Errorf("revocation endpoint: HTTP %d: %w", resp.StatusCode, ErrUnavailable)
	}
	return fmt.Errorf("revocation endpoint: HTTP %d", resp.StatusCode)
}

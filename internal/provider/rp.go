package provider

import (
	"context"
	"time"
)

// RelyingParty is one client of one issuer, bound once (at Provision) the
// way go-oidc binds a Verifier: login, refresh, bearer and logout call it
// without rebuilding the client or the verification options. The Provider
// it wraps (discovery and keys) is shared by every route of the issuer.
type RelyingParty struct {
	p         *Provider
	client    Client
	skew      time.Duration
	audiences []string
	// introspectionEndpoint overrides the discovery document's.
	introspectionEndpoint string
	now                   func() time.Time
	// algs limit the algorithms of ID tokens and JARM responses.
	algs []string
}

// RPOptions are what a RelyingParty checks beyond its client.
type RPOptions struct {
	// ClockSkew is tolerated on token times.
	ClockSkew time.Duration
	// Audiences an access token may carry (bearer). Default: the client id.
	Audiences []string
	// IntrospectionEndpoint, when set, is used instead of the discovery
	// document's.
	IntrospectionEndpoint string
	// Now is the clock token ages are checked against. Default: time.Now.
	Now func() time.Time
	// Algorithms, when set, limit ID token and authorization response
	// signatures to these among those the IdP announces (FAPI 2.0).
	Algorithms []string
}

// Bind returns the relying party of client c at this issuer.
func (p *Provider) Bind(c Client, o RPOptions) *RelyingParty {
	if len(o.Audiences) == 0 {
		o.Audiences = []string{c.ID}
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	return &RelyingParty{p: p, client: c, skew: o.ClockSkew, audiences: o.Audiences,
		introspectionEndpoint: o.IntrospectionEndpoint, now: o.Now, algs: o.Algorithms}
}

// ClientID is the bound client's id.
func (rp *RelyingParty) ClientID() string { return rp.client.ID }

// Discovery is the issuer's discovery document.
func (rp *RelyingParty) Discovery(ctx context.Context) (*Discovery, error) {
	return rp.p.Discovery(ctx)
}

// Ready reports whether the issuer's discovery document and keys are loaded.
func (rp *RelyingParty) Ready(ctx context.Context) error { return rp.p.Ready(ctx) }

// Exchange redeems an authorization code with its PKCE verifier.
func (rp *RelyingParty) Exchange(ctx context.Context, code, redirectURI, verifier string) (*TokenResponse, error) {
	return rp.p.Exchange(ctx, rp.client, code, redirectURI, verifier)
}

// VerifyLoginIDToken checks the ID token of a code exchange, with the
// login attempt's nonce.
func (rp *RelyingParty) VerifyLoginIDToken(ctx context.Context, raw, nonce string) (map[string]any, error) {
	return rp.p.VerifyIDToken(ctx, raw, VerifyOptions{ClientID: rp.client.ID, Nonce: nonce, ClockSkew: rp.skew,
		FromTokenEndpoint: true, Now: rp.now, Algorithms: rp.algs})
}

// Refresh spends a refresh token.
func (rp *RelyingParty) Refresh(ctx context.Context, refreshToken string) (*TokenResponse, error) {
	return rp.p.Refresh(ctx, rp.client, refreshToken)
}

// VerifyRefreshedIDToken checks the ID token of a refresh: Core §12.2 wants
// it about the same user (sub) from the same issuer.
func (rp *RelyingParty) VerifyRefreshedIDToken(ctx context.Context, raw, sub string) (map[string]any, error) {
	return rp.p.VerifyIDToken(ctx, raw, VerifyOptions{ClientID: rp.client.ID, Subject: sub, ClockSkew: rp.skew,
		FromTokenEndpoint: true, Now: rp.now, Algorithms: rp.algs})
}

// UserInfo fetches the user's claims; their sub must be sub, and a signed
// response must be for this client. With a DPoP key the token is sent as
// DPoP with a proof.
func (rp *RelyingParty) UserInfo(ctx context.Context, accessToken, sub string) (map[string]any, error) {
	return rp.p.userInfo(ctx, rp.client, accessToken, UserInfoOptions{ClientID: rp.client.ID, Subject: sub, ClockSkew: rp.skew, Now: rp.now})
}

// Revoke revokes a token at the IdP (RFC 7009).
func (rp *RelyingParty) Revoke(ctx context.Context, token, hint string) error {
	return rp.p.Revoke(ctx, rp.client, token, hint)
}

// VerifyAccessToken checks a JWT access token for the bound audiences.
func (rp *RelyingParty) VerifyAccessToken(ctx context.Context, raw string) (*AccessClaims, error) {
	return rp.p.VerifyAccessToken(ctx, raw, rp.audiences, rp.skew)
}

// Introspect asks the IdP about an opaque access token for the bound audiences.
func (rp *RelyingParty) Introspect(ctx context.Context, token string) (*AccessClaims, error) {
	return rp.p.Introspect(ctx, rp.client, token, rp.audiences, rp.introspectionEndpoint)
}

// VerifyLogoutToken checks a back-channel logout token issued at most maxAge ago.
func (rp *RelyingParty) VerifyLogoutToken(ctx context.Context, raw string, maxAge time.Duration) (*LogoutToken, error) {
	return rp.p.VerifyLogoutToken(ctx, raw, rp.client.ID, rp.skew, maxAge)
}

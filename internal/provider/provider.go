// Package provider talks to one OpenID Provider: discovery, JWKS, ID token
// verification and the token endpoint. Every jwx call of the module lives in
// this package, so a move to jwx v3 touches one place.
package provider

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strings"
	"time"

	"github.com/lestrrat-go/jwx/v2/jwk"
)

// MaxResponseBytes bounds every body read from the IdP (discovery, JWKS,
// token responses), so a misbehaving IdP cannot exhaust memory.
const MaxResponseBytes = 1 << 20

// ErrUnavailable wraps every failure to reach the IdP or to get a usable
// answer from it; callers answer 503 rather than logging anyone out.
var ErrUnavailable = errors.New("identity provider unavailable")

// Discovery is the subset of the OpenID Provider metadata the module uses.
type Discovery struct {
	Issuer                            string   `json:"issuer"`
	AuthorizationEndpoint             string   `json:"authorization_endpoint"`
	TokenEndpoint                     string   `json:"token_endpoint"`
	UserinfoEndpoint                  string   `json:"userinfo_endpoint,omitempty"`
	JWKSURI                           string   `json:"jwks_uri"`
	EndSessionEndpoint                string   `json:"end_session_endpoint,omitempty"`
	RevocationEndpoint                string   `json:"revocation_endpoint,omitempty"`
	IntrospectionEndpoint             string   `json:"introspection_endpoint,omitempty"`
	IDTokenSigningAlgValuesSupported  []string `json:"id_token_signing_alg_values_supported,omitempty"`
	UserinfoSigningAlgValuesSupported []string `json:"userinfo_signing_alg_values_supported,omitempty"`
	TokenEndpointAuthMethodsSupported []string `json:"token_endpoint_auth_methods_supported,omitempty"`
	CodeChallengeMethodsSupported     []string `json:"code_challenge_methods_supported,omitempty"`
	AuthorizationResponseIssParameter bool     `json:"authorization_response_iss_parameter_supported,omitempty"`
	// FAPIMetadata is what PAR, JAR, JARM, DPoP and mTLS read (par.go).
	FAPIMetadata
}

// Options tune a Provider. Zero values take the documented defaults.
type Options struct {
	// HTTPClient is used for every call to the IdP. Default: a client with a
	// 10 s timeout whose response bodies are capped at MaxResponseBytes.
	HTTPClient *http.Client
	// DiscoveryTTL is how long a fetched discovery document is used before it
	// is fetched again. Default: 1 h.
	DiscoveryTTL time.Duration
	// JWKSRefetchInterval is the minimum time between two JWKS fetches caused
	// by an unknown key id in untrusted input, and between two for the same
	// unknown key id in tokens from the token endpoint. Default: 10 s.
	JWKSRefetchInterval time.Duration
}

// Provider is one issuer's metadata and keys, shared by every route that
// names that issuer. It is safe for concurrent use. It runs no goroutine of
// its own: documents are fetched on use, and a stale one is replaced by a
// fetch that ends with fetchTimeout.
type Provider struct {
	issuer string
	hc     *http.Client

	disc   shared[*Discovery]
	keys   shared[jwk.Set]
	budget refetchBudget
}

// New returns a Provider for issuer. It does no network I/O: discovery is
// fetched on first use.
func New(issuer string, opts Options) *Provider {
	if opts.HTTPClient == nil {
		opts.HTTPClient = &http.Client{
			Timeout:   10 * time.Second,
			Transport: limitedTransport{base: http.DefaultTransport},
		}
	}
	if opts.DiscoveryTTL <= 0 {
		opts.DiscoveryTTL = time.Hour
	}
	if opts.JWKSRefetchInterval <= 0 {
		opts.JWKSRefetchInterval = 10 * time.Second
	}
	p := &Provider{issuer: issuer, hc: opts.HTTPClient}
	p.disc = shared[*Discovery]{what: "discovery document of " + issuer, ttl: opts.DiscoveryTTL, clock: time.Now,
		fetch: func(ctx context.Context, _ string) (*Discovery, error) { return p.fetchDiscovery(ctx) }}
	p.keys = shared[jwk.Set]{what: "JWKS of " + issuer, ttl: jwksTTL, clock: time.Now, fetch: p.fetchJWKS}
	p.budget.every = opts.JWKSRefetchInterval
	return p
}

// Close releases the Provider. It has no background work to stop, and
// requests still in flight across a reload keep using it: a closed
// Provider answers exactly as an open one.
func (p *Provider) Close() {}

// Destruct implements caddy.Destructor so a Provider can live in a UsagePool.
func (p *Provider) Destruct() error { p.Close(); return nil }

// Discovery returns the provider metadata, fetching it when it is missing or
// stale (see shared: one fetch in flight, failures backed off, a stale
// document kept and served while it is refetched).
func (p *Provider) Discovery(ctx context.Context) (*Discovery, error) {
	return p.disc.get(ctx, "")
}

func (p *Provider) fetchDiscovery(ctx context.Context) (*Discovery, error) {
	u := strings.TrimSuffix(p.issuer, "/") + "/.well-known/openid-configuration"
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
	if err != nil {
		return nil, fmt.Errorf("discovery request %s: %w", u, err)
	}
	req.Header.Set("Accept", "application/json")
	resp, err := p.hc.Do(req)
	if err != nil {
		return nil, fmt.Errorf("fetching discovery document %s: %v: %w", u, err, ErrUnavailable)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("fetching discovery document %s: HTTP %d: %w", u, resp.StatusCode, ErrUnavailable)
	}
	var d Discovery
	if err := json.NewDecoder(resp.Body).Decode(&d); err != nil {
		return nil, fmt.Errorf("decoding discovery document %s: %v: %w", u, err, ErrUnavailable)
	}
	// OpenID Connect Discovery 1.0 §4.3: the issuer must match exactly, or a
	// compromised document could redirect token validation elsewhere.
	if d.Issuer != p.issuer && !multiTenant(p.issuer, d.Issuer) {
		return nil, fmt.Errorf("discovery document %s announces issuer %q, want %q: %w", u, d.Issuer, p.issuer, ErrUnavailable)
	}
	if d.AuthorizationEndpoint == "" || d.TokenEndpoint == "" || d.JWKSURI == "" {
		return nil, fmt.Errorf("discovery document %s lacks authorization_endpoint, token_endpoint or jwks_uri: %w", u, ErrUnavailable)
	}
	return &d, nil
}

// limitedTransport caps response bodies: jwx reads JWKS bodies without a limit.
type limitedTransport struct{ base http.RoundTripper }

func (t limitedTransport) RoundTrip(r *http.Request) (*http.Response, error) {
	resp, err := t.base.RoundTrip(r)
	if err != nil {
		return nil, err
	}
	resp.Body = &limitedBody{rc: resp.Body, left: MaxResponseBytes}
	return resp, nil
}

type limitedBody struct {
	rc   io.ReadCloser
	left int64
}

func (b *limitedBody) Read(p []byte) (int, error) {
	if b.left <= 0 {
		return 0, fmt.Errorf("response body exceeds %d bytes", MaxResponseBytes)
	}
	if int64(len(p)) > b.left {
		p = p[:b.left]
	}
	n, err := b.rc.Read(p)
	b.left -= int64(n)
	return n, err
}

func (b *limitedBody) Close() error { return b.rc.Close() }

// NewLimitedTransport wraps base so that response bodies are capped at
// MaxResponseBytes.
func NewLimitedTransport(base http.RoundTripper) http.RoundTripper {
	return limitedTransport{base: base}
}

// multiTenant recognises Microsoft Entra ID's multi-tenant endpoints
// (common, organizations, consumers): their discovery announces the issuer
// template https://login.microsoftonline.com/{tenantid}/v2.0, and each ID
// token's iss is that template with the token's own tid.
func multiTenant(configured, announced string) bool {
	u, err := url.Parse(configured)
	if err != nil || u.Host != "login.microsoftonline.com" {
		return false
	}
	seg, _, _ := strings.Cut(strings.TrimPrefix(u.Path, "/"), "/")
	switch seg {
	case "common", "organizations", "consumers":
		return strings.Contains(announced, "{tenantid}")
	}
	return false
}

// expectedIssuer is the iss a token with these claims must carry.
func (p *Provider) expectedIssuer(d *Discovery, claims map[string]any) string {
	if d.Issuer == p.issuer {
		return p.issuer
	}
	tid, _ := claims["tid"].(string)
	if tid == "" || strings.ContainsAny(tid, "/{}") {
		return p.issuer
	}
	return strings.Replace(d.Issuer, "{tenantid}", tid, 1)
}

// Ready fetches (or finds) the discovery document and the key set, through
// the same shared, backed-off fetches requests use: nil when both are
// loaded, for readiness probes.
func (p *Provider) Ready(ctx context.Context) error {
	d, err := p.Discovery(ctx)
	if err != nil {
		return err
	}
	_, err = p.keys.get(ctx, d.JWKSURI)
	return err
}

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
	"sync"
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
	TokenEndpointAuthMethodsSupported []string `json:"token_endpoint_auth_methods_supported,omitempty"`
	CodeChallengeMethodsSupported     []string `json:"code_challenge_methods_supported,omitempty"`
	AuthorizationResponseIssParameter bool     `json:"authorization_response_iss_parameter_supported,omitempty"`
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
	// by an unknown key id. Default: 10 s.
	JWKSRefetchInterval time.Duration
}

// Provider is one issuer's metadata and keys, shared by every route that
// names that issuer. It is safe for concurrent use.
type Provider struct {
	issuer string
	hc     *http.Client
	ttl    time.Duration

	ctx    context.Context
	cancel context.CancelFunc

	mu         sync.Mutex
	disc       *Discovery
	fetchedAt  time.Time
	failures   int
	retryAfter time.Time
	inflight   chan struct{}

	jwks           *jwk.Cache
	jwksURL        string
	refetchEvery   time.Duration
	lastRefetch    time.Time
	refetchMu      sync.Mutex
	discoveryCount int // for tests: how many discovery fetches were made
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
	ctx, cancel := context.WithCancel(context.Background())
	return &Provider{
		issuer:       issuer,
		hc:           opts.HTTPClient,
		ttl:          opts.DiscoveryTTL,
		ctx:          ctx,
		cancel:       cancel,
		jwks:         jwk.NewCache(ctx),
		refetchEvery: opts.JWKSRefetchInterval,
	}
}

// Issuer returns the issuer identifier this Provider was made for.
func (p *Provider) Issuer() string { return p.issuer }

// HTTPClient returns the client used for calls to the IdP.
func (p *Provider) HTTPClient() *http.Client { return p.hc }

// Close stops the background JWKS refreshes. Calls after Close fail.
func (p *Provider) Close() { p.cancel() }

// Destruct implements caddy.Destructor so a Provider can live in a UsagePool.
func (p *Provider) Destruct() error { p.Close(); return nil }

// DiscoveryFetches reports how many times the discovery document was fetched.
func (p *Provider) DiscoveryFetches() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.discoveryCount
}

// Discovery returns the provider metadata, fetching it when it is missing or
// stale. A stale document is kept when a refetch fails. Failed fetches back
// off exponentially (1 s doubling to 1 min), so an IdP outage costs one
// request per interval, not one per user request.
func (p *Provider) Discovery(ctx context.Context) (*Discovery, error) {
	for {
		p.mu.Lock()
		if p.ctx.Err() != nil {
			p.mu.Unlock()
			return nil, fmt.Errorf("provider %s is closed: %w", p.issuer, ErrUnavailable)
		}
		now := time.Now()
		fresh := p.disc != nil && now.Sub(p.fetchedAt) < p.ttl
		if fresh || (p.disc != nil && now.Before(p.retryAfter)) {
			d := p.disc
			p.mu.Unlock()
			return d, nil
		}
		if p.disc == nil && now.Before(p.retryAfter) {
			wait := time.Until(p.retryAfter).Round(time.Second)
			p.mu.Unlock()
			return nil, fmt.Errorf("discovery for %s failed recently, next try in %s: %w", p.issuer, wait, ErrUnavailable)
		}
		if ch := p.inflight; ch != nil {
			p.mu.Unlock()
			select {
			case <-ch:
				continue
			case <-ctx.Done():
				return nil, ctx.Err()
			}
		}
		ch := make(chan struct{})
		p.inflight = ch
		p.mu.Unlock()

		// The fetch is shared: it must not die with the first caller's request.
		fctx, cancel := context.WithTimeout(p.ctx, 15*time.Second)
		d, err := p.fetchDiscovery(fctx)
		cancel()

		p.mu.Lock()
		p.inflight = nil
		p.discoveryCount++
		if err != nil {
			p.failures++
			backoff := time.Second << min(p.failures-1, 6)
			p.retryAfter = time.Now().Add(min(backoff, time.Minute))
			stale := p.disc
			p.mu.Unlock()
			close(ch)
			if stale != nil {
				return stale, nil
			}
			return nil, err
		}
		p.failures = 0
		p.retryAfter = time.Time{}
		p.disc, p.fetchedAt = d, time.Now()
		if p.jwksURL != d.JWKSURI {
			if !p.jwks.IsRegistered(d.JWKSURI) {
				_ = p.jwks.Register(d.JWKSURI,
					jwk.WithHTTPClient(p.hc),
					jwk.WithMinRefreshInterval(15*time.Minute))
			}
			p.jwksURL = d.JWKSURI
		}
		p.mu.Unlock()
		close(ch)
		return d, nil
	}
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

package caddyoidc

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/caddyserver/caddy/v2/modules/caddyhttp"

	"github.com/caddy-oidc/caddy-oidc/cache"
	"github.com/caddy-oidc/caddy-oidc/internal/provider"
	"github.com/caddy-oidc/caddy-oidc/session"
)

// Bounds of the bearer-token result cache: entries per route, and how long
// a result is trusted whatever the token's own exp says.
const (
	bearerCacheSize   = 10_000
	bearerCacheMaxTTL = 10 * time.Minute
)

func bearerToken(r *http.Request) (string, bool) {
	v := r.Header.Get("Authorization")
	if len(v) < 7 || !strings.EqualFold(v[:7], "Bearer ") {
		return "", false
	}
	t := strings.TrimSpace(v[7:])
	return t, t != ""
}

// bearerCache remembers verified tokens by hash until their expiry.
type bearerCache struct {
	mu  sync.RWMutex
	m   map[[32]byte]bearerEntry
	max int
}

type bearerEntry struct {
	claims  map[string]any
	expires time.Time
}

func newBearerCache(max int) *bearerCache {
	return &bearerCache{m: make(map[[32]byte]bearerEntry), max: max}
}

func (c *bearerCache) get(k [32]byte, now time.Time) (map[string]any, bool) {
	c.mu.RLock()
	e, ok := c.m[k]
	c.mu.RUnlock()
	if !ok || now.After(e.expires) {
		return nil, false
	}
	return e.claims, true
}

func (c *bearerCache) put(k [32]byte, e bearerEntry) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if len(c.m) >= c.max {
		for old := range c.m {
			delete(c.m, old)
			break
		}
	}
	c.m[k] = e
}

// Bounds of opaque-token introspection, so random tokens cannot drive the
// IdP's rate limit against us: refusals are remembered briefly, identical
// calls in flight are shared, and few run at once per route.
const (
	introspectionNegativeTTL = 30 * time.Second
	introspectionConcurrency = 8
	// introspectionRate and introspectionBurst bound the introspections of
	// tokens this route has not seen (per second): beyond them a new token
	// gets 503 at once, and the IdP's rate limit is never ours to trip.
	introspectionRate  = 20
	introspectionBurst = 40
	// Per client address (Caddy's client_ip, trusted proxies applied), so
	// one source flooding random tokens does not use up the route's rate.
	introspectionClientRate  = 2
	introspectionClientBurst = 5
	introspectionClients     = 10_000
)

// tokenBucket allows rate events a second, burst at once. Not safe for
// concurrent use: callers hold a lock.
type tokenBucket struct {
	rate, burst float64
	tokens      float64
	last        time.Time
}

func (b *tokenBucket) take(now time.Time) bool {
	if !b.has(now) {
		return false
	}
	b.tokens--
	return true
}

// has refills the bucket and reports whether one event may pass.
func (b *tokenBucket) has(now time.Time) bool {
	if b.last.IsZero() {
		b.tokens = b.burst
	} else {
		b.tokens = min(b.burst, b.tokens+now.Sub(b.last).Seconds()*b.rate)
	}
	b.last = now
	return b.tokens >= 1
}

// serveBearer authenticates an API request by its access token.
func (h *Handler) serveBearer(w http.ResponseWriter, r *http.Request, next caddyhttp.Handler, token string) error {
	now := time.Now()
	sum := sha256.Sum256([]byte(token))
	claims, ok := h.bearers.get(sum, now)
	if !ok {
		ac, err := h.checkAccessToken(r.Context(), token, sum)
		if err != nil {
			if errors.Is(err, provider.ErrUnavailable) || errors.Is(err, cache.ErrUnavailable) || errors.Is(err, errIntrospectionBusy) {
				w.Header().Set("Retry-After", "10")
				return caddyhttp.Error(http.StatusServiceUnavailable, err)
			}
			return h.refuseBearer(w, err)
		}
		expires := now.Add(bearerCacheMaxTTL)
		if !ac.Expiry.IsZero() && ac.Expiry.Before(expires) {
			expires = ac.Expiry
		}
		h.bearers.put(sum, bearerEntry{claims: ac.Claims, expires: expires})
		claims = ac.Claims
	}
	if h.bearerRevoked(claims) {
		return h.refuseBearer(w, errors.New("the access token's user or IdP session was logged out"))
	}
	if !h.Allow.allows(claims) {
		w.Header().Set("WWW-Authenticate", `Bearer realm="`+h.realm()+`", error="insufficient_scope"`)
		return caddyhttp.Error(http.StatusForbidden, fmt.Errorf("bearer %q is not allowed by the allow rules", claimString(claims["sub"])))
	}
	tokens := &session.Session{AccessToken: token}
	if exp, ok := claims["exp"].(float64); ok {
		tokens.AccessExpiry = int64(exp)
	}
	h.identity.set(r, claims, tokens)
	h.sessions.StripCookies(r)
	return next.ServeHTTP(w, r)
}

func (h *Handler) refuseBearer(w http.ResponseWriter, err error) error {
	w.Header().Set("WWW-Authenticate", `Bearer realm="`+h.realm()+`", error="invalid_token", error_description="the access token is invalid or expired"`)
	w.Header().Set("Cache-Control", "no-store")
	return caddyhttp.Error(http.StatusUnauthorized, err)
}

// bearerRevoked applies the revocation set to an access token: a logout
// (back-channel by sid or sub) ends the tokens issued before it too.
func (h *Handler) bearerRevoked(claims map[string]any) bool {
	// A token that does not say when it was issued may predate any logout.
	var issued int64
	if iat, ok := claims["iat"].(float64); ok {
		issued = int64(iat)
	}
	return h.revs.ended(h.Issuer, &session.Session{Claims: claims, Created: issued})
}

// checkAccessToken verifies a JWT locally, or introspects an opaque token;
// introspection results are shared through the cache (sealed, keyed by the
// route, the accepted audiences and the token's hash) so replicas ask the
// IdP once per token.
func (h *Handler) checkAccessToken(ctx context.Context, token string, sum [32]byte) (*provider.AccessClaims, error) {
	if provider.IsJWT(token) {
		ac, err := h.rp.VerifyAccessToken(ctx, token)
		if err == nil && looksLikeIDToken(ac.Claims, h.Client.ID) {
			return nil, fmt.Errorf("the token is for this client and grants no scope: an ID token, not an access token: %w", provider.ErrInvalidToken)
		}
		return ac, err
	}
	if h.introspections.refused(sum, time.Now()) {
		return nil, fmt.Errorf("the IdP said recently that this token is not active: %w", provider.ErrInvalidToken)
	}
	key := cache.IntrospectionKey(h.introNS, hex.EncodeToString(sum[:]))
	aad := h.bind(purposeIntrospection + key)
	if b, found, err := h.shared.Get(ctx, key); err == nil && found {
		if pt, _, err := h.codec.Open(aad, string(b)); err == nil {
			var ac introspected
			if json.Unmarshal(pt, &ac) == nil && time.Now().Before(time.Unix(ac.Exp, 0)) {
				return &provider.AccessClaims{Claims: ac.Claims, Expiry: time.Unix(ac.Exp, 0)}, nil
			}
		}
	}
	ac, err := h.introspections.do(ctx, sum, func(ctx context.Context) (*provider.AccessClaims, error) {
		return h.rp.Introspect(ctx, token)
	})
	if err != nil {
		if errors.Is(err, provider.ErrInvalidToken) {
			h.introspections.refuse(sum, time.Now())
		}
		return nil, err
	}
	h.introspections.vouch(ctx)
	exp := time.Now().Add(bearerCacheMaxTTL)
	if !ac.Expiry.IsZero() && ac.Expiry.Before(exp) {
		exp = ac.Expiry
	}
	if b, err := json.Marshal(introspected{Claims: ac.Claims, Exp: exp.Unix()}); err == nil {
		_ = h.shared.Set(context.WithoutCancel(ctx), key, []byte(h.codec.Seal(aad, b)), time.Until(exp))
	}
	return ac, nil
}

// looksLikeIDToken tells an ID token that lacks nonce and at_hash (a
// refreshed one) from an access token: it has none of what access tokens
// carry (RFC 9068: client_id; scope or scp), and it was issued to this
// client as its own audience (azp absent or this client): what an ID token
// of this route is. An access token for this client obtained by another
// one (Entra's app-only tokens: roles, azp the caller) is not one.
func looksLikeIDToken(claims map[string]any, clientID string) bool {
	for _, c := range []string{"scope", "scp", "client_id"} {
		if _, ok := claims[c]; ok {
			return false
		}
	}
	azp, hasAzp := claims["azp"].(string)
	var auds []string
	switch aud := claims["aud"].(type) {
	case string:
		auds = []string{aud}
	case []string:
		auds = aud
	case []any:
		for _, a := range aud {
			if s, ok := a.(string); ok {
				auds = append(auds, s)
			}
		}
	}
	return slices.Contains(auds, clientID) && (!hasAzp || azp == clientID)
}

type introspected struct {
	Claims map[string]any `json:"c"`
	Exp    int64          `json:"x"`
}

// errIntrospectionBusy: too many introspections are running; the request
// is answered 503 rather than queued without bound.
var errIntrospectionBusy = errors.New("too many token introspections in progress")

// introspector bounds a route's introspection calls: at most
// introspectionConcurrency at once, one per token in flight, and a short
// memory of tokens the IdP called inactive (in-process only, so hostile
// tokens never become shared entries).
type introspector struct {
	sem     chan struct{}
	bucket  tokenBucket
	clients map[string]*tokenBucket // bounded: introspectionClients
	// vouched are clients whose tokens the IdP recently called active:
	// the route's rate does not apply to them, so a flood from elsewhere
	// does not lock out the API's real callers (their own rate does).
	vouched map[string]time.Time // bounded: introspectionClients
	mu      sync.Mutex
	flights map[[32]byte]*introspection
	refusal *bearerCache
}

type introspection struct {
	done chan struct{}
	ac   *provider.AccessClaims
	err  error
}

func newIntrospector() *introspector {
	return &introspector{sem: make(chan struct{}, introspectionConcurrency),
		bucket:  tokenBucket{rate: introspectionRate, burst: introspectionBurst},
		clients: make(map[string]*tokenBucket),
		vouched: make(map[string]time.Time),
		flights: make(map[[32]byte]*introspection), refusal: newBearerCache(bearerCacheSize)}
}

func (in *introspector) refused(sum [32]byte, now time.Time) bool {
	_, ok := in.refusal.get(sum, now)
	return ok
}

func (in *introspector) refuse(sum [32]byte, now time.Time) {
	in.refusal.put(sum, bearerEntry{expires: now.Add(introspectionNegativeTTL)})
}

// clientKey names the request's client for rate limits: its address as
// Caddy sees it (trusted proxies applied), an IPv6 one by its /64 (one
// host holds a whole /64).
func clientKey(ctx context.Context) string {
	s, _ := caddyhttp.GetVar(ctx, caddyhttp.ClientIPVarKey).(string)
	ip, err := netip.ParseAddr(s)
	if err != nil || ip.Is4() || ip.Is4In6() {
		return s
	}
	p, _ := ip.Prefix(64)
	return p.String()
}

// vouch marks client as a caller of real tokens for a while.
func (in *introspector) vouch(ctx context.Context) {
	client := clientKey(ctx)
	in.mu.Lock()
	defer in.mu.Unlock()
	if _, ok := in.vouched[client]; !ok && len(in.vouched) >= introspectionClients {
		for k := range in.vouched {
			delete(in.vouched, k)
			break
		}
	}
	in.vouched[client] = time.Now().Add(10 * time.Minute)
}

// clientBucket is the rate bucket of client; in.mu is held.
func (in *introspector) clientBucket(ip string) *tokenBucket {
	b, ok := in.clients[ip]
	if !ok {
		if len(in.clients) >= introspectionClients {
			for k := range in.clients { // an arbitrary one makes room
				delete(in.clients, k)
				break
			}
		}
		b = &tokenBucket{rate: introspectionClientRate, burst: introspectionClientBurst}
		in.clients[ip] = b
	}
	return b
}

// do runs call once for concurrent requests of one token, within the bound.
func (in *introspector) do(ctx context.Context, sum [32]byte, call func(context.Context) (*provider.AccessClaims, error)) (*provider.AccessClaims, error) {
	in.mu.Lock()
	f, ok := in.flights[sum]
	if !ok {
		now := time.Now()
		client := clientKey(ctx)
		cb := in.clientBucket(client)
		good := now.Before(in.vouched[client])
		if !cb.has(now) || !good && !in.bucket.take(now) {
			in.mu.Unlock()
			return nil, errIntrospectionBusy
		}
		cb.take(now)
		f = &introspection{done: make(chan struct{})}
		in.flights[sum] = f
	}
	in.mu.Unlock()
	if !ok {
		go func() {
			defer func() {
				in.mu.Lock()
				delete(in.flights, sum)
				in.mu.Unlock()
				close(f.done)
			}()
			// The call is shared: it must not end with the first caller.
			cctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 30*time.Second)
			defer cancel()
			select {
			case in.sem <- struct{}{}:
			case <-time.After(100 * time.Millisecond):
				f.err = errIntrospectionBusy
				return
			}
			defer func() { <-in.sem }()
			f.ac, f.err = call(cctx)
		}()
	}
	select {
	case <-f.done:
		return f.ac, f.err
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}

package caddyoidc

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"strings"
	"sync"
	"time"

	"github.com/caddyserver/caddy/v2/modules/caddyhttp"

	"github.com/caddy-oidc/caddy-oidc/cache"
	"github.com/caddy-oidc/caddy-oidc/internal/provider"
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

// serveBearer authenticates an API request by its access token.
func (h *Handler) serveBearer(w http.ResponseWriter, r *http.Request, next caddyhttp.Handler, token string) error {
	now := time.Now()
	sum := sha256.Sum256([]byte(token))
	claims, ok := h.bearers.get(sum, now)
	if !ok {
		ac, err := h.checkAccessToken(r.Context(), token, sum)
		if err != nil {
			if errors.Is(err, provider.ErrUnavailable) || errors.Is(err, cache.ErrUnavailable) {
				w.Header().Set("Retry-After", "10")
				return caddyhttp.Error(http.StatusServiceUnavailable, err)
			}
			w.Header().Set("WWW-Authenticate", `Bearer realm="`+h.realm()+`", error="invalid_token", error_description="the access token is invalid or expired"`)
			w.Header().Set("Cache-Control", "no-store")
			return caddyhttp.Error(http.StatusUnauthorized, err)
		}
		expires := now.Add(bearerCacheMaxTTL)
		if !ac.Expiry.IsZero() && ac.Expiry.Before(expires) {
			expires = ac.Expiry
		}
		h.bearers.put(sum, bearerEntry{claims: ac.Claims, expires: expires})
		claims = ac.Claims
	}
	if !h.allowed(claims) {
		w.Header().Set("WWW-Authenticate", `Bearer realm="`+h.realm()+`", error="insufficient_scope"`)
		return caddyhttp.Error(http.StatusForbidden, fmt.Errorf("bearer %q is not allowed by the allow rules", claimString(claims["sub"])))
	}
	h.setIdentity(r, claims)
	h.stripCookies(r)
	return next.ServeHTTP(w, r)
}

// checkAccessToken verifies a JWT locally, or introspects an opaque token;
// introspection results are shared through the cache (sealed, keyed by the
// token's hash) so replicas ask the IdP once per token.
func (h *Handler) checkAccessToken(ctx context.Context, token string, sum [32]byte) (*provider.AccessClaims, error) {
	if provider.IsJWT(token) {
		return h.prov.VerifyAccessToken(ctx, token, h.BearerAudience, time.Duration(h.ClockSkew))
	}
	key := cache.Key(cache.NSToken, hex.EncodeToString(sum[:]))
	if b, found, err := h.store.Get(ctx, key); err == nil && found {
		if pt, _, err := h.codec.Open(key, string(b)); err == nil {
			var ac introspected
			if json.Unmarshal(pt, &ac) == nil && time.Now().Before(time.Unix(ac.Exp, 0)) {
				return &provider.AccessClaims{Claims: ac.Claims, Expiry: time.Unix(ac.Exp, 0)}, nil
			}
		}
	}
	ac, err := h.prov.Introspect(ctx, h.client, token)
	if err != nil {
		return nil, err
	}
	exp := time.Now().Add(bearerCacheMaxTTL)
	if !ac.Expiry.IsZero() && ac.Expiry.Before(exp) {
		exp = ac.Expiry
	}
	if b, err := json.Marshal(introspected{Claims: ac.Claims, Exp: exp.Unix()}); err == nil {
		_ = h.store.Set(context.WithoutCancel(ctx), key, []byte(h.codec.Seal(key, b)), time.Until(exp))
	}
	return ac, nil
}

type introspected struct {
	Claims map[string]any `json:"c"`
	Exp    int64          `json:"x"`
}

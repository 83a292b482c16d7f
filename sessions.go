package caddyoidc

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"net/http"
	"slices"
	"strings"
	"time"

	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"go.uber.org/zap"

	"github.com/caddy-oidc/caddy-oidc/cache"
	"github.com/caddy-oidc/caddy-oidc/internal/provider"
	"github.com/caddy-oidc/caddy-oidc/refresh"
	"github.com/caddy-oidc/caddy-oidc/session"
)

// errStoreUnavailable: the session may exist but the shared cache cannot
// say; the request gets 503, the session is not touched.
var errStoreUnavailable = errors.New("session store unavailable")

// cacheIDPrefix marks the cookie payload of a session kept in the cache
// (session_store cache, or a cookie session too large for cookies).
const cacheIDPrefix = "id:"

// Purposes of sealed values. Each is bound, with the route (issuer and
// client), into the AEAD's associated data by Handler.bind, so a value
// sealed for one purpose, key or route does not open as another.
const (
	purposeCookie        = "cookie\x00"  // + cookie name
	purposeAttempt       = "attempt\x00" // + cookie name
	purposeSessionValue  = "session\x00" // + cache key
	purposeIntrospection = "token\x00"   // + cache key
	purposeHandOff       = "handoff\x00" // + flight id
)

// routeBinding is the associated-data prefix of every value this route
// seals: a session of another issuer or client never opens here, even
// when both routes share a session_secret.
func routeBinding(issuer, clientID string) string {
	return "caddy-oidc/v2\x00" + issuer + "\x00" + clientID + "\x00"
}

// routeNamespace names this route's keys in the shared cache: a short hash
// of issuer and client, so routes never read each other's entries.
func routeNamespace(issuer, clientID string) string {
	sum := sha256.Sum256([]byte(issuer + "\x00" + clientID))
	return hex.EncodeToString(sum[:8])
}

// cookieAAD is the associated data of the session cookie called name:
// precomputed for the two names a route uses (it is on every request of a
// cache-kept session).
func (h *Handler) cookieAAD(name string) string {
	switch name {
	case h.CookieName:
		return h.plainCookieAAD
	case h.hostCookieName:
		return h.hostCookieAAD
	}
	return h.bind(purposeCookie + name)
}

// bind is the associated data for sealing a value of purpose (which ends
// with the key or cookie name it is stored under) on this route.
func (h *Handler) bind(purpose string) string { return h.route + purpose }

// scheme is the scheme the browser used: the connection's, or the
// X-Forwarded-Proto of a proxy that Caddy's trusted_proxies trusts.
func (h *Handler) scheme(r *http.Request) string {
	if r.TLS != nil {
		return "https"
	}
	fwd := r.Header.Get("X-Forwarded-Proto")
	if fwd == "" {
		return "http"
	}
	proto, _, _ := strings.Cut(fwd, ",")
	if !strings.EqualFold(strings.TrimSpace(proto), "https") {
		return "http"
	}
	if trusted, _ := caddyhttp.GetVar(r.Context(), caddyhttp.TrustedProxyVarKey).(bool); trusted {
		return "https"
	}
	h.warnOnce(&h.warned.untrustedProxy, "X-Forwarded-Proto: https came from a proxy Caddy does not trust, so cookies are not Secure and the redirect_uri is http://; list the proxy in the server's trusted_proxies (or set an https redirect_uri)")
	return "http"
}

// secure reports whether cookies get the Secure attribute and the __Host-
// prefix: on HTTPS (directly or through a trusted proxy), or when the
// configured redirect_uri is https.
func (h *Handler) secure(r *http.Request) bool {
	return r.TLS != nil || h.secureDefault || h.scheme(r) == "https"
}

func (h *Handler) sessionCookieName(r *http.Request) string {
	if h.secure(r) {
		return h.hostCookieName
	}
	return h.CookieName
}

func (h *Handler) cookieOptions(r *http.Request, maxAge int) session.CookieOptions {
	return session.CookieOptions{Secure: h.secure(r), MaxAge: maxAge, SameSite: h.sameSite}
}

func (h *Handler) cacheStore() bool { return h.SessionStore == "cache" }

// storeKey is where a cache-kept session lives: a hash of its id (the id
// itself is a bearer credential and never a key in Valkey), in this
// route's namespace.
func (h *Handler) storeKey(id string) string {
	sum := sha256.Sum256([]byte(id))
	return cache.SessionKey(h.ns, hex.EncodeToString(sum[:]))
}

// cookieSessionID returns the id of the cache-kept session the request's
// cookie names, without asking the store (logout must work while it is down).
func (h *Handler) cookieSessionID(r *http.Request) (string, bool) {
	name := h.sessionCookieName(r)
	v, ok := session.ReadChunked(r, name)
	if !ok {
		return "", false
	}
	pt, _, err := h.codec.Open(h.cookieAAD(name), v)
	if err != nil {
		return "", false
	}
	return cacheRef(pt)
}

// cacheRef reads a cookie payload that names a cache-kept session.
func cacheRef(pt []byte) (string, bool) {
	id, ok := strings.CutPrefix(string(pt), cacheIDPrefix)
	if !ok || len(id) < 32 {
		return "", false
	}
	return id, true
}

// loadSession finds the request's session. Anything wrong with the cookie
// (missing, tampered, truncated, of another route, expired) means no
// session: the user logs in again. reissue is true when an older secret
// opened it. err is errStoreUnavailable when the shared cache cannot answer.
func (h *Handler) loadSession(r *http.Request, now time.Time) (s *session.Session, reissue bool, err error) {
	name := h.sessionCookieName(r)
	v, ok := session.ReadChunked(r, name)
	if !ok {
		return nil, false, nil
	}
	s, reissue, err = h.openSession(r.Context(), name, v)
	if s == nil || err != nil {
		return nil, false, err
	}
	if s.Expired(now, time.Duration(h.SessionLifetime), time.Duration(h.SessionIdleTimeout)) {
		return nil, false, nil
	}
	return s, reissue, nil
}

// openSession opens the session cookie's value: the session itself, or the
// id of a session kept in the cache.
func (h *Handler) openSession(ctx context.Context, name, v string) (*session.Session, bool, error) {
	if s, ok := h.decoded.Get(name, v); ok {
		return s, false, nil
	}
	pt, rotated, err := h.codec.Open(h.cookieAAD(name), v)
	if err != nil {
		return nil, false, nil
	}
	if id, ok := cacheRef(pt); ok {
		s, rotatedValue, err := h.loadCached(ctx, id)
		return s, rotated || rotatedValue, err
	}
	s, err := session.Unmarshal(pt)
	if err != nil {
		return nil, false, nil
	}
	if !rotated {
		// Cache a private copy: the caller may change s.
		cp := *s
		h.decoded.Put(name, v, &cp)
	}
	return s, rotated, nil
}

func (h *Handler) loadCached(ctx context.Context, id string) (*session.Session, bool, error) {
	key := h.storeKey(id)
	v, found, err := h.store.Get(ctx, key)
	if err != nil {
		return nil, false, errStoreUnavailable
	}
	if !found {
		return nil, false, nil
	}
	sealed := string(v)
	if s, ok := h.decoded.Get(key, sealed); ok {
		s.ID = id
		return s, false, nil
	}
	pt, rotated, err := h.codec.Open(h.bind(purposeSessionValue+key), sealed)
	if err != nil {
		return nil, false, nil
	}
	s, err := session.Unmarshal(pt)
	if err != nil {
		return nil, false, nil
	}
	if !rotated {
		cp := *s
		h.decoded.Put(key, sealed, &cp)
	}
	s.ID = id
	return s, rotated, nil
}

// writeSession stores s: sealed into the session cookie, or into the
// shared cache with only its id in the cookie (session_store cache, or a
// session too large for cookies, such as an Entra user with hundreds of
// groups). A cache outage keeps the session in this process's L1 (written
// back later) and is not an error.
func (h *Handler) writeSession(w http.ResponseWriter, r *http.Request, s *session.Session, now time.Time) error {
	pt, err := s.Marshal()
	if err != nil {
		return fmt.Errorf("encoding session: %w", err)
	}
	name := h.sessionCookieName(r)
	remaining := time.Unix(s.Created, 0).Add(time.Duration(h.SessionLifetime)).Sub(now)
	opts := h.cookieOptions(r, max(int(remaining/time.Second), 1))
	if !h.cacheStore() && s.ID == "" {
		if session.WriteChunked(w, r, name, h.codec.Seal(h.cookieAAD(name), pt), opts) {
			return nil
		}
		h.warnOnce(&h.warned.oversize, "a session is too large for cookies; keeping it in the oidc app's cache with only its id in the cookie (with the memory cache it lives in this process only: configure valkey for several replicas)",
			zap.Int("session_bytes", len(pt)))
	}
	if s.ID == "" {
		b := make([]byte, 16) // 128 bits
		rand.Read(b)
		s.ID = hex.EncodeToString(b)
	}
	key := h.storeKey(s.ID)
	if err := h.store.Set(r.Context(), key, []byte(h.codec.Seal(h.bind(purposeSessionValue+key), pt)), max(remaining, time.Second)); err != nil {
		h.logger.Warn("session kept in this process only: the shared cache is unavailable", zap.Error(err))
	}
	session.WriteChunked(w, r, name, h.codec.Seal(h.cookieAAD(name), []byte(cacheIDPrefix+s.ID)), opts)
	return nil
}

// endSession removes the session everywhere this handler can reach.
func (h *Handler) endSession(w http.ResponseWriter, r *http.Request, s *session.Session) {
	session.ClearChunked(w, r, h.sessionCookieName(r), h.cookieOptions(r, 0))
	if s != nil && s.ID != "" {
		if err := h.store.Delete(context.WithoutCancel(r.Context()), h.storeKey(s.ID)); err != nil {
			h.logger.Warn("deleting the session from the shared cache failed", zap.Error(err))
		}
	}
}

// refreshResult is what one refresh grant yields, shared by every request
// that waited for it (on this replica, or on another through a hand-off).
type refreshResult struct {
	tokens *provider.TokenResponse
	// claims are those of a new, verified ID token; nil if the IdP sent
	// none or its keys could not be fetched (the tokens are kept anyway).
	claims map[string]any
	// userinfo is the UserInfo re-fetched with the new access token.
	userinfo map[string]any
	at       time.Time
}

func (h *Handler) needsRefresh(s *session.Session, now time.Time) bool {
	return s.RefreshToken != "" && s.AccessExpiry != 0 && !h.refreshTooOld(s, now) &&
		now.Add(time.Duration(h.RefreshBefore)).Unix() >= s.AccessExpiry
}

// refreshTooOld reports a refresh token past refresh_token_max_age: it is
// not spent any more, and the session ends with its access token.
func (h *Handler) refreshTooOld(s *session.Session, now time.Time) bool {
	maxAge := time.Duration(h.RefreshTokenMaxAge)
	return maxAge > 0 && s.RefreshToken != "" && now.Sub(time.Unix(s.RefreshIssued, 0)) > maxAge
}

// refresh spends the session's refresh token through the app's coordinator,
// so concurrent requests of this session share one grant, and updates s.
func (h *Handler) refresh(ctx context.Context, s *session.Session) error {
	rt, sub := s.RefreshToken, s.Subject()
	// The flight is named by route and token: a token is one route's.
	flight := h.route + rt
	sum := sha256.Sum256([]byte(flight))
	codec := newRefreshCodec(h.codec, h.bind(purposeHandOff+hex.EncodeToString(sum[:])), sub)
	grant := func(gctx context.Context) (*refreshResult, error) {
		h.app.hold()
		defer h.app.release()
		return h.grant(gctx, rt, sub)
	}
	res, err := h.app.coordinator.Do(ctx, flight, grant, codec, h.app.via())
	if err != nil {
		return err
	}
	h.applyRefresh(s, res)
	return nil
}

// grant spends rt at the IdP and verifies what comes back.
func (h *Handler) grant(ctx context.Context, rt, sub string) (res *refreshResult, err error) {
	start := time.Now()
	defer func() {
		outcome := "ok"
		switch {
		case err == nil:
		case isDefinitive(err):
			outcome = "refused"
		default:
			outcome = "failed"
		}
		h.logger.Info("refresh", zap.String("sub", sub), zap.String("outcome", outcome),
			zap.Duration("took", time.Since(start)), zap.Error(err))
	}()
	tr, err := h.prov.Refresh(ctx, h.client, rt)
	if err != nil {
		return nil, err
	}
	res = &refreshResult{tokens: tr, at: time.Now()}
	if tr.IDToken != "" {
		// Core §12.2: a refreshed ID token must be about the same user, from
		// the same issuer (VerifyIDToken checks iss).
		claims, err := h.prov.VerifyIDToken(ctx, tr.IDToken, provider.VerifyOptions{
			ClientID: h.ClientID, Subject: sub, ClockSkew: time.Duration(h.ClockSkew), FromTokenEndpoint: true,
		})
		switch {
		case err == nil:
			res.claims = claims
		case errors.Is(err, provider.ErrUnavailable):
			// The IdP's keys cannot be had right now. The IdP has already
			// rotated the refresh token: throwing the answer away would end
			// the session. Keep the tokens and the claims the session has.
			h.logger.Warn("refreshed ID token not verified (IdP keys unavailable); keeping the new tokens and the session's claims",
				zap.String("sub", sub), zap.Error(err))
			cp := *tr
			cp.IDToken = ""
			res.tokens = &cp
		default:
			return nil, err
		}
	}
	if h.UserInfo {
		ui, err := h.prov.UserInfo(ctx, tr.AccessToken, sub)
		if err != nil {
			h.logger.Warn("userinfo not refreshed; the session keeps its earlier claims", zap.String("sub", sub), zap.Error(err))
		}
		res.userinfo = ui
	}
	return res, nil
}

// applyRefresh updates s with a refresh's outcome.
func (h *Handler) applyRefresh(s *session.Session, res *refreshResult) {
	s.AccessToken = res.tokens.AccessToken
	if res.tokens.RefreshToken != "" && res.tokens.RefreshToken != s.RefreshToken {
		s.RefreshToken = res.tokens.RefreshToken
		s.RefreshIssued = res.at.Unix()
	}
	s.AccessExpiry = 0
	if exp := res.tokens.Expiry(res.at); !exp.IsZero() {
		s.AccessExpiry = exp.Unix()
	}
	if claims, fromUI := refreshedClaims(s.Claims, s.FromUserInfo, res.claims, res.userinfo); claims != nil {
		// The cached decoded session shares the old map: replace, never mutate.
		s.Claims, s.FromUserInfo = claims, fromUI
	}
	if res.claims != nil {
		s.IDToken = res.tokens.IDToken
	}
}

// sessionClaims describe the login itself, not the user's attributes: a
// refreshed ID token that lacks them does not take them away.
var sessionClaims = []string{"sub", "sid", "auth_time", "acr", "amr"}

// refreshedClaims are a session's claims after a refresh (nil: unchanged),
// and the names of those UserInfo added. A refreshed ID token that says
// anything about the user (Keycloak, Entra, Okta, Hydra) is the IdP's
// current statement: the claims the earlier ID token carried and this one
// does not (the user left their last group) are gone. One that carries only
// sub and protocol claims, or none at all (panva's oidc-provider), leaves
// them. UserInfo fetched again restates the claims it added at login: those
// it no longer carries are gone; a failed UserInfo keeps them (degraded,
// logged). Claims describing the login itself (sid, auth_time...) stay.
func refreshedClaims(old map[string]any, oldFromUI []string, idClaims, userinfo map[string]any) (map[string]any, []string) {
	full := false
	for k := range idClaims {
		if !slices.Contains(session.ProtocolClaims, k) && !slices.Contains(sessionClaims, k) {
			full = true
			break
		}
	}
	refetched := len(userinfo) > 0
	if idClaims == nil && !refetched {
		return nil, oldFromUI
	}
	merged := maps.Clone(old)
	if full {
		// Drop what the earlier ID token said; keep the login's own claims
		// and, unless UserInfo restates them below, what UserInfo said.
		for k := range old {
			if !slices.Contains(sessionClaims, k) && !slices.Contains(oldFromUI, k) {
				delete(merged, k)
			}
		}
	}
	fromUI := oldFromUI
	if refetched {
		for _, k := range oldFromUI {
			if _, still := userinfo[k]; !still {
				if _, inToken := idClaims[k]; !inToken {
					delete(merged, k)
				}
			}
		}
		fromUI = nil
	}
	overlay(merged, idClaims)
	for k, v := range userinfo {
		if _, inToken := idClaims[k]; inToken || slices.Contains(session.ProtocolClaims, k) || k == "email_verified" {
			continue // email_verified goes only with its email (setVerified)
		}
		if _, inOld := old[k]; inOld && !slices.Contains(oldFromUI, k) && !full {
			// The ID token carried it (at login): the ID token's word stands.
			continue
		}
		merged[k] = v
		fromUI = append(fromUI, k)
		if k == "email" {
			setVerified(merged, userinfo)
		}
	}
	return merged, fromUI
}

// overlay copies src's user claims into dst. An email and its
// email_verified always come from the same source: a new email never
// inherits an earlier one's verification.
func overlay(dst, src map[string]any) {
	for k, v := range src {
		if !slices.Contains(session.ProtocolClaims, k) && k != "email_verified" {
			dst[k] = v
		}
	}
	if _, ok := src["email"]; ok {
		setVerified(dst, src)
	}
}

func setVerified(dst, src map[string]any) {
	if v, ok := src["email_verified"]; ok {
		dst["email_verified"] = v
	} else {
		delete(dst, "email_verified")
	}
}

// handOff is a refresh outcome as other replicas adopt it.
type handOff struct {
	Tokens   *provider.TokenResponse `json:"t,omitempty"`
	Claims   map[string]any          `json:"c,omitempty"`
	UserInfo map[string]any          `json:"u,omitempty"`
	// Sub is the user the grant was for: an adopted hand-off must be about
	// the session's own user.
	Sub string `json:"s"`
	At  int64  `json:"at"`
	// Err is the definitive error ("invalid_grant"), handed to followers so
	// they do not spend the token again.
	Err string `json:"e,omitempty"`
}

// newRefreshCodec seals hand-offs with this route's keys, bound to the
// flight (route and refresh token) they answer: they carry tokens and
// travel through Valkey, which is not trusted to keep values in place.
func newRefreshCodec(c *session.Codec, aad, sub string) *refresh.Codec[*refreshResult] {
	return &refresh.Codec[*refreshResult]{
		Encode: func(r *refreshResult, err error) ([]byte, error) {
			ho := handOff{Sub: sub}
			if err != nil {
				ho.Err = "invalid_grant"
			} else {
				ho.Tokens, ho.Claims, ho.UserInfo, ho.At = r.tokens, r.claims, r.userinfo, r.at.Unix()
			}
			b, jerr := json.Marshal(ho)
			if jerr != nil {
				return nil, jerr
			}
			return []byte(c.Seal(aad, b)), nil
		},
		Decode: func(b []byte) (*refreshResult, error) {
			pt, _, err := c.Open(aad, string(b))
			if err != nil {
				return nil, fmt.Errorf("opening a refresh hand-off: %w", provider.ErrUnavailable)
			}
			var ho handOff
			if err := json.Unmarshal(pt, &ho); err != nil {
				return nil, fmt.Errorf("decoding a refresh hand-off: %w", provider.ErrUnavailable)
			}
			if ho.Sub != sub {
				return nil, fmt.Errorf("a refresh hand-off for another user: %w", provider.ErrUnavailable)
			}
			if ho.Err != "" {
				return nil, fmt.Errorf("refresh refused on another replica: %w", provider.ErrInvalidGrant)
			}
			if ho.Tokens == nil {
				return nil, fmt.Errorf("empty refresh hand-off: %w", provider.ErrUnavailable)
			}
			return &refreshResult{tokens: ho.Tokens, claims: ho.Claims, userinfo: ho.UserInfo, at: time.Unix(ho.At, 0)}, nil
		},
	}
}

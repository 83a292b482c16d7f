package caddyoidc

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"strings"
	"time"

	"go.uber.org/zap"

	"github.com/caddy-oidc/caddy-oidc/cache"
	"github.com/caddy-oidc/caddy-oidc/internal/provider"
	"github.com/caddy-oidc/caddy-oidc/refresh"
	"github.com/caddy-oidc/caddy-oidc/session"
)

// errStoreUnavailable: the session may exist but the shared cache cannot
// say; the request gets 503, the session is not touched.
var errStoreUnavailable = errors.New("session store unavailable")

// cacheIDPrefix marks the cookie payload of a cache-store session.
const cacheIDPrefix = "id:"

// secure reports whether cookies get the Secure attribute and the __Host-
// prefix: on HTTPS, or when the configured redirect_uri is https (Caddy
// behind a TLS-terminating proxy).
func (h *Handler) secure(r *http.Request) bool { return r.TLS != nil || h.secureDefault }

func (h *Handler) sessionCookieName(r *http.Request) string {
	if h.secure(r) {
		return "__Host-" + h.CookieName
	}
	return h.CookieName
}

func (h *Handler) cacheStore() bool { return h.SessionStore == "cache" }

// storeKey is where a cache-store session lives: a hash of its id, so the
// id itself (a bearer credential) is never a key in Valkey.
func storeKey(id string) string {
	sum := sha256.Sum256([]byte(id))
	return cache.Key(cache.NSSession, hex.EncodeToString(sum[:]))
}

// loadSession finds the request's session. Anything wrong with the cookie
// (missing, tampered, truncated, foreign, expired) means no session: the
// user logs in again. reissue is true when an older secret opened it. err
// is errStoreUnavailable when the shared cache cannot answer.
func (h *Handler) loadSession(r *http.Request, now time.Time) (s *session.Session, reissue bool, err error) {
	name := h.sessionCookieName(r)
	v, ok := session.ReadChunked(r, name)
	if !ok {
		return nil, false, nil
	}
	if h.cacheStore() {
		s, reissue, err = h.loadCached(r.Context(), name, v)
	} else {
		s, reissue = h.decode(name, v, []byte(nil))
	}
	if s == nil || err != nil {
		return nil, false, err
	}
	if s.Expired(now, time.Duration(h.SessionLifetime), time.Duration(h.SessionIdleTimeout)) {
		return nil, false, nil
	}
	return s, reissue, nil
}

// decode opens a sealed session (the cookie's value, or the bytes from the
// cache), through the per-route cache of opened sessions.
func (h *Handler) decode(purpose, sealed string, sealedBytes []byte) (*session.Session, bool) {
	var s *session.Session
	var cached bool
	if sealedBytes != nil {
		s, cached = h.decoded.GetBytes(sealedBytes)
		sealed = string(sealedBytes)
	} else {
		s, cached = h.decoded.Get(sealed)
	}
	if cached {
		return s, false
	}
	pt, rotated, err := h.codec.Open(purpose, sealed)
	if err != nil {
		return nil, false
	}
	if s, err = session.Unmarshal(pt); err != nil {
		return nil, false
	}
	if !rotated {
		// Cache a private copy: the caller may change s.
		cp := *s
		h.decoded.Put(sealed, &cp)
	}
	return s, rotated
}

// cookieSessionID returns the id of the cache-store session the request's
// cookie names, without asking the store (logout must work while it is down).
func (h *Handler) cookieSessionID(r *http.Request) (string, bool) {
	name := h.sessionCookieName(r)
	v, ok := session.ReadChunked(r, name)
	if !ok || !h.cacheStore() {
		return "", false
	}
	id, _, ok := h.openCacheID(name, v)
	return id, ok
}

// openCacheID opens a cache-store session cookie: the session's id.
func (h *Handler) openCacheID(name, cookieValue string) (id string, rotated bool, ok bool) {
	pt, rotated, err := h.codec.Open(name, cookieValue)
	if err != nil {
		return "", false, false
	}
	id, ok = strings.CutPrefix(string(pt), cacheIDPrefix)
	if !ok || len(id) < 32 {
		return "", false, false
	}
	return id, rotated, true
}

func (h *Handler) loadCached(ctx context.Context, name, cookieValue string) (*session.Session, bool, error) {
	id, rotated, ok := h.openCacheID(name, cookieValue)
	if !ok {
		return nil, false, nil
	}
	key := storeKey(id)
	v, found, err := h.store.Get(ctx, key)
	if err != nil {
		return nil, false, errStoreUnavailable
	}
	if !found {
		return nil, false, nil
	}
	s, rotatedValue := h.decode(key, "", v)
	if s == nil {
		return nil, false, nil
	}
	s.ID = id
	return s, rotated || rotatedValue, nil
}

// writeSession stores s: sealed into the session cookie, or into the
// shared cache with only its id in the cookie. A cache outage keeps the
// session in this process's L1 (written back later) and is not an error.
func (h *Handler) writeSession(w http.ResponseWriter, r *http.Request, s *session.Session, now time.Time) error {
	pt, err := s.Marshal()
	if err != nil {
		return fmt.Errorf("encoding session: %w", err)
	}
	name := h.sessionCookieName(r)
	remaining := time.Until(time.Unix(s.Created, 0).Add(time.Duration(h.SessionLifetime)))
	maxAge := max(int(remaining/time.Second), 1)
	opts := session.CookieOptions{Secure: h.secure(r), MaxAge: maxAge}
	if !h.cacheStore() {
		session.WriteChunked(w, r, name, h.codec.Seal(name, pt), opts)
		return nil
	}
	if s.ID == "" {
		b := make([]byte, 16) // 128 bits
		rand.Read(b)
		s.ID = hex.EncodeToString(b)
	}
	key := storeKey(s.ID)
	if err := h.store.Set(r.Context(), key, []byte(h.codec.Seal(key, pt)), max(remaining, time.Second)); err != nil {
		h.logger.Warn("session kept in this process only: the shared cache is unavailable", zap.Error(err))
	}
	session.WriteChunked(w, r, name, h.codec.Seal(name, []byte(cacheIDPrefix+s.ID)), opts)
	return nil
}

// endSession removes the session everywhere this handler can reach.
func (h *Handler) endSession(w http.ResponseWriter, r *http.Request, s *session.Session) {
	session.ClearChunked(w, r, h.sessionCookieName(r), h.secure(r))
	if s != nil && s.ID != "" {
		if err := h.store.Delete(context.WithoutCancel(r.Context()), storeKey(s.ID)); err != nil {
			h.logger.Warn("deleting the session from the shared cache failed", zap.Error(err))
		}
	}
}

// refreshResult is what one refresh grant yields, shared by every request
// that waited for it.
type refreshResult struct {
	tokens *provider.TokenResponse
	claims map[string]any // from a new ID token, if the IdP sent one
	at     time.Time
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
	res, err := h.coordinator.Do(ctx, rt, func(gctx context.Context) (*refreshResult, error) {
		tr, err := h.prov.Refresh(gctx, h.client, rt)
		if err != nil {
			return nil, err
		}
		res := &refreshResult{tokens: tr, at: time.Now()}
		if tr.IDToken != "" {
			// Core §12.2: a refreshed ID token must be about the same user.
			claims, err := h.prov.VerifyIDToken(gctx, tr.IDToken, provider.VerifyOptions{
				ClientID: h.ClientID, Subject: sub, ClockSkew: time.Duration(h.ClockSkew),
			})
			if err != nil {
				return nil, err
			}
			res.claims = claims
		}
		return res, nil
	}, h.refreshCodec)
	if err != nil {
		return err
	}
	s.AccessToken = res.tokens.AccessToken
	if res.tokens.RefreshToken != "" && res.tokens.RefreshToken != s.RefreshToken {
		s.RefreshToken = res.tokens.RefreshToken
		s.RefreshIssued = res.at.Unix()
	}
	s.AccessExpiry = 0
	if exp := res.tokens.Expiry(res.at); !exp.IsZero() {
		s.AccessExpiry = exp.Unix()
	}
	if res.claims != nil {
		fresh := session.New(res.claims, res.tokens.IDToken, "", "", time.Time{}, res.at)
		s.Claims, s.IDToken = fresh.Claims, res.tokens.IDToken
	}
	return nil
}

// handOff is a refresh outcome as other replicas adopt it.
type handOff struct {
	Tokens *provider.TokenResponse `json:"t,omitempty"`
	Claims map[string]any          `json:"c,omitempty"`
	At     int64                   `json:"at"`
	// Err is the definitive error ("invalid_grant"), handed to followers so
	// they do not spend the token again.
	Err string `json:"e,omitempty"`
}

const handOffPurpose = "caddy-oidc refresh hand-off v1"

// newRefreshCodec seals hand-offs with this route's keys: they carry tokens
// and travel through Valkey.
func newRefreshCodec(c *session.Codec) *refresh.Codec[*refreshResult] {
	return &refresh.Codec[*refreshResult]{
		Encode: func(r *refreshResult, err error) ([]byte, error) {
			var ho handOff
			if err != nil {
				ho.Err = "invalid_grant"
			} else {
				ho = handOff{Tokens: r.tokens, Claims: r.claims, At: r.at.Unix()}
			}
			b, jerr := json.Marshal(ho)
			if jerr != nil {
				return nil, jerr
			}
			return []byte(c.Seal(handOffPurpose, b)), nil
		},
		Decode: func(b []byte) (*refreshResult, error) {
			pt, _, err := c.Open(handOffPurpose, string(b))
			if err != nil {
				return nil, fmt.Errorf("opening a refresh hand-off: %w", provider.ErrUnavailable)
			}
			var ho handOff
			if err := json.Unmarshal(pt, &ho); err != nil {
				return nil, fmt.Errorf("decoding a refresh hand-off: %w", provider.ErrUnavailable)
			}
			if ho.Err != "" {
				return nil, fmt.Errorf("refresh refused on another replica: %w", provider.ErrInvalidGrant)
			}
			if ho.Tokens == nil {
				return nil, fmt.Errorf("empty refresh hand-off: %w", provider.ErrUnavailable)
			}
			return &refreshResult{tokens: ho.Tokens, claims: ho.Claims, at: time.Unix(ho.At, 0)}, nil
		},
	}
}

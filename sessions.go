package caddyoidc

import (
	"context"
	"fmt"
	"net/http"
	"time"

	"github.com/caddy-oidc/caddy-oidc/internal/provider"
	"github.com/caddy-oidc/caddy-oidc/session"
)

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

// loadSession opens the session cookie. Anything wrong with it (missing,
// tampered, truncated, foreign, expired) means no session: the user logs in
// again. reissue is true when an older secret opened it.
func (h *Handler) loadSession(r *http.Request, now time.Time) (s *session.Session, reissue bool) {
	name := h.sessionCookieName(r)
	v, ok := session.ReadChunked(r, name)
	if !ok {
		return nil, false
	}
	s, cached := h.decoded.Get(v)
	if !cached {
		pt, rotated, err := h.codec.Open(name, v)
		if err != nil {
			return nil, false
		}
		if s, err = session.Unmarshal(pt); err != nil {
			return nil, false
		}
		if rotated {
			reissue = true
		} else {
			// Cache a private copy: the caller may change s.
			cp := *s
			h.decoded.Put(v, &cp)
		}
	}
	if s.Expired(now, time.Duration(h.SessionLifetime), time.Duration(h.SessionIdleTimeout)) {
		return nil, false
	}
	return s, reissue
}

// writeSession seals s into the session cookie, which lives as long as the
// session may.
func (h *Handler) writeSession(w http.ResponseWriter, r *http.Request, s *session.Session, now time.Time) error {
	pt, err := s.Marshal()
	if err != nil {
		return fmt.Errorf("encoding session: %w", err)
	}
	name := h.sessionCookieName(r)
	maxAge := int(time.Until(time.Unix(s.Created, 0).Add(time.Duration(h.SessionLifetime))) / time.Second)
	if maxAge < 1 {
		maxAge = 1
	}
	session.WriteChunked(w, r, name, h.codec.Seal(name, pt), session.CookieOptions{Secure: h.secure(r), MaxAge: maxAge})
	return nil
}

// refreshResult is what one refresh grant yields, shared by every request
// that waited for it.
type refreshResult struct {
	tokens *provider.TokenResponse
	claims map[string]any // from a new ID token, if the IdP sent one
	at     time.Time
}

func (h *Handler) needsRefresh(s *session.Session, now time.Time) bool {
	return s.RefreshToken != "" && s.AccessExpiry != 0 &&
		now.Add(time.Duration(h.RefreshBefore)).Unix() >= s.AccessExpiry
}

// refresh spends the session's refresh token through the app's coordinator,
// so concurrent requests of this session share one grant, and updates s.
func (h *Handler) refresh(ctx context.Context, s *session.Session) error {
	rt, sub := s.RefreshToken, s.Subject()
	res, err := h.app.coordinator.Do(ctx, rt, func(gctx context.Context) (*refreshResult, error) {
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
	})
	if err != nil {
		return err
	}
	s.AccessToken = res.tokens.AccessToken
	if res.tokens.RefreshToken != "" {
		s.RefreshToken = res.tokens.RefreshToken
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

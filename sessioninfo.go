package caddyoidc

import (
	"encoding/json"
	"errors"
	"net/http"
	"time"

	"github.com/caddyserver/caddy/v2/modules/caddyhttp"

	"github.com/caddy-oidc/caddy-oidc/session"
)

// sessionInfo is what userinfo_path answers: the identity the upstream
// would see and when the session ends, for single-page apps. No tokens.
type sessionInfo struct {
	Subject   string         `json:"sub"`
	Email     string         `json:"email,omitempty"`
	Name      string         `json:"name,omitempty"`
	Groups    []string       `json:"groups,omitempty"`
	Roles     []string       `json:"roles,omitempty"`
	Claims    map[string]any `json:"claims"`
	ExpiresAt int64          `json:"expires_at"`
	// AccessTokenExpiresAt is when the access token needs a refresh (the
	// session goes on past it while it can be refreshed); 0 if unknown.
	AccessTokenExpiresAt int64 `json:"access_token_expires_at,omitempty"`
}

// serveSessionInfo answers GET userinfo_path with the session's identity,
// or 401 without a usable session (never a login redirect: it is an API).
func (h *Handler) serveSessionInfo(w http.ResponseWriter, r *http.Request) error {
	w.Header().Set("Cache-Control", "no-store")
	if r.Method != http.MethodGet && r.Method != http.MethodHead {
		w.Header().Set("Allow", "GET, HEAD")
		return caddyhttp.Error(http.StatusMethodNotAllowed, errors.New("session info: use GET"))
	}
	now := time.Now()
	loaded := h.sessions.Load(r, now)
	sess := loaded.Session
	switch loaded.Refusal {
	case session.Usable:
	case session.Unavailable, session.NotReady:
		w.Header().Set("Retry-After", "5")
		return caddyhttp.Error(http.StatusServiceUnavailable, errors.New("the session cannot be read right now: "+loaded.Refusal.String()))
	default:
		w.Header().Set("WWW-Authenticate", `Bearer realm="`+h.realm()+`"`)
		return caddyhttp.Error(http.StatusUnauthorized, errors.New("no valid session"))
	}
	if !h.Allow.allows(sess.Claims) {
		return caddyhttp.Error(http.StatusForbidden, errors.New("not allowed by the allow rules"))
	}
	info := sessionInfo{
		Subject: sess.Subject(), Email: claimString(sess.Claims["email"]), Name: claimString(sess.Claims["name"]),
		Groups: h.identity.groups(sess.Claims), Roles: h.identity.roles(sess.Claims), Claims: sess.Claims,
		ExpiresAt:            time.Unix(sess.Created, 0).Add(time.Duration(h.Session.Lifetime)).Unix(),
		AccessTokenExpiresAt: sess.AccessExpiry,
	}
	if idle := time.Duration(h.Session.IdleTimeout); idle > 0 {
		info.ExpiresAt = min(info.ExpiresAt, time.Unix(sess.LastSeen, 0).Add(idle).Unix())
	}
	w.Header().Set("Content-Type", "application/json")
	return json.NewEncoder(w).Encode(info)
}

package caddyoidc

import (
	"context"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"html/template"
	"net/http"
	"net/url"
	"time"

	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"go.uber.org/zap"

	"github.com/caddy-oidc/caddy-oidc/cache"
	"github.com/caddy-oidc/caddy-oidc/internal/provider"
	"github.com/caddy-oidc/caddy-oidc/session"
)

// maxLogoutBody bounds a back-channel logout request: a logout token is a
// few KB at most.
const maxLogoutBody = 64 << 10

// logoutTokenMaxAge bounds how old a logout token's iat may be.
const logoutTokenMaxAge = 5 * time.Minute

// serveBackchannelLogout implements OpenID Connect Back-Channel Logout 1.0:
// the IdP POSTs a signed logout token; every session of its sid (or, with
// no sid, of its sub) ends on every replica.
//
// The revocation is recorded before the replay check, and is dated by the
// token's iat (plus the clock skew, at most now), so that recording it
// again changes nothing: when Valkey is down and the replay check cannot
// run, the logout still lands (here at once, on the other replicas when
// Valkey takes the write) and a replayed token can only log out again.
func (h *Handler) serveBackchannelLogout(w http.ResponseWriter, r *http.Request) error {
	w.Header().Set("Cache-Control", "no-store")
	if r.Method != http.MethodPost {
		w.Header().Set("Allow", "POST")
		return jsonError(w, http.StatusMethodNotAllowed, "invalid_request", "use POST")
	}
	r.Body = http.MaxBytesReader(w, r.Body, maxLogoutBody)
	if err := r.ParseForm(); err != nil {
		return jsonError(w, http.StatusBadRequest, "invalid_request", "unreadable or oversized form")
	}
	raw := r.PostForm.Get("logout_token")
	if raw == "" {
		return jsonError(w, http.StatusBadRequest, "invalid_request", "missing logout_token")
	}
	lt, err := h.rp.VerifyLogoutToken(r.Context(), raw, logoutTokenMaxAge)
	if err != nil {
		if errors.Is(err, provider.ErrUnavailable) {
			w.Header().Set("Retry-After", "10")
			return jsonError(w, http.StatusServiceUnavailable, "temporarily_unavailable", "the IdP's keys cannot be fetched")
		}
		if ok, n := bcRefusedLog.Allow(); ok {
			h.logger.Info("back-channel logout token refused", zap.Error(err), zap.Int64("refused_since_last_log", n))
		}
		return jsonError(w, http.StatusBadRequest, "invalid_request", "invalid logout token")
	}
	kind, id := revokeSID, lt.SID
	if id == "" {
		kind, id = revokeSubject, lt.Subject
	}
	if len(id) > maxRevocationID || len(lt.Subject) > maxRevocationID {
		if ok, n := bcRefusedLog.Allow(); ok {
			h.logger.Info("back-channel logout token refused: sid or sub longer than 255 bytes", zap.Int("sid_len", len(lt.SID)),
				zap.Int("sub_len", len(lt.Subject)), zap.Int64("refused_since_last_log", n))
		}
		return jsonError(w, http.StatusBadRequest, "invalid_request", "sid or sub too long")
	}
	at := time.Now()
	if !lt.IssuedAt.IsZero() {
		if t := lt.IssuedAt.Add(time.Duration(h.ClockSkew)); t.Before(at) {
			at = t
		}
	}
	if err := h.revs.revoke(r.Context(), kind, h.Issuer, id, at, time.Duration(h.Session.Lifetime), fromIdP); err != nil {
		// The set is full (logged by it): the IdP may retry later.
		w.Header().Set("Retry-After", "60")
		return jsonError(w, http.StatusServiceUnavailable, "temporarily_unavailable", "the logout could not be recorded")
	}
	// A replayed token is refused: its jti is remembered (across replicas)
	// for as long as the token could be accepted.
	sum := sha256.Sum256([]byte(h.Issuer + "|" + lt.JTI))
	replay := "checked"
	fresh, err := h.app.addOnce(context.WithoutCancel(r.Context()), cache.ReplayKey(h.ns, hex.EncodeToString(sum[:])), 2*(logoutTokenMaxAge+time.Duration(h.ClockSkew)))
	switch {
	case err != nil:
		replay = "unavailable"
	case !fresh:
		if ok, n := bcRefusedLog.Allow(); ok {
			h.logger.Info("back-channel logout token replayed; refused", zap.String("sub", lt.Subject), zap.Int64("refused_since_last_log", n))
		}
		return jsonError(w, http.StatusBadRequest, "invalid_request", "logout token replayed")
	}
	h.logger.Info("logout", zap.String("kind", "backchannel"), zap.String("by", kind), zap.String("sub", lt.Subject), zap.String("replay_check", replay))
	w.WriteHeader(http.StatusOK)
	return nil
}

func jsonError(w http.ResponseWriter, status int, code, desc string) error {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	return json.NewEncoder(w).Encode(map[string]string{"error": code, "error_description": desc})
}

var frontchannelPage = template.Must(template.New("fc").Parse(`<!doctype html><meta charset="utf-8"><title>Logged out</title><p>Logged out.</p>`))

// serveFrontchannelLogout implements OpenID Connect Front-Channel Logout
// 1.0 (§3): the IdP loads this URL in an iframe with iss and sid, and the
// browser's own session ends if, and only if, its issuer and sid are those.
// It ends as RP logout ends it (cookie cleared, the session revoked on
// every replica, its cache entry deleted). Anything else (no cookie,
// another sid, a bare GET from anywhere) changes nothing and stores
// nothing: the sid is the only proof that the IdP sent the request. A
// cross-site iframe carries the session cookie only with cookie_samesite
// none. Only this response may be framed, and only by the IdP.
func (h *Handler) serveFrontchannelLogout(w http.ResponseWriter, r *http.Request) error {
	w.Header().Set("Cache-Control", "no-store")
	if r.Method != http.MethodGet && r.Method != http.MethodHead {
		w.Header().Set("Allow", "GET")
		return caddyhttp.Error(http.StatusMethodNotAllowed, errors.New("front-channel logout: use GET"))
	}
	origin := h.Issuer
	if u, err := url.Parse(h.Issuer); err == nil {
		origin = u.Scheme + "://" + u.Host
	}
	w.Header().Set("Content-Security-Policy", fmt.Sprintf("default-src 'none'; frame-ancestors %s", origin))
	w.Header().Set("Content-Type", "text/html; charset=utf-8")
	w.Header().Set("Referrer-Policy", "no-referrer")
	if r.Method == http.MethodHead {
		return nil
	}
	q := r.URL.Query()
	iss, sid := q.Get("iss"), q.Get("sid")
	now := time.Now()
	loaded := h.sessions.Load(r, now)
	sess := loaded.Session
	switch {
	case loaded.Refusal == session.Unavailable:
		// The session cannot be read, so its sid cannot be compared: no logout.
		if ok, n := fcRefusedLog.Allow(); ok {
			h.logger.Info("front-channel logout not applied: the session store is unavailable", zap.Int64("refused_since_last_log", n))
		}
		w.Header().Set("Retry-After", "5")
		w.WriteHeader(http.StatusServiceUnavailable)
		return nil
	case sess == nil, iss != h.Issuer, sid == "", subtle.ConstantTimeCompare([]byte(sid), []byte(sess.SID())) != 1:
		if ok, n := fcRefusedLog.Allow(); ok {
			why := "no session"
			if sess != nil {
				why = "iss or sid do not match the session"
			}
			h.logger.Info("front-channel logout ignored", zap.String("reason", why), zap.Int64("ignored_since_last_log", n))
		}
	case loaded.Refusal == session.Revoked:
		h.sessions.Clear(w, r, sess) // a copy of a cookie already logged out
	default:
		h.sessions.Clear(w, r, sess)
		if err := h.revs.revoke(r.Context(), revokeSession, h.Issuer, sess.LocalID, now, time.Duration(h.Session.Lifetime), fromSession); err != nil {
			h.warned.logoutDegraded.Warn(h.logger, "front-channel logout: copies of this session's cookie stay valid", zap.String("sub", sess.Subject()), zap.Error(err))
		}
		h.logger.Info("logout", zap.String("kind", "frontchannel"), zap.String("sub", sess.Subject()))
	}
	return frontchannelPage.Execute(w, nil)
}

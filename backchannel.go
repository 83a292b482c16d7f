package caddyoidc

import (
	"crypto/sha256"
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
)

// maxLogoutBody bounds a back-channel logout request: a logout token is a
// few KB at most.
const maxLogoutBody = 64 << 10

// logoutTokenMaxAge bounds how old a logout token's iat may be.
const logoutTokenMaxAge = 5 * time.Minute

// serveBackchannelLogout implements OpenID Connect Back-Channel Logout 1.0:
// the IdP POSTs a signed logout token; every session of its sid (or, with
// no sid, of its sub) ends on every replica.
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
	lt, err := h.prov.VerifyLogoutToken(r.Context(), raw, h.ClientID, time.Duration(h.ClockSkew), logoutTokenMaxAge)
	if err != nil {
		if errors.Is(err, provider.ErrUnavailable) {
			w.Header().Set("Retry-After", "10")
			return jsonError(w, http.StatusServiceUnavailable, "temporarily_unavailable", "the IdP's keys cannot be fetched")
		}
		h.logger.Info("back-channel logout token refused", zap.Error(err))
		return jsonError(w, http.StatusBadRequest, "invalid_request", "invalid logout token")
	}
	// A replayed token is refused: its jti is remembered (across replicas)
	// for as long as the token could be accepted.
	sum := sha256.Sum256([]byte(h.Issuer + "|" + lt.JTI))
	adder, ok := h.store.(cache.Adder)
	if !ok {
		return jsonError(w, http.StatusServiceUnavailable, "temporarily_unavailable", "no replay store")
	}
	fresh, err := adder.Add(r.Context(), cache.Key("jti", hex.EncodeToString(sum[:])), []byte{1}, 2*(logoutTokenMaxAge+time.Duration(h.ClockSkew)))
	if err != nil {
		w.Header().Set("Retry-After", "5")
		return jsonError(w, http.StatusServiceUnavailable, "temporarily_unavailable", "the replay check is unavailable")
	}
	if !fresh {
		return jsonError(w, http.StatusBadRequest, "invalid_request", "logout token replayed")
	}
	kind, id := revokeSID, lt.SID
	if id == "" {
		kind, id = revokeSubject, lt.Subject
	}
	if err := h.revs.revoke(r.Context(), kind, h.Issuer, id, time.Duration(h.SessionLifetime)); err != nil {
		// Ended here; other replicas learn it when the shared cache is back.
		h.logger.Warn("back-channel logout recorded in this process only", zap.Error(err))
	}
	h.logger.Info("back-channel logout", zap.String("by", kind), zap.String("sub", lt.Subject))
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
// 1.0: the IdP loads this URL in an iframe with iss and sid; every session
// of that sid ends. Only this response may be framed, and only by the IdP.
func (h *Handler) serveFrontchannelLogout(w http.ResponseWriter, r *http.Request) error {
	w.Header().Set("Cache-Control", "no-store")
	if r.Method != http.MethodGet && r.Method != http.MethodHead {
		w.Header().Set("Allow", "GET")
		return caddyhttp.Error(http.StatusMethodNotAllowed, errors.New("front-channel logout: use GET"))
	}
	q := r.URL.Query()
	if q.Get("iss") != h.Issuer || q.Get("sid") == "" {
		return caddyhttp.Error(http.StatusBadRequest, errors.New("front-channel logout: iss must be the issuer and sid is required"))
	}
	if err := h.revs.revoke(r.Context(), revokeSID, h.Issuer, q.Get("sid"), time.Duration(h.SessionLifetime)); err != nil {
		h.logger.Warn("front-channel logout recorded in this process only", zap.Error(err))
	}
	// The browser's own cookie goes too, when the iframe carries it.
	h.endSession(w, r, nil)
	origin := h.Issuer
	if u, err := url.Parse(h.Issuer); err == nil {
		origin = u.Scheme + "://" + u.Host
	}
	w.Header().Set("Content-Security-Policy", fmt.Sprintf("frame-ancestors %s", origin))
	w.Header().Set("Content-Type", "text/html; charset=utf-8")
	h.logger.Info("front-channel logout")
	return frontchannelPage.Execute(w, nil)
}

package caddyoidc

import (
	"context"
	"html/template"
	"net/http"
	"net/url"
	"strings"
	"time"

	"go.uber.org/zap"
)

var confirmLogout = template.Must(template.New("logout").Parse(`<!doctype html>
<html><head><meta charset="utf-8"><title>Log out</title></head>
<body><form method="post" action="{{.}}"><p>Log out of this site?</p><button type="submit">Log out</button></form></body></html>
`))

// serveLogout is RP-initiated logout. A POST logs out (SameSite=Lax keeps
// the session cookie off cross-site POSTs, so another site cannot log a user
// out). A GET logs out only when the browser says it is same-origin or typed
// in; otherwise it gets a confirmation form that POSTs.
func (h *Handler) serveLogout(w http.ResponseWriter, r *http.Request) error {
	w.Header().Set("Cache-Control", "no-store")
	switch r.Method {
	case http.MethodPost:
	case http.MethodGet, http.MethodHead:
		if !sameOriginNavigation(r) {
			w.Header().Set("Content-Type", "text/html; charset=utf-8")
			w.Header().Set("X-Frame-Options", "DENY")
			w.Header().Set("Content-Security-Policy", "frame-ancestors 'none'")
			return confirmLogout.Execute(w, h.LogoutPath)
		}
	default:
		w.Header().Set("Allow", "GET, POST")
		w.WriteHeader(http.StatusMethodNotAllowed)
		return nil
	}

	now := time.Now()
	sess, _, _ := h.loadSession(r, now)
	h.endSession(w, r, sess)
	target := h.postLogoutURL(r)
	if sess != nil {
		h.logger.Info("logout", zap.String("sub", sess.Subject()))
		// A cookie is stateless: a copy kept elsewhere must die too, on
		// every replica.
		if err := h.revs.revoke(r.Context(), revokeSession, h.Issuer, sess.LocalID, time.Duration(h.SessionLifetime)); err != nil {
			h.logger.Warn("logout recorded in this process only", zap.Error(err))
		}
		if sess.RefreshToken != "" {
			// RFC 7009, best effort: the session is already gone locally.
			ctx, cancel := context.WithTimeout(r.Context(), 3*time.Second)
			if err := h.prov.Revoke(ctx, h.client, sess.RefreshToken, "refresh_token"); err != nil {
				h.logger.Warn("revoking the refresh token at logout failed", zap.Error(err))
			}
			cancel()
		}
		if d, err := h.prov.Discovery(r.Context()); err == nil && d.EndSessionEndpoint != "" {
			q := url.Values{"client_id": {h.ClientID}}
			if sess.IDToken != "" {
				q.Set("id_token_hint", sess.IDToken)
			}
			if target != "" {
				q.Set("post_logout_redirect_uri", target)
			}
			sep := "?"
			if strings.Contains(d.EndSessionEndpoint, "?") {
				sep = "&"
			}
			target = d.EndSessionEndpoint + sep + q.Encode()
		}
	}
	if target == "" {
		target = "/"
	}
	http.Redirect(w, r, target, http.StatusFound)
	return nil
}

// postLogoutURL is post_logout_redirect_uri made absolute on this request's host.
func (h *Handler) postLogoutURL(r *http.Request) string {
	p := h.PostLogoutRedirectURI
	if strings.HasPrefix(p, "/") {
		return h.scheme(r) + "://" + r.Host + p
	}
	return p
}

// sameOriginNavigation reports whether a GET came from this site or was
// typed in: Fetch Metadata when the browser sends it, else Origin/Referer.
func sameOriginNavigation(r *http.Request) bool {
	switch r.Header.Get("Sec-Fetch-Site") {
	case "same-origin", "none":
		return true
	case "":
	default:
		return false
	}
	for _, hv := range []string{r.Header.Get("Origin"), r.Header.Get("Referer")} {
		if hv == "" {
			continue
		}
		u, err := url.Parse(hv)
		return err == nil && u.Host == r.Host
	}
	return false
}

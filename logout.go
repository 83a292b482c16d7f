package caddyoidc

import (
	"context"
	"html/template"
	"net/http"
	"net/url"
	"strings"
	"time"

	"go.uber.org/zap"

	"github.com/caddy-oidc/caddy-oidc/internal/lograte"
	"github.com/caddy-oidc/caddy-oidc/session"
)

var confirmLogout = template.Must(template.New("logout").Parse(`<!doctype html>
<html><head><meta charset="utf-8"><title>Log out</title></head>
<body><form method="post" action="{{.}}"><p>Log out of this site?</p><button type="submit">Log out</button></form></body></html>
`))

type formField struct{ Name, Value string }

// Refusals that any request can cause are logged at most once per 10 s.
var (
	logoutRefusedLog lograte.Limit
	fcRefusedLog     lograte.Limit
	bcRefusedLog     lograte.Limit
)

// serveLogout is RP-initiated logout. A POST logs out when the browser says
// it comes from this origin (Fetch Metadata, else Origin, else Referer); a
// GET when it is a same-origin or typed-in top-level navigation. Anything
// else (another site, a sibling subdomain, an <img>, a prefetch, a client
// that says nothing) gets a confirmation form that POSTs from this origin.
func (h *Handler) serveLogout(w http.ResponseWriter, r *http.Request) error {
	w.Header().Set("Cache-Control", "no-store")
	status := http.StatusOK
	switch r.Method {
	case http.MethodPost:
		if sameOriginPost(r, h.scheme) {
			return h.logout(w, r)
		}
		status = http.StatusForbidden
	case http.MethodGet:
		if sameOriginNavigation(r, h.scheme) {
			return h.logout(w, r)
		}
	case http.MethodHead:
		// Safe by definition: never a logout.
	default:
		w.Header().Set("Allow", "GET, POST")
		w.WriteHeader(http.StatusMethodNotAllowed)
		return nil
	}
	if ok, n := logoutRefusedLog.Allow(); ok {
		h.logger.Info("logout refused: not from this origin; confirmation form sent", zap.String("method", r.Method),
			zap.String("sec_fetch_site", r.Header.Get("Sec-Fetch-Site")), zap.String("origin", originHost(r.Header.Get("Origin"))),
			zap.Int64("refused_since_last_log", n))
	}
	w.Header().Set("Content-Type", "text/html; charset=utf-8")
	w.Header().Set("X-Frame-Options", "DENY")
	w.Header().Set("Content-Security-Policy", "default-src 'none'; frame-ancestors 'none'; base-uri 'none'")
	// The form's POST then carries a Referer even in a browser that sends
	// no Origin, and the POST check accepts it.
	w.Header().Set("Referrer-Policy", "same-origin")
	w.WriteHeader(status)
	if r.Method == http.MethodHead {
		return nil
	}
	return confirmLogout.Execute(w, h.Logout.Path)
}

// logout ends the request's session: cookie cleared, session revoked on
// every replica (copies of the cookie die too), cache entry deleted,
// refresh token revoked at the IdP; then the browser goes to the IdP's
// end_session endpoint. When the shared cache cannot read a cache-store
// session, the session is revoked by the id in its cookie.
func (h *Handler) logout(w http.ResponseWriter, r *http.Request) error {
	now := time.Now()
	loaded := h.sessions.Load(r, now)
	sess := loaded.Session
	h.sessions.Clear(w, r, sess)
	ended := sess != nil
	if loaded.Refusal == session.Revoked {
		// A copy of a cookie already logged out: nothing more to end, no
		// call to the IdP and no ID token for whoever replays it.
		ended = false
		if ok, n := logoutRefusedLog.Allow(); ok {
			h.logger.Info("logout of a session already ended", zap.String("sub", sess.Subject()), zap.Int64("more_since_last_log", n))
		}
	} else if sess != nil {
		if err := h.revs.revoke(r.Context(), revokeSession, h.Issuer, sess.LocalID, now, time.Duration(h.Session.Lifetime), fromSession); err != nil {
			h.warned.logoutDegraded.Warn(h.logger, "logout: copies of this session's cookie stay valid", zap.String("sub", sess.Subject()), zap.Error(err))
		}
		h.logger.Info("logout", zap.String("kind", "rp"), zap.String("sub", sess.Subject()))
		if sess.RefreshToken != "" {
			// RFC 7009, best effort: the session is already gone locally.
			ctx, cancel := context.WithTimeout(context.WithoutCancel(r.Context()), 3*time.Second)
			if err := h.rpFor(sess).Revoke(ctx, sess.RefreshToken, "refresh_token"); err != nil {
				h.warned.logoutDegraded.Warn(h.logger, "revoking the refresh token at logout failed", zap.Error(err))
			}
			cancel()
		}
	} else if loaded.Refusal == session.Unavailable {
		// The store cannot say what the session is, but the cookie names
		// it: revoke that id, so the session is over wherever and whenever
		// it is read again.
		if id, ok := h.sessions.CacheID(r); ok {
			if err := h.revs.revoke(r.Context(), revokeCacheID, h.Issuer, cacheIDHash(id), now, time.Duration(h.Session.Lifetime), fromSession); err != nil {
				h.warned.logoutDegraded.Warn(h.logger, "logout while the session store is unavailable could not be recorded", zap.Error(err))
			} else {
				ended = true
				h.logger.Info("logout", zap.String("kind", "rp"), zap.String("session", cacheIDHash(id)[:12]),
					zap.String("note", "session store unavailable; revoked by cookie id"))
			}
		}
	}
	target := h.postLogoutURL(r)
	if ended {
		if d, err := h.rp.Discovery(r.Context()); err == nil && d.EndSessionEndpoint != "" {
			fields := []formField{{"client_id", h.Client.ID}}
			switch {
			case sess != nil && sess.IDToken != "":
				fields = append(fields, formField{"id_token_hint", sess.IDToken})
			case sess != nil && sess.Subject() != "":
				fields = append(fields, formField{"logout_hint", sess.Subject()})
			}
			if target != "" {
				fields = append(fields, formField{"post_logout_redirect_uri", target})
			}
			if h.Logout.EndSessionMethod == "get" {
				// A redirect puts its query in access logs and history:
				// never the ID token, only who is logging out.
				return h.endSessionRedirect(w, r, d.EndSessionEndpoint, sess, target)
			}
			return writeEndSessionForm(w, d.EndSessionEndpoint, fields)
		}
	}
	if target == "" {
		target = "/"
	}
	http.Redirect(w, r, target, http.StatusFound)
	return nil
}

// endSessionRedirect sends the browser to end_session by GET with client_id,
// logout_hint and post_logout_redirect_uri (RP-Initiated Logout 1.0 §2),
// for IdPs that refuse a POST there (panva's oidc-provider by default).
func (h *Handler) endSessionRedirect(w http.ResponseWriter, r *http.Request, endpoint string, sess *session.Session, target string) error {
	q := url.Values{"client_id": {h.Client.ID}}
	if sess != nil && sess.Subject() != "" {
		q.Set("logout_hint", sess.Subject())
	}
	if target != "" {
		q.Set("post_logout_redirect_uri", target)
	}
	sep := "?"
	if strings.Contains(endpoint, "?") {
		sep = "&"
	}
	w.Header().Set("Referrer-Policy", "no-referrer")
	http.Redirect(w, r, endpoint+sep+q.Encode(), http.StatusFound)
	return nil
}

// writeEndSessionForm carries the user to the IdP's end_session endpoint
// by POST (RP-Initiated Logout 1.0 §2 requires OPs to accept it): the ID
// token travels in the request body, never in a URL that access logs,
// proxies and browser history record. No Referer: the IdP learns nothing
// of the page.
func writeEndSessionForm(w http.ResponseWriter, action string, fields []formField) error {
	return writeFormPage(w, action, fields, "You are logged out of this site. Log out at the identity provider too?", "no-referrer")
}

// postLogoutURL is post_logout_redirect_uri made absolute on this request's host.
func (h *Handler) postLogoutURL(r *http.Request) string {
	p := h.Logout.PostLogoutRedirectURI
	if strings.HasPrefix(p, "/") {
		return h.scheme(r) + "://" + r.Host + p
	}
	return p
}

// sameOriginNavigation reports whether a GET is a top-level navigation from
// this origin or typed in: Fetch Metadata when the browser sends it, else
// Origin/Referer. Prefetches and subresources (an <img> on a page of this
// origin) are not.
func sameOriginNavigation(r *http.Request, scheme func(*http.Request) string) bool {
	if m := r.Header.Get("Sec-Fetch-Mode"); m != "" && m != "navigate" {
		return false
	}
	return sameOriginPost(r, scheme)
}

// sameOriginPost reports whether a POST comes from this origin. Without
// Fetch Metadata, Origin decides; without Origin, Referer. A POST with none
// of them is refused: every browser of the last years sends Origin on a
// POST, so what sends nothing is a script (which needs no CSRF defence and
// can add the header) or a browser whose privacy settings strip both, which
// then gets the confirmation form and logs out from there.
func sameOriginPost(r *http.Request, scheme func(*http.Request) string) bool {
	if isPrefetch(r) {
		return false
	}
	switch r.Header.Get("Sec-Fetch-Site") {
	case "same-origin", "none":
		// "none": started by the user (not forgeable by a page).
		return true
	case "":
	default:
		// cross-site, and same-site: a sibling subdomain is not this origin.
		return false
	}
	return originHeadersMatch(r, scheme)
}

// originHeadersMatch checks Origin, else Referer, against this request's
// origin. "Origin: null" (sandboxed frames, some redirects) is not a match.
func originHeadersMatch(r *http.Request, scheme func(*http.Request) string) bool {
	if o := r.Header.Get("Origin"); o != "" {
		return sameOrigin(r, o, scheme)
	}
	if ref := r.Header.Get("Referer"); ref != "" {
		return sameOrigin(r, ref, scheme)
	}
	return false
}

// sameOrigin compares the origin of raw with this request's: same host and
// port, and not http when this request is https (behind a TLS-terminating
// proxy the request may look like http while the browser says https).
func sameOrigin(r *http.Request, raw string, scheme func(*http.Request) string) bool {
	u, err := url.Parse(raw)
	if err != nil || u.Host == "" || !strings.EqualFold(u.Host, r.Host) {
		return false
	}
	switch u.Scheme {
	case "https":
		return true
	case "http":
		return scheme(r) == "http"
	}
	return false
}

func isPrefetch(r *http.Request) bool {
	return strings.Contains(r.Header.Get("Sec-Purpose"), "prefetch") || strings.EqualFold(r.Header.Get("Purpose"), "prefetch") ||
		strings.EqualFold(r.Header.Get("X-Moz"), "prefetch")
}

// originHost is the host of an Origin header, for logs.
func originHost(o string) string {
	if u, err := url.Parse(o); err == nil && u.Host != "" {
		return u.Host
	}
	if len(o) > 64 {
		return o[:64]
	}
	return o
}

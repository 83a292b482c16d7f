package caddyoidc

import (
	"crypto/sha256"
	"encoding/hex"
	"net/http"
	"strings"

	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
)

// Purposes of sealed values. Each is bound, with the route (issuer and
// client), into the AEAD's associated data by Handler.bind, so a value
// sealed for one purpose, key or route does not open as another.
const (
	purposeAttempt       = "attempt\x00" // + cookie name
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

package caddyoidc

import (
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"

	"github.com/caddy-oidc/caddy-oidc/internal/lograte"
)

// Step-up: a route may ask more of a login (acr_values, max_age) than the
// other routes that share its sessions. A session is checked against the
// route on every request; the login a route starts carries the route's
// requirements in its attempt, and the callback holds the IdP's answer to
// them, whichever route serves the callback.

// stepUpRefusedLog limits the log lines of logins the IdP did not step up.
var stepUpRefusedLog lograte.Limit

// errStepUpRefused marks a callback refused because the ID token does not
// satisfy what the login asked.
var errStepUpRefused = errors.New("the IdP did not satisfy the login's requirements")

// maxAgeSeconds is the route's max_age in whole seconds (0: none).
func (l *LoginConfig) maxAgeSeconds() int64 {
	return int64(time.Duration(l.MaxAge) / time.Second)
}

// stepUpNeeded says why a session does not satisfy this route ("" when it
// does), and whether the user must authenticate again (auth_time too old)
// rather than only at a higher level.
func (l *LoginConfig) stepUpNeeded(claims map[string]any, now time.Time, skew time.Duration) (reason string, reauth bool) {
	if len(l.ACRValues) > 0 {
		acr, _ := claims["acr"].(string)
		if !slices.Contains(l.ACRValues, acr) {
			return "acr", false
		}
	}
	if maxAge := l.maxAgeSeconds(); maxAge > 0 {
		authTime, ok := numericClaim(claims["auth_time"])
		if !ok || authTimeTooOld(authTime, maxAge, now, skew) {
			return "max_age", true
		}
	}
	return "", false
}

// authTimeTooOld applies max_age with the clock skew the other token times
// get, so that a login the callback accepts passes the route right after.
func authTimeTooOld(authTime, maxAge int64, now time.Time, skew time.Duration) bool {
	return now.Sub(time.Unix(authTime, 0)) > time.Duration(maxAge)*time.Second+skew
}

// numericClaim reads a JSON number claim (auth_time) as Unix seconds.
func numericClaim(v any) (int64, bool) {
	switch n := v.(type) {
	case float64:
		return int64(n), true
	case int64:
		return n, true
	case int:
		return int64(n), true
	case json.Number:
		i, err := n.Int64()
		return i, err == nil
	}
	return 0, false
}

// unmetBy checks the ID token of a login against what its attempt asked
// (OpenID Connect Core §3.1.2.1, §3.1.3.7 items 11-13): an acr among the
// acr_values, and with max_age an auth_time recent enough. The IdP may
// treat acr_values as a wish: an ID token that does not show it was met
// is refused, else the route would send the user straight back (a loop).
func (a *attempt) unmetBy(claims map[string]any, now time.Time, skew time.Duration) error {
	if len(a.ACR) > 0 {
		acr, has := claims["acr"].(string)
		switch {
		case !has:
			return fmt.Errorf("the ID token has no acr claim; the login asked for acr_values %q: %w", strings.Join(a.ACR, " "), errStepUpRefused)
		case !slices.Contains(a.ACR, acr):
			return fmt.Errorf("the ID token's acr %q is not among the acr_values %q the login asked for: %w", clipClaim(acr), strings.Join(a.ACR, " "), errStepUpRefused)
		}
	}
	if a.MaxAge > 0 {
		authTime, ok := numericClaim(claims["auth_time"])
		switch {
		case !ok:
			return fmt.Errorf("the ID token has no auth_time; the login asked for max_age %d: %w", a.MaxAge, errStepUpRefused)
		case authTimeTooOld(authTime, a.MaxAge, now, skew):
			return fmt.Errorf("the user authenticated %s ago, more than the max_age %ds the login asked for: %w",
				now.Sub(time.Unix(authTime, 0)).Round(time.Second), a.MaxAge, errStepUpRefused)
		}
	}
	return nil
}

func clipClaim(s string) string {
	if len(s) > 64 {
		return s[:64] + "..."
	}
	return s
}

// requireStepUp answers a request whose session does not satisfy this
// route. The session stays: it keeps working on routes that ask less. API
// clients get 401 with the RFC 9470 challenge, browsers a new login.
func (h *Handler) requireStepUp(w http.ResponseWriter, r *http.Request, sub, reason string, reauth bool) error {
	if c := h.logger.Check(zapcore.DebugLevel, "session does not satisfy this route; step-up login"); c != nil {
		c.Write(zap.String("sub", sub), zap.String("reason", reason), zap.String("path", r.URL.Path))
	}
	if isAPIRequest(r) && !h.preservable(r) {
		v := `Bearer realm="` + h.realm() + `", error="insufficient_user_authentication"`
		if len(h.Login.ACRValues) > 0 {
			v += `, acr_values="` + strings.Join(h.Login.ACRValues, " ") + `"`
		}
		if maxAge := h.Login.maxAgeSeconds(); maxAge > 0 {
			v += `, max_age=` + strconv.FormatInt(maxAge, 10)
		}
		w.Header().Set("WWW-Authenticate", v)
		w.Header().Set("Cache-Control", "no-store")
		return caddyhttp.Error(http.StatusUnauthorized, fmt.Errorf("the session does not satisfy this route's %s", reason))
	}
	return h.login(w, r, reauth)
}

// noteStepUpRefused logs a login the IdP did not step up, once per
// interval: the user gets 403 rather than a loop, and the operator learns
// why.
func (h *Handler) noteStepUpRefused(err error, claims map[string]any) {
	if ok, n := stepUpRefusedLog.Allow(); ok {
		h.logger.Warn("login refused: the IdP's ID token does not satisfy acr_values or max_age; is the IdP configured for them?",
			zap.String("sub", claimString(claims["sub"])), zap.Error(err), zap.Int64("more_since_last_log", n))
	}
}

// warnUncheckedStepUp warns of auth_param acr_values or max_age: a
// parameter alone is only a request, which the user can edit out of the
// URL; the subdirectives also check the IdP's answer.
func (h *Handler) warnUncheckedStepUp() {
	for _, name := range []string{"acr_values", "max_age"} {
		if _, ok := h.Login.AuthParams[name]; ok {
			h.logger.Warn("auth_param " + name + " is sent but the IdP's answer is never checked, so a user can log in without it; use the " + name + " subdirective instead")
		}
	}
}

// withPrompt adds value to a space-separated prompt parameter. "none"
// cannot go with any other value, so it gives way.
func withPrompt(prompt, value string) string {
	fields := strings.Fields(prompt)
	if slices.Contains(fields, value) {
		return prompt
	}
	fields = slices.DeleteFunc(fields, func(f string) bool { return f == "none" })
	return strings.Join(append(fields, value), " ")
}

package caddyoidc

import (
	"crypto/tls"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"

	"github.com/caddy-oidc/caddy-oidc/internal/testidp"
)

// TestCookieTossingFromASubdomain: on HTTPS the session cookie is
// __Host-oidc_session, which a sibling subdomain cannot set (browsers
// refuse __Host- cookies with a Domain). A plain oidc_session cookie tossed
// by evil.example.com is never read.
func TestCookieTossingFromASubdomain(t *testing.T) {
	idp := testidp.New()
	defer idp.Close()
	h := newTestHandler(t, idp, nil)
	// A valid session sealed for the plain-HTTP name...
	plain := loggedIn(t, h, map[string]any{"sub": "attacker"}, nil)
	r := request("GET", "https://app.example.com/")
	r.TLS = &tls.ConnectionState{}
	for _, c := range plain.Cookies() {
		r.AddCookie(c) // ...tossed under its plain name onto the HTTPS site
	}
	r.Header.Set("Accept", "application/json")
	w := httptest.NewRecorder()
	next := &recordNext{}
	if err := h.ServeHTTP(w, r, next); statusOf(err, w) != http.StatusUnauthorized || next.called {
		t.Errorf("a tossed non-__Host- cookie was used: %d", statusOf(err, w))
	}
	// And what the handler sets on HTTPS is a __Host- cookie: Secure, Path=/, no Domain.
	w = httptest.NewRecorder()
	lr := request("GET", "https://app.example.com/page")
	lr.TLS = &tls.ConnectionState{}
	_ = h.ServeHTTP(w, lr, &recordNext{})
	for _, c := range w.Result().Cookies() {
		if !strings.HasPrefix(c.Name, "__Host-") || !c.Secure || c.Path != "/" || c.Domain != "" {
			t.Errorf("cookie %s on HTTPS: Secure=%v Path=%q Domain=%q", c.Name, c.Secure, c.Path, c.Domain)
		}
	}
}

func TestOversizedInputIsBounded(t *testing.T) {
	idp := testidp.New()
	defer idp.Close()
	h := newTestHandler(t, idp, nil)
	for name, cookie := range map[string]string{
		"one huge cookie":    "oidc_session=" + strings.Repeat("A", 60_000),
		"too many chunks":    "oidc_session=50.AAAA; oidc_session_1=AAAA",
		"chunk count absurd": "oidc_session=99999999999999999999.A",
	} {
		r := request("GET", "/x")
		r.Header.Set("Cookie", cookie)
		w := httptest.NewRecorder()
		if err := h.ServeHTTP(w, r, &recordNext{}); statusOf(err, w) != http.StatusFound {
			t.Errorf("%s: got %d, want a login redirect", name, statusOf(err, w))
		}
	}
}

// TestGarbageFromTheIdP: HTML or broken JSON where JSON belongs is an
// unavailable IdP (5xx with Retry-After), never a crash or a session.
func TestGarbageFromTheIdP(t *testing.T) {
	t.Run("discovery", func(t *testing.T) {
		srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			w.Header().Set("Content-Type", "text/html")
			_, _ = w.Write([]byte("<html>maintenance</html>"))
		}))
		defer srv.Close()
		h := newTestHandler(t, &testidp.IdP{Issuer: srv.URL}, nil)
		w := httptest.NewRecorder()
		err := h.ServeHTTP(w, request("GET", "/"), &recordNext{})
		if statusOf(err, w) != http.StatusServiceUnavailable || w.Header().Get("Retry-After") == "" {
			t.Errorf("HTML discovery: got %d", statusOf(err, w))
		}
	})
	t.Run("token endpoint", func(t *testing.T) {
		idp := testidp.New()
		defer idp.Close()
		h := newTestHandler(t, idp, nil)
		for _, body := range []string{"<html>oops</html>", `{"access_token": `, `{"token_type":"Bearer"}`} {
			attempt, q := startLogin(t, h, "/")
			idp.OnToken(func(w http.ResponseWriter, r *http.Request) { _, _ = w.Write([]byte(body)) })
			w, err := callback(h, attempt, url.Values{"code": {"c"}, "state": {q.Get("state")}})
			if s := statusOf(err, w); s != http.StatusBadGateway || hasSessionCookie(w) {
				t.Errorf("token endpoint answering %q: got %d, want 502 and no session", body, s)
			}
		}
	})
}

func caddyDuration(d time.Duration) caddy.Duration { return caddy.Duration(d) }

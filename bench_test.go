package caddyoidc

import (
	"context"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"

	"github.com/caddy-oidc/caddy-oidc/internal/testidp"
	"github.com/caddy-oidc/caddy-oidc/session"
)

type nopNext struct{}

func (nopNext) ServeHTTP(http.ResponseWriter, *http.Request) error { return nil }

// typicalSession is what a Keycloak-like login leaves: an RS256 ID token, a
// JWT access token, a refresh token and a dozen claims.
func typicalSession() *session.Session {
	claims := map[string]any{
		"sub": "f3b2a1c4-5d6e-4f70-8192-a3b4c5d6e7f8", "email": "alice@example.com", "email_verified": true,
		"name": "Alice Liddell", "preferred_username": "alice", "given_name": "Alice", "family_name": "Liddell",
		"groups": []any{"admins", "staff", "grafana-editors"}, "sid": "8c1e2f3a-4b5c-6d7e-8f90-a1b2c3d4e5f6",
		"auth_time": float64(time.Now().Unix()), "acr": "1",
	}
	idt := strings.Repeat("x", 900)
	at := strings.Repeat("y", 1100)
	return session.New(claims, idt, at, strings.Repeat("z", 600), time.Now().Add(time.Hour), time.Now())
}

func benchRequests(b *testing.B, h *Handler) (cookieHeader string) {
	w := httptest.NewRecorder()
	r := httptest.NewRequest("GET", "/app", nil)
	if err := h.sessions.Save(w, r, typicalSession(), time.Now()); err != nil {
		b.Fatal(err)
	}
	var parts []string
	for _, c := range w.Result().Cookies() {
		parts = append(parts, c.Name+"="+c.Value)
	}
	return strings.Join(parts, "; ")
}

func newBenchRequest(cookie string) *http.Request {
	r := &http.Request{Method: "GET", URL: &url0, Header: http.Header{"Cookie": {cookie}, "Accept": {"text/html"}}, Host: "app.example.com"}
	ctx := context.WithValue(context.Background(), caddy.ReplacerCtxKey, caddy.NewReplacer())
	return r.WithContext(ctx)
}

var url0 = *httptest.NewRequest("GET", "/app", nil).URL

// BenchmarkBaseline is the harness alone (request, replacer); subtract it
// from BenchmarkAuthenticatedRequest to get the module's own cost.
func BenchmarkBaseline(b *testing.B) {
	cookie := "oidc_session=" + strings.Repeat("a", 3000)
	w := httptest.NewRecorder()
	b.ReportAllocs()
	for b.Loop() {
		r := newBenchRequest(cookie)
		_ = nopNext{}.ServeHTTP(w, r)
	}
}

// BenchmarkAuthenticatedRequest: a request with a valid session cookie
// through the handler: cookie open, session decode, rules, headers, cookie strip.
func BenchmarkAuthenticatedRequest(b *testing.B) {
	idp := testidp.New()
	defer idp.Close()
	h := newTestHandler(b, idp, func(h *Handler) { h.Allow.Groups = []string{"staff"} })
	cookie := benchRequests(b, h)
	b.ReportMetric(float64(len(cookie)), "cookie-bytes")
	w := httptest.NewRecorder()
	b.ReportAllocs()
	for b.Loop() {
		r := newBenchRequest(cookie)
		if err := h.ServeHTTP(w, r, nopNext{}); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkAuthenticatedRequestCacheMiss is the same request when the
// decoded-session cache misses (first request of a session on this
// instance): decryption and decoding every time.
func BenchmarkAuthenticatedRequestCacheMiss(b *testing.B) {
	idp := testidp.New()
	defer idp.Close()
	h := newTestHandler(b, idp, func(h *Handler) { h.Allow.Groups = []string{"staff"} })
	cfg := h.storeConfig()
	cfg.DecodedCacheSize = 1
	h.sessions = session.NewCookieStore(cfg)
	cookies := []string{benchRequests(b, h), benchRequests(b, h)}
	w := httptest.NewRecorder()
	b.ReportAllocs()
	i := 0
	for b.Loop() {
		i++
		r := newBenchRequest(cookies[i%2])
		if err := h.ServeHTTP(w, r, nopNext{}); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkAuthenticatedRequestCacheStore: session_store cache, the session
// in L1 (memory-only app): the cookie holds only the id.
func BenchmarkAuthenticatedRequestCacheStore(b *testing.B) {
	idp := testidp.New()
	defer idp.Close()
	h := newTestHandler(b, idp, func(h *Handler) { h.Allow.Groups = []string{"staff"}; h.Session.Store = "cache" })
	cookie := benchRequests(b, h)
	b.ReportMetric(float64(len(cookie)), "cookie-bytes")
	w := httptest.NewRecorder()
	b.ReportAllocs()
	for b.Loop() {
		r := newBenchRequest(cookie)
		if err := h.ServeHTTP(w, r, nopNext{}); err != nil {
			b.Fatal(err)
		}
	}
}

package caddyoidc

import (
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/lestrrat-go/jwx/v2/jwa"

	"github.com/caddy-oidc/caddy-oidc/internal/testidp"
)

func accessClaims(idp *testidp.IdP, mod func(c map[string]any)) map[string]any {
	c := map[string]any{"iss": idp.Issuer, "aud": "api", "sub": "svc-1", "exp": time.Now().Add(time.Hour).Unix(),
		"iat": time.Now().Unix(), "groups": []string{"robots"}, "email": "svc@example.com"}
	if mod != nil {
		mod(c)
	}
	return c
}

func bearerRequest(h *Handler, token string) (*httptest.ResponseRecorder, *recordNext, error) {
	r := request("GET", "/api/items")
	r.Header.Set("Authorization", "Bearer "+token)
	r.Header.Set("X-Auth-Email", "forged@evil.example")
	w := httptest.NewRecorder()
	next := &recordNext{}
	err := h.ServeHTTP(w, r, next)
	return w, next, err
}

func TestBearerJWT(t *testing.T) {
	idp := testidp.New()
	defer idp.Close()
	h := newTestHandler(t, idp, func(h *Handler) { h.Bearer = &BearerConfig{Audience: []string{"api"}} })

	w, next, err := bearerRequest(h, idp.Sign(accessClaims(idp, nil)))
	if err != nil || !next.called {
		t.Fatalf("valid JWT access token: %d %v", w.Code, err)
	}
	if got := next.req.Header.Get("X-Auth-Email"); got != "svc@example.com" {
		t.Errorf("identity header %q", got)
	}
	if len(w.Result().Cookies()) != 0 {
		t.Error("a bearer request created a cookie")
	}
	for name, tok := range map[string]string{
		"wrong aud":             idp.Sign(accessClaims(idp, func(c map[string]any) { c["aud"] = "other" })),
		"expired":               idp.Sign(accessClaims(idp, func(c map[string]any) { c["exp"] = time.Now().Add(-time.Hour).Unix() })),
		"wrong issuer":          idp.Sign(accessClaims(idp, func(c map[string]any) { c["iss"] = "https://evil.example" })),
		"alg none":              testidp.Unsigned(accessClaims(idp, nil)),
		"HS256 with public key": testidp.SignWith(jwa.HS256, idp.PublicKeyBytes(), "k1", accessClaims(idp, nil)),
		"unknown kid":           testidp.SignWith(jwa.RS256, testidp.ForeignKey("k-unknown"), "k-unknown", accessClaims(idp, nil)),
		"no exp":                idp.Sign(accessClaims(idp, func(c map[string]any) { delete(c, "exp") })),
	} {
		w, next, err := bearerRequest(h, tok)
		if statusOf(err, w) != http.StatusUnauthorized || next.called || !strings.Contains(w.Header().Get("WWW-Authenticate"), `error="invalid_token"`) {
			t.Errorf("%s: got %d (WWW-Authenticate %q), want 401 invalid_token", name, statusOf(err, w), w.Header().Get("WWW-Authenticate"))
		}
	}
}

func TestBearerIntrospection(t *testing.T) {
	idp := testidp.New()
	defer idp.Close()
	h := newTestHandler(t, idp, func(h *Handler) { h.Bearer = &BearerConfig{} })
	idp.OnIntrospect(func(w http.ResponseWriter, r *http.Request) {
		_ = r.ParseForm()
		active := r.PostForm.Get("token") == "opaque-good"
		if u, _, ok := r.BasicAuth(); !ok || u != "app" {
			w.WriteHeader(http.StatusUnauthorized)
			return
		}
		_ = json.NewEncoder(w).Encode(map[string]any{"active": active, "client_id": "app", "sub": "user-9", "email": "nine@example.com", "exp": time.Now().Add(time.Hour).Unix()})
	})
	for range 3 {
		w, next, err := bearerRequest(h, "opaque-good")
		if err != nil || !next.called || next.req.Header.Get("X-Auth-Email") != "nine@example.com" {
			t.Fatalf("active opaque token: %d %v", w.Code, err)
		}
	}
	if n := idp.IntrospectHits.Load(); n != 1 {
		t.Errorf("%d introspection calls for 3 requests with one token, want 1 (cached)", n)
	}
	if w, _, err := bearerRequest(h, "opaque-bad"); statusOf(err, w) != http.StatusUnauthorized {
		t.Errorf("inactive token: got %d, want 401", statusOf(err, w))
	}
	idp.OnIntrospect(nil) // the IdP is down
	if w, _, err := bearerRequest(h, "opaque-other"); statusOf(err, w) != http.StatusServiceUnavailable {
		t.Errorf("IdP down: got %d, want 503 (not 200, not 401)", statusOf(err, w))
	}
}

func TestBearerOffByDefault(t *testing.T) {
	idp := testidp.New()
	defer idp.Close()
	h := newTestHandler(t, idp, nil)
	w, next, err := bearerRequest(h, idp.Sign(accessClaims(idp, func(c map[string]any) { c["aud"] = "app" })))
	if next.called || statusOf(err, w) != http.StatusFound {
		t.Errorf("bearer off: got %d, passed=%v; want the token ignored (no session: login)", statusOf(err, w), next.called)
	}
}

func BenchmarkBearerCacheHit(b *testing.B) {
	idp := testidp.New()
	defer idp.Close()
	h := newTestHandler(b, idp, func(h *Handler) { h.Bearer = &BearerConfig{Audience: []string{"api"}} })
	tok := idp.Sign(accessClaims(idp, nil))
	w := httptest.NewRecorder()
	auth := "Bearer " + tok
	b.ReportAllocs()
	for b.Loop() {
		r := newBenchRequest("")
		r.Header.Set("Authorization", auth)
		if err := h.ServeHTTP(w, r, nopNext{}); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkBearerCacheMiss(b *testing.B) {
	idp := testidp.New()
	defer idp.Close()
	h := newTestHandler(b, idp, func(h *Handler) { h.Bearer = &BearerConfig{Audience: []string{"api"}} })
	tok := idp.Sign(accessClaims(idp, nil))
	w := httptest.NewRecorder()
	auth := "Bearer " + tok
	b.ReportAllocs()
	for b.Loop() {
		h.tokens.verified = newBearerCache(1)
		r := newBenchRequest("")
		r.Header.Set("Authorization", auth)
		if err := h.ServeHTTP(w, r, nopNext{}); err != nil {
			b.Fatal(err)
		}
	}
}

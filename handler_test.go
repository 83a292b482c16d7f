package caddyoidc

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"github.com/lestrrat-go/jwx/v2/jwa"
	"go.uber.org/zap"

	"github.com/caddy-oidc/caddy-oidc/cache"
	"github.com/caddy-oidc/caddy-oidc/internal/provider"
	"github.com/caddy-oidc/caddy-oidc/internal/testidp"
	"github.com/caddy-oidc/caddy-oidc/refresh"
	"github.com/caddy-oidc/caddy-oidc/session"
)

const testSecret = "unit-test-session-secret-0123456789abcdef"

// newTestHandler provisions a handler as Provision does, against a fake
// IdP, without a running Caddy.
func newTestHandler(t testing.TB, idp *testidp.IdP, mod func(h *Handler)) *Handler {
	t.Helper()
	h := &Handler{Issuer: idp.Issuer, Client: ClientConfig{ID: "app", Secret: "s3cret"}, Session: SessionConfig{Secrets: []string{testSecret}},
		Header: map[string]string{"X-Auth-Email": "{http.auth.user.email}", "X-Auth-Groups": "{http.auth.user.groups}"}}
	if mod != nil {
		mod(h)
	}
	if err := h.provision(caddy.Context{}, zap.NewNop()); err != nil {
		t.Fatal(err)
	}
	app := newTestApp(t)
	if err := h.attach(app); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = h.Cleanup() })
	return h
}

// newTestApp is an oidc app on memory alone, as without configuration.
func newTestApp(t testing.TB) *App {
	t.Helper()
	set, _ := newCacheSet(CacheConfig{Backend: "memory", L1MaxBytes: 1 << 20, L1MaxEntries: 1000})
	app := &App{coordinator: refresh.New[*refreshResult](refresh.Options{IsDefinitive: isDefinitive}), caches: set}
	t.Cleanup(func() { _ = app.coordinator.Destruct(); _ = set.Destruct() })
	return app
}

// request makes a request with a Caddy replacer in its context, as Caddy's server does.
func request(method, target string) *http.Request {
	r := httptest.NewRequest(method, target, nil)
	repl := caddy.NewReplacer()
	ctx := context.WithValue(r.Context(), caddy.ReplacerCtxKey, repl)
	return r.WithContext(ctx)
}

type recordNext struct {
	called bool
	req    *http.Request
}

func (n *recordNext) ServeHTTP(w http.ResponseWriter, r *http.Request) error {
	n.called, n.req = true, r
	w.WriteHeader(http.StatusOK)
	return nil
}

func statusOf(err error, w *httptest.ResponseRecorder) int {
	if he, ok := err.(caddyhttp.HandlerError); ok {
		return he.StatusCode
	}
	return w.Code
}

// startLogin runs a browser request through the handler and returns the
// attempt cookie and the authorization request's parameters.
func startLogin(t *testing.T, h *Handler, target string) (*http.Cookie, url.Values) {
	t.Helper()
	w := httptest.NewRecorder()
	if err := h.ServeHTTP(w, request("GET", target), &recordNext{}); err != nil {
		t.Fatal(err)
	}
	if w.Code != http.StatusFound {
		t.Fatalf("got %d, want 302 to the IdP", w.Code)
	}
	loc, _ := url.Parse(w.Header().Get("Location"))
	cookies := w.Result().Cookies()
	if len(cookies) != 1 {
		t.Fatalf("want one attempt cookie, got %d", len(cookies))
	}
	return cookies[0], loc.Query()
}

func callback(h *Handler, attempt *http.Cookie, q url.Values) (*httptest.ResponseRecorder, error) {
	r := request("GET", "/oauth2/callback?"+q.Encode())
	r.AddCookie(attempt)
	w := httptest.NewRecorder()
	err := h.ServeHTTP(w, r, &recordNext{})
	return w, err
}

func hasSessionCookie(w *httptest.ResponseRecorder) bool {
	for _, c := range w.Result().Cookies() {
		if c.Name == DefaultCookieName && c.MaxAge >= 0 && c.Value != "" {
			return true
		}
	}
	return false
}

func TestCallbackRefusesBadIDTokens(t *testing.T) {
	idp := testidp.New()
	defer idp.Close()
	h := newTestHandler(t, idp, nil)
	for name, mint := range map[string]func(nonce string) string{
		"bad signature": func(n string) string {
			return testidp.SignWith(jwa.RS256, testidp.ForeignKey("k1"), "k1", idp.Claims("app", n))
		},
		"wrong aud": func(n string) string {
			c := idp.Claims("other", n)
			return idp.Sign(c)
		},
		"expired": func(n string) string {
			c := idp.Claims("app", n)
			c["exp"] = time.Now().Add(-time.Hour).Unix()
			return idp.Sign(c)
		},
		"wrong nonce": func(n string) string { return idp.Sign(idp.Claims("app", "not-"+n)) },
		"alg none":    func(n string) string { return testidp.Unsigned(idp.Claims("app", n)) },
	} {
		t.Run(name, func(t *testing.T) {
			attempt, q := startLogin(t, h, "/page")
			idp.OnToken(testidp.TokenResponse(mint(q.Get("nonce")), nil))
			w, err := callback(h, attempt, url.Values{"code": {"c"}, "state": {q.Get("state")}})
			if s := statusOf(err, w); s < 400 || s > 499 {
				t.Errorf("got %d (%v), want a 4xx", s, err)
			}
			if hasSessionCookie(w) {
				t.Error("a session cookie was set")
			}
		})
	}
	t.Run("valid token logs in and returns to the page", func(t *testing.T) {
		attempt, q := startLogin(t, h, "/page?a=1")
		if q.Get("redirect_uri") != "http://example.com/oauth2/callback" {
			t.Errorf("redirect_uri %q, want the request's host", q.Get("redirect_uri"))
		}
		idp.OnToken(testidp.TokenResponse(idp.Sign(idp.Claims("app", q.Get("nonce"))), map[string]any{"refresh_token": "rt"}))
		w, err := callback(h, attempt, url.Values{"code": {"c"}, "state": {q.Get("state")}, "iss": {idp.Issuer}})
		if err != nil || w.Code != http.StatusFound || w.Header().Get("Location") != "/page?a=1" || !hasSessionCookie(w) {
			t.Fatalf("got %d to %q (%v), session=%v", w.Code, w.Header().Get("Location"), err, hasSessionCookie(w))
		}
	})
}

func TestCallbackRequiresAnnouncedIss(t *testing.T) {
	idp := testidp.New()
	defer idp.Close()
	idp.SetDiscovery("authorization_response_iss_parameter_supported", true)
	h := newTestHandler(t, idp, nil)
	attempt, q := startLogin(t, h, "/")
	idp.OnToken(testidp.TokenResponse(idp.Sign(idp.Claims("app", q.Get("nonce"))), nil))
	w, err := callback(h, attempt, url.Values{"code": {"c"}, "state": {q.Get("state")}})
	if statusOf(err, w) != http.StatusBadRequest || idp.TokenHits.Load() != 0 {
		t.Errorf("a callback without iss from an IdP that announces it: got %d, %d token calls", statusOf(err, w), idp.TokenHits.Load())
	}
}

func TestSafeReturnTo(t *testing.T) {
	for in, want := range map[string]string{
		"/":                      "/",
		"/a/b?c=d":               "/a/b?c=d",
		"//evil.example":         "/",
		"//evil.example/x":       "/",
		"/\\evil.example":        "/",
		"/\\/evil.example":       "/",
		"https://evil.example/":  "/",
		"javascript:alert(1)":    "/",
		"":                       "/",
		"evil.example":           "/",
		"/ok\r\nSet-Cookie: x=y": "/",
		"/%2F%2Fevil.example":    "/%2F%2Fevil.example",
		"/path//double?next=//x": "/path//double?next=//x",
	} {
		if got := safeReturnTo(in); got != want {
			t.Errorf("safeReturnTo(%q) = %q, want %q", in, got, want)
		}
	}
}

func TestRawBackslashPathReturnsHome(t *testing.T) {
	idp := testidp.New()
	defer idp.Close()
	h := newTestHandler(t, idp, nil)
	r := request("GET", "/")
	r.RequestURI = "/\\evil.example"
	r.URL.Path = "/\\evil.example"
	w := httptest.NewRecorder()
	if err := h.ServeHTTP(w, r, &recordNext{}); err != nil {
		t.Fatal(err)
	}
	c := w.Result().Cookies()[0]
	pt, _, err := h.codec.Open(h.bind(purposeAttempt+c.Name), c.Value)
	if err != nil {
		t.Fatal(err)
	}
	var a attempt
	_ = json.Unmarshal(pt, &a)
	if a.ReturnTo != "/" {
		t.Errorf("return-to %q, want /", a.ReturnTo)
	}
}

// loggedIn returns a request carrying a valid session cookie for claims.
func loggedIn(t testing.TB, h *Handler, claims map[string]any, mod func(s *session.Session)) *http.Request {
	t.Helper()
	now := time.Now()
	s := session.New(claims, "idt", "at", "", time.Time{}, now)
	if mod != nil {
		mod(s)
	}
	w := httptest.NewRecorder()
	r := request("GET", "/app")
	if err := h.sessions.Save(w, r, s, now); err != nil {
		t.Fatal(err)
	}
	for _, c := range w.Result().Cookies() {
		r.AddCookie(c)
	}
	return r
}

func TestIdentityReachesNextHandler(t *testing.T) {
	idp := testidp.New()
	defer idp.Close()
	h := newTestHandler(t, idp, func(h *Handler) { h.Header["X-Realm-Roles"] = "{http.auth.user.claims.realm_access.roles}" })
	claims := map[string]any{"sub": "u1", "email": "u1@example.com", "groups": []any{"a", "b"},
		"realm_access": map[string]any{"roles": []any{"r1", "r2"}}, "https://ns.example/tier": "gold"}
	r := loggedIn(t, h, claims, nil)
	r.Header.Set("X-Auth-Email", "forged@evil.example")
	r.Header.Add("Cookie", "theme=dark")
	next := &recordNext{}
	w := httptest.NewRecorder()
	if err := h.ServeHTTP(w, r, next); err != nil || !next.called {
		t.Fatalf("authenticated request not passed on: %v", err)
	}
	got := next.req.Header
	if got.Get("X-Auth-Email") != "u1@example.com" || len(got.Values("X-Auth-Email")) != 1 {
		t.Errorf("X-Auth-Email %q", got.Values("X-Auth-Email"))
	}
	if got.Get("X-Auth-Groups") != "a,b" || got.Get("X-Realm-Roles") != "r1,r2" {
		t.Errorf("groups %q, nested roles %q", got.Get("X-Auth-Groups"), got.Get("X-Realm-Roles"))
	}
	if ck := got.Get("Cookie"); ck != "theme=dark" {
		t.Errorf("Cookie passed on: %q, want only the application's", ck)
	}
	repl := r.Context().Value(caddy.ReplacerCtxKey).(*caddy.Replacer)
	for ph, want := range map[string]string{
		"{http.auth.user.id}":                             "u1",
		"{http.auth.user.email}":                          "u1@example.com",
		"{http.auth.user.claims.https://ns.example/tier}": "gold",
		"{http.auth.user.claims.missing}":                 "",
	} {
		if v := repl.ReplaceAll(ph, ""); v != want {
			t.Errorf("%s = %q, want %q", ph, v, want)
		}
	}
	if v, _ := repl.Get("http.auth.user.groups"); v.(ClaimList).String() != "a,b" {
		t.Errorf("groups placeholder is %T %v, want a ClaimList", v, v)
	}
}

func TestAllowRules(t *testing.T) {
	idp := testidp.New()
	defer idp.Close()
	alice := map[string]any{"sub": "a1", "email": "Alice@Example.com", "email_verified": true, "groups": []any{"staff"}, "roles": []any{"editor"}}
	unverified := map[string]any{"sub": "m1", "email": "mallory@example.com", "email_verified": false}
	cases := []struct {
		name   string
		rules  func(h *Handler)
		claims map[string]any
		want   int
	}{
		{"no rules", func(h *Handler) {}, alice, 200},
		{"user by email, any case", func(h *Handler) { h.Allow.Users = []string{"alice@example.com"} }, alice, 200},
		{"user by sub", func(h *Handler) { h.Allow.Users = []string{"a1"} }, alice, 200},
		{"other user", func(h *Handler) { h.Allow.Users = []string{"bob@example.com"} }, alice, 403},
		{"domain", func(h *Handler) { h.Allow.Domains = []string{"example.com"} }, alice, 200},
		{"domain, unverified email", func(h *Handler) { h.Allow.Domains = []string{"example.com"} }, unverified, 403},
		{"user, unverified email", func(h *Handler) { h.Allow.Users = []string{"mallory@example.com"} }, unverified, 403},
		{"group", func(h *Handler) { h.Allow.Groups = []string{"admins", "staff"} }, alice, 200},
		{"missing group", func(h *Handler) { h.Allow.Groups = []string{"admins"} }, alice, 403},
		{"role", func(h *Handler) { h.Allow.Roles = []string{"editor"} }, alice, 200},
		{"any rule admits", func(h *Handler) { h.Allow.Groups = []string{"admins"}; h.Allow.Roles = []string{"editor"} }, alice, 200},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			h := newTestHandler(t, idp, tc.rules)
			w := httptest.NewRecorder()
			err := h.ServeHTTP(w, loggedIn(t, h, tc.claims, nil), &recordNext{})
			if got := statusOf(err, w); got != tc.want {
				t.Errorf("got %d, want %d", got, tc.want)
			}
		})
	}
}

func TestExpiredOrRotatedSessions(t *testing.T) {
	idp := testidp.New()
	defer idp.Close()
	h := newTestHandler(t, idp, func(h *Handler) { h.Session.Lifetime = caddy.Duration(time.Hour) })
	old := loggedIn(t, h, map[string]any{"sub": "u"}, func(s *session.Session) { s.Created = time.Now().Add(-2 * time.Hour).Unix() })
	old.Header.Set("Accept", "application/json")
	w := httptest.NewRecorder()
	if err := h.ServeHTTP(w, old, &recordNext{}); statusOf(err, w) != http.StatusUnauthorized {
		t.Errorf("a session past its lifetime: got %d, want 401", statusOf(err, w))
	}

	// A cookie under the previous secret is accepted and re-issued under the new one.
	r := loggedIn(t, h, map[string]any{"sub": "u"}, nil)
	rotated := newTestHandler(t, idp, func(h *Handler) {
		h.Session.Secrets = []string{"a-brand-new-secret-a-brand-new-secret-42", testSecret}
	})
	w = httptest.NewRecorder()
	if err := rotated.ServeHTTP(w, r, &recordNext{}); err != nil || w.Code != 200 {
		t.Fatalf("a cookie under the older secret: %d %v", w.Code, err)
	}
	if !hasSessionCookie(w) {
		t.Fatal("the cookie was not re-issued under the current secret")
	}
	c := w.Result().Cookies()[0]
	if _, wasOld, err := rotated.codec.Open(rotated.bind(session.PurposeCookie+c.Name), c.Value); err != nil || wasOld {
		t.Errorf("re-issued cookie: rotated=%v err=%v, want sealed by the current secret", wasOld, err)
	}
}

func TestChallengeKinds(t *testing.T) {
	idp := testidp.New()
	defer idp.Close()
	h := newTestHandler(t, idp, func(h *Handler) { h.Exclude = []string{"/healthz", "/public/*"} })
	for _, tc := range []struct {
		method, path string
		hdr          map[string]string
		want         int
	}{
		{"GET", "/", nil, 302},
		{"GET", "/", map[string]string{"Sec-Fetch-Mode": "navigate", "Accept": "text/html"}, 302},
		{"GET", "/api", map[string]string{"Accept": "application/json"}, 401},
		{"GET", "/api", map[string]string{"X-Requested-With": "XMLHttpRequest"}, 401},
		{"GET", "/api", map[string]string{"Sec-Fetch-Mode": "cors"}, 401},
		{"POST", "/form", nil, 401},
		{"GET", "/healthz", nil, 200},
		{"GET", "/public/a.css", nil, 200},
		{"GET", "/oauth2/backchannel_logout", nil, 405},
	} {
		r := request(tc.method, tc.path)
		for k, v := range tc.hdr {
			r.Header.Set(k, v)
		}
		w := httptest.NewRecorder()
		err := h.ServeHTTP(w, r, &recordNext{})
		if got := statusOf(err, w); got != tc.want {
			t.Errorf("%s %s %v: got %d, want %d", tc.method, tc.path, tc.hdr, got, tc.want)
		}
		if tc.want == 401 && !strings.HasPrefix(w.Header().Get("WWW-Authenticate"), "Bearer") {
			t.Errorf("%s %s: 401 without WWW-Authenticate", tc.method, tc.path)
		}
	}
}

func TestIdPDownAtLoginIs503(t *testing.T) {
	h := &Handler{Issuer: "http://127.0.0.1:1", Client: ClientConfig{ID: "app"}, Session: SessionConfig{Secrets: []string{testSecret}}}
	if err := h.provision(caddy.Context{}, zap.NewNop()); err != nil {
		t.Fatal(err)
	}
	app := newTestApp(t)
	if err := h.attach(app); err != nil {
		t.Fatal(err)
	}
	defer h.Cleanup()
	w := httptest.NewRecorder()
	err := h.ServeHTTP(w, request("GET", "/"), &recordNext{})
	if statusOf(err, w) != http.StatusServiceUnavailable || w.Header().Get("Retry-After") == "" {
		t.Errorf("got %d, want 503 with Retry-After", statusOf(err, w))
	}
}

var _ = provider.ErrInvalidToken

func TestCookieOfAnotherRouteIsRefused(t *testing.T) {
	idp := testidp.New()
	defer idp.Close()
	a := newTestHandler(t, idp, nil)
	b := newTestHandler(t, idp, func(h *Handler) { h.Session.Secrets = []string{"route-b-secret-route-b-secret-route-b-00"} })
	r := loggedIn(t, a, map[string]any{"sub": "u"}, nil)
	// Route A has the session decoded and cached; route B must still refuse it.
	if err := a.ServeHTTP(httptest.NewRecorder(), r.Clone(r.Context()), &recordNext{}); err != nil {
		t.Fatal(err)
	}
	r.Header.Set("Accept", "application/json")
	w := httptest.NewRecorder()
	if err := b.ServeHTTP(w, r, &recordNext{}); statusOf(err, w) != http.StatusUnauthorized {
		t.Errorf("route B accepted route A's cookie: %d", statusOf(err, w))
	}
}

// failingStore is a shared cache that is down.
type failingStore struct{}

func (failingStore) Get(context.Context, string) ([]byte, bool, error) {
	return nil, false, cache.ErrUnavailable
}
func (failingStore) Set(context.Context, string, []byte, time.Duration) error {
	return cache.ErrUnavailable
}
func (failingStore) Delete(context.Context, string) error { return cache.ErrUnavailable }

func TestCacheStoreSessions(t *testing.T) {
	idp := testidp.New()
	defer idp.Close()
	h := newTestHandler(t, idp, func(h *Handler) { h.Session.Store = "cache" })

	attempt, q := startLogin(t, h, "/")
	claims := idp.Claims("app", q.Get("nonce"))
	groups := make([]string, 300)
	for i := range groups {
		groups[i] = fmt.Sprintf("group-with-a-long-name-%03d", i)
	}
	claims["groups"] = groups
	idp.OnToken(testidp.TokenResponse(idp.Sign(claims), map[string]any{"refresh_token": "rt"}))
	w, err := callback(h, attempt, url.Values{"code": {"c"}, "state": {q.Get("state")}})
	if err != nil || !hasSessionCookie(w) {
		t.Fatalf("login: %d %v", w.Code, err)
	}
	var sc *http.Cookie
	for _, c := range w.Result().Cookies() {
		if c.Name == DefaultCookieName {
			sc = c
		}
	}
	if n := len(sc.Name) + 1 + len(sc.Value); n >= 200 {
		t.Errorf("cache-store cookie is %d bytes with 300 groups, want under 200", n)
	}

	r := request("GET", "/app")
	r.AddCookie(sc)
	next := &recordNext{}
	if err := h.ServeHTTP(httptest.NewRecorder(), r, next); err != nil || !next.called {
		t.Fatalf("request with the cache-store cookie: %v", err)
	}
	if g := next.req.Header.Get("X-Auth-Groups"); !strings.HasPrefix(g, "group-with-a-long-name-000,") {
		t.Errorf("groups from the cached session: %.60q", g)
	}

	// The shared cache down and the session not in L1: 503, cookie kept.
	down := newTestHandler(t, idp, func(h *Handler) { h.Session.Store = "cache" })
	down.shared = failingStore{}
	down.sessions = down.newSessionStore()
	r = request("GET", "/app")
	r.AddCookie(sc)
	w = httptest.NewRecorder()
	err = down.ServeHTTP(w, r, &recordNext{})
	if statusOf(err, w) != http.StatusServiceUnavailable || w.Header().Get("Retry-After") == "" || len(w.Result().Cookies()) != 0 {
		t.Errorf("store down: got %d, Retry-After %q, %d cookies; want 503, Retry-After, cookie untouched",
			statusOf(err, w), w.Header().Get("Retry-After"), len(w.Result().Cookies()))
	}

	// Logout deletes the session from the store: the old cookie is dead.
	r = request("POST", "/oauth2/logout")
	r.Header.Set("Origin", "http://example.com")
	r.AddCookie(sc)
	if err := h.ServeHTTP(httptest.NewRecorder(), r, &recordNext{}); err != nil {
		t.Fatal(err)
	}
	r = request("GET", "/app")
	r.AddCookie(sc)
	r.Header.Set("Accept", "application/json")
	w = httptest.NewRecorder()
	if err := h.ServeHTTP(w, r, &recordNext{}); statusOf(err, w) != http.StatusUnauthorized {
		t.Errorf("after logout the old cookie got %d, want 401", statusOf(err, w))
	}
}

func TestRefreshTokenMaxAge(t *testing.T) {
	idp := testidp.New()
	defer idp.Close()
	h := newTestHandler(t, idp, func(h *Handler) { h.Session.RefreshTokenMaxAge = caddy.Duration(time.Hour) })
	var grants int
	idp.OnToken(func(w http.ResponseWriter, r *http.Request) {
		grants++
		w.Header().Set("Content-Type", "application/json")
		_, _ = w.Write([]byte(`{"access_token":"at2","token_type":"Bearer","expires_in":300,"refresh_token":"rt2"}`))
	})
	expired := func(issued time.Duration) *http.Request {
		r := loggedIn(t, h, map[string]any{"sub": "u"}, func(s *session.Session) {
			s.RefreshToken = "rt"
			s.RefreshIssued = time.Now().Add(-issued).Unix()
			s.AccessExpiry = time.Now().Add(-time.Second).Unix()
		})
		r.Header.Set("Accept", "application/json")
		return r
	}
	w := httptest.NewRecorder()
	if err := h.ServeHTTP(w, expired(30*time.Minute), &recordNext{}); err != nil || grants != 1 {
		t.Fatalf("a young refresh token: %v, %d grants; want a refresh", err, grants)
	}
	w = httptest.NewRecorder()
	err := h.ServeHTTP(w, expired(2*time.Hour), &recordNext{})
	if statusOf(err, w) != http.StatusUnauthorized || grants != 1 {
		t.Errorf("a refresh token past its max age: got %d after %d grants; want 401 and no grant", statusOf(err, w), grants)
	}
}

// TestExcludeCannotBeTraversed: path tricks that name a protected path
// through an excluded prefix are not excluded (Caddy's path matcher cleans
// the path first).
func TestExcludeCannotBeTraversed(t *testing.T) {
	idp := testidp.New()
	defer idp.Close()
	h := newTestHandler(t, idp, func(h *Handler) { h.Exclude = []string{"/public/*", "/healthz"} })
	for _, p := range []string{"/public/../admin", "/public/%2e%2e/admin", "/public/%2E%2E/admin", "//public/../admin",
		"/public%2f..%2fadmin", "/healthz/../admin", "/public/..%2fadmin", "/healthz/"} {
		ctx := request("GET", "/").Context()
		r := httptest.NewRequest("GET", "http://example.com"+p, nil).WithContext(ctx)
		next := &recordNext{}
		w := httptest.NewRecorder()
		if err := h.ServeHTTP(w, r, next); err != nil {
			t.Fatal(err)
		}
		if next.called || w.Code != http.StatusFound {
			t.Errorf("%s: passed unauthenticated (%d)", p, w.Code)
		}
	}
	next := &recordNext{}
	if err := h.ServeHTTP(httptest.NewRecorder(), request("GET", "/public/logo.png"), next); err != nil || !next.called {
		t.Error("an excluded path was not passed on")
	}
}

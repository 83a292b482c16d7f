package caddyoidc

// Attack tests of issue 11 (sessions, claims, paths, headers) and issue 16
// (login replay, introspection cost). Each performs the attack against the
// real handler and asserts it is refused.

import (
	"context"
	"encoding/json"
	"fmt"
	"maps"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"go.uber.org/zap"

	"github.com/caddy-oidc/caddy-oidc/internal/provider"
	"github.com/caddy-oidc/caddy-oidc/internal/testidp"
	"github.com/caddy-oidc/caddy-oidc/session"
)

// apiRequest marks r as an API call, so "no session" is a 401, not a redirect.
func apiRequest(r *http.Request) *http.Request {
	r.Header.Set("Accept", "application/json")
	return r
}

func serve(h *Handler, r *http.Request) (int, *recordNext, *httptest.ResponseRecorder) {
	w := httptest.NewRecorder()
	next := &recordNext{}
	err := h.ServeHTTP(w, r, next)
	return statusOf(err, w), next, w
}

// withCookies copies the cookies of from onto a new API request to path.
func withCookies(from *http.Request, path string) *http.Request {
	r := apiRequest(request("GET", path))
	for _, c := range from.Cookies() {
		r.AddCookie(c)
	}
	return r
}

// 11.2: two routes that share a session_secret (one env var in a snippet)
// must not accept each other's sessions: another client, another issuer,
// in both stores.
func TestAttackSessionOfAnotherRouteSameSecret(t *testing.T) {
	idp := testidp.New()
	defer idp.Close()
	other := testidp.New()
	defer other.Close()
	for _, store := range []string{"cookie", "cache"} {
		t.Run(store, func(t *testing.T) {
			a := newTestHandler(t, idp, func(h *Handler) { h.Session.Store = store })
			app := a.app
			otherClient := newTestHandlerOn(t, app, idp, func(h *Handler) { h.Session.Store = store; h.Client.ID = "other-app" })
			otherIssuer := newTestHandlerOn(t, app, other, func(h *Handler) { h.Session.Store = store })
			r := loggedIn(t, a, map[string]any{"sub": "victim"}, nil)
			if code, next, _ := serve(a, withCookies(r, "/x")); code != 200 || !next.called {
				t.Fatalf("route A refused its own session: %d", code)
			}
			for name, h := range map[string]*Handler{"another client": otherClient, "another issuer": otherIssuer} {
				if code, next, _ := serve(h, withCookies(r, "/x")); code != http.StatusUnauthorized || next.called {
					t.Errorf("%s accepted route A's session: %d", name, code)
				}
			}
		})
	}
}

// newTestHandlerOn provisions a handler on an existing app (routes of one Caddy).
func newTestHandlerOn(t testing.TB, app *App, idp *testidp.IdP, mod func(h *Handler)) *Handler {
	t.Helper()
	h := &Handler{Issuer: idp.Issuer, Client: ClientConfig{ID: "app", Secret: "s3cret"}, Session: SessionConfig{Secrets: []string{testSecret}},
		Header: map[string]string{"X-Auth-Email": "{http.auth.user.email}"}}
	if mod != nil {
		mod(h)
	}
	if err := h.provision(caddy.Context{}, nopLogger()); err != nil {
		t.Fatal(err)
	}
	if err := h.attach(app); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = h.Cleanup() })
	return h
}

// 11.10: whoever can write to Valkey must not take over a session by
// moving a sealed value to another key (the decoded-session cache used to
// be keyed by the value alone).
func TestAttackValkeyValueMovedToAnotherKey(t *testing.T) {
	idp := testidp.New()
	defer idp.Close()
	h := newTestHandler(t, idp, func(h *Handler) { h.Session.Store = "cache" })
	victim := loggedIn(t, h, map[string]any{"sub": "victim", "email": "victim@example.com"}, nil)
	attacker := loggedIn(t, h, map[string]any{"sub": "attacker"}, nil)
	// The victim's session is opened once, so it sits in the decoded cache.
	if code, _, _ := serve(h, withCookies(victim, "/x")); code != 200 {
		t.Fatalf("victim: %d", code)
	}
	victimID, _ := h.sessions.CacheID(victim)
	attackerID, _ := h.sessions.CacheID(attacker)
	ctx := context.Background()
	v, found, err := h.shared.Get(ctx, session.Key(h.ns, victimID))
	if err != nil || !found {
		t.Fatal("victim's session not in the store")
	}
	// The attacker writes the victim's sealed value under their own key.
	if err := h.shared.Set(ctx, session.Key(h.ns, attackerID), v, time.Hour); err != nil {
		t.Fatal(err)
	}
	code, next, _ := serve(h, withCookies(attacker, "/x"))
	if code == 200 && next.req.Header.Get("X-Auth-Email") == "victim@example.com" {
		t.Fatal("a sealed session moved to another key was accepted: session takeover")
	}
	if code != http.StatusUnauthorized {
		t.Errorf("moved value: %d, want 401", code)
	}
}

// 11.10: a refresh hand-off is bound to its flight (route and refresh
// token) and to the session's user.
func TestAttackHandOffMovedOrForAnotherUser(t *testing.T) {
	codec, _ := session.NewCodec(testSecret)
	res := &refreshResult{at: time.Now()}
	res.tokens = testTokenResponse("at-victim")
	b, err := newRefreshCodec(codec, "flight-1", "victim").Encode(res, nil)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := newRefreshCodec(codec, "flight-1", "victim").Decode(b); err != nil {
		t.Fatalf("the hand-off does not open where it was written: %v", err)
	}
	if _, err := newRefreshCodec(codec, "flight-2", "victim").Decode(b); err == nil {
		t.Error("a hand-off moved to another flight's key opened")
	}
	if _, err := newRefreshCodec(codec, "flight-1", "attacker").Decode(b); err == nil {
		t.Error("a hand-off for another user was adopted")
	}
}

// 11.4: only a boolean true verifies an email ("nOAuth": Entra ID sends no
// email_verified and tenants choose their users' emails), and comparisons
// fold ASCII only (a Kelvin sign is not a "k").
func TestAttackUnverifiedEmailAndUnicodeFolding(t *testing.T) {
	idp := testidp.New()
	defer idp.Close()
	h := newTestHandler(t, idp, func(h *Handler) {
		h.Allow.Domains = []string{"example.com"}
		h.Allow.Users = []string{"kim@partner.test"}
	})
	cases := []struct {
		name   string
		claims map[string]any
		want   int
	}{
		{"verified", map[string]any{"sub": "1", "email": "a@example.com", "email_verified": true}, 200},
		{"upper-case domain", map[string]any{"sub": "1", "email": "a@EXAMPLE.com", "email_verified": true}, 200},
		{"email_verified missing", map[string]any{"sub": "1", "email": "a@example.com"}, 403},
		{"email_verified string", map[string]any{"sub": "1", "email": "a@example.com", "email_verified": "true"}, 403},
		{"email_verified false", map[string]any{"sub": "1", "email": "a@example.com", "email_verified": false}, 403},
		{"user verified", map[string]any{"sub": "2", "email": "kim@partner.test", "email_verified": true}, 200},
		{"Kelvin sign", map[string]any{"sub": "2", "email": "\u212aim@partner.test", "email_verified": true}, 403},
		{"long s", map[string]any{"sub": "3", "email": "a@example.com\u017f", "email_verified": true}, 403},
	}
	for _, c := range cases {
		if code, _, _ := serve(h, withCookies(loggedIn(t, h, c.claims, nil), "/x")); code != c.want {
			t.Errorf("%s: %d, want %d", c.name, code, c.want)
		}
	}
	off := false
	lax := newTestHandler(t, idp, func(h *Handler) { h.Allow.Domains = []string{"example.com"}; h.Allow.RequireEmailVerified = &off })
	if code, _, _ := serve(lax, withCookies(loggedIn(t, lax, map[string]any{"sub": "1", "email": "a@example.com"}, nil), "/x")); code != 200 {
		t.Errorf("require_email_verified false: %d, want 200", code)
	}
}

// 11.7: a refresh whose ID token carries only sub and protocol claims (as
// panva's certified oidc-provider issues them) keeps the session's other
// claims: groups, sid, UserInfo claims. UserInfo is fetched again.
func TestAttackRefreshDropsNoClaims(t *testing.T) {
	idp := testidp.New()
	defer idp.Close()
	h := newTestHandler(t, idp, func(h *Handler) { h.Allow.Groups = []string{"staff"}; h.Login.UserInfo = UserInfoOn })
	var grants atomic.Int64
	idp.OnToken(func(w http.ResponseWriter, r *http.Request) {
		grants.Add(1)
		// Only sub and protocol claims, as oidc-provider's refreshed ID tokens.
		c := map[string]any{"iss": idp.Issuer, "sub": "u1", "aud": "app", "exp": time.Now().Add(time.Hour).Unix(), "iat": time.Now().Unix()}
		w.Header().Set("Content-Type", "application/json")
		_ = json.NewEncoder(w).Encode(map[string]any{"access_token": "at2", "token_type": "Bearer", "expires_in": 300,
			"refresh_token": "rt2", "id_token": idp.Sign(c)})
	})
	idp.OnUserInfo(func(w http.ResponseWriter, r *http.Request) {
		if r.Header.Get("Authorization") != "Bearer at2" {
			http.Error(w, "wrong token", http.StatusUnauthorized)
			return
		}
		w.Header().Set("Content-Type", "application/json")
		_, _ = w.Write([]byte(`{"sub":"u1","email":"new@example.com","nickname":"fresh"}`))
	})
	claims := map[string]any{"sub": "u1", "sid": "idp-session", "groups": []any{"staff"}, "email": "old@example.com", "nickname": "old"}
	r := loggedIn(t, h, claims, func(s *session.Session) {
		s.RefreshToken = "rt"
		s.AccessExpiry = time.Now().Add(-time.Second).Unix()
		s.FromUserInfo = []string{"email", "nickname"} // groups and sid came with the ID token
	})
	code, next, w := serve(h, withCookies(r, "/x"))
	if code != 200 || grants.Load() != 1 {
		t.Fatalf("after refresh: %d with %d grants; want 200 and one grant (allow_groups must still see the groups)", code, grants.Load())
	}
	if got := next.req.Header.Get("X-Auth-Email"); got != "new@example.com" {
		t.Errorf("X-Auth-Email after refresh %q, want the re-fetched UserInfo's", got)
	}
	if got := next.req.Header.Get("X-Auth-Groups"); got != "staff" {
		t.Errorf("groups after refresh %q", got)
	}
	// The re-issued session still has its sid, so back-channel logout by sid reaches it.
	re := apiRequest(request("GET", "/x"))
	for _, c := range w.Result().Cookies() {
		re.AddCookie(c)
	}
	loaded := h.sessions.Load(re, time.Now())
	s := loaded.Session
	if !loaded.Usable() {
		t.Fatalf("re-issued session: %v", loaded.Refusal)
	}
	if s.SID() != "idp-session" || s.Claims["nickname"] != "fresh" || s.RefreshToken != "rt2" {
		t.Errorf("re-issued session: sid %q nickname %v refresh token %q", s.SID(), s.Claims["nickname"], s.RefreshToken)
	}
}

// 11.7: a refreshed ID token about another user is refused (Core §12.2).
func TestAttackRefreshedIDTokenForAnotherUser(t *testing.T) {
	idp := testidp.New()
	defer idp.Close()
	h := newTestHandler(t, idp, nil)
	idp.OnToken(func(w http.ResponseWriter, r *http.Request) {
		c := idp.Claims("app", "")
		delete(c, "nonce")
		c["sub"] = "someone-else"
		w.Header().Set("Content-Type", "application/json")
		_ = json.NewEncoder(w).Encode(map[string]any{"access_token": "at2", "token_type": "Bearer", "expires_in": 300, "id_token": idp.Sign(c)})
	})
	r := loggedIn(t, h, map[string]any{"sub": "u1"}, func(s *session.Session) {
		s.RefreshToken = "rt"
		s.AccessExpiry = time.Now().Add(-time.Second).Unix()
	})
	if code, next, _ := serve(h, withCookies(r, "/x")); code != http.StatusUnauthorized || next.called {
		t.Errorf("refresh to another user: %d, want 401", code)
	}
}

// 11.8: an Entra user with 200 groups: what is written can be read, and a
// session too large for cookies is kept in the cache, never a login loop.
func TestAttackLargeSessionNeverLoops(t *testing.T) {
	idp := testidp.New()
	defer idp.Close()
	h := newTestHandler(t, idp, nil)
	attempt, q := startLogin(t, h, "/")
	claims := idp.Claims("app", q.Get("nonce"))
	groups := make([]any, 200)
	for i := range groups {
		groups[i] = fmt.Sprintf("%08x-%04x-4000-8000-%012x", i, i, i) // Entra group object ids
	}
	claims["groups"] = groups
	idToken := idp.Sign(claims)
	idp.OnToken(testidp.TokenResponse(idToken, map[string]any{"access_token": strings.Repeat("A", 6000), "refresh_token": "rt"}))
	w, err := callback(h, attempt, url.Values{"code": {"c"}, "state": {q.Get("state")}})
	if err != nil || w.Code != http.StatusFound {
		t.Fatalf("login: %d %v", w.Code, err)
	}
	r := apiRequest(request("GET", "/x"))
	total := 0
	for _, c := range w.Result().Cookies() {
		if c.MaxAge >= 0 && strings.HasPrefix(c.Name, DefaultCookieName) && !strings.Contains(c.Name, "_state_") {
			r.AddCookie(c)
			total += len(c.Name) + len(c.Value) + 1
		}
	}
	if total > session.MaxWriteChunks*4096 {
		t.Errorf("session cookies total %d bytes", total)
	}
	code, next, _ := serve(h, r)
	if code != 200 || !strings.Contains(next.req.Header.Get("X-Auth-Groups"), groups[199].(string)) {
		t.Fatalf("the large session was not read back: %d (a browser would loop through login)", code)
	}
}

// 11.9: each of oauth2-proxy's 2026 skip-auth advisories (";" parameters,
// "//", dot segments, encoded "#" and "?", encoded slashes): a path the
// upstream may resolve to a protected one is never excluded.
func TestAttackExcludeBypassVariants(t *testing.T) {
	idp := testidp.New()
	defer idp.Close()
	h := newTestHandler(t, idp, func(h *Handler) { h.Exclude = []string{"/public/*", "*.css", "/healthz"} })
	for _, p := range []string{
		"/public/..;/admin/users", "/admin/users;.css", "/public;/../admin", "/admin;jsessionid=x/style.css",
		"/public//../admin", "//public/x", "/public/./../admin", "/public/%2e%2e/admin", "/public/%2E./admin",
		"/public/..%2fadmin", "/public/x%2F..%2F..%2Fadmin", "/public/x%5c..%5cadmin", "/public/x%23/../../admin",
		"/admin%23.css", "/admin%3f.css", "/public/x%3f/../../admin", "/public/%252e%252e/admin", "/healthz;x",
		"/public/..\\admin", "/public/..%20/admin", "/public/.../admin", "/public/.. /admin",
		"/public/%c0%ae%c0%ae/admin", "/public/%E2%80%A5/admin", "/public/\u2025/admin",
	} {
		r := httptest.NewRequest("GET", "http://example.com/", nil).WithContext(request("GET", "/").Context())
		r.RequestURI = p
		u, err := url.ParseRequestURI(p)
		if err != nil {
			t.Fatalf("%s: %v", p, err)
		}
		r.URL = u
		apiRequest(r)
		if code, next, _ := serve(h, r); next.called || code != http.StatusUnauthorized {
			t.Errorf("%s: passed without a session (%d)", p, code)
		}
	}
	for _, p := range []string{"/public/logo.png", "/theme/site.css", "/healthz"} {
		if _, next, _ := serve(h, request("GET", p)); !next.called {
			t.Errorf("%s: an excluded path was not passed on", p)
		}
	}
}

// 11.13: client headers that an upstream could read as an identity header
// ('_' or '.' for '-', any case) are removed on every path.
func TestAttackUnderscoreIdentityHeaders(t *testing.T) {
	idp := testidp.New()
	defer idp.Close()
	h := newTestHandler(t, idp, func(h *Handler) {
		h.Exclude = []string{"/public/*"}
		h.Bearer = &BearerConfig{Audience: []string{"api"}}
	})
	forge := func(r *http.Request) *http.Request {
		for _, name := range []string{"X_Auth_Email", "x_auth_email", "X.Auth.Email", "X-Auth_Email", "X_AUTH_EMAIL"} {
			r.Header[name] = []string{"forged@evil.example"}
		}
		return r
	}
	check := func(where string, next *recordNext) {
		t.Helper()
		if !next.called {
			t.Fatalf("%s: not passed on", where)
		}
		for name, v := range next.req.Header {
			if headerIdentity(name) == "x-auth-email" && v[0] == "forged@evil.example" {
				t.Errorf("%s: %s reached the upstream", where, name)
			}
		}
	}
	_, next, _ := serve(h, forge(withCookies(loggedIn(t, h, map[string]any{"sub": "u", "email": "u@example.com"}, nil), "/x")))
	check("session", next)
	_, next, _ = serve(h, forge(request("GET", "/public/a")))
	check("excluded", next)
	r := forge(request("GET", "/api"))
	r.Header.Set("Authorization", "Bearer "+idp.Sign(accessClaims(idp, nil)))
	_, next, _ = serve(h, r)
	check("bearer", next)
}

// 16.7: a login attempt is used once, on the server: a copy of the attempt
// cookie replayed with other codes costs no token-endpoint call.
func TestAttackLoginAttemptReplay(t *testing.T) {
	idp := testidp.New()
	defer idp.Close()
	h := newTestHandler(t, idp, nil)
	var calls atomic.Int64
	attempt, q := startLogin(t, h, "/")
	idToken := idp.Sign(idp.Claims("app", q.Get("nonce")))
	idp.OnToken(func(w http.ResponseWriter, r *http.Request) {
		calls.Add(1)
		testidp.TokenResponse(idToken, nil)(w, r)
	})
	if w, err := callback(h, attempt, url.Values{"code": {"c"}, "state": {q.Get("state")}}); err != nil || w.Code != http.StatusFound {
		t.Fatalf("first use: %d %v", w.Code, err)
	}
	for i := range 50 {
		w, err := callback(h, attempt, url.Values{"code": {fmt.Sprint("c", i)}, "state": {q.Get("state")}})
		if statusOf(err, w) != http.StatusBadRequest || hasSessionCookie(w) {
			t.Fatalf("replay %d: %d", i, statusOf(err, w))
		}
	}
	if n := calls.Load(); n != 1 {
		t.Errorf("50 replays made %d token-endpoint calls in all, want 1", n)
	}
}

// 16.7: the return-to URL kept in an attempt cookie is capped, so eight
// attempts stay under a proxy's 8 KB header limit.
func TestAttackLongReturnToIsCapped(t *testing.T) {
	idp := testidp.New()
	defer idp.Close()
	h := newTestHandler(t, idp, nil)
	c, _ := startLogin(t, h, "/page?"+strings.Repeat("q=x&", 600))
	if len(c.Name)+len(c.Value) > 1024 {
		t.Errorf("attempt cookie is %d bytes with a 2.4 KB URL", len(c.Name)+len(c.Value))
	}
	pt, _, err := h.codec.Open(h.bind(purposeAttempt+c.Name), c.Value)
	if err != nil {
		t.Fatal(err)
	}
	var a attempt
	_ = json.Unmarshal(pt, &a)
	if a.ReturnTo != "/page" {
		t.Errorf("return-to %q, want the path without its oversized query", a.ReturnTo)
	}
}

// 16.6: random opaque tokens must not each cost an introspection: refusals
// are remembered, identical calls shared, concurrent calls bounded.
func TestAttackRandomBearerTokensBoundIntrospection(t *testing.T) {
	idp := testidp.New()
	defer idp.Close()
	idp.SetDiscovery("introspection_endpoint", idp.Issuer+"/introspect")
	h := newTestHandler(t, idp, func(h *Handler) { h.Bearer = &BearerConfig{} })
	var calls, running, peak atomic.Int64
	release := make(chan struct{})
	idp.OnIntrospect(func(w http.ResponseWriter, r *http.Request) {
		calls.Add(1)
		n := running.Add(1)
		for p := peak.Load(); n > p && !peak.CompareAndSwap(p, n); p = peak.Load() {
		}
		<-release
		running.Add(-1)
		w.Header().Set("Content-Type", "application/json")
		_, _ = w.Write([]byte(`{"active":false}`))
	})
	bearer := func(token string) int {
		r := apiRequest(request("GET", "/api"))
		r.Header.Set("Authorization", "Bearer "+token)
		// Many sources: the per-client rate is another test's.
		vars := map[string]any{caddyhttp.ClientIPVarKey: "10.0.0." + token}
		r = r.WithContext(context.WithValue(r.Context(), caddyhttp.VarsCtxKey, vars))
		code, _, _ := serve(h, r)
		return code
	}
	var releaseOnce sync.Once
	defer releaseOnce.Do(func() { close(release) })
	// 30 concurrent requests with one token, 30 with distinct ones.
	var wg sync.WaitGroup
	codes := make(chan int, 60)
	for i := range 60 {
		tok := "same-random-token"
		if i >= 30 {
			tok = fmt.Sprintf("random-token-%d", i)
		}
		wg.Add(1)
		go func() { defer wg.Done(); codes <- bearer(tok) }()
	}
	// Let the calls pile up at the bound, then answer them all.
	waitFor(t, func() bool { return running.Load() >= introspectionConcurrency })
	releaseOnce.Do(func() { close(release) })
	wg.Wait()
	close(codes)
	for c := range codes {
		if c != http.StatusUnauthorized && c != http.StatusServiceUnavailable {
			t.Errorf("a random token got %d", c)
		}
	}
	if p := peak.Load(); p > introspectionConcurrency {
		t.Errorf("%d introspections ran at once, want at most %d", p, introspectionConcurrency)
	}
	if n := calls.Load(); n > 31 {
		t.Errorf("60 requests (30 with one token) made %d introspection calls, want at most 31", n)
	}
	before := calls.Load()
	if bearer("same-random-token") != http.StatusUnauthorized || calls.Load() != before {
		t.Errorf("a token the IdP just called inactive was introspected again")
	}
}

// waitFor polls cond (bounded) instead of sleeping a fixed time.
func waitFor(t testing.TB, cond func() bool) {
	t.Helper()
	revPoll(t, 10*time.Second, "condition", cond)
}

// 16.8: behind a TLS-terminating proxy that Caddy trusts, cookies are Secure
// (__Host-) and the redirect_uri is https; the same header from an
// untrusted client changes nothing.
func TestForwardedProtoFromTrustedProxiesOnly(t *testing.T) {
	idp := testidp.New()
	defer idp.Close()
	h := newTestHandler(t, idp, nil)
	for _, trusted := range []bool{true, false} {
		r := request("GET", "http://app.example/page")
		r.Header.Set("X-Forwarded-Proto", "https")
		vars := map[string]any{caddyhttp.TrustedProxyVarKey: trusted}
		r = r.WithContext(context.WithValue(r.Context(), caddyhttp.VarsCtxKey, vars))
		w := httptest.NewRecorder()
		if err := h.ServeHTTP(w, r, &recordNext{}); err != nil {
			t.Fatal(err)
		}
		loc, _ := url.Parse(w.Header().Get("Location"))
		c := w.Result().Cookies()[0]
		https := strings.HasPrefix(loc.Query().Get("redirect_uri"), "https://") && c.Secure && strings.HasPrefix(c.Name, "__Host-")
		if https != trusted {
			t.Errorf("X-Forwarded-Proto https from a proxy trusted=%v: redirect_uri %s, cookie %s Secure=%v",
				trusted, loc.Query().Get("redirect_uri"), c.Name, c.Secure)
		}
	}
}

// 16.8: a new login with session_store cache deletes the browser's previous
// session entry instead of leaving it to expire.
func TestReloginDeletesPreviousCacheSession(t *testing.T) {
	idp := testidp.New()
	defer idp.Close()
	h := newTestHandler(t, idp, func(h *Handler) { h.Session.Store = "cache" })
	old := loggedIn(t, h, map[string]any{"sub": "u"}, nil)
	oldID, _ := h.sessions.CacheID(old)
	attempt, q := startLogin(t, h, "/")
	idp.OnToken(testidp.TokenResponse(idp.Sign(idp.Claims("app", q.Get("nonce"))), nil))
	r := request("GET", "/oauth2/callback?"+url.Values{"code": {"c"}, "state": {q.Get("state")}}.Encode())
	r.AddCookie(attempt)
	for _, c := range old.Cookies() {
		r.AddCookie(c)
	}
	if code, _, _ := serve(h, r); code != http.StatusFound {
		t.Fatalf("login: %d", code)
	}
	if _, found, _ := h.shared.Get(context.Background(), session.Key(h.ns, oldID)); found {
		t.Error("the previous session is still in the cache after a new login")
	}
}

func nopLogger() *zap.Logger { return zap.NewNop() }

func testTokenResponse(accessToken string) *provider.TokenResponse {
	return &provider.TokenResponse{AccessToken: accessToken, TokenType: "Bearer", ExpiresIn: 300}
}

// 11.3: an introspection result cached by one route is not another's: route
// B's IdP calls the token inactive, and B refuses it even though route A
// (other accepted audience) cached it as active.
func TestAttackIntrospectionCachedForAnotherRoute(t *testing.T) {
	idp := testidp.New()
	defer idp.Close()
	idp.SetDiscovery("introspection_endpoint", idp.Issuer+"/introspect")
	a := newTestHandler(t, idp, func(h *Handler) { h.Bearer = &BearerConfig{Audience: []string{"api-a"}} })
	b := newTestHandlerOn(t, a.app, idp, func(h *Handler) { h.Bearer = &BearerConfig{Audience: []string{"api-b"}} })
	idp.OnIntrospect(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		_, _ = fmt.Fprintf(w, `{"active":true,"sub":"svc","aud":"api-a","token_type":"Bearer","exp":%d}`, time.Now().Add(time.Hour).Unix())
	})
	call := func(h *Handler) int {
		r := apiRequest(request("GET", "/api"))
		r.Header.Set("Authorization", "Bearer opaque-token-for-api-a")
		code, _, _ := serve(h, r)
		return code
	}
	if code := call(a); code != 200 {
		t.Fatalf("route A: %d", code)
	}
	idp.OnIntrospect(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		_, _ = w.Write([]byte(`{"active":false}`))
	})
	if code := call(b); code != http.StatusUnauthorized {
		t.Errorf("route B accepted a token cached by route A: %d", code)
	}
}

// 11.5: an ID token is never an access token, even with the client_id as
// audience (the bearer default).
func TestAttackIDTokenAsBearer(t *testing.T) {
	idp := testidp.New()
	defer idp.Close()
	h := newTestHandler(t, idp, func(h *Handler) { h.Bearer = &BearerConfig{} })
	for name, tok := range map[string]string{
		"with nonce":   idp.Sign(idp.Claims("app", "n-123")),
		"with at_hash": idp.Sign(func() map[string]any { c := idp.Claims("app", ""); delete(c, "nonce"); c["at_hash"] = "x"; return c }()),
		"typed":        idp.SignTyped("id_token+jwt", func() map[string]any { c := idp.Claims("app", ""); delete(c, "nonce"); return c }()),
		// A refreshed ID token (Entra v2): no nonce, no at_hash, aud the client.
		"refreshed": idp.Sign(func() map[string]any { c := idp.Claims("app", ""); delete(c, "nonce"); return c }()),
	} {
		r := apiRequest(request("GET", "/api"))
		r.Header.Set("Authorization", "Bearer "+tok)
		if code, next, _ := serve(h, r); code != http.StatusUnauthorized || next.called {
			t.Errorf("ID token %s accepted as an access token: %d", name, code)
		}
	}
}

// 11.5: the bearer path honours the revocation set: after a back-channel
// logout of a user, their access tokens issued before it are refused.
func TestAttackBearerAfterLogout(t *testing.T) {
	idp := testidp.New()
	defer idp.Close()
	h := newTestHandler(t, idp, func(h *Handler) { h.Bearer = &BearerConfig{Audience: []string{"api"}} })
	sub := fmt.Sprintf("svc-%d", time.Now().UnixNano())
	tok := idp.Sign(accessClaims(idp, func(c map[string]any) { c["sub"] = sub; c["iat"] = time.Now().Add(-time.Minute).Unix() }))
	call := func() int {
		r := apiRequest(request("GET", "/api"))
		r.Header.Set("Authorization", "Bearer "+tok)
		code, _, _ := serve(h, r)
		return code
	}
	if code := call(); code != 200 {
		t.Fatalf("before logout: %d", code)
	}
	if err := h.revs.revoke(context.Background(), revokeSubject, idp.Issuer, sub, time.Now(), time.Hour, fromIdP); err != nil {
		t.Fatal(err)
	}
	if code := call(); code != http.StatusUnauthorized {
		t.Errorf("a cached bearer token of a logged-out user: %d, want 401", code)
	}
	// A token that does not say when it was issued may predate the logout.
	tok = idp.Sign(accessClaims(idp, func(c map[string]any) { c["sub"] = sub; delete(c, "iat") }))
	if code := call(); code != http.StatusUnauthorized {
		t.Errorf("a bearer token without iat of a logged-out user: %d, want 401", code)
	}
}

// 11.6 with end_session_method get (IdPs that accept only GET there): the
// redirect names the client and the user, never the ID token.
func TestEndSessionByGetCarriesNoIDToken(t *testing.T) {
	idp := testidp.New()
	defer idp.Close()
	idp.SetDiscovery("end_session_endpoint", idp.Issuer+"/logout")
	h := newTestHandler(t, idp, func(h *Handler) { h.Logout.EndSessionMethod = "get"; h.Logout.PostLogoutRedirectURI = "/bye" })
	r := loggedIn(t, h, map[string]any{"sub": "u1"}, func(s *session.Session) { s.IDToken = "eyJ.secret-id-token.sig" })
	lr := request("POST", "http://example.com/oauth2/logout")
	lr.Header.Set("Origin", "http://example.com")
	for _, c := range r.Cookies() {
		lr.AddCookie(c)
	}
	w := httptest.NewRecorder()
	if err := h.ServeHTTP(w, lr, &recordNext{}); err != nil {
		t.Fatal(err)
	}
	loc, _ := url.Parse(w.Header().Get("Location"))
	if w.Code != http.StatusFound || !strings.HasPrefix(loc.String(), idp.Issuer+"/logout?") {
		t.Fatalf("logout: %d to %q, want a redirect to end_session", w.Code, loc)
	}
	q := loc.Query()
	if strings.Contains(loc.String(), "secret-id-token") || q.Has("id_token_hint") {
		t.Errorf("the ID token is in the end-session URL: %s", loc)
	}
	if q.Get("client_id") != "app" || q.Get("logout_hint") != "u1" || q.Get("post_logout_redirect_uri") != "http://example.com/bye" {
		t.Errorf("end-session query %v", q)
	}
}

// Review H1: a refreshed ID token that states the user's claims (Keycloak,
// Entra, Okta) is the IdP's word: a group it no longer carries is gone,
// and a new email never inherits the old one's verification.
func TestAttackRefreshDropsRemovedClaims(t *testing.T) {
	idp := testidp.New()
	defer idp.Close()
	h := newTestHandler(t, idp, func(h *Handler) { h.Allow.Groups = []string{"admins"}; h.Allow.Users = []string{"new@example.com"} })
	refreshWith := func(claims map[string]any) {
		idp.OnToken(func(w http.ResponseWriter, r *http.Request) {
			c := map[string]any{"iss": idp.Issuer, "sub": "u1", "aud": "app", "exp": time.Now().Add(time.Hour).Unix(), "iat": time.Now().Unix()}
			maps.Copy(c, claims)
			w.Header().Set("Content-Type", "application/json")
			_ = json.NewEncoder(w).Encode(map[string]any{"access_token": "at2", "token_type": "Bearer", "expires_in": 300, "id_token": idp.Sign(c)})
		})
	}
	n := 0
	session := func() *http.Request {
		n++ // each its own refresh token: a flight's result is handed to requests that carry the same one
		return loggedIn(t, h, map[string]any{"sub": "u1", "sid": "s1", "groups": []any{"admins"}, "email": "old@example.com", "email_verified": true},
			func(s *session.Session) {
				s.RefreshToken = fmt.Sprint("rt-", n)
				s.AccessExpiry = time.Now().Add(-time.Second).Unix()
			})
	}
	// The admin left every group: the refreshed ID token has no groups claim.
	refreshWith(map[string]any{"name": "U One", "email": "old@example.com", "email_verified": true})
	if code, next, _ := serve(h, withCookies(session(), "/x")); code != http.StatusForbidden {
		t.Errorf("after the IdP removed the user's last group: %d (groups header %q), want 403", code, func() string {
			if next.req != nil {
				return next.req.Header.Get("X-Auth-Groups")
			}
			return ""
		}())
	}
	// A new, unverified email must not pass allow_users on the old email's verification.
	refreshWith(map[string]any{"email": "new@example.com"})
	if code, _, _ := serve(h, withCookies(session(), "/x")); code != http.StatusForbidden {
		t.Errorf("a refreshed unverified email passed allow_users: %d", code)
	}
	// A minimal refreshed token (sub only) keeps the claims: nothing was said.
	refreshWith(nil)
	if code, _, _ := serve(h, withCookies(session(), "/x")); code != 200 {
		t.Errorf("a sub-only refreshed ID token took the groups away: %d", code)
	}
}

// Review L3: a request refused by the module (403, 503) goes on to Caddy's
// handle_errors routes, which may proxy it: the module's cookies are gone
// from it by then.
func TestAttackCookiesNeverReachErrorRoutes(t *testing.T) {
	idp := testidp.New()
	defer idp.Close()
	h := newTestHandler(t, idp, func(h *Handler) { h.Allow.Groups = []string{"admins"} })
	r := withCookies(loggedIn(t, h, map[string]any{"sub": "u"}, nil), "/x")
	r.Header.Add("Cookie", "theme=dark")
	if code, _, _ := serve(h, r); code != http.StatusForbidden {
		t.Fatalf("%d", code)
	}
	if c := r.Header.Get("Cookie"); strings.Contains(c, DefaultCookieName) || !strings.Contains(c, "theme=dark") {
		t.Errorf("after a 403 the request handed to handle_errors has Cookie %q", c)
	}
}

// Review M4: new random tokens are introspected at a bounded rate: past
// the burst they get 503 at once, without a call to the IdP.
func TestAttackIntrospectionRateIsBounded(t *testing.T) {
	idp := testidp.New()
	defer idp.Close()
	idp.SetDiscovery("introspection_endpoint", idp.Issuer+"/introspect")
	h := newTestHandler(t, idp, func(h *Handler) { h.Bearer = &BearerConfig{} })
	var calls atomic.Int64
	idp.OnIntrospect(func(w http.ResponseWriter, r *http.Request) {
		calls.Add(1)
		_, _ = w.Write([]byte(`{"active":false}`))
	})
	busy := 0
	for i := range 200 {
		r := apiRequest(request("GET", "/api"))
		r.Header.Set("Authorization", fmt.Sprint("Bearer random-", i))
		if code, _, _ := serve(h, r); code == http.StatusServiceUnavailable {
			busy++
		}
	}
	if n := calls.Load(); n > introspectionBurst+10 {
		t.Errorf("200 random tokens in a burst made %d introspection calls, want about %d at most", n, introspectionBurst)
	}
	if busy == 0 {
		t.Error("no random token was turned away")
	}
}

// Review M4: one source flooding random tokens uses up its own rate, not the
// route's: a valid token from another client is still introspected.
func TestAttackIntrospectionFloodFromOneClient(t *testing.T) {
	idp := testidp.New()
	defer idp.Close()
	idp.SetDiscovery("introspection_endpoint", idp.Issuer+"/introspect")
	h := newTestHandler(t, idp, func(h *Handler) { h.Bearer = &BearerConfig{} })
	idp.OnIntrospect(func(w http.ResponseWriter, r *http.Request) {
		_ = r.ParseForm()
		w.Header().Set("Content-Type", "application/json")
		if r.PostForm.Get("token") == "valid-token" {
			_, _ = fmt.Fprintf(w, `{"active":true,"sub":"svc","client_id":"app","exp":%d}`, time.Now().Add(time.Hour).Unix())
			return
		}
		_, _ = w.Write([]byte(`{"active":false}`))
	})
	from := func(ip, token string) int {
		r := apiRequest(request("GET", "/api"))
		r.Header.Set("Authorization", "Bearer "+token)
		r = r.WithContext(context.WithValue(r.Context(), caddyhttp.VarsCtxKey, map[string]any{caddyhttp.ClientIPVarKey: ip}))
		code, _, _ := serve(h, r)
		return code
	}
	for i := range 500 {
		from("203.0.113.9", fmt.Sprint("random-", i))
	}
	if code := from("198.51.100.7", "valid-token"); code != 200 {
		t.Errorf("a valid token from another client during the flood: %d, want 200", code)
	}
}

// Second review, 1: a secret rotated out of the config stops vouching for
// revocations, and new ones are sealed with the newest config's secret.
func TestRevocationKeysFollowTheConfig(t *testing.T) {
	r := newRevocations()
	const iss = "https://idp.example/rotation"
	a, b := []byte("key-of-secret-a-0123456789abcdef"), []byte("key-of-secret-b-0123456789abcdef")
	k := revKey{revokeSubject, iss, "u"}
	rv := revocation{at: time.Now().Unix(), expires: time.Now().Add(time.Hour).Unix()}
	r.noteMACKeys(iss, [][]byte{a}) // config 1
	sealedA, _ := r.seal(k, rv)
	r.noteMACKeys(iss, [][]byte{b, a}) // config 2: rotation, A still listed
	r.forgetMACKeys(iss, [][]byte{a})  // config 1 cleaned up
	if _, _, ok := r.open(k, sealedA); !ok {
		t.Error("during the rotation a revocation sealed with the older secret was refused")
	}
	sealedB, _ := r.seal(k, rv)
	r.noteMACKeys(iss, [][]byte{b})      // config 3: A removed
	r.forgetMACKeys(iss, [][]byte{b, a}) // config 2 cleaned up
	if _, _, ok := r.open(k, sealedA); ok {
		t.Error("a revocation sealed with a secret removed from the config still opens")
	}
	if _, _, ok := r.open(k, sealedB); !ok {
		t.Error("a revocation sealed with the current secret was refused")
	}
	onlyB := newRevocations()
	onlyB.noteMACKeys(iss, [][]byte{b})
	if now, _ := r.seal(k, rv); func() bool { _, _, ok := onlyB.open(k, now); return !ok }() {
		t.Error("new revocations are not sealed with the newest config's secret")
	}
}

// Second review, 2: email_verified only ever comes with its own email.
func TestEmailVerifiedPairing(t *testing.T) {
	old := map[string]any{"sub": "u", "email": "old@corp.example", "email_verified": true}
	// A refreshed ID token with a new, unverified email; UserInfo vouches for the old one.
	got, _ := refreshedClaims(old, []string{"email"}, map[string]any{"sub": "u", "email": "b@evil.example"},
		map[string]any{"sub": "u", "email": "old@corp.example", "email_verified": true})
	if got["email"] != "b@evil.example" || got["email_verified"] != nil {
		t.Errorf("email %v with email_verified %v, want the ID token's email unverified", got["email"], got["email_verified"])
	}
	// A sub-only refreshed ID token and UserInfo with email_verified but another source's email.
	got, _ = refreshedClaims(map[string]any{"sub": "u", "email": "new@evil.example"}, nil, map[string]any{"sub": "u"},
		map[string]any{"sub": "u", "email_verified": true})
	if got["email_verified"] != nil {
		t.Errorf("email_verified taken from UserInfo for an email UserInfo did not give: %v", got)
	}
}

// Second review, 4: an access token for this client obtained by another
// client (Entra app-only: roles, azp the caller) is not an ID token; an
// ID token of this client is one.
func TestLooksLikeIDToken(t *testing.T) {
	for _, c := range []struct {
		claims map[string]any
		want   bool
	}{
		{map[string]any{"aud": []string{"app"}, "azp": "daemon", "roles": []any{"read"}}, false},
		{map[string]any{"aud": []string{"app"}, "azp": "app"}, true},
		{map[string]any{"aud": "app"}, true},
		{map[string]any{"aud": "app", "scp": "read"}, false},
		{map[string]any{"aud": "api"}, false},
	} {
		if got := looksLikeIDToken(c.claims, "app"); got != c.want {
			t.Errorf("%v: %v, want %v", c.claims, got, c.want)
		}
	}
	// Rate limits group an IPv6 client by its /64.
	ctx := func(ip string) context.Context {
		return context.WithValue(context.Background(), caddyhttp.VarsCtxKey, map[string]any{caddyhttp.ClientIPVarKey: ip})
	}
	if clientKey(ctx("2001:db8::1")) != clientKey(ctx("2001:db8::ffff:2")) || clientKey(ctx("192.0.2.1")) == clientKey(ctx("192.0.2.2")) {
		t.Error("IPv6 clients are not grouped by /64, or IPv4 ones are grouped")
	}
}

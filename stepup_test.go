package caddyoidc

import (
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"

	"github.com/caddy-oidc/caddy-oidc/internal/testidp"
)

// stepUpRoutes are two routes of one issuer and client on one app, so they
// share sessions: a plain one and one that asks for more.
func stepUpRoutes(t *testing.T, idp *testidp.IdP, strong func(h *Handler)) (plain, strict *Handler) {
	t.Helper()
	plain = newTestHandler(t, idp, nil)
	strict = newTestHandlerOn(t, plain.app, idp, strong)
	return plain, strict
}

// browserGet is a top-level navigation carrying r's cookies.
func browserGet(from *http.Request, path string) *http.Request {
	r := request("GET", path)
	r.Header.Set("Sec-Fetch-Mode", "navigate")
	for _, c := range from.Cookies() {
		r.AddCookie(c)
	}
	return r
}

// finishLogin answers the IdP's side of a login with an ID token of claims
// (nonce and audience filled in) and runs the callback on h.
func finishLogin(t *testing.T, h *Handler, idp *testidp.IdP, attempt *http.Cookie, q url.Values, claims map[string]any) (*httptest.ResponseRecorder, error) {
	t.Helper()
	c := idp.Claims("app", q.Get("nonce"))
	for k, v := range claims {
		c[k] = v
	}
	idp.OnToken(testidp.TokenResponse(idp.Sign(c), nil))
	return callback(h, attempt, url.Values{"code": {"c"}, "state": {q.Get("state")}})
}

// loginAt starts a browser login at target on h and returns the attempt
// cookie and the authorization request's parameters.
func loginAt(t *testing.T, h *Handler, r *http.Request) (*http.Cookie, url.Values) {
	t.Helper()
	code, next, w := serve(h, r)
	if code != http.StatusFound || next.called {
		t.Fatalf("got %d (next called: %v), want 302 to the IdP", code, next.called)
	}
	loc, _ := url.Parse(w.Header().Get("Location"))
	for _, c := range w.Result().Cookies() {
		if strings.Contains(c.Name, "_state_") {
			return c, loc.Query()
		}
	}
	t.Fatal("no attempt cookie")
	return nil, nil
}

// sessionOf returns a request carrying the session cookies a callback set.
func sessionOf(w *httptest.ResponseRecorder) *http.Request {
	r := request("GET", "/")
	for _, c := range w.Result().Cookies() {
		if c.MaxAge >= 0 && c.Value != "" && !strings.Contains(c.Name, "_state_") {
			r.AddCookie(c)
		}
	}
	return r
}

func TestStepUpACR(t *testing.T) {
	idp := testidp.New()
	defer idp.Close()
	plain, strict := stepUpRoutes(t, idp, func(h *Handler) { h.Login.ACRValues = []string{"gold", "platinum"} })
	silver := loggedIn(t, plain, map[string]any{"sub": "u1", "acr": "silver"}, nil)

	if code, next, _ := serve(plain, browserGet(silver, "/plain")); code != 200 || !next.called {
		t.Fatalf("the plain route refused a silver session: %d", code)
	}
	// The strict route sends the browser to log in with its acr_values.
	attempt, q := loginAt(t, strict, browserGet(silver, "/strict?x=1"))
	if q.Get("acr_values") != "gold platinum" || q.Get("prompt") != "" {
		t.Fatalf("step-up request: acr_values %q prompt %q", q.Get("acr_values"), q.Get("prompt"))
	}
	// The callback is served by the plain route (one redirect_uri for
	// both): it checks what the attempt asked, not its own config.
	w, err := finishLogin(t, plain, idp, attempt, q, map[string]any{"acr": "gold"})
	if err != nil || w.Code != http.StatusFound || w.Header().Get("Location") != "/strict?x=1" {
		t.Fatalf("step-up callback: %d to %q (%v)", w.Code, w.Header().Get("Location"), err)
	}
	gold := sessionOf(w)
	for name, h := range map[string]*Handler{"strict": strict, "plain": plain} {
		if code, next, _ := serve(h, browserGet(gold, "/page")); code != 200 || !next.called {
			t.Errorf("%s route refused the gold session: %d", name, code)
		}
	}
	// An API call on the strict route with a silver session: 401 with the
	// RFC 9470 challenge, never a redirect.
	code, next, rec := serve(strict, withCookies(silver, "/strict/api"))
	if code != http.StatusUnauthorized || next.called ||
		!strings.Contains(rec.Header().Get("WWW-Authenticate"), `error="insufficient_user_authentication", acr_values="gold platinum"`) {
		t.Errorf("API step-up: %d, WWW-Authenticate %q", code, rec.Header().Get("WWW-Authenticate"))
	}
}

// The IdP cannot (or will not) reach the level asked: the login is
// refused with 403, and the session the user had keeps working where it
// suffices. No new login is started: no loop.
func TestAttackStepUpNotMetIsRefusedWithoutLoop(t *testing.T) {
	idp := testidp.New()
	defer idp.Close()
	plain, strict := stepUpRoutes(t, idp, func(h *Handler) { h.Login.ACRValues = []string{"gold"} })
	silver := loggedIn(t, plain, map[string]any{"sub": "u1", "acr": "silver"}, nil)
	for name, claims := range map[string]map[string]any{
		"weaker acr":  {"acr": "silver"},
		"no acr":      {},
		"acr as list": {"acr": []string{"gold"}},
	} {
		t.Run(name, func(t *testing.T) {
			attempt, q := loginAt(t, strict, browserGet(silver, "/strict"))
			w, err := finishLogin(t, plain, idp, attempt, q, claims)
			if s := statusOf(err, w); s != http.StatusForbidden || hasSessionCookie(w) || w.Header().Get("Location") != "" {
				t.Fatalf("got %d, Location %q, session set %v (%v); want 403 and nothing else", s, w.Header().Get("Location"), hasSessionCookie(w), err)
			}
			if code, next, _ := serve(plain, browserGet(silver, "/plain")); code != 200 || !next.called {
				t.Errorf("the silver session stopped working on the plain route: %d", code)
			}
		})
	}
}

// A session from a weaker route never passes a stronger route's check,
// whatever it carries that looks like a level: a login the plain route
// started (no acr asked) yields a session the strict route refuses, and a
// login the plain route started cannot be finished as a strict one.
func TestAttackWeakerSessionNeverPassesStrongerRoute(t *testing.T) {
	idp := testidp.New()
	defer idp.Close()
	plain, strict := stepUpRoutes(t, idp, func(h *Handler) {
		h.Login.ACRValues = []string{"gold"}
		h.Login.MaxAge = caddy.Duration(5 * time.Minute)
	})
	attempt, q := loginAt(t, plain, request("GET", "/plain"))
	if q.Has("acr_values") || q.Has("max_age") {
		t.Fatalf("the plain route asked for step-up: %v", q)
	}
	w, err := finishLogin(t, plain, idp, attempt, q, map[string]any{"acr": "silver", "auth_time": time.Now().Unix()})
	if err != nil || !hasSessionCookie(w) {
		t.Fatalf("plain login: %d (%v)", w.Code, err)
	}
	weak := sessionOf(w)
	for _, r := range []*http.Request{browserGet(weak, "/strict"), withCookies(weak, "/strict/api")} {
		if code, next, _ := serve(strict, r); next.called || (code != http.StatusFound && code != http.StatusUnauthorized) {
			t.Errorf("the strict route let a silver session in: %d", code)
		}
	}
	// Gold with an old auth_time: still not enough for max_age.
	stale := loggedIn(t, plain, map[string]any{"sub": "u1", "acr": "gold", "auth_time": time.Now().Add(-time.Hour).Unix()}, nil)
	if code, next, _ := serve(strict, browserGet(stale, "/strict")); next.called || code != http.StatusFound {
		t.Errorf("the strict route let a stale session in: %d", code)
	}
}

func TestStepUpMaxAge(t *testing.T) {
	idp := testidp.New()
	defer idp.Close()
	plain, strict := stepUpRoutes(t, idp, func(h *Handler) {
		h.Login.MaxAge = caddy.Duration(10 * time.Minute)
		h.Login.AuthParams = map[string]string{"prompt": "consent"}
	})
	old := time.Now().Add(-2 * time.Hour).Unix()
	stale := loggedIn(t, plain, map[string]any{"sub": "u1", "auth_time": old}, nil)
	if code, next, _ := serve(plain, browserGet(stale, "/plain")); code != 200 || !next.called {
		t.Fatalf("the plain route refused the session: %d", code)
	}
	attempt, q := loginAt(t, strict, browserGet(stale, "/strict"))
	if q.Get("max_age") != "600" || q.Get("prompt") != "consent login" {
		t.Fatalf("re-authentication request: max_age %q prompt %q", q.Get("max_age"), q.Get("prompt"))
	}
	// An IdP that ignores prompt=login and returns the old auth_time: 403.
	w, err := finishLogin(t, strict, idp, attempt, q, map[string]any{"auth_time": old})
	if s := statusOf(err, w); s != http.StatusForbidden || hasSessionCookie(w) {
		t.Fatalf("stale auth_time accepted: %d (%v)", s, err)
	}
	attempt, q = loginAt(t, strict, browserGet(stale, "/strict"))
	if w, err = finishLogin(t, strict, idp, attempt, q, map[string]any{}); statusOf(err, w) != http.StatusForbidden {
		t.Fatalf("no auth_time accepted under max_age: %d (%v)", statusOf(err, w), err)
	}
	attempt, q = loginAt(t, strict, browserGet(stale, "/strict"))
	w, err = finishLogin(t, strict, idp, attempt, q, map[string]any{"auth_time": time.Now().Unix()})
	if err != nil || !hasSessionCookie(w) {
		t.Fatalf("fresh login refused: %d (%v)", w.Code, err)
	}
	if code, next, _ := serve(strict, browserGet(sessionOf(w), "/strict")); code != 200 || !next.called {
		t.Errorf("the strict route refused a fresh session: %d", code)
	}
	// A first login (no session) asks max_age without forcing prompt=login.
	_, q = loginAt(t, strict, request("GET", "/strict"))
	if q.Get("max_age") != "600" || q.Get("prompt") != "consent" {
		t.Errorf("first login: max_age %q prompt %q", q.Get("max_age"), q.Get("prompt"))
	}
}

// UserInfo cannot supply the claims step-up checks: they are the ID
// token's word alone.
func TestAttackUserInfoCannotSupplyACR(t *testing.T) {
	idp := testidp.New()
	defer idp.Close()
	h := newTestHandler(t, idp, func(h *Handler) { h.Login.UserInfo = UserInfoOn })
	idp.OnUserInfo(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		_, _ = w.Write([]byte(`{"sub":"user-1","acr":"gold","auth_time":4102444800}`))
	})
	attempt, q := loginAt(t, h, request("GET", "/"))
	w, err := finishLogin(t, h, idp, attempt, q, map[string]any{})
	if err != nil || !hasSessionCookie(w) {
		t.Fatalf("login: %d (%v)", w.Code, err)
	}
	r := sessionOf(w)
	s := h.sessions.Load(r, time.Now()).Session
	if s == nil || s.Claims["acr"] != nil || s.Claims["auth_time"] != nil {
		t.Fatalf("UserInfo's acr or auth_time reached the session: %v", s)
	}
}

func TestWithPrompt(t *testing.T) {
	for in, want := range map[string]string{"": "login", "consent": "consent login", "none": "login", "login": "login", "login consent": "login consent"} {
		if got := withPrompt(in, "login"); got != want {
			t.Errorf("withPrompt(%q) = %q, want %q", in, got, want)
		}
	}
}

package caddyoidc

import (
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/lestrrat-go/jwx/v2/jwa"

	"github.com/caddy-oidc/caddy-oidc/internal/provider"
	"github.com/caddy-oidc/caddy-oidc/internal/testidp"
	"github.com/caddy-oidc/caddy-oidc/session"
)

func logoutClaims(idp *testidp.IdP, jti string, mod func(c map[string]any)) map[string]any {
	c := map[string]any{
		"iss": idp.Issuer, "aud": "app", "iat": time.Now().Unix(), "jti": jti, "sub": "user-1", "sid": "sid-1",
		"events": map[string]any{provider.BackchannelLogoutEvent: map[string]any{}},
	}
	if mod != nil {
		mod(c)
	}
	return c
}

func postLogoutToken(t *testing.T, h *Handler, body string) *httptest.ResponseRecorder {
	t.Helper()
	r := request("POST", "/oauth2/backchannel_logout")
	r.Body = http.NoBody
	r = httptest.NewRequest("POST", "/oauth2/backchannel_logout", strings.NewReader(body)).WithContext(r.Context())
	r.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	w := httptest.NewRecorder()
	if err := h.ServeHTTP(w, r, &recordNext{}); err != nil {
		t.Fatal(err)
	}
	return w
}

func TestBackchannelLogout(t *testing.T) {
	idp := testidp.New()
	defer idp.Close()
	for _, store := range []string{"cookie", "cache"} {
		t.Run(store, func(t *testing.T) {
			app := newTestApp(t)
			// Revocations are second-grained: the test moves their clock
			// rather than waiting for seconds to pass. Sessions start at its
			// time, a little in the past.
			testOwnRevocations(app.caches)
			clock := newTestClock(time.Now().Add(-time.Minute))
			app.caches.revs.now = clock.Now
			atClock := func(s *session.Session) { s.Created = clock.Now().Unix() }
			h := newTestHandler(t, idp, func(h *Handler) { h.Session.Store = store })
			_ = h.Cleanup()
			if err := h.attach(app); err != nil {
				t.Fatal(err)
			}
			other := newTestHandler(t, idp, func(h *Handler) { h.Session.Store = store }) // another route instance, same app
			_ = other.Cleanup()
			_ = other.attach(app)

			claims := map[string]any{"sub": "user-1", "sid": "sid-1", "email": "u@example.com"}
			victim := loggedIn(t, h, claims, atClock)
			bystander := loggedIn(t, h, map[string]any{"sub": "user-2", "sid": "sid-2"}, atClock)

			bad := map[string]string{
				"wrong signature": testidp.SignWith(jwa.RS256, testidp.ForeignKey("k1"), "k1", logoutClaims(idp, "j1", nil)),
				"wrong aud":       idp.Sign(logoutClaims(idp, "j2", func(c map[string]any) { c["aud"] = "other" })),
				"wrong iss":       idp.Sign(logoutClaims(idp, "j3", func(c map[string]any) { c["iss"] = "https://evil.example" })),
				"iat too old":     idp.Sign(logoutClaims(idp, "j4", func(c map[string]any) { c["iat"] = time.Now().Add(-time.Hour).Unix() })),
				"nonce present":   idp.Sign(logoutClaims(idp, "j5", func(c map[string]any) { c["nonce"] = "n" })),
				"events missing":  idp.Sign(logoutClaims(idp, "j6", func(c map[string]any) { delete(c, "events") })),
				"no sid nor sub":  idp.Sign(logoutClaims(idp, "j7", func(c map[string]any) { delete(c, "sid"); delete(c, "sub") })),
			}
			for name, tok := range bad {
				w := postLogoutToken(t, h, url.Values{"logout_token": {tok}}.Encode())
				if w.Code != http.StatusBadRequest || !strings.Contains(w.Body.String(), `"error"`) || w.Header().Get("Cache-Control") != "no-store" {
					t.Errorf("%s: got %d %q, want 400 with a JSON error and no-store", name, w.Code, w.Body.String())
				}
			}
			if w := postLogoutToken(t, h, "logout_token="+strings.Repeat("a", maxLogoutBody+1)); w.Code != http.StatusBadRequest {
				t.Errorf("oversized body: got %d, want 400", w.Code)
			}
			// None of those ended anything.
			assertStatus(t, other, victim, http.StatusOK)

			good := idp.Sign(logoutClaims(idp, "good-"+store, nil))
			if w := postLogoutToken(t, h, url.Values{"logout_token": {good}}.Encode()); w.Code != http.StatusOK {
				t.Fatalf("valid logout token: got %d %s", w.Code, w.Body.String())
			}
			// The session of sid-1, started in the second of the logout, is
			// over for every route instance; the other one is not.
			assertStatus(t, other, victim, http.StatusUnauthorized)
			assertStatus(t, h, victim, http.StatusUnauthorized)
			assertStatus(t, other, bystander, http.StatusOK)
			// Replaying the same token is refused.
			if w := postLogoutToken(t, h, url.Values{"logout_token": {good}}.Encode()); w.Code != http.StatusBadRequest {
				t.Errorf("replayed logout token: got %d, want 400", w.Code)
			}
			// A login of the same user a second later is not affected
			// (revocation times are whole seconds, and a tie counts as revoked).
			clock.Advance(time.Second)
			assertStatus(t, h, loggedIn(t, h, claims, atClock), http.StatusOK)
		})
	}
}

func assertStatus(t *testing.T, h *Handler, r *http.Request, want int) {
	t.Helper()
	r = r.Clone(r.Context())
	r.Header.Set("Accept", "application/json")
	w := httptest.NewRecorder()
	err := h.ServeHTTP(w, r, &recordNext{})
	if got := statusOf(err, w); got != want {
		t.Errorf("got %d, want %d", got, want)
	}
}

func TestRPLogoutEndsCopiesOfTheCookie(t *testing.T) {
	idp := testidp.New()
	defer idp.Close()
	h := newTestHandler(t, idp, nil)
	// Logged in within the second of the logout: the copy ends all the same
	// (the session is revoked by its own id, not by time).
	r := loggedIn(t, h, map[string]any{"sub": "u"}, nil)
	lo := request("POST", "/oauth2/logout")
	lo.Header.Set("Origin", "http://example.com")
	for _, c := range r.Cookies() {
		lo.AddCookie(c)
	}
	if err := h.ServeHTTP(httptest.NewRecorder(), lo, &recordNext{}); err != nil {
		t.Fatal(err)
	}
	// A copy of the cookie kept by an attacker (or another tab) is dead.
	assertStatus(t, h, r, http.StatusUnauthorized)
}

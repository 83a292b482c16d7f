package caddyoidc

import (
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"net/url"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	"github.com/lestrrat-go/jwx/v2/jwa"

	"github.com/caddy-oidc/caddy-oidc/internal/testidp"
	"github.com/caddy-oidc/caddy-oidc/session"
)

// thinClaims are an ID token's claims as panva's oidc-provider issues
// them: sub and protocol claims only.
func thinClaims(idp *testidp.IdP, nonce string) map[string]any {
	now := time.Now()
	c := map[string]any{"iss": idp.Issuer, "sub": "user-1", "aud": "app", "exp": now.Add(time.Hour).Unix(), "iat": now.Unix()}
	if nonce != "" {
		c["nonce"] = nonce
	}
	return c
}

// userInfoJSON answers UserInfo with claims, counting the calls.
func userInfoJSON(hits *atomic.Int64, claims map[string]any) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		hits.Add(1)
		w.Header().Set("Content-Type", "application/json")
		_ = json.NewEncoder(w).Encode(claims)
	}
}

// loginWith completes a login whose ID token has the claims idClaims
// returns for the attempt's nonce, and returns the callback's status and
// a request carrying the new session (nil without one).
func loginWith(t *testing.T, idp *testidp.IdP, h *Handler, idClaims func(nonce string) map[string]any, tokenExtra map[string]any) (int, *http.Request) {
	t.Helper()
	attempt, q := startLogin(t, h, "/")
	idp.OnToken(testidp.TokenResponse(idp.Sign(idClaims(q.Get("nonce"))), tokenExtra))
	w, err := callback(h, attempt, url.Values{"code": {"c"}, "state": {q.Get("state")}})
	if !hasSessionCookie(w) {
		return statusOf(err, w), nil
	}
	return statusOf(err, w), withSession(w.Result().Cookies())
}

// withSession is an API request carrying cookies (the handler strips its
// own from the request it passes on: build one per request).
func withSession(cookies []*http.Cookie) *http.Request {
	r := apiRequest(request("GET", "/app"))
	for _, c := range cookies {
		if c.MaxAge >= 0 {
			r.AddCookie(c)
		}
	}
	return r
}

// Issue 12.2: with the default (auto), UserInfo is fetched at login exactly
// when the ID token lacks what the scopes, rules or headers need.
func TestUserInfoAutoAtLogin(t *testing.T) {
	full := func(idp *testidp.IdP) func(string) map[string]any {
		return func(n string) map[string]any { return idp.Claims("app", n) }
	}
	thin := func(idp *testidp.IdP) func(string) map[string]any {
		return func(n string) map[string]any { return thinClaims(idp, n) }
	}
	without := func(idp *testidp.IdP, claims ...string) func(string) map[string]any {
		return func(n string) map[string]any {
			c := idp.Claims("app", n)
			for _, k := range claims {
				delete(c, k)
			}
			return c
		}
	}
	cases := []struct {
		name    string
		mod     func(h *Handler)
		idToken func(idp *testidp.IdP) func(string) map[string]any
		fetch   bool
	}{
		{"default, sub-only ID token", nil, thin, true},
		{"default, full ID token", nil, full, false},
		{"off, sub-only ID token", func(h *Handler) { h.Login.UserInfo = UserInfoOff }, thin, false},
		{"on, full ID token", func(h *Handler) { h.Login.UserInfo = UserInfoOn }, full, true},
		{"scope email, no email", func(h *Handler) { h.Header = nil }, func(idp *testidp.IdP) func(string) map[string]any {
			return without(idp, "email", "email_verified")
		}, true},
		{"scope profile, no profile claim", func(h *Handler) { h.Header = nil }, func(idp *testidp.IdP) func(string) map[string]any {
			return without(idp, "name")
		}, true},
		{"scopes openid only, sub-only, nothing read", func(h *Handler) { h.Header = nil; h.Login.Scopes = []string{"openid"} }, thin, false},
		{"allow_groups, no groups", func(h *Handler) { h.Header = nil; h.Allow.Groups = []string{"staff"} }, func(idp *testidp.IdP) func(string) map[string]any {
			return without(idp, "groups")
		}, true},
		{"allow_domains, email present", func(h *Handler) { h.Allow.Domains = []string{"example.com"} }, full, false},
		{"allow_users by sub only, sub-only", func(h *Handler) {
			h.Header = nil
			h.Login.Scopes = []string{"openid"}
			h.Allow.Users = []string{"user-1"}
		}, thin, false},
		{"allow_users by email, sub-only", func(h *Handler) {
			h.Header = nil
			h.Login.Scopes = []string{"openid"}
			h.Allow.Users = []string{"user1@example.com"}
		}, thin, true},
		{"header reads a claim the token lacks", func(h *Handler) { h.Header["X-Dept"] = "{http.auth.user.claims.department}" }, full, true},
		{"roles_claim path in a header", func(h *Handler) {
			h.RolesClaim = "realm_access.roles"
			h.Header["X-Roles"] = "{http.auth.user.roles}"
		}, full, true},
		{"expression reads a claim the token lacks", func(h *Handler) { h.Allow.Expression = `claims.department == "ops"` }, full, true},
		{"expression reads claims the token has", func(h *Handler) { h.Allow.Expression = `claims["name"] == "User One" && has(claims.email)` }, full, false},
		{"expression over all claims", func(h *Handler) { h.Allow.Expression = `size(claims) > 0` }, full, true},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			idp := testidp.New()
			defer idp.Close()
			h := newTestHandler(t, idp, tc.mod)
			var hits atomic.Int64
			idp.OnUserInfo(userInfoJSON(&hits, map[string]any{"sub": "user-1", "email": "ui@example.com", "email_verified": true,
				"name": "From UserInfo", "groups": []string{"staff"}, "department": "ops", "realm_access": map[string]any{"roles": []string{"r"}}}))
			status, _ := loginWith(t, idp, h, tc.idToken(idp), nil)
			if status != http.StatusFound {
				t.Fatalf("login: %d", status)
			}
			if got := hits.Load() == 1; got != tc.fetch {
				t.Errorf("userinfo fetched %d times, want fetched: %v", hits.Load(), tc.fetch)
			}
		})
	}
}

// With the default, a sub-only ID token's session gets its email, name and
// groups from UserInfo; the headers reach the upstream after login, and
// after a refresh, which fetches UserInfo again with the new access token.
func TestUserInfoAutoFillsThinIDTokensAcrossRefresh(t *testing.T) {
	idp := testidp.New()
	defer idp.Close()
	h := newTestHandler(t, idp, func(h *Handler) {
		h.Allow.Domains = []string{"example.com"}
		h.Header["X-Name"] = "{http.auth.user.name}"
	})
	var hits atomic.Int64
	email := atomic.Pointer[string]{}
	first := "user1@example.com"
	email.Store(&first)
	var lastToken atomic.Pointer[string]
	idp.OnUserInfo(func(w http.ResponseWriter, r *http.Request) {
		hits.Add(1)
		tok := r.Header.Get("Authorization")
		lastToken.Store(&tok)
		w.Header().Set("Content-Type", "application/json")
		_ = json.NewEncoder(w).Encode(map[string]any{"sub": "user-1", "email": *email.Load(), "email_verified": true,
			"name": "User One", "groups": []string{"staff"}})
	})
	status, r := loginWith(t, idp, h, func(n string) map[string]any { return thinClaims(idp, n) }, map[string]any{"refresh_token": "rt-1"})
	if status != http.StatusFound || r == nil {
		t.Fatalf("login: %d", status)
	}
	cookies := r.Cookies()
	if len(cookies) == 0 {
		t.Fatalf("login: %d", status)
	}
	code, next, _ := serve(h, withSession(cookies))
	if code != http.StatusOK {
		t.Fatalf("after login: %d (allow_domains needs the UserInfo email)", code)
	}
	if e, n, g := next.req.Header.Get("X-Auth-Email"), next.req.Header.Get("X-Name"), next.req.Header.Get("X-Auth-Groups"); e != first || n != "User One" || g != "staff" {
		t.Errorf("after login: email %q name %q groups %q", e, n, g)
	}

	// The IdP changes the email; the access token is due: a refresh with a
	// sub-only ID token re-fetches UserInfo.
	second := "renamed@example.com"
	email.Store(&second)
	idp.OnToken(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		_ = json.NewEncoder(w).Encode(map[string]any{"access_token": "at-refreshed", "token_type": "Bearer", "expires_in": 300,
			"refresh_token": "rt-2", "id_token": idp.Sign(thinClaims(idp, ""))})
	})
	code, next, _ = serve(h, sessionDue(t, h, cookies))
	if code != http.StatusOK {
		t.Fatalf("after refresh: %d", code)
	}
	if hits.Load() != 2 || *lastToken.Load() != "Bearer at-refreshed" {
		t.Errorf("userinfo fetched %d times, last with %q; want twice, the second with the refreshed access token", hits.Load(), *lastToken.Load())
	}
	if e, g := next.req.Header.Get("X-Auth-Email"), next.req.Header.Get("X-Auth-Groups"); e != second || g != "staff" {
		t.Errorf("after refresh: email %q groups %q; want the re-fetched email and the groups kept", e, g)
	}
}

// sessionDue re-saves the session r carries with its access token expired,
// so the next request refreshes it.
func sessionDue(t *testing.T, h *Handler, cookies []*http.Cookie) *http.Request {
	t.Helper()
	l := h.sessions.Load(withSession(cookies), time.Now())
	if l.Session == nil {
		t.Fatalf("no session: %v", l.Refusal)
	}
	s := *l.Session
	s.AccessExpiry = time.Now().Add(-time.Second).Unix()
	w := httptest.NewRecorder()
	out := apiRequest(request("GET", "/app"))
	if err := h.sessions.Save(w, out, &s, time.Now()); err != nil {
		t.Fatal(err)
	}
	for _, c := range w.Result().Cookies() {
		out.AddCookie(c)
	}
	return out
}

// A session whose ID token had everything does not call UserInfo on
// refresh; one whose UserInfo failed at login (IdP trouble) tries again
// at the refresh, so it heals instead of lacking its email until re-login.
func TestUserInfoAutoOnRefresh(t *testing.T) {
	idp := testidp.New()
	defer idp.Close()
	h := newTestHandler(t, idp, nil)
	var hits atomic.Int64
	idp.OnUserInfo(userInfoJSON(&hits, map[string]any{"sub": "user-1", "email": "ui@example.com", "name": "UI", "groups": []string{"g"}}))
	idp.OnToken(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		_ = json.NewEncoder(w).Encode(map[string]any{"access_token": "at2", "token_type": "Bearer", "expires_in": 300, "refresh_token": "rt2"})
	})
	var n atomic.Int64
	due := func(s *session.Session) {
		// A refresh token of its own: one token's grant is shared.
		s.RefreshToken = "rt-" + strings.Repeat("x", int(n.Add(1)))
		s.AccessExpiry = time.Now().Add(-time.Second).Unix()
	}

	full := map[string]any{"sub": "user-1", "email": "id@example.com", "name": "ID", "groups": []any{"g"}}
	if code, _, _ := serve(h, withCookies(loggedIn(t, h, full, due), "/x")); code != http.StatusOK || hits.Load() != 0 {
		t.Errorf("full claims: %d, userinfo fetched %d times; want 200 and none", code, hits.Load())
	}

	lacking := map[string]any{"sub": "user-1"} // UserInfo was down at login
	code, next, _ := serve(h, withCookies(loggedIn(t, h, lacking, due), "/x"))
	if code != http.StatusOK || hits.Load() != 1 {
		t.Fatalf("lacking claims: %d, userinfo fetched %d times; want 200 and one", code, hits.Load())
	}
	if got := next.req.Header.Get("X-Auth-Email"); got != "ui@example.com" {
		t.Errorf("email after the healing refresh %q", got)
	}

	off := newTestHandler(t, idp, func(h *Handler) { h.Login.UserInfo = UserInfoOff })
	hits.Store(0)
	if code, _, _ := serve(off, withCookies(loggedIn(t, off, map[string]any{"sub": "user-1"}, func(s *session.Session) {
		due(s)
		s.FromUserInfo = []string{"email"}
	}), "/x")); code != http.StatusOK || hits.Load() != 0 {
		t.Errorf("userinfo off: %d, fetched %d times; want none", code, hits.Load())
	}
}

// Attack: a signed UserInfo that the IdP did not sign, or not for this
// client, or about another user, ends the login without a session; one the
// IdP signed fills the claims in.
func TestAttackSignedUserInfoAtLogin(t *testing.T) {
	idp := testidp.New()
	defer idp.Close()
	h := newTestHandler(t, idp, nil)
	idp.SetDiscovery("userinfo_signing_alg_values_supported", []string{"RS256"})
	claims := func(mod func(c map[string]any)) map[string]any {
		c := map[string]any{"iss": idp.Issuer, "aud": "app", "sub": "user-1", "email": "signed@example.com", "email_verified": true,
			"name": "Signed", "groups": []string{"g"}}
		if mod != nil {
			mod(c)
		}
		return c
	}
	serveJWT := func(body string) {
		idp.OnUserInfo(func(w http.ResponseWriter, r *http.Request) {
			w.Header().Set("Content-Type", "application/jwt")
			_, _ = w.Write([]byte(body))
		})
	}
	thin := func(n string) map[string]any { return thinClaims(idp, n) }

	serveJWT(idp.Sign(claims(nil)))
	status, r := loginWith(t, idp, h, thin, nil)
	if status != http.StatusFound || r == nil {
		t.Fatalf("login with signed userinfo: %d", status)
	}
	if _, next, _ := serve(h, r); next.req == nil || next.req.Header.Get("X-Auth-Email") != "signed@example.com" {
		t.Errorf("signed userinfo's email did not reach the upstream")
	}

	attacks := map[string]string{
		"alg none":              testidp.Unsigned(claims(nil)),
		"HS256 with public key": testidp.SignWith(jwa.HS256, idp.PublicKeyBytes(), "k1", claims(nil)),
		"foreign key":           testidp.SignWith(jwa.RS256, testidp.ForeignKey("k1"), "k1", claims(nil)),
		"another issuer":        idp.Sign(claims(func(c map[string]any) { c["iss"] = "https://evil.example" })),
		"another client":        idp.Sign(claims(func(c map[string]any) { c["aud"] = "other" })),
		"another user":          idp.Sign(claims(func(c map[string]any) { c["sub"] = "user-2" })),
	}
	for name, body := range attacks {
		t.Run(name, func(t *testing.T) {
			serveJWT(body)
			if status, r := loginWith(t, idp, h, thin, nil); status != http.StatusUnauthorized || r != nil {
				t.Errorf("got %d (session: %v), want 401 and no session", status, r != nil)
			}
		})
	}
}

func TestUserInfoModeConfig(t *testing.T) {
	for _, tc := range []struct{ in, want, err string }{
		{"oidc {\n userinfo\n}", UserInfoOn, ""},
		{"oidc {\n userinfo on\n}", UserInfoOn, ""},
		{"oidc {\n userinfo auto\n}", UserInfoAuto, ""},
		{"oidc {\n userinfo off\n}", UserInfoOff, ""},
		{"oidc {\n userinfo sometimes\n}", "", `userinfo "sometimes" is unknown`},
		{"oidc {\n userinfo on off\n}", "", "wrong argument count"},
	} {
		var h Handler
		err := h.UnmarshalCaddyfile(caddyfile.NewTestDispenser(tc.in))
		switch {
		case tc.err != "" && (err == nil || !strings.Contains(err.Error(), tc.err)):
			t.Errorf("%q: got %v, want an error with %q", tc.in, err, tc.err)
		case tc.err == "" && (err != nil || h.Login.UserInfo != tc.want):
			t.Errorf("%q: got %q, %v; want %q", tc.in, h.Login.UserInfo, err, tc.want)
		}
	}
	idp := testidp.New()
	defer idp.Close()
	h := &Handler{Issuer: idp.Issuer, Client: ClientConfig{ID: "app"}, Session: SessionConfig{Secrets: []string{testSecret}},
		Login: LoginConfig{UserInfo: "true"}}
	h.applyDefaults()
	if err := h.Validate(); err == nil || !strings.Contains(err.Error(), `userinfo "true" is unknown; use auto, on or off`) {
		t.Errorf("JSON userinfo \"true\": got %v", err)
	}
	h.Login.UserInfo = ""
	h.applyDefaults()
	if h.Login.UserInfo != UserInfoAuto {
		t.Errorf("default userinfo %q, want auto", h.Login.UserInfo)
	}
}

func TestExpressionClaims(t *testing.T) {
	for _, tc := range []struct {
		src   string
		names []string
		all   bool
	}{
		{`claims.department == "ops"`, []string{"department"}, false},
		{`"admin" in claims.groups || claims["urn:roles"] == "x"`, []string{"groups", "urn:roles"}, false},
		{`has(claims.email) && claims.realm_access.roles.exists(r, r == "a")`, []string{"email", "realm_access"}, false},
		{`size(claims) > 1`, nil, true},
		{`claims[claims.key] == "x"`, nil, true},
		{`"a" in claims`, nil, true},
	} {
		names, all := expressionClaims(tc.src)
		slices.Sort(names)
		want := slices.Clone(tc.names)
		slices.Sort(want)
		if all != tc.all || (!all && !slices.Equal(names, want)) {
			t.Errorf("%s: got %v, all %v; want %v, all %v", tc.src, names, all, tc.names, tc.all)
		}
	}
}

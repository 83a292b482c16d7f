package caddyoidc

import (
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"testing"

	"github.com/caddyserver/caddy/v2"
	"go.uber.org/zap"

	"github.com/caddy-oidc/caddy-oidc/internal/testidp"
)

func TestClaimRules(t *testing.T) {
	idp := testidp.New()
	defer idp.Close()
	keycloak := map[string]any{
		"sub": "k1", "email": "Kim@Corp.Example", "email_verified": true, "department": "ops",
		"realm_access":             map[string]any{"roles": []any{"offline_access", "admin"}},
		"resource_access":          map[string]any{"my-app": map[string]any{"roles": []any{"editor"}}},
		"groups":                   []any{"/staff", "/oncall"},
		"https://example.com/tier": "gold",
	}
	unverified := map[string]any{"sub": "u1", "email": "u@corp.example", "email_verified": false}
	f := false
	cases := []struct {
		name   string
		rules  func(h *Handler)
		claims map[string]any
		want   int
	}{
		{"realm roles by nested path", func(h *Handler) { h.RolesClaim = "realm_access.roles"; h.Allow.Roles = []string{"admin"} }, keycloak, 200},
		{"client roles by nested path", func(h *Handler) { h.RolesClaim = "resource_access.my-app.roles"; h.Allow.Roles = []string{"editor"} }, keycloak, 200},
		{"client roles, missing", func(h *Handler) { h.RolesClaim = "resource_access.my-app.roles"; h.Allow.Roles = []string{"admin"} }, keycloak, 403},
		{"groups claim renamed", func(h *Handler) { h.GroupsClaim = "realm_access.roles"; h.Allow.Groups = []string{"admin"} }, keycloak, 200},
		{"domain, case-insensitive", func(h *Handler) { h.Allow.Domains = []string{"corp.EXAMPLE"} }, keycloak, 200},
		{"unverified email refused", func(h *Handler) { h.Allow.Domains = []string{"corp.example"} }, unverified, 403},
		{"unverified email accepted when not required", func(h *Handler) { h.Allow.Domains = []string{"corp.example"}; h.Allow.RequireEmailVerified = &f }, unverified, 200},
		{"CEL: department and group", func(h *Handler) { h.Allow.Expression = `claims.department == "ops" && "/oncall" in claims.groups` }, keycloak, 200},
		{"CEL: namespaced claim", func(h *Handler) { h.Allow.Expression = `claims["https://example.com/tier"] == "gold"` }, keycloak, 200},
		{"CEL: false", func(h *Handler) { h.Allow.Expression = `claims.department == "finance"` }, keycloak, 403},
		{"CEL: missing claim is a no", func(h *Handler) { h.Allow.Expression = `claims.team == "x"` }, keycloak, 403},
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
	t.Run("roles placeholder follows roles_claim", func(t *testing.T) {
		h := newTestHandler(t, idp, func(h *Handler) {
			h.RolesClaim = "realm_access.roles"
			h.Header["X-Roles"] = "{http.auth.user.roles}"
		})
		next := &recordNext{}
		if err := h.ServeHTTP(httptest.NewRecorder(), loggedIn(t, h, keycloak, nil), next); err != nil {
			t.Fatal(err)
		}
		if got := next.req.Header.Get("X-Roles"); got != "offline_access,admin" {
			t.Errorf("X-Roles %q", got)
		}
	})
	t.Run("a bad expression fails at load", func(t *testing.T) {
		h := &Handler{Issuer: idp.Issuer, Client: ClientConfig{ID: "app"}, Session: SessionConfig{Secrets: []string{testSecret}}, Allow: AllowPolicy{Expression: `claims.x ==`}}
		if err := h.provision(caddy.Context{}, zap.NewNop()); err == nil {
			t.Error("a malformed allow_expression was accepted")
		}
	})
	_ = http.StatusOK
}

func TestAuthorizationParams(t *testing.T) {
	idp := testidp.New()
	defer idp.Close()
	h := newTestHandler(t, idp, func(h *Handler) {
		h.Login.AuthParams = map[string]string{"audience": "https://api.example.com", "acr_values": "mfa"}
		h.Login.Scopes = []string{"openid", "email", "offline_access"}
	})
	_, q := startLogin(t, h, "/page?login_hint=kim@corp.example")
	for k, want := range map[string]string{"audience": "https://api.example.com", "acr_values": "mfa",
		"login_hint": "kim@corp.example", "scope": "openid email offline_access"} {
		if q.Get(k) != want {
			t.Errorf("%s = %q, want %q", k, q.Get(k), want)
		}
	}
	// Google: offline access is a parameter, not a scope.
	g := &Handler{Issuer: "https://accounts.google.com", Login: LoginConfig{Scopes: []string{"openid", "email", "offline_access"}}}
	gq := g.authorizationParams("")
	if gq.Get("scope") != "openid email" || gq.Get("access_type") != "offline" || gq.Get("prompt") != "consent" {
		t.Errorf("google: %v", gq)
	}
	// Protocol parameters cannot be overridden.
	bad := &Handler{Issuer: idp.Issuer, Client: ClientConfig{ID: "app"}, Session: SessionConfig{Secrets: []string{testSecret}}, Login: LoginConfig{AuthParams: map[string]string{"redirect_uri": "https://evil.example"}}}
	if err := bad.provision(caddy.Context{}, zap.NewNop()); err == nil {
		t.Error("auth_param redirect_uri was accepted")
	}
}

func TestUserInfoClaims(t *testing.T) {
	idp := testidp.New()
	defer idp.Close()
	h := newTestHandler(t, idp, func(h *Handler) {
		h.Login.UserInfo = UserInfoOn
		h.Header["X-Dept"] = "{http.auth.user.claims.department}"
	})
	login := func(userinfoSub string) (int, *http.Cookie) {
		idp.OnUserInfo(func(w http.ResponseWriter, r *http.Request) {
			if !strings.HasPrefix(r.Header.Get("Authorization"), "Bearer at-") {
				w.WriteHeader(http.StatusUnauthorized)
				return
			}
			w.Header().Set("Content-Type", "application/json")
			_, _ = w.Write([]byte(`{"sub":"` + userinfoSub + `","department":"ops","email":"other@example.com"}`))
		})
		attempt, q := startLogin(t, h, "/")
		claims := idp.Claims("app", q.Get("nonce"))
		idp.OnToken(testidp.TokenResponse(idp.Sign(claims), nil))
		w, err := callback(h, attempt, url.Values{"code": {"c"}, "state": {q.Get("state")}})
		for _, c := range w.Result().Cookies() {
			if c.Name == DefaultCookieName {
				return statusOf(err, w), c
			}
		}
		return statusOf(err, w), nil
	}
	status, cookie := login("user-1")
	if status != http.StatusFound || cookie == nil {
		t.Fatalf("login with userinfo: %d", status)
	}
	r := request("GET", "/")
	r.AddCookie(cookie)
	next := &recordNext{}
	if err := h.ServeHTTP(httptest.NewRecorder(), r, next); err != nil {
		t.Fatal(err)
	}
	if next.req.Header.Get("X-Dept") != "ops" || next.req.Header.Get("X-Auth-Email") != "user1@example.com" {
		t.Errorf("merged claims: dept %q email %q (the ID token's email wins)", next.req.Header.Get("X-Dept"), next.req.Header.Get("X-Auth-Email"))
	}
	if status, cookie := login("someone-else"); status != http.StatusUnauthorized || cookie != nil {
		t.Errorf("userinfo about another sub: got %d, want 401 and no session", status)
	}
}

// TestProviderClaimShapes: the claim shapes of the IdPs users run, and the
// configuration the README gives for each.
func TestProviderClaimShapes(t *testing.T) {
	idp := testidp.New()
	defer idp.Close()
	cases := []struct {
		provider string
		claims   map[string]any
		config   func(h *Handler)
	}{
		{"Keycloak realm roles", map[string]any{"sub": "s", "realm_access": map[string]any{"roles": []any{"admin"}}},
			func(h *Handler) { h.RolesClaim = "realm_access.roles"; h.Allow.Roles = []string{"admin"} }},
		{"Keycloak client roles", map[string]any{"sub": "s", "resource_access": map[string]any{"app": map[string]any{"roles": []any{"admin"}}}},
			func(h *Handler) { h.RolesClaim = "resource_access.app.roles"; h.Allow.Roles = []string{"admin"} }},
		{"Zitadel project roles", map[string]any{"sub": "s", "urn:zitadel:iam:org:project:roles": map[string]any{"admin": map[string]any{"123": "org.example"}}},
			func(h *Handler) {
				h.RolesClaim = "urn:zitadel:iam:org:project:roles"
				h.Allow.Roles = []string{"admin"}
			}},
		{"Auth0 namespaced roles", map[string]any{"sub": "s", "https://example.com/roles": []any{"admin"}},
			func(h *Handler) { h.RolesClaim = "https://example.com/roles"; h.Allow.Roles = []string{"admin"} }},
		{"Entra ID app roles", map[string]any{"sub": "s", "roles": []any{"Admin.All"}, "tid": "t"},
			func(h *Handler) { h.Allow.Roles = []string{"Admin.All"} }},
		{"Google hosted domain", map[string]any{"sub": "s", "email": "a@corp.example", "email_verified": true, "hd": "corp.example"},
			func(h *Handler) { h.Allow.Expression = `claims.hd == "corp.example"` }},
		{"GitLab groups", map[string]any{"sub": "s", "groups_direct": []any{"infra/oncall"}},
			func(h *Handler) { h.GroupsClaim = "groups_direct"; h.Allow.Groups = []string{"infra/oncall"} }},
		{"Okta, Authentik, Dex groups", map[string]any{"sub": "s", "groups": []any{"admins"}, "email_verified": true},
			func(h *Handler) { h.Allow.Groups = []string{"admins"} }},
	}
	for _, tc := range cases {
		t.Run(tc.provider, func(t *testing.T) {
			h := newTestHandler(t, idp, tc.config)
			w := httptest.NewRecorder()
			if err := h.ServeHTTP(w, loggedIn(t, h, tc.claims, nil), &recordNext{}); statusOf(err, w) != http.StatusOK {
				t.Errorf("allowed user refused: %d", statusOf(err, w))
			}
			other := map[string]any{"sub": "nobody"}
			w = httptest.NewRecorder()
			if err := h.ServeHTTP(w, loggedIn(t, h, other, nil), &recordNext{}); statusOf(err, w) != http.StatusForbidden {
				t.Errorf("a user without the claim: %d, want 403", statusOf(err, w))
			}
		})
	}
}

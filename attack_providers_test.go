package caddyoidc

import (
	"testing"

	"github.com/caddy-oidc/caddy-oidc/internal/testidp"
)

// With several providers, two people who have the same sub at two IdPs
// (numeric ids: GitLab, Zitadel, Dex, two Keycloak realms) must not reach
// the upstream as one user: {http.auth.user.issuer} and
// {http.auth.user.provider} tell them apart, and the assertion names the
// IdP (idp) and the provider.
func TestAttackSameSubAtTwoProvidersIsOneUpstreamUser(t *testing.T) {
	a, b := testidp.New(), testidp.New()
	defer a.Close()
	defer b.Close()
	h := newChooser(t, a, b, func(h *Handler) {
		h.Header["X-Auth-User"] = "{http.auth.user.id}"
		h.Header["X-Auth-Issuer"] = "{http.auth.user.issuer}"
		h.Assertion = &AssertionConfig{}
		h.Header[assertionHeader] = "{http.auth.user.assertion}"
	})
	staff, contractors := h.chooser.children[0].h, h.chooser.children[1].h
	seen := map[string][3]any{}
	for name, p := range map[string]*Handler{"staff": staff, "contractors": contractors} {
		r := withCookies(loggedIn(t, p, map[string]any{"sub": "1042"}, nil), "/reports")
		r.Host = "app.example.com"
		code, next, _ := serve(h, r)
		if code != 200 || !next.called {
			t.Fatalf("%s session: %d", name, code)
		}
		pl := payloadOf(t, next.req.Header.Get(assertionHeader))
		seen[name] = [3]any{next.req.Header.Get("X-Auth-User") + "|" + next.req.Header.Get("X-Auth-Issuer"), pl["iss"], pl["sub"]}
	}
	if seen["staff"] == seen["contractors"] {
		t.Errorf("a staff user and a contractor with the same sub are indistinguishable upstream: id|iss headers, assertion iss, sub = %v", seen["staff"])
	}
}

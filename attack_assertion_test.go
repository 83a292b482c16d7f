package caddyoidc

import (
	"encoding/base64"
	"encoding/json"
	"net/http"
	"strings"
	"testing"

	"github.com/caddy-oidc/caddy-oidc/internal/testidp"
)

// payloadOf decodes a compact JWS's claims without verifying it.
func payloadOf(t *testing.T, tok string) map[string]any {
	t.Helper()
	parts := strings.Split(tok, ".")
	if len(parts) != 3 {
		t.Fatalf("not a JWS: %q", tok)
	}
	b, err := base64.RawURLEncoding.DecodeString(parts[1])
	if err != nil {
		t.Fatal(err)
	}
	var m map[string]any
	if err := json.Unmarshal(b, &m); err != nil {
		t.Fatal(err)
	}
	return m
}

// Invariant 4: only a boolean true verifies an email): the module
// signs, as the user's email, an address the IdP says it never verified
// (a self-registered account claiming someone else's address), and the
// assertion carries no email_verified, so an upstream that verifies the
// JWT and maps users by email cannot tell. The route's own
// require_email_verified (default true) is not applied to what it signs.
func TestAttackAssertionSignsUnverifiedEmail(t *testing.T) {
	idp := testidp.New()
	defer idp.Close()
	h := assertionHandler(t, idp, nil)
	tok := assertionFor(t, h, map[string]any{"sub": "attacker", "email": "ceo@example.com", "email_verified": false}, "app.example.com")
	if _, err := verify(tok, fetchJWKS(t, h), "http://app.example.com", "http://app.example.com"); err != nil {
		t.Fatalf("assertion does not verify: %v", err)
	}
	p := payloadOf(t, tok)
	if p["email"] == "ceo@example.com" && p["email_verified"] != true {
		t.Errorf("the module signed an unverified email as the user's (email_verified: %v): %v", p["email_verified"], p)
	}
}

// Invariant 2: a session belongs to one issuer, client and
// cookie name): two routes of one site with the same issuer and client but
// their own cookie_name do not share sessions (an admin area with its own
// cookie and allow_groups admins). Their assertions, though, are signed
// with the same key (derived from secret + issuer + client only) for the
// same iss and aud (the origin): the public route's assertion for a user
// the admin route would refuse verifies against the admin route's JWKS,
// so an upstream behind the admin route that verifies assertions (rather
// than trusting the network) accepts it.
func TestAttackAssertionOfRouteWithOtherCookieVerifiesHere(t *testing.T) {
	idp := testidp.New()
	defer idp.Close()
	public := assertionHandler(t, idp, func(h *Handler) { h.Session.CookieName = "public_session" })
	admin := newTestHandlerOn(t, public.app, idp, func(h *Handler) {
		h.Session.CookieName = "admin_session"
		h.Allow.Groups = []string{"admins"}
		h.Assertion = &AssertionConfig{}
		h.Header[assertionHeader] = "{http.auth.user.assertion}"
	})
	user := loggedIn(t, public, map[string]any{"sub": "intern", "groups": []any{"interns"}}, nil)
	// The admin route does not take this session (its own cookie name)...
	r := withCookies(user, "/admin")
	for _, c := range user.Cookies() {
		r.AddCookie(&http.Cookie{Name: "admin_session", Value: c.Value})
	}
	if code, next, _ := serve(admin, r); code == 200 || next.called {
		t.Fatalf("precondition: the admin route took the public route's session: %d", code)
	}
	// ...but the public route's assertion verifies as the admin route's.
	tok := assertionFor(t, public, map[string]any{"sub": "intern", "groups": []any{"interns"}}, "app.example.com")
	if _, err := verify(tok, fetchJWKS(t, admin), "http://app.example.com", "http://app.example.com"); err == nil {
		t.Error("the public route's assertion (a user the admin route refuses) verifies against the admin route's JWKS with the same iss and aud")
	}
}

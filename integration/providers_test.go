package integration

import (
	"fmt"
	"io"
	"net/http"
	"strings"
	"testing"

	"github.com/caddy-oidc/caddy-oidc/integration/devidp"
	"github.com/caddy-oidc/caddy-oidc/integration/flow"
)

// TestSeveralProvidersOnOneSite: two IdPs on one site. The chooser page
// offers both; a login_hint of a routed domain goes straight to its IdP;
// the same browser can hold a session with each, and the upstream sees the
// identity of the provider the session is with; one provider's logout
// leaves the other's session.
func TestSeveralProvidersOnOneSite(t *testing.T) {
	port := freePort(t)
	site := fmt.Sprintf("http://127.0.0.1:%d", port)
	start := func(name string) *devidp.IdP {
		idp, err := devidp.Start(devidp.Options{
			RedirectURIs:           []string{site + "/oauth2/callback/" + name},
			PostLogoutRedirectURIs: []string{site + "/bye"},
		})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { idp.Close() })
		return idp
	}
	staffIdP, extIdP := start("staff"), start("contractors")
	e := &env{t: t, idp: staffIdP, caddyURL: site, admin: fmt.Sprintf("127.0.0.1:%d", freePort(t))}
	e.start(fmt.Sprintf(`{
	admin %s
	http_port %d
	auto_https off
}

%s {
	oidc {
		session_secret {env.TEST_SESSION_SECRET}
		scopes openid profile email offline_access
		header X-Auth-User {http.auth.user.id}
		header X-Auth-Email {http.auth.user.email}
		post_logout_redirect_uri /bye
		exclude /bye
		provider staff {
			label "Staff sign-in"
			issuer %s
			client_id demo
			client_secret {env.TEST_CLIENT_SECRET}
			login_hint_domains example.com
		}
		provider contractors {
			label "Contractors"
			issuer %s
			client_id demo
			client_secret {env.TEST_CLIENT_SECRET}
			allow_users bob-id
		}
	}
	reverse_proxy %s
}
`, e.admin, port, site, staffIdP.Issuer, extIdP.Issuer, startUpstream(t)))

	c := e.browser()
	// The chooser, with both providers.
	resp := e.get(c, "/reports", nil)
	page, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK || !strings.Contains(string(page), "Staff sign-in") || !strings.Contains(string(page), "Contractors") {
		t.Fatalf("chooser: %d %s", resp.StatusCode, page)
	}
	// login_hint @example.com: straight to the staff IdP.
	resp, err := flow.Login(c, site+"/reports?login_hint=alice@example.com", staffIdP.Issuer, "alice", "alice-password")
	if err != nil {
		t.Fatal(err)
	}
	got := readEcho(t, resp)
	if got.Path != "/reports" || got.Headers.Get("X-Auth-User") != "alice-id" {
		t.Fatalf("after the staff login: %s as %q", got.Path, got.Headers.Get("X-Auth-User"))
	}
	if staffIdP.CodeGrants() != 1 || extIdP.CodeGrants() != 0 {
		t.Errorf("code grants: staff %d, contractors %d", staffIdP.CodeGrants(), extIdP.CodeGrants())
	}

	// A second browser picks the contractors on the chooser.
	c2 := e.browser()
	resp, err = flow.Login(c2, site+"/reports?oidc_provider=contractors", extIdP.Issuer, "bob", "bob-password")
	if err != nil {
		t.Fatal(err)
	}
	got = readEcho(t, resp)
	if got.Headers.Get("X-Auth-User") != "bob-id" || got.Query != "" {
		t.Fatalf("contractor: %q at %s?%s", got.Headers.Get("X-Auth-User"), got.Path, got.Query)
	}
	// alice is not a contractor: the contractors' allow rule applies to
	// that provider only.
	c3 := e.browser()
	resp, err = flow.Login(c3, site+"/reports?oidc_provider=contractors", extIdP.Issuer, "alice", "alice-password")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusForbidden {
		t.Errorf("alice through the contractors' IdP: %d, want 403", resp.StatusCode)
	}

	// The staff browser logs out: its session ends at the staff IdP; the
	// contractor's session is untouched.
	lo, err := c.Post(site+"/oauth2/logout", "application/x-www-form-urlencoded", nil)
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(lo.Body)
	lo.Body.Close()
	if !strings.Contains(string(body), staffIdP.Issuer) {
		t.Errorf("logout did not go to the staff IdP's end_session: %d %.300s", lo.StatusCode, body)
	}
	resp = e.get(noRedirect(c), "/reports", nil)
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK || resp.Header.Get("Content-Type") != "text/html; charset=utf-8" {
		t.Errorf("after logout the staff browser gets %d %s, want the chooser again", resp.StatusCode, resp.Header.Get("Content-Type"))
	}
	if got := readEcho(t, e.get(c2, "/reports", nil)); got.Headers.Get("X-Auth-User") != "bob-id" {
		t.Errorf("the contractor's session did not survive the staff logout")
	}
}

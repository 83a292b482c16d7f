package integration

import (
	"io"
	"net/http"
	"net/url"
	"strings"
	"testing"

	"github.com/caddy-oidc/caddy-oidc/integration/flow"
)

// Step-up per route against the development IdP: a route with acr_values
// sends a session without that acr to log in again with acr_values; the
// IdP (which knows no acr) answers with an ID token without one, and the
// login is refused with 403, never a loop, while the session keeps working
// on the routes that ask for less. (max_age is proven by the unit tests:
// the development IdP's login screen does not complete a request that
// carries max_age.)
func TestStepUpAgainstDevIdP(t *testing.T) {
	block := func(extra string) string {
		return `
		oidc {
			issuer {$TEST_ISSUER}
			client_id demo
			client_secret {env.TEST_CLIENT_SECRET}
			session_secret {env.TEST_SESSION_SECRET}
			scopes openid profile email offline_access
			header X-Auth-User {http.auth.user.id}
			` + extra + `
		}`
	}
	e := newEnv(t, envOptions{site: `
	route /strong/* {` + block("acr_values urn:example:mfa") + `
	}`})
	c := e.browser()
	readEcho(t, e.login(c, "/", "alice", "alice-password"))

	// The stronger route asks the IdP for the acr.
	resp := e.get(noRedirect(c), "/strong/report", nil)
	resp.Body.Close()
	loc, _ := url.Parse(resp.Header.Get("Location"))
	if resp.StatusCode != http.StatusFound || !strings.HasPrefix(loc.String(), e.idp.Issuer) || loc.Query().Get("acr_values") != "urn:example:mfa" {
		t.Fatalf("a session without the acr on the stronger route: %d to %s", resp.StatusCode, loc)
	}
	// The IdP cannot satisfy it: 403 at the callback, no new login loop.
	resp, err := flow.Login(c, e.caddyURL+"/strong/report", e.idp.Issuer, "alice", "alice-password")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusForbidden {
		t.Errorf("a login the IdP could not step up: %d (%s) at %s, want 403", resp.StatusCode, body, resp.Request.URL)
	}
	// The session still works where less is asked.
	if got := readEcho(t, e.get(c, "/plain", nil)); got.Headers.Get("X-Auth-User") != "alice-id" {
		t.Errorf("after the refused step-up the session is gone on the plain route")
	}
}

package integration

import (
	"fmt"
	"testing"
	"time"

	"github.com/caddy-oidc/caddy-oidc/integration/devidp"
)

// thinEnv is an env whose IdP puts only sub in ID tokens (as panva's
// oidc-provider does), with access tokens of accessTTL.
func thinEnv(t *testing.T, accessTTL time.Duration, oidc string) *env {
	t.Helper()
	port := freePort(t)
	u := fmt.Sprintf("http://127.0.0.1:%d", port)
	idp, err := devidp.Start(devidp.Options{
		RedirectURIs:        []string{u + "/oauth2/callback"},
		AccessTokenLifetime: accessTTL,
		ThinIDTokens:        true,
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { idp.Close() })
	e := &env{t: t, idp: idp, caddyURL: u, admin: fmt.Sprintf("127.0.0.1:%d", freePort(t))}
	e.replicas = []*env{e}
	e.start(caddyfileFor(e, port, idp.Issuer, startUpstream(t), envOptions{oidc: oidc}))
	return e
}

// Issue 12.2: against an IdP whose ID tokens carry only sub, the default
// configuration (no userinfo line: auto) still gives the upstream the
// user's email, name and groups, after login and after a refresh, which
// fetches UserInfo again with the new access token.
func TestUserInfoAutoWithThinIDTokens(t *testing.T) {
	// Tokens of 60 s refreshed 70 s before they expire: every request of
	// the session refreshes, the login's own last one included, so the
	// test does not depend on how long the login takes.
	e := thinEnv(t, 60*time.Second, "refresh_before 70s")
	c := e.browser()
	got := readEcho(t, e.login(c, "/", "alice", "alice-password"))
	if email, name, groups := got.Headers.Get("X-Auth-Email"), got.Headers.Get("X-Auth-Name"), got.Headers.Get("X-Auth-Groups"); email != "alice@example.com" || name != "Alice Liddell" || groups != "admins,staff" {
		t.Fatalf("after login: email %q name %q groups %q", email, name, groups)
	}
	after := readEcho(t, e.get(c, "/after", nil))
	if email, groups := after.Headers.Get("X-Auth-Email"), after.Headers.Get("X-Auth-Groups"); email != "alice@example.com" || groups != "admins,staff" {
		t.Errorf("after a refresh: email %q groups %q", email, groups)
	}
	// One UserInfo call at the callback, and one more with each refreshed
	// access token.
	refreshes, calls := e.idp.RefreshGrants(), e.idp.UserInfoRequests()
	if refreshes < 1 || calls != refreshes+1 {
		t.Errorf("%d refresh grant(s) and %d UserInfo calls; want at least one refresh and one call at login plus one per refresh", refreshes, calls)
	}
}

// The control: with userinfo off, the same IdP's sessions have no email,
// so the test above proves UserInfo filled it in.
func TestUserInfoOffWithThinIDTokens(t *testing.T) {
	e := thinEnv(t, 5*time.Minute, "userinfo off")
	got := readEcho(t, e.login(e.browser(), "/", "alice", "alice-password"))
	if email := got.Headers.Get("X-Auth-Email"); email != "" || e.idp.UserInfoRequests() != 0 {
		t.Errorf("userinfo off: email %q, %d UserInfo calls; want neither", email, e.idp.UserInfoRequests())
	}
}

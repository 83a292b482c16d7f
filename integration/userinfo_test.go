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
	// Tokens of 6 s (expires_in 5, truncated), refreshed 3 s before they
	// expire: a login has 2 s before its session is due.
	e := thinEnv(t, 6*time.Second, "refresh_before 3s")
	c := e.browser()
	loggedIn := time.Now()
	got := readEcho(t, e.login(c, "/", "alice", "alice-password"))
	if e.idp.RefreshGrants() != 0 {
		t.Skipf("the login took %s, so long that its session was refreshed at once; nothing to tell apart", time.Since(loggedIn))
	}
	if email, name, groups := got.Headers.Get("X-Auth-Email"), got.Headers.Get("X-Auth-Name"), got.Headers.Get("X-Auth-Groups"); email != "alice@example.com" || name != "Alice Liddell" || groups != "admins,staff" {
		t.Fatalf("after login: email %q name %q groups %q", email, name, groups)
	}
	atLogin := e.idp.UserInfoRequests()
	if atLogin < 1 {
		t.Fatalf("the IdP's UserInfo was called %d times at login", atLogin)
	}

	var after echo
	waitUntil(t, 15*time.Second, "a refresh", func() bool {
		after = readEcho(t, e.get(c, "/after", nil))
		return e.idp.RefreshGrants() >= 1
	})
	e.idp.SetAccessTokenLifetime(5 * time.Minute) // no more refreshes
	if email, groups := after.Headers.Get("X-Auth-Email"), after.Headers.Get("X-Auth-Groups"); email != "alice@example.com" || groups != "admins,staff" {
		t.Errorf("after the refresh: email %q groups %q", email, groups)
	}
	if n := e.idp.UserInfoRequests(); n <= atLogin {
		t.Errorf("UserInfo calls: %d at login, %d after the refresh; want it fetched again", atLogin, n)
	}
	t.Logf("UserInfo calls: %d at login, %d after %d refresh grant(s), %s after the login began", atLogin, e.idp.UserInfoRequests(), e.idp.RefreshGrants(), time.Since(loggedIn).Round(time.Millisecond))
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

package integration

import (
	"fmt"
	"net/http"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/caddy-oidc/caddy-oidc/integration/devidp"
	"github.com/caddy-oidc/caddy-oidc/internal/redistest"
)

// capturedCallback runs a login at the IdP for user and returns the callback
// URL the IdP sends the browser to, without letting Caddy see it.
func (e *env) capturedCallback(t *testing.T, c *http.Client, user string) *url.URL {
	t.Helper()
	resp, err := c.Get(e.caddyURL + "/start")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	form := resp.Request.URL
	capture := noRedirect(c)
	resp, err = capture.PostForm(e.idp.Issuer+"/login/username", url.Values{"id": {form.Query().Get("authRequestID")}, "username": {user}, "password": {user + "-password"}})
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	next := resp.Header.Get("Location")
	if !strings.HasPrefix(next, "http") {
		next = e.idp.Issuer + next
	}
	resp, err = capture.Get(next)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	cb, err := url.Parse(resp.Header.Get("Location"))
	if err != nil || cb.Path != "/oauth2/callback" {
		t.Fatalf("no callback: %q", resp.Header.Get("Location"))
	}
	return cb
}

// TestAuthorizationCodeInjection: an attacker's code, injected into the
// victim's callback (with the victim's own state), fails: the victim's
// PKCE verifier does not match the challenge the attacker's code was
// issued for, so the IdP refuses the exchange.
func TestAuthorizationCodeInjection(t *testing.T) {
	e := newEnv(t, envOptions{})
	attacker, victim := e.browser(), e.browser()
	attackerCB := e.capturedCallback(t, attacker, "bob")
	victimCB := e.capturedCallback(t, victim, "alice")
	injected := *victimCB
	q := injected.Query()
	q.Set("code", attackerCB.Query().Get("code"))
	injected.RawQuery = q.Encode()
	resp, err := noRedirect(victim).Get(injected.String())
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusBadRequest {
		t.Errorf("injected code: got %d, want 400", resp.StatusCode)
	}
	if n, _ := sessionCookies(victim, e.caddyURL); n != 0 {
		t.Error("the victim got a session from the attacker's code")
	}
	// Login CSRF: the attacker's whole callback, in the victim's browser
	// (which holds no matching attempt), creates no session either.
	resp, err = noRedirect(e.browser()).Get(attackerCB.String())
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusBadRequest {
		t.Errorf("attacker's callback in another browser: got %d, want 400", resp.StatusCode)
	}
}

// TestIdPDownAtStart: Caddy starts while the IdP is down, answers 503 with
// Retry-After, and logs users in once the IdP is up, by itself.
func TestIdPDownAtStart(t *testing.T) {
	idpPort := freePort(t)
	issuer := fmt.Sprintf("http://127.0.0.1:%d", idpPort)
	port := freePort(t)
	e := &env{t: t, caddyURL: fmt.Sprintf("http://127.0.0.1:%d", port), admin: fmt.Sprintf("127.0.0.1:%d", freePort(t))}
	e.replicas = []*env{e}
	up := startUpstream(t)
	e.start(caddyfileFor(e, port, issuer, up, envOptions{}))

	resp := e.get(noRedirect(http.DefaultClient), "/", nil)
	resp.Body.Close()
	if resp.StatusCode != http.StatusServiceUnavailable || resp.Header.Get("Retry-After") == "" {
		t.Fatalf("IdP down: got %d, want 503 with Retry-After", resp.StatusCode)
	}
	idp, err := devidp.Start(devidp.Options{Addr: fmt.Sprintf("127.0.0.1:%d", idpPort), RedirectURIs: []string{e.caddyURL + "/oauth2/callback"}})
	if err != nil {
		t.Fatal(err)
	}
	defer idp.Close()
	e.idp = idp
	start := time.Now()
	var last int
	if !redistest.Poll(15*time.Second, func() bool {
		resp := e.get(noRedirect(http.DefaultClient), "/", nil)
		resp.Body.Close()
		last = resp.StatusCode
		return last == http.StatusFound
	}) {
		t.Fatalf("still %d 15s after the IdP came up", last)
	}
	t.Logf("logins work again %s after the IdP came up", time.Since(start).Round(100*time.Millisecond))
	readEcho(t, e.login(e.browser(), "/", "alice", "alice-password"))
}

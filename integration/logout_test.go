package integration

import (
	"net/http"
	"net/url"
	"testing"
	"time"

	"github.com/caddy-oidc/caddy-oidc/integration/devidp"
	"github.com/caddy-oidc/caddy-oidc/internal/redistest"
)

func postLogout(t *testing.T, target, token string) int {
	t.Helper()
	resp, err := http.PostForm(target+"/oauth2/backchannel_logout", url.Values{"logout_token": {token}})
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	return resp.StatusCode
}

func apiStatus(t *testing.T, e *env, c *http.Client) int {
	t.Helper()
	resp := e.get(noRedirect(c), "/api", map[string]string{"Accept": "application/json"})
	resp.Body.Close()
	return resp.StatusCode
}

func TestBackchannelLogoutEndsSessionsOnEveryReplica(t *testing.T) {
	for _, store := range []string{"cookie", "cache"} {
		t.Run(store, func(t *testing.T) {
			srv := redistest.Start(t, persistent...)
			e := newEnv(t, envOptions{replicas: 2, oidc: "session_store " + store, global: valkeyGlobal(srv.Addr)})
			a, b := e.replicas[0], e.replicas[1]
			alice1, alice2, bob := a.browser(), b.browser(), a.browser()
			readEcho(t, a.login(alice1, "/", "alice", "alice-password"))
			readEcho(t, b.login(alice2, "/", "alice", "alice-password"))
			readEcho(t, a.login(bob, "/", "bob", "bob-password"))
			time.Sleep(1100 * time.Millisecond)

			for name, c := range map[string]devidp.LogoutClaims{
				"wrong aud":      {Subject: "alice-id", Audience: "other-client"},
				"wrong iss":      {Subject: "alice-id", Issuer: "http://evil.example"},
				"iat too old":    {Subject: "alice-id", IssuedAt: time.Now().Add(-time.Hour)},
				"nonce present":  {Subject: "alice-id", Nonce: "n"},
				"no events":      {Subject: "alice-id", NoEvents: true},
				"no sid nor sub": {},
			} {
				tok, err := e.idp.LogoutToken(c)
				if err != nil {
					t.Fatal(err)
				}
				if got := postLogout(t, a.caddyURL, tok); got != http.StatusBadRequest {
					t.Errorf("%s: got %d, want 400", name, got)
				}
			}
			if apiStatus(t, b, alice2) != http.StatusOK || apiStatus(t, a, alice1) != http.StatusOK {
				t.Fatal("a refused logout token ended a session")
			}

			tok, _ := e.idp.LogoutToken(devidp.LogoutClaims{Subject: "alice-id"})
			if got := postLogout(t, a.caddyURL, tok); got != http.StatusOK {
				t.Fatalf("valid logout token: got %d", got)
			}
			// Replica b learns it through Valkey; give the announcement a moment.
			deadline := time.Now().Add(2 * time.Second)
			start := time.Now()
			for apiStatus(t, b, alice2) != http.StatusUnauthorized {
				if time.Now().After(deadline) {
					t.Fatal("replica b still serves alice's session after the back-channel logout")
				}
				time.Sleep(5 * time.Millisecond)
			}
			t.Logf("%s store: the logout reached the other replica within %s", store, time.Since(start).Round(time.Millisecond))
			if got := apiStatus(t, a, alice1); got != http.StatusUnauthorized {
				t.Errorf("alice on replica a: %d, want 401", got)
			}
			if got := apiStatus(t, a, bob); got != http.StatusOK {
				t.Errorf("bob on replica a: %d, want 200 (not logged out)", got)
			}
			if got := postLogout(t, a.caddyURL, tok); got != http.StatusBadRequest {
				t.Errorf("replayed logout token: %d, want 400", got)
			}
		})
	}
}

func TestRPInitiatedLogoutEndsTheUsersOtherSessions(t *testing.T) {
	srv := redistest.Start(t, persistent...)
	e := newEnv(t, envOptions{replicas: 2, global: valkeyGlobal(srv.Addr)})
	a, b := e.replicas[0], e.replicas[1]
	tab1, tab2 := a.browser(), b.browser()
	readEcho(t, a.login(tab1, "/", "alice", "alice-password"))
	readEcho(t, b.login(tab2, "/", "alice", "alice-password"))
	time.Sleep(1100 * time.Millisecond)

	// Logging out in one browser: the module sends the user to the IdP's
	// end_session, the IdP ends its session and sends a back-channel
	// logout, which ends the other browser's session on the other replica.
	resp, err := tab1.PostForm(a.caddyURL+"/oauth2/logout", nil)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.Request.URL.String() != a.caddyURL+"/bye" {
		t.Errorf("after logout the browser is at %s", resp.Request.URL)
	}
	if e.idp.BackchannelLogoutsSent() != 1 {
		t.Fatalf("the IdP sent %d back-channel logouts, want 1", e.idp.BackchannelLogoutsSent())
	}
	deadline := time.Now().Add(2 * time.Second)
	for apiStatus(t, b, tab2) != http.StatusUnauthorized {
		if time.Now().After(deadline) {
			t.Fatal("the other browser's session survived the logout")
		}
		time.Sleep(5 * time.Millisecond)
	}
}

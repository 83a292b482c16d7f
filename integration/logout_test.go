package integration

import (
	"html"
	"io"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"regexp"
	"strings"
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
			// No wait: a logout ends the sessions started up to its own
			// second, those of the same second included.

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
			start := time.Now()
			if !redistest.Poll(2*time.Second, func() bool { return apiStatus(t, b, alice2) == http.StatusUnauthorized }) {
				t.Fatal("replica b still serves alice's session 2 s after the back-channel logout")
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

	// Logging out in one browser: the module sends the user to the IdP's
	// end_session, the IdP ends its session and sends a back-channel
	// logout, which ends the other browser's session on the other replica.
	action, fields := endSessionForm(t, logoutAsBrowser(t, a, tab1))
	resp, err := tab1.PostForm(action, fields)
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
	if !redistest.Poll(2*time.Second, func() bool { return apiStatus(t, b, tab2) == http.StatusUnauthorized }) {
		t.Fatal("the other browser's session survived the logout by 2 s")
	}
}

// logoutAsBrowser POSTs to the logout path as a same-origin form does (a
// browser sends Origin) and returns the response, not followed.
func logoutAsBrowser(t *testing.T, e *env, c *http.Client) *http.Response {
	t.Helper()
	req, _ := http.NewRequest(http.MethodPost, e.caddyURL+"/oauth2/logout", nil)
	req.Header.Set("Origin", e.caddyURL)
	resp, err := noRedirect(c).Do(req)
	if err != nil {
		t.Fatal(err)
	}
	return resp
}

var (
	authCode   = regexp.MustCompile(`code=eyJ[A-Za-z0-9._~%-]*`)
	formAction = regexp.MustCompile(`<form method="post" action="([^"]+)">`)
	formInput  = regexp.MustCompile(`<input type="hidden" name="([^"]+)" value="([^"]*)">`)
)

// endSessionForm reads the self-submitting form the module answers a
// logout with: the IdP's end_session endpoint and the fields it POSTs.
func endSessionForm(t *testing.T, resp *http.Response) (string, url.Values) {
	t.Helper()
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	m := formAction.FindSubmatch(b)
	if resp.StatusCode != http.StatusOK || m == nil {
		t.Fatalf("logout: got %d, want the form to the IdP's end_session endpoint:\n%s", resp.StatusCode, b)
	}
	fields := url.Values{}
	for _, f := range formInput.FindAllSubmatch(b, -1) {
		fields.Set(html.UnescapeString(string(f[1])), html.UnescapeString(string(f[2])))
	}
	return html.UnescapeString(string(m[1])), fields
}

// TestLogoutPutsNoTokenInTheAccessLog (issue 11.6): RP logout sends the ID
// token to the IdP in a POST body; after a whole logout (through the IdP
// and back), Caddy's access log, which records every request URI and
// response header, holds no ID token. The dev IdP (zitadel's op) accepts
// the POST: it ends its session, sends its back-channel logout and
// redirects to post_logout_redirect_uri.
func TestLogoutPutsNoTokenInTheAccessLog(t *testing.T) {
	accessLog := filepath.Join(t.TempDir(), "access.log")
	e := newEnv(t, envOptions{site: "log {\n\t\toutput file " + accessLog + "\n\t}"})
	c := e.browser()
	readEcho(t, e.login(c, "/", "alice", "alice-password"))

	resp := logoutAsBrowser(t, e, c)
	var idToken string
	if loc := resp.Header.Get("Location"); resp.StatusCode == http.StatusFound && strings.HasPrefix(loc, e.idp.Issuer) {
		// The way logout used to go: the token in the redirect's URL.
		resp.Body.Close()
		u, _ := url.Parse(loc)
		idToken = u.Query().Get("id_token_hint")
		if resp, err := c.Get(loc); err == nil {
			resp.Body.Close()
		}
	} else {
		action, fields := endSessionForm(t, resp)
		idToken = fields.Get("id_token_hint")
		if !strings.HasPrefix(action, e.idp.Issuer) || fields.Get("client_id") != "demo" || fields.Get("post_logout_redirect_uri") != e.caddyURL+"/bye" {
			t.Errorf("end-session form: action %s, fields %v", action, fields)
		}
		// What the <noscript> button (or the script) does.
		resp, err := c.PostForm(action, fields)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.Request.URL.String() != e.caddyURL+"/bye" {
			t.Errorf("after the POST to end_session the browser is at %s, want %s/bye", resp.Request.URL, e.caddyURL)
		}
		if n := e.idp.BackchannelLogoutsSent(); n != 1 {
			t.Errorf("the IdP sent %d back-channel logouts, want 1 (did it accept the POST?)", n)
		}
	}
	if !strings.HasPrefix(idToken, "eyJ") {
		t.Fatalf("no ID token was sent to the IdP (%q)", idToken)
	}
	var logs string
	pollLog(t, 5*time.Second, "the access log records the return to /bye", func() bool {
		b, _ := os.ReadFile(accessLog)
		logs = string(b)
		return strings.Contains(logs, `"uri":"/bye"`)
	})
	for name, text := range map[string]string{"access log": logs, "Caddy's own log": e.logs.String()} {
		if strings.Contains(text, idToken) {
			t.Errorf("the %s holds the ID token", name)
		}
		// The dev IdP's authorization codes are JWEs ("eyJ..." too): they
		// are the callback's concern (single-use, useless without the PKCE
		// verifier), not logout's.
		text = authCode.ReplaceAllString(text, "code=CODE")
		if strings.Contains(text, "eyJ") {
			i := max(strings.Index(text, "eyJ")-200, 0)
			t.Errorf("the %s holds the ID token: ...%.400s", name, text[i:])
		}
	}
}

// pollLog waits (bounded) for cond.
func pollLog(t *testing.T, d time.Duration, what string, cond func() bool) {
	t.Helper()
	waitUntil(t, d, what, cond)
}

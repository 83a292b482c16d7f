package integration

import (
	"io"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"testing"
	"time"
)

func TestLoginReachesUpstreamWithIdentity(t *testing.T) {
	e := newEnv(t, envOptions{})
	c := e.browser()
	got := readEcho(t, e.login(c, "/app/page?x=1&y=2", "alice", "alice-password"))
	if got.Path != "/app/page" || got.Query != "x=1&y=2" {
		t.Errorf("landed on %s?%s, want the page first asked for", got.Path, got.Query)
	}
	for k, want := range map[string]string{
		"X-Auth-User": "alice-id", "X-Auth-Email": "alice@example.com",
		"X-Auth-Groups": "admins,staff", "X-Auth-Name": "Alice Liddell",
	} {
		if v := got.Headers.Get(k); v != want {
			t.Errorf("upstream got %s=%q, want %q", k, v, want)
		}
	}
	if ck := got.Headers.Get("Cookie"); strings.Contains(ck, "oidc_session") {
		t.Errorf("the module's cookies reached the upstream: %q", ck)
	}
	n, size := sessionCookies(c, e.caddyURL)
	t.Logf("session cookie for a typical login: %d bytes in %d chunk(s)", size, n)
	if n == 0 {
		t.Fatal("no session cookie")
	}

	// Identity headers sent by the client are replaced, never passed on;
	// other cookies pass untouched.
	u, _ := url.Parse(e.caddyURL)
	c.Jar.SetCookies(u, []*http.Cookie{{Name: "app_pref", Value: "dark"}})
	got = readEcho(t, e.get(c, "/again", map[string]string{"X-Auth-Email": "mallory@evil.example", "X-Auth-Groups": "admins"}))
	if v := got.Headers.Values("X-Auth-Email"); len(v) != 1 || v[0] != "alice@example.com" {
		t.Errorf("upstream got X-Auth-Email %q, want only the verified one", v)
	}
	if ck := got.Headers.Get("Cookie"); ck != "app_pref=dark" {
		t.Errorf("upstream got Cookie %q, want only the application's own cookie", ck)
	}
	if e.idp.CodeGrants() != 1 {
		t.Errorf("IdP saw %d code grants, want 1", e.idp.CodeGrants())
	}
}

func TestUnauthenticatedRequests(t *testing.T) {
	e := newEnv(t, envOptions{})
	c := noRedirect(e.browser())

	resp := e.get(c, "/page", nil)
	resp.Body.Close()
	if resp.StatusCode != http.StatusFound || !strings.HasPrefix(resp.Header.Get("Location"), e.idp.Issuer) {
		t.Fatalf("browser: got %d to %q, want 302 to the IdP", resp.StatusCode, resp.Header.Get("Location"))
	}
	loc, _ := url.Parse(resp.Header.Get("Location"))
	q := loc.Query()
	if q.Get("code_challenge_method") != "S256" || len(q.Get("code_challenge")) != 43 || q.Get("state") == "" || q.Get("nonce") == "" {
		t.Errorf("authorization request lacks PKCE S256, state or nonce: %v", q)
	}

	for name, hdr := range map[string]map[string]string{
		"json":  {"Accept": "application/json"},
		"xhr":   {"X-Requested-With": "XMLHttpRequest"},
		"fetch": {"Sec-Fetch-Mode": "cors"},
	} {
		resp := e.get(&http.Client{CheckRedirect: c.CheckRedirect}, "/api/x", hdr)
		resp.Body.Close()
		if resp.StatusCode != http.StatusUnauthorized || !strings.HasPrefix(resp.Header.Get("WWW-Authenticate"), "Bearer") {
			t.Errorf("%s API request: got %d (WWW-Authenticate %q), want 401 with a challenge", name, resp.StatusCode, resp.Header.Get("WWW-Authenticate"))
		}
	}

	got := readEcho(t, e.get(c, "/public/logo.png", map[string]string{"X-Auth-Email": "forged@evil.example"}))
	if got.Headers.Get("X-Auth-Email") != "" {
		t.Errorf("an excluded path passed a client-sent identity header: %q", got.Headers.Get("X-Auth-Email"))
	}
}

func TestSeveralTabsLogInAtOnce(t *testing.T) {
	e := newEnv(t, envOptions{})
	c := e.browser()
	var forms []*url.URL
	for _, p := range []string{"/tab1", "/tab2", "/tab3"} {
		resp, err := c.Get(e.caddyURL + p)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		forms = append(forms, resp.Request.URL)
	}
	// Finish them in another order than they were started.
	for _, i := range []int{2, 0, 1} {
		got := readEcho(t, e.submitLogin(c, forms[i], "alice", "alice-password"))
		if want := []string{"/tab1", "/tab2", "/tab3"}[i]; got.Path != want {
			t.Errorf("tab %d landed on %s, want %s", i, got.Path, want)
		}
	}
}

func TestOpenRedirectIsRefused(t *testing.T) {
	e := newEnv(t, envOptions{})
	// A raw "/\\evil" request line is covered by the handler's unit tests:
	// Go's client escapes the backslash.
	for _, p := range []string{"//evil.example/x", "//evil.example", "///evil.example"} {
		c := e.browser()
		resp := e.login(c, p, "alice", "alice-password")
		if resp.Request.URL.Host != strings.TrimPrefix(e.caddyURL, "http://") {
			t.Fatalf("return-to %q sent the user to %s", p, resp.Request.URL)
		}
		got := readEcho(t, resp)
		if got.Path != "/" {
			t.Errorf("return-to %q landed on %q, want /", p, got.Path)
		}
	}
}

func TestBadCallbacks(t *testing.T) {
	e := newEnv(t, envOptions{})

	// A real callback URL, captured before Caddy sees it.
	c := e.browser()
	capture := noRedirect(c)
	callback := e.capturedCallback(t, c, "alice")
	with := func(mod func(q url.Values)) string {
		u := *callback
		q := u.Query()
		mod(q)
		u.RawQuery = q.Encode()
		return u.String()
	}
	cases := []struct {
		name string
		url  string
		want int
	}{
		{"missing state", with(func(q url.Values) { q.Del("state") }), 400},
		{"wrong state", with(func(q url.Values) { q.Set("state", "forged") }), 400},
		{"wrong iss", with(func(q url.Values) { q.Set("iss", "http://evil.example") }), 400},
		{"error from the IdP", with(func(q url.Values) { q.Del("code"); q.Set("error", "access_denied") }), 403},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			// A fresh jar holding only the attempt cookie, like the browser.
			cc := e.browser()
			u, _ := url.Parse(e.caddyURL)
			cc.Jar.SetCookies(u, c.Jar.Cookies(u))
			resp, err := noRedirect(cc).Get(tc.url)
			if err != nil {
				t.Fatal(err)
			}
			resp.Body.Close()
			if resp.StatusCode != tc.want {
				t.Errorf("got %d, want %d", resp.StatusCode, tc.want)
			}
			if n, _ := sessionCookies(cc, e.caddyURL); n != 0 {
				t.Errorf("a session cookie was set")
			}
		})
	}

	// The genuine callback works once; the replay does not.
	resp, err := capture.Get(callback.String())
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusFound || resp.Header.Get("Location") != "/start" {
		t.Fatalf("genuine callback: got %d to %q", resp.StatusCode, resp.Header.Get("Location"))
	}
	replay := e.browser()
	u, _ := url.Parse(e.caddyURL)
	replay.Jar.SetCookies(u, c.Jar.Cookies(u))
	resp, err = noRedirect(replay).Get(callback.String())
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusBadRequest {
		t.Errorf("replayed callback: got %d, want 400", resp.StatusCode)
	}
	for _, line := range strings.Split(e.logs.String(), "\n") {
		// Caddy's own error log prints the request URI; the module's
		// messages must not add codes or tokens of their own.
		if strings.Contains(line, `"logger":"http.handlers.oidc"`) && strings.Contains(line, callback.Query().Get("code")) {
			t.Errorf("the authorization code appears in the module's logs: %s", line)
		}
	}
}

func TestTamperedSessionCookies(t *testing.T) {
	e := newEnv(t, envOptions{})
	c := e.browser()
	readEcho(t, e.login(c, "/", "alice", "alice-password"))
	u, _ := url.Parse(e.caddyURL)
	var value string
	for _, ck := range c.Jar.Cookies(u) {
		if ck.Name == "oidc_session" {
			value = ck.Value
		}
	}
	flip := []byte(value)
	flip[len(flip)/2] ^= 1
	for name, v := range map[string]string{
		"tampered":  string(flip),
		"truncated": value[:len(value)/2],
		"foreign":   "AQ" + strings.Repeat("A", 120),
		"garbage":   "not-base64!!",
		"chunked":   "3." + value,
	} {
		req, _ := http.NewRequest(http.MethodGet, e.caddyURL+"/x", nil)
		req.Header.Set("Cookie", "oidc_session="+v)
		req.Header.Set("Accept", "application/json")
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusUnauthorized {
			t.Errorf("%s cookie: got %d, want 401 (no session)", name, resp.StatusCode)
		}
	}
}

func TestRefreshSharesOneGrant(t *testing.T) {
	// A 2 s token: the IdP says expires_in 1 (it rounds down), and the
	// login's own last request already refreshes it (refresh_before 1s).
	e := newEnv(t, envOptions{accessTTL: 2 * time.Second, oidc: "refresh_before 1s"})
	c := e.browser()
	readEcho(t, e.login(c, "/", "alice", "alice-password"))
	// Every token the session holds was granted before the login returned,
	// for 1 s at most, and the module keeps its expiry in whole seconds: it
	// has expired once the clock reaches the second after now + 1 s. (An
	// absolute expiry, so the wait is on the clock, at most 1 s.)
	expiredAt := time.Now().Add(time.Second).Unix()
	waitUntil(t, 3*time.Second, "the access token to expire", func() bool { return time.Now().Unix() >= expiredAt })

	// 20 concurrent requests carrying the same (old) cookie; grants are
	// counted from here.
	u, _ := url.Parse(e.caddyURL)
	cookies := c.Jar.Cookies(u)
	grantsBefore, refusedBefore := e.idp.RefreshGrants(), e.idp.RefusedRefreshGrants()
	var wg sync.WaitGroup
	codes := make([]int, 20)
	for i := range codes {
		wg.Add(1)
		go func() {
			defer wg.Done()
			req, _ := http.NewRequest(http.MethodGet, e.caddyURL+"/dash", nil)
			for _, ck := range cookies {
				req.AddCookie(ck)
			}
			req.Header.Set("Accept", "application/json")
			resp, err := http.DefaultClient.Do(req)
			if err != nil {
				t.Error(err)
				return
			}
			_, _ = io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			codes[i] = resp.StatusCode
		}()
	}
	wg.Wait()
	for i, code := range codes {
		if code != http.StatusOK {
			t.Errorf("request %d: got %d", i, code)
		}
	}
	if g, r := e.idp.RefreshGrants()-grantsBefore, e.idp.RefusedRefreshGrants()-refusedBefore; g != 1 || r != 0 {
		t.Errorf("IdP saw %d refresh grants and %d refused, want exactly 1 and 0", g, r)
	}
	// The browser itself keeps working with its refreshed cookie.
	readEcho(t, e.get(c, "/after", nil))
}

func TestRefreshRefusedEndsSession(t *testing.T) {
	// refresh_before longer than the tokens live: every request refreshes.
	e := newEnv(t, envOptions{accessTTL: 20 * time.Second, oidc: "refresh_before 30s"})
	c := e.browser()
	readEcho(t, e.login(c, "/", "alice", "alice-password"))
	if err := e.idp.RevokeRefreshTokens("alice-id"); err != nil {
		t.Fatal(err)
	}
	resp := e.get(noRedirect(c), "/api", map[string]string{"Accept": "application/json"})
	resp.Body.Close()
	if resp.StatusCode != http.StatusUnauthorized || !strings.Contains(resp.Header.Get("WWW-Authenticate"), "invalid_token") {
		t.Fatalf("got %d (%q), want 401 invalid_token after invalid_grant", resp.StatusCode, resp.Header.Get("WWW-Authenticate"))
	}
	resp = e.get(noRedirect(c), "/page", nil)
	resp.Body.Close()
	if resp.StatusCode != http.StatusFound || !strings.HasPrefix(resp.Header.Get("Location"), e.idp.Issuer) {
		t.Errorf("browser after invalid_grant: got %d to %q, want a new login", resp.StatusCode, resp.Header.Get("Location"))
	}
}

func TestIdPOutageKeepsSessions(t *testing.T) {
	// refresh_before longer than the tokens live: every request tries a
	// refresh. A 3 s token: expires_in 2, so it expires 1-2 s after login.
	e := newEnv(t, envOptions{accessTTL: 3 * time.Second, oidc: "refresh_before 10s"})
	c := e.browser()
	readEcho(t, e.login(c, "/", "alice", "alice-password"))
	e.idp.SetTokenEndpointDown(true)
	grants := e.idp.RefreshGrants()
	// Not yet expired: served although the refresh fails.
	readEcho(t, e.get(c, "/still-valid", nil))

	// Once the token has expired: 503, never a login, the cookie kept.
	// Until then each request is still served.
	var retryAfter string
	waitUntil(t, 10*time.Second, "a 503 once the access token has expired", func() bool {
		resp := e.get(noRedirect(c), "/expired", nil)
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK && resp.StatusCode != http.StatusServiceUnavailable {
			t.Fatalf("IdP down: got %d, want 200 while the token is valid, then 503", resp.StatusCode)
		}
		retryAfter = resp.Header.Get("Retry-After")
		return resp.StatusCode == http.StatusServiceUnavailable
	})
	if retryAfter == "" {
		t.Fatal("IdP down and token expired: a 503 without Retry-After")
	}
	if n, _ := sessionCookies(c, e.caddyURL); n == 0 {
		t.Fatal("the session cookie was removed during an IdP outage")
	}
	e.idp.SetTokenEndpointDown(false)
	// The coordinator hands out the last failure for its error hold (5 s),
	// then refreshes: 503s with Retry-After until then, then the session.
	waitUntil(t, 15*time.Second, "the session to be served after the IdP came back", func() bool {
		resp := e.get(noRedirect(c), "/recovering", nil)
		resp.Body.Close()
		if resp.StatusCode == http.StatusServiceUnavailable && resp.Header.Get("Retry-After") == "" ||
			resp.StatusCode != http.StatusOK && resp.StatusCode != http.StatusServiceUnavailable {
			t.Fatalf("IdP back: got %d (Retry-After %q), want 503 with Retry-After until the refresh, then 200", resp.StatusCode, resp.Header.Get("Retry-After"))
		}
		return resp.StatusCode == http.StatusOK
	})
	readEcho(t, e.get(c, "/recovered", nil))
	if e.idp.RefreshGrants() == grants {
		t.Error("no refresh grant after the IdP came back")
	}
}

func TestLogout(t *testing.T) {
	e := newEnv(t, envOptions{})
	c := e.browser()
	readEcho(t, e.login(c, "/", "alice", "alice-password"))

	// A cross-site GET does not log out: it gets a confirmation form.
	resp := e.get(noRedirect(c), "/oauth2/logout", map[string]string{"Sec-Fetch-Site": "cross-site"})
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK || !strings.Contains(string(body), `method="post"`) {
		t.Fatalf("cross-site GET logout: got %d, want the confirmation form", resp.StatusCode)
	}
	readEcho(t, e.get(c, "/still-in", nil))

	resp, err := noRedirect(c).PostForm(e.caddyURL+"/oauth2/logout", nil)
	if err != nil {
		t.Fatal(err)
	}
	action, fields := endSessionForm(t, resp)
	if !strings.HasPrefix(action, e.idp.Issuer) || fields.Get("id_token_hint") == "" || fields.Get("client_id") != "demo" ||
		fields.Get("post_logout_redirect_uri") != e.caddyURL+"/bye" {
		t.Errorf("end-session form: action %s, fields %v", action, fields)
	}
	if n, _ := sessionCookies(c, e.caddyURL); n != 0 {
		t.Error("the session cookie survived logout")
	}
	// The IdP ends its session and sends the user back to post_logout_redirect_uri.
	resp, err = noRedirect(c).PostForm(action, fields)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if got := resp.Header.Get("Location"); got != e.caddyURL+"/bye" {
		t.Errorf("the IdP sent the user to %q after logout, want %s/bye", got, e.caddyURL)
	}
	resp = e.get(noRedirect(c), "/", nil)
	resp.Body.Close()
	if resp.StatusCode != http.StatusFound {
		t.Errorf("after logout: got %d, want a redirect to login", resp.StatusCode)
	}
}

func TestAllowRules(t *testing.T) {
	e := newEnv(t, envOptions{oidc: "allow_groups admins"})
	readEcho(t, e.login(e.browser(), "/", "alice", "alice-password"))
	resp := e.login(e.browser(), "/", "bob", "bob-password")
	resp.Body.Close()
	if resp.StatusCode != http.StatusForbidden {
		t.Errorf("bob (not in admins): got %d, want 403", resp.StatusCode)
	}
}

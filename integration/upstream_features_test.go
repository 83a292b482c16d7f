package integration

import (
	"encoding/base64"
	"encoding/json"
	"io"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"testing"
	"time"
)

// jwtClaims reads a JWT's payload without verifying it (the upstream
// would verify; here only who the token is about matters).
func jwtClaims(t *testing.T, raw string) map[string]any {
	t.Helper()
	parts := strings.Split(raw, ".")
	if len(parts) != 3 {
		t.Fatalf("not a JWT: %.40q", raw)
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

// userinfoSub asks the IdP whose access token this is, as an upstream
// calling an API with it would learn.
func userinfoSub(t *testing.T, e *env, token string) string {
	t.Helper()
	resp, err := http.Get(e.idp.Issuer + "/.well-known/openid-configuration")
	if err != nil {
		t.Fatal(err)
	}
	var d struct {
		UserInfo string `json:"userinfo_endpoint"`
	}
	_ = json.NewDecoder(resp.Body).Decode(&d)
	resp.Body.Close()
	req, _ := http.NewRequest(http.MethodGet, d.UserInfo, nil)
	req.Header.Set("Authorization", "Bearer "+token)
	resp, err = http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var ui struct {
		Sub string `json:"sub"`
	}
	_ = json.NewDecoder(resp.Body).Decode(&ui)
	return ui.Sub
}

// TestTokensReachTheUpstream: `header Authorization "Bearer
// {http.auth.user.access_token}"` lets the application call APIs as the
// user, with the current token after a refresh; the tokens never appear in
// Caddy's log; logins and refreshes are logged for the operator.
func TestTokensReachTheUpstream(t *testing.T) {
	e := newEnv(t, envOptions{accessTTL: 10 * time.Second, oidc: `
		header Authorization "Bearer {http.auth.user.access_token}"
		header X-Id-Token {http.auth.user.id_token}
		header X-Token-Expiry {http.auth.user.access_token_expiry}
		refresh_before 9s`})
	c := e.browser()
	got := readEcho(t, e.login(c, "/api", "alice", "alice-password"))
	bearer, ok := strings.CutPrefix(got.Headers.Get("Authorization"), "Bearer ")
	if !ok || bearer == "" {
		t.Fatalf("upstream got Authorization %q, want the access token", got.Headers.Get("Authorization"))
	}
	if sub := userinfoSub(t, e, bearer); sub != "alice-id" {
		t.Errorf("the IdP's UserInfo says the access token is %q's, want alice-id", sub)
	}
	idToken := got.Headers.Get("X-Id-Token")
	if jwtClaims(t, idToken)["sub"] != "alice-id" {
		t.Errorf("X-Id-Token is not alice's ID token")
	}
	exp, err := strconv.ParseInt(got.Headers.Get("X-Token-Expiry"), 10, 64)
	if err != nil || time.Until(time.Unix(exp, 0)) > 11*time.Second || time.Until(time.Unix(exp, 0)) < 0 {
		t.Errorf("X-Token-Expiry %q, want the access token's expiry (unix seconds, within 10 s)", got.Headers.Get("X-Token-Expiry"))
	}

	// One second in, the token is inside refresh_before: a request refreshes
	// it, and the upstream sees the new one.
	grants := e.idp.RefreshGrants()
	var refreshed string
	waitUntil(t, 15*time.Second, "a refresh that gives the upstream a new access token", func() bool {
		got := readEcho(t, e.get(c, "/api", nil))
		refreshed, _ = strings.CutPrefix(got.Headers.Get("Authorization"), "Bearer ")
		return e.idp.RefreshGrants() > grants && refreshed != bearer
	})
	if sub := userinfoSub(t, e, refreshed); sub != "alice-id" {
		t.Errorf("the refreshed access token is %q's, want alice-id", sub)
	}

	// The module never logs a token. (Caddy's own reverse_proxy, at DEBUG
	// level, logs the upstream request's headers: it redacts Authorization,
	// not a header of another name such as X-Id-Token.)
	logs := e.logs.String()
	var own strings.Builder
	for _, line := range strings.Split(logs, "\n") {
		if strings.Contains(line, `"logger":"http.handlers.oidc`) || strings.Contains(line, `"logger":"oidc`) {
			own.WriteString(line + "\n")
		}
	}
	for _, tok := range []string{bearer, refreshed, idToken} {
		if strings.Contains(own.String(), tok[len(tok)-20:]) {
			t.Errorf("a token appears in the module's log")
		}
		if strings.Contains(logs, `"Authorization":["Bearer `+tok[:20]) {
			t.Errorf("the access token appears unredacted in Caddy's log")
		}
	}
	if own.Len() == 0 {
		t.Fatal("no log line of the module at all")
	}
	for _, line := range []string{`"msg":"login"`, `"msg":"refresh"`, `"outcome":"ok"`} {
		if !strings.Contains(logs, line) {
			t.Errorf("Caddy's log has no %s line", line)
		}
	}
}

// TestSessionInfoEndpoint: userinfo_path answers a single-page app with the
// identity the upstream would see, 401 without a session, never a token.
func TestSessionInfoEndpoint(t *testing.T) {
	e := newEnv(t, envOptions{oidc: "userinfo_path /oauth2/userinfo"})
	c := e.browser()
	resp := e.get(noRedirect(c), "/oauth2/userinfo", map[string]string{"Accept": "application/json"})
	resp.Body.Close()
	if resp.StatusCode != http.StatusUnauthorized || resp.Header.Get("Location") != "" {
		t.Fatalf("without a session: %d (Location %q), want 401 and no redirect", resp.StatusCode, resp.Header.Get("Location"))
	}
	readEcho(t, e.login(c, "/", "alice", "alice-password"))
	resp = e.get(c, "/oauth2/userinfo", nil)
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK || resp.Header.Get("Cache-Control") != "no-store" {
		t.Fatalf("with a session: %d, Cache-Control %q: %s", resp.StatusCode, resp.Header.Get("Cache-Control"), body)
	}
	var info struct {
		Sub       string   `json:"sub"`
		Email     string   `json:"email"`
		Groups    []string `json:"groups"`
		ExpiresAt int64    `json:"expires_at"`
	}
	if err := json.Unmarshal(body, &info); err != nil {
		t.Fatal(err)
	}
	if info.Sub != "alice-id" || info.Email != "alice@example.com" || strings.Join(info.Groups, ",") != "admins,staff" ||
		time.Until(time.Unix(info.ExpiresAt, 0)) < 23*time.Hour {
		t.Errorf("session info: %s", body)
	}
	if strings.Contains(string(body), "ey") && strings.Count(string(body), ".") >= 2 && strings.Contains(string(body), "token") {
		t.Errorf("session info carries a token: %s", body)
	}
	// The upstream never sees the endpoint.
	if strings.Contains(string(body), `"path"`) {
		t.Errorf("userinfo_path was proxied: %s", body)
	}
}

// TestOfflineAccessAsksForConsent: with offline_access requested the
// authorization request carries prompt=consent (OpenID Connect Core §11),
// unless the config sets prompt itself.
func TestOfflineAccessAsksForConsent(t *testing.T) {
	for _, tc := range []struct{ oidc, want string }{
		{"", "consent"},
		{"auth_param prompt login", "login"},
		{`auth_param prompt ""`, ""},
	} {
		e := newEnv(t, envOptions{oidc: tc.oidc})
		resp := e.get(noRedirect(e.browser()), "/page", nil)
		resp.Body.Close()
		loc, err := url.Parse(resp.Header.Get("Location"))
		if err != nil || resp.StatusCode != http.StatusFound {
			t.Fatalf("%q: %d to %q", tc.oidc, resp.StatusCode, resp.Header.Get("Location"))
		}
		q := loc.Query()
		if !strings.Contains(q.Get("scope"), "offline_access") || q.Get("prompt") != tc.want {
			t.Errorf("%q: scope %q prompt %q, want prompt %q", tc.oidc, q.Get("scope"), q.Get("prompt"), tc.want)
		}
	}
	// And a login through it still yields a refresh token.
	e := newEnv(t, envOptions{})
	readEcho(t, e.login(e.browser(), "/", "alice", "alice-password"))
	if !strings.Contains(e.logs.String(), `"refresh_token":true`) {
		t.Error("the login logged no refresh token")
	}
}

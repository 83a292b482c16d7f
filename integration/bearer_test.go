package integration

import (
	"encoding/json"
	"net/http"
	"net/url"
	"strings"
	"testing"

	"github.com/caddy-oidc/caddy-oidc/integration/devidp"
)

// serviceToken gets an access token from the IdP with the client
// credentials grant, as an API client would.
func serviceToken(t *testing.T, issuer string) string {
	t.Helper()
	req, _ := http.NewRequest(http.MethodPost, issuer+"/oauth/token", strings.NewReader(url.Values{"grant_type": {"client_credentials"}, "scope": {"openid"}}.Encode()))
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	req.SetBasicAuth(devidp.ServiceClientID, devidp.ServiceClientSecret)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var tr struct {
		AccessToken string `json:"access_token"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&tr); err != nil || tr.AccessToken == "" || resp.StatusCode != 200 {
		t.Fatalf("client credentials grant: %d %v", resp.StatusCode, err)
	}
	return tr.AccessToken
}

func TestBearerTokenFromTheIdP(t *testing.T) {
	e := newEnv(t, envOptions{oidc: "bearer"})
	tok := serviceToken(t, e.idp.Issuer)
	if strings.Count(tok, ".") != 2 {
		t.Fatalf("the service token is not a JWT: %.20s...", tok)
	}
	got := readEcho(t, e.get(http.DefaultClient, "/api/items", map[string]string{"Authorization": "Bearer " + tok, "X-Auth-User": "forged"}))
	if got.Headers.Get("X-Auth-User") != devidp.ServiceClientID {
		t.Errorf("upstream got X-Auth-User %q, want the service account", got.Headers.Get("X-Auth-User"))
	}
	if got.Headers.Get("Authorization") == "" {
		t.Error("the Authorization header did not reach the upstream")
	}
	resp := e.get(http.DefaultClient, "/api/items", map[string]string{"Authorization": "Bearer " + tok[:len(tok)-4] + "AAAA"})
	resp.Body.Close()
	if resp.StatusCode != http.StatusUnauthorized || !strings.Contains(resp.Header.Get("WWW-Authenticate"), "invalid_token") {
		t.Errorf("tampered token: got %d %q", resp.StatusCode, resp.Header.Get("WWW-Authenticate"))
	}
	if len(resp.Cookies()) != 0 {
		t.Error("a bearer request got a cookie")
	}
}

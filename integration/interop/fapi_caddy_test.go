package interop

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"html"
	"io"
	"net/http"
	"net/http/cookiejar"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/caddy-oidc/caddy-oidc/internal/provider"
)

// The module as a FAPI 2.0 client, in a real Caddy, against oidc-provider
// configured as a FAPI 2.0 authorization server (PAR and signed requests
// required, DPoP with nonces, JARM): `profile fapi2` with private_key_jwt
// and DPoP. A browser's login goes through the IdP's development screens
// over HTTP.

// fapiClientKeyFile writes a P-256 client key for client_private_key and
// returns its path and the public JWK to register.
func fapiClientKeyFile(t *testing.T) (string, map[string]any) {
	t.Helper()
	raw, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	der, _ := x509.MarshalPKCS8PrivateKey(raw)
	path := filepath.Join(t.TempDir(), "client.pem")
	if err := os.WriteFile(path, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der}), 0o600); err != nil {
		t.Fatal(err)
	}
	coord := func(b []byte) string { return base64.RawURLEncoding.EncodeToString(b) }
	ecdh, _ := raw.PublicKey.ECDH()
	point := ecdh.Bytes()
	return path, map[string]any{"kty": "EC", "crv": "P-256", "x": coord(point[1:33]), "y": coord(point[33:]),
		"kid": "fapi-key-1", "alg": "ES256", "use": "sig"}
}

func fapiCaddyfile(port, adminPort int, issuer, keyFile, upstream, responseMode string) string {
	return fmt.Sprintf(`{
	admin 127.0.0.1:%d
	http_port %d
	auto_https off
	log {
		output stderr
		level DEBUG
	}
}

http://127.0.0.1:%d {
	oidc {
		issuer %s
		client_id fapi-app
		client_private_key %s
		client_key_id fapi-key-1
		client_key_alg ES256
		session_secret {env.OIDC_SESSION_SECRET}
		scopes openid email profile offline_access
		profile fapi2
		dpop
		request_object
		response_mode %s
		# Tokens live 60 s: every request refreshes (as at expiry).
		refresh_before 70s
		bearer
		bearer_dpop required
		exclude /bye
		header X-Auth-User {http.auth.user.id}
		header X-Auth-Email {http.auth.user.email}
		header X-Token-Type {http.auth.user.access_token_type}
	}
	reverse_proxy %s
}
`, adminPort, port, port, issuer, keyFile, responseMode, upstream)
}

// fapiBrowser is a browser of the Caddy site: it follows nothing by itself.
func fapiBrowser() *http.Client {
	jar, _ := cookiejar.New(nil)
	return &http.Client{Jar: jar, Timeout: 15 * time.Second,
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
}

func navigate(t *testing.T, c *http.Client, u string) *http.Response {
	t.Helper()
	req, _ := http.NewRequest(http.MethodGet, u, nil)
	req.Header.Set("Accept", "text/html")
	req.Header.Set("Sec-Fetch-Mode", "navigate")
	resp, err := c.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	return resp
}

// idpScreens takes the user through oidc-provider's login and consent
// screens from authorizationURL and returns the redirect back to the site.
func idpScreens(t *testing.T, authorizationURL, site string) *url.URL {
	t.Helper()
	return idpScreensWith(t, &http.Client{Timeout: 10 * time.Second}, authorizationURL, site)
}

// idpScreensWith is idpScreens with the browser's own client (one that
// trusts a test CA, say).
func idpScreensWith(t *testing.T, idpBrowser *http.Client, authorizationURL, site string) *url.URL {
	t.Helper()
	idpBrowser.Jar, _ = cookiejar.New(nil)
	idpBrowser.CheckRedirect = func(r *http.Request, _ []*http.Request) error {
		if strings.HasPrefix(r.URL.String(), site) {
			return http.ErrUseLastResponse
		}
		return nil
	}
	resp, err := idpBrowser.Get(authorizationURL)
	for _, fields := range []url.Values{
		{"prompt": {"login"}, "login": {alice.username}, "password": {alice.password}},
		{"prompt": {"consent"}},
	} {
		if err != nil {
			t.Fatal(err)
		}
		page, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		m := formAction.FindSubmatch(page)
		if resp.StatusCode != http.StatusOK || m == nil {
			t.Fatalf("expected a form from the IdP at %s, got %s:\n%.1500s", resp.Request.URL, resp.Status, page)
		}
		action, _ := url.Parse(html.UnescapeString(string(m[1])))
		resp, err = idpBrowser.PostForm(resp.Request.URL.ResolveReference(action).String(), fields)
	}
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	loc, err := resp.Location()
	if err != nil || !strings.HasPrefix(loc.String(), site) {
		page, _ := io.ReadAll(resp.Body)
		t.Fatalf("the login did not come back to the site: %s %v:\n%.1500s", resp.Status, loc, page)
	}
	return loc
}

// fapiLoginStart asks the site for a page and returns where it sends the
// browser (the IdP's authorization endpoint).
func fapiLoginStart(t *testing.T, c *http.Client, site string) *url.URL {
	t.Helper()
	resp := navigate(t, c, site+"/accounts")
	resp.Body.Close()
	loc, err := resp.Location()
	if resp.StatusCode != http.StatusFound || err != nil {
		t.Fatalf("login start: %d %v", resp.StatusCode, err)
	}
	return loc
}

func echoOf(t *testing.T, resp *http.Response) echo {
	t.Helper()
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	var e echo
	if resp.StatusCode != http.StatusOK || json.Unmarshal(b, &e) != nil {
		t.Fatalf("want the upstream's echo, got %d: %.500s", resp.StatusCode, b)
	}
	return e
}

func TestFAPI2ProfileInCaddy(t *testing.T) {
	keyFile, jwk := fapiClientKeyFile(t)
	ports := []int{freePort(t), freePort(t), freePort(t)}
	var redirects []string
	for _, p := range ports {
		redirects = append(redirects, fmt.Sprintf("http://127.0.0.1:%d/oauth2/callback", p))
	}
	meta := fapiClientMetadata("fapi-app", jwk)
	meta["redirect_uris"] = append(redirects, fapiRedirect)
	meta["scope"] = "openid email profile offline_access"
	idp := StartOIDCProvider(t, OIDCProviderConfig{
		Clients:    []map[string]any{meta},
		Accounts:   map[string]Account{alice.username: {Claims: aliceClaims}},
		DPoPNonces: true,
		// 60 s access tokens with refresh_before 70s: every request
		// refreshes, as at expiry.
		TTL: map[string]int{"AccessToken": 60},
		Features: map[string]any{
			"fapi":                        map[string]any{"enabled": true, "profile": "2.0"},
			"pushedAuthorizationRequests": map[string]any{"enabled": true, "requirePushedAuthorizationRequests": true},
			"requestObjects":              map[string]any{"enabled": true, "requireSignedRequestObject": true},
			"jwtResponseModes":            map[string]any{"enabled": true},
			"dPoP":                        map[string]any{"enabled": true},
		},
	})
	up := startUpstream(t)
	a := startCaddy(t, ports[0], fapiCaddyfile(ports[0], freePort(t), idp.Issuer, keyFile, up, "jwt"), nil)
	b := startCaddy(t, ports[1], fapiCaddyfile(ports[1], freePort(t), idp.Issuer, keyFile, up, "jwt"), nil)

	c := fapiBrowser()
	authz := fapiLoginStart(t, c, a.URL)
	if q := authz.Query(); len(q) != 2 || q.Get("request_uri") == "" || q.Get("client_id") != "fapi-app" {
		t.Fatalf("the browser is sent with more than client_id and request_uri (PAR): %s", authz)
	}
	callback := idpScreens(t, authz.String(), a.URL)
	if callback.Query().Get("response") == "" || callback.Query().Has("code") {
		t.Fatalf("the IdP answered without JARM: %s", callback)
	}

	t.Run("a tampered JARM response is refused", func(t *testing.T) {
		parts := strings.Split(callback.Query().Get("response"), ".")
		sig := []byte(parts[2])
		sig[len(sig)/2] ^= 0x01
		bad := *callback
		bad.RawQuery = url.Values{"response": {parts[0] + "." + parts[1] + "." + string(sig)}}.Encode()
		resp := navigate(t, fapiBrowser(), bad.String())
		resp.Body.Close()
		if resp.StatusCode != http.StatusBadRequest {
			t.Errorf("a JARM response with a bad signature: %d, want 400", resp.StatusCode)
		}
	})

	resp := navigate(t, c, callback.String())
	resp.Body.Close()
	if resp.StatusCode != http.StatusFound || resp.Header.Get("Location") != "/accounts" {
		t.Fatalf("callback: %d to %q\n%s", resp.StatusCode, resp.Header.Get("Location"), tail(a.logs.String(), 4000))
	}
	resp = navigate(t, c, a.URL+"/accounts")
	defer resp.Body.Close()
	got := echoOf(t, resp)
	if got.Headers.Get("X-Auth-User") != alice.username || got.Headers.Get("X-Auth-Email") != "alice@example.com" ||
		got.Headers.Get("X-Token-Type") != "DPoP" {
		t.Fatalf("after the FAPI login the upstream got user %q email %q token type %q",
			got.Headers.Get("X-Auth-User"), got.Headers.Get("X-Auth-Email"), got.Headers.Get("X-Token-Type"))
	}

	// Replica b never saw the login: it refreshes the DPoP-bound refresh
	// token with the same derived key, through the IdP's nonce challenge.
	t.Run("a DPoP-bound refresh on another replica", func(t *testing.T) {
		resp := navigate(t, c, b.URL+"/accounts")
		defer resp.Body.Close()
		got := echoOf(t, resp)
		if got.Headers.Get("X-Auth-User") != alice.username {
			t.Fatalf("replica b: %v", got.Headers)
		}
		// Caddy's log arrives through a pipe, a moment after the response.
		if !logShows(b.logs, `"msg":"refresh"`) || !logShows(b.logs, `"outcome":"ok"`) {
			t.Fatalf("replica b did not refresh the session:\n%s", tail(b.logs.String(), 4000))
		}
	})

	// profile fapi2 requires the RFC 9207 iss in a plain (query) response.
	t.Run("a response without iss is refused", func(t *testing.T) {
		q := startCaddy(t, ports[2], fapiCaddyfile(ports[2], freePort(t), idp.Issuer, keyFile, up, "query"), nil)
		c := fapiBrowser()
		callback := idpScreens(t, fapiLoginStart(t, c, q.URL).String(), q.URL)
		params := callback.Query()
		if params.Get("iss") != idp.Issuer || params.Get("code") == "" {
			t.Fatalf("the IdP's query response: %s", callback)
		}
		params.Del("iss")
		stripped := *callback
		stripped.RawQuery = params.Encode()
		resp := navigate(t, c, stripped.String())
		resp.Body.Close()
		if resp.StatusCode != http.StatusBadRequest {
			t.Errorf("a response without iss: %d, want 400", resp.StatusCode)
		}
	})

	// An API client with its own DPoP-bound token (the test's own FAPI
	// login): Caddy introspects it, checks the proof against its cnf.jkt,
	// and refuses a replayed proof, a proof for another URL, and the token
	// as a plain Bearer.
	t.Run("a DPoP-bound bearer call", func(t *testing.T) {
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		pemKey, _ := os.ReadFile(keyFile)
		clientKey, err := provider.ParseClientKey(pemKey, "fapi-key-1", "ES256")
		if err != nil {
			t.Fatal(err)
		}
		dpopKey, _ := provider.NewDPoPKey()
		rp := provider.New(idp.Issuer, provider.Options{}).Bind(provider.Client{ID: "fapi-app", Key: clientKey, DPoP: dpopKey, IssuerAudience: true}, provider.RPOptions{ClockSkew: 5 * time.Second})
		verifier := "verifier-" + strings.Repeat("w", 40)
		challenge := sha256.Sum256([]byte(verifier))
		target, err := rp.AuthorizationURL(ctx, url.Values{
			"response_type": {"code"}, "client_id": {"fapi-app"}, "redirect_uri": {fapiRedirect},
			"scope": {"openid"}, "state": {"s"}, "nonce": {"n"}, "response_mode": {"jwt"},
			"code_challenge": {base64.RawURLEncoding.EncodeToString(challenge[:])}, "code_challenge_method": {"S256"},
		}, provider.AuthRequestOptions{RequestObject: true})
		if err != nil {
			t.Fatal(err)
		}
		got, err := rp.VerifyAuthorizationResponse(ctx, devLogin(t, idp.Issuer, target).Query().Get("response"))
		if err != nil {
			t.Fatal(err)
		}
		tr, err := rp.Exchange(ctx, got.Get("code"), fapiRedirect, verifier)
		if err != nil {
			t.Fatal(err)
		}
		call := func(scheme, target, proofFor string, proof *string) int {
			req, _ := http.NewRequest(http.MethodGet, target, nil)
			req.Header.Set("Authorization", scheme+" "+tr.AccessToken)
			req.Header.Set("Accept", "application/json")
			if scheme == "DPoP" {
				if *proof == "" {
					*proof, _ = dpopKey.Proof(http.MethodGet, proofFor, tr.AccessToken, "", time.Now())
				}
				req.Header.Set("DPoP", *proof)
			}
			resp, err := http.DefaultClient.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			resp.Body.Close()
			return resp.StatusCode
		}
		api := a.URL + "/api/accounts"
		var proof string
		if code := call("DPoP", api, api, &proof); code != http.StatusOK {
			t.Fatalf("a DPoP-bound call with a good proof: %d\n%s", code, tail(a.logs.String(), 3000))
		}
		if code := call("DPoP", api, api, &proof); code != http.StatusUnauthorized {
			t.Errorf("the same proof replayed: %d, want 401", code)
		}
		var other string
		if code := call("DPoP", api, a.URL+"/api/payments", &other); code != http.StatusUnauthorized {
			t.Errorf("a proof for another URL: %d, want 401", code)
		}
		if code := call("Bearer", api, "", nil); code != http.StatusUnauthorized {
			t.Errorf("the DPoP-bound token as a plain Bearer: %d, want 401", code)
		}
	})
}

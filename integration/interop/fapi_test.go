package interop

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"encoding/base64"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/cookiejar"
	"net/url"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/caddy-oidc/caddy-oidc/internal/provider"
)

// The FAPI 2.0 building blocks of internal/provider against panva's
// oidc-provider configured as a FAPI 2.0 authorization server: PAR
// required, signed request objects, DPoP with nonces, JARM. The login is
// driven over HTTP through oidc-provider's development screens (plain HTML
// forms), so no browser and no Caddy are needed.

const fapiRedirect = "https://app.fapi.test/cb"

// fapiClient is a private_key_jwt client's key pair: the module's
// ClientKey and the public JWK oidc-provider registers.
func fapiClient(t *testing.T) (*provider.ClientKey, map[string]any) {
	t.Helper()
	raw, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	der, _ := x509.MarshalPKCS8PrivateKey(raw)
	key, err := provider.ParseClientKey(pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der}), "fapi-key-1", "ES256")
	if err != nil {
		t.Fatal(err)
	}
	coord := func(b []byte) string { return base64.RawURLEncoding.EncodeToString(b) }
	ecdh, _ := raw.PublicKey.ECDH()
	point := ecdh.Bytes() // 0x04 || X || Y
	pub := map[string]any{"kty": "EC", "crv": "P-256", "x": coord(point[1:33]), "y": coord(point[33:]),
		"kid": "fapi-key-1", "alg": "ES256", "use": "sig"}
	return key, pub
}

// startFAPIProvider runs oidc-provider with the FAPI 2.0 profile and the
// features it needs; clients get the FAPI client's metadata.
func startFAPIProvider(t *testing.T, clients ...map[string]any) *OIDCProvider {
	return StartOIDCProvider(t, OIDCProviderConfig{
		Clients:    clients,
		Accounts:   map[string]Account{alice.username: {Claims: aliceClaims}},
		DPoPNonces: true,
		Features: map[string]any{
			"fapi":                        map[string]any{"enabled": true, "profile": "2.0"},
			"pushedAuthorizationRequests": map[string]any{"enabled": true, "requirePushedAuthorizationRequests": true},
			"requestObjects":              map[string]any{"enabled": true, "requireSignedRequestObject": true},
			"jwtResponseModes":            map[string]any{"enabled": true},
			"dPoP":                        map[string]any{"enabled": true},
		},
	})
}

func fapiClientMetadata(id string, jwk map[string]any) map[string]any {
	return map[string]any{
		"client_id": id, "token_endpoint_auth_method": "private_key_jwt", "token_endpoint_auth_signing_alg": "ES256",
		"jwks":        map[string]any{"keys": []any{jwk}},
		"grant_types": []string{"authorization_code", "refresh_token"}, "response_types": []string{"code"},
		"redirect_uris": []string{fapiRedirect}, "dpop_bound_access_tokens": true,
		"request_object_signing_alg": "ES256", "authorization_signed_response_alg": "ES256",
		"id_token_signed_response_alg": "ES256",
	}
}

// exchangeLog records the module's calls to the IdP (method, path, status),
// to see the DPoP nonce round trip happen.
type exchangeLog struct {
	base http.RoundTripper
	mu   sync.Mutex
	seen []string
}

func (l *exchangeLog) RoundTrip(r *http.Request) (*http.Response, error) {
	resp, err := l.base.RoundTrip(r)
	if err == nil {
		l.mu.Lock()
		l.seen = append(l.seen, fmt.Sprintf("%s %s %d", r.Method, r.URL.Path, resp.StatusCode))
		l.mu.Unlock()
	}
	return resp, err
}

func (l *exchangeLog) calls() []string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return append([]string(nil), l.seen...)
}

var formAction = regexp.MustCompile(`<form[^>]*action="([^"]+)"`)

// devLogin takes a browser's part through oidc-provider's development
// screens: authorization URL, login form, consent form, until the redirect
// to fapiRedirect, whose URL it returns.
func devLogin(t *testing.T, _ string, authorizationURL string) *url.URL {
	t.Helper()
	return idpScreens(t, authorizationURL, fapiRedirect)
}

func TestFAPI2CodeFlowWithOIDCProvider(t *testing.T) {
	clientKey, clientJWK := fapiClient(t)
	idp := startFAPIProvider(t, fapiClientMetadata("fapi-app", clientJWK), fapiClientMetadata("other-app", clientJWK))
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()

	log := &exchangeLog{base: http.DefaultTransport}
	p := provider.New(idp.Issuer, provider.Options{HTTPClient: &http.Client{Timeout: 10 * time.Second, Transport: log}})
	dpopKey, err := provider.NewDPoPKey()
	if err != nil {
		t.Fatal(err)
	}
	rp := p.Bind(provider.Client{ID: "fapi-app", Key: clientKey, DPoP: dpopKey, IssuerAudience: true}, provider.RPOptions{ClockSkew: 5 * time.Second})

	d, err := rp.Discovery(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if !d.RequirePushedAuthorizationRequests || d.PushedAuthorizationRequestEndpoint == "" || len(d.DPoPSigningAlgValuesSupported) == 0 {
		t.Fatalf("oidc-provider does not announce FAPI 2.0 metadata: %+v", d.FAPIMetadata)
	}

	// PAR + JAR: the browser carries client_id and request_uri only.
	verifier := "verifier-" + strings.Repeat("v", 40)
	challenge := sha256.Sum256([]byte(verifier))
	params := url.Values{
		"response_type": {"code"}, "client_id": {"fapi-app"}, "redirect_uri": {fapiRedirect},
		"scope": {"openid email profile offline_access"}, "prompt": {"consent"}, "state": {"state-1"}, "nonce": {"nonce-1"},
		"code_challenge": {base64.RawURLEncoding.EncodeToString(challenge[:])}, "code_challenge_method": {"S256"},
		"response_mode": {"jwt"},
	}
	target, err := rp.AuthorizationURL(ctx, params, provider.AuthRequestOptions{RequestObject: true})
	if err != nil {
		t.Fatalf("pushing the signed request: %v", err)
	}
	if q, _ := url.Parse(target); len(q.Query()) != 2 || q.Query().Get("request_uri") == "" {
		t.Fatalf("the authorization URL carries more than client_id and request_uri: %s", target)
	}
	// DPoP nonce round trip on the first call: challenged, then accepted.
	if calls := log.calls(); !containsInOrder(calls, "POST /request 400", "POST /request 201") {
		t.Errorf("the PAR push did not go through a DPoP nonce challenge: %v", calls)
	}

	callback := devLogin(t, idp.Issuer, target)
	response := callback.Query().Get("response")
	if response == "" {
		t.Fatalf("the redirect carries no JARM response: %s", callback)
	}

	t.Run("JARM response refused when tampered or for another client", func(t *testing.T) {
		parts := strings.Split(response, ".")
		sig := []byte(parts[2])
		sig[len(sig)/2] ^= 0x01
		tampered := parts[0] + "." + parts[1] + "." + string(sig)
		if _, err := rp.VerifyAuthorizationResponse(ctx, tampered); !errors.Is(err, provider.ErrInvalidToken) {
			t.Errorf("a JARM response with a bad signature: got %v, want ErrInvalidToken", err)
		}
		other := p.Bind(provider.Client{ID: "other-app", Key: clientKey}, provider.RPOptions{})
		if _, err := other.VerifyAuthorizationResponse(ctx, response); !errors.Is(err, provider.ErrInvalidToken) {
			t.Errorf("a JARM response for fapi-app accepted by other-app: %v", err)
		}
	})

	got, err := rp.VerifyAuthorizationResponse(ctx, response)
	if err != nil {
		t.Fatalf("oidc-provider's JARM response is refused: %v", err)
	}
	if got.Get("state") != "state-1" || got.Get("code") == "" || got.Get("iss") != idp.Issuer {
		t.Fatalf("JARM parameters %v", got)
	}

	tr, err := rp.Exchange(ctx, got.Get("code"), fapiRedirect, verifier)
	if err != nil {
		t.Fatalf("code exchange with private_key_jwt and DPoP: %v", err)
	}
	if !strings.EqualFold(tr.TokenType, "DPoP") || tr.RefreshToken == "" {
		t.Fatalf("token_type %q, refresh token %t: want a DPoP-bound grant with a refresh token", tr.TokenType, tr.RefreshToken != "")
	}
	claims, err := rp.VerifyLoginIDToken(ctx, tr.IDToken, "nonce-1")
	if err != nil {
		t.Fatalf("ID token: %v", err)
	}
	if claims["sub"] != alice.username {
		t.Errorf("sub %v", claims["sub"])
	}

	// UserInfo takes the token as DPoP with a proof (ath, nonce).
	info, err := rp.UserInfo(ctx, tr.AccessToken, alice.username)
	if err != nil {
		t.Fatalf("userinfo with DPoP: %v", err)
	}
	if info["email"] != "alice@example.com" {
		t.Errorf("userinfo %v", info)
	}

	// The IdP's binding is the module's key: a resource server with the
	// introspected cnf.jkt accepts the module's proof for an API call.
	ac, err := rp.Introspect(ctx, tr.AccessToken)
	if err != nil {
		t.Fatalf("introspection: %v", err)
	}
	jkt := provider.ConfirmationJKT(ac.Claims)
	if jkt != dpopKey.Thumbprint() {
		t.Fatalf("the IdP bound the token to jkt %q, the module's key is %q", jkt, dpopKey.Thumbprint())
	}
	const api = "https://api.fapi.test/accounts"
	proof, err := dpopKey.Proof("GET", api, tr.AccessToken, "", time.Now())
	if err != nil {
		t.Fatal(err)
	}
	if _, err := provider.VerifyDPoPProof(proof, provider.DPoPCheck{Method: "GET", URL: api, AccessToken: tr.AccessToken, JKT: jkt}); err != nil {
		t.Errorf("a resource server refuses the module's proof for the IdP's token: %v", err)
	}
	if _, err := provider.VerifyDPoPProof(proof, provider.DPoPCheck{Method: "GET", URL: "https://api.fapi.test/payments", AccessToken: tr.AccessToken, JKT: jkt}); !errors.Is(err, provider.ErrInvalidDPoPProof) {
		t.Errorf("a proof for another URL: got %v, want ErrInvalidDPoPProof", err)
	}

	// Another replica: the same key from storage, no nonce known yet.
	stored, err := dpopKey.MarshalPEM()
	if err != nil {
		t.Fatal(err)
	}
	replicaKey, err := provider.ParseDPoPKey(stored)
	if err != nil {
		t.Fatal(err)
	}
	replicaLog := &exchangeLog{base: http.DefaultTransport}
	replicaHC := &http.Client{Timeout: 10 * time.Second, Transport: replicaLog}
	replica := provider.New(idp.Issuer, provider.Options{HTTPClient: replicaHC}).Bind(provider.Client{ID: "fapi-app", Key: clientKey, DPoP: replicaKey, IssuerAudience: true}, provider.RPOptions{ClockSkew: 5 * time.Second})
	refreshed, err := replica.Refresh(ctx, tr.RefreshToken)
	if err != nil {
		t.Fatalf("refresh of the DPoP-bound grant from another replica: %v", err)
	}
	if !strings.EqualFold(refreshed.TokenType, "DPoP") {
		t.Errorf("refreshed token_type %q", refreshed.TokenType)
	}
	if calls := replicaLog.calls(); !containsInOrder(calls, "POST /token 400", "POST /token 200") {
		t.Errorf("the replica's first refresh did not go through a DPoP nonce challenge: %v", calls)
	}
	if _, err := replica.VerifyRefreshedIDToken(ctx, refreshed.IDToken, alice.username); refreshed.IDToken != "" && err != nil {
		t.Errorf("refreshed ID token: %v", err)
	}

	// Revocation with a proof; the revoked refresh token is then refused.
	next := refreshed.RefreshToken
	if next == "" {
		next = tr.RefreshToken
	}
	if err := replica.Revoke(ctx, next, "refresh_token"); err != nil {
		t.Fatalf("revocation: %v", err)
	}
	if _, err := rp.Refresh(ctx, next); !errors.Is(err, provider.ErrInvalidGrant) {
		t.Errorf("refresh after revocation: got %v, want invalid_grant", err)
	}
	t.Logf("calls to the IdP: first replica %v; second replica %v", log.calls(), replicaLog.calls())
}

func containsInOrder(calls []string, want ...string) bool {
	i := 0
	for _, c := range calls {
		if i < len(want) && c == want[i] {
			i++
		}
	}
	return i == len(want)
}

func TestFAPI2ProviderRefusesWhatTheProfileForbids(t *testing.T) {
	clientKey, clientJWK := fapiClient(t)
	idp := startFAPIProvider(t, fapiClientMetadata("fapi-app", clientJWK))
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	p := provider.New(idp.Issuer, provider.Options{})
	dpopKey, _ := provider.NewDPoPKey()
	rp := p.Bind(provider.Client{ID: "fapi-app", Key: clientKey, DPoP: dpopKey, IssuerAudience: true}, provider.RPOptions{})
	d, err := rp.Discovery(ctx)
	if err != nil {
		t.Fatal(err)
	}

	// The IdP requires PAR: the request in the browser's URL is refused,
	// the pushed one reaches the login screen.
	params := url.Values{"response_type": {"code"}, "client_id": {"fapi-app"}, "redirect_uri": {fapiRedirect},
		"scope": {"openid"}, "state": {"s"}, "code_challenge": {strings.Repeat("c", 43)}, "code_challenge_method": {"S256"}}
	signed, err := rp.SignRequestObject(ctx, params)
	if err != nil {
		t.Fatal(err)
	}
	direct := d.AuthorizationEndpoint + "?" + url.Values{"client_id": {"fapi-app"}, "request": {signed}}.Encode()
	if status, body := fetch(t, direct); status == http.StatusOK && strings.Contains(body, `name="login"`) {
		t.Error("oidc-provider let a request that was not pushed reach the login screen")
	}
	pushed, err := rp.AuthorizationURL(ctx, params, provider.AuthRequestOptions{RequestObject: true})
	if err != nil {
		t.Fatal(err)
	}
	if status, body := fetch(t, pushed); status != http.StatusOK || !strings.Contains(body, `name="login"`) {
		t.Errorf("the pushed request did not reach the login screen: HTTP %d:\n%.1000s", status, body)
	}

	// An unsigned pushed request is refused: the IdP wants a request object.
	if _, _, err := rp.PushAuthorizationRequest(ctx, params); err == nil {
		t.Error("oidc-provider took an unsigned pushed request though it requires signed ones")
	}
}

// fetch follows redirects like a browser and returns the last answer.
func fetch(t *testing.T, u string) (int, string) {
	t.Helper()
	jar, _ := cookiejar.New(nil)
	resp, err := (&http.Client{Jar: jar, Timeout: 10 * time.Second}).Get(u)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

package caddyoidc

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"math/big"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"go.uber.org/zap"

	"github.com/caddy-oidc/caddy-oidc/internal/testidp"
)

// writeClientCert writes a self-signed client certificate and its key.
func writeClientCert(t *testing.T) (certFile, keyFile string) {
	t.Helper()
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "app"},
		NotBefore: time.Now().Add(-time.Minute), NotAfter: time.Now().Add(time.Hour),
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	kder, _ := x509.MarshalPKCS8PrivateKey(key)
	dir := t.TempDir()
	certFile, keyFile = filepath.Join(dir, "c.pem"), filepath.Join(dir, "k.pem")
	_ = os.WriteFile(certFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o600)
	_ = os.WriteFile(keyFile, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: kder}), 0o600)
	return certFile, keyFile
}

// Under profile fapi2 a resource server accepts only sender-constrained
// tokens (FAPI 2.0 §5.3.3): bearer without bearer_dpop required fails at
// load, whatever certificate the client has for the IdP. And on any route
// a certificate-bound token (cnf.x5t#S256) stolen from its holder and sent
// without its TLS client certificate is refused.
func TestAttackFAPI2BearerAcceptsOnlySenderConstrainedTokens(t *testing.T) {
	idp := testidp.New()
	defer idp.Close()
	cert, key := writeClientCert(t)
	fapi := &Handler{Issuer: idp.Issuer, Profile: "fapi2", Client: ClientConfig{ID: "app", Certificate: cert, CertificateKey: key},
		Session: SessionConfig{Secrets: []string{testSecret}}, Bearer: &BearerConfig{Audience: []string{"api"}}}
	if err := fapi.provision(caddy.Context{}, zap.NewNop()); err == nil || !strings.Contains(err.Error(), "bearer_dpop required") {
		t.Errorf("profile fapi2 with bearer_dpop allowed: got %v, want a load error naming bearer_dpop required", err)
	}
	h := newTestHandler(t, idp, func(h *Handler) { h.Bearer = &BearerConfig{Audience: []string{"api"}} })
	sum := sha256.Sum256([]byte("the certificate of someone else"))
	certBound := idp.Sign(accessClaims(idp, func(c map[string]any) {
		c["cnf"] = map[string]any{"x5t#S256": base64.RawURLEncoding.EncodeToString(sum[:])}
	}))
	// No TLS at all on the request: no certificate could match.
	if code, _, next := dpopServe(h, "Bearer", certBound); code == http.StatusOK || next.called {
		t.Errorf("a certificate-bound token (cnf.x5t#S256) without its certificate reached the upstream (%d)", code)
	}
	if code, _, next := dpopServe(h, "Bearer", idp.Sign(accessClaims(idp, nil))); code != http.StatusOK || !next.called {
		t.Errorf("an unbound token on a route without the profile: %d, want 200", code)
	}
}

// FAPI 2.0 §5.4.1: clients sign with PS256, ES256 or EdDSA. Under profile
// fapi2 an RSA client_private_key signs with PS256 by default, and an
// explicit client_key_alg RS256 fails at load.
func TestAttackFAPI2ClientKeyRS256(t *testing.T) {
	idp := testidp.New()
	defer idp.Close()
	rk, _ := rsa.GenerateKey(rand.Reader, 2048)
	p := filepath.Join(t.TempDir(), "rsa.pem")
	_ = os.WriteFile(p, pem.EncodeToMemory(&pem.Block{Type: "RSA PRIVATE KEY", Bytes: x509.MarshalPKCS1PrivateKey(rk)}), 0o600)
	for alg, want := range map[string]string{"": "PS256", "RS256": ""} {
		h := &Handler{Issuer: idp.Issuer, Profile: "fapi2", Client: ClientConfig{ID: "app", PrivateKey: p, KeyID: "k1", KeyAlg: alg, DPoP: true},
			Session: SessionConfig{Secrets: []string{testSecret}}, Login: LoginConfig{RequestObject: true}}
		err := h.provision(caddy.Context{}, zap.NewNop())
		switch {
		case want == "" && (err == nil || !strings.Contains(err.Error(), "client_key_alg")):
			t.Errorf("profile fapi2 with client_key_alg %q: got %v, want a load error naming client_key_alg", alg, err)
		case want != "" && (err != nil || h.client.Key.Algorithm() != want):
			t.Errorf("profile fapi2 with an RSA key and no client_key_alg: %v, signs with %v; want %s", err, h.client.Key, want)
		}
	}
}

// One anonymous source starting logins at the push rate (20/s, burst 40)
// must not take every pushed-request slot of the route: each client
// address has a rate of its own (2/s, burst 5), so other users log in.
func TestAttackPARFloodFromOneClientLocksEveryoneOut(t *testing.T) {
	idp := testidp.New()
	defer idp.Close()
	var pushes atomic.Int64
	par := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		pushes.Add(1)
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(http.StatusCreated)
		_ = json.NewEncoder(w).Encode(map[string]any{"request_uri": "urn:ietf:params:oauth:request_uri:x", "expires_in": 60})
	}))
	defer par.Close()
	idp.SetDiscovery("pushed_authorization_request_endpoint", par.URL)
	h := newTestHandler(t, idp, func(h *Handler) { h.Login.PAR = true })
	login := func(addr string) int {
		r := request("GET", "/app")
		r.RemoteAddr = addr
		ip, _, _ := strings.Cut(addr, ":")
		r = r.WithContext(context.WithValue(r.Context(), caddyhttp.VarsCtxKey, map[string]any{caddyhttp.ClientIPVarKey: ip}))
		w := httptest.NewRecorder()
		return statusOf(h.ServeHTTP(w, r, &recordNext{}), w)
	}
	if code := login("198.51.100.7:1234"); code != http.StatusFound {
		t.Fatalf("a login before the flood: %d", code)
	}
	// The attacker: one address, a few dozen requests.
	refused := false
	for range 200 {
		if login("203.0.113.66:4444") == http.StatusServiceUnavailable {
			refused = true
			break
		}
	}
	if !refused {
		t.Fatal("the flood was never limited")
	}
	if code := login("198.51.100.7:1234"); code != http.StatusFound {
		t.Errorf("a real user's login during one client's flood: %d (pushes so far %d)", code, pushes.Load())
	}
}

// FAPI 2.0 §5.2.1: clients "shall establish connections to other servers
// using TLS": profile fapi2 with an http:// issuer (not on a loopback host)
// fails at load.
func TestAttackFAPI2PlainHTTPIssuerLoads(t *testing.T) {
	h := &Handler{Issuer: "http://bank.example", Profile: "fapi2", Client: ClientConfig{ID: "app", PrivateKey: writeECKey(t), KeyID: "k1", DPoP: true},
		Session: SessionConfig{Secrets: []string{testSecret}}}
	if err := h.provision(caddy.Context{}, zap.NewNop()); err == nil {
		t.Error("profile fapi2 with an http:// issuer loads")
	}
}

// the proof's htu is checked against the request's own Host
// header. On a site that answers any Host (a catch-all `:80` behind a
// load balancer, `http://`, on-demand TLS), a token and proof that a
// client sent to another server (htu https://evil.example/...) are
// accepted here by sending them with Host: evil.example: htu no longer
// binds the proof to this resource server (RFC 9449 §4.3 check 9, §11.1).
func TestAttackDPoPProofForAnotherOrigin(t *testing.T) {
	idp := testidp.New()
	defer idp.Close()
	// bearer_dpop_origins names where the resource is served: a site that
	// answers any host name can no longer be told another server's name.
	h := newTestHandler(t, idp, func(h *Handler) {
		h.Bearer = &BearerConfig{Audience: []string{"api"}, DPoP: "required", DPoPOrigins: []string{"http://example.com"}}
	})
	c := newDPoPCaller(t, idp)
	// The resource's own origin is accepted.
	good := request("GET", "/api/items")
	good.Header.Set("Authorization", "DPoP "+c.token)
	good.Header.Set("DPoP", c.proof("GET", "http://example.com/api/items", c.token))
	if code, next, _ := serve(h, good); code != http.StatusOK || !next.called {
		t.Fatalf("a proof for the resource's own origin: %d", code)
	}
	// What the client sent to the malicious server evil.example.
	proof := c.proof("GET", "http://evil.example/api/items", c.token)
	r := request("GET", "/api/items")
	r.Host = "evil.example"
	r.Header.Set("Authorization", "DPoP "+c.token)
	r.Header.Set("DPoP", proof)
	code, next, _ := serve(h, r)
	if code == http.StatusOK || next.called {
		t.Errorf("a proof naming another server's URL was accepted (%d): htu follows the attacker's Host header", code)
	}
}

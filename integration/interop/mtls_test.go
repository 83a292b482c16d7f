package interop

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"io"
	"math/big"
	"net"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// The module as an RFC 8705 client in a real Caddy, against oidc-provider
// with mTLS: `client_auth_method tls_client_auth` with a client_certificate
// issued by a test CA, certificate-bound access tokens refreshed over mTLS,
// and the IdP's mtls_endpoint_aliases (RFC 8705 §5).

// testCA issues the certificates of one test: the IdP's server certificate
// and the clients'.
type testCA struct {
	dir  string
	cert *x509.Certificate
	key  *ecdsa.PrivateKey
	// File is the CA certificate's PEM file.
	File string
	pool *x509.CertPool
}

// issuedCert is a certificate on disk and in memory.
type issuedCert struct {
	CertFile, KeyFile string
	pair              tls.Certificate
}

// thumbprint is the certificate's x5t#S256 (RFC 8705 §3.1).
func (c issuedCert) thumbprint() string {
	sum := sha256.Sum256(c.pair.Certificate[0])
	return base64.RawURLEncoding.EncodeToString(sum[:])
}

func newTestCA(t *testing.T) *testCA {
	t.Helper()
	ca := &testCA{dir: t.TempDir(), pool: x509.NewCertPool()}
	tmpl := &x509.Certificate{
		Subject:               pkix.Name{CommonName: "caddy-oidc interop test CA"},
		IsCA:                  true,
		BasicConstraintsValid: true,
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageDigitalSignature,
	}
	issued := ca.write(t, "ca", tmpl, nil)
	ca.cert, ca.key, ca.File = issued.pair.Leaf, issued.pair.PrivateKey.(*ecdsa.PrivateKey), issued.CertFile
	ca.pool.AddCert(ca.cert)
	return ca
}

// write creates a key and a certificate from tmpl, written to the CA's
// directory: signed by signer, or self-signed without one.
func (ca *testCA) write(t *testing.T, name string, tmpl *x509.Certificate, signer *testCA) issuedCert {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	serial, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 64))
	if err != nil {
		t.Fatal(err)
	}
	tmpl.SerialNumber = serial
	tmpl.NotBefore, tmpl.NotAfter = time.Now().Add(-time.Hour), time.Now().Add(24*time.Hour)
	parent, parentKey := tmpl, key
	if signer != nil {
		parent, parentKey = signer.cert, signer.key
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, parent, &key.PublicKey, parentKey)
	if err != nil {
		t.Fatal(err)
	}
	keyDER, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	out := issuedCert{CertFile: filepath.Join(ca.dir, name+".pem"), KeyFile: filepath.Join(ca.dir, name+"-key.pem")}
	certPEM := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})
	keyPEM := pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: keyDER})
	if err := os.WriteFile(out.CertFile, certPEM, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(out.KeyFile, keyPEM, 0o600); err != nil {
		t.Fatal(err)
	}
	if out.pair, err = tls.X509KeyPair(certPEM, keyPEM); err != nil {
		t.Fatal(err)
	}
	return out
}

// serverCert is a certificate for https://127.0.0.1.
func (ca *testCA) serverCert(t *testing.T) issuedCert {
	return ca.write(t, "server", &x509.Certificate{
		Subject:     pkix.Name{CommonName: "127.0.0.1"},
		IPAddresses: []net.IP{net.IPv4(127, 0, 0, 1)},
		KeyUsage:    x509.KeyUsageDigitalSignature,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}, ca)
}

// clientCert is a TLS client certificate for subject issued by the CA.
func (ca *testCA) clientCert(t *testing.T, name string, subject pkix.Name) issuedCert {
	return ca.write(t, name, clientTemplate(subject), ca)
}

func clientTemplate(subject pkix.Name) *x509.Certificate {
	return &x509.Certificate{
		Subject:     subject,
		KeyUsage:    x509.KeyUsageDigitalSignature,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
	}
}

// client is an HTTP client that trusts the CA and presents cert (none if nil).
func (ca *testCA) client(cert *issuedCert) *http.Client {
	cfg := &tls.Config{RootCAs: ca.pool, MinVersion: tls.VersionTLS12}
	if cert != nil {
		cfg.Certificates = []tls.Certificate{cert.pair}
	}
	return &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{TLSClientConfig: cfg}}
}

func mtlsCaddyfile(port, adminPort int, issuer string, cert issuedCert, upstream string) string {
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
		client_id mtls-app
		client_auth_method tls_client_auth
		client_certificate %s %s
		session_secret {env.OIDC_SESSION_SECRET}
		scopes openid email profile offline_access
		# Tokens live 60 s: every request refreshes (as at expiry).
		refresh_before 70s
		exclude /bye
		header X-Auth-User {http.auth.user.id}
		header X-Auth-Email {http.auth.user.email}
		header X-Access-Token {http.auth.user.access_token}
	}
	reverse_proxy %s
}
`, adminPort, port, port, issuer, cert.CertFile, cert.KeyFile, upstream)
}

// logShows waits a little for want in a child's output: the output is
// copied from a pipe, after the response the test got.
func logShows(logs *SyncBuffer, want string) bool {
	poll := time.NewTicker(20 * time.Millisecond)
	defer poll.Stop()
	for deadline := time.Now().Add(5 * time.Second); time.Now().Before(deadline); <-poll.C {
		if strings.Contains(logs.String(), want) {
			return true
		}
	}
	return false
}

// visit navigates to u and returns what the upstream got.
func visit(t *testing.T, c *http.Client, u string) echo {
	t.Helper()
	resp := navigate(t, c, u)
	defer resp.Body.Close()
	return echoOf(t, resp)
}

// introspection is what oidc-provider says of a token.
type introspection struct {
	Active bool `json:"active"`
	Cnf    struct {
		X5tS256 string `json:"x5t#S256"`
	} `json:"cnf"`
}

// introspectAs asks the IdP about token as mtls-app, authenticated by the
// certificate hc presents (tls_client_auth).
func introspectAs(t *testing.T, hc *http.Client, issuer, token string) introspection {
	t.Helper()
	resp, err := hc.PostForm(issuer+"/token/introspection", url.Values{"token": {token}, "client_id": {"mtls-app"}})
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	var out introspection
	if resp.StatusCode != http.StatusOK || json.Unmarshal(b, &out) != nil {
		t.Fatalf("introspection: %s: %.300s", resp.Status, b)
	}
	return out
}

// userInfoStatus calls the UserInfo endpoint with token over hc's TLS.
func userInfoStatus(t *testing.T, hc *http.Client, issuer, token string) int {
	t.Helper()
	req, _ := http.NewRequest(http.MethodGet, issuer+"/me", nil)
	req.Header.Set("Authorization", "Bearer "+token)
	resp, err := hc.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	return resp.StatusCode
}

func TestMTLSClientAuthWithOIDCProviderInCaddy(t *testing.T) {
	ca := newTestCA(t)
	server := ca.serverCert(t)
	appSubject := pkix.Name{CommonName: "mtls-app", Organization: []string{"caddy-oidc interop"}}
	app := ca.clientCert(t, "app", appSubject)
	// Issued by the same CA to someone else.
	stranger := ca.clientCert(t, "stranger", pkix.Name{CommonName: "stranger", Organization: []string{"caddy-oidc interop"}})
	// The app's subject from a CA of the same name but another key. (Go
	// presents a client certificate only if its issuer's name is among the
	// CAs the server lists: a self-signed one would not even be sent.)
	forged := newTestCA(t).clientCert(t, "forged", appSubject)

	ports := []int{freePort(t), freePort(t), freePort(t), freePort(t)}
	var redirects []string
	for _, p := range ports {
		redirects = append(redirects, fmt.Sprintf("http://127.0.0.1:%d/oauth2/callback", p))
	}
	idpConfig := OIDCProviderConfig{
		Clients: []map[string]any{{
			"client_id":                  "mtls-app",
			"token_endpoint_auth_method": "tls_client_auth",
			"tls_client_auth_subject_dn": appSubject.String(),
			"grant_types":                []string{"authorization_code", "refresh_token"},
			"response_types":             []string{"code"},
			"redirect_uris":              redirects,
			"tls_client_certificate_bound_access_tokens": true,
		}},
		Accounts: map[string]Account{alice.username: {Claims: aliceClaims}},
		// 60 s access tokens with refresh_before 70s: every request
		// refreshes, as at expiry.
		TTL:  map[string]int{"AccessToken": 60},
		MTLS: &MTLSFiles{Cert: server.CertFile, Key: server.KeyFile, CA: ca.File},
	}
	idp := StartOIDCProvider(t, idpConfig)
	if !strings.HasPrefix(idp.Issuer, "https://") {
		t.Fatalf("the mTLS IdP does not serve HTTPS: %s", idp.Issuer)
	}
	up := startUpstream(t)
	// Caddy trusts the IdP's server certificate through the system roots.
	env := map[string]string{"SSL_CERT_FILE": ca.File}
	withApp, withoutCert, withStranger := ca.client(&app), ca.client(nil), ca.client(&stranger)
	stats := func() OIDCProviderStats {
		t.Helper()
		st, err := idp.StatsWith(withoutCert)
		if err != nil {
			t.Fatal(err)
		}
		return st
	}

	site := startCaddy(t, ports[0], mtlsCaddyfile(ports[0], freePort(t), idp.Issuer, app, up), env)
	alicesBrowser := fapiBrowser()
	callback := idpScreensWith(t, ca.client(nil), fapiLoginStart(t, alicesBrowser, site.URL).String(), site.URL)
	resp := navigate(t, alicesBrowser, callback.String())
	resp.Body.Close()
	if resp.StatusCode != http.StatusFound || resp.Header.Get("Location") != "/accounts" {
		t.Fatalf("callback: %d to %q\n%s", resp.StatusCode, resp.Header.Get("Location"), tail(site.logs.String(), 4000))
	}
	got := visit(t, alicesBrowser, site.URL+"/accounts")
	// The email comes from UserInfo (oidc-provider's ID tokens carry sub
	// only), called with the certificate-bound access token.
	if got.Headers.Get("X-Auth-User") != alice.username || got.Headers.Get("X-Auth-Email") != "alice@example.com" {
		t.Fatalf("after the mTLS login the upstream got user %q email %q",
			got.Headers.Get("X-Auth-User"), got.Headers.Get("X-Auth-Email"))
	}
	token := got.Headers.Get("X-Access-Token")

	t.Run("the access token is bound to the client certificate", func(t *testing.T) {
		info := introspectAs(t, withApp, idp.Issuer, token)
		if !info.Active || info.Cnf.X5tS256 != app.thumbprint() {
			t.Fatalf("introspection: active %v cnf.x5t#S256 %q, want true and %q", info.Active, info.Cnf.X5tS256, app.thumbprint())
		}
		if code := userInfoStatus(t, withApp, idp.Issuer, token); code != http.StatusOK {
			t.Errorf("UserInfo with the token over the app's certificate: %d, want 200", code)
		}
		if code := userInfoStatus(t, withoutCert, idp.Issuer, token); code != http.StatusUnauthorized {
			t.Errorf("UserInfo with the token and no certificate: %d, want 401", code)
		}
		if code := userInfoStatus(t, withStranger, idp.Issuer, token); code != http.StatusUnauthorized {
			t.Errorf("UserInfo with the token over another certificate of the CA: %d, want 401", code)
		}
	})

	t.Run("a refresh over mTLS gives a new bound token", func(t *testing.T) {
		before := stats().Token["refresh_token"]
		got := visit(t, alicesBrowser, site.URL+"/accounts")
		after := stats().Token["refresh_token"]
		if after.OK <= before.OK || after.Refused != before.Refused {
			t.Fatalf("refresh grants at the IdP: ok %d -> %d, refused %d -> %d; want one more ok and no refusal\n%s",
				before.OK, after.OK, before.Refused, after.Refused, tail(site.logs.String(), 4000))
		}
		refreshed := got.Headers.Get("X-Access-Token")
		if got.Headers.Get("X-Auth-User") != alice.username || refreshed == "" || refreshed == token {
			t.Fatalf("after the refresh the upstream got user %q and the token changed: %v",
				got.Headers.Get("X-Auth-User"), refreshed != token)
		}
		if info := introspectAs(t, withApp, idp.Issuer, refreshed); !info.Active || info.Cnf.X5tS256 != app.thumbprint() {
			t.Fatalf("the refreshed token: active %v cnf.x5t#S256 %q, want true and %q", info.Active, info.Cnf.X5tS256, app.thumbprint())
		}
	})

	for i, tc := range []struct {
		name   string
		cert   issuedCert
		detail string
	}{
		{"another certificate of the CA is refused", stranger, "certificate subject value does not match the registered one"},
		{"the app's subject from an impostor CA is refused", forged, "client certificate was not verified"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			port := ports[1+i]
			wrong := startCaddy(t, port, mtlsCaddyfile(port, freePort(t), idp.Issuer, tc.cert, up), env)
			before := stats()
			c := fapiBrowser()
			callback := idpScreensWith(t, ca.client(nil), fapiLoginStart(t, c, wrong.URL).String(), wrong.URL)
			resp := navigate(t, c, callback.String())
			resp.Body.Close()
			if resp.StatusCode < 400 {
				t.Fatalf("the callback with a refused client certificate: %d to %q, want an error",
					resp.StatusCode, resp.Header.Get("Location"))
			}
			if !logShows(wrong.logs, "invalid_client") {
				t.Errorf("Caddy's log does not name invalid_client:\n%s", tail(wrong.logs.String(), 4000))
			}
			after := stats()
			if after.Token["authorization_code"].Refused != before.Token["authorization_code"].Refused+1 ||
				len(after.TokenErrors) != len(before.TokenErrors)+1 {
				t.Fatalf("code grants refused by the IdP: %d -> %d, errors %v",
					before.Token["authorization_code"].Refused, after.Token["authorization_code"].Refused, after.TokenErrors)
			}
			if why := after.TokenErrors[len(after.TokenErrors)-1]; why != "invalid_client: "+tc.detail {
				t.Errorf("the IdP refused the code grant with %q, want invalid_client: %s", why, tc.detail)
			}
			// Nothing crashed: this Caddy serves, and the first one's session
			// still refreshes at the IdP.
			if r, err := apiGet(wrong.URL+"/bye", nil, nil); err != nil || r.Code != http.StatusOK {
				t.Errorf("Caddy after the refused login: %v %v", r, err)
			}
			if got := visit(t, alicesBrowser, site.URL+"/accounts"); got.Headers.Get("X-Auth-User") != alice.username {
				t.Errorf("the first site after the refused login: user %q", got.Headers.Get("X-Auth-User"))
			}
		})
	}

	// Only the aliases' port asks for a client certificate: the login and
	// the UserInfo call (the email) work only through the aliases.
	t.Run("the IdP's mtls_endpoint_aliases are used", func(t *testing.T) {
		aliased := idpConfig
		files := *idpConfig.MTLS
		files.Aliases = true
		aliased.MTLS = &files
		idp := StartOIDCProvider(t, aliased)
		var disc struct {
			TokenEndpoint string            `json:"token_endpoint"`
			Aliases       map[string]string `json:"mtls_endpoint_aliases"`
		}
		resp, err := withoutCert.Get(idp.Issuer + "/.well-known/openid-configuration")
		if err != nil {
			t.Fatal(err)
		}
		err = json.NewDecoder(resp.Body).Decode(&disc)
		resp.Body.Close()
		if err != nil || disc.Aliases["token_endpoint"] == "" || disc.Aliases["token_endpoint"] == disc.TokenEndpoint {
			t.Fatalf("discovery announces no token endpoint alias: %+v %v", disc, err)
		}
		// The issuer's own token endpoint gets no certificate from the app.
		resp, err = withApp.PostForm(disc.TokenEndpoint, url.Values{"grant_type": {"refresh_token"}, "refresh_token": {"x"}, "client_id": {"mtls-app"}})
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusUnauthorized {
			t.Fatalf("the app at the issuer's own token endpoint: %d, want 401", resp.StatusCode)
		}

		before, err := idp.StatsWith(withoutCert)
		if err != nil {
			t.Fatal(err)
		}

		port := ports[3]
		site := startCaddy(t, port, mtlsCaddyfile(port, freePort(t), idp.Issuer, app, up), env)
		c := fapiBrowser()
		callback := idpScreensWith(t, ca.client(nil), fapiLoginStart(t, c, site.URL).String(), site.URL)
		resp = navigate(t, c, callback.String())
		resp.Body.Close()
		if resp.StatusCode != http.StatusFound {
			t.Fatalf("callback: %d\n%s", resp.StatusCode, tail(site.logs.String(), 4000))
		}
		got := visit(t, c, site.URL+"/accounts")
		if got.Headers.Get("X-Auth-User") != alice.username || got.Headers.Get("X-Auth-Email") != "alice@example.com" {
			t.Fatalf("through the aliases the upstream got user %q email %q",
				got.Headers.Get("X-Auth-User"), got.Headers.Get("X-Auth-Email"))
		}
		after, err := idp.StatsWith(withoutCert)
		if err != nil {
			t.Fatal(err)
		}
		if b, a := before.Token["refresh_token"], after.Token["refresh_token"]; a.OK <= b.OK || a.Refused != b.Refused {
			t.Fatalf("refresh grants through the alias: %d ok, %d refused; want some and none refused", a.OK-b.OK, a.Refused-b.Refused)
		}
	})
}

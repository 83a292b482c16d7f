package provider_test

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"math/big"
	"net/http"
	"net/http/httptest"
	"sync/atomic"
	"testing"
	"time"

	"github.com/caddy-oidc/caddy-oidc/internal/provider"
	"github.com/caddy-oidc/caddy-oidc/internal/testidp"
)

func selfSignedClientCert(t *testing.T, cn string) (certPEM, keyPEM []byte) {
	t.Helper()
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: cn},
		NotBefore: time.Now().Add(-time.Minute), NotAfter: time.Now().Add(time.Hour),
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	kder, _ := x509.MarshalPKCS8PrivateKey(key)
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: kder})
}

func TestTLSClientAuthUsesTheMTLSAlias(t *testing.T) {
	idp := testidp.New()
	t.Cleanup(idp.Close)
	var peer atomic.Value // the client certificate's CN the alias saw
	mtls := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_ = r.ParseForm()
		if len(r.TLS.PeerCertificates) == 1 {
			peer.Store(r.TLS.PeerCertificates[0].Subject.CommonName)
		}
		if r.PostForm.Get("client_id") != clientID || r.PostForm.Has("client_secret") || r.PostForm.Has("client_assertion") {
			t.Errorf("tls_client_auth form %v", r.PostForm)
		}
		w.Header().Set("Content-Type", "application/json")
		_, _ = w.Write([]byte(`{"access_token":"at","token_type":"Bearer","expires_in":60}`))
	}))
	mtls.TLS = &tls.Config{ClientAuth: tls.RequireAnyClientCert, MinVersion: tls.VersionTLS12}
	mtls.StartTLS()
	t.Cleanup(mtls.Close)
	idp.SetDiscovery("mtls_endpoint_aliases", map[string]string{"token_endpoint": mtls.URL + "/token"})
	idp.OnToken(func(w http.ResponseWriter, _ *http.Request) {
		t.Error("a client with a certificate called the plain token endpoint, not its mTLS alias")
		http.Error(w, "wrong endpoint", http.StatusBadRequest)
	})
	// The Provider's client trusts the test server; the certificate is added to a copy.
	p := provider.New(idp.Issuer, provider.Options{HTTPClient: mtls.Client()})
	cert, err := provider.ParseClientCertificate(selfSignedClientCert(t, "app-client"))
	if err != nil {
		t.Fatal(err)
	}
	rp := p.Bind(provider.Client{ID: clientID, Certificate: cert}, provider.RPOptions{})
	if _, err := rp.Refresh(context.Background(), "rt"); err != nil {
		t.Fatalf("refresh with tls_client_auth: %v", err)
	}
	if got, _ := peer.Load().(string); got != "app-client" {
		t.Errorf("the token endpoint saw certificate %q, want app-client", got)
	}
	if _, err := provider.ParseClientCertificate([]byte("junk"), []byte("junk")); err == nil {
		t.Error("junk parsed as a certificate")
	}
}

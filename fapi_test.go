package caddyoidc

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"encoding/pem"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/caddyserver/caddy/v2"
	"go.uber.org/zap"

	"github.com/caddy-oidc/caddy-oidc/internal/testidp"
	"github.com/caddy-oidc/caddy-oidc/session"
)

// writeECKey writes a P-256 private key as PEM for client_private_key.
func writeECKey(t *testing.T) string {
	t.Helper()
	k, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	der, _ := x509.MarshalECPrivateKey(k)
	p := filepath.Join(t.TempDir(), "client.pem")
	if err := os.WriteFile(p, pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: der}), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

// profile fapi2 fails at load, naming the rule, when the config
// contradicts the FAPI 2.0 Security Profile.
func TestProfileFAPI2ConfigErrors(t *testing.T) {
	idp := testidp.New()
	defer idp.Close()
	key := writeECKey(t)
	base := func(mod func(h *Handler)) *Handler {
		h := &Handler{Issuer: idp.Issuer, Profile: "fapi2", Client: ClientConfig{ID: "app", PrivateKey: key, KeyID: "k1", DPoP: true},
			Session: SessionConfig{Secrets: []string{testSecret}}}
		if mod != nil {
			mod(h)
		}
		return h
	}
	for want, h := range map[string]*Handler{
		"client_secret is not allowed":      base(func(h *Handler) { h.Client.Secret = "s3cret" }),
		"client_auth_method none":           base(func(h *Handler) { h.Client.AuthMethod = "none" }),
		"client_private_key":                base(func(h *Handler) { h.Client.PrivateKey = "" }),
		"sender-constrained":                base(func(h *Handler) { h.Client.DPoP = false }),
		"response_mode form_post":           base(func(h *Handler) { h.Login.ResponseMode = "form_post" }),
		`profile "fapi1" is unknown`:        base(func(h *Handler) { h.Profile = "fapi1" }),
		"request_object signs":              {Issuer: idp.Issuer, Client: ClientConfig{ID: "app", Secret: "s"}, Login: LoginConfig{RequestObject: true}, Session: SessionConfig{Secrets: []string{testSecret}}},
		"tls_client_auth needs":             {Issuer: idp.Issuer, Client: ClientConfig{ID: "app", AuthMethod: "tls_client_auth"}, Session: SessionConfig{Secrets: []string{testSecret}}},
		"needs both the certificate":        {Issuer: idp.Issuer, Client: ClientConfig{ID: "app", Certificate: "/x.crt"}, Session: SessionConfig{Secrets: []string{testSecret}}},
		`response_mode "fragment.jwt" is u`: base(func(h *Handler) { h.Login.ResponseMode = "fragment.jwt" }),
	} {
		if err := h.provision(caddy.Context{}, zap.NewNop()); err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("want an error containing %q, got %v", want, err)
		}
	}
	h := base(nil)
	if err := h.provision(caddy.Context{}, zap.NewNop()); err != nil {
		t.Fatalf("a FAPI 2.0 config: %v", err)
	}
	if !h.pushedRequests() || !h.client.IssuerAudience || len(h.dpopKeys) != 1 {
		t.Errorf("fapi2: PAR %v, issuer audience %v, %d DPoP keys", h.pushedRequests(), h.client.IssuerAudience, len(h.dpopKeys))
	}
}

// The DPoP key is derived from the session secret: every replica (and
// every reload) has the same one; a rotated-in secret adds a key, and a
// session refreshes with the key that bound its tokens.
func TestDPoPKeysAcrossReplicasAndRotation(t *testing.T) {
	idp := testidp.New()
	defer idp.Close()
	mk := func(secrets ...string) *Handler {
		return newTestHandler(t, idp, func(h *Handler) { h.Client.DPoP = true; h.Session.Secrets = secrets })
	}
	a, b := mk(testSecret), mk(testSecret)
	if a.dpopKeys[0].Thumbprint() != b.dpopKeys[0].Thumbprint() {
		t.Fatal("two replicas with one secret derived different DPoP keys")
	}
	other := newTestHandler(t, idp, func(h *Handler) { h.Client.DPoP = true; h.Client.ID = "other-app" })
	if other.dpopKeys[0].Thumbprint() == a.dpopKeys[0].Thumbprint() {
		t.Error("another client derived the same DPoP key")
	}
	rotated := mk("a-brand-new-session-secret-0123456789abcdef", testSecret)
	old := &session.Session{DPoPKey: a.dpopKeys[0].Thumbprint()}
	if rotated.rpFor(old) == rotated.rp || rotated.rpFor(old) != rotated.dpopRPs[old.DPoPKey] {
		t.Error("after a rotation a session does not refresh with the key that bound its tokens")
	}
	if rotated.rpFor(&session.Session{}) != rotated.rp {
		t.Error("a Bearer session does not use the route's own relying party")
	}
}

package caddyoidc

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"encoding/pem"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/lestrrat-go/jwx/v2/jwa"
	"github.com/lestrrat-go/jwx/v2/jwt"

	"github.com/caddy-oidc/caddy-oidc/internal/testidp"
)

func TestClientAuthentication(t *testing.T) {
	idp := testidp.New()
	defer idp.Close()
	ec, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	der, _ := x509.MarshalPKCS8PrivateKey(ec)
	keyFile := filepath.Join(t.TempDir(), "client.pem")
	_ = os.WriteFile(keyFile, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der}), 0o600)

	type seen struct{ basic, post, assertion bool }
	check := func(t *testing.T, mod func(h *Handler), verify func(r *http.Request) seen, want seen) {
		t.Helper()
		h := newTestHandler(t, idp, mod)
		attempt, q := startLogin(t, h, "/")
		var got seen
		tok := idp.Sign(idp.Claims("app", q.Get("nonce")))
		idp.OnToken(func(w http.ResponseWriter, r *http.Request) {
			_ = r.ParseForm()
			got = verify(r)
			testidp.TokenResponse(tok, nil)(w, r)
		})
		if w, err := callback(h, attempt, url.Values{"code": {"c"}, "state": {q.Get("state")}}); err != nil || w.Code != http.StatusFound {
			t.Fatalf("login: %d %v", w.Code, err)
		}
		if got != want {
			t.Errorf("the token endpoint saw %+v, want %+v", got, want)
		}
	}
	plain := func(r *http.Request) seen {
		u, p, ok := r.BasicAuth()
		return seen{basic: ok && u == "app" && p == "s3cret", post: r.PostForm.Get("client_secret") == "s3cret"}
	}
	t.Run("client_secret_basic", func(t *testing.T) { check(t, nil, plain, seen{basic: true}) })
	t.Run("client_secret_post", func(t *testing.T) {
		check(t, func(h *Handler) { h.Client.AuthMethod = "client_secret_post" }, plain, seen{post: true})
	})
	t.Run("public client", func(t *testing.T) {
		check(t, func(h *Handler) { h.Client.Secret = "" }, func(r *http.Request) seen {
			_, _, basic := r.BasicAuth()
			return seen{basic: basic, post: r.PostForm.Get("client_id") == "app" && r.PostForm.Get("code_verifier") != ""}
		}, seen{post: true})
	})
	t.Run("private_key_jwt", func(t *testing.T) {
		check(t, func(h *Handler) { h.Client.Secret = ""; h.Client.PrivateKey = keyFile; h.Client.KeyID = "client-key-1" },
			func(r *http.Request) seen {
				if r.PostForm.Get("client_assertion_type") != "urn:ietf:params:oauth:client-assertion-type:jwt-bearer" {
					return seen{}
				}
				tok, err := jwt.Parse([]byte(r.PostForm.Get("client_assertion")), jwt.WithKey(jwa.ES256, &ec.PublicKey),
					jwt.WithIssuer("app"), jwt.WithSubject("app"), jwt.WithAudience(idp.Issuer+"/token"), jwt.WithValidate(true))
				ok := err == nil && tok.JwtID() != "" && time.Until(tok.Expiration()) <= time.Minute
				_, _, basic := r.BasicAuth()
				return seen{assertion: ok, basic: basic}
			}, seen{assertion: true})
	})
}

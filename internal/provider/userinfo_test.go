package provider_test

import (
	"context"
	"errors"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/lestrrat-go/jwx/v2/jwa"

	"github.com/caddy-oidc/caddy-oidc/internal/provider"
	"github.com/caddy-oidc/caddy-oidc/internal/testidp"
)

// answer serves body with this content type at the userinfo endpoint,
// after checking the access token came as a Bearer header.
func answer(t *testing.T, contentType, body string) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		if got := r.Header.Get("Authorization"); got != "Bearer at" {
			t.Errorf("userinfo called with Authorization %q", got)
		}
		w.Header().Set("Content-Type", contentType)
		_, _ = w.Write([]byte(body))
	}
}

func userInfoClaims(idp *testidp.IdP, mod func(c map[string]any)) map[string]any {
	c := map[string]any{"sub": "user-1", "email": "user1@example.com", "email_verified": true,
		"iss": idp.Issuer, "aud": clientID, "iat": time.Now().Unix()}
	if mod != nil {
		mod(c)
	}
	return c
}

func TestUserInfoSignedResponses(t *testing.T) {
	idp, p := setup(t)
	ctx := context.Background()
	opts := provider.UserInfoOptions{ClientID: clientID, Subject: "user-1", ClockSkew: time.Minute}
	idp.SetDiscovery("userinfo_signing_alg_values_supported", []string{"RS256"})

	accepted := map[string]string{
		"signed, iss and aud":    idp.Sign(userInfoClaims(idp, nil)),
		"signed, neither":        idp.Sign(userInfoClaims(idp, func(c map[string]any) { delete(c, "iss"); delete(c, "aud") })),
		"signed, typed JWT":      idp.SignTyped("JWT", userInfoClaims(idp, nil)),
		"signed, aud is a list":  idp.Sign(userInfoClaims(idp, func(c map[string]any) { c["aud"] = []string{"other", clientID} })),
		"signed, trailing space": idp.Sign(userInfoClaims(idp, nil)) + "\n",
	}
	for name, body := range accepted {
		t.Run(name, func(t *testing.T) {
			idp.OnUserInfo(answer(t, "application/jwt", body))
			claims, err := p.UserInfo(ctx, "at", opts)
			if err != nil {
				t.Fatalf("refused: %v", err)
			}
			if claims["email"] != "user1@example.com" || claims["sub"] != "user-1" {
				t.Errorf("claims %v", claims)
			}
		})
	}

	valid := userInfoClaims(idp, nil)
	refused := map[string]string{
		"alg none":              testidp.Unsigned(valid),
		"HS256 with public key": testidp.SignWith(jwa.HS256, idp.PublicKeyBytes(), "k1", valid),
		"foreign key, IdP kid":  testidp.SignWith(jwa.RS256, testidp.ForeignKey("k1"), "k1", valid),
		"another issuer":        idp.Sign(userInfoClaims(idp, func(c map[string]any) { c["iss"] = "https://evil.example" })),
		"another client":        idp.Sign(userInfoClaims(idp, func(c map[string]any) { c["aud"] = "other" })),
		"another user":          idp.Sign(userInfoClaims(idp, func(c map[string]any) { c["sub"] = "user-2" })),
		"no sub":                idp.Sign(userInfoClaims(idp, func(c map[string]any) { delete(c, "sub") })),
		"expired":               idp.Sign(userInfoClaims(idp, func(c map[string]any) { c["exp"] = time.Now().Add(-time.Hour).Unix() })),
		"RS384, not announced":  testidp.SignWith(jwa.RS384, mustSigningKey(idp), "k1", valid),
		"not a JWT":             "abc.def",
	}
	for name, body := range refused {
		t.Run(name, func(t *testing.T) {
			idp.OnUserInfo(answer(t, "application/jwt", body))
			claims, err := p.UserInfo(ctx, "at", opts)
			if !errors.Is(err, provider.ErrInvalidToken) || claims != nil {
				t.Errorf("got %v, %v; want ErrInvalidToken and no claims", claims, err)
			}
		})
	}

	t.Run("a key the IdP does not have", func(t *testing.T) {
		// Its own endpoint's answer with an unknown kid looks like a key
		// rotation our key set is behind on: no claims, not a verdict.
		idp.OnUserInfo(answer(t, "application/jwt", testidp.SignWith(jwa.RS256, testidp.ForeignKey("k9"), "k9", valid)))
		if claims, err := p.UserInfo(ctx, "at", opts); err == nil || claims != nil {
			t.Errorf("got %v, %v; want an error and no claims", claims, err)
		}
	})
}

func mustSigningKey(idp *testidp.IdP) any {
	k, _ := idp.SigningKey()
	return k
}

// The algorithms are those the IdP announces for UserInfo; without that
// list, those of its ID tokens. Symmetric ones never, whatever it announces.
func TestUserInfoAlgorithms(t *testing.T) {
	idp, p := setup(t)
	ctx := context.Background()
	opts := provider.UserInfoOptions{ClientID: clientID, Subject: "user-1"}
	body := idp.Sign(userInfoClaims(idp, nil))
	idp.OnUserInfo(answer(t, "application/jwt", body))

	if _, err := p.UserInfo(ctx, "at", opts); err != nil {
		t.Errorf("no userinfo algorithms announced, RS256 as for ID tokens: %v", err)
	}

	_, p = newProvider(t, idp)
	idp.SetDiscovery("userinfo_signing_alg_values_supported", []string{"ES256"})
	if _, err := p.UserInfo(ctx, "at", opts); !errors.Is(err, provider.ErrInvalidToken) {
		t.Errorf("RS256 when the IdP announces only ES256 for userinfo: got %v, want ErrInvalidToken", err)
	}

	_, p = newProvider(t, idp)
	idp.SetDiscovery("userinfo_signing_alg_values_supported", []string{"HS256", "none", "RS256"})
	idp.OnUserInfo(answer(t, "application/jwt", testidp.SignWith(jwa.HS256, idp.PublicKeyBytes(), "k1", userInfoClaims(idp, nil))))
	if _, err := p.UserInfo(ctx, "at", opts); !errors.Is(err, provider.ErrInvalidToken) {
		t.Errorf("HS256, although announced: got %v, want ErrInvalidToken", err)
	}
}

func newProvider(t *testing.T, idp *testidp.IdP) (*testidp.IdP, *provider.Provider) {
	t.Helper()
	p := provider.New(idp.Issuer, provider.Options{})
	t.Cleanup(p.Close)
	return idp, p
}

func TestUserInfoResponses(t *testing.T) {
	idp := testidp.New()
	t.Cleanup(idp.Close)
	// A client without the limited transport: UserInfo caps what it reads itself.
	p := provider.New(idp.Issuer, provider.Options{HTTPClient: &http.Client{Timeout: 5 * time.Second}})
	ctx := context.Background()
	opts := provider.UserInfoOptions{ClientID: clientID, Subject: "user-1"}

	idp.OnUserInfo(answer(t, "application/json; charset=utf-8", `{"sub":"user-1","email":"a@example.com"}`))
	if claims, err := p.UserInfo(ctx, "at", opts); err != nil || claims["email"] != "a@example.com" {
		t.Errorf("JSON userinfo: %v, %v", claims, err)
	}

	idp.OnUserInfo(answer(t, "application/json", `{"sub":"user-2","email":"a@example.com"}`))
	if _, err := p.UserInfo(ctx, "at", opts); !errors.Is(err, provider.ErrInvalidToken) {
		t.Errorf("JSON userinfo about another user: got %v, want ErrInvalidToken", err)
	}

	unavailable := map[string]http.HandlerFunc{
		"oversized JSON": answer(t, "application/json", `{"sub":"user-1","pad":"`+strings.Repeat("x", 2<<20)+`"}`),
		"oversized JWT":  answer(t, "application/jwt", strings.Repeat("x", 2<<20)),
		"encrypted":      answer(t, "application/jwt", "eyJhbGciOiJSU0EtT0FFUCJ9.a.b.c.d"),
		"HTML":           answer(t, "text/html", "<html>login</html>"),
		"broken JSON":    answer(t, "application/json", `{"sub":`),
		"401":            func(w http.ResponseWriter, r *http.Request) { w.WriteHeader(http.StatusUnauthorized) },
	}
	for name, h := range unavailable {
		t.Run(name, func(t *testing.T) {
			idp.OnUserInfo(h)
			claims, err := p.UserInfo(ctx, "at", opts)
			if !errors.Is(err, provider.ErrUnavailable) || claims != nil {
				t.Errorf("got %v, %v; want ErrUnavailable and no claims", claims, err)
			}
		})
	}

	idp.SetDiscovery("userinfo_endpoint", nil)
	_, p = newProvider(t, idp)
	if claims, err := p.UserInfo(ctx, "at", opts); err != nil || claims != nil {
		t.Errorf("no userinfo endpoint: got %v, %v; want nothing", claims, err)
	}
}

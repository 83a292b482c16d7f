package provider_test

import (
	"context"
	"errors"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/lestrrat-go/jwx/v2/jwa"

	"github.com/caddy-oidc/caddy-oidc/internal/provider"
	"github.com/caddy-oidc/caddy-oidc/internal/testidp"
)

const clientID = "app"

func setup(t *testing.T) (*testidp.IdP, *provider.Provider) {
	t.Helper()
	idp := testidp.New()
	t.Cleanup(idp.Close)
	p := provider.New(idp.Issuer, provider.Options{})
	t.Cleanup(p.Close)
	return idp, p
}

func TestVerifyIDToken(t *testing.T) {
	idp, p := setup(t)
	ctx := context.Background()
	opts := provider.VerifyOptions{ClientID: clientID, Nonce: "n-1", ClockSkew: time.Minute}
	valid := idp.Claims(clientID, "n-1")
	with := func(mod func(c map[string]any)) map[string]any {
		c := idp.Claims(clientID, "n-1")
		mod(c)
		return c
	}

	claims, err := p.VerifyIDToken(ctx, idp.Sign(valid), opts)
	if err != nil {
		t.Fatalf("valid token refused: %v", err)
	}
	if claims["email"] != "user1@example.com" {
		t.Errorf("claims lost: %v", claims)
	}

	bad := map[string]string{
		"bad signature":         testidp.SignWith(jwa.RS256, testidp.ForeignKey("k1"), "k1", valid),
		"unknown kid":           testidp.SignWith(jwa.RS256, testidp.ForeignKey("k9"), "k9", valid),
		"alg none":              testidp.Unsigned(valid),
		"HS256 with public key": testidp.SignWith(jwa.HS256, idp.PublicKeyBytes(), "k1", valid),
		"wrong aud":             idp.Sign(with(func(c map[string]any) { c["aud"] = "other"; c["azp"] = "other" })),
		"wrong iss":             idp.Sign(with(func(c map[string]any) { c["iss"] = "https://evil.example" })),
		"expired":               idp.Sign(with(func(c map[string]any) { c["exp"] = time.Now().Add(-2 * time.Minute).Unix() })),
		"iat in the future":     idp.Sign(with(func(c map[string]any) { c["iat"] = time.Now().Add(5 * time.Minute).Unix() })),
		"iat too old":           idp.Sign(with(func(c map[string]any) { c["iat"] = time.Now().Add(-time.Hour).Unix() })),
		"no iat":                idp.Sign(with(func(c map[string]any) { delete(c, "iat") })),
		"no sub":                idp.Sign(with(func(c map[string]any) { delete(c, "sub") })),
		"wrong nonce":           idp.Sign(with(func(c map[string]any) { c["nonce"] = "n-2" })),
		"no nonce":              idp.Sign(with(func(c map[string]any) { delete(c, "nonce") })),
		"several aud, no azp":   idp.Sign(with(func(c map[string]any) { c["aud"] = []string{clientID, "other"}; delete(c, "azp") })),
		"azp of another client": idp.Sign(with(func(c map[string]any) { c["azp"] = "other" })),
		"not a JWT":             "abc.def",
	}
	for name, tok := range bad {
		t.Run(name, func(t *testing.T) {
			if _, err := p.VerifyIDToken(ctx, tok, opts); !errors.Is(err, provider.ErrInvalidToken) {
				t.Errorf("got %v, want ErrInvalidToken", err)
			}
		})
	}
}

func TestVerifyFollowsKeyRotationWithRateLimitedRefetch(t *testing.T) {
	idp, p := setup(t)
	ctx := context.Background()
	opts := provider.VerifyOptions{ClientID: clientID, Nonce: "n", ClockSkew: time.Minute}
	if _, err := p.VerifyIDToken(ctx, idp.Sign(idp.Claims(clientID, "n")), opts); err != nil {
		t.Fatal(err)
	}
	idp.AddKey("k2") // the IdP rotates: new tokens carry kid k2
	if _, err := p.VerifyIDToken(ctx, idp.Sign(idp.Claims(clientID, "n")), opts); err != nil {
		t.Fatalf("token signed by the rotated-in key refused: %v", err)
	}
	before := idp.JWKSHits.Load()
	// A flood of unknown kids costs at most one JWKS fetch per interval.
	foreign := testidp.ForeignKey("nope")
	for range 50 {
		tok := testidp.SignWith(jwa.RS256, foreign, "nope", idp.Claims(clientID, "n"))
		if _, err := p.VerifyIDToken(ctx, tok, opts); err == nil {
			t.Fatal("unknown kid accepted")
		}
	}
	if n := idp.JWKSHits.Load() - before; n > 1 {
		t.Errorf("unknown kids caused %d JWKS fetches, want at most 1", n)
	}
}

func TestDiscovery(t *testing.T) {
	t.Run("fetched once for concurrent callers", func(t *testing.T) {
		idp, p := setup(t)
		var wg sync.WaitGroup
		for range 20 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				if _, err := p.Discovery(context.Background()); err != nil {
					t.Error(err)
				}
			}()
		}
		wg.Wait()
		if n := idp.DiscoveryHits.Load(); n != 1 {
			t.Errorf("%d discovery fetches, want 1", n)
		}
	})
	t.Run("issuer mismatch refused", func(t *testing.T) {
		idp, p := setup(t)
		idp.SetDiscovery("issuer", "https://evil.example")
		if _, err := p.Discovery(context.Background()); !errors.Is(err, provider.ErrUnavailable) {
			t.Errorf("got %v, want an error", err)
		}
	})
	t.Run("stale document kept when a refetch fails", func(t *testing.T) {
		idp, p, clk := setupClock(t)
		ctx := context.Background()
		if _, err := p.Discovery(ctx); err != nil {
			t.Fatal(err)
		}
		idp.SetDiscovery("issuer", "https://evil.example") // every refetch now fails
		clk.advance(2 * time.Hour)
		for range 3 {
			if d, err := p.Discovery(ctx); err != nil || d.Issuer != idp.Issuer {
				t.Fatalf("stale document not served: %v %v", d, err)
			}
		}
		eventually(t, "the background refetch", func() bool { return p.DiscoveryFetches() == 2 })
		if d, err := p.Discovery(ctx); err != nil || d.Issuer != idp.Issuer {
			t.Fatalf("a failed refetch replaced the good document: %v %v", d, err)
		}
		if n := idp.DiscoveryHits.Load(); n != 2 {
			t.Errorf("%d discovery fetches, want 2", n)
		}
	})
	t.Run("failures back off", func(t *testing.T) {
		p := provider.New("http://127.0.0.1:1", provider.Options{})
		defer p.Close()
		for range 5 {
			if _, err := p.Discovery(context.Background()); !errors.Is(err, provider.ErrUnavailable) {
				t.Fatalf("got %v, want ErrUnavailable", err)
			}
		}
		if n := p.DiscoveryFetches(); n != 1 {
			t.Errorf("%d fetches in the backoff window, want 1", n)
		}
	})
}

func TestTokenEndpoint(t *testing.T) {
	idp, p := setup(t)
	ctx := context.Background()
	c := provider.Client{ID: "app", Secret: "s3cret"}

	var gotBasic, gotPost bool
	idp.OnToken(func(w http.ResponseWriter, r *http.Request) {
		_ = r.ParseForm()
		_, _, gotBasic = r.BasicAuth()
		gotPost = r.PostForm.Get("client_secret") != ""
		if r.PostForm.Get("refresh_token") == "spent" {
			w.WriteHeader(http.StatusBadRequest)
			_, _ = w.Write([]byte(`{"error":"invalid_grant"}`))
			return
		}
		if r.PostForm.Get("refresh_token") == "boom" {
			w.WriteHeader(http.StatusBadGateway)
			return
		}
		_, _ = w.Write([]byte(`{"access_token":"at","token_type":"Bearer","expires_in":60}`))
	})
	if _, err := p.Exchange(ctx, c, "code", "http://app/cb", "verifier"); err != nil || !gotBasic || gotPost {
		t.Errorf("basic: err=%v basic=%v post=%v, want client_secret_basic", err, gotBasic, gotPost)
	}
	if _, err := p.Refresh(ctx, c, "spent"); !errors.Is(err, provider.ErrInvalidGrant) {
		t.Errorf("invalid_grant: got %v", err)
	}
	if _, err := p.Refresh(ctx, c, "boom"); !errors.Is(err, provider.ErrUnavailable) || errors.Is(err, provider.ErrInvalidGrant) {
		t.Errorf("5xx: got %v, want ErrUnavailable", err)
	}

	idp2, p2 := setup(t)
	idp2.SetDiscovery("token_endpoint_auth_methods_supported", []string{"client_secret_post"})
	idp2.OnToken(func(w http.ResponseWriter, r *http.Request) {
		_ = r.ParseForm()
		_, _, gotBasic = r.BasicAuth()
		gotPost = r.PostForm.Get("client_secret") == "s3cret"
		_, _ = w.Write([]byte(`{"access_token":"at","token_type":"Bearer"}`))
	})
	if _, err := p2.Exchange(ctx, c, "code", "http://app/cb", "v"); err != nil || gotBasic || !gotPost {
		t.Errorf("post: err=%v basic=%v post=%v, want client_secret_post", err, gotBasic, gotPost)
	}
}

func TestVerifyLogoutToken(t *testing.T) {
	idp, p := setup(t)
	ctx := context.Background()
	valid := func() map[string]any {
		return map[string]any{
			"iss": idp.Issuer, "aud": clientID, "iat": time.Now().Unix(), "jti": "j-1", "sub": "user-1", "sid": "s-1",
			"events": map[string]any{provider.BackchannelLogoutEvent: map[string]any{}},
		}
	}
	with := func(mod func(c map[string]any)) map[string]any { c := valid(); mod(c); return c }
	lt, err := p.VerifyLogoutToken(ctx, idp.Sign(valid()), clientID, time.Minute, 5*time.Minute)
	if err != nil || lt.SID != "s-1" || lt.Subject != "user-1" || lt.JTI != "j-1" {
		t.Fatalf("valid logout token: %+v %v", lt, err)
	}
	if _, err := p.VerifyLogoutToken(ctx, idp.Sign(with(func(c map[string]any) { delete(c, "sid") })), clientID, time.Minute, 5*time.Minute); err != nil {
		t.Errorf("a token with sub only was refused: %v", err)
	}
	for name, tok := range map[string]string{
		"wrong signature": testidp.SignWith(jwa.RS256, testidp.ForeignKey("k1"), "k1", valid()),
		"wrong aud":       idp.Sign(with(func(c map[string]any) { c["aud"] = "other" })),
		"wrong iss":       idp.Sign(with(func(c map[string]any) { c["iss"] = "https://evil.example" })),
		"iat too old":     idp.Sign(with(func(c map[string]any) { c["iat"] = time.Now().Add(-time.Hour).Unix() })),
		"nonce present":   idp.Sign(with(func(c map[string]any) { c["nonce"] = "n" })),
		"events missing":  idp.Sign(with(func(c map[string]any) { delete(c, "events") })),
		"wrong event":     idp.Sign(with(func(c map[string]any) { c["events"] = map[string]any{"other": map[string]any{}} })),
		"no sid nor sub":  idp.Sign(with(func(c map[string]any) { delete(c, "sid"); delete(c, "sub") })),
		"no jti":          idp.Sign(with(func(c map[string]any) { delete(c, "jti") })),
		"alg none":        testidp.Unsigned(valid()),
	} {
		t.Run(name, func(t *testing.T) {
			if _, err := p.VerifyLogoutToken(ctx, tok, clientID, time.Minute, 5*time.Minute); !errors.Is(err, provider.ErrInvalidToken) {
				t.Errorf("got %v, want ErrInvalidToken", err)
			}
		})
	}
}

// rewrite sends every request to the fake IdP, whatever its URL says: the
// IdP double then stands at a real provider's address.
type rewrite struct {
	target *url.URL
	strip  string
}

func (rw rewrite) RoundTrip(r *http.Request) (*http.Response, error) {
	r = r.Clone(r.Context())
	r.URL.Scheme, r.URL.Host = rw.target.Scheme, rw.target.Host
	r.URL.Path = strings.TrimPrefix(r.URL.Path, rw.strip)
	return http.DefaultTransport.RoundTrip(r)
}

func TestEntraMultiTenantIssuer(t *testing.T) {
	idp := testidp.New()
	defer idp.Close()
	target, _ := url.Parse(idp.Issuer)
	idp.SetDiscovery("issuer", "https://login.microsoftonline.com/{tenantid}/v2.0")
	p := provider.New("https://login.microsoftonline.com/common/v2.0", provider.Options{
		HTTPClient: &http.Client{Transport: rewrite{target: target, strip: "/common/v2.0"}},
	})
	defer p.Close()
	ctx := context.Background()
	opts := provider.VerifyOptions{ClientID: clientID, Nonce: "n", ClockSkew: time.Minute}
	claims := idp.Claims(clientID, "n")
	claims["iss"], claims["tid"] = "https://login.microsoftonline.com/tenant-a/v2.0", "tenant-a"
	if _, err := p.VerifyIDToken(ctx, idp.Sign(claims), opts); err != nil {
		t.Fatalf("a token of tenant-a through the common endpoint: %v", err)
	}
	claims["tid"] = "tenant-b" // iss of one tenant, tid of another
	if _, err := p.VerifyIDToken(ctx, idp.Sign(claims), opts); !errors.Is(err, provider.ErrInvalidToken) {
		t.Errorf("iss/tid mismatch accepted: %v", err)
	}
	// A single-tenant issuer never accepts the template.
	single := provider.New("https://login.microsoftonline.com/tenant-a/v2.0", provider.Options{
		HTTPClient: &http.Client{Transport: rewrite{target: target, strip: "/tenant-a/v2.0"}},
	})
	defer single.Close()
	if _, err := single.Discovery(ctx); err == nil {
		t.Error("a single-tenant issuer accepted a discovery document announcing {tenantid}")
	}
}

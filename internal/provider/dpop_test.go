package provider_test

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
	"errors"
	"fmt"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/lestrrat-go/jwx/v2/jwa"
	"github.com/lestrrat-go/jwx/v2/jwk"
	"github.com/lestrrat-go/jwx/v2/jws"

	"github.com/caddy-oidc/caddy-oidc/internal/provider"
	"github.com/caddy-oidc/caddy-oidc/internal/testidp"
)

// proofKey is a DPoP key a test holds both ways: raw (to craft proofs the
// module would never sign) and as the module's DPoPKey.
type proofKey struct {
	raw *ecdsa.PrivateKey
	pub jwk.Key
	dk  *provider.DPoPKey
}

func newProofKey(t *testing.T) proofKey {
	t.Helper()
	raw, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	der, err := x509.MarshalPKCS8PrivateKey(raw)
	if err != nil {
		t.Fatal(err)
	}
	dk, err := provider.ParseDPoPKey(pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der}))
	if err != nil {
		t.Fatal(err)
	}
	pub, err := jwk.FromRaw(&raw.PublicKey)
	if err != nil {
		t.Fatal(err)
	}
	return proofKey{raw: raw, pub: pub, dk: dk}
}

// craft signs claims under header fields (typ, jwk...) with alg and key.
func craft(t *testing.T, alg jwa.SignatureAlgorithm, key any, header map[string]any, claims map[string]any) string {
	t.Helper()
	payload, _ := json.Marshal(claims)
	hdr := jws.NewHeaders()
	for k, v := range header {
		if err := hdr.Set(k, v); err != nil {
			t.Fatal(err)
		}
	}
	out, err := jws.Sign(payload, jws.WithKey(alg, key, jws.WithProtectedHeaders(hdr)))
	if err != nil {
		t.Fatal(err)
	}
	return string(out)
}

func ath(token string) string {
	sum := sha256.Sum256([]byte(token))
	return base64.RawURLEncoding.EncodeToString(sum[:])
}

func TestDPoPKeyMarshalRoundTrip(t *testing.T) {
	k, err := provider.NewDPoPKey()
	if err != nil {
		t.Fatal(err)
	}
	if k.Algorithm() != "ES256" {
		t.Errorf("a new key signs with %s, want ES256", k.Algorithm())
	}
	pemBytes, err := k.MarshalPEM()
	if err != nil {
		t.Fatal(err)
	}
	jwkBytes, err := k.MarshalJWK()
	if err != nil {
		t.Fatal(err)
	}
	for name, b := range map[string][]byte{"PEM": pemBytes, "JWK": jwkBytes} {
		back, err := provider.ParseDPoPKey(b)
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		if back.Thumbprint() != k.Thumbprint() {
			t.Errorf("%s: thumbprint %s after the round trip, want %s", name, back.Thumbprint(), k.Thumbprint())
		}
		// Another replica's copy of the key makes proofs for the same binding.
		proof, err := back.Proof("POST", "https://idp.example/token", "at", "", time.Now())
		if err != nil {
			t.Fatal(err)
		}
		if _, err := provider.VerifyDPoPProof(proof, provider.DPoPCheck{Method: "POST", URL: "https://idp.example/token", AccessToken: "at", JKT: k.Thumbprint()}); err != nil {
			t.Errorf("%s: a proof of the restored key is refused: %v", name, err)
		}
	}
	pub, _ := json.Marshal(map[string]any{"kty": "EC", "crv": "P-256", "x": "f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU", "y": "x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0"})
	if _, err := provider.ParseDPoPKey(pub); err == nil {
		t.Error("a public key was accepted as a DPoP key")
	}
	if _, err := provider.ParseDPoPKey([]byte(`{"kty":"oct","k":"c2VjcmV0"}`)); err == nil {
		t.Error("a symmetric key was accepted as a DPoP key")
	}
}

func TestDPoPProofLeavesQueryAndFragmentOut(t *testing.T) {
	k := newProofKey(t)
	proof, err := k.dk.Proof("GET", "https://api.example/r?x=1#frag", "", "n-1", time.Now())
	if err != nil {
		t.Fatal(err)
	}
	msg, err := jws.Parse([]byte(proof))
	if err != nil {
		t.Fatal(err)
	}
	var claims map[string]any
	_ = json.Unmarshal(msg.Payload(), &claims)
	if claims["htu"] != "https://api.example/r" || claims["nonce"] != "n-1" || claims["htm"] != "GET" {
		t.Errorf("claims %v", claims)
	}
	if _, ok := claims["ath"]; ok {
		t.Error("ath without an access token")
	}
	hdr := msg.Signatures()[0].ProtectedHeaders()
	if hdr.Type() != "dpop+jwt" || hdr.JWK() == nil {
		t.Fatalf("header typ %q jwk %v", hdr.Type(), hdr.JWK())
	}
	if private, _ := jwk.IsPrivateKey(hdr.JWK()); private {
		t.Error("the proof's jwk header carries the private key")
	}
}

func TestVerifyDPoPProof(t *testing.T) {
	k := newProofKey(t)
	other := newProofKey(t)
	now := time.Now()
	const token, target = "access-token-1", "https://api.example/orders"
	check := provider.DPoPCheck{Method: "GET", URL: target + "?page=2", AccessToken: token, JKT: k.dk.Thumbprint(), Now: now}
	claims := func(mod func(c map[string]any)) map[string]any {
		c := map[string]any{"jti": fmt.Sprint("jti-", now.UnixNano()), "htm": "GET", "htu": target, "iat": now.Unix(), "ath": ath(token)}
		if mod != nil {
			mod(c)
		}
		return c
	}
	header := map[string]any{"typ": "dpop+jwt", "jwk": k.pub}
	sign := func(c map[string]any) string { return craft(t, jwa.ES256, k.raw, header, c) }

	got, err := provider.VerifyDPoPProof(sign(claims(nil)), check)
	if err != nil {
		t.Fatalf("a valid proof is refused: %v", err)
	}
	if got.JTI == "" || got.JKT != k.dk.Thumbprint() || !got.Expiry.After(now) {
		t.Errorf("proof %+v", got)
	}
	// The module's own proofs verify, with htu's default port and case normalised.
	own, _ := k.dk.Proof("GET", "HTTPS://API.example:443/orders", token, "", now)
	if _, err := provider.VerifyDPoPProof(own, check); err != nil {
		t.Errorf("the module's own proof is refused: %v", err)
	}

	privateJWK, _ := jwk.FromRaw(k.raw)
	hmacKey := []byte("0123456789abcdef0123456789abcdef")
	bad := map[string]string{
		"wrong htu path":        sign(claims(func(c map[string]any) { c["htu"] = "https://api.example/admin" })),
		"wrong htu host":        sign(claims(func(c map[string]any) { c["htu"] = "https://evil.example/orders" })),
		"wrong htu scheme":      sign(claims(func(c map[string]any) { c["htu"] = "http://api.example/orders" })),
		"wrong htm":             sign(claims(func(c map[string]any) { c["htm"] = "POST" })),
		"iat too old":           sign(claims(func(c map[string]any) { c["iat"] = now.Add(-2 * time.Minute).Unix() })),
		"iat in the future":     sign(claims(func(c map[string]any) { c["iat"] = now.Add(time.Minute).Unix() })),
		"no iat":                sign(claims(func(c map[string]any) { delete(c, "iat") })),
		"no jti":                sign(claims(func(c map[string]any) { delete(c, "jti") })),
		"huge jti":              sign(claims(func(c map[string]any) { c["jti"] = strings.Repeat("j", 300) })),
		"wrong ath":             sign(claims(func(c map[string]any) { c["ath"] = ath("another-token") })),
		"no ath":                sign(claims(func(c map[string]any) { delete(c, "ath") })),
		"key not the token's":   craft(t, jwa.ES256, other.raw, map[string]any{"typ": "dpop+jwt", "jwk": other.pub}, claims(nil)),
		"signed by another key": craft(t, jwa.ES256, other.raw, header, claims(nil)),
		"typ JWT":               craft(t, jwa.ES256, k.raw, map[string]any{"typ": "JWT", "jwk": k.pub}, claims(nil)),
		"no typ":                craft(t, jwa.ES256, k.raw, map[string]any{"jwk": k.pub}, claims(nil)),
		"no jwk":                craft(t, jwa.ES256, k.raw, map[string]any{"typ": "dpop+jwt"}, claims(nil)),
		"private jwk":           craft(t, jwa.ES256, k.raw, map[string]any{"typ": "dpop+jwt", "jwk": privateJWK}, claims(nil)),
		"HS256":                 craft(t, jwa.HS256, hmacKey, header, claims(nil)),
		"alg none":              unsignedProof(k.pub, claims(nil)),
		"not a JWS":             "a.b",
	}
	for name, proof := range bad {
		t.Run(name, func(t *testing.T) {
			if _, err := provider.VerifyDPoPProof(proof, check); !errors.Is(err, provider.ErrInvalidDPoPProof) || !errors.Is(err, provider.ErrInvalidToken) {
				t.Errorf("got %v, want ErrInvalidDPoPProof", err)
			}
		})
	}

	t.Run("token without cnf.jkt", func(t *testing.T) {
		c := check
		c.JKT = ""
		if _, err := provider.VerifyDPoPProof(sign(claims(nil)), c); !errors.Is(err, provider.ErrInvalidDPoPProof) {
			t.Errorf("got %v, want ErrInvalidDPoPProof", err)
		}
	})
	t.Run("nonce required", func(t *testing.T) {
		c := check
		c.CheckNonce = func(n string) bool { return n == "current" }
		if _, err := provider.VerifyDPoPProof(sign(claims(nil)), c); !errors.Is(err, provider.ErrUseDPoPNonce) {
			t.Errorf("without a nonce: got %v, want ErrUseDPoPNonce", err)
		}
		if _, err := provider.VerifyDPoPProof(sign(claims(func(m map[string]any) { m["nonce"] = "stale" })), c); !errors.Is(err, provider.ErrUseDPoPNonce) {
			t.Errorf("with a stale nonce: got %v, want ErrUseDPoPNonce", err)
		}
		if _, err := provider.VerifyDPoPProof(sign(claims(func(m map[string]any) { m["nonce"] = "current" })), c); err != nil {
			t.Errorf("with the current nonce: %v", err)
		}
	})
}

func unsignedProof(pub jwk.Key, claims map[string]any) string {
	j, _ := json.Marshal(pub)
	h := base64.RawURLEncoding.EncodeToString([]byte(`{"alg":"none","typ":"dpop+jwt","jwk":` + string(j) + `}`))
	p, _ := json.Marshal(claims)
	return h + "." + base64.RawURLEncoding.EncodeToString(p) + "."
}

func TestConfirmationJKT(t *testing.T) {
	if got := provider.ConfirmationJKT(map[string]any{"cnf": map[string]any{"jkt": "abc"}}); got != "abc" {
		t.Errorf("got %q", got)
	}
	if got := provider.ConfirmationJKT(map[string]any{"sub": "x"}); got != "" {
		t.Errorf("an unbound token has jkt %q", got)
	}
}

// dpopServer is an endpoint that wants DPoP proofs with its current nonce,
// as oidc-provider with nonces: a proof without it gets a use_dpop_nonce
// challenge and the nonce.
type dpopServer struct {
	t       *testing.T
	jkt     string
	mu      sync.Mutex
	nonce   string
	calls   atomic.Int64
	proofed atomic.Int64 // requests whose proof verified with the current nonce
}

// check verifies r's proof; it answers the challenge itself and returns
// false when r must not be served.
func (s *dpopServer) check(w http.ResponseWriter, r *http.Request, accessToken string, resourceServer bool) bool {
	s.calls.Add(1)
	s.mu.Lock()
	nonce := s.nonce
	s.mu.Unlock()
	if got := r.Header.Values("DPoP"); len(got) != 1 {
		s.t.Errorf("%s %s carries %d DPoP headers, want 1", r.Method, r.URL.Path, len(got))
		http.Error(w, "no proof", http.StatusBadRequest)
		return false
	}
	_, err := provider.VerifyDPoPProof(r.Header.Get("DPoP"), provider.DPoPCheck{
		Method: r.Method, URL: "http://" + r.Host + r.URL.Path, AccessToken: accessToken, JKT: s.jkt,
		CheckNonce: func(n string) bool { return n == nonce },
	})
	switch {
	case errors.Is(err, provider.ErrUseDPoPNonce):
		w.Header().Set("DPoP-Nonce", nonce)
		if resourceServer {
			w.Header().Set("WWW-Authenticate", `DPoP error="use_dpop_nonce", error_description="nonce required"`)
			w.WriteHeader(http.StatusUnauthorized)
			return false
		}
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(http.StatusBadRequest)
		_, _ = w.Write([]byte(`{"error":"use_dpop_nonce"}`))
		return false
	case err != nil:
		s.t.Errorf("%s %s: proof refused: %v", r.Method, r.URL.Path, err)
		http.Error(w, "bad proof", http.StatusBadRequest)
		return false
	}
	s.proofed.Add(1)
	return true
}

func (s *dpopServer) rotate(nonce string) {
	s.mu.Lock()
	s.nonce = nonce
	s.mu.Unlock()
}

func TestDPoPBoundCallsWithNonceRoundTrip(t *testing.T) {
	idp, p := setup(t)
	ctx := context.Background()
	k := newProofKey(t)
	as := &dpopServer{t: t, jkt: k.dk.Thumbprint(), nonce: "n-1"}
	idp.OnToken(func(w http.ResponseWriter, r *http.Request) {
		if !as.check(w, r, "", false) {
			return
		}
		w.Header().Set("Content-Type", "application/json")
		_, _ = w.Write([]byte(`{"access_token":"at-dpop","token_type":"DPoP","expires_in":60,"refresh_token":"rt-2"}`))
	})
	rs := &dpopServer{t: t, jkt: k.dk.Thumbprint(), nonce: "rs-1"}
	idp.OnUserInfo(func(w http.ResponseWriter, r *http.Request) {
		if r.Header.Get("Authorization") != "DPoP at-dpop" {
			t.Errorf("userinfo Authorization %q, want the token as DPoP", r.Header.Get("Authorization"))
		}
		if !rs.check(w, r, "at-dpop", true) {
			return
		}
		w.Header().Set("Content-Type", "application/json")
		_, _ = w.Write([]byte(`{"sub":"user-1"}`))
	})
	idp.SetDiscovery("revocation_endpoint", idp.Issuer+"/revoke")
	idp.OnRevoke(func(w http.ResponseWriter, r *http.Request) { as.check(w, r, "", false) })
	rp := p.Bind(provider.Client{ID: clientID, Secret: "s", DPoP: k.dk}, provider.RPOptions{})

	tr, err := rp.Exchange(ctx, "code", "https://app/cb", "verifier")
	if err != nil {
		t.Fatalf("exchange: %v", err)
	}
	if tr.TokenType != "DPoP" || as.calls.Load() != 2 || as.proofed.Load() != 1 {
		t.Errorf("token type %q after %d calls (%d with the nonce), want DPoP after a challenge and a retry", tr.TokenType, as.calls.Load(), as.proofed.Load())
	}
	// The nonce is remembered: the refresh needs no challenge.
	if _, err := rp.Refresh(ctx, "rt-1"); err != nil {
		t.Fatalf("refresh: %v", err)
	}
	if as.calls.Load() != 3 {
		t.Errorf("the refresh took %d calls, want 1", as.calls.Load()-2)
	}
	if _, err := rp.UserInfo(ctx, "at-dpop", "user-1"); err != nil {
		t.Fatalf("userinfo: %v", err)
	}
	if rs.calls.Load() != 2 || rs.proofed.Load() != 1 {
		t.Errorf("userinfo took %d calls (%d with the nonce), want a challenge and a retry", rs.calls.Load(), rs.proofed.Load())
	}
	// A rotated nonce is learnt from the challenge, on revocation too.
	as.rotate("n-2")
	if err := rp.Revoke(ctx, "rt-2", "refresh_token"); err != nil {
		t.Fatalf("revoke: %v", err)
	}
	if as.calls.Load() != 5 || as.proofed.Load() != 3 {
		t.Errorf("revocation after a rotation: %d calls in all (%d proofed), want 5 (3)", as.calls.Load(), as.proofed.Load())
	}
}

func TestDPoPNonceRetriedOnlyOnce(t *testing.T) {
	idp, p := setup(t)
	k := newProofKey(t)
	var calls atomic.Int64
	idp.OnToken(func(w http.ResponseWriter, r *http.Request) {
		// A server whose nonce never satisfies it.
		w.Header().Set("DPoP-Nonce", fmt.Sprint("n-", calls.Add(1)))
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(http.StatusBadRequest)
		_, _ = w.Write([]byte(`{"error":"use_dpop_nonce"}`))
	})
	rp := p.Bind(provider.Client{ID: clientID, Secret: "s", DPoP: k.dk}, provider.RPOptions{})
	_, err := rp.Exchange(context.Background(), "code", "https://app/cb", "v")
	var te *provider.TokenError
	if !errors.As(err, &te) || te.Code != "use_dpop_nonce" {
		t.Errorf("got %v, want the server's use_dpop_nonce error", err)
	}
	if calls.Load() != 2 {
		t.Errorf("%d calls, want the request and one retry", calls.Load())
	}
}

func TestDPoPClientRefusesUnboundToken(t *testing.T) {
	idp, p := setup(t)
	k := newProofKey(t)
	idp.OnToken(testidp.TokenResponse(idp.Sign(idp.Claims(clientID, "n")), nil)) // token_type Bearer
	rp := p.Bind(provider.Client{ID: clientID, Secret: "s", DPoP: k.dk}, provider.RPOptions{})
	if _, err := rp.Exchange(context.Background(), "code", "https://app/cb", "v"); !errors.Is(err, provider.ErrInvalidToken) {
		t.Errorf("a Bearer token for a DPoP client: got %v, want ErrInvalidToken", err)
	}
	// Without a DPoP key, the same answer is fine.
	plain := p.Bind(provider.Client{ID: clientID, Secret: "s"}, provider.RPOptions{})
	if _, err := plain.Exchange(context.Background(), "code", "https://app/cb", "v"); err != nil {
		t.Errorf("a Bearer token without DPoP: %v", err)
	}
}

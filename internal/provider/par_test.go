package provider_test

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"errors"
	"net/http"
	"net/http/httptest"
	"net/url"
	"sync"
	"testing"
	"time"

	"github.com/lestrrat-go/jwx/v2/jwa"
	"github.com/lestrrat-go/jwx/v2/jws"

	"github.com/caddy-oidc/caddy-oidc/internal/provider"
)

// clientKey is a private_key_jwt key: the module's ClientKey and the
// public half a test verifies signatures with.
func clientKey(t *testing.T) (*provider.ClientKey, *ecdsa.PublicKey) {
	t.Helper()
	raw, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	der, _ := x509.MarshalPKCS8PrivateKey(raw)
	k, err := provider.ParseClientKey(pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der}), "client-key-1", "")
	if err != nil {
		t.Fatal(err)
	}
	return k, &raw.PublicKey
}

// parEndpoint is a PAR endpoint: it records what was pushed and answers
// with answer (nil: a request_uri).
type parEndpoint struct {
	*httptest.Server
	mu     sync.Mutex
	pushed []url.Values
	dpop   []string
	answer http.HandlerFunc
}

func newPAREndpoint(t *testing.T) *parEndpoint {
	e := &parEndpoint{}
	e.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_ = r.ParseForm()
		e.mu.Lock()
		e.pushed = append(e.pushed, r.PostForm)
		e.dpop = append(e.dpop, r.Header.Get("DPoP"))
		answer := e.answer
		e.mu.Unlock()
		if answer != nil {
			answer(w, r)
			return
		}
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(http.StatusCreated)
		_, _ = w.Write([]byte(`{"request_uri":"urn:ietf:params:oauth:request_uri:abc","expires_in":60}`))
	}))
	t.Cleanup(e.Close)
	return e
}

func (e *parEndpoint) answerWith(h http.HandlerFunc) {
	e.mu.Lock()
	e.answer = h
	e.mu.Unlock()
}

func (e *parEndpoint) last(t *testing.T) (url.Values, string) {
	t.Helper()
	e.mu.Lock()
	defer e.mu.Unlock()
	if len(e.pushed) == 0 {
		t.Fatal("nothing was pushed")
	}
	return e.pushed[len(e.pushed)-1], e.dpop[len(e.dpop)-1]
}

func loginParams() url.Values {
	return url.Values{
		"response_type": {"code"}, "client_id": {clientID}, "redirect_uri": {"https://app.example/cb"},
		"scope": {"openid email"}, "state": {"st"}, "nonce": {"nn"}, "max_age": {"300"},
		"code_challenge": {"cc"}, "code_challenge_method": {"S256"},
	}
}

func TestPushAuthorizationRequest(t *testing.T) {
	idp, p := setup(t)
	par := newPAREndpoint(t)
	idp.SetDiscovery("pushed_authorization_request_endpoint", par.URL+"/par")
	ctx := context.Background()
	dk := newProofKey(t).dk
	rp := p.Bind(provider.Client{ID: clientID, Secret: "s3cret", DPoP: dk}, provider.RPOptions{})

	uri, ttl, err := rp.PushAuthorizationRequest(ctx, loginParams())
	if err != nil {
		t.Fatal(err)
	}
	if uri != "urn:ietf:params:oauth:request_uri:abc" || ttl != time.Minute {
		t.Errorf("request_uri %q, expires in %s", uri, ttl)
	}
	form, proof := par.last(t)
	if form.Get("state") != "st" || form.Get("code_challenge") != "cc" || form.Get("redirect_uri") != "https://app.example/cb" {
		t.Errorf("pushed %v", form)
	}
	if _, err := provider.VerifyDPoPProof(proof, provider.DPoPCheck{Method: "POST", URL: par.URL + "/par", JKT: dk.Thumbprint()}); err != nil {
		t.Errorf("the push's DPoP proof (binding the code to the key): %v", err)
	}

	// The browser gets client_id and request_uri only.
	target, err := rp.AuthorizationURL(ctx, loginParams(), provider.AuthRequestOptions{PAR: true})
	if err != nil {
		t.Fatal(err)
	}
	u, _ := url.Parse(target)
	if got := u.Query(); len(got) != 2 || got.Get("client_id") != clientID || got.Get("request_uri") != uri || u.Path != "/authorize" {
		t.Errorf("authorization URL %s", target)
	}

	// Refusals keep their meaning: a 400 is the request's fault, a 503 the IdP's.
	par.answerWith(func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(http.StatusBadRequest)
		_, _ = w.Write([]byte(`{"error":"invalid_request","error_description":"redirect_uri not registered"}`))
	})
	if _, _, err := rp.PushAuthorizationRequest(ctx, loginParams()); err == nil || errors.Is(err, provider.ErrUnavailable) {
		t.Errorf("a refused push: %v", err)
	}
	par.answerWith(func(w http.ResponseWriter, _ *http.Request) { http.Error(w, "down", http.StatusServiceUnavailable) })
	if _, _, err := rp.PushAuthorizationRequest(ctx, loginParams()); !errors.Is(err, provider.ErrUnavailable) {
		t.Errorf("a push to an IdP that is down: got %v, want ErrUnavailable", err)
	}
	par.answerWith(func(w http.ResponseWriter, _ *http.Request) {
		w.WriteHeader(http.StatusCreated)
		_, _ = w.Write([]byte(`{"expires_in":60}`))
	})
	if _, _, err := rp.PushAuthorizationRequest(ctx, loginParams()); !errors.Is(err, provider.ErrUnavailable) {
		t.Errorf("a push answered without request_uri: got %v, want ErrUnavailable", err)
	}
}

func TestAuthorizationURLFollowsDiscovery(t *testing.T) {
	_, p := setup(t)
	ctx := context.Background()
	rp := p.Bind(provider.Client{ID: clientID, Secret: "s"}, provider.RPOptions{})

	target, err := rp.AuthorizationURL(ctx, loginParams(), provider.AuthRequestOptions{})
	if err != nil {
		t.Fatal(err)
	}
	u, _ := url.Parse(target)
	if u.Query().Get("state") != "st" || u.Query().Get("code_challenge") != "cc" {
		t.Errorf("a plain request lost its parameters: %s", target)
	}
	if _, _, err := rp.PushAuthorizationRequest(ctx, loginParams()); err == nil {
		t.Error("pushed to an IdP without a PAR endpoint")
	}

	// An IdP that requires PAR gets it whatever the options say.
	idp2, p2 := setup(t)
	par := newPAREndpoint(t)
	idp2.SetDiscovery("pushed_authorization_request_endpoint", par.URL+"/par")
	idp2.SetDiscovery("require_pushed_authorization_requests", true)
	rp2 := p2.Bind(provider.Client{ID: clientID, Secret: "s"}, provider.RPOptions{})
	target, err = rp2.AuthorizationURL(ctx, loginParams(), provider.AuthRequestOptions{})
	if err != nil {
		t.Fatal(err)
	}
	u, _ = url.Parse(target)
	if u.Query().Get("request_uri") == "" || u.Query().Has("state") {
		t.Errorf("an IdP requiring PAR got %s", target)
	}
}

func TestSignRequestObject(t *testing.T) {
	idp, p := setup(t)
	par := newPAREndpoint(t)
	idp.SetDiscovery("pushed_authorization_request_endpoint", par.URL+"/par")
	ctx := context.Background()
	key, pub := clientKey(t)
	rp := p.Bind(provider.Client{ID: clientID, Key: key}, provider.RPOptions{})

	signed, err := rp.SignRequestObject(ctx, loginParams())
	if err != nil {
		t.Fatal(err)
	}
	payload, err := jws.Verify([]byte(signed), jws.WithKey(jwa.ES256, pub))
	if err != nil {
		t.Fatalf("the request object does not verify with the client's key: %v", err)
	}
	msg, _ := jws.Parse([]byte(signed))
	if hdr := msg.Signatures()[0].ProtectedHeaders(); hdr.Type() != "oauth-authz-req+jwt" || hdr.KeyID() != "client-key-1" {
		t.Errorf("header typ %q kid %q", hdr.Type(), hdr.KeyID())
	}
	var claims map[string]any
	_ = json.Unmarshal(payload, &claims)
	if claims["iss"] != clientID || claims["client_id"] != clientID || claims["aud"] != idp.Issuer {
		t.Errorf("iss %v client_id %v aud %v", claims["iss"], claims["client_id"], claims["aud"])
	}
	if claims["state"] != "st" || claims["code_challenge"] != "cc" || claims["max_age"] != float64(300) || claims["jti"] == "" {
		t.Errorf("claims %v", claims)
	}
	nbf, _ := claims["nbf"].(float64)
	exp, _ := claims["exp"].(float64)
	if exp <= nbf || exp-nbf > 3600 {
		t.Errorf("nbf %v exp %v: FAPI 2.0 wants exp within 60 minutes of nbf", nbf, exp)
	}

	// Signed and pushed: the push carries client_id and request; the
	// client authenticates with private_key_jwt alongside.
	target, err := rp.AuthorizationURL(ctx, loginParams(), provider.AuthRequestOptions{PAR: true, RequestObject: true})
	if err != nil {
		t.Fatal(err)
	}
	form, _ := par.last(t)
	if form.Get("request") == "" || form.Has("state") || form.Get("client_assertion") == "" || form.Get("client_id") != clientID {
		t.Errorf("pushed %v", form)
	}
	if u, _ := url.Parse(target); u.Query().Get("request_uri") == "" || u.Query().Has("request") {
		t.Errorf("authorization URL %s", target)
	}
	// Signed, not pushed: the browser carries it.
	target, _ = rp.AuthorizationURL(ctx, loginParams(), provider.AuthRequestOptions{RequestObject: true})
	if u, _ := url.Parse(target); u.Query().Get("request") == "" || u.Query().Has("state") {
		t.Errorf("authorization URL %s", target)
	}

	noKey := p.Bind(provider.Client{ID: clientID, Secret: "s"}, provider.RPOptions{})
	if _, err := noKey.SignRequestObject(ctx, loginParams()); err == nil {
		t.Error("signed a request object without a client key")
	}
}

func TestSignRequestObjectRefusesUnannouncedAlgorithm(t *testing.T) {
	idp, p := setup(t)
	idp.SetDiscovery("request_object_signing_alg_values_supported", []string{"PS256"})
	key, _ := clientKey(t) // ES256
	rp := p.Bind(provider.Client{ID: clientID, Key: key}, provider.RPOptions{})
	if _, err := rp.SignRequestObject(context.Background(), loginParams()); err == nil {
		t.Error("signed with ES256 for an IdP that takes PS256 only")
	}
}

func TestIssuerAudienceAssertion(t *testing.T) {
	idp, p := setup(t)
	key, pub := clientKey(t)
	auds := make(chan any, 2)
	idp.OnToken(func(w http.ResponseWriter, r *http.Request) {
		_ = r.ParseForm()
		payload, err := jws.Verify([]byte(r.PostForm.Get("client_assertion")), jws.WithKey(jwa.ES256, pub))
		var claims map[string]any
		if err != nil || json.Unmarshal(payload, &claims) != nil {
			t.Errorf("client assertion: %v", err)
		}
		auds <- claims["aud"]
		http.Error(w, `{"error":"invalid_grant"}`, http.StatusBadRequest)
	})
	for _, c := range []struct {
		issuerAudience bool
		want           string
	}{{false, idp.Issuer + "/token"}, {true, idp.Issuer}} {
		rp := p.Bind(provider.Client{ID: clientID, Key: key, IssuerAudience: c.issuerAudience}, provider.RPOptions{})
		_, _ = rp.Refresh(context.Background(), "rt")
		// FAPI 2.0 servers compare aud with their issuer as a string.
		if got := <-auds; got != c.want {
			t.Errorf("IssuerAudience %t: aud %#v, want the string %q", c.issuerAudience, got, c.want)
		}
	}
}

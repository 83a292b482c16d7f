// Package testidp is a fake OpenID Provider for unit tests: it serves
// discovery and JWKS and signs whatever tokens a test asks for, including
// the malformed ones a real IdP would never issue. Integration tests use the
// real provider in integration/devidp instead.
package testidp

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"encoding/base64"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"sync"
	"sync/atomic"
	"time"

	"github.com/lestrrat-go/jwx/v2/jwa"
	"github.com/lestrrat-go/jwx/v2/jwk"
	"github.com/lestrrat-go/jwx/v2/jws"
)

// IdP is a fake OpenID Provider on an httptest server.
type IdP struct {
	Server *httptest.Server
	Issuer string

	mu        sync.Mutex
	keys      []jwk.Key // private keys; their public halves are served
	discovery map[string]any
	token     http.HandlerFunc

	introspect http.HandlerFunc
	userinfo   http.HandlerFunc
	revoke     http.HandlerFunc
	jwks       http.HandlerFunc

	DiscoveryHits, JWKSHits, TokenHits, IntrospectHits atomic.Int64
}

// New starts a fake IdP with one RSA key ("k1").
func New() *IdP {
	i := &IdP{}
	mux := http.NewServeMux()
	mux.HandleFunc("/.well-known/openid-configuration", func(w http.ResponseWriter, r *http.Request) {
		i.DiscoveryHits.Add(1)
		i.mu.Lock()
		defer i.mu.Unlock()
		writeJSON(w, i.discovery)
	})
	mux.HandleFunc("/jwks", func(w http.ResponseWriter, r *http.Request) {
		i.JWKSHits.Add(1)
		i.mu.Lock()
		h := i.jwks
		i.mu.Unlock()
		if h == nil {
			h = i.ServeJWKS
		}
		h(w, r)
	})
	mux.HandleFunc("/revoke", i.settable(&i.revoke, nil, http.StatusOK, ""))
	mux.HandleFunc("/introspect", i.settable(&i.introspect, &i.IntrospectHits, http.StatusServiceUnavailable, "down"))
	mux.HandleFunc("/userinfo", i.settable(&i.userinfo, nil, http.StatusServiceUnavailable, "down"))
	mux.HandleFunc("/token", i.settable(&i.token, &i.TokenHits, http.StatusInternalServerError, `{"error":"server_error"}`))
	i.Server = httptest.NewServer(mux)
	i.Issuer = i.Server.URL
	i.discovery = map[string]any{
		"issuer":                                i.Issuer,
		"authorization_endpoint":                i.Issuer + "/authorize",
		"token_endpoint":                        i.Issuer + "/token",
		"jwks_uri":                              i.Issuer + "/jwks",
		"end_session_endpoint":                  i.Issuer + "/logout",
		"introspection_endpoint":                i.Issuer + "/introspect",
		"userinfo_endpoint":                     i.Issuer + "/userinfo",
		"id_token_signing_alg_values_supported": []string{"RS256"},
		"token_endpoint_auth_methods_supported": []string{"client_secret_basic", "client_secret_post"},
	}
	i.AddKey("k1")
	return i
}

// settable serves the handler a test set in *slot (counting hits), or
// answers status and body while none is set.
func (i *IdP) settable(slot *http.HandlerFunc, hits *atomic.Int64, status int, body string) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		if hits != nil {
			hits.Add(1)
		}
		i.mu.Lock()
		h := *slot
		i.mu.Unlock()
		if h == nil {
			http.Error(w, body, status)
			return
		}
		h(w, r)
	}
}

// Close stops the server.
func (i *IdP) Close() { i.Server.Close() }

// SetDiscovery changes one discovery field.
func (i *IdP) SetDiscovery(field string, v any) {
	i.mu.Lock()
	defer i.mu.Unlock()
	if v == nil {
		delete(i.discovery, field)
		return
	}
	i.discovery[field] = v
}

// AddKey adds a new RSA signing key with this kid; the newest key signs.
func (i *IdP) AddKey(kid string) {
	raw, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		panic(err)
	}
	k, _ := jwk.FromRaw(raw)
	_ = k.Set(jwk.KeyIDKey, kid)
	_ = k.Set(jwk.AlgorithmKey, jwa.RS256)
	_ = k.Set(jwk.KeyUsageKey, "sig")
	i.mu.Lock()
	i.keys = append(i.keys, k)
	i.mu.Unlock()
}

// AddECKey adds a new P-256 signing key (ES256) with this kid; it becomes
// the signing key.
func (i *IdP) AddECKey(kid string) {
	raw, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		panic(err)
	}
	k, _ := jwk.FromRaw(raw)
	_ = k.Set(jwk.KeyIDKey, kid)
	_ = k.Set(jwk.AlgorithmKey, jwa.ES256)
	_ = k.Set(jwk.KeyUsageKey, "sig")
	i.mu.Lock()
	i.keys = append(i.keys, k)
	i.mu.Unlock()
}

// SigningKey returns the current signing key (private) and its algorithm.
func (i *IdP) SigningKey() (jwk.Key, jwa.SignatureAlgorithm) {
	i.mu.Lock()
	defer i.mu.Unlock()
	k := i.keys[len(i.keys)-1]
	return k, jwa.SignatureAlgorithm(k.Algorithm().String())
}

// OnToken sets the token endpoint's handler.
func (i *IdP) OnToken(h http.HandlerFunc) {
	i.mu.Lock()
	i.token = h
	i.mu.Unlock()
}

// OnUserInfo sets the userinfo endpoint's handler (nil: 503).
func (i *IdP) OnUserInfo(h http.HandlerFunc) {
	i.mu.Lock()
	i.userinfo = h
	i.mu.Unlock()
}

// OnIntrospect sets the introspection endpoint's handler (nil: 503).
func (i *IdP) OnIntrospect(h http.HandlerFunc) {
	i.mu.Lock()
	i.introspect = h
	i.mu.Unlock()
}

// OnRevoke sets the handler of /revoke (nil: 200). Discovery does not
// announce it unless a test sets revocation_endpoint.
func (i *IdP) OnRevoke(h http.HandlerFunc) {
	i.mu.Lock()
	i.revoke = h
	i.mu.Unlock()
}

// OnJWKS sets the JWKS endpoint's handler (nil: ServeJWKS), so a test can
// make the endpoint fail, hang or answer late; JWKSHits counts every request.
func (i *IdP) OnJWKS(h http.HandlerFunc) {
	i.mu.Lock()
	i.jwks = h
	i.mu.Unlock()
}

// ServeJWKS answers with the public halves of the IdP's keys, as the JWKS
// endpoint does by default.
func (i *IdP) ServeJWKS(w http.ResponseWriter, r *http.Request) {
	i.mu.Lock()
	set := jwk.NewSet()
	for _, k := range i.keys {
		pub, _ := k.PublicKey()
		_ = set.AddKey(pub)
	}
	i.mu.Unlock()
	writeJSON(w, set)
}

// Claims returns valid ID token claims for clientID and nonce.
func (i *IdP) Claims(clientID, nonce string) map[string]any {
	now := time.Now()
	return map[string]any{
		"iss": i.Issuer, "sub": "user-1", "aud": clientID, "azp": clientID,
		"exp": now.Add(time.Hour).Unix(), "iat": now.Unix(), "nonce": nonce,
		"email": "user1@example.com", "email_verified": true, "name": "User One",
		"groups": []string{"admins", "staff"},
	}
}

// Sign signs claims with the newest key and its algorithm.
func (i *IdP) Sign(claims map[string]any) string {
	k, alg := i.SigningKey()
	return SignWith(alg, k, k.KeyID(), claims)
}

// SignTyped signs claims with the newest key, with typ in the header (as
// IdPs type their tokens: "at+jwt", "logout+jwt", "id_token+jwt").
func (i *IdP) SignTyped(typ string, claims map[string]any) string {
	k, alg := i.SigningKey()
	return signWith(alg, k, k.KeyID(), typ, claims)
}

// SignWith signs claims with any algorithm and key, and the given kid.
func SignWith(alg jwa.SignatureAlgorithm, key any, kid string, claims map[string]any) string {
	return signWith(alg, key, kid, "", claims)
}

func signWith(alg jwa.SignatureAlgorithm, key any, kid, typ string, claims map[string]any) string {
	payload, _ := json.Marshal(claims)
	hdr := jws.NewHeaders()
	if typ != "" {
		_ = hdr.Set(jws.TypeKey, typ)
	}
	if kid != "" {
		_ = hdr.Set(jws.KeyIDKey, kid)
	} else if k, ok := key.(jwk.Key); ok {
		// jwx copies a JWK's kid into the header: sign with the raw key.
		var raw any
		_ = k.Raw(&raw)
		key = raw
	}
	out, err := jws.Sign(payload, jws.WithKey(alg, key, jws.WithProtectedHeaders(hdr)))
	if err != nil {
		panic(err)
	}
	return string(out)
}

// PublicKeyBytes returns the newest key's public half as JSON bytes: what a
// confused verifier might take as an HMAC secret.
func (i *IdP) PublicKeyBytes() []byte {
	i.mu.Lock()
	defer i.mu.Unlock()
	pub, _ := i.keys[len(i.keys)-1].PublicKey()
	b, _ := json.Marshal(pub)
	return b
}

// Unsigned returns an "alg":"none" token.
func Unsigned(claims map[string]any) string {
	h := base64.RawURLEncoding.EncodeToString([]byte(`{"alg":"none","typ":"JWT"}`))
	p, _ := json.Marshal(claims)
	return h + "." + base64.RawURLEncoding.EncodeToString(p) + "."
}

// ForeignKey returns a fresh RSA key the IdP does not know.
func ForeignKey(kid string) jwk.Key {
	raw, _ := rsa.GenerateKey(rand.Reader, 2048)
	k, _ := jwk.FromRaw(raw)
	_ = k.Set(jwk.KeyIDKey, kid)
	return k
}

// TokenResponse answers the token endpoint with these tokens.
func TokenResponse(idToken string, extra map[string]any) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		body := map[string]any{"access_token": "at-" + idToken[len(idToken)-8:], "token_type": "Bearer", "expires_in": 300, "id_token": idToken}
		for k, v := range extra {
			body[k] = v
		}
		writeJSON(w, body)
	}
}

func writeJSON(w http.ResponseWriter, v any) {
	w.Header().Set("Content-Type", "application/json")
	_ = json.NewEncoder(w).Encode(v)
}

// BindDPoP binds a token's claims to a DPoP key (RFC 9449 §6): cnf.jkt is
// the key's thumbprint. It returns claims.
func BindDPoP(claims map[string]any, jkt string) map[string]any {
	claims["cnf"] = map[string]any{"jkt": jkt}
	return claims
}

// Introspection answers RFC 7662 requests: active, with its claims, for a
// token in tokens (a DPoP-bound one's carry cnf.jkt, see BindDPoP), and
// inactive for any other.
func Introspection(tokens map[string]map[string]any) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		_ = r.ParseForm()
		claims, ok := tokens[r.PostForm.Get("token")]
		body := map[string]any{"active": ok}
		for k, v := range claims {
			body[k] = v
		}
		writeJSON(w, body)
	}
}

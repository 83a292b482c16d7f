package caddyoidc

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/caddyserver/caddy/v2/modules/caddyhttp"

	"github.com/caddy-oidc/caddy-oidc/session"
)

// The signed identity assertion, {http.auth.user.assertion}, is what
// Pomerium calls X-Pomerium-Jwt-Assertion: a short-lived ES256 JWT about
// the user, which the upstream verifies against the keys served at
// assertion_jwks_path instead of trusting plain headers.
//
// Its keys are derived from session_secret (HKDF, bound to the route), not
// generated and stored. So every replica and every reload or restart signs
// with the same key with no storage, no coordination and nothing in Valkey
// to seal, and a Valkey outage cannot make replicas disagree. The price:
// the key lives as long as the secret (it rotates when session_secret
// does: older secrets listed after the current one keep their keys in the
// JWKS), and whoever learns the secret can sign assertions, as they could
// already seal sessions, which carry the same identity.

// Sizes and margins of the assertion machinery.
const (
	// assertionCacheSize bounds each route's cache of signed assertions.
	assertionCacheSize = 4096
	// assertionVerifierLeeway is the clock skew verifiers commonly allow
	// past exp: a retired key stays published that much longer.
	assertionVerifierLeeway = time.Minute
	// jwksMaxAge is how long verifiers may cache the JWKS.
	jwksMaxAge = "public, max-age=60"
)

// assertionSigner signs a route's assertions and serves its keys.
type assertionSigner struct {
	// requireVerified: require_email_verified (an unverified email is left out).
	requireVerified bool
	// keys[0] signs; all are published (one per session_secret).
	keys             []assertionKey
	route            string
	lifetime         time.Duration
	issuer, audience string // configured; "" stands for the request's origin
	path             string
	scheme           func(*http.Request) string
	cache            assertionCache
	now              func() time.Time
}

// assertionKey is one ES256 key with its precomputed JOSE header.
type assertionKey struct {
	priv   *ecdsa.PrivateKey
	header string // base64url of {"alg":"ES256","kid":...,"typ":"JWT"}
	public publicJWK
}

// publicJWK is an EC public key as a JWKS lists it (RFC 7517, RFC 7518 §6.2).
type publicJWK struct {
	Kty string `json:"kty"`
	Crv string `json:"crv"`
	X   string `json:"x"`
	Y   string `json:"y"`
	Kid string `json:"kid"`
	Alg string `json:"alg"`
	Use string `json:"use"`
}

// assertionClaims is the assertion's payload.
type assertionClaims struct {
	Issuer   string `json:"iss"`
	Audience string `json:"aud"`
	Subject  string `json:"sub"`
	// Email only when verified (email_verified the boolean true, or
	// require_email_verified off): an upstream that looks users up by
	// email must not be handed an address the IdP did not vouch for.
	Email         string `json:"email,omitempty"`
	EmailVerified bool   `json:"email_verified,omitempty"`
	Name          string `json:"name,omitempty"`
	// IdP is the issuer that authenticated the user and Provider the
	// provider block's name: sub is unique only per IdP.
	IdP      string `json:"idp"`
	Provider string `json:"provider,omitempty"`
	// How the user logged in, for step-up checks upstream.
	ACR      string    `json:"acr,omitempty"`
	AMR      any       `json:"amr,omitempty"`
	AuthTime int64     `json:"auth_time,omitempty"`
	Groups   ClaimList `json:"groups,omitempty"`
	Roles    ClaimList `json:"roles,omitempty"`
	IssuedAt int64     `json:"iat"`
	Expiry   int64     `json:"exp"`
	ID       string    `json:"jti"`
}

// newAssertionSigner derives the keys of a route: route names its issuer,
// client and cookie (routes that do not share sessions do not share keys).
func newAssertionSigner(secrets []string, route string, c AssertionConfig, requireVerified bool, scheme func(*http.Request) string) (*assertionSigner, error) {
	s := &assertionSigner{route: route, lifetime: time.Duration(c.Lifetime), issuer: c.Issuer, audience: c.Audience,
		path: c.JWKSPath, scheme: scheme, now: time.Now, requireVerified: requireVerified}
	s.cache.m = make(map[string]cachedAssertion)
	for i, secret := range secrets {
		k, err := deriveAssertionKey(secret, route)
		if err != nil {
			return nil, fmt.Errorf("session_secret #%d: %w", i+1, err)
		}
		if !s.has(k.public.Kid) { // the same secret listed twice
			s.keys = append(s.keys, k)
		}
	}
	if len(s.keys) == 0 {
		return nil, errors.New("no session_secret to derive the signing key from")
	}
	return s, nil
}

func (s *assertionSigner) has(kid string) bool {
	for _, k := range s.keys {
		if k.public.Kid == kid {
			return true
		}
	}
	return false
}

// deriveAssertionKey derives the route's P-256 key from a session secret.
// A derived scalar is at or above the group order with odds of about
// 2^-32; the next counter value is taken then.
func deriveAssertionKey(secret, route string) (assertionKey, error) {
	for attempt := range 4 {
		seed, err := session.DeriveKey(secret, "caddy-oidc assertion v1\x00"+strconv.Itoa(attempt)+"\x00"+route)
		if err != nil {
			return assertionKey{}, fmt.Errorf("deriving the assertion key: %w", err)
		}
		if priv, err := ecdsa.ParseRawPrivateKey(elliptic.P256(), seed); err == nil {
			return newAssertionKey(priv)
		}
	}
	return assertionKey{}, errors.New("deriving the assertion key: no valid scalar")
}

func newAssertionKey(priv *ecdsa.PrivateKey) (assertionKey, error) {
	pt, err := priv.PublicKey.Bytes() // 0x04 || X || Y
	if err != nil || len(pt) != 65 {
		return assertionKey{}, fmt.Errorf("encoding the assertion public key: %v", err)
	}
	b64 := base64.RawURLEncoding.EncodeToString
	x, y := b64(pt[1:33]), b64(pt[33:])
	// The kid is the key's RFC 7638 thumbprint: stable, and the same on
	// every replica.
	sum := sha256.Sum256([]byte(`{"crv":"P-256","kty":"EC","x":"` + x + `","y":"` + y + `"}`))
	kid := b64(sum[:])
	header, err := json.Marshal(struct {
		Alg string `json:"alg"`
		Kid string `json:"kid"`
		Typ string `json:"typ"`
	}{"ES256", kid, "JWT"})
	if err != nil {
		return assertionKey{}, err
	}
	return assertionKey{priv: priv, header: b64(header),
		public: publicJWK{Kty: "EC", Crv: "P-256", X: x, Y: y, Kid: kid, Alg: "ES256", Use: "sig"}}, nil
}

// jwksPath is where the keys are served; "" when assertions are off.
func (s *assertionSigner) jwksPath() string {
	if s == nil {
		return ""
	}
	return s.path
}

// assertion returns an assertion about the user for this request: a cached
// one while it has at least half of its lifetime left, else a new one. It
// returns "" if signing fails (the header is then not set).
func (s *assertionSigner) assertion(r *http.Request, id *identity, claims map[string]any, tokens *session.Session) string {
	now := s.now()
	// The key is built on the stack: a hit allocates nothing.
	var buf [160]byte
	key := s.appendCacheKey(buf[:0], r, tokens)
	if key != nil {
		if tok, ok := s.cache.get(key, now); ok {
			return tok
		}
	}
	var origin string
	if s.issuer == "" || s.audience == "" {
		origin = s.origin(r)
	}
	c := assertionClaims{Issuer: s.issuer, Audience: s.audience, Subject: claimString(claims["sub"]),
		Name: claimString(claims["name"]), Groups: id.groups(claims), Roles: id.roles(claims),
		IdP: id.issuer, Provider: id.provider, AMR: claims["amr"],
		IssuedAt: now.Unix(), Expiry: now.Add(s.lifetime).Unix(), ID: newJTI()}
	if email := claimString(claims["email"]); email != "" && (claims["email_verified"] == true || !s.requireVerified) {
		c.Email, c.EmailVerified = email, claims["email_verified"] == true
	}
	c.ACR, _ = claims["acr"].(string)
	if at, ok := numericClaim(claims["auth_time"]); ok {
		c.AuthTime = at
	}
	if c.Issuer == "" {
		c.Issuer = origin
	}
	if c.Audience == "" {
		c.Audience = origin
	}
	tok, err := s.keys[0].sign(&c)
	if err != nil {
		return ""
	}
	if key != nil {
		s.cache.put(string(key), tok, now.Add(s.lifetime/2), now)
	}
	return tok
}

// appendCacheKey appends to b the name of what an assertion for this
// request says: the session (its random id, and its refresh, after which
// claims may differ) or the bearer token, and the site. It returns nil
// when there is nothing safe to key on.
func (s *assertionSigner) appendCacheKey(b []byte, r *http.Request, tokens *session.Session) []byte {
	switch {
	case tokens == nil:
		return nil
	case tokens.LocalID != "":
		b = append(b, "s\x00"...)
		b = append(b, tokens.LocalID...)
		b = strconv.AppendInt(append(b, 0), tokens.AccessExpiry, 10)
		b = strconv.AppendInt(append(b, 0), tokens.RefreshIssued, 10)
	case tokens.AccessToken != "":
		sum := sha256.Sum256([]byte(tokens.AccessToken))
		b = hex.AppendEncode(append(b, "b\x00"...), sum[:])
	default:
		return nil
	}
	if s.issuer == "" || s.audience == "" {
		b = s.appendOrigin(append(b, 0), r)
	}
	return b
}

// origin is the request's site as a browser names it: scheme and host,
// without the scheme's default port.
func (s *assertionSigner) origin(r *http.Request) string {
	return string(s.appendOrigin(nil, r))
}

func (s *assertionSigner) appendOrigin(b []byte, r *http.Request) []byte {
	scheme := s.scheme(r)
	host := r.Host
	if scheme == "https" {
		host = strings.TrimSuffix(host, ":443")
	} else {
		host = strings.TrimSuffix(host, ":80")
	}
	b = append(append(b, scheme...), "://"...)
	for i := 0; i < len(host); i++ {
		c := host[i]
		if 'A' <= c && c <= 'Z' {
			c += 'a' - 'A'
		}
		b = append(b, c)
	}
	return b
}

func newJTI() string {
	b := make([]byte, 16)
	_, _ = rand.Read(b) // never fails (crypto/rand, Go 1.24+)
	return base64.RawURLEncoding.EncodeToString(b)
}

// sign makes the compact JWS of c (RFC 7515, ES256: the signature is r||s,
// 32 bytes each).
func (k *assertionKey) sign(c *assertionClaims) (string, error) {
	payload, err := json.Marshal(c)
	if err != nil {
		return "", fmt.Errorf("encoding the assertion: %w", err)
	}
	enc := base64.RawURLEncoding
	buf := make([]byte, 0, len(k.header)+2+enc.EncodedLen(len(payload))+enc.EncodedLen(64))
	buf = append(buf, k.header...)
	buf = append(buf, '.')
	buf = enc.AppendEncode(buf, payload)
	digest := sha256.Sum256(buf)
	r, s, err := ecdsa.Sign(rand.Reader, k.priv, digest[:])
	if err != nil {
		return "", fmt.Errorf("signing the assertion: %w", err)
	}
	var sig [64]byte
	r.FillBytes(sig[:32])
	s.FillBytes(sig[32:])
	buf = append(buf, '.')
	buf = enc.AppendEncode(buf, sig[:])
	return string(buf), nil
}

// serveJWKS answers assertion_jwks_path with the keys that verify this
// route's assertions, to anyone (the upstream fetches it without a
// session): the current key, the keys of older secrets still listed, and
// keys a reload retired while their assertions may still be valid.
func (s *assertionSigner) serveJWKS(w http.ResponseWriter, r *http.Request) error {
	if r.Method != http.MethodGet && r.Method != http.MethodHead {
		w.Header().Set("Allow", "GET, HEAD")
		return caddyhttp.Error(http.StatusMethodNotAllowed, errors.New("assertion JWKS: use GET"))
	}
	body, err := json.Marshal(struct {
		Keys []publicJWK `json:"keys"`
	}{s.published(s.now())})
	if err != nil {
		return caddyhttp.Error(http.StatusInternalServerError, fmt.Errorf("encoding the assertion JWKS: %w", err))
	}
	w.Header().Set("Content-Type", "application/jwk-set+json")
	w.Header().Set("Cache-Control", jwksMaxAge)
	w.Header().Set("Content-Length", strconv.Itoa(len(body)))
	if r.Method == http.MethodHead {
		return nil
	}
	_, err = w.Write(body)
	return err
}

// retiredAssertionKeys keeps, per route, the public keys of signers that a
// reload (or a removed route) retired, until the last assertion they may
// have signed has expired: an old secret dropped from the config does not
// fail assertions still on their way to the upstream. Process-wide, so
// that it outlives the handlers; bounded by expiry.
var retiredAssertionKeys = struct {
	sync.Mutex
	m map[string][]retiredKey
}{m: make(map[string][]retiredKey)}

type retiredKey struct {
	key   publicJWK
	until time.Time
}

// retire records this signer's keys as retired at now.
func (s *assertionSigner) retire(now time.Time) {
	until := now.Add(s.lifetime + assertionVerifierLeeway)
	retiredAssertionKeys.Lock()
	defer retiredAssertionKeys.Unlock()
	for route, keys := range retiredAssertionKeys.m {
		keys = dropExpired(keys, now)
		if len(keys) == 0 {
			delete(retiredAssertionKeys.m, route)
		} else {
			retiredAssertionKeys.m[route] = keys
		}
	}
	keys := retiredAssertionKeys.m[s.route]
next:
	for _, k := range s.keys {
		for i := range keys {
			if keys[i].key.Kid == k.public.Kid {
				keys[i].until = until
				continue next
			}
		}
		keys = append(keys, retiredKey{k.public, until})
	}
	retiredAssertionKeys.m[s.route] = keys
}

func dropExpired(keys []retiredKey, now time.Time) []retiredKey {
	out := keys[:0]
	for _, k := range keys {
		if k.until.After(now) {
			out = append(out, k)
		}
	}
	return out
}

// published lists the keys the JWKS serves at now.
func (s *assertionSigner) published(now time.Time) []publicJWK {
	out := make([]publicJWK, 0, len(s.keys))
	for _, k := range s.keys {
		out = append(out, k.public)
	}
	retiredAssertionKeys.Lock()
	defer retiredAssertionKeys.Unlock()
	for _, rk := range retiredAssertionKeys.m[s.route] {
		if rk.until.After(now) && !s.has(rk.key.Kid) {
			out = append(out, rk.key)
		}
	}
	return out
}

// assertionCache holds signed assertions by what they say (see
// assertionCacheKey), so that a busy session costs one signature per half
// lifetime, not one per request.
type assertionCache struct {
	mu sync.RWMutex
	m  map[string]cachedAssertion
}

type cachedAssertion struct {
	token      string
	reuseUntil int64 // Unix nanoseconds
}

func (c *assertionCache) get(key []byte, now time.Time) (string, bool) {
	c.mu.RLock()
	e, ok := c.m[string(key)]
	c.mu.RUnlock()
	if !ok || now.UnixNano() >= e.reuseUntil {
		return "", false
	}
	return e.token, true
}

// put caches token until reuseUntil. When full, it drops what expired, and
// if that is not enough, arbitrary entries down to 7/8 of the bound (they
// are only re-signed).
func (c *assertionCache) put(key, token string, reuseUntil, now time.Time) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if _, ok := c.m[key]; !ok && len(c.m) >= assertionCacheSize {
		for k, e := range c.m {
			if now.UnixNano() >= e.reuseUntil {
				delete(c.m, k)
			}
		}
		for k := range c.m {
			if len(c.m) < assertionCacheSize*7/8 {
				break
			}
			delete(c.m, k)
		}
	}
	c.m[key] = cachedAssertion{token: token, reuseUntil: reuseUntil.UnixNano()}
}

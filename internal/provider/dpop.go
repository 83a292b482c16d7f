package provider

import (
	"bytes"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/lestrrat-go/jwx/v2/jwa"
	"github.com/lestrrat-go/jwx/v2/jwk"
	"github.com/lestrrat-go/jwx/v2/jws"
)

// DPoPKey is the key pair a relying party binds its tokens to (RFC 9449).
// It also remembers the latest DPoP-Nonce of each server it talked to, so
// one DPoPKey should serve every call of one relying party. Replicas that
// must refresh each other's DPoP-bound tokens share the key material
// (MarshalPEM / ParseDPoPKey), not the value.
type DPoPKey struct {
	key jwk.Key // private
	pub jwk.Key // what proofs carry in their jwk header
	alg jwa.SignatureAlgorithm
	jkt string

	nonces sync.Map // origin -> the server's latest DPoP-Nonce
}

// NewDPoPKey generates a P-256 key (ES256, the algorithm every DPoP server
// supports).
func NewDPoPKey() (*DPoPKey, error) {
	raw, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, fmt.Errorf("generating a DPoP key: %w", err)
	}
	k, err := jwk.FromRaw(raw)
	if err != nil {
		return nil, fmt.Errorf("generating a DPoP key: %w", err)
	}
	return newDPoPKey(k)
}

// DPoPKeyFrom makes a DPoP key of a P-256 private key the caller holds
// (derived from a secret, so that every replica has the same one).
func DPoPKeyFrom(priv *ecdsa.PrivateKey) (*DPoPKey, error) {
	k, err := jwk.FromRaw(priv)
	if err != nil {
		return nil, fmt.Errorf("making a DPoP key: %w", err)
	}
	return newDPoPKey(k)
}

// ParseDPoPKey reads a private key as PEM (PKCS#8, SEC 1 or PKCS#1) or as a
// JWK: EC P-256/384/521 (ES256/384/512), Ed25519 (EdDSA) or RSA (PS256).
func ParseDPoPKey(data []byte) (*DPoPKey, error) {
	var opts []jwk.ParseOption
	if !bytes.HasPrefix(bytes.TrimSpace(data), []byte("{")) {
		opts = append(opts, jwk.WithPEM(true))
	}
	k, err := jwk.ParseKey(data, opts...)
	if err != nil {
		return nil, fmt.Errorf("parsing the DPoP key: %w", err)
	}
	return newDPoPKey(k)
}

func newDPoPKey(k jwk.Key) (*DPoPKey, error) {
	if private, err := jwk.IsPrivateKey(k); err != nil || !private {
		return nil, fmt.Errorf("the DPoP key is not an asymmetric private key")
	}
	var alg jwa.SignatureAlgorithm
	switch k.KeyType() {
	case "EC":
		crv, _ := k.Get("crv")
		switch fmt.Sprint(crv) {
		case "P-256":
			alg = jwa.ES256
		case "P-384":
			alg = jwa.ES384
		case "P-521":
			alg = jwa.ES512
		}
	case "OKP":
		if crv, _ := k.Get("crv"); fmt.Sprint(crv) == "Ed25519" {
			alg = jwa.EdDSA
		}
	case "RSA":
		alg = jwa.PS256
	}
	if alg == "" {
		return nil, fmt.Errorf("the DPoP key's type or curve is not supported (P-256, P-384, P-521, Ed25519 or RSA)")
	}
	// The public half goes into every proof: nothing but the key itself.
	pub, err := k.PublicKey()
	if err != nil {
		return nil, fmt.Errorf("deriving the DPoP public key: %w", err)
	}
	for _, field := range []string{jwk.KeyIDKey, jwk.AlgorithmKey, jwk.KeyUsageKey, jwk.KeyOpsKey} {
		_ = pub.Remove(field)
	}
	jkt, err := thumbprint(pub)
	if err != nil {
		return nil, err
	}
	return &DPoPKey{key: k, pub: pub, alg: alg, jkt: jkt}, nil
}

func thumbprint(k jwk.Key) (string, error) {
	sum, err := k.Thumbprint(crypto.SHA256)
	if err != nil {
		return "", fmt.Errorf("computing a JWK thumbprint: %w", err)
	}
	return base64.RawURLEncoding.EncodeToString(sum), nil
}

// MarshalPEM encodes the private key as PKCS#8 PEM, to be stored sealed.
func (k *DPoPKey) MarshalPEM() ([]byte, error) {
	b, err := jwk.EncodePEM(k.key)
	if err != nil {
		return nil, fmt.Errorf("encoding the DPoP key: %w", err)
	}
	return b, nil
}

// MarshalJWK encodes the private key as a JWK, to be stored sealed.
func (k *DPoPKey) MarshalJWK() ([]byte, error) { return json.Marshal(k.key) }

// Thumbprint is the key's RFC 7638 SHA-256 thumbprint: the jkt a bound
// token's cnf carries (and dpop_jkt, RFC 9449 §10).
func (k *DPoPKey) Thumbprint() string { return k.jkt }

// Algorithm is the JWS algorithm of the key's proofs.
func (k *DPoPKey) Algorithm() string { return k.alg.String() }

// Proof is a DPoP proof (RFC 9449 §4.2) for a request of method to target
// (its query and fragment are left out of htu), with ath for accessToken
// and the server's nonce when given.
func (k *DPoPKey) Proof(method, target, accessToken, nonce string, now time.Time) (string, error) {
	htu, err := url.Parse(target)
	if err != nil {
		return "", fmt.Errorf("DPoP proof for %q: %w", target, err)
	}
	htu.RawQuery, htu.Fragment, htu.RawFragment = "", "", ""
	jti := make([]byte, 16)
	rand.Read(jti)
	claims := map[string]any{
		"jti": base64.RawURLEncoding.EncodeToString(jti),
		"htm": method,
		"htu": htu.String(),
		"iat": now.Unix(),
	}
	if accessToken != "" {
		claims["ath"] = accessTokenHash(accessToken)
	}
	if nonce != "" {
		claims["nonce"] = nonce
	}
	payload, err := json.Marshal(claims)
	if err != nil {
		return "", err
	}
	hdr := jws.NewHeaders()
	_ = hdr.Set(jws.TypeKey, "dpop+jwt")
	_ = hdr.Set(jws.JWKKey, k.pub)
	signed, err := jws.Sign(payload, jws.WithKey(k.alg, k.key, jws.WithProtectedHeaders(hdr)))
	if err != nil {
		return "", fmt.Errorf("signing a DPoP proof: %w", err)
	}
	return string(signed), nil
}

func accessTokenHash(token string) string {
	sum := sha256.Sum256([]byte(token))
	return base64.RawURLEncoding.EncodeToString(sum[:])
}

// nonceOrigin is where a server's nonce applies: RFC 9449 §8 nonces are
// per server, and one origin is one server.
func nonceOrigin(u *url.URL) string { return strings.ToLower(u.Scheme + "://" + u.Host) }

// do sends the request build makes (called again for a retry, so a client
// assertion in it is fresh). With a key (k may be nil) the request gets a
// proof, with ath for accessToken, and the server's latest nonce; when the
// server answers use_dpop_nonce with a new nonce it is sent once more
// (RFC 9449 §8 at an authorization server, §9 at a resource server).
// Failing to reach the server is ErrUnavailable (what names it); failing to
// build or sign the request is returned as it is.
func (k *DPoPKey) do(hc *http.Client, accessToken, what string, build func() (*http.Request, error)) (*http.Response, error) {
	for attempt := 0; ; attempt++ {
		req, err := build()
		if err != nil {
			return nil, err
		}
		origin := nonceOrigin(req.URL)
		var sentNonce string
		if k != nil {
			sent, _ := k.nonces.Load(origin)
			sentNonce, _ = sent.(string)
			proof, err := k.Proof(req.Method, req.URL.String(), accessToken, sentNonce, time.Now())
			if err != nil {
				return nil, err
			}
			req.Header.Set("DPoP", proof)
		}
		resp, err := hc.Do(req)
		if err != nil {
			return nil, fmt.Errorf("calling %s: %v: %w", what, err, ErrUnavailable)
		}
		if k == nil {
			return resp, nil
		}
		// A server may rotate its nonce on any answer, not only a challenge.
		nonce := resp.Header.Get("DPoP-Nonce")
		if nonce != "" {
			k.nonces.Store(origin, nonce)
		}
		if attempt > 0 || nonce == "" || nonce == sentNonce || !asksForNonce(resp) {
			return resp, nil
		}
		resp.Body.Close()
	}
}

// asksForNonce reports whether resp is a use_dpop_nonce challenge: a 401
// whose WWW-Authenticate says so (resource server) or a 400 whose JSON
// error says so (authorization server). A 400's body is read and put back.
func asksForNonce(resp *http.Response) bool {
	switch resp.StatusCode {
	case http.StatusUnauthorized:
		for _, v := range resp.Header.Values("WWW-Authenticate") {
			if strings.Contains(v, "use_dpop_nonce") {
				return true
			}
		}
	case http.StatusBadRequest:
		body, _ := io.ReadAll(io.LimitReader(resp.Body, MaxResponseBytes))
		resp.Body.Close()
		resp.Body = io.NopCloser(bytes.NewReader(body))
		var e struct {
			Error string `json:"error"`
		}
		return json.Unmarshal(body, &e) == nil && e.Error == "use_dpop_nonce"
	}
	return false
}

// ErrInvalidDPoPProof wraps every reason a DPoP proof is refused; it wraps
// ErrInvalidToken, so callers that only know the latter refuse it too.
var ErrInvalidDPoPProof = fmt.Errorf("invalid DPoP proof: %w", ErrInvalidToken)

// ErrUseDPoPNonce says the proof lacks the nonce the server requires, or
// carries a stale one: the answer is 401 use_dpop_nonce with a fresh
// DPoP-Nonce (RFC 9449 §9).
var ErrUseDPoPNonce = errors.New("use_dpop_nonce")

// dpopAlgorithms are the proof algorithms accepted by default: the
// asymmetric ones, as RFC 9449 §4.3 requires.
var dpopAlgorithms = []string{"ES256", "ES384", "ES512", "EdDSA", "PS256", "PS384", "PS512", "RS256", "RS384", "RS512"}

// DPoPAlgorithms lists the proof algorithms VerifyDPoPProof accepts by
// default, for WWW-Authenticate's algs (RFC 9449 §7.1).
func DPoPAlgorithms() []string { return slices.Clone(dpopAlgorithms) }

// maxJTILength bounds a proof's jti: it becomes a replay-cache entry.
const maxJTILength = 256

// DPoPCheck is what a DPoP proof must match at a resource server.
type DPoPCheck struct {
	// Method and URL are the request's, URL absolute as the client
	// addressed it (scheme and host the client used, before any proxy).
	Method string
	URL    string
	// AccessToken is the token the request carries (Authorization: DPoP):
	// ath must be its hash, and JKT must then be given.
	AccessToken string
	// JKT is the token's cnf.jkt (see ConfirmationJKT): the proof's key
	// must have this thumbprint.
	JKT string
	// Now is the time iat is checked against. Default: time.Now().
	Now time.Time
	// MaxAge is how old iat may be. Default: 60 s.
	MaxAge time.Duration
	// ClockSkew is how far in the future iat may be. Default: 5 s.
	ClockSkew time.Duration
	// CheckNonce, when set, requires a nonce it accepts (else
	// ErrUseDPoPNonce); nil: nonces are not used.
	CheckNonce func(nonce string) bool
	// Algorithms the proof may use. Default: DPoPAlgorithms().
	Algorithms []string
}

// DPoPProof is what a verified proof says. The caller refuses a JTI it has
// seen before (across replicas) until Expiry, after which the proof's iat
// is too old anyway.
type DPoPProof struct {
	JTI      string
	JKT      string
	IssuedAt time.Time
	Expiry   time.Time
}

// VerifyDPoPProof checks a DPoP proof (one DPoP header's value: the caller
// refuses requests with several) as RFC 9449 §4.3 requires: a compact JWS
// typed dpop+jwt, signed with an accepted asymmetric algorithm by the
// public key in its jwk header, whose htm and htu are the request's, iat
// recent, ath the access token's hash, the key's thumbprint the token's
// cnf.jkt, and nonce accepted when nonces are used. Replay (jti) is the
// caller's to check, through the shared cache.
func VerifyDPoPProof(proof string, c DPoPCheck) (*DPoPProof, error) {
	if c.Now.IsZero() {
		c.Now = time.Now()
	}
	if c.MaxAge <= 0 {
		c.MaxAge = 60 * time.Second
	}
	if c.ClockSkew <= 0 {
		c.ClockSkew = 5 * time.Second
	}
	if len(c.Algorithms) == 0 {
		c.Algorithms = dpopAlgorithms
	}
	if c.AccessToken != "" && c.JKT == "" {
		return nil, fmt.Errorf("the access token is not bound to a DPoP key (no cnf.jkt): %w", ErrInvalidDPoPProof)
	}
	key, alg, err := dpopKeyOf(proof, c.Algorithms)
	if err != nil {
		return nil, err
	}
	payload, err := jws.Verify([]byte(proof), jws.WithKey(alg, key))
	if err != nil {
		return nil, fmt.Errorf("signature: %v: %w", err, ErrInvalidDPoPProof)
	}
	var claims struct {
		JTI   string   `json:"jti"`
		HTM   string   `json:"htm"`
		HTU   string   `json:"htu"`
		IAT   *float64 `json:"iat"`
		ATH   *string  `json:"ath"`
		Nonce *string  `json:"nonce"`
	}
	if err := json.Unmarshal(payload, &claims); err != nil {
		return nil, fmt.Errorf("claims: %v: %w", err, ErrInvalidDPoPProof)
	}
	switch {
	case claims.JTI == "" || len(claims.JTI) > maxJTILength:
		return nil, fmt.Errorf("jti missing or longer than %d bytes: %w", maxJTILength, ErrInvalidDPoPProof)
	case claims.HTM != c.Method:
		return nil, fmt.Errorf("htm %q is not the request's method %s: %w", clip(claims.HTM), c.Method, ErrInvalidDPoPProof)
	case claims.IAT == nil:
		return nil, fmt.Errorf("iat missing: %w", ErrInvalidDPoPProof)
	}
	want, err := normalizeHTU(c.URL)
	if err != nil {
		return nil, fmt.Errorf("the request URL %q: %v: %w", clip(c.URL), err, ErrInvalidDPoPProof)
	}
	if got, err := normalizeHTU(claims.HTU); err != nil || got != want {
		return nil, fmt.Errorf("htu %q is not the request's URL %s: %w", clip(claims.HTU), want, ErrInvalidDPoPProof)
	}
	iat := time.Unix(int64(*claims.IAT), 0)
	if iat.Before(c.Now.Add(-c.MaxAge)) || iat.After(c.Now.Add(c.ClockSkew)) {
		return nil, fmt.Errorf("iat is %s from now, outside [-%s, +%s]: %w", iat.Sub(c.Now).Round(time.Second), c.MaxAge, c.ClockSkew, ErrInvalidDPoPProof)
	}
	if c.AccessToken != "" {
		if claims.ATH == nil || subtle.ConstantTimeCompare([]byte(*claims.ATH), []byte(accessTokenHash(c.AccessToken))) != 1 {
			return nil, fmt.Errorf("ath is missing or not the access token's hash: %w", ErrInvalidDPoPProof)
		}
	}
	jkt, err := thumbprint(key)
	if err != nil {
		return nil, fmt.Errorf("%v: %w", err, ErrInvalidDPoPProof)
	}
	if c.JKT != "" && jkt != c.JKT {
		return nil, fmt.Errorf("the proof's key is not the one the token is bound to (jkt %s): %w", jkt, ErrInvalidDPoPProof)
	}
	if c.CheckNonce != nil && (claims.Nonce == nil || !c.CheckNonce(*claims.Nonce)) {
		return nil, fmt.Errorf("DPoP proof without a current nonce: %w", ErrUseDPoPNonce)
	}
	return &DPoPProof{JTI: claims.JTI, JKT: jkt, IssuedAt: iat, Expiry: iat.Add(c.MaxAge + c.ClockSkew)}, nil
}

// dpopKeyOf checks a proof's header (compact, one signature, typ dpop+jwt,
// an accepted asymmetric alg, a public jwk that fits it) and returns the
// key and algorithm that must verify it.
func dpopKeyOf(proof string, algs []string) (jwk.Key, jwa.SignatureAlgorithm, error) {
	if strings.Count(proof, ".") != 2 {
		return nil, "", fmt.Errorf("not a compact JWS: %w", ErrInvalidDPoPProof)
	}
	msg, err := jws.Parse([]byte(proof))
	if err != nil {
		return nil, "", fmt.Errorf("parsing: %v: %w", err, ErrInvalidDPoPProof)
	}
	if len(msg.Signatures()) != 1 {
		return nil, "", fmt.Errorf("%d signatures, want 1: %w", len(msg.Signatures()), ErrInvalidDPoPProof)
	}
	hdr := msg.Signatures()[0].ProtectedHeaders()
	if mediaType(hdr.Type()) != "dpop+jwt" {
		return nil, "", fmt.Errorf("typ %q is not dpop+jwt: %w", clip(hdr.Type()), ErrInvalidDPoPProof)
	}
	alg := hdr.Algorithm().String()
	if !slices.Contains(algs, alg) || !slices.Contains(asymmetric, alg) {
		return nil, "", fmt.Errorf("algorithm %q is not accepted (%v): %w", clip(alg), algs, ErrInvalidDPoPProof)
	}
	key := hdr.JWK()
	if key == nil {
		return nil, "", fmt.Errorf("no jwk header: %w", ErrInvalidDPoPProof)
	}
	if private, err := jwk.IsPrivateKey(key); err != nil || private {
		return nil, "", fmt.Errorf("the jwk header is not a public key: %w", ErrInvalidDPoPProof)
	}
	if !keyFits(key, alg) {
		return nil, "", fmt.Errorf("the jwk header's key does not fit algorithm %s: %w", alg, ErrInvalidDPoPProof)
	}
	return key, jwa.SignatureAlgorithm(alg), nil
}

// normalizeHTU puts an htu in the form RFC 9449 §4.3 compares: no query or
// fragment, scheme and host lowercased, the scheme's default port left
// out, an empty path as "/".
func normalizeHTU(s string) (string, error) {
	u, err := url.Parse(s)
	if err != nil {
		return "", err
	}
	scheme := strings.ToLower(u.Scheme)
	if (scheme != "https" && scheme != "http") || u.Host == "" || u.User != nil {
		return "", fmt.Errorf("not an absolute http(s) URL")
	}
	host := strings.ToLower(u.Host)
	if port := u.Port(); (scheme == "https" && port == "443") || (scheme == "http" && port == "80") {
		host = strings.TrimSuffix(host, ":"+port)
	}
	path := u.EscapedPath()
	if path == "" {
		path = "/"
	}
	return scheme + "://" + host + path, nil
}

// ConfirmationJKT is the DPoP key thumbprint a token's claims (JWT or
// introspection) bind it to (cnf.jkt, RFC 9449 §6); "" for an unbound token.
func ConfirmationJKT(claims map[string]any) string {
	cnf, _ := claims["cnf"].(map[string]any)
	jkt, _ := cnf["jkt"].(string)
	return jkt
}

package provider

import (
	"context"
	"crypto/rand"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"net/url"
	"slices"
	"strconv"
	"time"

	"github.com/lestrrat-go/jwx/v2/jws"
)

// requestObjectLifetime is how long a signed request stays valid: the
// browser (or the PAR push) reaches the IdP right away. FAPI 2.0 allows at
// most 60 minutes between nbf and exp.
const requestObjectLifetime = 5 * time.Minute

// SignRequestObject returns the authorization request params as a request
// object (RFC 9101) signed with the client's private_key_jwt key: typ
// oauth-authz-req+jwt, iss and client_id the client, aud the issuer, iat,
// nbf, exp and a fresh jti. max_age becomes a number and claims a JSON
// object, as the parameters are in OpenID Connect Core §6.1.
func (rp *RelyingParty) SignRequestObject(ctx context.Context, params url.Values) (string, error) {
	if rp.client.Key == nil {
		return "", fmt.Errorf("a signed request object needs the client's private_key_jwt key")
	}
	d, err := rp.p.Discovery(ctx)
	if err != nil {
		return "", err
	}
	alg := rp.client.Key.alg.String()
	if algs := d.RequestObjectSigningAlgValuesSupported; len(algs) > 0 && !slices.Contains(algs, alg) {
		return "", fmt.Errorf("the IdP accepts request objects signed with %v, not the client key's %s", algs, alg)
	}
	claims := make(map[string]any, len(params)+7)
	for k, v := range params {
		if len(v) == 0 {
			continue
		}
		claims[k] = v[0]
	}
	if s, ok := claims["max_age"].(string); ok {
		if n, err := strconv.ParseInt(s, 10, 64); err == nil {
			claims["max_age"] = n
		}
	}
	if s, ok := claims["claims"].(string); ok && json.Valid([]byte(s)) {
		claims["claims"] = json.RawMessage(s)
	}
	jti := make([]byte, 16)
	rand.Read(jti)
	now := rp.now()
	claims["iss"] = rp.client.ID
	claims["client_id"] = rp.client.ID
	claims["aud"] = rp.p.issuer
	claims["iat"] = now.Unix()
	claims["nbf"] = now.Unix()
	claims["exp"] = now.Add(requestObjectLifetime).Unix()
	claims["jti"] = base64.RawURLEncoding.EncodeToString(jti)
	payload, err := json.Marshal(claims)
	if err != nil {
		return "", fmt.Errorf("encoding the request object: %w", err)
	}
	hdr := jws.NewHeaders()
	_ = hdr.Set(jws.TypeKey, "oauth-authz-req+jwt")
	signed, err := jws.Sign(payload, jws.WithKey(rp.client.Key.alg, rp.client.Key.key, jws.WithProtectedHeaders(hdr)))
	if err != nil {
		return "", fmt.Errorf("signing the request object: %w", err)
	}
	return string(signed), nil
}

package provider

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"time"

	"github.com/lestrrat-go/jwx/v2/jwa"
	"github.com/lestrrat-go/jwx/v2/jwk"
	"github.com/lestrrat-go/jwx/v2/jwt"
)

// Client authentication methods at the token endpoint (RFC 8414 names).
const (
	AuthSecretBasic   = "client_secret_basic"
	AuthSecretPost    = "client_secret_post"
	AuthPrivateKeyJWT = "private_key_jwt"
	AuthNone          = "none"
	// AuthTLSClient authenticates with a client certificate (RFC 8705 §2).
	AuthTLSClient = "tls_client_auth"
)

// Client is how this relying party authenticates to the IdP.
type Client struct {
	ID     string
	Secret string
	// Method is one of the Auth* constants; empty picks one: private_key_jwt
	// with a Key, tls_client_auth with only a Certificate, none without a
	// secret, else client_secret_basic unless the IdP offers only
	// client_secret_post.
	Method string
	// Key signs private_key_jwt assertions (RFC 7523) and request objects
	// (RFC 9101).
	Key *ClientKey
	// DPoP, when set, binds the tokens the client obtains to this key
	// (RFC 9449): token, PAR and revocation calls carry a proof, UserInfo
	// calls send the token as DPoP with a proof.
	DPoP *DPoPKey
	// Certificate, when set, is presented in TLS to the IdP's endpoints
	// (their mtls_endpoint_aliases when announced, RFC 8705 §5), for
	// tls_client_auth or certificate-bound tokens.
	Certificate *ClientCertificate
	// IssuerAudience makes private_key_jwt assertions name the issuer as
	// their only audience, as a string: FAPI 2.0 (§5.3.2.1) requires it.
	// Default: the token endpoint's URL, which IdPs of RFC 7523 expect.
	IssuerAudience bool
}

// Algorithm is the algorithm the key signs with.
func (k *ClientKey) Algorithm() string { return k.alg.String() }

// ClientKey is a private key for private_key_jwt.
type ClientKey struct {
	key jwk.Key
	alg jwa.SignatureAlgorithm
}

// ParseClientKey reads a PEM private key (RSA, EC or Ed25519) for
// private_key_jwt; kid and alg go in the assertion's header (alg default:
// RS256 for RSA, ES256 for P-256, EdDSA for Ed25519).
func ParseClientKey(pem []byte, kid, alg string) (*ClientKey, error) {
	k, err := jwk.ParseKey(pem, jwk.WithPEM(true))
	if err != nil {
		return nil, fmt.Errorf("parsing the client key: %w", err)
	}
	if _, isPrivate := k.(interface{ PublicKey() (jwk.Key, error) }); !isPrivate || k.KeyType() == "oct" {
		return nil, fmt.Errorf("the client key is not an asymmetric private key")
	}
	if kid != "" {
		_ = k.Set(jwk.KeyIDKey, kid)
	}
	if alg == "" {
		switch k.KeyType() {
		case "RSA":
			alg = "RS256"
		case "EC":
			alg = "ES256"
		default:
			alg = "EdDSA"
		}
	}
	if !slices.Contains(asymmetric, alg) {
		return nil, fmt.Errorf("client key algorithm %q is not an asymmetric signature algorithm", alg)
	}
	return &ClientKey{key: k, alg: jwa.SignatureAlgorithm(alg)}, nil
}

func (c Client) method(d *Discovery) string {
	switch {
	case c.Method != "":
		return c.Method
	case c.Key != nil:
		return AuthPrivateKeyJWT
	case c.Certificate != nil && c.Secret == "":
		return AuthTLSClient
	case c.Secret == "":
		return AuthNone
	case len(d.TokenEndpointAuthMethodsSupported) == 0 || slices.Contains(d.TokenEndpointAuthMethodsSupported, AuthSecretBasic):
		return AuthSecretBasic
	case slices.Contains(d.TokenEndpointAuthMethodsSupported, AuthSecretPost):
		return AuthSecretPost
	}
	return AuthSecretBasic
}

// postForm POSTs form to endpoint, authenticated as c.
func (p *Provider) postForm(ctx context.Context, d *Discovery, endpoint string, c Client, form url.Values) (*http.Response, error) {
	return p.post(ctx, d, endpoint, c, form, false)
}

// post POSTs form to endpoint, authenticated as c; with withDPoP and a DPoP
// key on c, with a DPoP proof, sent again once with the server's nonce
// when it asks for one (RFC 9449 §8). Each attempt gets a fresh client
// assertion: the IdP remembers the jti of the first.
func (p *Provider) post(ctx context.Context, d *Discovery, endpoint string, c Client, form url.Values, withDPoP bool) (*http.Response, error) {
	hc, err := p.httpClient(c)
	if err != nil {
		return nil, err
	}
	var key *DPoPKey
	if withDPoP {
		key = c.DPoP
	}
	method := c.method(d)
	return key.do(hc, "", endpoint, func() (*http.Request, error) {
		if err := c.authenticate(d, method, form); err != nil {
			return nil, err
		}
		req, err := http.NewRequestWithContext(ctx, http.MethodPost, endpoint, strings.NewReader(form.Encode()))
		if err != nil {
			return nil, err
		}
		req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
		req.Header.Set("Accept", "application/json")
		if method == AuthSecretBasic {
			// RFC 6749 §2.3.1: form-encode both parts before Basic encoding.
			req.SetBasicAuth(url.QueryEscape(c.ID), url.QueryEscape(c.Secret))
		}
		return req, nil
	})
}

// authenticate puts c's credentials for method in form (Basic is a header).
func (c Client) authenticate(d *Discovery, method string, form url.Values) error {
	switch method {
	case AuthSecretPost:
		form.Set("client_id", c.ID)
		form.Set("client_secret", c.Secret)
	case AuthNone, AuthTLSClient:
		form.Set("client_id", c.ID)
	case AuthPrivateKeyJWT:
		if c.Key == nil {
			return fmt.Errorf("private_key_jwt needs a client key")
		}
		aud := d.TokenEndpoint
		if c.IssuerAudience {
			aud = d.Issuer
		}
		assertion, err := c.assertion(aud)
		if err != nil {
			return err
		}
		form.Set("client_id", c.ID)
		form.Set("client_assertion_type", "urn:ietf:params:oauth:client-assertion-type:jwt-bearer")
		form.Set("client_assertion", assertion)
	}
	if method == AuthTLSClient && c.Certificate == nil {
		return fmt.Errorf("tls_client_auth needs a client certificate")
	}
	return nil
}

// assertion is a fresh RFC 7523 client assertion for audience.
func (c Client) assertion(audience string) (string, error) {
	jti := make([]byte, 16)
	rand.Read(jti)
	now := time.Now()
	tok, err := jwt.NewBuilder().Issuer(c.ID).Subject(c.ID).Audience([]string{audience}).
		JwtID(hex.EncodeToString(jti)).IssuedAt(now).Expiration(now.Add(60 * time.Second)).Build()
	if err != nil {
		return "", err
	}
	// One audience goes as a string: FAPI 2.0 servers compare aud to
	// their issuer as a string.
	tok.Options().Enable(jwt.FlattenAudience)
	signed, err := jwt.Sign(tok, jwt.WithKey(c.Key.alg, c.Key.key))
	if err != nil {
		return "", fmt.Errorf("signing the client assertion: %w", err)
	}
	return string(signed), nil
}

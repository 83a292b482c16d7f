package caddyoidc

import (
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"strings"
	"time"

	"github.com/caddyserver/caddy/v2"

	"github.com/caddy-oidc/caddy-oidc/internal/provider"
	"github.com/caddy-oidc/caddy-oidc/session"
)

// The handler's configuration is grouped by what each part is about, as
// reverseproxy groups load_balancing and health_checks. Every field keeps
// the name of its Caddyfile subdirective, so `caddy adapt` output reads
// like the Caddyfile it came from; the Caddyfile itself stays flat.

// ClientConfig is this application as registered at the IdP.
type ClientConfig struct {
	// The client id registered at the IdP. Required.
	ID string `json:"client_id,omitempty"`
	// The client secret, for the token, revocation and introspection
	// endpoints. Empty makes a public client that relies on PKCE alone.
	// Placeholders such as {env.OIDC_CLIENT_SECRET} are resolved at load.
	Secret string `json:"client_secret,omitempty"`
	// How the module authenticates at the IdP's endpoints:
	// client_secret_basic, client_secret_post, private_key_jwt (RFC 7523)
	// or none (a public client with PKCE). Default: private_key_jwt with
	// client_private_key, none without a secret, else client_secret_basic
	// unless the IdP offers only client_secret_post.
	AuthMethod string `json:"client_auth_method,omitempty"`
	// A PEM file with the private key for private_key_jwt (RSA, EC or Ed25519).
	PrivateKey string `json:"client_private_key,omitempty"`
	// The kid of the private_key_jwt key, as registered at the IdP.
	KeyID string `json:"client_key_id,omitempty"`
	// The algorithm of private_key_jwt assertions. Default: RS256 for RSA
	// keys, ES256 for EC, EdDSA for Ed25519.
	KeyAlg string `json:"client_key_alg,omitempty"`
	// A PEM certificate and its PEM private key presented in TLS to the
	// IdP (RFC 8705): for client_auth_method tls_client_auth, and for
	// certificate-bound access tokens. The IdP's mtls_endpoint_aliases
	// are used when it announces them.
	Certificate    string `json:"client_certificate,omitempty"`
	CertificateKey string `json:"client_certificate_key,omitempty"`
	// Bind the tokens the module obtains to a DPoP key (RFC 9449): token,
	// PAR, refresh, UserInfo and revocation calls carry proofs. The key is
	// derived from session_secret for this issuer and client, so every
	// replica and reload holds it and any replica can refresh a DPoP-bound
	// refresh token. Default: off.
	DPoP bool `json:"dpop,omitempty"`
}

// LoginConfig is what the module asks of the IdP when a user logs in.
type LoginConfig struct {
	// Where the IdP sends the user back. A path is taken on the request's
	// own host. Default: /oauth2/callback.
	RedirectURI string `json:"redirect_uri,omitempty"`
	// The scopes requested. Must include openid. Add offline_access to get
	// a refresh token from most IdPs. Default: openid profile email.
	Scopes []string `json:"scopes,omitempty"`
	// Extra parameters of the authorization request: prompt, acr_values,
	// audience (Auth0), resource, hd (Google)... A login_hint query
	// parameter of the request that starts the login is passed on.
	AuthParams map[string]string `json:"auth_params,omitempty"`
	// When to fetch the UserInfo endpoint and add the claims the ID token
	// lacks (some IdPs, such as panva's oidc-provider, put only sub in ID
	// tokens): "auto" at login when the ID token lacks the claims the
	// requested scopes imply (email; any profile claim; address;
	// phone_number) or that an allow rule or header line reads, and on each
	// refresh of such a session; "on" at every login and refresh; "off"
	// never. Its sub must be the ID token's. A signed (application/jwt)
	// response is verified with the IdP's keys. Default: auto.
	UserInfo string `json:"userinfo,omitempty"`
	// The authentication context classes this route requires, most
	// preferred first, sent as acr_values. A session whose acr claim is
	// not one of them logs in again (step-up); a login whose ID token
	// carries no acr among them is refused with 403. Routes without it
	// keep accepting the session. Default: none.
	ACRValues []string `json:"acr_values,omitempty"`
	// How long ago the user may have authenticated at the IdP for this
	// route, sent as max_age (whole seconds, at least 1s). A session whose
	// auth_time is older logs in again with prompt=login; a login whose ID
	// token lacks auth_time or is older is refused with 403.
	// Default: 0 (no limit).
	MaxAge caddy.Duration `json:"max_age,omitempty"`
	// How the IdP returns the authorization response: query (a redirect
	// to the callback) or form_post (a POST the IdP's page submits; the
	// callback then accepts POST only). Default: query.
	ResponseMode string `json:"response_mode,omitempty"`
	// Keeps a browser's same-origin form POST
	// (application/x-www-form-urlencoded) that arrives without a usable
	// session, up to this many bytes (1 KiB to 1 MiB), and submits it again
	// after the login. A larger one is answered 413. Default: 0 (off: such
	// a POST gets 401).
	PreservePost int64 `json:"preserve_post,omitempty"`
	// Push the authorization request to the IdP (RFC 9126, PAR): the
	// browser carries only client_id and request_uri. On anyway when the
	// IdP's discovery requires it, or with profile fapi2. Default: off.
	PAR bool `json:"par,omitempty"`
	// Sign the authorization request as a request object (RFC 9101, JAR)
	// with the client's private_key_jwt key. Default: off.
	RequestObject bool `json:"request_object,omitempty"`
}

// SessionConfig is how sessions are kept and how long they live.
type SessionConfig struct {
	// The secrets that seal sessions. The first seals; all of them open, so
	// an older secret listed after the new one keeps sessions alive during
	// a rotation. Each at least 32 bytes. Required.
	Secrets []string `json:"session_secret,omitempty"`
	// Where sessions live: "cookie" (the whole session in encrypted,
	// chunked cookies) or "cache" (an opaque id in the cookie, the session,
	// encrypted, in the oidc app's shared cache, so any replica sharing the
	// Valkey serves it). Default: cookie.
	Store string `json:"session_store,omitempty"`
	// A session's absolute lifetime. Default: 24h.
	Lifetime caddy.Duration `json:"session_lifetime,omitempty"`
	// Ends a session unused for this long. Default: 0 (no idle limit).
	IdleTimeout caddy.Duration `json:"session_idle_timeout,omitempty"`
	// Refresh the access token this long before it expires. Default: 60s.
	RefreshBefore caddy.Duration `json:"refresh_before,omitempty"`
	// Stop using a refresh token this long after it was received: the
	// session then ends when its access token expires, and the user logs in
	// again. Default: 0 (as long as the IdP accepts it).
	RefreshTokenMaxAge caddy.Duration `json:"refresh_token_max_age,omitempty"`
	// The session cookie's name; on HTTPS it gets the __Host- prefix.
	// Login-attempt cookies are named <cookie_name>_state_<id>.
	// Default: oidc_session.
	CookieName string `json:"cookie_name,omitempty"`
	// The session cookie's SameSite attribute: lax, strict or none. none is
	// needed only for front-channel logout, whose iframe is cross-site; it
	// requires HTTPS and lets every cross-site request carry the session.
	// Default: lax.
	CookieSameSite string `json:"cookie_samesite,omitempty"`
}

// LogoutConfig is how sessions end: by the user, and by the IdP.
type LogoutConfig struct {
	// Ends the session and logs out at the IdP (POST, or a same-origin GET).
	// Default: /oauth2/logout.
	Path string `json:"logout_path,omitempty"`
	// Where the IdP sends the user after logout; a path is taken on the
	// request's host. Default: none (the IdP's own page).
	PostLogoutRedirectURI string `json:"post_logout_redirect_uri,omitempty"`
	// Receives OpenID Connect Back-Channel Logout tokens from the IdP
	// (register <origin><path> as the client's backchannel_logout_uri).
	// Default: /oauth2/backchannel_logout.
	BackchannelPath string `json:"backchannel_logout_path,omitempty"`
	// Loaded by the IdP in an iframe with iss and sid (OpenID Connect
	// Front-Channel Logout; register it as the client's
	// frontchannel_logout_uri). Default: /oauth2/frontchannel_logout.
	FrontchannelPath string `json:"frontchannel_logout_path,omitempty"`
	// How RP logout sends the browser to the IdP's end_session endpoint:
	// "post", a self-submitting form carrying id_token_hint (the ID token
	// never goes into a URL); or "get", a redirect with client_id and
	// logout_hint but no ID token, for IdPs that accept only GET there.
	// Default: post.
	EndSessionMethod string `json:"end_session_method,omitempty"`
}

// BearerConfig accepts `Authorization: Bearer` access tokens from API
// clients: JWTs are verified against the IdP's keys, opaque tokens are
// introspected (RFC 7662). A bearer request never creates a session.
// Present (even empty) turns bearer tokens on.
type BearerConfig struct {
	// The audiences an access token may carry. Default: the client_id.
	Audience []string `json:"bearer_audience,omitempty"`
	// Overrides the discovery document's introspection endpoint, for IdPs
	// that serve RFC 7662 elsewhere (Ory Hydra: its admin API's
	// /admin/oauth2/introspect, which must stay private).
	IntrospectionEndpoint string `json:"introspection_endpoint,omitempty"`
	// DPoP-bound access tokens (RFC 9449): "allowed" accepts them, sent as
	// `Authorization: DPoP` with one valid `DPoP` proof each, besides
	// Bearer tokens; "required" accepts only them (FAPI 2.0
	// sender-constraining). A bound token (cnf.jkt) is never accepted as
	// a Bearer token, nor an unbound one under DPoP. Default: allowed.
	DPoP string `json:"bearer_dpop,omitempty"`
	// The origins (scheme://host[:port]) this resource is served at, which
	// a DPoP proof's htu must name. Default: the request's own Host, which
	// on a site that answers any host name is the client's to choose.
	DPoPOrigins []string `json:"bearer_dpop_origins,omitempty"`
}

// validate checks the bearer settings; errors name the field.
func (b *BearerConfig) validate() error {
	switch b.DPoP {
	case "", DPoPAllowed, DPoPRequired:
	default:
		return fmt.Errorf("bearer_dpop %q is unknown; use allowed or required", b.DPoP)
	}
	for _, o := range b.DPoPOrigins {
		u, err := url.Parse(o)
		if err != nil || (u.Scheme != "https" && u.Scheme != "http") || u.Host == "" || (u.Path != "" && u.Path != "/") || u.RawQuery != "" {
			return fmt.Errorf("bearer_dpop_origins %q must be an origin such as https://api.example.com", o)
		}
	}
	return nil
}

// Bounds of preserve_post: a whole form's fields fit, and the process's
// store of preserved POSTs (preservedPostBudget) holds many of them. At
// most 512 KiB on the wire: sealed (JSON, then base64) it stays under the
// 2 MiB one entry of that store may take.
const (
	minPreservePost     = 1 << 10
	maxPreservePost     = 512 << 10
	defaultPreservePost = 64 << 10
)

// validate checks the login settings; errors name the field.
func (l *LoginConfig) validate() error {
	for _, v := range l.ACRValues {
		if v == "" || strings.ContainsAny(v, " \t\r\n\"") {
			return fmt.Errorf("acr_values %q is not a valid authentication context class (no spaces or quotes)", v)
		}
	}
	if l.MaxAge < 0 {
		return fmt.Errorf("max_age %s must not be negative", time.Duration(l.MaxAge))
	}
	if l.MaxAge > 0 && time.Duration(l.MaxAge) < time.Second {
		return fmt.Errorf("max_age %s is under the 1s the protocol can express; use at least 1s", time.Duration(l.MaxAge))
	}
	switch l.ResponseMode {
	case "", responseModeQuery, responseModeFormPost, responseModeJWT, responseModeQueryJWT, responseModeFormPostJWT:
	default:
		return fmt.Errorf("response_mode %q is unknown; use query, form_post, jwt, query.jwt or form_post.jwt", l.ResponseMode)
	}
	if l.PreservePost != 0 && (l.PreservePost < minPreservePost || l.PreservePost > maxPreservePost) {
		return fmt.Errorf("preserve_post %d bytes is out of range; use 1KiB to 512KiB (or leave it out to turn it off)", l.PreservePost)
	}
	if _, ok := l.AuthParams["acr_values"]; ok && len(l.ACRValues) > 0 {
		return errors.New("auth_param acr_values and acr_values are both set; keep acr_values, which also checks the IdP's answer")
	}
	if _, ok := l.AuthParams["max_age"]; ok && l.MaxAge > 0 {
		return errors.New("auth_param max_age and max_age are both set; keep max_age, which also checks the IdP's answer")
	}
	return nil
}

// validate checks the client settings; errors name the field.
func (c *ClientConfig) validate() error {
	if c.ID == "" {
		return errors.New("client_id is required: the client id registered at the IdP")
	}
	switch c.AuthMethod {
	case "", provider.AuthSecretBasic, provider.AuthSecretPost, provider.AuthPrivateKeyJWT, provider.AuthNone, provider.AuthTLSClient:
	default:
		return fmt.Errorf("client_auth_method %q is unknown; use client_secret_basic, client_secret_post, private_key_jwt, tls_client_auth or none", c.AuthMethod)
	}
	if (c.AuthMethod == provider.AuthSecretBasic || c.AuthMethod == provider.AuthSecretPost) && c.Secret == "" {
		return fmt.Errorf("client_auth_method %s needs client_secret", c.AuthMethod)
	}
	if c.AuthMethod == provider.AuthTLSClient && c.Certificate == "" {
		return errors.New("client_auth_method tls_client_auth needs client_certificate <cert file> <key file>")
	}
	if (c.Certificate == "") != (c.CertificateKey == "") {
		return errors.New("client_certificate needs both the certificate file and its key file")
	}
	if c.AuthMethod == provider.AuthPrivateKeyJWT && c.PrivateKey == "" {
		return errors.New("client_auth_method private_key_jwt needs client_private_key (a PEM file)")
	}
	return nil
}

// validate checks the session settings with the resolved secrets; a
// SameSite=None cookie needs an https redirectURI.
func (s *SessionConfig) validate(secrets []string, redirectURI string) error {
	if len(secrets) == 0 {
		return errors.New("session_secret is required (at least 32 bytes); generate one with: openssl rand -base64 48")
	}
	for i, secret := range secrets {
		if secret == "" {
			return fmt.Errorf("session_secret #%d is empty (is its environment variable set?)", i+1)
		}
		if len(secret) < session.MinSecretLen {
			return fmt.Errorf("session_secret #%d is %d bytes, want at least %d; generate one with: openssl rand -base64 48", i+1, len(secret), session.MinSecretLen)
		}
	}
	switch s.Store {
	case "", "cookie", "cache":
	default:
		return fmt.Errorf("session_store %q is unknown; use cookie or cache", s.Store)
	}
	mode, ok := sameSiteModes[strings.ToLower(s.CookieSameSite)]
	if !ok {
		return fmt.Errorf("cookie_samesite %q is unknown; use lax, strict or none", s.CookieSameSite)
	}
	// Browsers drop SameSite=None cookies without Secure.
	if mode == http.SameSiteNoneMode && !strings.HasPrefix(redirectURI, "https://") {
		return fmt.Errorf("cookie_samesite none needs an https redirect_uri (SameSite=None cookies must be Secure); set redirect_uri https://<host>%s", redirectPath(redirectURI))
	}
	// net/http silently drops a cookie with an invalid name: every login
	// would fail. The longest name derived from it is an attempt cookie's.
	if (&http.Cookie{Name: s.CookieName + "_state_0123456789ab", Value: "x", Secure: true, HttpOnly: true, SameSite: http.SameSiteLaxMode}).Valid() != nil || strings.HasPrefix(s.CookieName, "__") {
		return fmt.Errorf("cookie_name %q is not a valid cookie name (no prefix, no separators)", s.CookieName)
	}
	return nil
}

// redirectPath is the path part of redirect_uri ("" if it does not parse).
func redirectPath(redirectURI string) string {
	u, err := url.Parse(redirectURI)
	if err != nil {
		return ""
	}
	return u.Path
}

// AssertionConfig signs a short-lived JWT about the user for the upstream,
// {http.auth.user.assertion}, so that an application can verify who the
// user is instead of trusting headers. The signing key (ES256) is derived
// from session_secret: every replica and every reload signs with the same
// key, and an older secret listed after the current one keeps its key in
// the JWKS. Present (even empty) turns assertions on. Default: off.
type AssertionConfig struct {
	// Serves the public keys that verify assertions (a JWKS), to anyone,
	// without a session. Default: /oauth2/jwks.json.
	JWKSPath string `json:"assertion_jwks_path,omitempty"`
	// The assertion's iss. Default: the origin of the request's site
	// (https://app.example.com).
	Issuer string `json:"assertion_issuer,omitempty"`
	// The assertion's aud. Set it when a site block serves several hosts
	// that must not accept each other's assertions under one name.
	// Default: the origin of the request's site.
	Audience string `json:"assertion_audience,omitempty"`
	// How long an assertion is valid; the upstream gets one with at least
	// half of it left. Between 10s and 1h. Default: 60s.
	Lifetime caddy.Duration `json:"assertion_lifetime,omitempty"`
}

// Bounds of assertion_lifetime: an assertion is reused for half of its
// lifetime, and a long-lived one is a bearer credential worth stealing.
const (
	DefaultAssertionLifetime = 60 * time.Second
	DefaultAssertionJWKSPath = "/oauth2/jwks.json"
	minAssertionLifetime     = 10 * time.Second
	maxAssertionLifetime     = time.Hour
)

// validate checks the assertion settings; errors name the field. The path
// is checked with the others (validatePaths).
func (a *AssertionConfig) validate() error {
	if l := time.Duration(a.Lifetime); l != 0 && (l < minAssertionLifetime || l > maxAssertionLifetime) {
		return fmt.Errorf("assertion_lifetime %s must be between %s and %s", l, minAssertionLifetime, maxAssertionLifetime)
	}
	for field, v := range map[string]string{"assertion_issuer": a.Issuer, "assertion_audience": a.Audience} {
		if strings.ContainsFunc(v, func(r rune) bool { return r <= ' ' || r == 0x7f }) {
			return fmt.Errorf("%s %q must not contain spaces or control characters", field, v)
		}
		// RFC 7519 §2: a StringOrURI with a colon must be a URI.
		if strings.Contains(v, ":") {
			if u, err := url.Parse(v); err != nil || u.Scheme == "" {
				return fmt.Errorf("%s %q contains a colon but is not a URI", field, v)
			}
		}
	}
	return nil
}

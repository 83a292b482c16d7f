// Package caddyoidc is an OpenID Connect relying party for Caddy: the
// http.handlers.oidc handler logs users in at their IdP, keeps their session
// in an encrypted cookie, refreshes their tokens, applies allow rules and
// passes their identity to the rest of the route.
package caddyoidc

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"os"
	"slices"
	"strings"
	"sync/atomic"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"

	"github.com/caddy-oidc/caddy-oidc/cache"
	"github.com/caddy-oidc/caddy-oidc/internal/provider"
	"github.com/caddy-oidc/caddy-oidc/refresh"
	"github.com/caddy-oidc/caddy-oidc/session"
)

func init() {
	caddy.RegisterModule(Handler{})
}

// Defaults of the handler's configuration.
const (
	DefaultRedirectURI            = "/oauth2/callback"
	DefaultLogoutPath             = "/oauth2/logout"
	DefaultBackchannelLogoutPath  = "/oauth2/backchannel_logout"
	DefaultFrontchannelLogoutPath = "/oauth2/frontchannel_logout"
	DefaultCookieName             = "oidc_session"
	DefaultSessionLifetime        = 24 * time.Hour
	DefaultRefreshBefore          = 60 * time.Second
	DefaultClockSkew              = 60 * time.Second
	DefaultIdPTimeout             = 10 * time.Second
)

// decodedSessionCacheSize bounds each route's cache of opened session
// cookies: about 5 KB each for a typical session, so a few MB at most.
const decodedSessionCacheSize = 1024

// maxConcurrentExchanges bounds a route's code exchanges in flight.
const maxConcurrentExchanges = 32

// DefaultScopes are requested when `scopes` is not set.
var DefaultScopes = []string{"openid", "profile", "email"}

// Handler authenticates requests with OpenID Connect. Requests without a
// session are sent to the IdP (browsers) or answered 401 (API clients).
// Authenticated requests get these placeholders before the next handler runs:
//
// | placeholder | value |
// | --- | --- |
// | `{http.auth.user.id}` | the `sub` claim |
// | `{http.auth.user.email}`, `{http.auth.user.name}` | those claims |
// | `{http.auth.user.groups}`, `{http.auth.user.roles}` | comma-joined |
// | `{http.auth.user.claims.<name>}` | any claim; nested by dots; arrays comma-joined |
type Handler struct {
	// Issuer is the IdP's issuer URL; discovery is at <issuer>/.well-known/openid-configuration. Required.
	Issuer string `json:"issuer,omitempty"`
	// ClientID is this application's client id at the IdP. Required.
	ClientID string `json:"client_id,omitempty"`
	// ClientSecret authenticates this application at the token endpoint.
	// Empty makes a public client that relies on PKCE alone. Placeholders
	// such as {env.OIDC_CLIENT_SECRET} are resolved at load.
	ClientSecret string `json:"client_secret,omitempty"`
	// ClientAuthMethod is how the module authenticates at the token,
	// revocation and introspection endpoints: client_secret_basic,
	// client_secret_post, private_key_jwt (RFC 7523) or none (a public
	// client with PKCE). Default: private_key_jwt with client_private_key,
	// none without a secret, else basic unless the IdP offers only post.
	ClientAuthMethod string `json:"client_auth_method,omitempty"`
	// ClientPrivateKey is a PEM file with the private key for
	// private_key_jwt (RSA, EC or Ed25519).
	ClientPrivateKey string `json:"client_private_key,omitempty"`
	// ClientKeyID is the kid of the private_key_jwt key, as registered at the IdP.
	ClientKeyID string `json:"client_key_id,omitempty"`
	// ClientKeyAlg signs private_key_jwt assertions. Default: RS256 for RSA
	// keys, ES256 for EC, EdDSA for Ed25519.
	ClientKeyAlg string `json:"client_key_alg,omitempty"`
	// RedirectURI is where the IdP sends the user back. A path is taken on
	// the request's own host. Default: /oauth2/callback.
	RedirectURI string `json:"redirect_uri,omitempty"`
	// Scopes requested at login. Default: openid profile email.
	// Add offline_access to get a refresh token from most IdPs.
	Scopes []string `json:"scopes,omitempty"`
	// SessionSecret encrypts cookies. The first secret seals; all of them
	// open, so an older secret listed after the new one keeps sessions alive
	// during a rotation. Each at least 32 bytes. Required.
	SessionSecret []string `json:"session_secret,omitempty"`
	// SessionStore is where sessions live: "cookie" (the whole session in
	// encrypted, chunked cookies) or "cache" (an opaque id in the cookie, the
	// session, encrypted, in the oidc app's shared cache, so any replica
	// sharing the Valkey serves it). Default: cookie.
	SessionStore string `json:"session_store,omitempty"`
	// LogoutPath ends the session and logs out at the IdP (POST, or a
	// same-origin GET). Default: /oauth2/logout.
	LogoutPath string `json:"logout_path,omitempty"`
	// PostLogoutRedirectURI is where the IdP sends the user after logout;
	// a path is taken on the request's host. Default: none (the IdP's own page).
	PostLogoutRedirectURI string `json:"post_logout_redirect_uri,omitempty"`
	// BackchannelLogoutPath receives OpenID Connect Back-Channel Logout
	// tokens from the IdP (register <origin><path> as the client's
	// backchannel_logout_uri). Default: /oauth2/backchannel_logout.
	BackchannelLogoutPath string `json:"backchannel_logout_path,omitempty"`
	// EndSessionMethod is how RP logout sends the browser to the IdP's
	// end_session endpoint: "post", a self-submitting form carrying
	// id_token_hint (the ID token never goes into a URL); or "get", a
	// redirect with client_id and logout_hint but no ID token, for IdPs that
	// accept only GET there (panva's oidc-provider by default). Default: post.
	EndSessionMethod string `json:"end_session_method,omitempty"`
	// IntrospectionEndpoint overrides the introspection endpoint of the
	// discovery document, for IdPs that serve RFC 7662 elsewhere (Ory
	// Hydra: its admin API's /admin/oauth2/introspect, which must stay
	// private). Default: the discovery document's.
	IntrospectionEndpoint string `json:"introspection_endpoint,omitempty"`
	// HealthPath answers 200 when the IdP's discovery document and keys
	// are loaded and the shared cache is reachable, else 503, with the
	// reason as JSON: a readiness probe for load balancers and Kubernetes.
	// It needs no session. Default: off.
	HealthPath string `json:"health_path,omitempty"`
	// UserInfoPath answers GET with the session's identity as JSON (what
	// the upstream would see, and when the session ends; never a token),
	// or 401 without a session: for single-page apps. Default: off.
	UserInfoPath string `json:"userinfo_path,omitempty"`
	// FrontchannelLogoutPath is loaded by the IdP in an iframe with iss and
	// sid (OpenID Connect Front-Channel Logout; register it as the client's
	// frontchannel_logout_uri). Default: /oauth2/frontchannel_logout.
	FrontchannelLogoutPath string `json:"frontchannel_logout_path,omitempty"`
	// AllowUsers admits users by email (verified, case-insensitive) or sub.
	AllowUsers []string `json:"allow_users,omitempty"`
	// AllowDomains admits users whose verified email is in one of these domains.
	AllowDomains []string `json:"allow_domains,omitempty"`
	// AllowGroups admits users with one of these values in the groups claim.
	AllowGroups []string `json:"allow_groups,omitempty"`
	// AllowRoles admits users with one of these values in the roles claim.
	AllowRoles []string `json:"allow_roles,omitempty"`
	// AllowExpression admits users for whom this CEL expression over their
	// claims (the variable `claims`) is true, for rules the lists cannot
	// say: `claims.department == "ops" && "oncall" in claims.groups`.
	AllowExpression string `json:"allow_expression,omitempty"`
	// GroupsClaim names the claim allow_groups and {http.auth.user.groups}
	// read; a dotted path reaches into objects. Default: groups.
	GroupsClaim string `json:"groups_claim,omitempty"`
	// RolesClaim names the claim allow_roles and {http.auth.user.roles}
	// read (Keycloak: realm_access.roles or resource_access.<client>.roles).
	// Default: roles.
	RolesClaim string `json:"roles_claim,omitempty"`
	// RequireEmailVerified makes email-based rules (allow_users by email,
	// allow_domains) ignore an email whose email_verified claim is false.
	// Default: true.
	RequireEmailVerified *bool `json:"require_email_verified,omitempty"`
	// Exclude lists paths served without authentication, in the syntax of
	// Caddy's path matcher (exact, /prefix/*, *suffix, globs).
	Exclude []string `json:"exclude,omitempty"`
	// AuthParams adds parameters to the authorization request: prompt,
	// acr_values, audience (Auth0), resource, hd (Google)... A login_hint
	// query parameter of the request that starts the login is passed on.
	AuthParams map[string]string `json:"auth_params,omitempty"`
	// Header sets request headers for the next handler, with placeholders;
	// copies the client sent are removed first, on every request.
	Header map[string]string `json:"header,omitempty"`

	// UserInfo fetches the UserInfo endpoint at login and adds the claims
	// the ID token lacks (some IdPs put only sub in the ID token). Its sub
	// must match. Default: off.
	UserInfo bool `json:"userinfo,omitempty"`
	// Bearer accepts `Authorization: Bearer` access tokens from API clients:
	// JWTs are verified against the IdP's keys, opaque tokens are
	// introspected (RFC 7662). A bearer request never creates a session.
	// Default: off.
	Bearer bool `json:"bearer,omitempty"`
	// BearerAudience lists the audiences a JWT access token may carry.
	// Default: the client_id.
	BearerAudience []string `json:"bearer_audience,omitempty"`

	// SessionLifetime is a session's absolute lifetime. Default: 24h.
	SessionLifetime caddy.Duration `json:"session_lifetime,omitempty"`
	// SessionIdleTimeout ends a session unused for this long. Default: 0 (no idle limit).
	SessionIdleTimeout caddy.Duration `json:"session_idle_timeout,omitempty"`
	// RefreshBefore refreshes the access token this long before it expires. Default: 60s.
	RefreshBefore caddy.Duration `json:"refresh_before,omitempty"`
	// RefreshTokenMaxAge stops using a refresh token this long after it was
	// received: the session then ends when its access token expires, and
	// the user logs in again. Default: 0 (as long as the IdP accepts it).
	RefreshTokenMaxAge caddy.Duration `json:"refresh_token_max_age,omitempty"`
	// IdPTimeout bounds each call to the IdP (discovery, keys, token,
	// userinfo, introspection), so a slow IdP cannot hold requests for
	// long. Default: 10s.
	IdPTimeout caddy.Duration `json:"idp_timeout,omitempty"`
	// ClockSkew is tolerated when checking token times. Default: 60s.
	ClockSkew caddy.Duration `json:"clock_skew,omitempty"`
	// CookieName is the session cookie's name; on HTTPS it gets the __Host-
	// prefix. Login-attempt cookies are named <cookie_name>_state_<id>.
	// Default: oidc_session.
	CookieName string `json:"cookie_name,omitempty"`
	// CookieSameSite is the session cookie's SameSite attribute: lax,
	// strict or none. none is needed only for front-channel logout, whose
	// iframe is cross-site (the browser sends a Lax cookie only to
	// same-site and top-level requests); it requires HTTPS and lets every
	// cross-site request carry the session. Default: lax.
	CookieSameSite string `json:"cookie_samesite,omitempty"`

	app            *App
	store          cache.Store
	revs           *revocations
	stats          *cache.Stats
	prov           *provider.Provider
	codec          *session.Codec
	decoded        *session.DecodedCache
	bearers        *bearerCache
	introspections *introspector
	exchanges      chan struct{} // bounds concurrent code exchanges
	introNS        string
	revocationKeys [][]byte
	macNoted       bool
	allowExpr      *claimExpression
	client         provider.Client
	callbackPath   string
	absRedirect    bool
	exclude        caddyhttp.MatchPath
	headers        []headerRule
	// identityHeaders are the configured header names, lowercased with
	// '_' and '.' read as '-': a client header equal to one of them after
	// that mapping is removed (CGI and FastCGI map all three alike).
	identityHeaders []string
	secureDefault   bool
	sameSite        http.SameSite
	// route binds sealed values to this issuer and client; ns names this
	// route's keys in the shared cache.
	route, ns      string
	hostCookieName string
	plainCookieAAD string
	hostCookieAAD  string
	logger         *zap.Logger
	warned         *warnings
}

// warnings are raised once per handler for conditions that would
// otherwise be logged on every request.
type warnings struct{ oversize, noRefreshToken, untrustedProxy atomic.Bool }

// headerRule is one `header` line. userKey is set when the value is
// exactly one {http.auth.user.*} placeholder, which is then rendered
// directly instead of through the replacer (the common case, and cheaper).
type headerRule struct{ name, value, userKey string }

// CaddyModule returns the Caddy module information.
func (Handler) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{
		ID:  "http.handlers.oidc",
		New: func() caddy.Module { return new(Handler) },
	}
}

// Provision resolves secrets, applies defaults and takes the shared state
// from the `oidc` app. It does no network I/O: discovery is fetched lazily.
func (h *Handler) Provision(ctx caddy.Context) error {
	if err := h.configure(ctx, ctx.Logger()); err != nil {
		return err
	}
	appIface, err := ctx.App("oidc")
	if err != nil {
		return fmt.Errorf("oidc: loading the oidc app: %w", err)
	}
	app, ok := appIface.(*App)
	if !ok {
		return fmt.Errorf("oidc: the oidc app has unexpected type %T", appIface)
	}
	return h.attach(app)
}

// configure resolves secrets, applies defaults and validates the config.
func (h *Handler) configure(ctx caddy.Context, logger *zap.Logger) error {
	h.logger = logger
	h.warned = new(warnings)
	repl := caddy.NewReplacer()
	h.Issuer = strings.TrimSpace(repl.ReplaceAll(h.Issuer, ""))
	h.ClientID = repl.ReplaceAll(h.ClientID, "")
	h.ClientSecret = repl.ReplaceAll(h.ClientSecret, "")
	secrets := make([]string, 0, len(h.SessionSecret))
	for _, s := range h.SessionSecret {
		secrets = append(secrets, repl.ReplaceAll(s, ""))
	}
	if h.RedirectURI == "" {
		h.RedirectURI = DefaultRedirectURI
	}
	if len(h.Scopes) == 0 {
		h.Scopes = DefaultScopes
	}
	if h.SessionStore == "" {
		h.SessionStore = "cookie"
	}
	if h.LogoutPath == "" {
		h.LogoutPath = DefaultLogoutPath
	}
	if h.BackchannelLogoutPath == "" {
		h.BackchannelLogoutPath = DefaultBackchannelLogoutPath
	}
	if h.FrontchannelLogoutPath == "" {
		h.FrontchannelLogoutPath = DefaultFrontchannelLogoutPath
	}
	if h.SessionLifetime == 0 {
		h.SessionLifetime = caddy.Duration(DefaultSessionLifetime)
	}
	if h.RefreshBefore == 0 {
		h.RefreshBefore = caddy.Duration(DefaultRefreshBefore)
	}
	if h.ClockSkew == 0 {
		h.ClockSkew = caddy.Duration(DefaultClockSkew)
	}
	if h.IdPTimeout == 0 {
		h.IdPTimeout = caddy.Duration(DefaultIdPTimeout)
	}
	if h.CookieName == "" {
		h.CookieName = DefaultCookieName
	}
	h.secureDefault = strings.HasPrefix(h.RedirectURI, "https://")
	if err := h.check(secrets); err != nil {
		return err
	}
	codec, err := session.NewCodec(secrets...)
	if err != nil {
		return fmt.Errorf("oidc: session_secret: %w; generate one with: openssl rand -base64 48", err)
	}
	h.codec = codec
	// Revocations in Valkey are sealed with a key of this issuer's routes.
	h.revocationKeys = nil
	for _, sec := range secrets {
		k, err := session.DeriveKey(sec, "caddy-oidc revocation v1")
		if err != nil {
			return fmt.Errorf("oidc: session_secret: %w", err)
		}
		h.revocationKeys = append(h.revocationKeys, k)
	}
	h.route, h.ns = routeBinding(h.Issuer, h.ClientID), routeNamespace(h.Issuer, h.ClientID)
	h.hostCookieName = "__Host-" + h.CookieName
	h.plainCookieAAD, h.hostCookieAAD = h.bind(purposeCookie+h.CookieName), h.bind(purposeCookie+h.hostCookieName)
	h.decoded = session.NewDecodedCache(decodedSessionCacheSize)
	h.bearers = newBearerCache(bearerCacheSize)
	h.introspections = newIntrospector()
	h.exchanges = make(chan struct{}, maxConcurrentExchanges)
	if h.AllowExpression != "" {
		expr, err := compileClaimExpression(h.AllowExpression)
		if err != nil {
			return fmt.Errorf("oidc: allow_expression: %w", err)
		}
		h.allowExpr = expr
	}
	if len(h.BearerAudience) == 0 {
		h.BearerAudience = []string{h.ClientID}
	}
	// Introspection results are shared only by routes of the same issuer,
	// client and accepted audiences.
	auds := slices.Sorted(slices.Values(h.BearerAudience))
	audSum := sha256.Sum256([]byte(strings.Join(auds, "\x00")))
	h.introNS = h.ns + ":" + hex.EncodeToString(audSum[:8])
	h.client = provider.Client{ID: h.ClientID, Secret: h.ClientSecret, Method: h.ClientAuthMethod}
	switch h.ClientAuthMethod {
	case "", provider.AuthSecretBasic, provider.AuthSecretPost, provider.AuthPrivateKeyJWT, provider.AuthNone:
	default:
		return fmt.Errorf("oidc: client_auth_method %q is unknown; use client_secret_basic, client_secret_post, private_key_jwt or none", h.ClientAuthMethod)
	}
	if (h.ClientAuthMethod == provider.AuthSecretBasic || h.ClientAuthMethod == provider.AuthSecretPost) && h.ClientSecret == "" {
		return fmt.Errorf("oidc: client_auth_method %s needs client_secret", h.ClientAuthMethod)
	}
	if h.ClientPrivateKey != "" {
		pem, err := os.ReadFile(repl.ReplaceAll(h.ClientPrivateKey, ""))
		if err != nil {
			return fmt.Errorf("oidc: client_private_key: %w", err)
		}
		key, err := provider.ParseClientKey(pem, h.ClientKeyID, h.ClientKeyAlg)
		if err != nil {
			return fmt.Errorf("oidc: client_private_key: %w", err)
		}
		h.client.Key = key
	} else if h.ClientAuthMethod == provider.AuthPrivateKeyJWT {
		return errors.New("oidc: client_auth_method private_key_jwt needs client_private_key (a PEM file)")
	}
	for name, value := range h.Header {
		h.identityHeaders = append(h.identityHeaders, headerIdentity(name))
		hr := headerRule{name: http.CanonicalHeaderKey(name), value: value}
		if k, ok := strings.CutPrefix(value, "{"+userPrefix); ok && strings.HasSuffix(k, "}") && !strings.ContainsAny(k[:len(k)-1], "{}") {
			hr.userKey = k[:len(k)-1]
		}
		h.headers = append(h.headers, hr)
	}
	slices.SortFunc(h.headers, func(a, b headerRule) int { return strings.Compare(a.name, b.name) })
	if len(h.Exclude) > 0 {
		h.exclude = caddyhttp.MatchPath(h.Exclude)
		if err := h.exclude.Provision(ctx); err != nil {
			return fmt.Errorf("oidc: exclude: %w", err)
		}
	}
	h.warnFootguns(secrets)
	return nil
}

// attach takes this handler's share of the app's state.
func (h *Handler) attach(app *App) error {
	h.app = app
	// An old handler may still serve requests after a reload: the store
	// follows the current config, the rest outlives every config.
	h.store = liveStore{app}
	h.stats, h.revs = app.caches.stats, app.caches.revs
	// Revocations of this issuer must outlive this route's sessions.
	noteLifetime(h.Issuer, time.Duration(h.SessionLifetime))
	h.revs.noteMACKeys(h.Issuer, h.revocationKeys)
	h.macNoted = true
	if lease := time.Duration(app.RefreshLease); lease > 0 && time.Duration(h.IdPTimeout) > lease/2 {
		return fmt.Errorf("oidc: idp_timeout %s must be at most half of the oidc app's refresh_lease %s, so that a refresh grant ends while its lease holds: lower idp_timeout or raise refresh_lease",
			time.Duration(h.IdPTimeout), lease)
	}
	prov, err := app.provider(h.Issuer, time.Duration(h.IdPTimeout))
	if err != nil {
		return fmt.Errorf("oidc: issuer %s: %w", h.Issuer, err)
	}
	h.prov = prov
	return nil
}

// check validates the configuration; every error names the field and the fix.
func (h *Handler) check(secrets []string) error {
	if h.Issuer == "" {
		return errors.New("oidc: issuer is required: the IdP's issuer URL, e.g. https://idp.example.com/realms/main")
	}
	if u, err := url.Parse(h.Issuer); err != nil || (u.Scheme != "https" && u.Scheme != "http") || u.Host == "" || u.RawQuery != "" || u.Fragment != "" {
		return fmt.Errorf("oidc: issuer %q must be an absolute http(s) URL without query or fragment", h.Issuer)
	}
	if h.ClientID == "" {
		return errors.New("oidc: client_id is required: the client id registered at the IdP")
	}
	if len(secrets) == 0 {
		return errors.New("oidc: session_secret is required (at least 32 bytes); generate one with: openssl rand -base64 48")
	}
	for i, s := range secrets {
		if s == "" {
			return fmt.Errorf("oidc: session_secret #%d is empty (is its environment variable set?)", i+1)
		}
		if len(s) < session.MinSecretLen {
			return fmt.Errorf("oidc: session_secret #%d is %d bytes, want at least %d; generate one with: openssl rand -base64 48", i+1, len(s), session.MinSecretLen)
		}
	}
	if !slices.Contains(h.Scopes, "openid") {
		return fmt.Errorf("oidc: scopes %v must include openid", h.Scopes)
	}
	switch h.SessionStore {
	case "cookie":
	case "cache":
	default:
		return fmt.Errorf("oidc: session_store %q is unknown; use cookie or cache", h.SessionStore)
	}
	ru, err := url.Parse(h.RedirectURI)
	switch {
	case err != nil:
		return fmt.Errorf("oidc: redirect_uri %q: %v", h.RedirectURI, err)
	case ru.IsAbs() && (ru.Scheme == "https" || ru.Scheme == "http") && ru.Host != "" && strings.HasPrefix(ru.Path, "/"):
		h.absRedirect = true
	case !ru.IsAbs() && ru.Host == "" && strings.HasPrefix(ru.Path, "/") && !strings.HasPrefix(ru.Path, "//"):
	default:
		return fmt.Errorf("oidc: redirect_uri %q must be a path (/oauth2/callback) or an absolute http(s) URL", h.RedirectURI)
	}
	if ru.RawQuery != "" || ru.Fragment != "" {
		return fmt.Errorf("oidc: redirect_uri %q must not have a query or fragment", h.RedirectURI)
	}
	h.callbackPath = ru.Path
	paths := map[string]string{"logout_path": h.LogoutPath, "backchannel_logout_path": h.BackchannelLogoutPath, "frontchannel_logout_path": h.FrontchannelLogoutPath}
	if h.UserInfoPath != "" {
		paths["userinfo_path"] = h.UserInfoPath
	}
	if h.HealthPath != "" {
		paths["health_path"] = h.HealthPath
	}
	seen := map[string]string{}
	for field, p := range paths {
		if other, dup := seen[p]; dup {
			return fmt.Errorf("oidc: %s and %s are both %q", field, other, p)
		}
		seen[p] = field
	}
	for field, p := range paths {
		if !strings.HasPrefix(p, "/") {
			return fmt.Errorf("oidc: %s %q must be a path starting with /", field, p)
		}
		if p == h.callbackPath {
			return fmt.Errorf("oidc: %s %q is the same path as redirect_uri", field, p)
		}
	}
	if p := h.PostLogoutRedirectURI; p != "" {
		u, err := url.Parse(p)
		if err != nil || !(strings.HasPrefix(p, "/") && !strings.HasPrefix(p, "//") || u.IsAbs() && (u.Scheme == "https" || u.Scheme == "http") && u.Host != "") {
			return fmt.Errorf("oidc: post_logout_redirect_uri %q must be a path or an absolute http(s) URL", p)
		}
	}
	for _, d := range []struct {
		field string
		v     caddy.Duration
	}{
		{"session_lifetime", h.SessionLifetime}, {"session_idle_timeout", h.SessionIdleTimeout},
		{"refresh_before", h.RefreshBefore}, {"refresh_token_max_age", h.RefreshTokenMaxAge},
		{"clock_skew", h.ClockSkew}, {"idp_timeout", h.IdPTimeout},
	} {
		if d.v < 0 {
			return fmt.Errorf("oidc: %s %s must not be negative", d.field, time.Duration(d.v))
		}
	}
	if h.IdPTimeout > 0 && time.Duration(h.IdPTimeout) < 100*time.Millisecond {
		return fmt.Errorf("oidc: idp_timeout %s is too short for any IdP call; use at least 100ms", time.Duration(h.IdPTimeout))
	}
	switch h.EndSessionMethod {
	case "", "post", "get":
	default:
		return fmt.Errorf("oidc: end_session_method %q is unknown; use post or get", h.EndSessionMethod)
	}
	if e := h.IntrospectionEndpoint; e != "" {
		if u, err := url.Parse(e); err != nil || (u.Scheme != "https" && u.Scheme != "http") || u.Host == "" {
			return fmt.Errorf("oidc: introspection_endpoint %q must be an absolute http(s) URL", e)
		}
	}
	switch strings.ToLower(h.CookieSameSite) {
	case "", "lax":
		h.sameSite = http.SameSiteLaxMode
	case "strict":
		h.sameSite = http.SameSiteStrictMode
	case "none":
		// Browsers drop SameSite=None cookies without Secure.
		if !h.secureDefault {
			return fmt.Errorf("oidc: cookie_samesite none needs an https redirect_uri (SameSite=None cookies must be Secure); set redirect_uri https://<host>%s", h.callbackPath)
		}
		h.sameSite = http.SameSiteNoneMode
	default:
		return fmt.Errorf("oidc: cookie_samesite %q is unknown; use lax, strict or none", h.CookieSameSite)
	}
	if strings.ContainsAny(h.CookieName, "=;, \t\"") || strings.HasPrefix(h.CookieName, "__") {
		return fmt.Errorf("oidc: cookie_name %q is not a valid cookie name (no prefix, no separators)", h.CookieName)
	}
	for name := range h.AuthParams {
		if slices.Contains(reservedAuthParams, name) {
			return fmt.Errorf("oidc: auth_param %s is set by the module itself and cannot be changed", name)
		}
	}
	for name := range h.Header {
		if name == "" || strings.ContainsAny(name, " :\t\r\n") {
			return fmt.Errorf("oidc: header name %q is invalid", name)
		}
	}
	return nil
}

// Cleanup releases this handler's share of the app's state. It copes with a
// Provision that stopped half way. Requests of this handler may still be
// running (Caddy does not wait for them on a reload): nothing they use is
// cleared here, and a released provider keeps answering.
func (h *Handler) Cleanup() error {
	if h.prov != nil && h.app != nil {
		h.app.releaseProvider(h.Issuer, time.Duration(h.IdPTimeout))
	}
	if h.macNoted {
		// A secret rotated out of the config stops vouching for revocations.
		h.revs.forgetMACKeys(h.Issuer, h.revocationKeys)
		h.macNoted = false
	}
	return nil
}

// ServeHTTP implements caddyhttp.MiddlewareHandler.
func (h *Handler) ServeHTTP(w http.ResponseWriter, r *http.Request, next caddyhttp.Handler) error {
	// The app's shared state outlives this request, even across a reload.
	h.app.hold()
	defer h.app.release()
	// Identity headers are the module's to set: a client-sent copy must never
	// reach the upstream, on any path.
	h.stripIdentityHeaders(r)
	// Nor the module's cookies: error paths hand this request to
	// handle_errors routes, which may proxy it.
	defer h.stripCookies(r)
	switch r.URL.Path {
	case h.callbackPath:
		return h.serveCallback(w, r)
	case h.LogoutPath:
		return h.serveLogout(w, r)
	case h.BackchannelLogoutPath:
		return h.serveBackchannelLogout(w, r)
	case h.FrontchannelLogoutPath:
		return h.serveFrontchannelLogout(w, r)
	case h.UserInfoPath:
		if h.UserInfoPath != "" {
			return h.serveSessionInfo(w, r)
		}
	case h.HealthPath:
		if h.HealthPath != "" {
			return h.serveHealth(w, r)
		}
	}
	if h.excluded(r) {
		h.stripCookies(r)
		return next.ServeHTTP(w, r)
	}
	if h.Bearer {
		if token, ok := bearerToken(r); ok {
			return h.serveBearer(w, r, next, token)
		}
	}

	now := time.Now()
	sess, reissue, err := h.loadSession(r, now)
	if err != nil {
		// The shared cache cannot say whether this session exists: neither
		// a login redirect (a loop) nor a deletion, but a retry.
		w.Header().Set("Retry-After", "5")
		return caddyhttp.Error(http.StatusServiceUnavailable, err)
	}
	if sess == nil {
		return h.challenge(w, r, "")
	}
	if h.app.awaitingRevocations(h.revs) {
		// This process has not read the other replicas' logouts yet: a
		// moment's wait rather than a logged-out session let in.
		w.Header().Set("Retry-After", "2")
		return caddyhttp.Error(http.StatusServiceUnavailable, errors.New("the revocation set is not loaded yet"))
	}
	if h.revs.ended(h.Issuer, sess) {
		// Logged out (back-channel, front-channel or RP-initiated) on some replica.
		h.logger.Info("session refused: logged out", zap.String("sub", sess.Subject()))
		h.endSession(w, r, sess)
		return h.challenge(w, r, "invalid_token")
	}
	if h.refreshTooOld(sess, now) && sess.AccessExpiry != 0 && now.Unix() >= sess.AccessExpiry {
		h.endSession(w, r, sess)
		return h.challenge(w, r, "invalid_token")
	}
	if h.needsRefresh(sess, now) {
		rctx := r.Context()
		if sess.AccessExpiry == 0 || now.Unix() < sess.AccessExpiry {
			// Still valid: rather than wait for a slow IdP or a lease held
			// on another replica, serve it; the grant goes on and the
			// session's next request gets its result.
			var cancel context.CancelFunc
			rctx, cancel = context.WithTimeout(rctx, time.Duration(h.IdPTimeout))
			defer cancel()
		}
		switch err := h.refresh(rctx, sess); {
		case err == nil:
			reissue = true
		case isDefinitive(err):
			h.logger.Info("refresh token refused by the IdP; session ended", zap.String("sub", sess.Subject()), zap.Error(err))
			h.endSession(w, r, sess)
			return h.challenge(w, r, "invalid_token")
		case sess.AccessExpiry != 0 && now.Unix() >= sess.AccessExpiry:
			// The IdP cannot be reached and the access token is gone: keep
			// the session (the cookie is untouched) and ask to come back.
			h.logger.Warn("token refresh failed and the access token has expired", zap.Error(err))
			w.Header().Set("Retry-After", "5")
			return caddyhttp.Error(http.StatusServiceUnavailable, fmt.Errorf("refreshing the session: %w", err))
		case errors.Is(err, refresh.ErrPending):
			if c := h.logger.Check(zapcore.DebugLevel, "refresh still pending; serving the current access token"); c != nil {
				c.Write(zap.String("sub", sess.Subject()))
			}
		default:
			h.logger.Warn("token refresh failed; serving the session until its access token expires", zap.Error(err))
		}
	}
	if !h.allowed(sess.Claims) {
		return caddyhttp.Error(http.StatusForbidden, fmt.Errorf("user %q is not allowed by the allow rules", sess.Subject()))
	}
	if idle := time.Duration(h.SessionIdleTimeout); idle > 0 && now.Sub(time.Unix(sess.LastSeen, 0)) > max(idle/10, time.Second) {
		sess.LastSeen = now.Unix()
		reissue = true
	}
	if reissue {
		if err := h.writeSession(w, r, sess, now); err != nil {
			return caddyhttp.Error(http.StatusInternalServerError, err)
		}
	}
	h.setIdentity(r, sess.Claims, sess)
	h.stripCookies(r)
	return next.ServeHTTP(w, r)
}

// Interface guards
var (
	_ caddy.Provisioner           = (*Handler)(nil)
	_ caddy.CleanerUpper          = (*Handler)(nil)
	_ caddyhttp.MiddlewareHandler = (*Handler)(nil)
)

func timeDuration(d caddy.Duration) time.Duration { return time.Duration(d) }

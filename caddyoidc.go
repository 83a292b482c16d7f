// Package caddyoidc is an OpenID Connect relying party for Caddy: the
// http.handlers.oidc handler logs users in at their IdP, keeps their session
// in an encrypted cookie, refreshes their tokens, applies allow rules and
// passes their identity to the rest of the route.
package caddyoidc

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"maps"
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
	"github.com/caddy-oidc/caddy-oidc/internal/lograte"
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
// | `{http.auth.user.assertion}` | a signed JWT about the user (with `assertion`) |
type Handler struct {
	// The IdP's issuer URL; discovery is at
	// <issuer>/.well-known/openid-configuration. Required.
	Issuer string `json:"issuer,omitempty"`
	// This application at the IdP: client id and how it authenticates.
	Client ClientConfig `json:"client,omitzero"`
	// What a login asks of the IdP: redirect URI, scopes, parameters.
	Login LoginConfig `json:"login,omitzero"`
	// How sessions are sealed, kept and refreshed.
	Session SessionConfig `json:"session,omitzero"`
	// Who is admitted once logged in. Default: every authenticated user.
	Allow AllowPolicy `json:"allow,omitzero"`
	// RP-initiated, back-channel and front-channel logout.
	Logout LogoutConfig `json:"logout,omitzero"`
	// Accept access tokens from API clients. Default: off.
	Bearer *BearerConfig `json:"bearer,omitempty"`
	// Sign a short-lived JWT about the user for the upstream,
	// {http.auth.user.assertion}, and serve its keys. Default: off.
	Assertion *AssertionConfig `json:"assertion,omitempty"`

	// The claim allow_groups and {http.auth.user.groups} read; a dotted
	// path reaches into objects. Default: groups.
	GroupsClaim string `json:"groups_claim,omitempty"`
	// The claim allow_roles and {http.auth.user.roles} read (Keycloak:
	// realm_access.roles or resource_access.<client>.roles). Default: roles.
	RolesClaim string `json:"roles_claim,omitempty"`
	// Request headers for the next handler, with placeholders; copies the
	// client sent (in any spelling an upstream could read as the same
	// name) are removed first, on every request.
	Header map[string]string `json:"header,omitempty"`
	// Paths served without authentication, in the syntax of Caddy's path
	// matcher (exact, /prefix/*, *suffix). A path that could be read two
	// ways (encodings, `;`, `..`) is never excluded.
	Exclude []string `json:"exclude,omitempty"`
	// Answers GET with the session's identity as JSON (what the upstream
	// would see, and when the session ends; never a token), or 401 without
	// a session: for single-page apps. Default: off.
	UserInfoPath string `json:"userinfo_path,omitempty"`
	// Answers 200 when the IdP's discovery document and keys are loaded and
	// the shared cache is reachable, else 503 with the reason as JSON: a
	// readiness probe. It needs no session. Default: off.
	HealthPath string `json:"health_path,omitempty"`
	// Bounds each call to the IdP (discovery, keys, token, userinfo,
	// introspection). At most half of the oidc app's refresh_lease.
	// Default: 10s.
	IdPTimeout caddy.Duration `json:"idp_timeout,omitempty"`
	// Tolerated when checking token times. Default: 60s.
	ClockSkew caddy.Duration `json:"clock_skew,omitempty"`
	// A security profile the client must meet: "fapi2" (the FAPI 2.0
	// Security Profile) pushes authorization requests (PAR), allows only
	// private_key_jwt or tls_client_auth, needs sender-constrained tokens
	// (dpop, or a client_certificate), requires the RFC 9207 iss in every
	// authorization response and accepts only PS256, ES256 and EdDSA
	// signatures on ID tokens and JWT responses; a config that contradicts
	// it fails at load with the rule named. Default: none.
	Profile string `json:"profile,omitempty"`
	// Several identity providers on one site (staff through Entra ID,
	// contractors through Google): each with its own issuer, client,
	// session cookie and endpoints, inheriting the rest of this block. A
	// request without a session goes to the provider its login_hint's
	// domain names, or gets a chooser page. At least two; then issuer and
	// client_id go inside each provider.
	Providers []ProviderConfig `json:"providers,omitempty"`

	app *App
	// chooser dispatches a block with several providers to them.
	chooser *chooser
	// shared is the app's current shared cache (introspection results);
	// sessions keeps this route's sessions in cookies or in it.
	shared   cache.Store
	sessions session.Store
	revs     *revocations
	// rp is this route's client at the issuer, bound at Provision; with
	// dpop, dpopRPs are the same client with each secret's DPoP key, by
	// the key's thumbprint (rp is the first secret's).
	rp       *provider.RelyingParty
	dpopRPs  map[string]*provider.RelyingParty
	dpopKeys []*provider.DPoPKey
	// pushes bounds pushed authorization requests (PAR).
	pushes  *pushLimit
	client  provider.Client
	codec   *session.Codec
	secrets []string
	// tokens verifies bearer tokens and proofs their DPoP proofs (with
	// bearer on).
	tokens         *tokenVerifier
	proofs         *proofChecker
	exchanges      chan struct{} // bounds concurrent code exchanges
	revocationKeys [][]byte
	macNoted       bool
	callbackPath   string
	absRedirect    bool
	exclude        caddyhttp.MatchPath
	identity       identity
	userInfoNeeds  userInfoNeeds
	secureDefault  bool
	sameSite       http.SameSite
	// route binds sealed values to this issuer and client; ns names this
	// route's keys in the shared cache.
	route, ns string
	logger    *zap.Logger
	warned    *warnings

	// assertions signs {http.auth.user.assertion}; nil when off.
	assertions *assertionSigner
	// readyNoted: this handler is in the readiness metrics.
	readyNoted bool
}

// warnings are raised once per handler for conditions that would
// otherwise be logged on every request.
type warnings struct {
	noRefreshToken, untrustedProxy atomic.Bool
	// These fire per request (or per login, refresh or logout) while the
	// IdP or Valkey is down: one line per interval, with a count.
	refreshFailed, refreshDegraded, userinfoFailed, logoutDegraded lograte.Limit
}

// CaddyModule returns the Caddy module information.
func (Handler) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{
		ID:  "http.handlers.oidc",
		New: func() caddy.Module { return new(Handler) },
	}
}

// Provision resolves secrets, applies defaults, validates and takes the
// shared state from the `oidc` app. It does no network I/O: discovery is
// fetched lazily.
func (h *Handler) Provision(ctx caddy.Context) error {
	if len(h.Providers) > 0 {
		if err := h.provisionProviders(ctx, ctx.Logger()); err != nil {
			return err
		}
	} else if err := h.provision(ctx, ctx.Logger()); err != nil {
		return err
	}
	appIface, err := ctx.App("oidc")
	if err != nil {
		return fmt.Errorf("loading the oidc app: %w", err)
	}
	app, ok := appIface.(*App)
	if !ok {
		return fmt.Errorf("the oidc app has unexpected type %T", appIface)
	}
	return h.attach(app)
}

// provision resolves placeholders, applies defaults, validates, and builds
// what the handler derives from its configuration.
func (h *Handler) provision(ctx caddy.Context, logger *zap.Logger) error {
	h.logger = logger
	h.warned = new(warnings)
	repl := caddy.NewReplacer()
	h.Issuer = strings.TrimSpace(repl.ReplaceAll(h.Issuer, ""))
	h.Client.ID = repl.ReplaceAll(h.Client.ID, "")
	h.Client.Secret = repl.ReplaceAll(h.Client.Secret, "")
	h.secrets = make([]string, 0, len(h.Session.Secrets))
	for _, s := range h.Session.Secrets {
		h.secrets = append(h.secrets, repl.ReplaceAll(s, ""))
	}
	h.applyDefaults()
	if err := h.Validate(); err != nil {
		return err
	}

	codec, err := session.NewCodec(h.secrets...)
	if err != nil {
		return fmt.Errorf("session_secret: %w; generate one with: openssl rand -base64 48", err)
	}
	h.codec = codec
	// Revocations in Valkey are sealed with a key of this issuer's routes.
	h.revocationKeys = nil
	for _, sec := range h.secrets {
		k, err := session.DeriveKey(sec, "caddy-oidc revocation v1")
		if err != nil {
			return fmt.Errorf("session_secret: %w", err)
		}
		h.revocationKeys = append(h.revocationKeys, k)
	}
	ru, _ := url.Parse(h.Login.RedirectURI) // Validate parsed it
	h.callbackPath, h.absRedirect = ru.Path, ru.IsAbs()
	h.secureDefault = ru.Scheme == "https"
	h.sameSite = sameSiteModes[strings.ToLower(h.Session.CookieSameSite)]
	h.route, h.ns = routeBinding(h.Issuer, h.Client.ID), routeNamespace(h.Issuer, h.Client.ID)
	h.exchanges = make(chan struct{}, maxConcurrentExchanges)
	if err := h.Allow.provision(cmp.Or(h.GroupsClaim, "groups"), cmp.Or(h.RolesClaim, "roles")); err != nil {
		return err
	}
	h.client = provider.Client{ID: h.Client.ID, Secret: h.Client.Secret, Method: h.Client.AuthMethod}
	if h.Client.PrivateKey != "" {
		pem, err := os.ReadFile(repl.ReplaceAll(h.Client.PrivateKey, ""))
		if err != nil {
			return fmt.Errorf("client_private_key: %w", err)
		}
		key, err := provider.ParseClientKey(pem, h.Client.KeyID, h.Client.KeyAlg)
		if err == nil && h.fapi2() && h.Client.KeyAlg == "" && key.Algorithm() == "RS256" {
			// FAPI 2.0 §5.4.1: an RSA key signs with PS256.
			key, err = provider.ParseClientKey(pem, h.Client.KeyID, "PS256")
		}
		if err != nil {
			return fmt.Errorf("client_private_key: %w", err)
		}
		if h.fapi2() && !slices.Contains(fapi2Algorithms, key.Algorithm()) {
			return fmt.Errorf("profile fapi2: client_key_alg %s is not allowed; sign with PS256, ES256 or EdDSA (FAPI 2.0 §5.4.1)", key.Algorithm())
		}
		h.client.Key = key
	}
	if h.Client.Certificate != "" {
		certPEM, err := os.ReadFile(repl.ReplaceAll(h.Client.Certificate, ""))
		if err != nil {
			return fmt.Errorf("client_certificate: %w", err)
		}
		keyPEM, err := os.ReadFile(repl.ReplaceAll(h.Client.CertificateKey, ""))
		if err != nil {
			return fmt.Errorf("client_certificate: its key: %w", err)
		}
		if h.client.Certificate, err = provider.ParseClientCertificate(certPEM, keyPEM); err != nil {
			return fmt.Errorf("client_certificate: %w", err)
		}
	}
	// FAPI 2.0 §5.3.2.1: private_key_jwt assertions name the issuer alone.
	h.client.IssuerAudience = h.fapi2()
	h.dpopKeys = nil
	if h.Client.DPoP {
		if h.dpopKeys, err = deriveDPoPKeys(h.secrets, h.route); err != nil {
			return err
		}
	}
	h.pushes = newPushLimit()
	h.identity = newIdentity(h.Header, h.GroupsClaim, h.RolesClaim)
	h.identity.issuer = h.Issuer
	h.userInfoNeeds = newUserInfoNeeds(h.Login.Scopes, &h.Allow, h.Header, h.identity.groupsClaim, h.identity.rolesClaim)
	if h.Assertion != nil {
		if h.assertions, err = newAssertionSigner(h.secrets, h.route+session.PurposeCookie+h.Session.CookieName, *h.Assertion, h.Allow.RequireEmailVerified == nil || *h.Allow.RequireEmailVerified, h.scheme); err != nil {
			return fmt.Errorf("assertion: %w", err)
		}
		h.identity.assertions = h.assertions
	}
	if len(h.Exclude) > 0 {
		h.exclude = caddyhttp.MatchPath(h.Exclude)
		if err := h.exclude.Provision(ctx); err != nil {
			return fmt.Errorf("exclude: %w", err)
		}
	}
	h.warnFootguns(h.secrets)
	h.warnUncheckedStepUp()
	return nil
}

// applyDefaults fills in what the configuration leaves out.
func (h *Handler) applyDefaults() {
	defaultString := func(p *string, v string) {
		if *p == "" {
			*p = v
		}
	}
	defaultDuration := func(p *caddy.Duration, v time.Duration) {
		if *p == 0 {
			*p = caddy.Duration(v)
		}
	}
	defaultString(&h.Login.RedirectURI, DefaultRedirectURI)
	if len(h.Login.Scopes) == 0 {
		h.Login.Scopes = DefaultScopes
	}
	defaultString(&h.Login.UserInfo, UserInfoAuto)
	defaultString(&h.Session.Store, "cookie")
	defaultString(&h.Session.CookieName, DefaultCookieName)
	defaultDuration(&h.Session.Lifetime, DefaultSessionLifetime)
	defaultDuration(&h.Session.RefreshBefore, DefaultRefreshBefore)
	defaultString(&h.Logout.Path, DefaultLogoutPath)
	defaultString(&h.Logout.BackchannelPath, DefaultBackchannelLogoutPath)
	defaultString(&h.Logout.FrontchannelPath, DefaultFrontchannelLogoutPath)
	defaultDuration(&h.ClockSkew, DefaultClockSkew)
	defaultDuration(&h.IdPTimeout, DefaultIdPTimeout)
	if h.Assertion != nil {
		defaultString(&h.Assertion.JWKSPath, DefaultAssertionJWKSPath)
		defaultDuration(&h.Assertion.Lifetime, DefaultAssertionLifetime)
	}
}

// attach takes this handler's share of the app's state.
func (h *Handler) attach(app *App) error {
	h.app = app
	if h.chooser != nil {
		for _, c := range h.chooser.children {
			if err := c.h.attach(app); err != nil {
				return fmt.Errorf("provider %s: %w", c.name, err)
			}
		}
		return nil
	}
	// An old handler may still serve requests after a reload: the store
	// follows the current config, the rest outlives every config.
	h.shared = liveStore{app}
	h.revs = app.caches.revs
	// Revocations of this issuer must outlive this route's sessions.
	noteLifetime(h.Issuer, time.Duration(h.Session.Lifetime))
	h.revs.noteMACKeys(h.Issuer, h.revocationKeys)
	h.macNoted = true
	if lease := time.Duration(app.RefreshLease); lease > 0 && time.Duration(h.IdPTimeout) > lease/2 {
		return fmt.Errorf("idp_timeout %s must be at most half of the oidc app's refresh_lease %s, so that a refresh grant ends while its lease holds: lower idp_timeout or raise refresh_lease",
			time.Duration(h.IdPTimeout), lease)
	}
	prov, err := app.provider(h.Issuer, time.Duration(h.IdPTimeout))
	if err != nil {
		return fmt.Errorf("issuer %s: %w", h.Issuer, err)
	}
	var introspection string
	if h.Bearer != nil {
		introspection = h.Bearer.IntrospectionEndpoint
	}
	opts := provider.RPOptions{ClockSkew: time.Duration(h.ClockSkew),
		Audiences: h.bearerAudience(), IntrospectionEndpoint: introspection}
	if h.fapi2() {
		opts.Algorithms = fapi2Algorithms
	}
	h.rp = prov.Bind(h.client, opts)
	h.dpopRPs = nil
	for i, k := range h.dpopKeys {
		c := h.client
		c.DPoP = k
		rp := prov.Bind(c, opts)
		if i == 0 {
			h.rp = rp // new logins bind to the first secret's key
		}
		if h.dpopRPs == nil {
			h.dpopRPs = make(map[string]*provider.RelyingParty, len(h.dpopKeys))
		}
		h.dpopRPs[k.Thumbprint()] = rp
	}
	if h.Bearer != nil {
		h.tokens, h.proofs = h.newBearerVerifiers()
	}
	h.sessions = h.newSessionStore()
	readiness.add(h)
	h.readyNoted = true
	return nil
}

// newSessionStore builds this route's session store on the app's state.
func (h *Handler) newSessionStore() session.Store {
	if h.Session.Store == "cache" {
		return session.NewCacheStore(h.storeConfig())
	}
	return session.NewCookieStore(h.storeConfig())
}

func (h *Handler) storeConfig() session.StoreConfig {
	return session.StoreConfig{
		Codec: h.codec, Binding: h.route, Namespace: h.ns,
		CookieName: h.Session.CookieName, SameSite: h.sameSite, Secure: h.secure,
		Lifetime: time.Duration(h.Session.Lifetime), IdleTimeout: time.Duration(h.Session.IdleTimeout),
		RefreshTokenMaxAge: time.Duration(h.Session.RefreshTokenMaxAge),
		Shared:             h.shared,
		Revoked:            func(s *session.Session) bool { return h.revs.ended(h.Issuer, s) },
		Ready:              func() bool { return !h.app.awaitingRevocations(h.revs) },
		Logger:             h.logger,
	}
}

// sameSiteModes are the cookie_samesite values Validate accepts.
var sameSiteModes = map[string]http.SameSite{"": http.SameSiteLaxMode, "lax": http.SameSiteLaxMode,
	"strict": http.SameSiteStrictMode, "none": http.SameSiteNoneMode}

// Validate checks the configuration (after Provision has resolved its
// placeholders and applied its defaults); every error names the field and
// the fix. It changes nothing.
func (h *Handler) Validate() error {
	if h.chooser != nil {
		for _, c := range h.chooser.children {
			if err := c.h.Validate(); err != nil {
				return fmt.Errorf("provider %s: %w", c.name, err)
			}
		}
		return nil
	}
	if h.Issuer == "" {
		return errors.New("issuer is required: the IdP's issuer URL, e.g. https://idp.example.com/realms/main")
	}
	if u, err := url.Parse(h.Issuer); err != nil || (u.Scheme != "https" && u.Scheme != "http") || u.Host == "" || u.RawQuery != "" || u.Fragment != "" {
		return fmt.Errorf("issuer %q must be an absolute http(s) URL without query or fragment", h.Issuer)
	}
	if err := h.Client.validate(); err != nil {
		return err
	}
	if err := h.validateProfile(); err != nil {
		return err
	}
	if h.Login.RequestObject && h.Client.PrivateKey == "" {
		return errors.New("request_object signs with the private_key_jwt key: set client_private_key")
	}
	secrets := h.secrets
	if secrets == nil {
		secrets = h.Session.Secrets // not provisioned: the raw values
	}
	if err := h.Session.validate(secrets, h.Login.RedirectURI); err != nil {
		return err
	}
	if err := h.Login.validate(); err != nil {
		return err
	}
	if !slices.Contains(h.Login.Scopes, "openid") {
		return fmt.Errorf("scopes %v must include openid", h.Login.Scopes)
	}
	for name := range h.Login.AuthParams {
		if slices.Contains(reservedAuthParams, name) {
			return fmt.Errorf("auth_param %s is set by the module itself and cannot be changed", name)
		}
	}
	if err := h.validatePaths(); err != nil {
		return err
	}
	for _, d := range []struct {
		field string
		v     caddy.Duration
	}{
		{"session_lifetime", h.Session.Lifetime}, {"session_idle_timeout", h.Session.IdleTimeout},
		{"refresh_before", h.Session.RefreshBefore}, {"refresh_token_max_age", h.Session.RefreshTokenMaxAge},
		{"clock_skew", h.ClockSkew}, {"idp_timeout", h.IdPTimeout},
	} {
		if d.v < 0 {
			return fmt.Errorf("%s %s must not be negative", d.field, time.Duration(d.v))
		}
	}
	if h.IdPTimeout > 0 && time.Duration(h.IdPTimeout) < 100*time.Millisecond {
		return fmt.Errorf("idp_timeout %s is too short for any IdP call; use at least 100ms", time.Duration(h.IdPTimeout))
	}
	switch h.Login.UserInfo {
	case "", UserInfoAuto, UserInfoOn, UserInfoOff:
	default:
		return fmt.Errorf("userinfo %q is unknown; use auto, on or off", h.Login.UserInfo)
	}
	switch h.Logout.EndSessionMethod {
	case "", "post", "get":
	default:
		return fmt.Errorf("end_session_method %q is unknown; use post or get", h.Logout.EndSessionMethod)
	}
	if h.Bearer != nil {
		if err := h.Bearer.validate(); err != nil {
			return err
		}
		if e := h.Bearer.IntrospectionEndpoint; e != "" {
			if u, err := url.Parse(e); err != nil || (u.Scheme != "https" && u.Scheme != "http") || u.Host == "" {
				return fmt.Errorf("introspection_endpoint %q must be an absolute http(s) URL", e)
			}
		}
	}
	if h.Allow.Expression != "" {
		if _, err := compileClaimExpression(h.Allow.Expression); err != nil {
			return fmt.Errorf("allow_expression: %w", err)
		}
	}
	for name, value := range h.Header {
		if name == "" || strings.ContainsAny(name, " :\t\r\n") {
			return fmt.Errorf("header name %q is invalid", name)
		}
		if h.Assertion == nil && strings.Contains(value, "{"+userPrefix+"assertion}") {
			return fmt.Errorf("header %s uses {%sassertion} but assertions are off: add `assertion`", name, userPrefix)
		}
	}
	if h.Assertion != nil {
		if err := h.Assertion.validate(); err != nil {
			return err
		}
	}
	return nil
}

func (h *Handler) validatePaths() error {
	ru, err := url.Parse(h.Login.RedirectURI)
	switch {
	case err != nil:
		return fmt.Errorf("redirect_uri %q: %v", h.Login.RedirectURI, err)
	case ru.IsAbs() && (ru.Scheme == "https" || ru.Scheme == "http") && ru.Host != "" && strings.HasPrefix(ru.Path, "/"):
	case !ru.IsAbs() && ru.Host == "" && strings.HasPrefix(ru.Path, "/") && !strings.HasPrefix(ru.Path, "//"):
	default:
		return fmt.Errorf("redirect_uri %q must be a path (/oauth2/callback) or an absolute http(s) URL", h.Login.RedirectURI)
	}
	if ru.RawQuery != "" || ru.Fragment != "" {
		return fmt.Errorf("redirect_uri %q must not have a query or fragment", h.Login.RedirectURI)
	}
	paths := map[string]string{"logout_path": h.Logout.Path, "backchannel_logout_path": h.Logout.BackchannelPath, "frontchannel_logout_path": h.Logout.FrontchannelPath}
	if h.UserInfoPath != "" {
		paths["userinfo_path"] = h.UserInfoPath
	}
	if h.HealthPath != "" {
		paths["health_path"] = h.HealthPath
	}
	if h.Assertion != nil && h.Assertion.JWKSPath != "" {
		paths["assertion_jwks_path"] = h.Assertion.JWKSPath
	}
	seen := map[string]string{}
	for _, field := range slices.Sorted(maps.Keys(paths)) {
		p := paths[field]
		if other, dup := seen[p]; dup {
			return fmt.Errorf("%s and %s are both %q", other, field, p)
		}
		seen[p] = field
		if !strings.HasPrefix(p, "/") {
			return fmt.Errorf("%s %q must be a path starting with /", field, p)
		}
		if p == ru.Path {
			return fmt.Errorf("%s %q is the same path as redirect_uri", field, p)
		}
	}
	if p := h.Logout.PostLogoutRedirectURI; p != "" {
		u, err := url.Parse(p)
		if err != nil || !(strings.HasPrefix(p, "/") && !strings.HasPrefix(p, "//") || u.IsAbs() && (u.Scheme == "https" || u.Scheme == "http") && u.Host != "") {
			return fmt.Errorf("post_logout_redirect_uri %q must be a path or an absolute http(s) URL", p)
		}
	}
	return nil
}

// bearerAudience is what an access token's aud must hold.
func (h *Handler) bearerAudience() []string {
	if h.Bearer == nil || len(h.Bearer.Audience) == 0 {
		return []string{h.Client.ID}
	}
	return h.Bearer.Audience
}

// Cleanup releases this handler's share of the app's state. It copes with a
// Provision that stopped half way. Requests of this handler may still be
// running (Caddy does not wait for them on a reload): nothing they use is
// cleared here, and a released provider keeps answering.
func (h *Handler) Cleanup() error {
	if h.chooser != nil {
		h.chooser.providersCleanup()
		return nil
	}
	if h.rp != nil && h.app != nil {
		h.app.releaseProvider(h.Issuer, time.Duration(h.IdPTimeout))
	}
	if h.readyNoted {
		readiness.remove(h)
		h.readyNoted = false
	}
	if h.assertions != nil {
		// Assertions it signed stay verifiable until they expire.
		h.assertions.retire(time.Now())
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
	if h.chooser != nil {
		return h.chooser.serveProviders(w, r, next)
	}
	// The app's shared state outlives this request, even across a reload.
	h.app.hold()
	defer h.app.release()
	// Identity headers are the module's to set: a client-sent copy must never
	// reach the upstream, on any path.
	h.identity.strip(r)
	// Nor the module's cookies: error paths hand this request to
	// handle_errors routes, which may proxy it.
	defer h.sessions.StripCookies(r)
	switch r.URL.Path {
	case h.callbackPath:
		return h.serveCallback(w, r)
	case h.Logout.Path:
		return h.serveLogout(w, r)
	case h.Logout.BackchannelPath:
		return h.serveBackchannelLogout(w, r)
	case h.Logout.FrontchannelPath:
		return h.serveFrontchannelLogout(w, r)
	case h.UserInfoPath:
		if h.UserInfoPath != "" {
			return h.serveSessionInfo(w, r)
		}
	case h.HealthPath:
		if h.HealthPath != "" {
			return h.serveHealth(w, r)
		}
	case h.assertions.jwksPath():
		if h.assertions != nil {
			return h.assertions.serveJWKS(w, r)
		}
	}
	if h.excluded(r) {
		h.sessions.StripCookies(r)
		return next.ServeHTTP(w, r)
	}
	if h.Bearer != nil {
		if token, ok := bearerToken(r); ok {
			return h.serveBearer(w, r, next, token)
		}
	}

	now := time.Now()
	loaded := h.sessions.Load(r, now)
	if !loaded.Usable() {
		return h.refuseSession(w, r, loaded)
	}
	sess, reissue := loaded.Session, loaded.Reissue
	if reason, reauth := h.Login.stepUpNeeded(sess.Claims, now, time.Duration(h.ClockSkew)); reason != "" {
		// The session stays: it serves the routes that ask less.
		return h.requireStepUp(w, r, sess.Subject(), reason, reauth)
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
			h.logger.Info("session refused: the IdP refused its refresh token", zap.String("sub", sess.Subject()), zap.Error(err))
			h.sessions.Clear(w, r, sess)
			return h.challenge(w, r, "invalid_token")
		case sess.AccessExpiry != 0 && now.Unix() >= sess.AccessExpiry:
			// The IdP cannot be reached and the access token is gone: keep
			// the session (the cookie is untouched) and ask to come back.
			h.warned.refreshFailed.Warn(h.logger, "token refresh failed and the access token has expired; answering 503", zap.Error(err))
			w.Header().Set("Retry-After", "5")
			return caddyhttp.Error(http.StatusServiceUnavailable, fmt.Errorf("refreshing the session: %w", err))
		case errors.Is(err, refresh.ErrPending):
			if c := h.logger.Check(zapcore.DebugLevel, "refresh still pending; serving the current access token"); c != nil {
				c.Write(zap.String("sub", sess.Subject()))
			}
		default:
			h.warned.refreshFailed.Warn(h.logger, "token refresh failed; serving the session until its access token expires", zap.Error(err))
		}
	}
	if !h.Allow.allows(sess.Claims) {
		return caddyhttp.Error(http.StatusForbidden, fmt.Errorf("user %q is not allowed by the allow rules", sess.Subject()))
	}
	if idle := time.Duration(h.Session.IdleTimeout); idle > 0 && now.Sub(time.Unix(sess.LastSeen, 0)) > max(idle/10, time.Second) {
		sess.LastSeen = now.Unix()
		reissue = true
	}
	if reissue {
		if err := h.sessions.Save(w, r, sess, now); err != nil {
			return caddyhttp.Error(http.StatusInternalServerError, err)
		}
	}
	h.identity.set(r, sess.Claims, sess)
	h.sessions.StripCookies(r)
	return next.ServeHTTP(w, r)
}

// refuseSession answers a request whose session cannot be used, after the
// reason: 503 while the answer is unknown (never a login redirect, which
// could loop, nor a deletion), else a new login.
func (h *Handler) refuseSession(w http.ResponseWriter, r *http.Request, l session.Loaded) error {
	switch l.Refusal {
	case session.Unavailable:
		w.Header().Set("Retry-After", "5")
		return caddyhttp.Error(http.StatusServiceUnavailable, errors.New("the shared cache cannot say whether this session exists"))
	case session.NotReady:
		// This process has not read the other replicas' logouts yet: a
		// moment's wait rather than a logged-out session let in.
		w.Header().Set("Retry-After", "2")
		return caddyhttp.Error(http.StatusServiceUnavailable, errors.New("the revocation set is not loaded yet"))
	case session.Revoked, session.RefreshTooOld:
		h.logger.Info("session refused", zap.String("reason", l.Refusal.String()), zap.String("sub", l.Session.Subject()))
		h.sessions.Clear(w, r, l.Session)
		return h.challenge(w, r, "invalid_token")
	case session.NoSession:
	default:
		// A cookie that does not open here (another route, a rotated-out
		// secret, tampering) or an expired session: the user logs in again.
		if c := h.logger.Check(zapcore.DebugLevel, "session refused"); c != nil {
			c.Write(zap.String("reason", l.Refusal.String()), zap.String("path", r.URL.Path))
		}
	}
	return h.challenge(w, r, "")
}

// Interface guards
var (
	_ caddy.Provisioner           = (*Handler)(nil)
	_ caddy.CleanerUpper          = (*Handler)(nil)
	_ caddyhttp.MiddlewareHandler = (*Handler)(nil)
)

func timeDuration(d caddy.Duration) time.Duration { return time.Duration(d) }

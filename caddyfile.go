package caddyoidc

import (
	"fmt"
	"math"
	"strconv"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	"github.com/caddyserver/caddy/v2/caddyconfig/httpcaddyfile"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"github.com/dustin/go-humanize"
)

func init() {
	httpcaddyfile.RegisterHandlerDirective("oidc", parseCaddyfile)
	// Run where Caddy's own authentication handlers run: no `order` line needed.
	httpcaddyfile.RegisterDirectiveOrder("oidc", httpcaddyfile.After, "basic_auth")
	httpcaddyfile.RegisterGlobalOption("oidc", parseGlobalOption)
}

func parseCaddyfile(h httpcaddyfile.Helper) (caddyhttp.MiddlewareHandler, error) {
	var m Handler
	err := m.UnmarshalCaddyfile(h.Dispenser)
	return &m, err
}

// UnmarshalCaddyfile sets up the handler from Caddyfile tokens. Syntax:
//
//	oidc {
//		issuer                   <url>
//		client_id                <id>
//		client_secret            <secret>
//		client_auth_method       client_secret_basic|client_secret_post|private_key_jwt|none
//		client_private_key       <PEM file>
//		client_key_id            <kid>
//		client_key_alg           <alg>
//		redirect_uri             <path|url>
//		scopes                   <scope...>
//		session_secret           <secret> [<older secret>...]
//		session_store            cookie|cache
//		session_lifetime         <duration>
//		session_idle_timeout     <duration>
//		cookie_name              <name>
//		cookie_samesite          lax|strict|none
//		end_session_method       post|get
//		introspection_endpoint   <url>
//		userinfo_path            <path>
//		health_path              <path>
//		logout_path              <path>
//		post_logout_redirect_uri <path|url>
//		backchannel_logout_path  <path>
//		frontchannel_logout_path <path>
//		refresh_before           <duration>
//		refresh_token_max_age    <duration>
//		clock_skew               <duration>
//		idp_timeout              <duration>
//		allow_users              <email|sub...>
//		allow_domains            <domain...>
//		allow_groups             <group...>
//		allow_roles              <role...>
//		allow_expression         <CEL over claims>
//		groups_claim             <claim path>
//		roles_claim              <claim path>
//		require_email_verified   true|false
//		exclude                  <path...>
//		par
//		request_object
//		dpop
//		client_certificate       <cert file> <key file>
//		profile                  fapi2
//		header                   <name> <value>
//		auth_param               <name> <value>
//		userinfo                 [auto|on|off]
//		acr_values               <acr...>
//		max_age                  <duration>
//		response_mode            query|form_post
//		preserve_post            [<size>]
//		bearer
//		bearer_audience          <audience...>
//		bearer_dpop              allowed|required
//		assertion
//		assertion_jwks_path      <path>
//		assertion_issuer         <iss>
//		assertion_audience       <aud>
//		assertion_lifetime       <duration>
//	}
func (h *Handler) UnmarshalCaddyfile(d *caddyfile.Dispenser) error {
	d.Next() // the directive's name
	if d.NextArg() {
		return d.ArgErr()
	}
	// bearer turns bearer tokens on; bearer_audience and
	// introspection_endpoint only tune them.
	bearer, bearerOn := h.Bearer, h.Bearer != nil
	if bearer == nil {
		bearer = new(BearerConfig)
	}
	// Likewise assertion and its assertion_* settings.
	assertion, assertionOn := h.Assertion, h.Assertion != nil
	if assertion == nil {
		assertion = new(AssertionConfig)
	}
	for nesting := d.Nesting(); d.NextBlock(nesting); {
		field := d.Val()
		switch field {
		case "issuer", "client_id", "client_secret", "redirect_uri", "session_store",
			"logout_path", "post_logout_redirect_uri", "backchannel_logout_path", "frontchannel_logout_path", "cookie_name", "cookie_samesite", "end_session_method", "introspection_endpoint", "userinfo_path", "health_path",
			"allow_expression", "groups_claim", "roles_claim", "response_mode",
			"client_auth_method", "client_private_key", "client_key_id", "client_key_alg",
			"assertion_jwks_path", "assertion_issuer", "assertion_audience":
			if !d.NextArg() {
				return d.ArgErr()
			}
			v := d.Val()
			if d.NextArg() {
				return d.Errf("%s takes exactly one value", field)
			}
			*h.stringField(field, bearer, assertion) = v
		case "require_email_verified":
			if !d.NextArg() {
				return d.ArgErr()
			}
			v, err := strconv.ParseBool(d.Val())
			if err != nil {
				return d.Errf("require_email_verified: %q is not true or false", d.Val())
			}
			h.Allow.RequireEmailVerified = &v
		case "bearer", "assertion":
			if d.NextArg() {
				return d.Errf("%s takes no value", field)
			}
			if field == "bearer" {
				bearerOn = true
			} else {
				assertionOn = true
			}
		case "userinfo":
			// Bare, as before modes existed, it means on.
			h.Login.UserInfo = UserInfoOn
			if d.NextArg() {
				switch mode := d.Val(); mode {
				case UserInfoAuto, UserInfoOn, UserInfoOff:
					h.Login.UserInfo = mode
				default:
					return d.Errf("userinfo %q is unknown; use auto, on or off", mode)
				}
			}
			if d.NextArg() {
				return d.ArgErr()
			}
		case "scopes", "session_secret", "allow_users", "allow_domains", "allow_groups", "allow_roles", "exclude", "bearer_audience", "acr_values":
			args := d.RemainingArgs()
			if len(args) == 0 {
				return d.ArgErr()
			}
			list := h.listField(field, bearer)
			*list = append(*list, args...)
		case "session_lifetime", "session_idle_timeout", "refresh_before", "refresh_token_max_age", "clock_skew", "idp_timeout", "max_age", "assertion_lifetime":
			if !d.NextArg() {
				return d.ArgErr()
			}
			dur, err := caddy.ParseDuration(d.Val())
			if err != nil {
				return d.Errf("%s: %v", field, err)
			}
			if d.NextArg() {
				return d.Errf("%s takes exactly one value", field)
			}
			if field == "max_age" && dur <= 0 {
				return d.Errf("max_age %s must be a positive duration (e.g. 10m); leave it out for no limit", dur)
			}
			*h.durationField(field, assertion) = caddy.Duration(dur)
		case "provider":
			p, err := parseProvider(d)
			if err != nil {
				return err
			}
			h.Providers = append(h.Providers, p)
		case "preserve_post":
			// Alone it keeps forms of up to 64 KiB.
			size := uint64(defaultPreservePost)
			if d.NextArg() {
				n, err := humanize.ParseBytes(d.Val())
				if err != nil || n < minPreservePost || n > maxPreservePost {
					return d.Errf("preserve_post: %q is not a size from 1KiB to 512KiB (e.g. 64KiB)", d.Val())
				}
				size = n
			}
			if d.NextArg() {
				return d.Errf("preserve_post takes at most one value, the size")
			}
			h.Login.PreservePost = int64(size)
		case "bearer_dpop_origins":
			args := d.RemainingArgs()
			if len(args) == 0 {
				return d.ArgErr()
			}
			bearer.DPoPOrigins = append(bearer.DPoPOrigins, args...)
		case "bearer_dpop":
			if !d.NextArg() {
				return d.ArgErr()
			}
			switch mode := d.Val(); mode {
			case DPoPAllowed, DPoPRequired:
				bearer.DPoP = mode
			default:
				return d.Errf("bearer_dpop %q is unknown; use allowed or required", mode)
			}
			if d.NextArg() {
				return d.ArgErr()
			}
		case "auth_param":
			args := d.RemainingArgs()
			if len(args) != 2 {
				return d.Errf("auth_param takes a name and a value, e.g. auth_param prompt login")
			}
			if h.Login.AuthParams == nil {
				h.Login.AuthParams = make(map[string]string)
			}
			h.Login.AuthParams[args[0]] = args[1]
		case "par", "request_object", "dpop":
			if d.NextArg() {
				return d.Errf("%s takes no value", field)
			}
			switch field {
			case "par":
				h.Login.PAR = true
			case "request_object":
				h.Login.RequestObject = true
			default:
				h.Client.DPoP = true
			}
		case "client_certificate":
			args := d.RemainingArgs()
			if len(args) != 2 {
				return d.Errf("client_certificate takes the certificate file and its key file (PEM)")
			}
			h.Client.Certificate, h.Client.CertificateKey = args[0], args[1]
		case "profile":
			if !d.NextArg() {
				return d.ArgErr()
			}
			h.Profile = d.Val()
			if d.NextArg() {
				return d.Errf("profile takes exactly one value")
			}
		case "header":
			args := d.RemainingArgs()
			if len(args) != 2 {
				return d.Errf("header takes a name and a value, e.g. header X-Auth-Email {http.auth.user.email}")
			}
			if h.Header == nil {
				h.Header = make(map[string]string)
			}
			h.Header[args[0]] = args[1]
		default:
			return d.Errf("unrecognized subdirective %q", field)
		}
	}
	switch {
	case bearerOn:
		h.Bearer = bearer
	case len(bearer.Audience) > 0 || bearer.IntrospectionEndpoint != "" || bearer.DPoP != "" || len(bearer.DPoPOrigins) > 0:
		return d.Errf("bearer_audience, bearer_dpop and introspection_endpoint tune bearer tokens: add `bearer` to accept them")
	}
	switch {
	case assertionOn:
		h.Assertion = assertion
	case *assertion != AssertionConfig{}:
		return d.Errf("assertion_jwks_path, assertion_issuer, assertion_audience and assertion_lifetime tune the identity assertion: add `assertion` to sign it")
	}
	return nil
}

func (h *Handler) stringField(name string, bearer *BearerConfig, assertion *AssertionConfig) *string {
	return map[string]*string{
		"issuer": &h.Issuer, "client_id": &h.Client.ID, "client_secret": &h.Client.Secret,
		"redirect_uri": &h.Login.RedirectURI, "session_store": &h.Session.Store, "logout_path": &h.Logout.Path,
		"post_logout_redirect_uri": &h.Logout.PostLogoutRedirectURI, "backchannel_logout_path": &h.Logout.BackchannelPath,
		"frontchannel_logout_path": &h.Logout.FrontchannelPath,
		"allow_expression":         &h.Allow.Expression, "groups_claim": &h.GroupsClaim, "roles_claim": &h.RolesClaim,
		"client_auth_method": &h.Client.AuthMethod, "client_private_key": &h.Client.PrivateKey,
		"client_key_id": &h.Client.KeyID, "client_key_alg": &h.Client.KeyAlg,
		"cookie_name": &h.Session.CookieName, "cookie_samesite": &h.Session.CookieSameSite,
		"end_session_method": &h.Logout.EndSessionMethod, "introspection_endpoint": &bearer.IntrospectionEndpoint,
		"userinfo_path": &h.UserInfoPath, "health_path": &h.HealthPath,
		"response_mode":       &h.Login.ResponseMode,
		"assertion_jwks_path": &assertion.JWKSPath, "assertion_issuer": &assertion.Issuer, "assertion_audience": &assertion.Audience,
	}[name]
}

func (h *Handler) listField(name string, bearer *BearerConfig) *[]string {
	return map[string]*[]string{
		"scopes": &h.Login.Scopes, "session_secret": &h.Session.Secrets, "allow_users": &h.Allow.Users,
		"allow_domains": &h.Allow.Domains, "allow_groups": &h.Allow.Groups, "allow_roles": &h.Allow.Roles,
		"exclude": &h.Exclude, "bearer_audience": &bearer.Audience, "acr_values": &h.Login.ACRValues,
	}[name]
}

func (h *Handler) durationField(name string, assertion *AssertionConfig) *caddy.Duration {
	return map[string]*caddy.Duration{
		"session_lifetime": &h.Session.Lifetime, "session_idle_timeout": &h.Session.IdleTimeout,
		"refresh_before": &h.Session.RefreshBefore, "refresh_token_max_age": &h.Session.RefreshTokenMaxAge, "clock_skew": &h.ClockSkew,
		"idp_timeout": &h.IdPTimeout, "max_age": &h.Login.MaxAge, "assertion_lifetime": &assertion.Lifetime,
	}[name]
}

// parseGlobalOption sets up the `oidc` app from the global option. Syntax:
//
//	{
//		oidc {
//			refresh_lease   <duration>
//			refresh_handoff <duration>
//			cache memory|valkey {
//				address         <host:port...>
//				username        <name>
//				password        <password>
//				db              <n>
//				key_prefix      <prefix>
//				tls
//				tls_server_name <name>
//				sentinel_master <name>
//				timeout         <duration>
//				l1_max_bytes    <size>
//				l1_max_entries  <n>
//			}
//		}
//	}
func parseGlobalOption(d *caddyfile.Dispenser, _ any) (any, error) {
	app := new(App)
	d.Next() // the option's name
	if d.NextArg() {
		return nil, d.ArgErr()
	}
	for nesting := d.Nesting(); d.NextBlock(nesting); {
		switch d.Val() {
		case "cache":
			if app.Cache != nil {
				return nil, d.Err("cache is configured twice")
			}
			c, err := parseCache(d)
			if err != nil {
				return nil, err
			}
			app.Cache = c
		case "refresh_lease", "refresh_handoff":
			field := d.Val()
			if !d.NextArg() {
				return nil, d.ArgErr()
			}
			dur, err := caddy.ParseDuration(d.Val())
			if err != nil || dur <= 0 {
				return nil, d.Errf("%s: %q is not a positive duration", field, d.Val())
			}
			if d.NextArg() {
				return nil, d.Errf("%s takes exactly one value", field)
			}
			if field == "refresh_lease" {
				app.RefreshLease = caddy.Duration(dur)
			} else {
				app.RefreshHandOff = caddy.Duration(dur)
			}
		default:
			return nil, d.Errf("unrecognized oidc global option %q", d.Val())
		}
	}
	return httpcaddyfile.App{Name: "oidc", Value: caddyconfig.JSON(app, nil)}, nil
}

func parseCache(d *caddyfile.Dispenser) (*CacheConfig, error) {
	c := new(CacheConfig)
	if !d.NextArg() {
		return nil, d.Err("cache needs a backend: memory or valkey")
	}
	c.Backend = d.Val()
	if c.Backend != "memory" && c.Backend != "valkey" {
		return nil, d.Errf("cache backend %q is unknown; use memory or valkey", c.Backend)
	}
	if d.NextArg() {
		return nil, d.ArgErr()
	}
	for nesting := d.Nesting(); d.NextBlock(nesting); {
		field := d.Val()
		if c.Backend == "memory" && field != "l1_max_bytes" && field != "l1_max_entries" {
			return nil, d.Errf("cache memory takes only l1_max_bytes and l1_max_entries, not %q", field)
		}
		switch field {
		case "address":
			c.Address = append(c.Address, d.RemainingArgs()...)
			if len(c.Address) == 0 {
				return nil, d.ArgErr()
			}
		case "tls":
			if d.NextArg() {
				return nil, d.ArgErr()
			}
			c.TLS = true
		case "username", "password", "key_prefix", "tls_server_name", "sentinel_master", "db", "timeout", "l1_max_bytes", "l1_max_entries":
			if !d.NextArg() {
				return nil, d.ArgErr()
			}
			v := d.Val()
			if d.NextArg() {
				return nil, d.Errf("%s takes exactly one value", field)
			}
			if err := c.set(field, v); err != nil {
				return nil, d.Errf("%s: %v", field, err)
			}
		default:
			return nil, d.Errf("unrecognized cache subdirective %q", field)
		}
	}
	return c, nil
}

func (c *CacheConfig) set(field, v string) error {
	switch field {
	case "username":
		c.Username = v
	case "password":
		c.Password = v
	case "key_prefix":
		c.KeyPrefix = v
	case "tls_server_name":
		c.TLSServerName = v
	case "sentinel_master":
		c.SentinelMaster = v
	case "db":
		n, err := strconv.Atoi(v)
		if err != nil || n < 0 {
			return fmt.Errorf("%q is not a database number", v)
		}
		c.DB = n
	case "timeout":
		dur, err := caddy.ParseDuration(v)
		if err != nil {
			return err
		}
		c.Timeout = caddy.Duration(dur)
	case "l1_max_bytes":
		n, err := humanize.ParseBytes(v)
		if err != nil || n == 0 || n > math.MaxInt64 {
			return fmt.Errorf("%q is not a size (e.g. 64MiB)", v)
		}
		c.L1MaxBytes = int64(n)
	case "l1_max_entries":
		n, err := strconv.Atoi(v)
		if err != nil || n <= 0 {
			return fmt.Errorf("%q is not a positive number", v)
		}
		c.L1MaxEntries = n
	}
	return nil
}

// Interface guards
var _ caddyfile.Unmarshaler = (*Handler)(nil)

package caddyoidc

import (
	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	"github.com/caddyserver/caddy/v2/caddyconfig/httpcaddyfile"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
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
//		redirect_uri             <path|url>
//		scopes                   <scope...>
//		session_secret           <secret> [<older secret>...]
//		session_store            cookie|cache
//		session_lifetime         <duration>
//		session_idle_timeout     <duration>
//		cookie_name              <name>
//		logout_path              <path>
//		post_logout_redirect_uri <path|url>
//		backchannel_logout_path  <path>
//		refresh_before           <duration>
//		clock_skew               <duration>
//		allow_users              <email|sub...>
//		allow_domains            <domain...>
//		allow_groups             <group...>
//		allow_roles              <role...>
//		exclude                  <path...>
//		header                   <name> <value>
//	}
func (h *Handler) UnmarshalCaddyfile(d *caddyfile.Dispenser) error {
	d.Next() // the directive's name
	if d.NextArg() {
		return d.ArgErr()
	}
	for nesting := d.Nesting(); d.NextBlock(nesting); {
		field := d.Val()
		switch field {
		case "issuer", "client_id", "client_secret", "redirect_uri", "session_store",
			"logout_path", "post_logout_redirect_uri", "backchannel_logout_path", "cookie_name":
			if !d.NextArg() {
				return d.ArgErr()
			}
			v := d.Val()
			if d.NextArg() {
				return d.Errf("%s takes exactly one value", field)
			}
			*h.stringField(field) = v
		case "scopes", "session_secret", "allow_users", "allow_domains", "allow_groups", "allow_roles", "exclude":
			args := d.RemainingArgs()
			if len(args) == 0 {
				return d.ArgErr()
			}
			list := h.listField(field)
			*list = append(*list, args...)
		case "session_lifetime", "session_idle_timeout", "refresh_before", "clock_skew":
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
			*h.durationField(field) = caddy.Duration(dur)
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
	return nil
}

func (h *Handler) stringField(name string) *string {
	return map[string]*string{
		"issuer": &h.Issuer, "client_id": &h.ClientID, "client_secret": &h.ClientSecret,
		"redirect_uri": &h.RedirectURI, "session_store": &h.SessionStore, "logout_path": &h.LogoutPath,
		"post_logout_redirect_uri": &h.PostLogoutRedirectURI, "backchannel_logout_path": &h.BackchannelLogoutPath,
		"cookie_name": &h.CookieName,
	}[name]
}

func (h *Handler) listField(name string) *[]string {
	return map[string]*[]string{
		"scopes": &h.Scopes, "session_secret": &h.SessionSecret, "allow_users": &h.AllowUsers,
		"allow_domains": &h.AllowDomains, "allow_groups": &h.AllowGroups, "allow_roles": &h.AllowRoles,
		"exclude": &h.Exclude,
	}[name]
}

func (h *Handler) durationField(name string) *caddy.Duration {
	return map[string]*caddy.Duration{
		"session_lifetime": &h.SessionLifetime, "session_idle_timeout": &h.SessionIdleTimeout,
		"refresh_before": &h.RefreshBefore, "clock_skew": &h.ClockSkew,
	}[name]
}

// parseGlobalOption sets up the `oidc` app from the global option. Syntax:
//
//	{
//		oidc
//	}
//
// The app runs on memory alone; its block takes no options in this build.
func parseGlobalOption(d *caddyfile.Dispenser, _ any) (any, error) {
	app := new(App)
	d.Next() // the option's name
	if d.NextArg() {
		return nil, d.ArgErr()
	}
	for nesting := d.Nesting(); d.NextBlock(nesting); {
		return nil, d.Errf("unrecognized oidc global option %q", d.Val())
	}
	return httpcaddyfile.App{Name: "oidc", Value: caddyconfig.JSON(app, nil)}, nil
}

// Interface guards
var _ caddyfile.Unmarshaler = (*Handler)(nil)

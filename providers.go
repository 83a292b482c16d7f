package caddyoidc

import (
	"bytes"
	"cmp"
	"context"
	"crypto/rand"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"html/template"
	"net/http"
	"net/url"
	"regexp"
	"slices"
	"strings"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"go.uber.org/zap"

	"github.com/caddy-oidc/caddy-oidc/internal/provider"
)

// ProviderConfig is one of several identity providers a site offers (staff
// through Entra ID, contractors through Google, say). Each has its own
// issuer, client, session cookie and endpoints; everything it does not set
// comes from the enclosing oidc block.
type ProviderConfig struct {
	// A short name (lowercase letters, digits and -), unique in the block.
	// It names the provider's cookie (<cookie_name>_<name>) and endpoints
	// (<redirect_uri>/<name>, <logout_path>/<name>, and the back- and
	// front-channel logout paths with /<name>), which is what to register
	// at its IdP. Required.
	Name string `json:"name"`
	// The provider's button on the chooser page. Default: the name.
	Label string `json:"label,omitempty"`
	// Email domains whose login_hint (a login_hint query parameter of the
	// request that starts the login) goes straight to this provider,
	// without the chooser: @corp.example to Entra ID.
	LoginHintDomains []string `json:"login_hint_domains,omitempty"`
	// This provider's settings, in the handler's own JSON form (issuer,
	// client, ...), over those of the enclosing block.
	Config json.RawMessage `json:"config,omitempty"`
}

// chooser serves a block with several providers: it dispatches each
// request to the provider whose endpoint, session or login_hint it is, and
// offers the others a choice.
type chooser struct {
	h        *Handler // the enclosing block: its exclude, logout, session info and health paths
	children []*childProvider
}

// providerQuery is the query parameter the chooser's links carry.
const providerQuery = "oidc_provider"

var providerName = regexp.MustCompile(`^[a-z0-9][a-z0-9-]{0,31}$`)

// provisionProviders builds one complete handler per provider, each from
// this block's configuration with the provider's own settings over it.
func (h *Handler) provisionProviders(ctx caddy.Context, logger *zap.Logger) error {
	if len(h.Providers) < 2 {
		return errors.New("provider: a site with one provider needs no provider block: put its settings in the oidc block itself (a chooser needs at least two)")
	}
	if h.Issuer != "" || h.Client.ID != "" {
		return errors.New("provider: with provider blocks, issuer and client_id go inside each provider, not in the enclosing block")
	}
	if h.Bearer != nil {
		return errors.New("provider: bearer goes inside the provider whose tokens are accepted, not in the enclosing block")
	}
	// The enclosing block as the providers inherit it: what was
	// configured, before defaults (each provider applies its own).
	base := *h
	base.Providers = nil
	baseJSON, err := json.Marshal(&base)
	if err != nil {
		return err
	}
	// What the providers inherit, decoded afresh: base shares pointers
	// (assertion) with h, which applyDefaults below fills in.
	var inherited Handler
	if err := json.Unmarshal(baseJSON, &inherited); err != nil {
		return err
	}
	h.applyDefaults()
	seenDomain := map[string]string{}
	ch := &chooser{h: h}
	for i, p := range h.Providers {
		if !providerName.MatchString(p.Name) {
			return fmt.Errorf("provider #%d: name %q must be lowercase letters, digits and - (at most 32)", i+1, p.Name)
		}
		for _, c := range ch.children {
			if c.name == p.Name {
				return fmt.Errorf("provider %s: the name is used twice", p.Name)
			}
		}
		for _, d := range p.LoginHintDomains {
			d = strings.ToLower(strings.TrimPrefix(d, "@"))
			if other, dup := seenDomain[d]; dup {
				return fmt.Errorf("provider %s: login_hint_domains %s is %s's already", p.Name, d, other)
			}
			seenDomain[d] = p.Name
		}
		child := new(Handler)
		if err := json.Unmarshal(baseJSON, child); err != nil {
			return err
		}
		if len(p.Config) > 0 {
			dec := json.NewDecoder(bytes.NewReader(p.Config))
			dec.DisallowUnknownFields()
			if err := dec.Decode(child); err != nil {
				return fmt.Errorf("provider %s: %w", p.Name, err)
			}
		}
		if len(child.Providers) > 0 {
			return fmt.Errorf("provider %s: providers do not nest", p.Name)
		}
		if child.Issuer == "" {
			return fmt.Errorf("provider %s: issuer is required", p.Name)
		}
		deriveProviderDefaults(child, &inherited, p.Name)
		if err := child.provision(ctx, logger.With(zap.String("provider", p.Name))); err != nil {
			return fmt.Errorf("provider %s: %w", p.Name, err)
		}
		child.identity.provider = p.Name
		ch.children = append(ch.children, &childProvider{name: p.Name, label: cmp.Or(p.Label, p.Name), domains: p.LoginHintDomains, h: child})
	}
	// The enclosing block's own endpoints: the chooser's logout, session
	// info and health dispatch to the providers.
	h.logger = logger
	h.warned = new(warnings)
	if len(h.Exclude) > 0 {
		h.exclude = caddyhttp.MatchPath(h.Exclude)
		if err := h.exclude.Provision(ctx); err != nil {
			return fmt.Errorf("exclude: %w", err)
		}
	}
	h.chooser = ch
	return ch.validateProviderPaths()
}

// deriveProviderDefaults gives a provider its own cookie and endpoints
// where it inherited the enclosing block's: two providers never share a
// cookie, a callback or a logout path.
func deriveProviderDefaults(child, h *Handler, name string) {
	suffix := func(own *string, inherited, def string) {
		if *own == inherited {
			*own = cmp.Or(inherited, def) + "/" + name
		}
	}
	suffix(&child.Login.RedirectURI, h.Login.RedirectURI, DefaultRedirectURI)
	suffix(&child.Logout.Path, h.Logout.Path, DefaultLogoutPath)
	suffix(&child.Logout.BackchannelPath, h.Logout.BackchannelPath, DefaultBackchannelLogoutPath)
	suffix(&child.Logout.FrontchannelPath, h.Logout.FrontchannelPath, DefaultFrontchannelLogoutPath)
	if child.Assertion != nil {
		// Each provider signs with its own keys: its own JWKS.
		inherited := ""
		if h.Assertion != nil {
			inherited = h.Assertion.JWKSPath
		}
		suffix(&child.Assertion.JWKSPath, inherited, DefaultAssertionJWKSPath)
	}
	if child.Session.CookieName == h.Session.CookieName {
		child.Session.CookieName = cmp.Or(h.Session.CookieName, DefaultCookieName) + "_" + name
	}
	// Health is the enclosing block's: ready when every provider is.
	// Session info stays: the provider the session is with answers it.
	child.HealthPath = ""
}

// validateProviderPaths refuses two providers (or a provider and the
// enclosing block) answering the same path.
func (ch *chooser) validateProviderPaths() error {
	owner := map[string]string{}
	claim := func(path, who string) error {
		if path == "" {
			return nil
		}
		if other, dup := owner[path]; dup && other != who {
			return fmt.Errorf("provider %s: path %s is also %s's", who, path, other)
		}
		owner[path] = who
		return nil
	}
	for _, p := range []string{ch.h.Logout.Path, ch.h.UserInfoPath, ch.h.HealthPath} {
		if err := claim(p, "the oidc block"); err != nil {
			return err
		}
	}
	for _, c := range ch.children {
		for _, p := range []string{c.h.callbackPath, c.h.Logout.Path, c.h.Logout.BackchannelPath, c.h.Logout.FrontchannelPath, c.h.assertions.jwksPath()} {
			if err := claim(p, c.name); err != nil {
				return err
			}
		}
	}
	return nil
}

// childProvider is one provisioned provider of a chooser block.
type childProvider struct {
	name, label string
	domains     []string
	h           *Handler
}

// hasSession reports a session cookie of this provider on r (whether it
// still opens is the provider's to decide).
func (c *childProvider) hasSession(r *http.Request) bool {
	_, err := r.Cookie(c.h.sessions.CookieName(r))
	return err == nil
}

// serveProviders dispatches a request of a site with several providers: a
// provider's own endpoints and its sessions go to it; a request without a
// session goes to the provider its login_hint or the chooser names, or gets
// the chooser page.
func (ch *chooser) serveProviders(w http.ResponseWriter, r *http.Request, next caddyhttp.Handler) error {
	for _, c := range ch.children {
		switch r.URL.Path {
		case c.h.callbackPath, c.h.Logout.Path, c.h.Logout.BackchannelPath, c.h.Logout.FrontchannelPath:
			return ch.delegate(c, w, r, next)
		}
		if p := c.h.assertions.jwksPath(); p != "" && p == r.URL.Path {
			return ch.delegate(c, w, r, next)
		}
	}
	if ch.h.excluded(r) {
		for _, c := range ch.children {
			c.h.identity.strip(r)
			c.h.sessions.StripCookies(r)
		}
		return next.ServeHTTP(w, r)
	}
	// A bearer token goes to the provider that issued it.
	if token, ok := bearerToken(r); ok {
		if c := ch.bearerProvider(token); c != nil {
			return ch.delegate(c, w, r, next)
		}
	}
	var signedIn *childProvider
	for _, c := range ch.children {
		if c.hasSession(r) {
			signedIn = c
			break
		}
	}
	switch r.URL.Path {
	case ch.h.Logout.Path:
		// The provider the user is signed in with (or names) logs them out.
		if c := ch.childNamed(r.URL.Query().Get(providerQuery)); c != nil {
			signedIn = c
		}
		if signedIn == nil {
			http.Redirect(w, r, "/", http.StatusFound)
			return nil
		}
		return ch.delegateTo(signedIn.h.Logout.Path, signedIn, w, r, next)
	case ch.h.UserInfoPath:
		if ch.h.UserInfoPath != "" {
			if signedIn == nil {
				w.Header().Set("Cache-Control", "no-store")
				w.Header().Set("WWW-Authenticate", `Bearer realm="oidc"`)
				return caddyhttp.Error(http.StatusUnauthorized, errors.New("no valid session"))
			}
			return ch.delegate(signedIn, w, r, next)
		}
	case ch.h.HealthPath:
		if ch.h.HealthPath != "" {
			return ch.serveProvidersHealth(w, r)
		}
	}
	if signedIn != nil {
		return ch.delegate(signedIn, w, r, next)
	}
	if c := ch.chosen(r); c != nil {
		// Forget the chooser's parameter: the login returns to the page
		// first asked for.
		q := r.URL.Query()
		q.Del(providerQuery)
		r.URL.RawQuery = q.Encode()
		return ch.delegate(c, w, r, next)
	}
	for _, c := range ch.children {
		c.h.identity.strip(r)
	}
	if isAPIRequest(r) {
		w.Header().Set("WWW-Authenticate", `Bearer realm="oidc"`)
		w.Header().Set("Cache-Control", "no-store")
		return caddyhttp.Error(http.StatusUnauthorized, errors.New("no valid session"))
	}
	return ch.serveChooser(w, r)
}

// delegateTo serves r as a request for path on provider c.
func (ch *chooser) delegateTo(path string, c *childProvider, w http.ResponseWriter, r *http.Request, next caddyhttp.Handler) error {
	r2 := r.Clone(r.Context())
	r2.URL.Path = path
	r2.URL.RawPath = ""
	return ch.delegate(c, w, r2, next)
}

// delegate hands r to provider c, without the other providers' cookies:
// they never reach its upstream.
func (ch *chooser) delegate(c *childProvider, w http.ResponseWriter, r *http.Request, next caddyhttp.Handler) error {
	for _, o := range ch.children {
		o.h.identity.strip(r)
		if o != c {
			o.h.sessions.StripCookies(r)
		}
	}
	return c.h.ServeHTTP(w, r, next)
}

// chosen is the provider the request names: by the chooser's parameter,
// or by the domain of its login_hint.
func (ch *chooser) chosen(r *http.Request) *childProvider {
	q := r.URL.Query()
	if c := ch.childNamed(q.Get(providerQuery)); c != nil {
		return c
	}
	hint := q.Get("login_hint")
	at := strings.LastIndexByte(hint, '@')
	if at < 0 {
		return nil
	}
	domain := hint[at+1:]
	for _, c := range ch.children {
		for _, d := range c.domains {
			if asciiEqualFold(strings.TrimPrefix(d, "@"), domain) {
				return c
			}
		}
	}
	return nil
}

func (ch *chooser) childNamed(name string) *childProvider {
	if name == "" {
		return nil
	}
	for _, c := range ch.children {
		if c.name == name {
			return c
		}
	}
	return nil
}

// bearerProvider picks the provider with bearer on whose issuer a JWT
// names (unverified: it only routes; the provider verifies), or the only
// one with bearer on.
func (ch *chooser) bearerProvider(token string) *childProvider {
	var withBearer []*childProvider
	for _, c := range ch.children {
		if c.h.Bearer != nil {
			withBearer = append(withBearer, c)
		}
	}
	if len(withBearer) == 1 {
		return withBearer[0]
	}
	iss := provider.UnverifiedIssuer(token)
	for _, c := range withBearer {
		if iss != "" && c.h.Issuer == iss {
			return c
		}
	}
	return nil
}

// serveProvidersHealth is ready when every provider's IdP is.
func (ch *chooser) serveProvidersHealth(w http.ResponseWriter, r *http.Request) error {
	w.Header().Set("Cache-Control", "no-store")
	w.Header().Set("Content-Type", "application/json")
	st := struct {
		Ready bool              `json:"ready"`
		IdP   map[string]string `json:"idp"`
	}{Ready: true, IdP: map[string]string{}}
	for _, c := range ch.children {
		ctx, cancel := context.WithTimeout(r.Context(), time.Duration(c.h.IdPTimeout))
		err := c.h.rp.Ready(ctx)
		cancel()
		st.IdP[c.name] = "ok"
		if err != nil {
			st.IdP[c.name], st.Ready = "unavailable", false
		}
	}
	if !st.Ready {
		w.Header().Set("Retry-After", "5")
		w.WriteHeader(http.StatusServiceUnavailable)
	}
	return json.NewEncoder(w).Encode(st)
}

// chooserPage lists the providers: each link is the page first asked for,
// with the provider named.
var chooserPage = template.Must(template.New("chooser").Parse(`<!doctype html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">
<title>Sign in</title>
<style nonce="{{.Nonce}}">
body{font-family:system-ui,-apple-system,"Segoe UI",sans-serif;background:#f4f5f7;color:#1d2330;display:flex;min-height:100vh;margin:0;align-items:center;justify-content:center}
main{background:#fff;border-radius:12px;box-shadow:0 2px 12px rgba(0,0,0,.08);padding:2rem 2.5rem;min-width:18rem;max-width:26rem}
h1{font-size:1.25rem;margin:0 0 1.25rem}
a{display:block;text-decoration:none;color:#1d2330;border:1px solid #d5d9e0;border-radius:8px;padding:.75rem 1rem;margin:.5rem 0;font-weight:500}
a:hover,a:focus{border-color:#3b6fe0;background:#f0f5ff;outline:none}
</style></head>
<body><main><h1>Sign in with</h1>
{{range .Providers}}<a href="{{.URL}}">{{.Label}}</a>
{{end}}</main></body></html>
`))

func (ch *chooser) serveChooser(w http.ResponseWriter, r *http.Request) error {
	nonce := make([]byte, 16)
	rand.Read(nonce)
	type link struct{ URL, Label string }
	var links []link
	target := returnTo(r)
	for _, c := range ch.children {
		u, _ := url.Parse(target)
		q := u.Query()
		q.Set(providerQuery, c.name)
		u.RawQuery = q.Encode()
		links = append(links, link{URL: u.String(), Label: c.label})
	}
	n := base64.RawStdEncoding.EncodeToString(nonce)
	w.Header().Set("Content-Security-Policy", "default-src 'none'; style-src 'nonce-"+n+"'; frame-ancestors 'none'; form-action 'none'")
	w.Header().Set("Content-Type", "text/html; charset=utf-8")
	w.Header().Set("Cache-Control", "no-store")
	w.Header().Set("Referrer-Policy", "same-origin")
	return chooserPage.Execute(w, struct {
		Nonce     string
		Providers []link
	}{n, links})
}

// parseProvider reads a `provider <name> { ... }` block: label and
// login_hint_domains are the provider's own; every other line is an oidc
// subdirective for this provider, parsed as the oidc block parses it.
func parseProvider(d *caddyfile.Dispenser) (ProviderConfig, error) {
	seg := d.NextSegment()
	if len(seg) < 2 || seg[1].Text == "{" {
		return ProviderConfig{}, d.Errf("provider needs a name: provider <name> { issuer ... }")
	}
	p := ProviderConfig{Name: seg[1].Text}
	if len(seg) < 4 || seg[2].Text != "{" {
		return p, d.Errf("provider %s needs a block with at least its issuer", p.Name)
	}
	body := seg[3 : len(seg)-1]
	kept := []caddyfile.Token{{File: seg[0].File, Line: seg[0].Line, Text: "oidc"}, seg[2]}
	for i := 0; i < len(body); {
		j := i + 1
		for j < len(body) && body[j].Line == body[i].Line {
			j++
		}
		line := body[i:j]
		switch line[0].Text {
		case "label":
			if len(line) != 2 {
				return p, d.Errf("provider %s: label takes one value (quote it if it has spaces)", p.Name)
			}
			p.Label = line[1].Text
		case "login_hint_domains":
			if len(line) < 2 {
				return p, d.Errf("provider %s: login_hint_domains needs at least one domain", p.Name)
			}
			for _, t := range line[1:] {
				p.LoginHintDomains = append(p.LoginHintDomains, t.Text)
			}
		case "provider":
			return p, d.Errf("provider %s: providers do not nest", p.Name)
		default:
			kept = append(kept, line...)
		}
		i = j
	}
	kept = append(kept, seg[len(seg)-1])
	var child Handler
	if err := child.UnmarshalCaddyfile(caddyfile.NewDispenser(kept)); err != nil {
		return p, err
	}
	raw, err := json.Marshal(&child)
	if err != nil {
		return p, err
	}
	if string(raw) != "{}" {
		p.Config = raw
	}
	return p, nil
}

// providersCleanup releases every provider's share of the app.
func (ch *chooser) providersCleanup() {
	for _, c := range slices.Backward(ch.children) {
		_ = c.h.Cleanup()
	}
}

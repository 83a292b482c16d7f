package caddyoidc

import (
	"encoding/json"
	"net/http"
	"net/url"
	"strings"
	"testing"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"

	"github.com/caddy-oidc/caddy-oidc/internal/testidp"
)

// newChooser provisions a block with two providers: staff (IdP a, domain
// corp.example) and contractors (IdP b).
func newChooser(t *testing.T, a, b *testidp.IdP, mod func(h *Handler)) *Handler {
	t.Helper()
	cfg := func(issuer, client string) json.RawMessage {
		raw, _ := json.Marshal(map[string]any{"issuer": issuer, "client": map[string]any{"client_id": client, "client_secret": "s3cret"}})
		return raw
	}
	h := &Handler{Session: SessionConfig{Secrets: []string{testSecret}},
		Header: map[string]string{"X-Auth-Email": "{http.auth.user.email}"},
		Providers: []ProviderConfig{
			{Name: "staff", Label: "Staff (Entra ID)", LoginHintDomains: []string{"corp.example"}, Config: cfg(a.Issuer, "staff-app")},
			{Name: "contractors", Config: cfg(b.Issuer, "ext-app")},
		}}
	if mod != nil {
		mod(h)
	}
	if err := h.provisionProviders(caddy.Context{}, nopLogger()); err != nil {
		t.Fatal(err)
	}
	if err := h.Validate(); err != nil {
		t.Fatal(err)
	}
	if err := h.attach(newTestApp(t)); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = h.Cleanup() })
	return h
}

func TestSeveralProviders(t *testing.T) {
	a, b := testidp.New(), testidp.New()
	defer a.Close()
	defer b.Close()
	h := newChooser(t, a, b, nil)
	staff, contractors := h.chooser.children[0].h, h.chooser.children[1].h
	if staff.callbackPath != "/oauth2/callback/staff" || contractors.Logout.Path != "/oauth2/logout/contractors" ||
		staff.Session.CookieName != "oidc_session_staff" || contractors.Logout.BackchannelPath != "/oauth2/backchannel_logout/contractors" {
		t.Errorf("provider endpoints: %s %s %s %s", staff.callbackPath, contractors.Logout.Path, staff.Session.CookieName, contractors.Logout.BackchannelPath)
	}

	// No session, a browser: the chooser, with a link per provider back to
	// the page asked for.
	code, next, w := serve(h, request("GET", "/reports?q=1"))
	body := w.Body.String()
	if code != http.StatusOK || next.called || !strings.Contains(body, "Staff (Entra ID)") || !strings.Contains(body, "contractors") ||
		!strings.Contains(body, `href="/reports?oidc_provider=staff&amp;q=1"`) || !strings.Contains(w.Header().Get("Content-Security-Policy"), "default-src 'none'") {
		t.Fatalf("chooser: %d %s", code, body)
	}
	// An API client gets 401, never the page.
	if code, _, _ := serve(h, apiRequest(request("GET", "/reports"))); code != http.StatusUnauthorized {
		t.Errorf("API request without a session: %d, want 401", code)
	}
	// A login_hint of a routed domain goes straight to its IdP; the
	// chooser's choice to the chosen one, returning to the page asked for.
	for target, wantIdP := range map[string]*testidp.IdP{
		"/reports?login_hint=bob@CORP.example": a,
		"/reports?oidc_provider=contractors":   b,
	} {
		code, _, w := serve(h, request("GET", target))
		loc, _ := url.Parse(w.Header().Get("Location"))
		if code != http.StatusFound || !strings.HasPrefix(loc.String(), wantIdP.Issuer) {
			t.Errorf("%s: %d to %s, want that provider's IdP", target, code, loc)
			continue
		}
		if ru := loc.Query().Get("redirect_uri"); !strings.HasSuffix(ru, "/oauth2/callback/"+map[*testidp.IdP]string{a: "staff", b: "contractors"}[wantIdP]) {
			t.Errorf("%s: redirect_uri %s", target, ru)
		}
		for _, c := range w.Result().Cookies() {
			if strings.Contains(c.Value, "oidc_provider") {
				t.Errorf("the chooser's parameter went into the login attempt")
			}
		}
	}

	// A staff session is served by staff; the contractors' cookie never
	// reaches the upstream; each provider's session is its own.
	r := loggedIn(t, staff, map[string]any{"sub": "u1", "email": "u1@corp.example", "email_verified": true}, nil)
	r.AddCookie(&http.Cookie{Name: "oidc_session_contractors", Value: "x"})
	code, next, _ = serve(h, r)
	if code != http.StatusOK || !next.called || next.req.Header.Get("X-Auth-Email") != "u1@corp.example" {
		t.Fatalf("staff session: %d", code)
	}
	if ck := next.req.Header.Get("Cookie"); ck != "" {
		t.Errorf("module cookies reached the upstream: %q", ck)
	}
}

// A session sealed for one provider never opens as another's, even with
// the same session secret and the cookie renamed.
func TestAttackSessionOfAnotherProvider(t *testing.T) {
	a, b := testidp.New(), testidp.New()
	defer a.Close()
	defer b.Close()
	h := newChooser(t, a, b, nil)
	r := loggedIn(t, h.chooser.children[0].h, map[string]any{"sub": "u1"}, nil)
	c, err := r.Cookie("oidc_session_staff")
	if err != nil {
		t.Fatal(err)
	}
	forged := apiRequest(request("GET", "/x"))
	forged.AddCookie(&http.Cookie{Name: "oidc_session_contractors", Value: c.Value})
	if code, next, _ := serve(h, forged); code != http.StatusUnauthorized || next.called {
		t.Errorf("staff's session renamed to the contractors' cookie: %d, want 401", code)
	}
}

func TestSeveralProvidersConfigErrors(t *testing.T) {
	a := testidp.New()
	defer a.Close()
	one := func(name, issuer string) ProviderConfig {
		raw, _ := json.Marshal(map[string]any{"issuer": issuer, "client": map[string]any{"client_id": "c"}})
		return ProviderConfig{Name: name, Config: raw}
	}
	for want, h := range map[string]*Handler{
		"at least two":            {Providers: []ProviderConfig{one("a", a.Issuer)}},
		"used twice":              {Providers: []ProviderConfig{one("a", a.Issuer), one("a", a.Issuer)}},
		"inside each provider":    {Issuer: a.Issuer, Providers: []ProviderConfig{one("a", a.Issuer), one("b", a.Issuer)}},
		"lowercase letters":       {Providers: []ProviderConfig{one("Staff", a.Issuer), one("b", a.Issuer)}},
		"issuer is required":      {Providers: []ProviderConfig{one("a", a.Issuer), {Name: "b"}}},
		"login_hint_domains x.io": {Providers: []ProviderConfig{{Name: "a", LoginHintDomains: []string{"x.io"}, Config: one("a", a.Issuer).Config}, {Name: "b", LoginHintDomains: []string{"@X.io"}, Config: one("b", a.Issuer).Config}}},
		"session_secret":          {Providers: []ProviderConfig{one("a", a.Issuer), one("b", a.Issuer)}},
		`unknown field "colour"`:  {Session: SessionConfig{Secrets: []string{testSecret}}, Providers: []ProviderConfig{one("a", a.Issuer), {Name: "b", Config: json.RawMessage(`{"issuer":"` + a.Issuer + `","colour":"blue"}`)}}},
	} {
		if h.Session.Secrets == nil && want != "session_secret" {
			h.Session.Secrets = []string{testSecret}
		}
		err := h.provisionProviders(caddy.Context{}, nopLogger())
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("want an error containing %q, got %v", want, err)
		}
	}
}

func TestProviderCaddyfile(t *testing.T) {
	var h Handler
	err := h.UnmarshalCaddyfile(caddyfile.NewTestDispenser(`oidc {
		session_secret s
		header X-Auth-Email {http.auth.user.email}
		provider staff {
			label "Staff (Entra ID)"
			issuer https://login.microsoftonline.com/t/v2.0
			client_id staff-app
			login_hint_domains corp.example
			allow_groups admins
		}
		provider contractors {
			issuer https://accounts.google.com
			client_id ext-app
		}
		exclude /healthz
	}`))
	if err != nil {
		t.Fatal(err)
	}
	if len(h.Providers) != 2 || h.Providers[0].Label != "Staff (Entra ID)" || h.Providers[0].LoginHintDomains[0] != "corp.example" ||
		string(h.Providers[0].Config) != `{"issuer":"https://login.microsoftonline.com/t/v2.0","client":{"client_id":"staff-app"},"allow":{"allow_groups":["admins"]}}` ||
		h.Exclude[0] != "/healthz" || h.Issuer != "" {
		raw, _ := json.Marshal(h)
		t.Errorf("parsed: %s", raw)
	}
	for src, want := range map[string]string{
		"oidc {\n provider {\n issuer x\n }\n}":                   "provider needs a name",
		"oidc {\n provider a\n}":                                  "needs a block",
		"oidc {\n provider a {\n provider b {\n }\n }\n}":         "do not nest",
		"oidc {\n provider a {\n colour blue\n }\n}":              "colour",
		"oidc {\n provider a {\n label\n issuer https://x\n }\n}": "label takes one value",
	} {
		var h Handler
		if err := h.UnmarshalCaddyfile(caddyfile.NewTestDispenser(src)); err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("%q: got %v, want %q", src, err, want)
		}
	}
}

// Each provider of a chooser block signs assertions with its own keys and
// serves them at its own JWKS path, without a session.
func TestSeveralProvidersAssertionKeys(t *testing.T) {
	a, b := testidp.New(), testidp.New()
	defer a.Close()
	defer b.Close()
	h := newChooser(t, a, b, func(h *Handler) { h.Assertion = &AssertionConfig{} })
	kids := map[string]bool{}
	for _, name := range []string{"staff", "contractors"} {
		code, next, w := serve(h, request("GET", "/oauth2/jwks.json/"+name))
		if code != http.StatusOK || next.called || !strings.Contains(w.Body.String(), `"kid"`) {
			t.Fatalf("%s JWKS: %d %s", name, code, w.Body.String())
		}
		kids[w.Body.String()] = true
	}
	if len(kids) != 2 {
		t.Error("the two providers serve the same keys")
	}
}

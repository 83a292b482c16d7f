package caddyoidc

import (
	"context"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/lestrrat-go/jwx/v2/jwk"
	"github.com/lestrrat-go/jwx/v2/jwt"

	"github.com/caddy-oidc/caddy-oidc/internal/testidp"
)

const assertionHeader = "X-Identity-Assertion"

// assertionHandler is a route that signs assertions and passes them in a
// header, as the README shows.
func assertionHandler(t testing.TB, idp *testidp.IdP, mod func(h *Handler)) *Handler {
	t.Helper()
	return newTestHandler(t, idp, func(h *Handler) {
		h.Assertion = &AssertionConfig{}
		h.Header[assertionHeader] = "{http.auth.user.assertion}"
		if mod != nil {
			mod(h)
		}
	})
}

// onHost moves a request to another site (Host), as a browser on it would send it.
func onHost(r *http.Request, host string) *http.Request {
	r.Host = host
	return r
}

// fetchJWKS reads the route's JWKS as an upstream does: no session.
func fetchJWKS(t *testing.T, h *Handler) jwk.Set {
	t.Helper()
	code, next, w := serve(h, request("GET", h.Assertion.JWKSPath))
	if code != 200 || next.called {
		t.Fatalf("JWKS: %d (passed on: %v)", code, next.called)
	}
	if ct := w.Header().Get("Content-Type"); ct != "application/jwk-set+json" {
		t.Errorf("JWKS Content-Type %q", ct)
	}
	set, err := jwk.Parse(w.Body.Bytes())
	if err != nil {
		t.Fatalf("JWKS does not parse: %v\n%s", err, w.Body.String())
	}
	return set
}

// assertionFor logs a user in on h and returns the assertion the upstream
// receives for a request to host.
func assertionFor(t *testing.T, h *Handler, claims map[string]any, host string) string {
	t.Helper()
	code, next, _ := serve(h, onHost(withCookies(loggedIn(t, h, claims, nil), "/x"), host))
	if code != 200 {
		t.Fatalf("request: %d", code)
	}
	tok := next.req.Header.Get(assertionHeader)
	if tok == "" {
		t.Fatal("no assertion reached the upstream")
	}
	return tok
}

// verify checks an assertion with jwx, a standard verifier, against a JWKS.
func verify(tok string, set jwk.Set, iss, aud string) (jwt.Token, error) {
	return jwt.Parse([]byte(tok), jwt.WithKeySet(set), jwt.WithIssuer(iss), jwt.WithAudience(aud), jwt.WithValidate(true))
}

// Issue 12.9: the upstream gets a signed assertion about the user that a
// standard verifier accepts with the keys at assertion_jwks_path: sub,
// email, name, groups, roles, iat, exp (60 s), jti; iss and aud the site.
func TestAssertionVerifiesAgainstJWKS(t *testing.T) {
	idp := testidp.New()
	defer idp.Close()
	h := assertionHandler(t, idp, nil)
	tok := assertionFor(t, h, map[string]any{"sub": "u1", "email": "u1@example.com", "email_verified": true, "name": "U One",
		"groups": []any{"staff", "ops"}, "roles": []any{"editor"}}, "app.example.com")
	parsed, err := verify(tok, fetchJWKS(t, h), "http://app.example.com", "http://app.example.com")
	if err != nil {
		t.Fatalf("the assertion does not verify: %v", err)
	}
	priv := parsed.PrivateClaims()
	if parsed.Subject() != "u1" || priv["email"] != "u1@example.com" || priv["email_verified"] != true || priv["idp"] != idp.Issuer || priv["name"] != "U One" || parsed.JwtID() == "" {
		t.Errorf("claims: sub %q, jti %q, %v", parsed.Subject(), parsed.JwtID(), priv)
	}
	if g, _ := json.Marshal(priv["groups"]); string(g) != `["staff","ops"]` {
		t.Errorf("groups %s", g)
	}
	if r, _ := json.Marshal(priv["roles"]); string(r) != `["editor"]` {
		t.Errorf("roles %s", r)
	}
	if life := parsed.Expiration().Sub(parsed.IssuedAt()); life != DefaultAssertionLifetime {
		t.Errorf("lifetime %s, want %s", life, DefaultAssertionLifetime)
	}
	// Configured iss and aud replace the site's origin.
	hc := assertionHandler(t, idp, func(h *Handler) {
		h.Assertion.Issuer, h.Assertion.Audience = "https://sso.example.com", "grafana"
	})
	tok = assertionFor(t, hc, map[string]any{"sub": "u1"}, "app.example.com")
	if _, err := verify(tok, fetchJWKS(t, hc), "https://sso.example.com", "grafana"); err != nil {
		t.Errorf("configured iss/aud: %v", err)
	}
}

// Issue 12.9, attack: an assertion of one route must not pass as another
// route's: another site's (aud), or another client's on the same site and
// the same session_secret (its keys are not in that route's JWKS).
func TestAttackAssertionOfAnotherRoute(t *testing.T) {
	idp := testidp.New()
	defer idp.Close()
	a := assertionHandler(t, idp, nil)
	b := newTestHandlerOn(t, a.app, idp, func(h *Handler) {
		h.Client.ID = "other-app"
		h.Assertion = &AssertionConfig{}
		h.Header[assertionHeader] = "{http.auth.user.assertion}"
	})
	tok := assertionFor(t, a, map[string]any{"sub": "victim"}, "a.example.com")
	if _, err := verify(tok, fetchJWKS(t, a), "http://a.example.com", "http://a.example.com"); err != nil {
		t.Fatalf("route A's own assertion: %v", err)
	}
	if _, err := verify(tok, fetchJWKS(t, a), "http://a.example.com", "http://b.example.com"); err == nil {
		t.Error("site a's assertion verified for site b (aud)")
	}
	if _, err := verify(tok, fetchJWKS(t, b), "http://a.example.com", "http://a.example.com"); err == nil {
		t.Error("route A's assertion verified with route B's keys (same secret, another client)")
	}
	// The same route on another host signs for that host only.
	tokB := assertionFor(t, a, map[string]any{"sub": "victim"}, "b.example.com")
	if _, err := verify(tokB, fetchJWKS(t, a), "http://b.example.com", "http://a.example.com"); err == nil {
		t.Error("an assertion made on host b verified for host a")
	}
}

// Issue 12.9, attack: an expired assertion is refused by a standard
// verifier (its exp is the signer's clock plus assertion_lifetime).
func TestAttackExpiredAssertionRefused(t *testing.T) {
	idp := testidp.New()
	defer idp.Close()
	h := assertionHandler(t, idp, func(h *Handler) { h.Assertion.Lifetime = caddy.Duration(10 * time.Second) })
	h.assertions.now = func() time.Time { return time.Now().Add(-11 * time.Second) }
	tok := assertionFor(t, h, map[string]any{"sub": "u1"}, "app.example.com")
	_, err := verify(tok, fetchJWKS(t, h), "http://app.example.com", "http://app.example.com")
	if err == nil || !strings.Contains(err.Error(), "exp") {
		t.Errorf("an assertion 1 s past its exp: %v, want refused for exp", err)
	}
}

// Issue 12.9, attack: a client-sent header of the assertion's name (in
// any spelling an upstream could read as it) never reaches the upstream:
// not beside the module's, and not on an excluded path either.
func TestAttackClientSentAssertionHeader(t *testing.T) {
	idp := testidp.New()
	defer idp.Close()
	h := assertionHandler(t, idp, func(h *Handler) { h.Exclude = []string{"/public/*"} })
	forged := "eyJhbGciOiJub25lIn0.eyJzdWIiOiJhZG1pbiJ9."
	spellings := []string{assertionHeader, "X_Identity_Assertion", "X.Identity.Assertion"}
	for _, path := range []string{"/x", "/public/page"} {
		r := withCookies(loggedIn(t, h, map[string]any{"sub": "u1"}, nil), path)
		for _, name := range spellings {
			r.Header[name] = []string{forged}
		}
		code, next, _ := serve(h, r)
		if code != 200 {
			t.Fatalf("%s: %d", path, code)
		}
		for name, v := range next.req.Header {
			if slices.Contains(v, forged) {
				t.Errorf("%s: the client's %s reached the upstream", path, name)
			}
		}
		if path == "/x" && next.req.Header.Get(assertionHeader) == "" {
			t.Errorf("%s: no assertion of the module's", path)
		}
	}
}

// Issue 12.9: a busy session is signed once per half lifetime, not per
// request; past that (or after a refresh) it gets a new assertion, with at
// least half of its lifetime left.
func TestAssertionIsCachedPerSession(t *testing.T) {
	idp := testidp.New()
	defer idp.Close()
	h := assertionHandler(t, idp, nil)
	clock := time.Now()
	h.assertions.now = func() time.Time { return clock }
	r := loggedIn(t, h, map[string]any{"sub": "u1"}, nil)
	get := func(host string) string {
		_, next, _ := serve(h, onHost(withCookies(r, "/x"), host))
		return next.req.Header.Get(assertionHeader)
	}
	first := get("app.example.com")
	if again := get("app.example.com"); again != first {
		t.Error("the second request of the session was signed again")
	}
	if other := get("other.example.com"); other == first {
		t.Error("another site got the first site's assertion")
	}
	if someoneElse := assertionFor(t, h, map[string]any{"sub": "u2"}, "app.example.com"); someoneElse == first {
		t.Error("another session got the first session's assertion")
	}
	clock = clock.Add(DefaultAssertionLifetime/2 + time.Second)
	renewed := get("app.example.com")
	if renewed == first {
		t.Fatal("an assertion past half its lifetime was served again")
	}
	parsed, err := jwt.Parse([]byte(renewed), jwt.WithKeySet(fetchJWKS(t, h)), jwt.WithValidate(false))
	if err != nil || parsed.IssuedAt().Unix() != clock.Unix() {
		t.Errorf("renewed assertion: %v, iat %v want %v", err, parsed.IssuedAt(), clock)
	}
}

// Issue 12.9: keys are the same across reloads and replicas (derived from
// session_secret), an older secret listed keeps its key in the JWKS, and a
// key a reload dropped stays published until its last assertion expired.
func TestAssertionKeysAcrossReloadsAndRotation(t *testing.T) {
	idp := testidp.New()
	defer idp.Close()
	const newSecret = "a-brand-new-session-secret-of-32-bytes-or-more"
	before := assertionHandler(t, idp, nil)
	tok := assertionFor(t, before, map[string]any{"sub": "u1"}, "app.example.com")
	// Another process (or the next config) with the same secret.
	replica := assertionHandler(t, idp, nil)
	if _, err := verify(tok, fetchJWKS(t, replica), "http://app.example.com", "http://app.example.com"); err != nil {
		t.Errorf("a replica's JWKS does not verify the first one's assertion: %v", err)
	}
	// Rotation, step 1: the new secret first, the old one listed after.
	rotated := assertionHandler(t, idp, func(h *Handler) { h.Session.Secrets = []string{newSecret, testSecret} })
	set := fetchJWKS(t, rotated)
	if set.Len() != 2 {
		t.Errorf("JWKS with two secrets has %d keys, want 2", set.Len())
	}
	if _, err := verify(tok, set, "http://app.example.com", "http://app.example.com"); err != nil {
		t.Errorf("the old key's assertion during the rotation: %v", err)
	}
	// The old secret dropped at once: its key stays until its assertions
	// (and a verifier's leeway) are over, then goes.
	dropped := assertionHandler(t, idp, func(h *Handler) { h.Session.Secrets = []string{newSecret} })
	_ = before.Cleanup()
	_ = replica.Cleanup()
	if _, err := verify(tok, fetchJWKS(t, dropped), "http://app.example.com", "http://app.example.com"); err != nil {
		t.Errorf("an assertion of a key retired a moment ago: %v", err)
	}
	dropped.assertions.now = func() time.Time {
		return time.Now().Add(DefaultAssertionLifetime + assertionVerifierLeeway + time.Second)
	}
	if n := fetchJWKS(t, dropped).Len(); n != 1 {
		t.Errorf("after its assertions expired, the retired key is still published (%d keys)", n)
	}
}

// Issue 12.9: assertion_jwks_path is answered only when assertions are on,
// to GET and HEAD.
func TestAssertionJWKSPath(t *testing.T) {
	idp := testidp.New()
	defer idp.Close()
	off := newTestHandler(t, idp, nil)
	if _, next, _ := serve(off, withCookies(loggedIn(t, off, map[string]any{"sub": "u"}, nil), DefaultAssertionJWKSPath)); !next.called {
		t.Error("without assertion the JWKS path is the upstream's")
	}
	h := assertionHandler(t, idp, func(h *Handler) { h.Assertion.JWKSPath = "/.well-known/jwks.json" })
	if code, _, w := serve(h, request("POST", "/.well-known/jwks.json")); code != http.StatusMethodNotAllowed || w.Header().Get("Allow") != "GET, HEAD" {
		t.Errorf("POST to the JWKS: %d", code)
	}
	if fetchJWKS(t, h).Len() != 1 {
		t.Error("JWKS of one secret: want one key")
	}
}

// Issue 12.9, bad input: each assertion subdirective fails at load with
// its name when misused.
func TestAssertionBadConfigFailsAtLoad(t *testing.T) {
	const good = "issuer https://idp.example.com\n client_id app\n session_secret " + testSecret + "\n"
	for name, tc := range map[string]struct{ body, want string }{
		"lifetime too short":   {good + " assertion\n assertion_lifetime 5s", "assertion_lifetime"},
		"lifetime too long":    {good + " assertion\n assertion_lifetime 2h", "assertion_lifetime"},
		"lifetime not a time":  {good + " assertion\n assertion_lifetime soon", "assertion_lifetime"},
		"path not a path":      {good + " assertion\n assertion_jwks_path jwks.json", "assertion_jwks_path"},
		"path is logout_path":  {good + " assertion\n assertion_jwks_path /oauth2/logout", "assertion_jwks_path"},
		"issuer not a URI":     {good + " assertion\n assertion_issuer :nope", "assertion_issuer"},
		"audience with space":  {good + " assertion\n assertion_audience \"a b\"", "assertion_audience"},
		"tuned but off":        {good + " assertion_lifetime 30s", "add `assertion`"},
		"placeholder but off":  {good + " header X-Identity-Assertion {http.auth.user.assertion}", "add `assertion`"},
		"assertion with value": {good + " assertion on", "assertion takes no value"},
	} {
		t.Run(name, func(t *testing.T) {
			out, err := adapt(t, "http://localhost:9999 {\n oidc {\n "+tc.body+"\n }\n}\n")
			if err == nil {
				var cfg caddy.Config
				if err = json.Unmarshal(out, &cfg); err == nil {
					err = caddy.Validate(&cfg)
				}
			}
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("got %v, want an error containing %q", err, tc.want)
			}
		})
	}
}

// Issue 12.10: caddy_oidc_ready{issuer,client} and its checks are on
// Caddy's metrics registry, read at scrape time: 0 until the IdP's
// discovery and keys are loaded, 1 once they are; a scrape fetches nothing.
func TestReadinessMetric(t *testing.T) {
	idp := testidp.New()
	defer idp.Close()
	ctx, cancel := caddy.NewContext(caddy.Context{Context: context.Background()})
	defer cancel()
	app := new(App)
	if err := app.Provision(ctx); err != nil {
		t.Fatal(err)
	}
	defer app.Cleanup()
	h := newTestHandlerOn(t, app, idp, func(h *Handler) { h.HealthPath = "/healthz" })
	scrape := func() map[string]float64 {
		t.Helper()
		mfs, err := ctx.GetMetricsRegistry().Gather()
		if err != nil {
			t.Fatal(err)
		}
		got := map[string]float64{}
		for _, mf := range mfs {
			if !strings.HasPrefix(mf.GetName(), "caddy_oidc_ready") {
				continue
			}
			for _, m := range mf.GetMetric() {
				labels := map[string]string{}
				for _, l := range m.GetLabel() {
					labels[l.GetName()] = l.GetValue()
				}
				if labels["issuer"] != idp.Issuer || labels["client"] != "app" {
					continue
				}
				got[mf.GetName()+"/"+labels["check"]] = m.GetGauge().GetValue()
			}
		}
		return got
	}
	before := scrape()
	want := map[string]float64{"caddy_oidc_ready/": 0, "caddy_oidc_ready_check/discovery": 0,
		"caddy_oidc_ready_check/keys": 0, "caddy_oidc_ready_check/cache": 1}
	for k, v := range want {
		if got, ok := before[k]; !ok || got != v {
			t.Errorf("before the IdP was asked: %s = %v (present %v), want %v", k, got, ok, v)
		}
	}
	if hits := idp.DiscoveryHits.Load() + idp.JWKSHits.Load(); hits != 0 {
		t.Errorf("a scrape called the IdP %d times", hits)
	}
	if code, _, w := serve(h, request("GET", "/healthz")); code != 200 {
		t.Fatalf("health: %d %s", code, w.Body.String())
	}
	after := scrape()
	if after["caddy_oidc_ready/"] != 1 || after["caddy_oidc_ready_check/keys"] != 1 || after["caddy_oidc_ready_check/discovery"] != 1 {
		t.Errorf("after discovery and keys loaded: %v", after)
	}
	_ = h.Cleanup()
	if _, still := scrape()["caddy_oidc_ready/"]; still {
		t.Error("a cleaned-up route is still in the metrics")
	}
}

// BenchmarkAuthenticatedRequestAssertion is BenchmarkAuthenticatedRequest
// with the assertion in a header: the session's cached assertion.
func BenchmarkAuthenticatedRequestAssertion(b *testing.B) {
	idp := testidp.New()
	defer idp.Close()
	h := assertionHandler(b, idp, func(h *Handler) { h.Allow.Groups = []string{"staff"} })
	cookie := benchRequests(b, h)
	w := httptest.NewRecorder()
	b.ReportAllocs()
	for b.Loop() {
		r := newBenchRequest(cookie)
		if err := h.ServeHTTP(w, r, nopNext{}); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkAssertionSign is one assertion signed (the cache missed): what
// a session pays once per half lifetime.
func BenchmarkAssertionSign(b *testing.B) {
	idp := testidp.New()
	defer idp.Close()
	h := assertionHandler(b, idp, nil)
	s := typicalSession()
	r := newBenchRequest("")
	b.ReportAllocs()
	for b.Loop() {
		s.AccessExpiry++ // a new cache key: signed every time
		if tok := h.assertions.assertion(r, &h.identity, s.Claims, s); tok == "" {
			b.Fatal("no assertion")
		}
	}
}

// BenchmarkAssertionCached is the cache hit alone: what the placeholder
// costs a session's requests between two signatures.
func BenchmarkAssertionCached(b *testing.B) {
	idp := testidp.New()
	defer idp.Close()
	h := assertionHandler(b, idp, nil)
	s := typicalSession()
	r := newBenchRequest("")
	first := h.assertions.assertion(r, &h.identity, s.Claims, s)
	b.ReportAllocs()
	for b.Loop() {
		if h.assertions.assertion(r, &h.identity, s.Claims, s) != first {
			b.Fatal("re-signed")
		}
	}
}

// Issue 12.9: a bearer request (an API client) gets an assertion about
// the token's subject too, cached per token.
func TestAssertionForBearerRequest(t *testing.T) {
	idp := testidp.New()
	defer idp.Close()
	h := assertionHandler(t, idp, func(h *Handler) { h.Bearer = &BearerConfig{Audience: []string{"api"}} })
	token := idp.Sign(accessClaims(idp, nil))
	var got []string
	for range 2 {
		w, next, err := bearerRequest(h, token)
		if err != nil || !next.called {
			t.Fatalf("bearer request: %d %v", w.Code, err)
		}
		got = append(got, next.req.Header.Get(assertionHeader))
	}
	parsed, err := verify(got[0], fetchJWKS(t, h), "http://example.com", "http://example.com")
	if err != nil || parsed.Subject() != "svc-1" {
		t.Fatalf("bearer assertion: %v", err)
	}
	if got[1] != got[0] {
		t.Error("the same token's second request was signed again")
	}
}

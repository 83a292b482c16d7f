package caddyoidc

import (
	"context"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"

	"github.com/caddy-oidc/caddy-oidc/cache"
	"github.com/caddy-oidc/caddy-oidc/internal/provider"
	"github.com/caddy-oidc/caddy-oidc/internal/redistest"
	"github.com/caddy-oidc/caddy-oidc/internal/testidp"
)

// The URL request() addresses, as a client's proof names it.
const dpopTestURL = "http://example.com/api/items"

// dpopCaller is an API client holding a DPoP key and a token bound to it.
type dpopCaller struct {
	t     testing.TB
	key   *provider.DPoPKey
	token string
}

func newDPoPCaller(t testing.TB, idp *testidp.IdP) *dpopCaller {
	t.Helper()
	key, err := provider.NewDPoPKey()
	if err != nil {
		t.Fatal(err)
	}
	token := idp.Sign(testidp.BindDPoP(accessClaims(idp, nil), key.Thumbprint()))
	return &dpopCaller{t: t, key: key, token: token}
}

// proof is a fresh proof of this caller's key for a GET of target with token.
func (c *dpopCaller) proof(method, target, token string) string {
	c.t.Helper()
	p, err := c.key.Proof(method, target, token, "", time.Now())
	if err != nil {
		c.t.Fatal(err)
	}
	return p
}

// dpopServe sends GET /api/items with Authorization: <scheme> <token> and
// these DPoP headers.
func dpopServe(h *Handler, scheme, token string, proofs ...string) (int, *httptest.ResponseRecorder, *recordNext) {
	r := request("GET", "/api/items")
	r.Header.Set("Authorization", scheme+" "+token)
	for _, p := range proofs {
		r.Header.Add("DPoP", p)
	}
	w := httptest.NewRecorder()
	next := &recordNext{}
	err := h.ServeHTTP(w, r, next)
	return statusOf(err, w), w, next
}

func dpopHandler(t testing.TB, idp *testidp.IdP, mode string) *Handler {
	return newTestHandler(t, idp, func(h *Handler) { h.Bearer = &BearerConfig{Audience: []string{"api"}, DPoP: mode} })
}

// challenge returns the WWW-Authenticate value of scheme, "" if none.
func challenge(w *httptest.ResponseRecorder, scheme string) string {
	for _, v := range w.Header().Values("WWW-Authenticate") {
		if strings.HasPrefix(v, scheme+" ") {
			return v
		}
	}
	return ""
}

// wantRefused checks a 401 whose challenge for scheme carries code, and
// that nothing reached the upstream.
func wantRefused(t *testing.T, what string, code int, w *httptest.ResponseRecorder, next *recordNext, scheme, oauthErr string) {
	t.Helper()
	if code != http.StatusUnauthorized || next.called {
		t.Errorf("%s: got %d (upstream reached: %v), want 401", what, code, next.called)
		return
	}
	if c := challenge(w, scheme); !strings.Contains(c, `error="`+oauthErr+`"`) {
		t.Errorf("%s: %s challenge %q, want error=%q (all: %q)", what, scheme, c, oauthErr, w.Header().Values("WWW-Authenticate"))
	}
}

func TestBearerDPoPBoundJWT(t *testing.T) {
	idp := testidp.New()
	defer idp.Close()
	h := dpopHandler(t, idp, "")
	c := newDPoPCaller(t, idp)
	// Twice: the second request meets the cached token and still needs,
	// and gets, its own proof.
	for i := range 2 {
		code, _, next := dpopServe(h, "DPoP", c.token, c.proof("GET", dpopTestURL, c.token))
		if code != http.StatusOK || !next.called {
			t.Fatalf("request %d with a valid proof: %d", i, code)
		}
		if got := next.req.Header.Get("X-Auth-Email"); got != "svc@example.com" {
			t.Errorf("identity header %q", got)
		}
	}
	// The proof names the URL without its query.
	r := request("GET", "/api/items?page=2")
	r.Header.Set("Authorization", "DPoP "+c.token)
	r.Header.Set("DPoP", c.proof("GET", dpopTestURL, c.token))
	if err := h.ServeHTTP(httptest.NewRecorder(), r, &recordNext{}); err != nil {
		t.Errorf("a proof for the URL without its query: %v", err)
	}
	// Plain Bearer tokens keep working (allowed is the default).
	if code, _, next := dpopServe(h, "Bearer", idp.Sign(accessClaims(idp, nil))); code != http.StatusOK || !next.called {
		t.Errorf("an unbound Bearer token under bearer_dpop allowed: %d", code)
	}
}

func TestBearerDPoPBoundOpaqueToken(t *testing.T) {
	idp := testidp.New()
	defer idp.Close()
	key, _ := provider.NewDPoPKey()
	bound := testidp.BindDPoP(map[string]any{"client_id": "app", "sub": "svc-2", "email": "two@example.com", "aud": "api",
		"exp": time.Now().Add(time.Hour).Unix()}, key.Thumbprint())
	idp.OnIntrospect(testidp.Introspection(map[string]map[string]any{"opaque-bound": bound}))
	h := dpopHandler(t, idp, "")
	c := &dpopCaller{t: t, key: key, token: "opaque-bound"}
	code, _, next := dpopServe(h, "DPoP", c.token, c.proof("GET", dpopTestURL, c.token))
	if code != http.StatusOK || next.req.Header.Get("X-Auth-Email") != "two@example.com" {
		t.Fatalf("opaque DPoP-bound token with a valid proof: %d", code)
	}
	code, w, next := dpopServe(h, "Bearer", c.token)
	wantRefused(t, "opaque DPoP-bound token as Bearer", code, w, next, "Bearer", "invalid_token")
	if n := idp.IntrospectHits.Load(); n != 1 {
		t.Errorf("%d introspections, want 1 (the result is cached)", n)
	}
}

// Each way a proof can fail to fit its request is refused with
// invalid_dpop_proof and the DPoP challenge.
func TestAttackDPoPProofNotForThisRequest(t *testing.T) {
	idp := testidp.New()
	defer idp.Close()
	h := dpopHandler(t, idp, "")
	c := newDPoPCaller(t, idp)
	other := newDPoPCaller(t, idp)
	noATH, _ := c.key.Proof("GET", dpopTestURL, "", "", time.Now())
	stale, _ := c.key.Proof("GET", dpopTestURL, c.token, "", time.Now().Add(-3*time.Minute))
	for what, proof := range map[string]string{
		"another path":                 c.proof("GET", "http://example.com/api/other", c.token),
		"another host":                 c.proof("GET", "http://evil.example/api/items", c.token),
		"another scheme":               c.proof("GET", "https://example.com/api/items", c.token),
		"another method":               c.proof("POST", dpopTestURL, c.token),
		"another key than cnf.jkt":     other.proof("GET", dpopTestURL, c.token),
		"no ath":                       noATH,
		"ath of another token":         c.proof("GET", dpopTestURL, other.token),
		"iat three minutes ago":        stale,
		"not a JWS":                    "not-a-proof",
		"the access token as a proof":  c.token,
		"two proofs in one header":     c.proof("GET", dpopTestURL, c.token) + "," + c.proof("GET", dpopTestURL, c.token),
		"huge (1 MiB, refused unread)": strings.Repeat("a", 1<<20),
	} {
		code, w, next := dpopServe(h, "DPoP", c.token, proof)
		wantRefused(t, what, code, w, next, "DPoP", "invalid_dpop_proof")
		if !strings.Contains(challenge(w, "DPoP"), `algs="ES256 `) {
			t.Errorf("%s: the DPoP challenge %q does not list the algorithms", what, challenge(w, "DPoP"))
		}
		if challenge(w, "Bearer") == "" {
			t.Errorf("%s: no Bearer challenge, though Bearer tokens are accepted too", what)
		}
	}
	code, w, next := dpopServe(h, "DPoP", c.token)
	wantRefused(t, "no DPoP header", code, w, next, "DPoP", "invalid_dpop_proof")
	code, w, next = dpopServe(h, "DPoP", c.token, c.proof("GET", dpopTestURL, c.token), c.proof("GET", dpopTestURL, c.token))
	wantRefused(t, "two DPoP headers", code, w, next, "DPoP", "invalid_dpop_proof")
}

// A malformed DPoP header is refused before the token costs anything: no
// introspection of an opaque token.
func TestAttackDPoPBadHeaderCostsNoIntrospection(t *testing.T) {
	idp := testidp.New()
	defer idp.Close()
	idp.OnIntrospect(testidp.Introspection(nil))
	h := dpopHandler(t, idp, "")
	for _, proofs := range [][]string{nil, {"a", "b"}, {strings.Repeat("a", maxDPoPProofBytes+1)}} {
		code, w, next := dpopServe(h, "DPoP", "opaque-random", proofs...)
		wantRefused(t, "a bad DPoP header", code, w, next, "DPoP", "invalid_dpop_proof")
	}
	if n := idp.IntrospectHits.Load(); n != 0 {
		t.Errorf("%d introspections for requests with bad DPoP headers, want 0", n)
	}
}

func TestAttackDPoPSchemeMismatch(t *testing.T) {
	idp := testidp.New()
	defer idp.Close()
	h := dpopHandler(t, idp, "")
	c := newDPoPCaller(t, idp)
	// A stolen DPoP-bound token is useless without its key: not as Bearer.
	code, w, next := dpopServe(h, "Bearer", c.token)
	wantRefused(t, "DPoP-bound token as Bearer", code, w, next, "Bearer", "invalid_token")
	if challenge(w, "DPoP") == "" {
		t.Error("DPoP-bound token as Bearer: no DPoP challenge to say how to send it")
	}
	// Nor after it was cached by a valid DPoP request.
	if code, _, _ := dpopServe(h, "DPoP", c.token, c.proof("GET", dpopTestURL, c.token)); code != http.StatusOK {
		t.Fatalf("valid DPoP request: %d", code)
	}
	code, w, next = dpopServe(h, "Bearer", c.token)
	wantRefused(t, "cached DPoP-bound token as Bearer", code, w, next, "Bearer", "invalid_token")
	// An unbound token with a proof of the caller's own key proves nothing.
	plain := idp.Sign(accessClaims(idp, nil))
	code, w, next = dpopServe(h, "DPoP", plain, c.proof("GET", dpopTestURL, plain))
	wantRefused(t, "Bearer-only token under DPoP", code, w, next, "DPoP", "invalid_token")
}

func TestBearerDPoPRequired(t *testing.T) {
	idp := testidp.New()
	defer idp.Close()
	h := dpopHandler(t, idp, DPoPRequired)
	code, w, next := dpopServe(h, "Bearer", idp.Sign(accessClaims(idp, nil)))
	wantRefused(t, "a Bearer token where DPoP is required", code, w, next, "DPoP", "invalid_token")
	if b := challenge(w, "Bearer"); b != "" {
		t.Errorf("bearer_dpop required still offers Bearer: %q", b)
	}
	c := newDPoPCaller(t, idp)
	if code, _, next := dpopServe(h, "DPoP", c.token, c.proof("GET", dpopTestURL, c.token)); code != http.StatusOK || !next.called {
		t.Errorf("a DPoP-bound token with its proof where DPoP is required: %d", code)
	}
}

// A request rewritten before the oidc handler (rewrite, handle_path) is
// checked against the URL the client addressed, which its proof names.
func TestBearerDPoPProofNamesTheOriginalURL(t *testing.T) {
	idp := testidp.New()
	defer idp.Close()
	h := dpopHandler(t, idp, "")
	c := newDPoPCaller(t, idp)
	r := request("GET", "/v1/api/items")
	origURL := *r.URL
	// Caddy keeps a copy of the method, RequestURI and URL only: no Host.
	orig := http.Request{Method: r.Method, RequestURI: r.RequestURI, URL: &origURL}
	r = r.WithContext(context.WithValue(r.Context(), caddyhttp.OriginalRequestCtxKey, orig))
	r.URL.Path = "/api/items" // as handle_path /v1/* leaves it
	r.Header.Set("Authorization", "DPoP "+c.token)
	r.Header.Set("DPoP", c.proof("GET", "http://example.com/v1/api/items", c.token))
	if err := h.ServeHTTP(httptest.NewRecorder(), r, &recordNext{}); err != nil {
		t.Errorf("a proof for the URL the client addressed, after a rewrite: %v", err)
	}
}

// withFreshProofRecord gives the test an empty process record of proofs,
// as a process of its own would have.
func withFreshProofRecord(t testing.TB) {
	old := dpopProofs
	dpopProofs = cache.NewMemory(dpopProofsMaxBytes, dpopProofsMaxEntries, nil)
	t.Cleanup(func() { dpopProofs = old })
}

func TestAttackDPoPProofReplayed(t *testing.T) {
	withFreshProofRecord(t)
	idp := testidp.New()
	defer idp.Close()
	h := dpopHandler(t, idp, "")
	sibling := newTestHandlerOn(t, h.app, idp, func(h *Handler) { h.Bearer = &BearerConfig{Audience: []string{"api"}} })
	c := newDPoPCaller(t, idp)
	proof := c.proof("GET", dpopTestURL, c.token)
	if code, _, _ := dpopServe(h, "DPoP", c.token, proof); code != http.StatusOK {
		t.Fatalf("first use of a proof: %d", code)
	}
	code, w, next := dpopServe(h, "DPoP", c.token, proof)
	wantRefused(t, "the same proof again", code, w, next, "DPoP", "invalid_dpop_proof")
	code, w, next = dpopServe(sibling, "DPoP", c.token, proof)
	wantRefused(t, "the same proof on another handler of the route", code, w, next, "DPoP", "invalid_dpop_proof")
}

// Replicas share their record through Valkey; while Valkey is away each
// still refuses the replays it sees itself.
func TestAttackDPoPProofReplayedOnAnotherReplica(t *testing.T) {
	withFreshProofRecord(t)
	srv := redistest.Start(t)
	idp := testidp.New()
	defer idp.Close()
	bearer := func(h *Handler) { h.Bearer = &BearerConfig{Audience: []string{"api"}} }
	a := newTestHandlerOn(t, newTestReplica(t, srv.Addr), idp, bearer)
	b := newTestHandlerOn(t, newTestReplica(t, srv.Addr), idp, bearer)
	c := newDPoPCaller(t, idp)
	proof := c.proof("GET", dpopTestURL, c.token)
	if code, _, _ := dpopServe(a, "DPoP", c.token, proof); code != http.StatusOK {
		t.Fatalf("first use on replica a: %d", code)
	}
	keys, _ := rawValkey(t, srv.Addr).Do(context.Background(), rawValkey(t, srv.Addr).B().Keys().Pattern("caddy-oidc:dpop:*").Build()).AsStrSlice()
	if len(keys) != 1 {
		t.Fatalf("%d DPoP records in Valkey after one accepted proof, want 1", len(keys))
	}
	// Replica b is another process: its own record has never seen it.
	withFreshProofRecord(t)
	code, w, next := dpopServe(b, "DPoP", c.token, proof)
	wantRefused(t, "the proof replayed on replica b", code, w, next, "DPoP", "invalid_dpop_proof")

	srv.Kill()
	fresh := c.proof("GET", dpopTestURL, c.token)
	if code, _, _ := dpopServe(a, "DPoP", c.token, fresh); code != http.StatusOK {
		t.Fatalf("a fresh proof while Valkey is down: %d, want 200 (Valkey is no single point of failure)", code)
	}
	code, w, next = dpopServe(a, "DPoP", c.token, fresh)
	wantRefused(t, "a replay on the same replica while Valkey is down", code, w, next, "DPoP", "invalid_dpop_proof")
}

// Nothing a caller without a valid token and its key sends is recorded:
// random tokens, and a real bound token with proofs of other keys.
func TestAttackDPoPUnauthenticatedFloodStoresNothing(t *testing.T) {
	withFreshProofRecord(t)
	idp := testidp.New()
	defer idp.Close()
	h := dpopHandler(t, idp, "")
	victim := newDPoPCaller(t, idp)
	entriesBefore, _ := h.app.set().replay.Len()
	for i := range 100 {
		attacker := newDPoPCaller(t, idp)
		token := attacker.token
		if i%2 == 0 {
			token = victim.token // stolen, without its key
		} else {
			token = token[:len(token)-4] + "AAAA" // a forged signature
		}
		code, w, next := dpopServe(h, "DPoP", token, attacker.proof("GET", dpopTestURL, token))
		wantRefused(t, "a proof of the wrong key or a forged token", code, w, next, "DPoP", map[bool]string{true: "invalid_dpop_proof", false: "invalid_token"}[i%2 == 0])
	}
	if n, _ := dpopProofs.Len(); n != 0 {
		t.Errorf("%d proofs recorded after 100 unauthenticated requests, want 0", n)
	}
	if n, _ := h.app.set().replay.Len(); n != entriesBefore {
		t.Errorf("the app's replay record went from %d to %d entries", entriesBefore, n)
	}
}

func TestBearerDPoPInsufficientScope(t *testing.T) {
	idp := testidp.New()
	defer idp.Close()
	h := newTestHandler(t, idp, func(h *Handler) {
		h.Bearer = &BearerConfig{Audience: []string{"api"}}
		h.Allow.Users = []string{"someone-else"}
	})
	c := newDPoPCaller(t, idp)
	code, w, _ := dpopServe(h, "DPoP", c.token, c.proof("GET", dpopTestURL, c.token))
	if code != http.StatusForbidden || !strings.Contains(challenge(w, "DPoP"), `error="insufficient_scope"`) {
		t.Errorf("a DPoP caller the allow rules refuse: %d %q, want 403 with a DPoP insufficient_scope challenge", code, w.Header().Values("WWW-Authenticate"))
	}
}

func TestBearerDPoPConfig(t *testing.T) {
	for src, want := range map[string]string{
		"oidc {\n bearer\n bearer_dpop required\n}": "",
		"oidc {\n bearer_dpop required\n}":          "add `bearer`",
		"oidc {\n bearer\n bearer_dpop always\n}":   `bearer_dpop "always" is unknown`,
		"oidc {\n bearer\n bearer_dpop\n}":          "wrong argument count",
	} {
		var h Handler
		err := h.UnmarshalCaddyfile(caddyfile.NewTestDispenser(src))
		if want == "" && (err != nil || h.Bearer == nil || h.Bearer.DPoP != DPoPRequired) {
			t.Errorf("%q: %v, bearer %+v", src, err, h.Bearer)
		}
		if want != "" && (err == nil || !strings.Contains(err.Error(), want)) {
			t.Errorf("%q: error %v, want one saying %q", src, err, want)
		}
	}
	if err := (&BearerConfig{DPoP: "Required"}).validate(); err == nil || !strings.Contains(err.Error(), "bearer_dpop") {
		t.Errorf("JSON bearer_dpop \"Required\": %v, want a load error naming bearer_dpop", err)
	}
}

// BenchmarkBearerDPoP is a DPoP-bound request whose token is cached: the
// proof is verified (ES256) and its jti recorded on every request. Compare
// with BenchmarkBearerCacheHit; proofs are made outside the timer.
func BenchmarkBearerDPoP(b *testing.B) {
	idp := testidp.New()
	defer idp.Close()
	h := dpopHandler(b, idp, "")
	c := newDPoPCaller(b, idp)
	auth := "DPoP " + c.token
	w := httptest.NewRecorder()
	b.ReportAllocs()
	for b.Loop() {
		b.StopTimer()
		proof := c.proof("GET", "http://app.example.com/app", c.token)
		r := newBenchRequest("")
		r.Header.Set("Authorization", auth)
		r.Header.Set("DPoP", proof)
		b.StartTimer()
		if err := h.ServeHTTP(w, r, nopNext{}); err != nil {
			b.Fatal(err)
		}
	}
}

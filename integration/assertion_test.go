package integration

import (
	"encoding/json"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/go-jose/go-jose/v4"
	"github.com/go-jose/go-jose/v4/jwt"
)

// assertionClaims is what an application reads from the assertion.
type assertionClaims struct {
	jwt.Claims
	Email  string   `json:"email"`
	Groups []string `json:"groups"`
}

// fetchAssertionJWKS reads a Caddy's assertion keys as an application
// does: a plain GET, no session.
func fetchAssertionJWKS(t *testing.T, caddyURL string) jose.JSONWebKeySet {
	t.Helper()
	resp, err := http.Get(caddyURL + "/oauth2/jwks.json")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != 200 {
		t.Fatalf("JWKS: %d %s", resp.StatusCode, b)
	}
	var set jose.JSONWebKeySet
	if err := json.Unmarshal(b, &set); err != nil {
		t.Fatalf("JWKS: %v: %s", err, b)
	}
	return set
}

// verifyAssertion checks an assertion as an application would, with
// go-jose: signature by a key of set, iss and aud the site, exp at now.
func verifyAssertion(raw string, set jose.JSONWebKeySet, site string, now time.Time) (*assertionClaims, error) {
	tok, err := jwt.ParseSigned(raw, []jose.SignatureAlgorithm{jose.ES256})
	if err != nil {
		return nil, err
	}
	var c assertionClaims
	if err := tok.Claims(set, &c); err != nil {
		return nil, err
	}
	return &c, c.ValidateWithLeeway(jwt.Expected{Issuer: site, AnyAudience: jwt.Audience{site}, Time: now}, 0)
}

// Issue 12.9 end to end: after a real login the application gets a signed
// assertion it verifies with the JWKS that Caddy serves without a session;
// a client-sent copy of the header never reaches it; another replica (same
// secret) serves the same keys but its site is another audience; an
// expired assertion is refused. Issue 12.10: caddy_oidc_ready is 1 on
// Caddy's /metrics once the route has logged someone in.
func TestAssertionEndToEnd(t *testing.T) {
	o := envOptions{oidc: "assertion\n\t\theader X-Identity-Assertion {http.auth.user.assertion}"}
	e := newEnv(t, o)
	c := e.browser()
	readEcho(t, e.login(c, "/", "alice", "alice-password"))
	forged := "eyJhbGciOiJub25lIn0.eyJzdWIiOiJhZG1pbiJ9."
	got := readEcho(t, e.get(c, "/app", map[string]string{"X-Identity-Assertion": forged, "X_Identity_Assertion": forged}))
	var raw string
	for name, v := range got.Headers {
		for _, val := range v {
			if val == forged {
				t.Errorf("the client's %s reached the application", name)
			}
		}
		if http.CanonicalHeaderKey(name) == "X-Identity-Assertion" {
			raw = v[0]
		}
	}
	if raw == "" {
		t.Fatalf("no assertion reached the application: %v", got.Headers)
	}
	set := fetchAssertionJWKS(t, e.caddyURL)
	claims, err := verifyAssertion(raw, set, e.caddyURL, time.Now())
	if err != nil {
		t.Fatalf("the application cannot verify the assertion: %v", err)
	}
	if claims.Subject == "" || claims.Email != "alice@example.com" || claims.ID == "" {
		t.Errorf("claims: %+v", claims)
	}
	if life := claims.Expiry.Time().Sub(claims.IssuedAt.Time()); life != 60*time.Second {
		t.Errorf("lifetime %s, want 60s", life)
	}
	if _, err := verifyAssertion(raw, set, e.caddyURL, claims.Expiry.Time().Add(time.Second)); err == nil {
		t.Error("an expired assertion verified")
	}
	// Another Caddy with the same secret: the same keys, another site.
	other := e.coldReplica(o)
	otherSet := fetchAssertionJWKS(t, other.caddyURL)
	if len(otherSet.Keys) != 1 || len(set.Keys) != 1 || otherSet.Keys[0].KeyID != set.Keys[0].KeyID {
		t.Errorf("replicas serve different keys: %d/%d keys", len(set.Keys), len(otherSet.Keys))
	}
	if _, err := verifyAssertion(raw, otherSet, other.caddyURL, time.Now()); err == nil {
		t.Error("an assertion made for one site verified as another site's")
	}
	if v := readyMetric(t, e.admin, e.idp.Issuer); v != "1" {
		t.Errorf("caddy_oidc_ready after a login: %q, want 1", v)
	}
}

// readyMetric returns the value of caddy_oidc_ready for the env's route
// on a Caddy's /metrics ("" if absent).
func readyMetric(t *testing.T, admin, issuer string) string {
	t.Helper()
	resp, err := http.Get("http://" + admin + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	for l := range strings.Lines(string(b)) {
		if strings.HasPrefix(l, "caddy_oidc_ready{") && strings.Contains(l, `client="demo"`) && strings.Contains(l, `issuer="`+issuer+`"`) {
			f := strings.Fields(l)
			return f[len(f)-1]
		}
	}
	t.Logf("no caddy_oidc_ready line for %s in:\n%s", issuer, b)
	return ""
}

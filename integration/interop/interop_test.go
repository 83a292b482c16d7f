package interop

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httputil"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"text/tabwriter"
	"time"

	"github.com/caddy-oidc/caddy-oidc/integration/devidp"
	"github.com/caddy-oidc/caddy-oidc/internal/redistest"
	"github.com/chromedp/cdproto/cdp"
	"github.com/chromedp/cdproto/network"
	"github.com/chromedp/chromedp"
)

// The suite: each IdP runs the same scenarios, in this order, against two
// Caddy replicas sharing a Valkey (the IdP knows the first one's
// back-channel URI, as behind a load balancer).
const (
	scLogin       = "browser login through the IdP's screens"
	scHeaders     = "identity headers at login"
	scBurst       = "20 concurrent requests at expiry: one grant at the IdP"
	scRefreshed   = "identity headers after the refresh"
	scRPLogout    = "RP logout through end_session"
	scRevocation  = "refresh token revoked at logout (asked of the IdP)"
	scBackchannel = "back-channel logout from the IdP's own logout"
	scBearerJWT   = "bearer JWT access token"
	scBearerOpaq  = "bearer opaque access token (introspection)"
)

var scenarioOrder = []string{scLogin, scHeaders, scBurst, scRefreshed, scRPLogout, scRevocation, scBackchannel, scBearerJWT, scBearerOpaq}

const (
	// Access tokens live 20 s and are refreshed 25 s before they expire:
	// every request with a session refreshes (the login's own landing too),
	// so the burst needs no wait for the token to come due.
	accessTTL     = 20 * time.Second
	refreshBefore = "25s"
	apiAudience   = "https://api.interop.test"
)

// identity is what the upstream must see for the user.
type identity struct{ sub, email, name, groups string }

var alice = struct{ username, password string }{"alice", "alice-password"}

var aliceClaims = map[string]any{
	"email": "alice@example.com", "email_verified": true, "name": "Alice Liddell",
	"given_name": "Alice", "family_name": "Liddell", "preferred_username": "alice",
	"groups": []string{"admins", "staff"},
}

// idpUnderTest is what the scenarios need of an IdP.
type idpUnderTest struct {
	name, snippet, issuer, clientID, clientSecret string
	// env has more {$VAR}s for its snippet.
	env  map[string]string
	user identity

	// loginScreen is a selector on the IdP's login screen; login fills it
	// in and submits; consent (if any) is the button of its consent screen.
	loginScreen string
	login       func(ctx context.Context) error
	consent     string
	// logoutConfirm is the button of the IdP's logout confirmation, if any.
	logoutConfirm string
	// ownLogout ends the user's session at the IdP (not through Caddy): its
	// own logout screen in the browser, or an administrator's action.
	ownLogout func(t *sc, ctx context.Context)
	// refreshGrants counts the refresh grants the IdP answered.
	refreshGrants func(t *sc) (ok, refused int64)
	// backchannelSent counts the logout tokens the IdP delivered (nil: it
	// does not say).
	backchannelSent func(t *sc) int64
	// revocationChecked says whether the revocation at logout reached the
	// IdP and the refresh token is dead there (why: not supported).
	revocationChecked func(t *sc, before revocationMark)
	revocationMark    func(t *sc) revocationMark
	// buildTook is the time spent building the IdP in this test (not
	// counted in its run time).
	buildTook time.Duration
	// bearerJWT / bearerOpaque get an access token for apiAudience with the
	// client credentials grant and the sub the upstream must see; why says
	// why the IdP cannot.
	bearerJWT, bearerOpaque func(t *sc) (token, sub, why string)
}

// revocationMark is the IdP's revocation count before the logout, and
// whether the session's refresh token was active then (else the check
// after the logout would prove nothing).
type revocationMark struct {
	ok, refused int64
	wasActive   bool
}

// sc is a scenario's test: it records why it failed or was not run, for
// the table at the end.
type sc struct {
	*testing.T
	mu      sync.Mutex
	reasons []string
	skipped string
}

func (s *sc) note(msg string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.reasons = append(s.reasons, msg)
}

func (s *sc) Errorf(format string, args ...any) {
	s.T.Helper()
	s.note(fmt.Sprintf(format, args...))
	s.T.Errorf(format, args...)
}

func (s *sc) Fatalf(format string, args ...any) {
	s.T.Helper()
	s.note(fmt.Sprintf(format, args...))
	s.T.Fatalf(format, args...)
}

func (s *sc) Fatal(args ...any) {
	s.T.Helper()
	s.note(fmt.Sprint(args...))
	s.T.Fatal(args...)
}

func (s *sc) Error(args ...any) {
	s.T.Helper()
	s.note(fmt.Sprint(args...))
	s.T.Error(args...)
}

// notSupported ends the scenario as one the IdP cannot do; it is listed in
// the table with why, never passed over silently.
func (s *sc) notSupported(why string) {
	s.T.Helper()
	s.skipped = why
	s.T.Skip("not supported: " + why)
}

var table = struct {
	sync.Mutex
	idps []string
	rows map[string]map[string]string
	took map[string]time.Duration
}{rows: map[string]map[string]string{}, took: map[string]time.Duration{}}

func record(idp, scenario, outcome string) {
	table.Lock()
	defer table.Unlock()
	if table.rows[idp] == nil {
		table.rows[idp] = map[string]string{}
		table.idps = append(table.idps, idp)
	}
	table.rows[idp][scenario] = outcome
}

func tableText() string {
	table.Lock()
	defer table.Unlock()
	var b strings.Builder
	for _, idp := range table.idps {
		fmt.Fprintf(&b, "\n%s (%s):\n", idp, table.took[idp].Round(100*time.Millisecond))
		w := tabwriter.NewWriter(&b, 0, 0, 2, ' ', 0)
		for _, s := range scenarioOrder {
			o, ok := table.rows[idp][s]
			if !ok {
				o = "not run"
			}
			_, _ = fmt.Fprintf(w, "  %s\t%s\n", s, o) // into a bytes.Buffer: cannot fail
		}
		_ = w.Flush()
	}
	return b.String()
}

// step runs one scenario as a subtest and records its outcome.
func step(t *testing.T, idp, name string, fn func(s *sc)) bool {
	var s *sc
	ok := t.Run(name, func(tt *testing.T) {
		s = &sc{T: tt}
		fn(s)
	})
	switch {
	case s.skipped != "":
		record(idp, name, "not supported: "+s.skipped)
	case !ok:
		record(idp, name, "FAIL: "+strings.Join(s.reasons, "; "))
	default:
		record(idp, name, "pass")
	}
	return ok
}

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "caddy-oidc-interop")
	if err != nil {
		panic(err)
	}
	// INTEROP_CADDY runs a Caddy built elsewhere (an xcaddy build, say).
	caddyBin = os.Getenv("INTEROP_CADDY")
	if caddyBin == "" {
		caddyBin = filepath.Join(dir, "caddy")
		build := exec.Command("go", "build", "-o", caddyBin, "./cmd/caddy")
		build.Dir = filepath.Join(integrationDir(), "..")
		build.Stdout, build.Stderr = os.Stdout, os.Stderr
		if err := build.Run(); err != nil {
			fmt.Fprintln(os.Stderr, "building caddy:", err)
			os.Exit(1)
		}
	}
	code := m.Run()
	if len(table.idps) > 0 {
		fmt.Printf("\ninteroperability: scenario x IdP%s\n", tableText())
	}
	os.RemoveAll(dir)
	os.Exit(code)
}

func TestInteropDevIdP(t *testing.T) { runSuite(t, "devidp", startDevIdP) }

func TestInteropHydraOpaque(t *testing.T) {
	runSuite(t, "hydra (opaque access tokens)", func(t *testing.T, urls []string) *idpUnderTest {
		return startHydra(t, urls, "opaque")
	})
}

func TestInteropHydraJWT(t *testing.T) {
	runSuite(t, "hydra (JWT access tokens)", func(t *testing.T, urls []string) *idpUnderTest {
		return startHydra(t, urls, "jwt")
	})
}

func TestInteropOIDCProvider(t *testing.T) { runSuite(t, "oidc-provider", startOIDCProvider) }

// runSuite starts the IdP for two Caddy replicas and runs every scenario.
func runSuite(t *testing.T, name string, start func(t *testing.T, caddyURLs []string) *idpUnderTest) {
	began := time.Now()
	var idp *idpUnderTest
	defer func() {
		took := time.Since(began)
		if idp != nil {
			took -= idp.buildTook
		}
		table.Lock()
		table.took[name] = took
		table.Unlock()
	}()
	exe := chromiumPath(t)
	ports := []int{freePort(t), freePort(t)}
	var urls []string
	for _, p := range ports {
		urls = append(urls, fmt.Sprintf("http://127.0.0.1:%d", p))
	}
	idp = start(t, urls)
	t.Logf("%s: issuer %s, started in %s (building it: %s)", name, idp.issuer, (time.Since(began) - idp.buildTook).Round(time.Millisecond), idp.buildTook.Round(time.Second))

	valkey := redistest.Start(t)
	up := startUpstream(t)
	snippet := filepath.Join(integrationDir(), "interop", "caddyfiles", idp.snippet)
	env := map[string]string{"OIDC_ISSUER": idp.issuer, "OIDC_CLIENT_ID": idp.clientID, "OIDC_CLIENT_SECRET": idp.clientSecret}
	for k, v := range idp.env {
		env[k] = v
	}
	var replicas []*caddy
	for _, p := range ports {
		cfg := caddyConfig(p, freePort(t), snippet, valkey.Addr, up, "refresh_before "+refreshBefore)
		replicas = append(replicas, startCaddy(t, p, cfg, env))
	}
	a := replicas[0]

	ctx := browserContext(t, exe)
	target := a.URL + "/dashboard?tab=2"
	var cookies []*http.Cookie
	var page echo
	loggedIn := step(t, name, scLogin, func(s *sc) {
		if err := chromedp.Do(ctx, chromedp.Navigate(target)); err != nil {
			s.Fatal(err)
		}
		if err := browserLogin(ctx, idp, target, true); err != nil {
			s.Fatalf("login: %v", err)
		}
		var err error
		if page, err = pageEcho(ctx); err != nil {
			s.Fatal(err)
		}
		if cookies, err = sessionCookies(ctx, a.URL); err != nil || len(cookies) == 0 {
			s.Fatalf("no session cookie in the browser after login (%v)", err)
		}
	})
	needLogin := func(s *sc) {
		if !loggedIn {
			s.Fatalf("not run: the browser login failed")
		}
	}
	step(t, name, scHeaders, func(s *sc) {
		needLogin(s)
		checkIdentity(s, "at login", page.Headers, idp.user)
	})

	var burstEchoes []echo
	step(t, name, scBurst, func(s *sc) {
		needLogin(s)
		ok0, refused0 := idp.refreshGrants(s)
		statuses, echoes := burst(replicas, cookies, 20)
		burstEchoes = echoes
		// The browser comes back with its (now stale) cookie: it must adopt
		// the refreshed session, not spend the refresh token again.
		if err := chromedp.Do(ctx, chromedp.Navigate(a.URL+"/after-refresh")); err != nil {
			s.Fatal(err)
		}
		ok1, refused1 := idp.refreshGrants(s)
		s.Logf("20 concurrent requests over 2 replicas: statuses %v; the IdP answered %d refresh grant(s), refused %d", statuses, ok1-ok0, refused1-refused0)
		if ok1-ok0 != 1 || refused1-refused0 != 0 || statuses[200] != 20 {
			s.Errorf("%d refresh grants at the IdP, %d refused, statuses %v; want 1, 0, 20 x 200", ok1-ok0, refused1-refused0, statuses)
		}
	})

	step(t, name, scRefreshed, func(s *sc) {
		needLogin(s)
		if len(burstEchoes) == 0 {
			s.Fatalf("not run: no answer from the burst")
		}
		checkIdentity(s, "in the burst after the refresh", burstEchoes[0].Headers, idp.user)
		for i, e := range burstEchoes[1:] {
			if !sameIdentity(e.Headers, burstEchoes[0].Headers) {
				s.Errorf("burst answer %d saw another identity than answer 0: %v vs %v", i+1, identityOf(e.Headers), identityOf(burstEchoes[0].Headers))
				break
			}
		}
		e, err := pageEcho(ctx)
		if err != nil {
			s.Fatal(err)
		}
		checkIdentity(s, "in the browser after the refresh", e.Headers, idp.user)
	})

	var revMark revocationMark
	var logoutStarted bool
	// The browser's current cookie (after adopting the refresh): the one
	// that the logout must end.
	if c, err := sessionCookies(ctx, a.URL); err == nil && len(c) > 0 {
		cookies = c
	}
	step(t, name, scRPLogout, func(s *sc) {
		needLogin(s)
		if idp.revocationMark != nil {
			revMark = idp.revocationMark(s)
		}
		if err := chromedp.Do(ctx, chromedp.Navigate(a.URL+"/oauth2/logout")); err != nil {
			s.Fatal(err)
		}
		logoutStarted = true
		if idp.logoutConfirm != "" {
			if err := clickWhenVisible(ctx, idp.logoutConfirm); err != nil {
				s.Fatalf("the IdP's logout confirmation: %v", err)
			}
		}
		if loc, err := waitLocation(ctx, func(l string) bool { return l == a.URL+"/bye" }); err != nil {
			s.Fatalf("after logout the browser is at %s, want %s/bye (%v)", loc, a.URL, err)
		}
		for _, r := range replicas {
			if res, err := apiGet(r.URL+"/api", cookies, nil); err != nil || res.Code != http.StatusUnauthorized {
				s.Errorf("the logged-out cookie on %s: %v %v, want 401", r.URL, res, err)
			}
		}
		// The IdP's session is over too: a new visit shows its login screen.
		if err := chromedp.Do(ctx, chromedp.Navigate(target)); err != nil {
			s.Fatal(err)
		}
		if err := waitVisible(ctx, idp.loginScreen); err != nil {
			loc, _ := chromedp.Run(ctx, chromedp.Location())
			s.Errorf("after logout a new visit did not reach the IdP's login screen (at %s): %v", loc, err)
		}
	})

	step(t, name, scRevocation, func(s *sc) {
		// The module revokes before it sends the browser to the IdP: this
		// runs whatever the IdP's end_session did.
		if !logoutStarted {
			s.Fatalf("not run: the RP logout did not start")
		}
		if idp.revocationChecked == nil {
			s.notSupported("the IdP does not let the test see a revocation")
		}
		idp.revocationChecked(s, revMark)
	})

	step(t, name, scBackchannel, func(s *sc) {
		needLogin(s)
		// A fresh login (the IdP may still have a session if the RP
		// logout failed: then it goes straight through).
		if err := chromedp.Do(ctx, chromedp.Navigate(target)); err != nil {
			s.Fatal(err)
		}
		if err := browserLogin(ctx, idp, target, false); err != nil {
			s.Fatalf("second login: %v", err)
		}
		ck, err := sessionCookies(ctx, a.URL)
		if err != nil || len(ck) == 0 {
			s.Fatalf("no session cookie after the second login (%v)", err)
		}
		for _, r := range replicas {
			if res, err := apiGet(r.URL+"/api", ck, nil); res.Code != http.StatusOK {
				s.Fatalf("the new session on %s: %v %v", r.URL, res, err)
			}
		}
		var sent0 int64
		if idp.backchannelSent != nil {
			sent0 = idp.backchannelSent(s)
		}
		idp.ownLogout(s, ctx)
		if idp.backchannelSent != nil {
			if n := idp.backchannelSent(s) - sent0; n != 1 {
				s.Errorf("the IdP delivered %d back-channel logout(s), want 1", n)
			}
		}
		// The IdP told the first replica; the second learns it through Valkey.
		for _, r := range []*caddy{replicas[1], replicas[0]} {
			deadline := time.Now().Add(5 * time.Second)
			poll := time.NewTicker(20 * time.Millisecond)
			for {
				res, err := apiGet(r.URL+"/api", ck, nil)
				if res.Code == http.StatusUnauthorized {
					break
				}
				if time.Now().After(deadline) {
					s.Fatalf("the session on %s survived the IdP's logout: %v %v", r.URL, res, err)
				}
				<-poll.C
			}
			poll.Stop()
		}
	})

	bearer := func(s *sc, get func(*sc) (string, string, string)) {
		tok, sub, why := get(s)
		if why != "" {
			s.notSupported(why)
		}
		for _, r := range replicas {
			res, err := apiGet(r.URL+"/api/items", nil, map[string]string{"Authorization": "Bearer " + tok, "X-Auth-User": "forged"})
			if err != nil || res.Code != http.StatusOK {
				s.Errorf("bearer token on %s: %v %v, want 200", r.URL, res, err)
				continue
			}
			if got := res.Echo.Headers.Get("X-Auth-User"); got != sub {
				s.Errorf("bearer token on %s: upstream saw X-Auth-User %q, want %q", r.URL, got, sub)
			}
		}
		res, _ := apiGet(a.URL+"/api/items", nil, map[string]string{"Authorization": "Bearer " + tok[:len(tok)-4] + "AAAA"})
		if res.Code != http.StatusUnauthorized {
			s.Errorf("a tampered token: %v, want 401", res)
		}
	}
	step(t, name, scBearerJWT, func(s *sc) { bearer(s, idp.bearerJWT) })
	step(t, name, scBearerOpaq, func(s *sc) { bearer(s, idp.bearerOpaque) })
	t.Logf("%s:%s", name, tableRows(name))
}

func tableRows(idp string) string {
	table.Lock()
	defer table.Unlock()
	var b strings.Builder
	for _, s := range scenarioOrder {
		o, ok := table.rows[idp][s]
		if !ok {
			o = "not run"
		}
		fmt.Fprintf(&b, "\n  %-55s %s", s, o)
	}
	return b.String()
}

// burst sends n concurrent API requests with the same cookies, spread
// over the replicas, released at once.
func burst(replicas []*caddy, cookies []*http.Cookie, n int) (map[int]int, []echo) {
	var mu sync.Mutex
	statuses := map[int]int{}
	var echoes []echo
	var wg sync.WaitGroup
	start := make(chan struct{})
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			<-start
			res, err := apiGet(fmt.Sprintf("%s/burst/%d", replicas[i%len(replicas)].URL, i), cookies, nil)
			if err != nil {
				res.Code = -1
			}
			mu.Lock()
			defer mu.Unlock()
			statuses[res.Code]++
			if res.Code == http.StatusOK {
				echoes = append(echoes, res.Echo)
			}
		}()
	}
	close(start)
	wg.Wait()
	return statuses, echoes
}

func identityOf(h http.Header) identity {
	return identity{sub: h.Get("X-Auth-User"), email: h.Get("X-Auth-Email"), name: h.Get("X-Auth-Name"), groups: h.Get("X-Auth-Groups")}
}

func sameIdentity(a, b http.Header) bool { return identityOf(a) == identityOf(b) }

func checkIdentity(s *sc, when string, h http.Header, want identity) {
	s.Helper()
	got := identityOf(h)
	for _, f := range []struct{ header, got, want string }{
		{"X-Auth-User", got.sub, want.sub},
		{"X-Auth-Email", got.email, want.email},
		{"X-Auth-Name", got.name, want.name},
		{"X-Auth-Groups", got.groups, want.groups},
	} {
		if f.got != f.want {
			s.Errorf("%s: the upstream saw %s %q, want %q", when, f.header, f.got, f.want)
		}
	}
}

// chromiumPath finds Debian's chromium; a missing browser fails the suite.
func chromiumPath(t *testing.T) string {
	for _, p := range []string{"chromium", "chromium-browser", "google-chrome"} {
		if path, err := exec.LookPath(p); err == nil {
			return path
		}
	}
	t.Fatal("chromium is not installed: apt-get install chromium")
	return ""
}

// browserContext is a headless Chromium with a profile of its own. It
// resolves no host name (the suite uses 127.0.0.1 only), so pages that
// reference outside resources, such as oidc-provider's web fonts, cause
// no traffic.
func browserContext(t *testing.T, exe string) context.Context {
	opts := append(chromedp.DefaultExecAllocatorOptions[:],
		chromedp.ExecPath(exe),
		chromedp.NoSandbox,
		chromedp.Flag("disable-gpu", true),
		chromedp.Flag("disable-quic", true),
		chromedp.Flag("disable-background-networking", true),
		chromedp.Flag("disable-component-update", true),
		chromedp.Flag("disable-sync", true),
		chromedp.Flag("host-resolver-rules", "MAP * ~NOTFOUND, EXCLUDE 127.0.0.1"),
		chromedp.UserDataDir(t.TempDir()),
	)
	actx, cancel := chromedp.NewExecAllocator(context.Background(), opts...)
	t.Cleanup(cancel)
	ctx, cancel := chromedp.NewContext(actx)
	t.Cleanup(cancel)
	if err := chromedp.Do(ctx); err != nil { // starts the browser
		t.Fatal(err)
	}
	ctx, cancel = context.WithTimeout(ctx, 4*time.Minute)
	t.Cleanup(cancel)
	return ctx
}

// browserLogin goes through the IdP's screens until the browser is back
// on target: its login screen (required when needLoginScreen: a first
// login), then its consent screen when it shows one. An IdP that still
// has a session may skip straight to consent or back to target.
func browserLogin(ctx context.Context, idp *idpUnderTest, target string, needLoginScreen bool) error {
	present := func(sel string) bool {
		found, _ := chromedp.Run(ctx, chromedp.Evaluate[bool](fmt.Sprintf("document.querySelector(%q) !== null", sel)))
		return found
	}
	var loggedIn, consented bool
	var stepErr error
	var filledAt time.Time
	_, err := waitLocation(ctx, func(loc string) bool {
		switch {
		case loc == target:
			return true
		// The login screen still there well after it was filled in: the
		// submission was lost (a page that had not settled); a user fills
		// it in again.
		case (!loggedIn || time.Since(filledAt) > 3*time.Second) && present(idp.loginScreen):
			loggedIn, filledAt = true, time.Now()
			stepErr = idp.login(ctx)
			return stepErr != nil
		case idp.consent != "" && !consented && present(idp.consent):
			consented = clickWhenVisible(ctx, idp.consent) == nil
		}
		return false
	})
	if stepErr != nil {
		return fmt.Errorf("filling in the IdP's login screen: %v", stepErr)
	}
	if err != nil {
		body, _ := chromedp.Run(ctx, chromedp.Evaluate[string]("document.body ? document.body.innerText : ''"))
		return fmt.Errorf("%v; page: %.300q", err, body)
	}
	if needLoginScreen && !loggedIn {
		return fmt.Errorf("the IdP never showed its login screen")
	}
	return nil
}

// waitLocation polls the browser's location until ok says so (20 s at most).
func waitLocation(ctx context.Context, ok func(string) bool) (string, error) {
	deadline := time.Now().Add(20 * time.Second)
	poll := time.NewTicker(50 * time.Millisecond)
	defer poll.Stop()
	var loc string
	for {
		l, err := chromedp.Run(ctx, chromedp.Location())
		if err == nil {
			loc = l
			if ok(l) {
				return l, nil
			}
		}
		if time.Now().After(deadline) {
			return loc, fmt.Errorf("timed out at %s", loc)
		}
		<-poll.C
	}
}

// clickWhenVisible clicks sel once it shows (20 s at most); on failure it
// says where the browser is and what the page says.
func clickWhenVisible(ctx context.Context, sel string) error {
	c, cancel := context.WithTimeout(ctx, 20*time.Second)
	defer cancel()
	if err := chromedp.Do(c, chromedp.WaitVisible(chromedp.CSS(sel)), chromedp.Click(chromedp.CSS(sel))); err != nil {
		loc, _ := chromedp.Run(ctx, chromedp.Location())
		body, _ := chromedp.Run(ctx, chromedp.Evaluate[string]("document.body ? document.body.innerText : ''"))
		return fmt.Errorf("%s: %v (at %s: %.300q)", sel, err, loc, body)
	}
	return nil
}

func waitVisible(ctx context.Context, sel string) error {
	c, cancel := context.WithTimeout(ctx, 20*time.Second)
	defer cancel()
	return chromedp.Do(c, chromedp.WaitVisible(chromedp.CSS(sel)))
}

// pageEcho reads the upstream's echo from the page the browser shows.
func pageEcho(ctx context.Context) (echo, error) {
	var e echo
	body, err := chromedp.Run(ctx, chromedp.Evaluate[string]("document.body ? document.body.innerText : ''"))
	if err != nil {
		return e, err
	}
	if err := json.Unmarshal([]byte(body), &e); err != nil {
		loc, _ := chromedp.Run(ctx, chromedp.Location())
		return e, fmt.Errorf("the page at %s is not the upstream's echo: %.300s", loc, body)
	}
	return e, nil
}

// sessionCookies are the module's session cookies in the browser.
func sessionCookies(ctx context.Context, target string) ([]*http.Cookie, error) {
	return chromedp.Run(ctx, func(ctx context.Context, t *chromedp.Target) ([]*http.Cookie, error) {
		res, err := cdp.Call(ctx, t, network.GetCookies, network.GetCookiesParams{URLs: []string{target}})
		if err != nil {
			return nil, err
		}
		var out []*http.Cookie
		for _, c := range res.Cookies {
			if strings.HasPrefix(c.Name, "oidc_session") && !strings.Contains(c.Name, "_state_") {
				out = append(out, &http.Cookie{Name: c.Name, Value: c.Value})
			}
		}
		return out, nil
	})
}

// clientCredentials asks tokenURL for an access token as a service would.
func clientCredentials(tokenURL, id, secret string, form url.Values) (string, error) {
	form.Set("grant_type", "client_credentials")
	req, _ := http.NewRequest(http.MethodPost, tokenURL, strings.NewReader(form.Encode()))
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	req.SetBasicAuth(url.QueryEscape(id), url.QueryEscape(secret))
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	var tr struct {
		AccessToken string `json:"access_token"`
	}
	if resp.StatusCode != http.StatusOK || json.Unmarshal(b, &tr) != nil || tr.AccessToken == "" {
		return "", fmt.Errorf("client credentials grant at %s: %s: %.300s", tokenURL, resp.Status, b)
	}
	return tr.AccessToken, nil
}

func isJWT(tok string) bool { return strings.Count(tok, ".") == 2 }

// --- the development IdP -------------------------------------------------

func startDevIdP(t *testing.T, urls []string) *idpUnderTest {
	var redirects, postLogout []string
	for _, u := range urls {
		redirects = append(redirects, u+"/oauth2/callback")
		postLogout = append(postLogout, u+"/bye")
	}
	idp, err := devidp.Start(devidp.Options{
		RedirectURIs:           redirects,
		PostLogoutRedirectURIs: postLogout,
		AccessTokenLifetime:    accessTTL,
		BackchannelLogoutURIs:  []string{urls[0] + "/oauth2/backchannel_logout"},
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { idp.Close() })
	u := &idpUnderTest{
		name: "devidp", snippet: "devidp.caddyfile", issuer: idp.Issuer, clientID: "demo", clientSecret: "demo-secret",
		user:        identity{sub: "alice-id", email: "alice@example.com", name: "Alice Liddell", groups: "admins,staff"},
		loginScreen: "#username",
		login: func(ctx context.Context) error {
			return chromedp.Do(ctx,
				chromedp.SendKeys(chromedp.ID("username"), alice.username),
				chromedp.SendKeys(chromedp.ID("password"), alice.password),
				chromedp.Submit(chromedp.ID("password")))
		},
		ownLogout: func(s *sc, _ context.Context) {
			// The development IdP's own logout is the administrator's "log
			// out everywhere" (its end_session needs an id_token_hint).
			if err := idp.RevokeRefreshTokens("alice-id"); err != nil {
				s.Fatal(err)
			}
		},
		refreshGrants:   func(*sc) (int64, int64) { return idp.RefreshGrants(), idp.RefusedRefreshGrants() },
		backchannelSent: func(*sc) int64 { return idp.BackchannelLogoutsSent() },
		bearerJWT: func(s *sc) (string, string, string) {
			tok, err := clientCredentials(idp.Issuer+"/oauth/token", devidp.ServiceClientID, devidp.ServiceClientSecret, url.Values{"scope": {"openid"}})
			if err != nil {
				s.Fatal(err)
			}
			if !isJWT(tok) {
				s.Fatalf("the service token is not a JWT")
			}
			return tok, devidp.ServiceClientID, ""
		},
		bearerOpaque: func(*sc) (string, string, string) {
			return "", "", "the development IdP's client-credentials tokens are JWTs and its user tokens come only from a browser login; opaque-token introspection is covered against Hydra and oidc-provider"
		},
	}
	// The development IdP keeps no count of revocations; if it ever
	// exposes one (RevocationsReceived), the check runs.
	if rv, ok := any(idp).(interface{ RevocationsReceived() int64 }); ok {
		u.revocationMark = func(*sc) revocationMark { return revocationMark{ok: rv.RevocationsReceived()} }
		u.revocationChecked = func(s *sc, m revocationMark) {
			if rv.RevocationsReceived() <= m.ok {
				s.Errorf("the IdP received no revocation at logout")
			}
		}
	} else {
		u.revocationChecked = func(s *sc, _ revocationMark) {
			s.notSupported("the development IdP counts no revocation requests and its end_session ends the refresh tokens by itself, so the module's revocation cannot be told apart")
		}
	}
	return u
}

// --- Ory Hydra ---------------------------------------------------------

var hydraBuild = struct {
	sync.Once
	bin  string
	took time.Duration
	err  error
}{}

func startHydra(t *testing.T, urls []string, accessTokens string) *idpUnderTest {
	var buildTook time.Duration
	hydraBuild.Do(func() {
		began := time.Now()
		var built bool
		hydraBuild.bin, built, hydraBuild.err = BuildHydra()
		hydraBuild.took = time.Since(began)
		buildTook = hydraBuild.took
		if built {
			fmt.Printf("built Ory Hydra in %s\n", hydraBuild.took.Round(time.Second))
		} else {
			fmt.Printf("Ory Hydra: cached binary %s (%s)\n", hydraBuild.bin, hydraBuild.took.Round(time.Millisecond))
		}
	})
	if hydraBuild.err != nil {
		t.Fatal(hydraBuild.err)
	}
	h := StartHydra(t, hydraBuild.bin, HydraOptions{
		AccessTokens:   accessTokens,
		AccessTokenTTL: accessTTL,
		Users:          []HydraUser{{Username: alice.username, Password: alice.password, Subject: "alice-id", Claims: aliceClaims}},
	})
	var redirects, postLogout []string
	for _, u := range urls {
		redirects = append(redirects, u+"/oauth2/callback")
		postLogout = append(postLogout, u+"/bye")
	}
	// Hydra keeps no count of the logout tokens it sends: they pass
	// through a recorder on their way to the first replica.
	bc := newDeliveryRecorder(t, urls[0])
	if err := h.CreateClient(map[string]any{
		"client_id": "demo", "client_secret": "demo-secret",
		"grant_types": []string{"authorization_code", "refresh_token"}, "response_types": []string{"code"},
		"scope": "openid offline_access profile email", "token_endpoint_auth_method": "client_secret_basic",
		"redirect_uris": redirects, "post_logout_redirect_uris": postLogout,
		"backchannel_logout_uri": bc.url + "/oauth2/backchannel_logout", "backchannel_logout_session_required": true,
		"frontchannel_logout_uri": urls[0] + "/oauth2/frontchannel_logout", "frontchannel_logout_session_required": true,
	}); err != nil {
		t.Fatal(err)
	}
	if err := h.CreateClient(map[string]any{
		"client_id": "robot", "client_secret": "robot-secret",
		"grant_types": []string{"client_credentials"}, "response_types": []string{"token"},
		"scope": "api", "audience": []string{apiAudience}, "token_endpoint_auth_method": "client_secret_basic",
	}); err != nil {
		t.Fatal(err)
	}
	robotToken := func(s *sc) string {
		tok, err := clientCredentials(h.Issuer+"/oauth2/token", "robot", "robot-secret", url.Values{"scope": {"api"}, "audience": {apiAudience}})
		if err != nil {
			s.Fatal(err)
		}
		return tok
	}
	u := &idpUnderTest{
		buildTook: buildTook,
		name:      "hydra-" + accessTokens, snippet: "hydra.caddyfile", issuer: discoveredIssuer(t, h.Issuer), clientID: "demo", clientSecret: "demo-secret",
		env:         map[string]string{"HYDRA_ADMIN": h.AdminURL},
		user:        identity{sub: "alice-id", email: "alice@example.com", name: "Alice Liddell", groups: "admins,staff"},
		loginScreen: "#username",
		login: func(ctx context.Context) error {
			return chromedp.Do(ctx,
				chromedp.SendKeys(chromedp.ID("username"), alice.username),
				chromedp.SendKeys(chromedp.ID("password"), alice.password),
				chromedp.Click(chromedp.ID("sign-in")))
		},
		consent:       "#accept",
		logoutConfirm: "#logout-yes",
		ownLogout: func(s *sc, ctx context.Context) {
			// Hydra's own logout: the browser at its logout endpoint, the
			// logout app confirms, Hydra tells the relying parties.
			if err := chromedp.Do(ctx, chromedp.Navigate(h.Issuer+"/oauth2/sessions/logout")); err != nil {
				s.Fatalf("Hydra's logout: %v", err)
			}
			if err := clickWhenVisible(ctx, "#logout-yes"); err != nil {
				s.Fatalf("Hydra's logout: %v", err)
			}
			if loc, err := waitLocation(ctx, func(l string) bool { return l == h.AppURL+"/loggedout" }); err != nil {
				s.Fatalf("Hydra's logout did not finish (at %s): %v", loc, err)
			}
		},
		refreshGrants:   func(*sc) (int64, int64) { return h.TokenGrants("refresh_token") },
		backchannelSent: func(*sc) int64 { return bc.accepted.Load() },
		revocationMark: func(s *sc) revocationMark {
			ok, refused := h.Revocations()
			m := revocationMark{ok: ok, refused: refused}
			if rt := h.LatestRefreshToken("demo"); rt != "" {
				in, err := h.Introspect(rt)
				m.wasActive = err == nil && in["active"] == true
			}
			return m
		},
		revocationChecked: func(s *sc, m revocationMark) {
			if !m.wasActive {
				s.Fatalf("the session's refresh token was not active at Hydra before the logout: nothing to check")
			}
			ok, refused := h.Revocations()
			s.Logf("revocation requests at logout: %d accepted, %d refused", ok-m.ok, refused-m.refused)
			if ok-m.ok < 1 || refused != m.refused {
				s.Errorf("Hydra answered %d revocation(s) and refused %d at logout; want at least 1 and none refused", ok-m.ok, refused-m.refused)
			}
			rt := h.LatestRefreshToken("demo")
			if rt == "" {
				s.Fatalf("Hydra issued no refresh token to the client")
			}
			in, err := h.Introspect(rt)
			if err != nil {
				s.Fatal(err)
			}
			if in["active"] != false {
				s.Errorf("after logout Hydra says the session's last refresh token is active=%v", in["active"])
			}
		},
	}
	if accessTokens == "jwt" {
		u.bearerJWT = func(s *sc) (string, string, string) {
			tok := robotToken(s)
			if !isJWT(tok) {
				s.Fatalf("Hydra's JWT strategy gave a token that is not a JWT")
			}
			return tok, "robot", ""
		}
		u.bearerOpaque = func(*sc) (string, string, string) {
			return "", "", "this run issues JWT access tokens (the opaque run covers introspection)"
		}
	} else {
		u.bearerJWT = func(*sc) (string, string, string) {
			return "", "", "this run issues opaque access tokens (the JWT run covers JWTs)"
		}
		u.bearerOpaque = func(s *sc) (string, string, string) {
			tok := robotToken(s)
			if isJWT(tok) {
				s.Fatalf("Hydra's opaque strategy gave a JWT")
			}
			return tok, "robot", ""
		}
	}
	return u
}

// deliveryRecorder forwards the IdP's back-channel logout requests to a
// replica and counts those the replica accepted (200).
type deliveryRecorder struct {
	url      string
	accepted atomic.Int64
}

func newDeliveryRecorder(t *testing.T, target string) *deliveryRecorder {
	u, _ := url.Parse(target)
	r := &deliveryRecorder{}
	proxy := httputil.NewSingleHostReverseProxy(u)
	proxy.ModifyResponse = func(resp *http.Response) error {
		if resp.StatusCode == http.StatusOK {
			r.accepted.Add(1)
		}
		return nil
	}
	l := listen(t)
	r.url = "http://" + l.Addr().String()
	serve(t, l, proxy)
	return r
}

// discoveredIssuer is the issuer exactly as the IdP's discovery document
// spells it (the module compares it byte for byte).
func discoveredIssuer(t *testing.T, base string) string {
	resp, err := http.Get(base + "/.well-known/openid-configuration")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var d struct {
		Issuer string `json:"issuer"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&d); err != nil || d.Issuer == "" {
		t.Fatalf("discovery at %s: %v", base, err)
	}
	return d.Issuer
}

// --- panva's oidc-provider -----------------------------------------------

func startOIDCProvider(t *testing.T, urls []string) *idpUnderTest {
	var redirects, postLogout []string
	for _, u := range urls {
		redirects = append(redirects, u+"/oauth2/callback")
		postLogout = append(postLogout, u+"/bye")
	}
	// The npm install (cached after the first run) is timed apart from the run.
	installBegan := time.Now()
	if _, err := InstallOIDCProvider(); err != nil {
		t.Fatal(err)
	}
	installTook := time.Since(installBegan)
	fmt.Printf("oidc-provider: npm install ready in %s\n", installTook.Round(time.Millisecond))
	p := StartOIDCProvider(t, OIDCProviderConfig{
		Clients: []map[string]any{
			{
				"client_id": "demo", "client_secret": "demo-secret",
				"grant_types": []string{"authorization_code", "refresh_token"}, "response_types": []string{"code"},
				"redirect_uris": redirects, "post_logout_redirect_uris": postLogout,
				"backchannel_logout_uri": urls[0] + "/oauth2/backchannel_logout", "backchannel_logout_session_required": true,
				"token_endpoint_auth_method": "client_secret_basic",
			},
			{"client_id": "robot-jwt", "client_secret": "robot-secret", "grant_types": []string{"client_credentials"}, "response_types": []string{}, "redirect_uris": []string{}},
			{"client_id": "robot-opaque", "client_secret": "robot-secret", "grant_types": []string{"client_credentials"}, "response_types": []string{}, "redirect_uris": []string{}},
		},
		Accounts:  map[string]Account{alice.username: {Claims: aliceClaims}},
		TTL:       map[string]int{"AccessToken": int(accessTTL / time.Second)},
		Resources: map[string]ResourceServer{apiAudience: {Scope: "api", Format: "opaque", Formats: map[string]string{"robot-jwt": "jwt"}}},
	})
	stats := func(s *sc) OIDCProviderStats {
		st, err := p.Stats()
		if err != nil {
			s.Fatal(err)
		}
		return st
	}
	robotToken := func(s *sc, client string) string {
		tok, err := clientCredentials(p.Issuer+"/token", client, "robot-secret", url.Values{"scope": {"api"}, "resource": {apiAudience}})
		if err != nil {
			s.Fatal(err)
		}
		return tok
	}
	return &idpUnderTest{
		buildTook: installTook,
		name:      "oidc-provider", snippet: "oidc-provider.caddyfile", issuer: p.Issuer, clientID: "demo", clientSecret: "demo-secret",
		// The development login screen's login is the account id: the sub.
		user:        identity{sub: "alice", email: "alice@example.com", name: "Alice Liddell", groups: "admins,staff"},
		loginScreen: `input[name="login"]`,
		login: func(ctx context.Context) error {
			return chromedp.Do(ctx,
				chromedp.SendKeys(chromedp.CSS(`input[name="login"]`), alice.username),
				chromedp.SendKeys(chromedp.CSS(`input[name="password"]`), alice.password),
				chromedp.Click(chromedp.CSS(`button[type="submit"]`)))
		},
		consent:       `input[name="prompt"][value="consent"] ~ button[type="submit"]`,
		logoutConfirm: `button[name="logout"][value="yes"]`,
		ownLogout: func(s *sc, ctx context.Context) {
			// oidc-provider's own logout page, without an id_token_hint:
			// "Yes, sign me out" ends the session at every client.
			if err := chromedp.Do(ctx, chromedp.Navigate(p.Issuer+"/session/end")); err != nil {
				s.Fatalf("oidc-provider's logout: %v", err)
			}
			if err := clickWhenVisible(ctx, `button[name="logout"][value="yes"]`); err != nil {
				s.Fatalf("oidc-provider's logout: %v", err)
			}
			if loc, err := waitLocation(ctx, func(l string) bool { return strings.HasPrefix(l, p.Issuer+"/session/end/success") }); err != nil {
				s.Fatalf("oidc-provider's logout did not finish (at %s): %v", loc, err)
			}
		},
		refreshGrants: func(s *sc) (int64, int64) {
			c := stats(s).Token["refresh_token"]
			return c.OK, c.Refused
		},
		backchannelSent: func(s *sc) int64 {
			st := stats(s)
			if st.Backchannel.Error > 0 {
				s.Errorf("oidc-provider could not deliver %d back-channel logout(s): %v", st.Backchannel.Error, st.Backchannel.Errors)
			}
			return st.Backchannel.OK
		},
		revocationMark: func(s *sc) revocationMark {
			st := stats(s)
			m := revocationMark{ok: st.Revocation.OK, refused: st.Revocation.Refused}
			if rt := st.LatestRefreshToken["demo"]; rt != "" {
				m.wasActive, _ = introspect(p.Issuer+"/token/introspection", "demo", "demo-secret", rt)
			}
			return m
		},
		revocationChecked: func(s *sc, m revocationMark) {
			if !m.wasActive {
				s.Fatalf("the session's refresh token was not active at oidc-provider before the logout: nothing to check")
			}
			st := stats(s)
			s.Logf("revocation requests at logout: %d accepted, %d refused", st.Revocation.OK-m.ok, st.Revocation.Refused-m.refused)
			if st.Revocation.OK-m.ok < 1 || st.Revocation.Refused != m.refused {
				s.Errorf("oidc-provider answered %d revocation(s) and refused %d at logout; want at least 1 and none refused",
					st.Revocation.OK-m.ok, st.Revocation.Refused-m.refused)
			}
			rt := st.LatestRefreshToken["demo"]
			if rt == "" {
				s.Fatalf("oidc-provider issued no refresh token to the client")
			}
			active, err := introspect(p.Issuer+"/token/introspection", "demo", "demo-secret", rt)
			if err != nil {
				s.Fatal(err)
			}
			if active {
				s.Errorf("after logout oidc-provider says the session's last refresh token is active")
			}
		},
		bearerJWT: func(s *sc) (string, string, string) {
			tok := robotToken(s, "robot-jwt")
			if !isJWT(tok) {
				s.Fatalf("the resource server's JWT format gave a token that is not a JWT")
			}
			return tok, "robot-jwt", ""
		},
		bearerOpaque: func(s *sc) (string, string, string) {
			tok := robotToken(s, "robot-opaque")
			if isJWT(tok) {
				s.Fatalf("the opaque format gave a JWT")
			}
			return tok, "robot-opaque", ""
		},
	}
}

// introspect asks an RFC 7662 endpoint whether token is active.
func introspect(endpoint, id, secret, token string) (bool, error) {
	req, _ := http.NewRequest(http.MethodPost, endpoint, strings.NewReader(url.Values{"token": {token}}.Encode()))
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	req.SetBasicAuth(id, secret)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return false, err
	}
	defer resp.Body.Close()
	var out struct {
		Active bool `json:"active"`
	}
	if resp.StatusCode != http.StatusOK {
		b, _ := io.ReadAll(resp.Body)
		return false, fmt.Errorf("introspection: %s: %.200s", resp.Status, b)
	}
	err = json.NewDecoder(resp.Body).Decode(&out)
	return out.Active, err
}

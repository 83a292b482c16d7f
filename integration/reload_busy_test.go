package integration

// Issue 17: reloads through the admin API while requests are in flight, as
// an operator reloads a busy server. Caddy does not wait for the old
// config's requests before cleaning it up.

import (
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/caddy-oidc/caddy-oidc/integration/flow"
	"github.com/caddy-oidc/caddy-oidc/internal/redistest"
)

// waitUntil polls cond for at most d and fails the test if it stays false.
func waitUntil(t *testing.T, d time.Duration, what string, cond func() bool) {
	t.Helper()
	if !redistest.Poll(d, cond) {
		t.Fatalf("timed out after %s waiting for %s", d, what)
	}
}

// alive reports whether Caddy's process still runs and its admin API answers.
func (e *env) alive() bool {
	if e.cmd.ProcessState != nil {
		return false
	}
	resp, err := http.Get("http://" + e.admin + "/config/")
	if err != nil {
		return false
	}
	resp.Body.Close()
	return resp.StatusCode == 200
}

// TestReloadWhileRefreshHeldAtIdP: a reload while a refresh waits at the
// IdP neither crashes Caddy nor drops the grant: the request answers 200,
// the IdP saw exactly one grant and no reuse, and the session lives on.
func TestReloadWhileRefreshHeldAtIdP(t *testing.T) {
	for _, store := range []string{"cookie", "cache"} {
		t.Run(store, func(t *testing.T) {
			// Access tokens always within refresh_before: every request refreshes.
			e := newEnv(t, envOptions{accessTTL: 20 * time.Second, oidc: "refresh_before 30s\n\t\tsession_store " + store})
			c := e.browser()
			readEcho(t, e.login(c, "/", "alice", "alice-password"))
			e.idp.SetRefreshDelay(3 * time.Second)
			grants, refused := e.idp.RefreshGrants(), e.idp.RefusedRefreshGrants()
			type result struct {
				code   int
				header string
				err    error
			}
			done := make(chan result, 1)
			go func() {
				req, _ := http.NewRequest("GET", e.caddyURL+"/held", nil)
				resp, err := c.Do(req)
				if err != nil {
					done <- result{err: err}
					return
				}
				b, _ := io.ReadAll(resp.Body)
				resp.Body.Close()
				done <- result{code: resp.StatusCode, header: string(b)}
			}()
			waitUntil(t, 5*time.Second, "the refresh to reach the IdP", func() bool { return e.idp.GrantsWaiting() > 0 })
			// Any reload will do; this one changes only an identity header.
			e.reload(t, strings.Replace(e.currentCaddyfile(t), "header X-Auth-User", "header X-Reloaded {http.auth.user.id}\n\t\theader X-Auth-User", 1))
			res := <-done
			if res.err != nil || res.code != 200 {
				t.Fatalf("the request whose refresh was held across the reload: %d %v %.200s", res.code, res.err, res.header)
			}
			if !e.alive() {
				t.Fatalf("caddy is down after the reload:\n%s", e.logs.String())
			}
			if g, r := e.idp.RefreshGrants()-grants, e.idp.RefusedRefreshGrants()-refused; g != 1 || r != 0 {
				t.Errorf("%d grants and %d refused at the IdP, want exactly 1 and 0", g, r)
			}
			e.idp.SetRefreshDelay(0)
			got := readEcho(t, e.get(c, "/after", nil))
			if got.Headers.Get("X-Reloaded") != "alice-id" {
				t.Errorf("after the reload the session does not reach the new config: %v", got.Headers)
			}
			if r := e.idp.RefusedRefreshGrants() - refused; r != 0 {
				t.Errorf("the next refresh was refused (%d): the rotated refresh token was lost", r)
			}
			if strings.Contains(e.logs.String(), "panic") {
				t.Errorf("caddy logged a panic:\n%s", e.logs.String())
			}
		})
	}
}

// TestReloadWhileLoginCallbackInFlight: a login whose code exchange waits
// at the IdP during a reload completes, and its session works on the new
// config (with the session in the app's cache too).
func TestReloadWhileLoginCallbackInFlight(t *testing.T) {
	e := newEnv(t, envOptions{oidc: "session_store cache"})
	c := e.browser()
	form, err := flow.Start(c, e.caddyURL+"/landing")
	if err != nil {
		t.Fatal(err)
	}
	e.idp.SetCodeDelay(3 * time.Second)
	type result struct {
		resp *http.Response
		err  error
	}
	done := make(chan result, 1)
	go func() {
		resp, err := flow.Submit(c, e.idp.Issuer, form, "alice", "alice-password") //nolint:bodyclose // readEcho closes it after the reload
		done <- result{resp, err}
	}()
	waitUntil(t, 5*time.Second, "the code exchange to reach the IdP", func() bool { return e.idp.GrantsWaiting() > 0 })
	e.reload(t, strings.Replace(e.currentCaddyfile(t), "header X-Auth-User", "header X-Reloaded {http.auth.user.id}\n\t\theader X-Auth-User", 1))
	res := <-done
	if res.err != nil {
		t.Fatal(res.err)
	}
	got := readEcho(t, res.resp)
	if got.Path != "/landing" {
		t.Errorf("login ended at %q", got.Path)
	}
	e.idp.SetCodeDelay(0)
	got = readEcho(t, e.get(c, "/after", nil))
	if got.Headers.Get("X-Reloaded") != "alice-id" {
		t.Errorf("the session made during the reload does not work on the new config: %v", got.Headers)
	}
	if !e.alive() || strings.Contains(e.logs.String(), "panic") {
		t.Fatalf("caddy crashed or panicked:\n%s", e.logs.String())
	}
}

// TestFiftyReloadsUnderLoad alternates two Valkey cache blocks (each a new
// cache set) 50 times while clients keep requesting: no request fails, a
// logged-out cookie stays out, and goroutines and Valkey connections come
// back to where they were.
func TestFiftyReloadsUnderLoad(t *testing.T) {
	srv := redistest.Start(t)
	blockA := "oidc {\n\t\tcache valkey {\n\t\t\taddress " + srv.Addr + "\n\t\t\ttimeout 300ms\n\t\t}\n\t}"
	blockB := strings.Replace(blockA, "timeout 300ms", "timeout 400ms", 1)
	// The load goes to a respond route: Caddy's reverse_proxy keeps the idle
	// upstream connections of each replaced transport until they time out,
	// which would hide the module's own state.
	e := newEnv(t, envOptions{global: blockA, oidc: "session_store cache", site: `respond /load/* "ok" 200`})
	var jars []*http.Client
	for _, u := range []string{"alice", "alice"} {
		c := e.browser()
		readEcho(t, e.login(c, "/", u, u+"-password"))
		jars = append(jars, c)
	}
	// A logged-out session's cookie, kept by an attacker.
	carol := e.browser()
	readEcho(t, e.login(carol, "/", "bob", "bob-password"))
	cu, _ := url.Parse(e.caddyURL)
	stolen := carol.Jar.Cookies(cu)
	req, _ := http.NewRequest("POST", e.caddyURL+"/oauth2/logout", nil)
	req.Header.Set("Origin", e.caddyURL)
	resp, err := noRedirect(carol).Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusFound && resp.StatusCode != http.StatusOK {
		t.Fatalf("logout: %d", resp.StatusCode)
	}
	after := e.get(carol, "/after-logout", map[string]string{"Accept": "application/json"})
	after.Body.Close()
	if after.StatusCode != http.StatusUnauthorized {
		t.Fatalf("after logout the session still answers %d", after.StatusCode)
	}

	readEcho(t, e.get(jars[0], "/warm", nil))
	goroutinesBefore, connsBefore := goroutines(t, e.admin), valkeyClients(t, srv.Addr)

	var ok, failed, retried atomic.Int64
	var failures sync.Map
	stop := make(chan struct{})
	var wg sync.WaitGroup
	for i := range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			c := jars[i%len(jars)]
			for n := 0; ; n++ {
				select {
				case <-stop:
					return
				default:
				}
				select {
				case <-stop:
					return
				case <-time.After(5 * time.Millisecond):
				}
				req, _ := http.NewRequest("GET", fmt.Sprintf("%s/load/%d/%d", e.caddyURL, i, n), nil)
				req.Header.Set("Accept", "application/json")
				resp, err := c.Do(req)
				if err != nil {
					// A connection the old server closed or reset while
					// Caddy swapped configs (a transport error, before any
					// handler ran): retried once, as browsers do.
					retried.Add(1)
					resp, err = c.Do(req)
				}
				if err != nil {
					failed.Add(1)
					failures.Store(err.Error(), true)
					continue
				}
				_, _ = io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
				if resp.StatusCode == 200 {
					ok.Add(1)
				} else {
					failed.Add(1)
					failures.Store(resp.StatusCode, true)
				}
			}
		}()
	}
	cfg := e.currentCaddyfile(t)
	for i := range 50 {
		next := strings.Replace(cfg, blockA, blockB, 1)
		if i%2 == 1 {
			next = cfg
		}
		e.reload(t, next)
		// A copy of the logged-out cookie stays out whichever set is live.
		req, _ := http.NewRequest("GET", e.caddyURL+"/stolen", nil)
		req.Header.Set("Accept", "application/json")
		for _, ck := range stolen {
			req.AddCookie(ck)
		}
		if resp, err := http.DefaultClient.Do(req); err == nil {
			resp.Body.Close()
			if resp.StatusCode == 200 {
				t.Errorf("reload %d: a logged-out cookie was accepted", i)
			}
		}
	}
	close(stop)
	wg.Wait()
	// Old cache sets close once their requests drained: give them that time.
	var goroutinesAfter, connsAfter int
	settled := func() bool {
		goroutinesAfter, connsAfter = goroutines(t, e.admin), valkeyClients(t, srv.Addr)
		return connsAfter <= connsBefore+1 && goroutinesAfter <= goroutinesBefore+10
	}
	redistest.Poll(90*time.Second, settled)
	for _, c := range jars {
		c.CloseIdleConnections()
	}
	if !settled() {
		t.Logf("goroutines:\n%.6000s", adminGet(t, e.admin, "/debug/pprof/goroutine?debug=1"))
		t.Errorf("after the reloads: goroutines %d -> %d, Valkey connections %d -> %d: the old cache sets were not released",
			goroutinesBefore, goroutinesAfter, connsBefore, connsAfter)
	}
	t.Logf("50 reloads under load: %d requests answered 200, %d failed (%d connections closed by the reload and retried); goroutines %d -> %d; Valkey connections %d -> %d",
		ok.Load(), failed.Load(), retried.Load(), goroutinesBefore, goroutinesAfter, connsBefore, connsAfter)
	if failed.Load() != 0 {
		var kinds []string
		failures.Range(func(k, _ any) bool { kinds = append(kinds, fmt.Sprint(k)); return true })
		t.Errorf("%d requests failed during the reloads: %v", failed.Load(), kinds)
	}
	if ok.Load() == 0 {
		t.Error("no request was served during the reloads")
	}
}

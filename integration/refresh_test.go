package integration

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"net/http/httptrace"
	"net/url"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/caddy-oidc/caddy-oidc/internal/redistest"
)

// refreshEnv: three replicas sharing a Valkey, access tokens that need a
// refresh as soon as they are issued and stay valid for a minute (lifetime
// 60 s, refresh_before 70 s): no wait for them to come due, and none
// expires while a loaded machine logs 200 sessions in. A test that wants
// refreshed tokens not to need another raises the IdP's lifetime.
func refreshEnv(t *testing.T, store string, extraGlobal string, extraOIDC ...string) *env {
	srv := redistest.Start(t, persistent...)
	return newEnv(t, envOptions{
		replicas:  3,
		accessTTL: time.Minute,
		oidc:      "refresh_before 70s\n\t\tsession_store " + store + "\n\t\t" + strings.Join(extraOIDC, "\n\t\t"),
		global:    "oidc {\n\t\t" + extraGlobal + "\n\t\tcache valkey {\n\t\t\taddress " + srv.Addr + "\n\t\t}\n\t}",
	})
}

// burst sends n concurrent API requests carrying the same cookies, spread
// over the given replicas, and returns their statuses and latencies.
func burst(t *testing.T, replicas []*env, cookies []*http.Cookie, n int) (statuses map[int]int, latencies []time.Duration) {
	t.Helper()
	return burstCounting(t, replicas, cookies, n, new(atomic.Int64))
}

// burstCounting is burst that adds to sent each request written in full to
// its replica, so a test can act once they have all arrived.
func burstCounting(t *testing.T, replicas []*env, cookies []*http.Cookie, n int, sent *atomic.Int64) (statuses map[int]int, latencies []time.Duration) {
	t.Helper()
	trace := &httptrace.ClientTrace{WroteRequest: func(info httptrace.WroteRequestInfo) {
		if info.Err == nil {
			sent.Add(1)
		}
	}}
	var mu sync.Mutex
	statuses = map[int]int{}
	var wg sync.WaitGroup
	start := make(chan struct{})
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			r := replicas[i%len(replicas)]
			req, _ := http.NewRequestWithContext(httptrace.WithClientTrace(context.Background(), trace), http.MethodGet, fmt.Sprintf("%s/burst/%d", r.caddyURL, i), nil)
			for _, ck := range cookies {
				req.AddCookie(ck)
			}
			req.Header.Set("Accept", "application/json")
			<-start
			t0 := time.Now()
			resp, err := http.DefaultClient.Do(req)
			d := time.Since(t0)
			code := -1
			if err == nil {
				_, _ = io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
				code = resp.StatusCode
			}
			mu.Lock()
			statuses[code]++
			latencies = append(latencies, d)
			mu.Unlock()
		}()
	}
	close(start)
	wg.Wait()
	sort.Slice(latencies, func(i, j int) bool { return latencies[i] < latencies[j] })
	return statuses, latencies
}

func pct(l []time.Duration, p float64) time.Duration {
	if len(l) == 0 {
		return 0
	}
	return l[min(len(l)-1, int(float64(len(l))*p))].Round(100 * time.Microsecond)
}

func (e *env) loginCookies(t *testing.T, user string) []*http.Cookie {
	t.Helper()
	c := e.browser()
	readEcho(t, e.login(c, "/", user, user+"-password"))
	u, _ := url.Parse(e.caddyURL)
	return c.Jar.Cookies(u)
}

func TestRefreshBurstsOneGrantPerSession(t *testing.T) {
	for _, store := range []string{"cookie", "cache"} {
		t.Run(store, func(t *testing.T) {
			e := refreshEnv(t, store, "")
			type combo struct {
				replicas, requests int
				cookies            []*http.Cookie
			}
			var combos []*combo
			for _, r := range []int{1, 3} {
				for _, n := range []int{10, 50, 200} {
					combos = append(combos, &combo{replicas: r, requests: n, cookies: e.loginCookies(t, "alice")})
				}
			}
			// Every session's access token needs a refresh, and a refreshed
			// one does not, however long the bursts take.
			e.idp.SetAccessTokenLifetime(5 * time.Minute)
			for _, c := range combos {
				before, refusedBefore := e.idp.RefreshGrants(), e.idp.RefusedRefreshGrants()
				statuses, lat := burst(t, e.replicas[:c.replicas], c.cookies, c.requests)
				grants, refused := e.idp.RefreshGrants()-before, e.idp.RefusedRefreshGrants()-refusedBefore
				t.Logf("%s store, %d replica(s), %d concurrent requests: %d grant(s) at the IdP, %d refused; statuses %v; latency p50 %s p99 %s",
					store, c.replicas, c.requests, grants, refused, statuses, pct(lat, 0.5), pct(lat, 0.99))
				if grants != 1 || refused != 0 || statuses[200] != c.requests {
					t.Errorf("%d replica(s) x %d requests: %d grants, %d refused, statuses %v; want 1 grant, 0 refused, all 200",
						c.replicas, c.requests, grants, refused, statuses)
				}
			}
		})
	}
}

func TestRefreshLeaderKilledMidGrant(t *testing.T) {
	// idp_timeout at most half the lease, as the config requires.
	e := refreshEnv(t, "cookie", "refresh_lease 2s", "idp_timeout 1s")
	cookies := e.loginCookies(t, "alice") // its access token needs a refresh
	// The login's own last request refreshed already: count from here.
	grants0, refused0 := e.idp.RefreshGrants(), e.idp.RefusedRefreshGrants()
	grants := func() (ok, refused int64) {
		return e.idp.RefreshGrants() - grants0, e.idp.RefusedRefreshGrants() - refused0
	}
	e.idp.SetRefreshDelay(500 * time.Millisecond)

	leader, followers := e.replicas[0], e.replicas[1:]
	go func() {
		req, _ := http.NewRequest(http.MethodGet, leader.caddyURL+"/leader", nil)
		for _, ck := range cookies {
			req.AddCookie(ck)
		}
		req.Header.Set("Accept", "application/json")
		if resp, err := http.DefaultClient.Do(req); err == nil {
			resp.Body.Close()
		}
	}()
	waitUntil(t, 5*time.Second, "the leader's grant to reach the IdP", func() bool { return e.idp.GrantsWaiting() > 0 })
	start := time.Now()
	done := make(chan struct{})
	var statuses map[int]int
	var sent atomic.Int64
	go func() {
		statuses, _ = burstCounting(t, followers, cookies, 20, &sent)
		close(done)
	}()
	// The leader dies once the followers' requests have reached them.
	waitUntil(t, 5*time.Second, "the followers' requests to be sent", func() bool { return sent.Load() == 20 })
	if err := leader.cmd.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	<-done
	answered := time.Since(start)
	// The followers' access token is still valid: they serve it while the
	// lease of the dead leader runs out, and one of them then spends the
	// refresh token.
	waitUntil(t, 10*time.Second, "a follower to take the refresh over", func() bool { ok, _ := grants(); return ok >= 1 })
	took := time.Since(start)
	g, r := grants()
	t.Logf("leader killed mid-grant: followers answered %v after %s; the refresh was taken over after %s (lease 2s, IdP delay 0.5s); %d grant(s), %d refused",
		statuses, answered.Round(time.Millisecond), took.Round(time.Millisecond), g, r)
	if statuses[200] != 20 {
		t.Errorf("followers: %v, want 20 x 200", statuses)
	}
	if g != 1 || r != 0 {
		t.Errorf("%d successful grants and %d refused, want exactly 1 and 0", g, r)
	}
	if took > 2*time.Second+time.Second+2*time.Second {
		t.Errorf("the refresh was taken over after %s, more than the lease plus one grant (with margin)", took)
	}
}

func TestTwoHundredSessionsRefreshAcrossReplicas(t *testing.T) {
	e := refreshEnv(t, "cache", "")
	var sessions [][]*http.Cookie
	for i := range 200 {
		user := "alice"
		if i%2 == 1 {
			user = "bob"
		}
		sessions = append(sessions, e.replicas[i%3].loginCookies(t, user))
	}
	// Every session's access token needs a refresh. Refreshed tokens last
	// long: a refreshed 60 s token would rightly be refreshed again.
	e.idp.SetAccessTokenLifetime(5 * time.Minute)
	before := e.idp.RefreshGrants()
	var ok, bad atomic.Int64
	var wg sync.WaitGroup
	start := make(chan struct{})
	for _, cookies := range sessions {
		for _, r := range e.replicas {
			wg.Add(1)
			go func() {
				defer wg.Done()
				req, _ := http.NewRequest(http.MethodGet, r.caddyURL+"/many", nil)
				for _, ck := range cookies {
					req.AddCookie(ck)
				}
				req.Header.Set("Accept", "application/json")
				<-start
				resp, err := http.DefaultClient.Do(req)
				if err != nil {
					bad.Add(1)
					return
				}
				_, _ = io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
				if resp.StatusCode == http.StatusOK {
					ok.Add(1)
				} else {
					bad.Add(1)
				}
			}()
		}
	}
	close(start)
	wg.Wait()
	grants := e.idp.RefreshGrants() - before
	t.Logf("200 sessions x 3 replicas at once: %d grants, %d refused, %d ok, %d failed", grants, e.idp.RefusedRefreshGrants(), ok.Load(), bad.Load())
	if grants != 200 || e.idp.RefusedRefreshGrants() != 0 || bad.Load() != 0 {
		t.Errorf("%d grants for 200 sessions, %d refused, %d failed requests", grants, e.idp.RefusedRefreshGrants(), bad.Load())
	}
}

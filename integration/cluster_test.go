package integration

import (
	"bufio"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/caddy-oidc/caddy-oidc/integration/flow"
	"github.com/caddy-oidc/caddy-oidc/internal/redistest"
)

// clusterSessKeys lists the session keys held by the cluster's live nodes,
// by node index (a dead node is skipped).
func clusterSessKeys(cl *redistest.Cluster) map[int][]string {
	out := map[int][]string{}
	for i, a := range cl.Addrs {
		s, err := redistest.CLI(a, "--scan", "--pattern", "caddy-oidc:sess:*")
		if err != nil {
			continue
		}
		out[i] = strings.Fields(s)
	}
	return out
}

// oidcMetrics returns the caddy_oidc_valkey_* and write-back/stale lines of
// a replica's /metrics.
func oidcMetrics(t *testing.T, e *env) []string {
	var out []string
	sc := bufio.NewScanner(strings.NewReader(adminGet(t, e.admin, "/metrics")))
	for sc.Scan() {
		l := sc.Text()
		if strings.HasPrefix(l, "caddy_oidc_valkey_") || strings.HasPrefix(l, "caddy_oidc_cache_writeback") || strings.HasPrefix(l, "caddy_oidc_cache_l1_stale") {
			out = append(out, l)
		}
	}
	return out
}

// cacheLogLines returns the oidc.cache log messages of a replica (and the
// session write warning), each once with its count and first occurrence.
func cacheLogLines(e *env) []string {
	type seen struct {
		first string
		n     int
	}
	byMsg := map[string]*seen{}
	var order []string
	for l := range strings.Lines(e.logs.String()) {
		if !strings.Contains(l, `"logger":"oidc.cache"`) && !strings.Contains(l, "session kept in this process only") {
			continue
		}
		i := strings.Index(l, `"msg":"`)
		if i < 0 {
			continue
		}
		msg := l[i+7:]
		msg = msg[:strings.IndexByte(msg, '"')]
		if byMsg[msg] == nil {
			byMsg[msg] = &seen{first: strings.TrimSpace(l)}
			order = append(order, msg)
		}
		byMsg[msg].n++
	}
	var out []string
	for _, m := range order {
		out = append(out, fmt.Sprintf("%dx %s", byMsg[m].n, byMsg[m].first))
	}
	return out
}

// Issue 15: a cluster master holding a session's key dies (kill -9) under
// load, while the invalidation subscriptions of the replicas are on that
// very master. Warm replicas keep answering 200 (never 302/401), a cold one
// may answer 503; once the master is back every replica serves the
// session, and a session written during the outage is everywhere.
func TestClusterMasterDownKeepsWarmSessions(t *testing.T) {
	cl := redistest.StartClusterWith(t, "--cluster-require-full-coverage", "no", "--appendonly", "yes", "--appendfsync", "always")
	e := newEnv(t, envOptions{replicas: 3, accessTTL: 30 * time.Minute, oidc: "session_store cache", global: valkeyGlobal(cl.Addrs...)})
	reps := e.replicas // 0 and 1 warm, 2 cold
	names := []string{"warm-a", "warm-b", "cold"}
	const channel = "caddy-oidc:invalidate"

	c := reps[0].browser()
	readEcho(t, reps[0].login(c, "/", "alice", "alice-password"))
	u, _ := url.Parse(reps[0].caddyURL)
	cookies := c.Jar.Cookies(u)
	var sessKey string
	for _, ks := range clusterSessKeys(cl) {
		for _, k := range ks {
			sessKey = k
		}
	}
	if sessKey == "" {
		t.Fatal("the session is not in the cluster")
	}
	victim := cl.MasterOf(sessKey)
	t.Logf("session key on master %d (%s)", victim, cl.Addrs[victim])

	cl.ForceSubscriptionsOnto(victim, channel, len(reps))
	get := func(r *env, path string, cks []*http.Cookie) (int, error) {
		req, _ := http.NewRequest(http.MethodGet, r.caddyURL+path, nil)
		for _, ck := range cks {
			req.AddCookie(ck)
		}
		req.Header.Set("Sec-Fetch-Mode", "navigate") // a lost session would be a 302, not a 401
		cl := noRedirect(http.DefaultClient)
		cl.Timeout = 5 * time.Second
		resp, err := cl.Do(req)
		if err != nil {
			return 0, err
		}
		_, _ = io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		return resp.StatusCode, nil
	}
	// Warm the two warm replicas' L1 (the forced re-subscriptions made
	// their entries unverified; a read confirms them).
	for _, r := range reps[:2] {
		if s, err := get(r, "/warm", cookies); s != http.StatusOK {
			t.Fatalf("warming %s: %d %v", r.caddyURL, s, err)
		}
	}

	type result struct {
		at     time.Time
		status int // 0: transport error
	}
	var mu sync.Mutex
	results := make([][]result, len(reps))
	stop, killed := make(chan struct{}), make(chan struct{})
	var wg sync.WaitGroup
	for i, r := range reps {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if i == 2 {
				<-killed // the cold replica first sees the session during the outage
			}
			for range 3000 { // bounded: 20 req/s for at most 150 s
				select {
				case <-stop:
					return
				case <-time.After(50 * time.Millisecond):
				}
				s, _ := get(r, "/load", cookies)
				mu.Lock()
				results[i] = append(results[i], result{time.Now(), s})
				mu.Unlock()
			}
		}()
	}
	waitUntil(t, 5*time.Second, "load on every replica", func() bool {
		mu.Lock()
		defer mu.Unlock()
		return len(results[0]) > 5 && len(results[1]) > 5
	})

	tKill := time.Now()
	cl.Nodes[victim].Kill()
	close(killed)
	// Every replica's stream was on the victim: each comes back on a
	// surviving master while the session's master is still down.
	waitUntil(t, 20*time.Second, "every replica's stream back on a surviving master", func() bool {
		total := 0
		for i, a := range cl.Addrs {
			if i != victim {
				total += max(redistest.NumSub(a, channel), 0)
			}
		}
		return total == len(reps)
	})
	tResub := time.Since(tKill)

	// A write during the outage: logins on warm-a until one session's key
	// falls on the dead master (it then waits in warm-a's write-back).
	var outageCookies []*http.Cookie
	live := func() int {
		n := 0
		for _, ks := range clusterSessKeys(cl) {
			n += len(ks)
		}
		return n
	}
	for i := 0; i < 20 && outageCookies == nil; i++ {
		before := live()
		bc := reps[0].browser()
		lr, err := flow.Login(bc, reps[0].caddyURL+"/", e.idp.Issuer, "bob", "bob-password")
		if err != nil {
			t.Logf("a login during the outage failed: %v", err)
			continue
		}
		_, _ = io.Copy(io.Discard, lr.Body)
		lr.Body.Close()
		if lr.StatusCode != http.StatusOK {
			t.Logf("a login during the outage answered %d", lr.StatusCode)
			continue
		}
		if live() == before {
			outageCookies = bc.Jar.Cookies(u)
			t.Logf("login %d during the outage wrote its session to the dead master", i+1)
		}
	}
	if outageCookies == nil {
		t.Fatal("no login during the outage landed on the dead master")
	}
	if s, err := get(reps[0], "/outage-session", outageCookies); s != http.StatusOK {
		t.Errorf("the session written during the outage, on the replica that wrote it: %d %v", s, err)
	}
	// Hold the outage under load: until every replica, the cold one
	// included, has answered 50 requests since the kill (2.5 s of load,
	// the least the check below asks of each replica).
	waitUntil(t, 30*time.Second, "50 answers from every replica during the outage", func() bool {
		mu.Lock()
		defer mu.Unlock()
		for _, rs := range results {
			n := 0
			for _, x := range rs {
				if !x.at.Before(tKill) {
					n++
				}
			}
			if n < 50 {
				return false
			}
		}
		return true
	})
	var outageMetrics [][]string
	for _, r := range reps {
		outageMetrics = append(outageMetrics, oidcMetrics(t, r))
	}

	tRestart := time.Now()
	cl.Nodes[victim].Restart()
	cl.WaitOK()
	// Recovery: the cold replica serves the first session, and every
	// replica serves the session written during the outage.
	recovered := redistest.Poll(30*time.Second, func() bool {
		for _, r := range reps {
			if s, _ := get(r, "/recovered", cookies); s != http.StatusOK {
				return false
			}
			if s, _ := get(r, "/recovered-outage", outageCookies); s != http.StatusOK {
				return false
			}
		}
		return true
	})
	tRecovered := time.Since(tRestart)
	if !recovered {
		t.Errorf("not every replica served both sessions within %s of the restart", tRecovered.Round(time.Millisecond))
	}
	close(stop)
	wg.Wait()

	keys := clusterSessKeys(cl)
	onVictim := keys[victim]
	t.Logf("after the restart the victim holds %d session keys", len(onVictim))
	for i := range reps {
		mu.Lock()
		rs := results[i]
		mu.Unlock()
		during, after := map[int]int{}, map[int]int{}
		for _, x := range rs {
			switch {
			case x.at.Before(tKill):
			case x.at.Before(tRestart):
				during[x.status]++
			default:
				after[x.status]++
			}
			if x.status == http.StatusFound || x.status == http.StatusUnauthorized {
				t.Errorf("%s answered %d at %s (kill at %s): a logout", names[i], x.status, x.at.Format("15:04:05.000"), tKill.Format("15:04:05.000"))
			}
			if i < 2 && x.status != http.StatusOK {
				t.Errorf("warm replica %s answered %d at +%s after the kill", names[i], x.status, x.at.Sub(tKill).Round(time.Millisecond))
			}
			if i == 2 && x.status != http.StatusOK && x.status != http.StatusServiceUnavailable {
				t.Errorf("cold replica answered %d at +%s after the kill, want 200 or 503", x.status, x.at.Sub(tKill).Round(time.Millisecond))
			}
		}
		t.Logf("%s: %d requests; during the outage (%.1fs) %v; after the restart %v", names[i], len(rs), tRestart.Sub(tKill).Seconds(), during, after)
		if len(rs) < 50 {
			t.Errorf("%s: only %d requests under load", names[i], len(rs))
		}
	}
	t.Logf("streams back on surviving masters %s after the kill; every replica served both sessions %s after the restart", tResub.Round(time.Millisecond), tRecovered.Round(time.Millisecond))
	for i, r := range reps {
		sort.Strings(outageMetrics[i])
		t.Logf("%s metrics during the outage:\n\t%s", names[i], strings.Join(outageMetrics[i], "\n\t"))
		t.Logf("%s metrics at the end:\n\t%s", names[i], strings.Join(oidcMetrics(t, r), "\n\t"))
		t.Logf("%s oidc.cache log lines:\n\t%s", names[i], strings.Join(cacheLogLines(r), "\n\t"))
	}
}

package integration

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/valkey-io/valkey-go"

	"github.com/caddy-oidc/caddy-oidc/internal/redistest"
)

func valkeyGlobal(addrs ...string) string {
	return "oidc {\n\t\tcache valkey {\n\t\t\taddress " + strings.Join(addrs, " ") + "\n\t\t}\n\t}"
}

// persistent makes a test Valkey keep its data over a kill and restart, as a
// production deployment would (appendfsync always: nothing is lost).
var persistent = []string{"--appendonly", "yes", "--appendfsync", "always"}

func TestCacheStoreSessionAcrossReplicas(t *testing.T) {
	srv := redistest.Start(t, persistent...)
	e := newEnv(t, envOptions{replicas: 2, oidc: "session_store cache", global: valkeyGlobal(srv.Addr)})
	a, b := e.replicas[0], e.replicas[1]
	c := a.browser()
	readEcho(t, a.login(c, "/", "alice", "alice-password"))
	n, size := sessionCookies(c, a.caddyURL)
	t.Logf("cache-store session cookie: %d bytes in %d chunk(s)", size, n)
	if n != 1 || size >= 200 {
		t.Errorf("cache-store cookie is %d bytes in %d chunks, want one cookie under 200 bytes", size, n)
	}
	// The browser's cookie (same host, other port) reaches replica b, which
	// never saw the login: it finds the session in Valkey.
	got := readEcho(t, b.get(c, "/on-b", nil))
	if got.Headers.Get("X-Auth-Email") != "alice@example.com" {
		t.Errorf("replica b did not recognise the session: %v", got.Headers)
	}
	// Logout on b ends the session on a too.
	resp, err := noRedirect(c).PostForm(b.caddyURL+"/oauth2/logout", nil)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	u, _ := url.Parse(a.caddyURL)
	stale := e.browser()
	stale.Jar.SetCookies(u, c.Jar.Cookies(u)) // even a cookie kept from before logout
	// The invalidation crosses the pub/sub channel to a's L1.
	var last int
	if !redistest.Poll(5*time.Second, func() bool {
		resp := a.get(noRedirect(stale), "/on-a", map[string]string{"Accept": "application/json"})
		resp.Body.Close()
		last = resp.StatusCode
		return last == http.StatusUnauthorized
	}) {
		t.Errorf("after logout on b, replica a still answered %d after 5 s, want 401", last)
	}
}

func TestValkeyOutageDegradesAndRecovers(t *testing.T) {
	srv := redistest.Start(t, persistent...)
	e := newEnv(t, envOptions{replicas: 2, oidc: "session_store cache", global: valkeyGlobal(srv.Addr)})
	a, b := e.replicas[0], e.replicas[1]
	c := a.browser()
	readEcho(t, a.login(c, "/", "alice", "alice-password"))
	u, _ := url.Parse(a.caddyURL)
	cookies := c.Jar.Cookies(u)

	type result struct {
		replica string
		status  int
		cleared bool
	}
	var mu sync.Mutex
	var results []result
	stop := make(chan struct{})
	var wg sync.WaitGroup
	stopLoad := sync.OnceFunc(func() { close(stop); wg.Wait() })
	defer stopLoad() // also when a wait below fails the test
	for _, r := range []*env{a, b} {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; i < 2000; i++ { // bounded: at most 2000 requests per replica
				select {
				case <-stop:
					return
				case <-time.After(20 * time.Millisecond):
				}
				req, _ := http.NewRequest(http.MethodGet, r.caddyURL+"/load", nil)
				for _, ck := range cookies {
					req.AddCookie(ck)
				}
				req.Header.Set("Sec-Fetch-Mode", "navigate")
				resp, err := noRedirect(http.DefaultClient).Do(req)
				if err != nil {
					continue
				}
				_, _ = io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
				cleared := false
				for _, sc := range resp.Cookies() {
					if strings.HasPrefix(sc.Name, "oidc_session") && sc.MaxAge < 0 {
						cleared = true
					}
				}
				mu.Lock()
				results = append(results, result{r.caddyURL, resp.StatusCode, cleared})
				mu.Unlock()
			}
		}()
	}
	// answeredEach reports whether each replica has answered at least n
	// requests from the from-th result on (the statuses are checked below).
	answeredEach := func(from, n int) bool {
		mu.Lock()
		defer mu.Unlock()
		perReplica := map[string]int{}
		for _, r := range results[min(from, len(results)):] {
			perReplica[r.replica]++
		}
		return perReplica[a.caddyURL] >= n && perReplica[b.caddyURL] >= n
	}
	resultCount := func() int {
		mu.Lock()
		defer mu.Unlock()
		return len(results)
	}
	// Both replicas have read the session into their L1.
	waitUntil(t, 10*time.Second, "each replica to answer 10 requests", func() bool { return answeredEach(0, 10) })
	srv.Kill()
	// The outage lasts until each replica has answered 25 requests without
	// Valkey (each must be a 200 from L1: checked below), and on through
	// the cold replica's start.
	killedAt := resultCount()
	waitUntil(t, 20*time.Second, "each replica to answer 25 requests during the outage", func() bool { return answeredEach(killedAt, 25) })

	// A replica whose L1 never held the session answers 503, not a login.
	d := e.coldReplica(envOptions{oidc: "session_store cache", global: valkeyGlobal(srv.Addr)})
	req, _ := http.NewRequest(http.MethodGet, d.caddyURL+"/cold", nil)
	for _, ck := range cookies {
		req.AddCookie(ck)
	}
	resp, err := noRedirect(http.DefaultClient).Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusServiceUnavailable || resp.Header.Get("Retry-After") == "" {
		t.Errorf("a replica without the session in L1, Valkey down: got %d, want 503 with Retry-After", resp.StatusCode)
	}

	srv.Restart()
	// It recovers by itself: the cold replica connects and finds the session.
	waitUntil(t, 20*time.Second, "the cold replica to recover after Valkey came back", func() bool {
		resp, err := noRedirect(http.DefaultClient).Do(req.Clone(context.Background()))
		if err != nil {
			return false
		}
		resp.Body.Close()
		return resp.StatusCode == http.StatusOK
	})
	// The warm replicas go on serving once Valkey is back.
	recoveredAt := resultCount()
	waitUntil(t, 10*time.Second, "each replica to answer 10 requests after the recovery", func() bool { return answeredEach(recoveredAt, 10) })
	stopLoad()

	counts := map[string]map[int]int{}
	for _, r := range results {
		if counts[r.replica] == nil {
			counts[r.replica] = map[int]int{}
		}
		counts[r.replica][r.status]++
		if r.status != http.StatusOK {
			t.Errorf("replica %s answered %d during the outage: its L1 holds the session", r.replica, r.status)
		}
		if r.cleared {
			t.Errorf("replica %s cleared the session cookie during the outage", r.replica)
		}
	}
	t.Logf("statuses per replica through kill and restart: %v", counts)
	if len(results) < 50 {
		t.Errorf("only %d requests ran under load", len(results))
	}
}

func TestCookieSessionsIgnoreValkeyOutage(t *testing.T) {
	srv := redistest.Start(t)
	e := newEnv(t, envOptions{global: valkeyGlobal(srv.Addr)})
	c := e.browser()
	readEcho(t, e.login(c, "/", "alice", "alice-password"))
	srv.Kill()
	for i := range 5 {
		readEcho(t, e.get(c, "/cookie-store-"+strconv.Itoa(i), nil))
	}
}

func TestStartsWhileValkeyIsDown(t *testing.T) {
	srv := redistest.Start(t, persistent...)
	srv.Kill()
	e := newEnv(t, envOptions{oidc: "session_store cache", global: valkeyGlobal(srv.Addr)})
	// Caddy is up; a login works (the session is kept in L1 meanwhile).
	c := e.browser()
	readEcho(t, e.login(c, "/", "alice", "alice-password"))
	srv.Restart()
	// Once Valkey is back, the session written during the outage is there.
	cl, err := valkey.NewClient(valkey.ClientOption{InitAddress: []string{srv.Addr}, DisableCache: true})
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	var keys []string
	if !redistest.Poll(20*time.Second, func() bool {
		keys, _ = cl.Do(context.Background(), cl.B().Keys().Pattern("caddy-oidc:sess:*").Build()).AsStrSlice()
		return len(keys) == 1
	}) {
		t.Fatalf("the session written while Valkey was down never reached it (keys %v)", keys)
	}
	readEcho(t, e.get(c, "/after", nil))
}

// adminGet reads a text endpoint of a Caddy admin API.
func adminGet(t *testing.T, admin, path string) string {
	t.Helper()
	resp, err := http.Get("http://" + admin + path)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return string(b)
}

func goroutines(t *testing.T, admin string) int {
	body := adminGet(t, admin, "/debug/pprof/goroutine?debug=1")
	first, _, _ := strings.Cut(body, "\n")
	// "goroutine profile: total 42"
	n, err := strconv.Atoi(strings.TrimSpace(strings.TrimPrefix(first, "goroutine profile: total")))
	if err != nil {
		t.Fatalf("reading the goroutine count from %q: %v", first, err)
	}
	return n
}

func metric(t *testing.T, admin, name string) float64 {
	body := adminGet(t, admin, "/metrics")
	sc := bufio.NewScanner(strings.NewReader(body))
	for sc.Scan() {
		line := sc.Text()
		if strings.HasPrefix(line, name+" ") {
			v, _ := strconv.ParseFloat(strings.Fields(line)[1], 64)
			return v
		}
	}
	t.Fatalf("metric %s not found", name)
	return 0
}

func valkeyClients(t *testing.T, addr string) int {
	out, err := exec.Command("redis-cli", "-h", "127.0.0.1", "-p", addr[strings.LastIndexByte(addr, ':')+1:], "CLIENT", "LIST").Output()
	if err != nil {
		t.Fatal(err)
	}
	return strings.Count(string(out), "name=caddy-oidc")
}

// steady waits (at most d) until read returns the same value on 10
// consecutive polls (about 200 ms): a count that has settled.
func steady(t *testing.T, d time.Duration, what string, read func() any) {
	t.Helper()
	var last any
	same := 0
	waitUntil(t, d, what, func() bool {
		v := read()
		if v == last {
			same++
		} else {
			last, same = v, 1
		}
		return same >= 10
	})
}

func TestHundredReloadsKeepConnectionsAndL1(t *testing.T) {
	srv := redistest.Start(t, persistent...)
	// The load goes to a respond route: Caddy's reverse_proxy keeps the idle
	// upstream connections of each replaced transport until they time out,
	// which would hide what this test measures, the module's own state.
	e := newEnv(t, envOptions{oidc: "session_store cache", global: valkeyGlobal(srv.Addr), site: `respond /light-load "ok" 200`})
	c := e.browser()
	readEcho(t, e.login(c, "/", "alice", "alice-password"))
	readEcho(t, e.get(c, "/warm", nil))
	// The baseline is taken once the login's goroutines and connections
	// have settled: the same counts read for 200 ms.
	var g0, conns0 int
	steady(t, 10*time.Second, "the goroutine and Valkey connection counts to settle after the login", func() any {
		g0, conns0 = goroutines(t, e.admin), valkeyClients(t, srv.Addr)
		return [2]int{g0, conns0}
	})
	l1 := metric(t, e.admin, "caddy_oidc_cache_l1_entries")
	t.Logf("L1 after one cache-store login: %.0f entries, %.0f bytes", l1, metric(t, e.admin, "caddy_oidc_cache_l1_bytes"))

	var failures, total int
	var mu sync.Mutex
	stop := make(chan struct{})
	done := make(chan struct{})
	u, _ := url.Parse(e.caddyURL)
	cookies := c.Jar.Cookies(u)
	go func() {
		defer close(done)
		for i := 0; i < 5000; i++ {
			select {
			case <-stop:
				return
			case <-time.After(10 * time.Millisecond):
			}
			req, _ := http.NewRequest(http.MethodGet, e.caddyURL+"/light-load", nil)
			for _, ck := range cookies {
				req.AddCookie(ck)
			}
			resp, err := noRedirect(http.DefaultClient).Do(req)
			mu.Lock()
			total++
			if err != nil || resp.StatusCode != http.StatusOK {
				failures++
			}
			mu.Unlock()
			if err == nil {
				_, _ = io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
			}
		}
	}()
	cfg := e.currentCaddyfile(t)
	for i := range 100 {
		e.reload(t, strings.Replace(cfg, "header X-Auth-User", fmt.Sprintf("header X-Reload %d\n\t\theader X-Auth-User", i), 1))
	}
	close(stop)
	<-done
	http.DefaultClient.CloseIdleConnections()
	// The load's connection goroutines end a moment after their connections
	// close: give them up to 10 s to get back to the baseline (the asserts
	// below say by how much they missed it).
	var g1, conns1 int
	redistest.Poll(10*time.Second, func() bool {
		g1, conns1 = goroutines(t, e.admin), valkeyClients(t, srv.Addr)
		return g1 <= g0+5 && conns1 == conns0
	})
	l1After := metric(t, e.admin, "caddy_oidc_cache_l1_entries")
	t.Logf("100 reloads under load: %d requests, %d failed; goroutines %d -> %d; valkey connections %d -> %d; L1 entries %.0f -> %.0f",
		total, failures, g0, g1, conns0, conns1, l1, l1After)
	if failures != 0 {
		t.Errorf("%d of %d requests failed during the reloads", failures, total)
	}
	if conns1 != conns0 {
		t.Errorf("valkey connections went from %d to %d", conns0, conns1)
	}
	if l1After < l1 || l1 == 0 {
		t.Errorf("L1 entries went from %.0f to %.0f: the warm cache was dropped", l1, l1After)
	}
	if g1 > g0+5 {
		t.Errorf("goroutines grew from %d to %d over 100 reloads:\n%s", g0, g1, adminGet(t, e.admin, "/debug/pprof/goroutine?debug=1"))
	}
}

func TestCacheStoreOnAValkeyCluster(t *testing.T) {
	addrs := redistest.StartCluster(t)
	e := newEnv(t, envOptions{replicas: 2, oidc: "session_store cache", global: valkeyGlobal(addrs...)})
	a, b := e.replicas[0], e.replicas[1]
	// Several users, so their sessions spread over the cluster's slots.
	for _, user := range []string{"alice", "bob"} {
		c := a.browser()
		readEcho(t, a.login(c, "/", user, user+"-password"))
		got := readEcho(t, b.get(c, "/on-b", nil))
		if !strings.HasPrefix(got.Headers.Get("X-Auth-Email"), user+"@") {
			t.Errorf("replica b did not recognise %s's session from the cluster: %q", user, got.Headers.Get("X-Auth-Email"))
		}
		// An invalidation from b reaches a through the cluster's pub/sub.
		resp, err := noRedirect(c).PostForm(b.caddyURL+"/oauth2/logout", nil)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
	}
}

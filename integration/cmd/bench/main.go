// Command bench is `make bench`: it runs Caddy with the module, an
// upstream, the development IdP and (optionally) oauth2-proxy on
// 127.0.0.1, logs in to get real sessions, then drives every scenario with
// a bounded Go load generator, in alternation over several rounds so that
// machine drift cancels out, and writes BENCHMARKS.md and a chart.
package main

import (
	"bytes"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/caddy-oidc/caddy-oidc/integration/devidp"
	"github.com/caddy-oidc/caddy-oidc/integration/flow"
)

type scenario struct {
	name   string
	url    string
	header http.Header
	// headers, when set, are used in turn (many sessions, e.g. to miss L1).
	headers []http.Header
	ceiling string   // the scenario whose req/s this one is compared with
	procs   []string // processes whose CPU the scenario costs
	// results, summed over rounds
	requests, failures int64
	elapsed            time.Duration
	cpu                time.Duration
	lat                []time.Duration
}

func main() {
	caddyBin := flag.String("caddy", "../bin/caddy", "Caddy built with the module")
	o2pBin := flag.String("oauth2-proxy", "", "oauth2-proxy binary (v7.15.6) for the comparison; empty: skip it")
	valkey := flag.String("valkey", "", "Valkey/Redis host:port for the cache scenarios; empty: start a redis-server of our own")
	dur := flag.Duration("duration", 4*time.Second, "time per scenario per round")
	rounds := flag.Int("rounds", 3, "alternation rounds")
	conc := flag.Int("concurrency", 16, "concurrent connections")
	out := flag.String("out", "../BENCHMARKS.md", "report to write")
	chart := flag.String("chart", "../docs/bench.png", "chart to write")
	flag.Parse()

	ports := map[string]int{}
	for _, n := range []string{"admin", "ceil-proxy", "oidc-proxy", "ceil-respond", "oidc-respond", "cache-respond", "bearer-respond", "fwd", "o2p", "herd", "miss-admin", "miss-respond", "redis"} {
		ports[n] = flow.FreePort()
	}
	at := func(n string) string { return fmt.Sprintf("http://127.0.0.1:%d", ports[n]) }
	var redirects []string
	for _, n := range []string{"oidc-proxy", "oidc-respond", "cache-respond", "bearer-respond", "o2p", "herd", "miss-respond"} {
		redirects = append(redirects, at(n)+"/oauth2/callback")
	}
	idp, err := devidp.Start(devidp.Options{RedirectURIs: redirects, AccessTokenLifetime: time.Hour})
	if err != nil {
		log.Fatal(err)
	}
	defer idp.Close()
	upstream := startUpstream()

	dir, _ := os.MkdirTemp("", "caddy-oidc-bench")
	defer os.RemoveAll(dir)
	procs := map[string]*exec.Cmd{}
	defer func() {
		for _, c := range procs {
			_ = c.Process.Kill()
			_ = c.Wait()
		}
	}()

	if *valkey == "" {
		// Valkey of our own (Debian's redis-server speaks the protocol).
		*valkey = fmt.Sprintf("127.0.0.1:%d", ports["redis"])
		procs["redis"] = start(dir, "redis", "redis-server", "--port", strconv.Itoa(ports["redis"]), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--dir", dir)
		waitTCP(*valkey)
	}
	cacheBlock := "\t\tcache valkey {\n\t\t\taddress " + *valkey + "\n\t\t}\n"
	oidc := func(extra string) string {
		return fmt.Sprintf(`oidc {
		issuer %s
		client_id demo
		client_secret demo-secret
		session_secret bench-session-secret-0123456789abcdef
		header X-Auth-Email {http.auth.user.email}
		%s
	}`, idp.Issuer, extra)
	}
	cfg := fmt.Sprintf("{\n\tadmin 127.0.0.1:%d\n\tauto_https off\n\toidc {\n%s\t}\n}\n", ports["admin"], cacheBlock)
	cfg += fmt.Sprintf("%s {\n\treverse_proxy %s\n}\n", at("ceil-proxy"), upstream)
	cfg += fmt.Sprintf("%s {\n\t%s\n\treverse_proxy %s\n}\n", at("oidc-proxy"), oidc(""), upstream)
	cfg += fmt.Sprintf("%s {\n\trespond \"ok\"\n}\n", at("ceil-respond"))
	cfg += fmt.Sprintf("%s {\n\t%s\n\trespond \"ok\"\n}\n", at("oidc-respond"), oidc(""))
	cfg += fmt.Sprintf("%s {\n\t%s\n\trespond \"ok\"\n}\n", at("cache-respond"), oidc("session_store cache"))
	cfg += fmt.Sprintf("%s {\n\t%s\n\trespond \"ok\"\n}\n", at("bearer-respond"), oidc("bearer\n\t\tbearer_audience "+devidp.ServiceClientID))
	// Every request of this site finds its access token due for refresh:
	// a burst of one session measures the refresh herd.
	cfg += fmt.Sprintf("%s {\n\t%s\n\trespond \"ok\"\n}\n", at("herd"), oidc("scopes openid profile email offline_access\n\t\trefresh_before 2h"))
	if *o2pBin != "" {
		cfg += fmt.Sprintf("%s {\n\tforward_auth 127.0.0.1:%d {\n\t\turi /oauth2/auth\n\t\tcopy_headers X-Auth-Request-Email\n\t}\n\treverse_proxy %s\n}\n", at("fwd"), ports["o2p"], upstream)
	}
	path := filepath.Join(dir, "Caddyfile")
	_ = os.WriteFile(path, []byte(cfg), 0o600)
	procs["caddy"] = start(dir, "caddy", *caddyBin, "run", "--config", path, "--adapter", "caddyfile")
	// A second Caddy whose L1 (16 entries) is smaller than the sessions it
	// serves: cache-store sessions come from Valkey.
	missCfg := fmt.Sprintf("{\n\tadmin 127.0.0.1:%d\n\tauto_https off\n\toidc {\n\t\tcache valkey {\n\t\t\taddress %s\n\t\t\tl1_max_entries 16\n\t\t}\n\t}\n}\n%s {\n\t%s\n\trespond \"ok\"\n}\n",
		ports["miss-admin"], *valkey, at("miss-respond"), oidc("session_store cache"))
	missPath := filepath.Join(dir, "Caddyfile.miss")
	_ = os.WriteFile(missPath, []byte(missCfg), 0o600)
	procs["caddy-l1-miss"] = start(dir, "caddy-l1-miss", *caddyBin, "run", "--config", missPath, "--adapter", "caddyfile")
	must(flow.WaitUp(at("miss-respond")))
	log.Printf("caddy admin (pprof): http://127.0.0.1:%d/debug/pprof/", ports["admin"])
	must(flow.WaitUp(at("ceil-respond")))
	if *o2pBin != "" {
		procs["oauth2-proxy"] = start(dir, "oauth2-proxy", *o2pBin,
			"--provider=oidc", "--oidc-issuer-url="+idp.Issuer, "--client-id=demo", "--client-secret=demo-secret",
			"--cookie-secret=0123456789abcdef0123456789abcdef", "--cookie-secure=false", "--email-domain=*",
			"--upstream=http://"+upstream, "--http-address=127.0.0.1:"+strconv.Itoa(ports["o2p"]),
			"--redirect-url="+at("o2p")+"/oauth2/callback", "--skip-provider-button", "--set-xauthrequest",
			"--reverse-proxy", "--insecure-oidc-allow-unverified-email", "--scope=openid email profile")
		must(flow.WaitUp(at("o2p") + "/ping"))
	}

	// Real sessions, through the real login.
	cookieOf := func(site, path string) string {
		c := flow.Browser()
		resp, err := flow.Login(c, at(site)+path, idp.Issuer, "alice", "alice-password")
		if err != nil {
			log.Fatalf("login at %s: %v", site, err)
		}
		resp.Body.Close()
		u, _ := url.Parse(at(site))
		var parts []string
		for _, ck := range c.Jar.Cookies(u) {
			parts = append(parts, ck.Name+"="+ck.Value)
		}
		return strings.Join(parts, "; ")
	}
	loginCPU0 := cpuOf(procs["caddy"])
	const logins = 50
	var cookieSession string
	for range logins {
		cookieSession = cookieOf("oidc-respond", "/")
	}
	loginCPU := (cpuOf(procs["caddy"]) - loginCPU0) / logins
	cacheSession := cookieOf("cache-respond", "/")
	var missSessions []http.Header
	for range 64 {
		missSessions = append(missSessions, http.Header{"Cookie": {cookieOf("miss-respond", "/")}, "Accept": {"application/json"}})
	}
	bearer := serviceToken(idp.Issuer)
	hdr := func(k, v string) http.Header { return http.Header{k: {v}, "Accept": {"application/json"}} }

	// The ceilings get the same Cookie header: a browser sends its cookies
	// to the site whether or not a route checks them, and reading a few KB
	// of headers is part of every request's cost.
	scenarios := []*scenario{
		{name: "Caddy reverse_proxy (ceiling)", url: at("ceil-proxy"), header: hdr("Cookie", cookieSession), procs: []string{"caddy"}},
		{name: "oidc cookie session + reverse_proxy", url: at("oidc-proxy"), header: hdr("Cookie", cookieSession), ceiling: "Caddy reverse_proxy (ceiling)", procs: []string{"caddy"}},
		{name: "Caddy respond (ceiling)", url: at("ceil-respond"), header: hdr("Cookie", cookieSession), procs: []string{"caddy"}},
		{name: "oidc cookie session + respond", url: at("oidc-respond"), header: hdr("Cookie", cookieSession), ceiling: "Caddy respond (ceiling)", procs: []string{"caddy"}},
		{name: "oidc cache session (L1 hit) + respond", url: at("cache-respond"), header: hdr("Cookie", cacheSession), ceiling: "Caddy respond (ceiling)", procs: []string{"caddy"}},
		{name: "oidc bearer JWT + respond", url: at("bearer-respond"), header: hdr("Authorization", "Bearer "+bearer), ceiling: "Caddy respond (ceiling)", procs: []string{"caddy"}},
		{name: "oidc cache session (L1 miss, Valkey hit) + respond", url: at("miss-respond"), headers: missSessions, ceiling: "Caddy respond (ceiling)", procs: []string{"caddy-l1-miss"}},
	}
	// The cookie jar of a oauth2-proxy login is valid for both of its modes.
	if *o2pBin != "" {
		o2pCookie := cookieOf("o2p", "/oauth2/start?rd=%2F")
		scenarios = append(scenarios,
			&scenario{name: "Caddy forward_auth + oauth2-proxy", url: at("fwd"), header: hdr("Cookie", o2pCookie), ceiling: "Caddy reverse_proxy (ceiling)", procs: []string{"caddy", "oauth2-proxy"}},
			&scenario{name: "oauth2-proxy standalone", url: at("o2p"), header: hdr("Cookie", o2pCookie), ceiling: "Caddy reverse_proxy (ceiling)", procs: []string{"oauth2-proxy"}})
	}
	for _, s := range scenarios { // every scenario must really be authenticated
		if code := probe(s); code != http.StatusOK {
			log.Fatalf("%s: a probe request got %d", s.name, code)
		}
	}
	for r := range *rounds {
		for _, s := range scenarios {
			run(s, *dur, *conc, procs)
		}
		log.Printf("round %d/%d done", r+1, *rounds)
	}

	// The refresh herd: n concurrent requests of one session whose access
	// token is due; the IdP counts the grants.
	var herd []string
	for _, n := range []int{10, 50, 200} {
		cookie := cookieOf("herd", "/")
		before := idp.RefreshGrants()
		s := &scenario{name: "herd", url: at("herd"), header: hdr("Cookie", cookie), procs: []string{"caddy"}}
		var wg sync.WaitGroup
		var okCount atomic.Int64
		for range n {
			wg.Add(1)
			go func() {
				defer wg.Done()
				if probe(s) == http.StatusOK {
					okCount.Add(1)
				}
			}()
		}
		wg.Wait()
		herd = append(herd, fmt.Sprintf("| %d | %d | %d | %d |", n, idp.RefreshGrants()-before, idp.RefusedRefreshGrants(), okCount.Load()))
	}

	// Reload cost: POST /load of the same config with a change.
	var reloads []time.Duration
	adapted, _ := exec.Command(*caddyBin, "adapt", "--config", path, "--adapter", "caddyfile").Output()
	for i := range 10 {
		body := bytes.Replace(adapted, []byte("bench-session-secret-0123456789abcdef"), []byte(fmt.Sprintf("bench-session-secret-0123456789abcd%02d", i)), 1)
		t0 := time.Now()
		resp, err := http.Post("http://127.0.0.1:"+strconv.Itoa(ports["admin"])+"/load", "application/json", bytes.NewReader(body))
		if err != nil {
			log.Fatalf("reload: %v", err)
		}
		msg, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			log.Fatalf("reload: %d %s", resp.StatusCode, msg)
		}
		reloads = append(reloads, time.Since(t0))
	}
	sort.Slice(reloads, func(i, j int) bool { return reloads[i] < reloads[j] })

	report := writeReport(scenarios, *rounds, *dur, *conc, loginCPU, reloads[len(reloads)/2], *o2pBin != "", *valkey)
	report += "\nRefresh herd (one session whose access token is due, n concurrent requests, one replica; grants counted by the IdP; the three-replica figures are in the README):\n\n| concurrent requests | refresh grants | refused | answered 200 |\n| ---: | ---: | ---: | ---: |\n" + strings.Join(herd, "\n") + "\n"
	if err := os.WriteFile(*out, []byte(report), 0o644); err != nil {
		log.Fatal(err)
	}
	if err := drawChart(scenarios, *chart); err != nil {
		log.Printf("chart: %v", err)
	}
	fmt.Print(report)
}

func run(s *scenario, d time.Duration, conc int, procs map[string]*exec.Cmd) {
	var cpu0 time.Duration
	for _, p := range s.procs {
		cpu0 += cpuOf(procs[p])
	}
	var n, fails, rot atomic.Int64
	var mu sync.Mutex
	var wg sync.WaitGroup
	start := time.Now()
	deadline := start.Add(d)
	tr := &http.Transport{MaxIdleConnsPerHost: conc, MaxConnsPerHost: conc}
	client := &http.Client{Transport: tr, Timeout: 10 * time.Second,
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
	for range conc {
		wg.Add(1)
		go func() {
			defer wg.Done()
			var lat []time.Duration
			for i := 0; time.Now().Before(deadline); i++ {
				req, _ := http.NewRequest(http.MethodGet, s.url+"/bench", nil)
				hdr := s.header
				if len(s.headers) > 0 {
					hdr = s.headers[int(rot.Add(1))%len(s.headers)]
				}
				for k, v := range hdr {
					req.Header[k] = v
				}
				t0 := time.Now()
				resp, err := client.Do(req)
				if err != nil {
					fails.Add(1)
					continue
				}
				_, _ = io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
				lat = append(lat, time.Since(t0))
				if resp.StatusCode != http.StatusOK {
					fails.Add(1)
				}
				n.Add(1)
			}
			mu.Lock()
			s.lat = append(s.lat, lat...)
			mu.Unlock()
		}()
	}
	wg.Wait()
	s.elapsed += time.Since(start)
	tr.CloseIdleConnections()
	var cpu1 time.Duration
	for _, p := range s.procs {
		cpu1 += cpuOf(procs[p])
	}
	s.cpu += cpu1 - cpu0
	s.requests += n.Load()
	s.failures += fails.Load()
}

func probe(s *scenario) int {
	req, _ := http.NewRequest(http.MethodGet, s.url+"/probe", nil)
	hdr := s.header
	if len(s.headers) > 0 {
		hdr = s.headers[0]
	}
	for k, v := range hdr {
		req.Header[k] = v
	}
	resp, err := (&http.Client{CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}).Do(req)
	if err != nil {
		return -1
	}
	resp.Body.Close()
	return resp.StatusCode
}

func (s *scenario) rps() float64 { return float64(s.requests) / s.elapsed.Seconds() }

func (s *scenario) pct(p float64) time.Duration {
	if len(s.lat) == 0 {
		return 0
	}
	sort.Slice(s.lat, func(i, j int) bool { return s.lat[i] < s.lat[j] })
	return s.lat[min(len(s.lat)-1, int(float64(len(s.lat))*p))]
}

func writeReport(ss []*scenario, rounds int, d time.Duration, conc int, loginCPU, reload time.Duration, o2p bool, valkey string) string {
	byName := map[string]*scenario{}
	for _, s := range ss {
		byName[s.name] = s
	}
	var b strings.Builder
	fmt.Fprintf(&b, "# Benchmarks\n\nWritten by `make bench` on %s. Machine: %d cores (%s), %s, Go %s; Caddy v2.11.9",
		time.Now().UTC().Format("2006-01-02"), runtime.NumCPU(), cpuModel(), memTotal(), strings.TrimPrefix(runtime.Version(), "go"))
	if o2p {
		b.WriteString("; oauth2-proxy v7.15.6")
	}
	fmt.Fprintf(&b, ".\nEverything (load generator, upstream, IdP, Caddy, oauth2-proxy) runs on this one machine over loopback, so the absolute numbers are low and only the ratios measured in one run mean anything.\n\n")
	fmt.Fprintf(&b, "Method: %d rounds; in each round every scenario runs %s with %d keep-alive connections, one scenario after the other, so that drift of the shared machine spreads over all of them. CPU per request is the user+system time of the processes serving the scenario (Caddy, and oauth2-proxy where it takes part) divided by the requests. Sessions come from real logins through the development IdP; the ceilings receive the same session cookie as the cookie scenarios (a browser sends it either way).", rounds, d, conc)
	if valkey != "" {
		fmt.Fprintf(&b, " The oidc app uses Valkey at %s.", valkey)
	}
	b.WriteString("\n\n| scenario | req/s | p50 | p99 | CPU per request | ratio to ceiling | failed |\n| --- | ---: | ---: | ---: | ---: | ---: | ---: |\n")
	for _, s := range ss {
		ratio := "—"
		if c := byName[s.ceiling]; c != nil {
			ratio = fmt.Sprintf("%.2f", s.rps()/c.rps())
		}
		fmt.Fprintf(&b, "| %s | %.0f | %s | %s | %s | %s | %d |\n", s.name, s.rps(), round(s.pct(0.5)), round(s.pct(0.99)),
			round(s.cpu/time.Duration(max(s.requests, 1))), ratio, s.failures)
	}
	if f, o := byName["oidc cookie session + reverse_proxy"], byName["Caddy forward_auth + oauth2-proxy"]; f != nil && o != nil {
		fmt.Fprintf(&b, "\n`oidc` with a cookie session to `reverse_proxy` serves %.2fx the requests/s of Caddy `forward_auth` + oauth2-proxy", f.rps()/o.rps())
		if s := byName["oauth2-proxy standalone"]; s != nil {
			fmt.Fprintf(&b, " and %.2fx oauth2-proxy standalone", f.rps()/s.rps())
		}
		b.WriteString(", in front of the same upstream.\n")
	}
	fmt.Fprintf(&b, "\nLogin path: %s of Caddy CPU per login (authorization redirect, callback with code exchange and ID token verification; the IdP's own work excluded). Reload (`POST /load` with a changed config): median %s.\n", round(loginCPU), round(reload))
	b.WriteString("\n![requests per second per scenario](docs/bench.png)\n")
	b.WriteString("\nThe L1-miss scenario runs on a second Caddy whose L1 holds 16 sessions while its clients use 64, so requests are answered from Valkey (a redis-server on 127.0.0.1, whose CPU is not counted).\n")
	return b.String()
}

func round(d time.Duration) string {
	switch {
	case d >= time.Millisecond:
		return fmt.Sprintf("%.2f ms", float64(d)/1e6)
	default:
		return fmt.Sprintf("%.1f µs", float64(d)/1e3)
	}
}

func start(dir, name, bin string, args ...string) *exec.Cmd {
	cmd := exec.Command(bin, args...)
	cmd.Env = append(os.Environ(), "HOME="+dir, "XDG_DATA_HOME="+dir, "XDG_CONFIG_HOME="+dir)
	f, _ := os.Create(filepath.Join(dir, name+".log"))
	cmd.Stdout, cmd.Stderr = f, f
	if err := cmd.Start(); err != nil {
		log.Fatalf("%s: %v", name, err)
	}
	return cmd
}

// cpuOf is the user+system CPU time a process has used (/proc/<pid>/stat).
func cpuOf(c *exec.Cmd) time.Duration {
	if c == nil {
		return 0
	}
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", c.Process.Pid))
	if err != nil {
		return 0
	}
	fields := strings.Fields(string(b[bytes.LastIndexByte(b, ')')+2:]))
	utime, _ := strconv.ParseInt(fields[11], 10, 64)
	stime, _ := strconv.ParseInt(fields[12], 10, 64)
	return time.Duration(utime+stime) * time.Second / 100 // USER_HZ
}

func cpuModel() string {
	b, _ := os.ReadFile("/proc/cpuinfo")
	for _, l := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(l, "model name"); ok {
			return strings.TrimSpace(strings.TrimPrefix(strings.TrimSpace(v), ":"))
		}
	}
	return "unknown CPU"
}

func memTotal() string {
	b, _ := os.ReadFile("/proc/meminfo")
	for _, l := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(l, "MemTotal:"); ok {
			kb, _ := strconv.Atoi(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(v), "kB")))
			return fmt.Sprintf("%.0f GiB", float64(kb)/1024/1024)
		}
	}
	return "unknown memory"
}

func startUpstream() string {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		log.Fatal(err)
	}
	go func() {
		_ = http.Serve(l, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { _, _ = w.Write([]byte("ok")) }))
	}()
	return l.Addr().String()
}

func waitTCP(addr string) {
	for range 200 {
		if c, err := net.Dial("tcp", addr); err == nil {
			c.Close()
			return
		}
		time.Sleep(50 * time.Millisecond)
	}
	log.Fatalf("%s did not come up", addr)
}

func serviceToken(issuer string) string {
	req, _ := http.NewRequest(http.MethodPost, issuer+"/oauth/token", strings.NewReader("grant_type=client_credentials&scope=openid"))
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	req.SetBasicAuth(devidp.ServiceClientID, devidp.ServiceClientSecret)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		log.Fatal(err)
	}
	defer resp.Body.Close()
	var tr struct {
		AccessToken string `json:"access_token"`
	}
	_ = json.NewDecoder(resp.Body).Decode(&tr)
	return tr.AccessToken
}

func must(err error) {
	if err != nil {
		log.Fatal(err)
	}
}

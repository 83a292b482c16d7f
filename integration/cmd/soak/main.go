// Command soak runs Caddy with the module under moderate load for a while
// (make soak: 10 minutes) against the development IdP, with short-lived
// access tokens so sessions keep refreshing, and watches the Caddy
// process: goroutines, RSS and open files must stay level, and no request
// may fail. It prints a sample every -every and exits 1 on a leak or a
// failed request. Every server it starts listens on 127.0.0.1.
package main

import (
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"log"
	"math/rand/v2"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/caddy-oidc/caddy-oidc/integration/devidp"
	"github.com/caddy-oidc/caddy-oidc/integration/flow"
)

func main() {
	caddyBin := flag.String("caddy", "../bin/caddy", "Caddy binary built with the module")
	duration := flag.Duration("duration", 10*time.Minute, "how long to run the load")
	workers := flag.Int("workers", 8, "concurrent clients")
	sessions := flag.Int("sessions", 40, "logged-in sessions the clients use")
	valkey := flag.String("valkey", "", "host:port of a Valkey/Redis: use session_store cache with it")
	every := flag.Duration("every", 10*time.Second, "sampling interval")
	flag.Parse()

	caddyPort, adminPort := flow.FreePort(), flow.FreePort()
	caddyURL := fmt.Sprintf("http://127.0.0.1:%d", caddyPort)
	idp, err := devidp.Start(devidp.Options{RedirectURIs: []string{caddyURL + "/oauth2/callback"}, AccessTokenLifetime: 30 * time.Second})
	if err != nil {
		log.Fatal(err)
	}
	defer idp.Close()
	upstream := startUpstream()

	global, store := "", "cookie"
	if *valkey != "" {
		global, store = "oidc {\n\t\tcache valkey {\n\t\t\taddress "+*valkey+"\n\t\t}\n\t}", "cache"
	}
	dir, _ := os.MkdirTemp("", "caddy-oidc-soak")
	defer os.RemoveAll(dir)
	cfg := fmt.Sprintf(`{
	admin 127.0.0.1:%d
	http_port %d
	auto_https off
	%s
}
%s {
	oidc {
		issuer %s
		client_id demo
		client_secret demo-secret
		scopes openid profile email offline_access
		session_secret soak-session-secret-0123456789abcdef
		session_store %s
		refresh_before 20s
		header X-Auth-Email {http.auth.user.email}
	}
	reverse_proxy %s
}
`, adminPort, caddyPort, global, caddyURL, idp.Issuer, store, upstream)
	path := filepath.Join(dir, "Caddyfile")
	_ = os.WriteFile(path, []byte(cfg), 0o600)
	cmd := exec.Command(*caddyBin, "run", "--config", path, "--adapter", "caddyfile")
	cmd.Env = append(os.Environ(), "HOME="+dir, "XDG_DATA_HOME="+dir, "XDG_CONFIG_HOME="+dir)
	logf, _ := os.Create(filepath.Join(dir, "caddy.log"))
	cmd.Stdout, cmd.Stderr = logf, logf
	if err := cmd.Start(); err != nil {
		log.Fatal(err)
	}
	defer func() { _ = cmd.Process.Kill(); _ = cmd.Wait() }()
	admin := fmt.Sprintf("127.0.0.1:%d", adminPort)
	must(flow.WaitUp(caddyURL))

	// One API client per session, sharing that session's cookie jar, so
	// refreshed cookies are kept as a browser keeps them.
	var clients []*http.Client
	for i := range *sessions {
		c := flow.Browser()
		user := []string{"alice", "bob"}[i%2]
		resp, err := flow.Login(c, caddyURL+"/", idp.Issuer, user, user+"-password")
		if err != nil || resp.StatusCode != http.StatusOK {
			log.Fatalf("login %d: %v", i, err)
		}
		resp.Body.Close()
		clients = append(clients, &http.Client{Jar: c.Jar, Timeout: 10 * time.Second})
	}

	var ok, failed atomic.Int64
	stop := make(chan struct{})
	var wg sync.WaitGroup
	for range *workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				select {
				case <-stop:
					return
				case <-time.After(5 * time.Millisecond):
				}
				client := clients[rand.IntN(len(clients))]
				req, _ := http.NewRequest(http.MethodGet, caddyURL+"/soak", nil)
				req.Header.Set("Accept", "application/json")
				resp, err := client.Do(req)
				if err != nil {
					failed.Add(1)
					continue
				}
				_, _ = io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
				if resp.StatusCode == http.StatusOK {
					ok.Add(1)
				} else {
					failed.Add(1)
				}
			}
		}()
	}

	type sample struct {
		at              time.Duration
		goroutines, fds int
		rssKB           int
	}
	take := func(start time.Time) sample {
		return sample{time.Since(start).Round(time.Second), goroutines(admin), fds(cmd.Process.Pid), rssKB(cmd.Process.Pid)}
	}
	start := time.Now()
	first := take(start)
	fmt.Printf("%8s %10s %8s %10s %10s %8s %12s\n", "time", "goroutines", "open fds", "RSS (MB)", "requests", "failed", "refresh grants")
	print := func(s sample) {
		fmt.Printf("%8s %10d %8d %10.1f %10d %8d %12d\n", s.at, s.goroutines, s.fds, float64(s.rssKB)/1024, ok.Load(), failed.Load(), idp.RefreshGrants())
	}
	print(first)
	var samples []sample
	for time.Since(start) < *duration {
		time.Sleep(min(*every, *duration-time.Since(start)+time.Millisecond))
		s := take(start)
		samples = append(samples, s)
		print(s)
	}
	close(stop)
	wg.Wait()
	last := samples[len(samples)-1]
	// Level: compare the second half's peak with the first sample after warm-up.
	base := samples[0]
	var peak sample
	for _, s := range samples[len(samples)/2:] {
		peak.goroutines = max(peak.goroutines, s.goroutines)
		peak.fds = max(peak.fds, s.fds)
		peak.rssKB = max(peak.rssKB, s.rssKB)
	}
	fmt.Printf("\nsoak %s: %d requests (%.0f/s), %d failed, %d refresh grants, %d refused\n",
		last.at, ok.Load(), float64(ok.Load())/last.at.Seconds(), failed.Load(), idp.RefreshGrants(), idp.RefusedRefreshGrants())
	fmt.Printf("goroutines %d -> %d (peak of 2nd half %d), open fds %d -> %d (peak %d), RSS %.1f -> %.1f MB (peak %.1f)\n",
		base.goroutines, last.goroutines, peak.goroutines, base.fds, last.fds, peak.fds,
		float64(base.rssKB)/1024, float64(last.rssKB)/1024, float64(peak.rssKB)/1024)
	bad := failed.Load() > 0 || idp.RefusedRefreshGrants() > 0 ||
		peak.goroutines > base.goroutines+base.goroutines/5+10 || peak.fds > base.fds+20 || peak.rssKB > base.rssKB*2
	if bad {
		fmt.Println("FAIL: a request failed or goroutines, files or memory kept growing")
		os.Exit(1)
	}
	fmt.Println("PASS: level")
}

func startUpstream() string {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		log.Fatal(err)
	}
	go func() {
		_ = http.Serve(l, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			_ = json.NewEncoder(w).Encode(map[string]string{"email": r.Header.Get("X-Auth-Email")})
		}))
	}()
	return l.Addr().String()
}

func goroutines(admin string) int {
	resp, err := http.Get("http://" + admin + "/debug/pprof/goroutine?debug=1")
	if err != nil {
		return -1
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(io.LimitReader(resp.Body, 200))
	first, _, _ := strings.Cut(string(b), "\n")
	n, _ := strconv.Atoi(strings.TrimSpace(strings.TrimPrefix(first, "goroutine profile: total")))
	return n
}

func fds(pid int) int {
	entries, err := os.ReadDir(fmt.Sprintf("/proc/%d/fd", pid))
	if err != nil {
		return -1
	}
	return len(entries)
}

func rssKB(pid int) int {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return -1
	}
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, "VmRSS:"); ok {
			n, _ := strconv.Atoi(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(v), "kB")))
			return n
		}
	}
	return -1
}

func must(err error) {
	if err != nil {
		log.Fatal(err)
	}
}

package integration

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/caddy-oidc/caddy-oidc/integration/devidp"
	"github.com/caddy-oidc/caddy-oidc/integration/flow"
	"github.com/caddy-oidc/caddy-oidc/internal/redistest"
)

// caddyBin is the Caddy binary built from ../cmd/caddy in TestMain: the
// tests run the real server, as a user would.
var caddyBin string

const testSecret = "integration-test-session-secret-0123456789"

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "caddy-oidc-it")
	if err != nil {
		panic(err)
	}
	caddyBin = filepath.Join(dir, "caddy")
	build := exec.Command("go", "build", "-o", caddyBin, "./cmd/caddy")
	build.Dir = ".."
	build.Stdout, build.Stderr = os.Stdout, os.Stderr
	if err := build.Run(); err != nil {
		fmt.Fprintln(os.Stderr, "building caddy:", err)
		os.Exit(1)
	}
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

func freePort(t testing.TB) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

// upstream echoes what it received, so tests can see exactly what the
// application behind Caddy gets.
type echo struct {
	Path    string      `json:"path"`
	Query   string      `json:"query"`
	Headers http.Header `json:"headers"`
}

func startUpstream(t testing.TB) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		_ = json.NewEncoder(w).Encode(echo{Path: r.URL.Path, Query: r.URL.RawQuery, Headers: r.Header})
	})}
	go func() { _ = srv.Serve(l) }()
	t.Cleanup(func() { srv.Close() })
	return l.Addr().String()
}

// env is one test's world: an IdP, an upstream and a Caddy in front of it.
type env struct {
	t        testing.TB
	idp      *devidp.IdP
	caddyURL string
	admin    string
	cmd      *exec.Cmd
	logs     *syncBuffer
	// caddyfile is the config file Caddy was started with.
	caddyfile string
	// replicas are the Caddy processes of the env (the first is itself).
	replicas []*env
}

// syncBuffer collects Caddy's output, written by exec's copying goroutine
// while the test reads it.
type syncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

type envOptions struct {
	accessTTL time.Duration
	// extra lines inside the oidc block
	oidc string
	// extra site lines before reverse_proxy
	site string
	// extra lines inside the global options block (e.g. the oidc app's cache)
	global string
	// replicas is the number of Caddy processes sharing the IdP and the
	// upstream; e.replicas[0] is e itself. Default: 1.
	replicas int
}

func newEnv(t testing.TB, o envOptions) *env {
	t.Helper()
	n := max(o.replicas, 1)
	var urls, redirects, postLogout []string
	ports := make([]int, n)
	for i := range ports {
		ports[i] = freePort(t)
		u := fmt.Sprintf("http://127.0.0.1:%d", ports[i])
		urls = append(urls, u)
		redirects = append(redirects, u+"/oauth2/callback")
		postLogout = append(postLogout, u+"/bye")
	}
	idp, err := devidp.Start(devidp.Options{
		RedirectURIs:           redirects,
		PostLogoutRedirectURIs: postLogout,
		AccessTokenLifetime:    o.accessTTL,
		// The IdP knows one back-channel URI, as behind a load balancer.
		BackchannelLogoutURIs: []string{urls[0] + "/oauth2/backchannel_logout"},
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { idp.Close() })
	up := startUpstream(t)
	var first *env
	for i := range ports {
		e := &env{t: t, idp: idp, caddyURL: urls[i], admin: fmt.Sprintf("127.0.0.1:%d", freePort(t))}
		if first == nil {
			first = e
		}
		first.replicas = append(first.replicas, e)
		e.start(caddyfileFor(e, ports[i], idp.Issuer, up, o))
	}
	return first
}

// coldReplica starts one more Caddy with o against the env's IdP: a replica
// that has never seen the env's sessions (it cannot log in: the IdP does
// not know its redirect URI).
func (e *env) coldReplica(o envOptions) *env {
	port := freePort(e.t)
	d := &env{t: e.t, idp: e.idp, caddyURL: fmt.Sprintf("http://127.0.0.1:%d", port), admin: fmt.Sprintf("127.0.0.1:%d", freePort(e.t))}
	d.start(caddyfileFor(d, port, e.idp.Issuer, startUpstream(e.t), o))
	return d
}

func caddyfileFor(e *env, port int, issuer, upstream string, o envOptions) string {
	return fmt.Sprintf(`{
	admin %s
	http_port %d
	auto_https off
	log {
		output stderr
		level DEBUG
	}
	%s
}

%s {
	oidc {
		issuer %s
		client_id demo
		client_secret {env.TEST_CLIENT_SECRET}
		scopes openid profile email offline_access
		session_secret {env.TEST_SESSION_SECRET}
		post_logout_redirect_uri /bye
		exclude /public/* /bye
		header X-Auth-User {http.auth.user.id}
		header X-Auth-Email {http.auth.user.email}
		header X-Auth-Groups {http.auth.user.groups}
		header X-Auth-Name {http.auth.user.claims.name}
		%s
	}
	%s
	reverse_proxy %s
}
`, e.admin, port, o.global, e.caddyURL, issuer, o.oidc, o.site, upstream)
}

func (e *env) start(cfg string) {
	t := e.t
	dir := t.TempDir()
	path := filepath.Join(dir, "Caddyfile")
	e.caddyfile = path
	if err := os.WriteFile(path, []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	e.logs = new(syncBuffer)
	cmd := exec.Command(caddyBin, "run", "--config", path, "--adapter", "caddyfile")
	cmd.Env = append(os.Environ(), "TEST_CLIENT_SECRET=demo-secret", "TEST_SESSION_SECRET="+testSecret, "HOME="+dir, "XDG_DATA_HOME="+dir, "XDG_CONFIG_HOME="+dir)
	if e.idp != nil {
		// For a second oidc block in a test's own lines: {$TEST_ISSUER}.
		cmd.Env = append(cmd.Env, "TEST_ISSUER="+e.idp.Issuer)
	}
	cmd.Stdout, cmd.Stderr = e.logs, e.logs
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	e.cmd = cmd
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
		if t.Failed() {
			t.Logf("caddy logs:\n%s", e.logs.String())
		}
	})
	started := redistest.Poll(20*time.Second, func() bool {
		resp, err := http.Get("http://" + e.admin + "/config/")
		if err != nil {
			return false
		}
		resp.Body.Close()
		c, err := net.Dial("tcp", strings.TrimPrefix(e.caddyURL, "http://"))
		if err != nil {
			return false
		}
		c.Close()
		return true
	})
	if !started {
		t.Fatalf("caddy did not start:\n%s", e.logs.String())
	}
}

// browser is an HTTP client that behaves like a browser for the flow.
func (e *env) browser() *http.Client { return flow.Browser() }

// login goes to path on Caddy, fills the IdP's login form and returns the
// final response (after the redirect back to path).
func (e *env) login(c *http.Client, path, user, pass string) *http.Response {
	e.t.Helper()
	resp, err := flow.Login(c, e.caddyURL+path, e.idp.Issuer, user, pass)
	if err != nil {
		e.t.Fatal(err)
	}
	return resp
}

func (e *env) submitLogin(c *http.Client, form *url.URL, user, pass string) *http.Response {
	e.t.Helper()
	resp, err := flow.Submit(c, e.idp.Issuer, form, user, pass)
	if err != nil {
		e.t.Fatal(err)
	}
	return resp
}

func readEcho(t testing.TB, resp *http.Response) echo {
	t.Helper()
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("want 200 from the upstream, got %d: %s", resp.StatusCode, b)
	}
	var e echo
	if err := json.Unmarshal(b, &e); err != nil {
		t.Fatalf("upstream answer is not the echo: %v: %s", err, b)
	}
	return e
}

func (e *env) get(c *http.Client, path string, hdr map[string]string) *http.Response {
	e.t.Helper()
	req, _ := http.NewRequest(http.MethodGet, e.caddyURL+path, nil)
	for k, v := range hdr {
		req.Header.Set(k, v)
	}
	resp, err := c.Do(req)
	if err != nil {
		e.t.Fatal(err)
	}
	return resp
}

// noRedirect returns a copy of c that does not follow redirects.
func noRedirect(c *http.Client) *http.Client {
	cc := *c
	cc.CheckRedirect = func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }
	return &cc
}

func sessionCookies(c *http.Client, rawURL string) (n, size int) {
	u, _ := url.Parse(rawURL)
	for _, ck := range c.Jar.Cookies(u) {
		if strings.HasPrefix(ck.Name, "oidc_session") && !strings.Contains(ck.Name, "_state_") {
			n++
			size += len(ck.Name) + 1 + len(ck.Value)
		}
	}
	return n, size
}

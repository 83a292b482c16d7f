package interop

import (
	"bytes"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httputil"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"
)

// hydraTags are the build tags without which Hydra refuses DSN=memory.
const hydraTags = "sqlite,sqlite_omit_load_extension"

// BuildHydra builds Ory Hydra, pinned as a Go tool in integration/hydra's
// own module (so that its dependency graph moves nothing else), with cgo
// and the SQLite tags, into the cache; it rebuilds only when that module's
// go.mod/go.sum or the Go version change. It returns the binary's path and
// whether this call built it.
func BuildHydra() (bin string, built bool, err error) {
	goVersion, err := exec.Command("go", "env", "GOVERSION").Output()
	if err != nil {
		return "", false, fmt.Errorf("go env GOVERSION: %v", err)
	}
	mod := filepath.Join(integrationDir(), "hydra")
	key, err := contentKey([]string{filepath.Join(mod, "go.mod"), filepath.Join(mod, "go.sum")},
		strings.TrimSpace(string(goVersion)), hydraTags)
	if err != nil {
		return "", false, err
	}
	cache, err := CacheDir()
	if err != nil {
		return "", false, err
	}
	bin = filepath.Join(cache, "hydra-"+key)
	err = withLock(bin+".lock", func() error {
		if _, err := os.Stat(bin); err == nil {
			return nil
		}
		tmp := bin + ".tmp"
		cmd := exec.Command("go", "build", "-tags", hydraTags, "-o", tmp, "github.com/ory/hydra/v2")
		cmd.Dir = mod
		cmd.Env = append(os.Environ(), "CGO_ENABLED=1", "GOWORK=off")
		if out, err := cmd.CombinedOutput(); err != nil {
			return fmt.Errorf("building hydra in %s: %v\n%s", mod, err, out)
		}
		built = true
		return os.Rename(tmp, bin)
	})
	return bin, built, err
}

// HydraUser is an account of the suite's login app; Claims go into the ID
// token (and UserInfo) by the scopes granted.
type HydraUser struct {
	Username, Password, Subject string
	Claims                      map[string]any
}

// HydraOptions configure a Hydra run.
type HydraOptions struct {
	// AccessTokens is "opaque" (default) or "jwt" (strategies.access_token).
	AccessTokens string
	// AccessTokenTTL is ttl.access_token. Default: 1h.
	AccessTokenTTL time.Duration
	Users          []HydraUser
	// Env adds or overrides Hydra configuration (upper-cased keys, as
	// Hydra reads its config from the environment).
	Env map[string]string
}

// Hydra is a running `hydra serve all`: its public API behind a recording
// proxy (the issuer, where the browser and Caddy go), its admin API, and
// the suite's login, consent and logout app.
type Hydra struct {
	Issuer   string
	AdminURL string
	AppURL   string
	tap      *tap
	logs     *SyncBuffer
}

// StartHydra runs Hydra (built by BuildHydra) on 127.0.0.1 with its
// in-memory database until the test ends.
func StartHydra(t testing.TB, bin string, o HydraOptions) *Hydra {
	t.Helper()
	if o.AccessTokens == "" {
		o.AccessTokens = "opaque"
	}
	if o.AccessTokenTTL <= 0 {
		o.AccessTokenTTL = time.Hour
	}
	h := &Hydra{logs: new(SyncBuffer)}
	publicPort, adminPort := freePort(t), freePort(t)
	h.AdminURL = fmt.Sprintf("http://127.0.0.1:%d", adminPort)

	tapLn := listen(t)
	h.Issuer = "http://" + tapLn.Addr().String()
	upstream, _ := url.Parse(fmt.Sprintf("http://127.0.0.1:%d", publicPort))
	h.tap = &tap{proxy: httputil.NewSingleHostReverseProxy(upstream), latestRefresh: map[string]string{}, tokens: map[string]*okRefused{}}
	serve(t, tapLn, h.tap)

	app := &hydraApp{admin: h.AdminURL, users: o.Users}
	appLn := listen(t)
	h.AppURL = "http://" + appLn.Addr().String()
	serve(t, appLn, app.routes())

	secret := make([]byte, 24)
	_, _ = rand.Read(secret)
	env := map[string]string{
		"DSN":                          "memory",
		"SECRETS_SYSTEM":               hex.EncodeToString(secret),
		"URLS_SELF_ISSUER":             h.Issuer,
		"URLS_SELF_PUBLIC":             h.Issuer,
		"URLS_LOGIN":                   h.AppURL + "/login",
		"URLS_CONSENT":                 h.AppURL + "/consent",
		"URLS_LOGOUT":                  h.AppURL + "/logout",
		"URLS_POST_LOGOUT_REDIRECT":    h.AppURL + "/loggedout",
		"SERVE_PUBLIC_HOST":            "127.0.0.1",
		"SERVE_PUBLIC_PORT":            fmt.Sprint(publicPort),
		"SERVE_ADMIN_HOST":             "127.0.0.1",
		"SERVE_ADMIN_PORT":             fmt.Sprint(adminPort),
		"SERVE_COOKIES_SAME_SITE_MODE": "Lax",
		"STRATEGIES_ACCESS_TOKEN":      o.AccessTokens,
		"TTL_ACCESS_TOKEN":             o.AccessTokenTTL.String(),
		"OAUTH2_GRANT_REFRESH_TOKEN_ROTATION_GRACE_PERIOD": "0s",
		"LOG_LEVEL":                 "info",
		"LOG_LEAK_SENSITIVE_VALUES": "false",
		"SQA_OPT_OUT":               "true",
	}
	for k, v := range o.Env {
		env[k] = v
	}
	cmd := exec.Command(bin, "serve", "all", "--dev", "--sqa-opt-out")
	cmd.Env = os.Environ()
	for k, v := range env {
		cmd.Env = append(cmd.Env, k+"="+v)
	}
	cmd.Stdout, cmd.Stderr = h.logs, h.logs
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
		if t.Failed() {
			t.Logf("hydra output (last 8 KB):\n%s", tail(h.logs.String(), 8<<10))
		}
	})
	deadline := time.Now().Add(60 * time.Second)
	poll := time.NewTicker(50 * time.Millisecond)
	defer poll.Stop()
	for {
		resp, err := http.Get(h.AdminURL + "/health/ready")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				break
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("hydra did not become ready:\n%s", tail(h.logs.String(), 8<<10))
		}
		<-poll.C
	}
	return h
}

// CreateClient registers an OAuth 2.0 client through the admin API.
func (h *Hydra) CreateClient(c map[string]any) error {
	_, err := h.admin(http.MethodPost, "/admin/clients", c, nil)
	return err
}

// Introspect asks Hydra's admin API about a token (RFC 7662).
func (h *Hydra) Introspect(token string) (map[string]any, error) {
	resp, err := http.PostForm(h.AdminURL+"/admin/oauth2/introspect", url.Values{"token": {token}})
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	var out map[string]any
	if resp.StatusCode != http.StatusOK {
		b, _ := io.ReadAll(resp.Body)
		return nil, fmt.Errorf("introspect: %s: %s", resp.Status, b)
	}
	return out, json.NewDecoder(resp.Body).Decode(&out)
}

// TokenGrants counts the token endpoint's answers for a grant type, as
// they left Hydra: 200 (ok) or an error (refused).
func (h *Hydra) TokenGrants(grantType string) (ok, refused int64) {
	h.tap.mu.Lock()
	defer h.tap.mu.Unlock()
	if c := h.tap.tokens[grantType]; c != nil {
		return c.ok, c.refused
	}
	return 0, 0
}

// Revocations counts the revocation endpoint's answers.
func (h *Hydra) Revocations() (ok, refused int64) {
	h.tap.mu.Lock()
	defer h.tap.mu.Unlock()
	return h.tap.revocations.ok, h.tap.revocations.refused
}

// LatestRefreshToken is the last refresh token Hydra issued to a client.
func (h *Hydra) LatestRefreshToken(clientID string) string {
	h.tap.mu.Lock()
	defer h.tap.mu.Unlock()
	return h.tap.latestRefresh[clientID]
}

// Logs returns Hydra's output.
func (h *Hydra) Logs() string { return h.logs.String() }

func (h *Hydra) admin(method, path string, body any, out any) (int, error) {
	return adminCall(h.AdminURL, method, path, body, out)
}

func adminCall(base, method, path string, body any, out any) (int, error) {
	var rd io.Reader
	if body != nil {
		b, err := json.Marshal(body)
		if err != nil {
			return 0, err
		}
		rd = bytes.NewReader(b)
	}
	req, err := http.NewRequest(method, base+path, rd)
	if err != nil {
		return 0, err
	}
	req.Header.Set("Content-Type", "application/json")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	if resp.StatusCode >= 300 {
		return resp.StatusCode, fmt.Errorf("hydra admin %s %s: %s: %s", method, path, resp.Status, b)
	}
	if out != nil {
		return resp.StatusCode, json.Unmarshal(b, out)
	}
	return resp.StatusCode, nil
}

type okRefused struct{ ok, refused int64 }

// tap is a reverse proxy in front of Hydra's public API that counts the
// token and revocation endpoints' answers and remembers the latest refresh
// token per client, so that the tests can count grants and ask Hydra's
// admin API about a token after a logout. It never logs a token.
type tap struct {
	proxy *httputil.ReverseProxy

	mu            sync.Mutex
	tokens        map[string]*okRefused
	revocations   okRefused
	latestRefresh map[string]string
}

func (p *tap) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if r.Method != http.MethodPost || (r.URL.Path != "/oauth2/token" && r.URL.Path != "/oauth2/revoke") {
		p.proxy.ServeHTTP(w, r)
		return
	}
	body, err := io.ReadAll(io.LimitReader(r.Body, 1<<20))
	if err != nil {
		http.Error(w, "bad body", http.StatusBadRequest)
		return
	}
	r.Body = io.NopCloser(bytes.NewReader(body))
	form, _ := url.ParseQuery(string(body))
	clientID, _, ok := r.BasicAuth()
	if ok {
		clientID, _ = url.QueryUnescape(clientID)
	} else {
		clientID = form.Get("client_id")
	}
	rec := &recorder{ResponseWriter: w, status: http.StatusOK}
	p.proxy.ServeHTTP(rec, r)

	p.mu.Lock()
	defer p.mu.Unlock()
	okay := rec.status == http.StatusOK
	if r.URL.Path == "/oauth2/revoke" {
		if okay {
			p.revocations.ok++
		} else {
			p.revocations.refused++
		}
		return
	}
	c := p.tokens[form.Get("grant_type")]
	if c == nil {
		c = new(okRefused)
		p.tokens[form.Get("grant_type")] = c
	}
	if !okay {
		c.refused++
		return
	}
	c.ok++
	var tr struct {
		RefreshToken string `json:"refresh_token"`
	}
	if json.Unmarshal(rec.body.Bytes(), &tr) == nil && tr.RefreshToken != "" {
		p.latestRefresh[clientID] = tr.RefreshToken
	}
}

type recorder struct {
	http.ResponseWriter
	status int
	body   bytes.Buffer
}

func (r *recorder) WriteHeader(code int) {
	r.status = code
	r.ResponseWriter.WriteHeader(code)
}

func (r *recorder) Write(b []byte) (int, error) {
	if r.body.Len() < 1<<20 {
		r.body.Write(b)
	}
	return r.ResponseWriter.Write(b)
}

func listen(t testing.TB) net.Listener {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	return l
}

func serve(t testing.TB, l net.Listener, h http.Handler) {
	srv := &http.Server{Handler: h, ReadHeaderTimeout: 5 * time.Second}
	go func() { _ = srv.Serve(l) }()
	t.Cleanup(func() { srv.Close() })
}

// handedOut are the ports freePort has returned: a port closed for a
// process to bind later is free again for the kernel, so the same test
// could otherwise get it twice (one IdP's and one Caddy's).
var handedOut = struct {
	sync.Mutex
	ports map[int]bool
}{ports: map[int]bool{}}

// freePort returns a port free on 127.0.0.1 that this process has not
// handed out before.
func freePort(t testing.TB) int {
	t.Helper()
	handedOut.Lock()
	defer handedOut.Unlock()
	for range 100 {
		l := listen(t)
		port := l.Addr().(*net.TCPAddr).Port
		l.Close()
		if !handedOut.ports[port] {
			handedOut.ports[port] = true
			return port
		}
	}
	t.Fatal("no free port")
	return 0
}

func tail(s string, n int) string {
	if len(s) > n {
		return s[len(s)-n:]
	}
	return s
}

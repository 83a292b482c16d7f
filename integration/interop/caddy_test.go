package interop

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"
)

// caddyBin is Caddy with the module, built from ../../cmd/caddy in TestMain:
// the suite runs the real server, as a user would.
var caddyBin string

const sessionSecret = "interop-test-session-secret-0123456789abcdef"

// upstream echoes what it received, so tests see what the application
// behind Caddy gets.
type echo struct {
	Path    string      `json:"path"`
	Headers http.Header `json:"headers"`
}

func startUpstream(t *testing.T) string {
	l := listen(t)
	serve(t, l, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		_ = json.NewEncoder(w).Encode(echo{Path: r.URL.Path, Headers: r.Header})
	}))
	return l.Addr().String()
}

// caddy is one Caddy process of a test.
type caddy struct {
	URL  string
	logs *SyncBuffer
}

// caddyConfig is the Caddyfile of one replica: the IdP's snippet file
// (caddyfiles/<idp>.caddyfile, imported as it is) inside the oidc block,
// with the suite's own lines after it.
func caddyConfig(port, adminPort int, snippet, valkey, upstream, extra string) string {
	return fmt.Sprintf(`{
	admin 127.0.0.1:%d
	http_port %d
	auto_https off
	log {
		output stderr
		level DEBUG
	}
	oidc {
		cache valkey {
			address %s
		}
	}
}

http://127.0.0.1:%d {
	oidc {
		import %s
		post_logout_redirect_uri /bye
		# The browser's own favicon fetches would refresh the session
		# (every request does, see refreshBefore) besides the scenarios'.
		exclude /bye /favicon.ico
		header X-Auth-User {http.auth.user.id}
		header X-Auth-Email {http.auth.user.email}
		header X-Auth-Name {http.auth.user.claims.name}
		header X-Auth-Groups {http.auth.user.groups}
		%s
	}
	reverse_proxy %s
}
`, adminPort, port, valkey, port, snippet, extra, upstream)
}

// startCaddy runs one replica on port with env (OIDC_ISSUER...) until the
// test ends.
func startCaddy(t *testing.T, port int, cfg string, env map[string]string) *caddy {
	t.Helper()
	dir := t.TempDir()
	path := filepath.Join(dir, "Caddyfile")
	if err := os.WriteFile(path, []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	c := &caddy{URL: fmt.Sprintf("http://127.0.0.1:%d", port), logs: new(SyncBuffer)}
	cmd := exec.Command(caddyBin, "run", "--config", path, "--adapter", "caddyfile")
	cmd.Env = append(os.Environ(), "HOME="+dir, "XDG_DATA_HOME="+dir, "XDG_CONFIG_HOME="+dir, "OIDC_SESSION_SECRET="+sessionSecret)
	for k, v := range env {
		cmd.Env = append(cmd.Env, k+"="+v)
	}
	cmd.Stdout, cmd.Stderr = c.logs, c.logs
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan struct{})
	go func() { _ = cmd.Wait(); close(exited) }()
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		<-exited
		if t.Failed() {
			t.Logf("caddy %s logs (last 16 KB):\n%s", c.URL, tail(c.logs.String(), 16<<10))
		}
	})
	// Ready when the site answers through this Caddy: an excluded page
	// with the upstream's echo (a bare dial could reach another process
	// that took the port).
	deadline := time.Now().Add(30 * time.Second)
	poll := time.NewTicker(50 * time.Millisecond)
	defer poll.Stop()
	for time.Now().Before(deadline) {
		select {
		case <-exited:
			t.Fatalf("caddy exited:\n%s", c.logs.String())
		default:
		}
		if r, err := apiGet(c.URL+"/bye", nil, nil); err == nil && r.Code == http.StatusOK && r.Echo.Path == "/bye" {
			return c
		}
		<-poll.C
	}
	t.Fatalf("caddy did not start:\n%s", c.logs.String())
	return nil
}

// apiResult is what an API request got.
type apiResult struct {
	Code int
	Echo echo
	// WWWAuthenticate says why a 401 was given.
	WWWAuthenticate string
}

func (r apiResult) String() string {
	if r.WWWAuthenticate != "" {
		return fmt.Sprintf("%d (WWW-Authenticate: %s)", r.Code, r.WWWAuthenticate)
	}
	return fmt.Sprint(r.Code)
}

// apiGet sends an API request (Accept: application/json: a 401, never a
// redirect) with the given cookies.
func apiGet(target string, cookies []*http.Cookie, hdr map[string]string) (apiResult, error) {
	var r apiResult
	req, err := http.NewRequest(http.MethodGet, target, nil)
	if err != nil {
		return r, err
	}
	req.Header.Set("Accept", "application/json")
	for k, v := range hdr {
		req.Header.Set(k, v)
	}
	for _, ck := range cookies {
		req.AddCookie(ck)
	}
	resp, err := (&http.Client{Timeout: 20 * time.Second}).Do(req)
	if err != nil {
		return r, err
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	r.Code = resp.StatusCode
	r.WWWAuthenticate = resp.Header.Get("WWW-Authenticate")
	if resp.StatusCode == http.StatusOK {
		if err := json.Unmarshal(b, &r.Echo); err != nil {
			return r, fmt.Errorf("not the upstream's echo: %.200s", b)
		}
	}
	return r, nil
}

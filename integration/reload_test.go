package integration

import (
	"bytes"
	"net/http"
	"os"
	"os/exec"
	"strings"
	"testing"
)

// TestReloadKeepsSessionsAndProviderState reloads Caddy through the admin
// API with a changed handler config, as `caddy reload` does: sessions stay
// valid, the new config takes effect, and the issuer's discovery document
// is not fetched again (the provider outlives the reload in the app's pool).
func TestReloadKeepsSessionsAndProviderState(t *testing.T) {
	e := newEnv(t, envOptions{})
	c := e.browser()
	readEcho(t, e.login(c, "/", "alice", "alice-password"))
	fetches := e.idp.DiscoveryFetches()

	for i := range 5 {
		cfg := e.currentCaddyfile(t)
		// A changed handler: one more identity header each time.
		cfg = strings.Replace(cfg, "header X-Auth-User", "header X-Reload-"+string(rune('A'+i))+" {http.auth.user.id}\n\t\theader X-Auth-User", 1)
		e.reload(t, cfg)
		got := readEcho(t, e.get(c, "/after-reload", nil))
		if got.Headers.Get("X-Reload-"+string(rune('A'+i))) != "alice-id" {
			t.Fatalf("reload %d: the new config is not in effect: %v", i, got.Headers)
		}
	}
	if n := e.idp.DiscoveryFetches(); n != fetches {
		t.Errorf("discovery fetched %d more times across 5 reloads, want 0", n-fetches)
	}
}

func (e *env) currentCaddyfile(t *testing.T) string {
	t.Helper()
	b, err := os.ReadFile(e.caddyfile)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// reload adapts cfg with the same binary and POSTs it to the admin API's /load.
func (e *env) reload(t *testing.T, cfg string) {
	t.Helper()
	if err := os.WriteFile(e.caddyfile, []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command(caddyBin, "adapt", "--config", e.caddyfile, "--adapter", "caddyfile").Output()
	if err != nil {
		t.Fatalf("adapt: %v", err)
	}
	resp, err := http.Post("http://"+e.admin+"/load", "application/json", bytes.NewReader(out))
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("POST /load: %d", resp.StatusCode)
	}
}

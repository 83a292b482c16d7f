package integration

import (
	"net/http"
	"net/url"
	"strings"
	"testing"

	"github.com/caddy-oidc/caddy-oidc/internal/redistest"
)

// TestLoggedOutCookieStaysOutAcrossReloads (issue 17.2, 17.4): a copy of a
// cookie whose session was logged out stays refused right after each
// reload, whatever it changed: refresh_handoff (memory only and with
// Valkey), then the whole Valkey block (another Valkey, empty). The
// revocation set belongs to the process, not to a cache config.
func TestLoggedOutCookieStaysOutAcrossReloads(t *testing.T) {
	srv1, srv2 := redistest.Start(t), redistest.Start(t)
	memory := "oidc {\n\t\trefresh_handoff 30s\n\t}"
	valkey1 := "oidc {\n\t\tcache valkey {\n\t\t\taddress " + srv1.Addr + "\n\t\t}\n\t\trefresh_handoff 30s\n\t}"
	for _, tc := range []struct {
		name    string
		global  string
		reloads []string
	}{
		{"memory", memory, []string{strings.Replace(memory, "30s", "31s", 1)}},
		{"valkey", valkey1, []string{
			strings.Replace(valkey1, "30s", "31s", 1),
			strings.Replace(strings.Replace(valkey1, "30s", "31s", 1), srv1.Addr, srv2.Addr, 1),
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e := newEnv(t, envOptions{global: tc.global})
			c := e.browser()
			readEcho(t, e.login(c, "/", "alice", "alice-password"))
			u, _ := url.Parse(e.caddyURL)
			stolen := c.Jar.Cookies(u)
			stolenStatus := func() int {
				req, _ := http.NewRequest(http.MethodGet, e.caddyURL+"/api", nil)
				req.Header.Set("Accept", "application/json")
				for _, ck := range stolen {
					req.AddCookie(ck)
				}
				resp, err := http.DefaultClient.Do(req)
				if err != nil {
					t.Fatal(err)
				}
				resp.Body.Close()
				return resp.StatusCode
			}
			if got := stolenStatus(); got != http.StatusOK {
				t.Fatalf("before logout the copied cookie got %d", got)
			}
			resp := logoutAsBrowser(t, e, c)
			resp.Body.Close()
			if got := stolenStatus(); got != http.StatusUnauthorized {
				t.Fatalf("after logout the copied cookie got %d, want 401", got)
			}
			cfg := e.currentCaddyfile(t)
			for i, global := range tc.reloads {
				e.reload(t, strings.Replace(cfg, tc.global, global, 1))
				// At once: no window while a new cache set subscribes or rescans.
				if got := stolenStatus(); got != http.StatusUnauthorized {
					t.Errorf("right after reload %d the copied cookie got %d, want 401", i+1, got)
				}
			}
		})
	}
}

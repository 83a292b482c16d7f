package caddyoidc

import (
	"net/http"
	"net/http/httptest"
	"testing"

	"github.com/caddyserver/caddy/v2"
	"go.uber.org/zap"

	"github.com/caddy-oidc/caddy-oidc/cache"
	"github.com/caddy-oidc/caddy-oidc/internal/testidp"
)

// Invariant 3: a header configured with '_' or '.' in its name must strip
// the client's '-' spelling too: CGI, FastCGI, WSGI and Rack read
// X-Remote-User and X_Remote_User alike.
func TestAttackConfiguredUnderscoreHeaderStripsDashSpelling(t *testing.T) {
	idp := testidp.New()
	defer idp.Close()
	for _, name := range []string{"X_Remote_User", "X.Remote.User"} {
		t.Run(name, func(t *testing.T) {
			h := newTestHandler(t, idp, func(h *Handler) {
				h.Header = map[string]string{name: "{http.auth.user.id}"}
				h.Exclude = []string{"/public/*"}
			})
			check := func(where string, next *recordNext) {
				t.Helper()
				if !next.called {
					t.Fatalf("%s: not passed on", where)
				}
				for k, v := range next.req.Header {
					if headerIdentity(k) == "x-remote-user" && v[0] == "admin" {
						t.Errorf("%s: client header %q: %q reached the upstream (configured %q)", where, k, v[0], name)
					}
				}
			}
			forge := func(r *http.Request) *http.Request {
				r.Header.Set("X-Remote-User", "admin") // canonical, no '_' or '.'
				return r
			}
			_, next, _ := serve(h, forge(withCookies(loggedIn(t, h, map[string]any{"sub": "alice"}, nil), "/x")))
			check("session", next)
			_, next, _ = serve(h, forge(request("GET", "/public/a")))
			check("excluded", next)
		})
	}
}

// Invariant 6: a process reloaded from memory onto Valkey must not count
// its revocations as read before it has read Valkey's.
func TestAttackMemoryAttachmentDoesNotMakeValkeyReady(t *testing.T) {
	rs := newRevocations()
	local := cache.NewLocal(cache.NewMemory(1<<20, 1000, nil), cache.NewMemory(1<<20, 1000, nil))
	rs.attach(local)
	if !rs.ready() {
		t.Fatal("memory alone: nothing to wait for, yet not ready")
	}
	hy := cache.NewHybrid(cache.NewMemory(1<<20, 1000, nil), cache.ValkeyOptions{Addresses: []string{"127.0.0.1:1"}}, nil, nil)
	rs.attach(hy) // the reloaded config: Valkey, not reachable yet
	rs.detach(local)
	defer rs.detach(hy)
	if rs.ready() {
		t.Fatal("the revocation set says it knows the other replicas' logouts, but Valkey was never read")
	}
}

// Invariant 9: a cookie_name net/http will not send fails at load rather
// than leaving every user at the login page.
func TestInvalidCookieNameFailsAtLoad(t *testing.T) {
	idp := testidp.New()
	defer idp.Close()
	for _, name := range []string{"app:session", "app/session", "sess(1)", "sëssion"} {
		h := &Handler{Issuer: idp.Issuer, Client: ClientConfig{ID: "app"}, Session: SessionConfig{Secrets: []string{testSecret}, CookieName: name}}
		if err := h.provision(caddy.Context{}, zap.NewNop()); err == nil {
			if err := h.attach(newTestApp(t)); err != nil {
				t.Fatal(err)
			}
			w := httptest.NewRecorder()
			_ = h.ServeHTTP(w, request("GET", "/app"), &recordNext{})
			t.Errorf("cookie_name %q accepted at load; the login's response sets %d cookies", name, len(w.Result().Cookies()))
			_ = h.Cleanup()
		}
	}
}

package integration

import (
	"fmt"
	"net"
	"net/http"
	"net/http/fcgi"
	"sort"
	"strings"
	"testing"
)

// TestAttackUnderscoreHeaderThroughFastCGI: with a server that keeps
// X_Auth_Email (expected_underscore_headers), a client's X_Auth_Email and
// the module's X-Auth-Email both become HTTP_X_AUTH_EMAIL for a FastCGI
// application (PHP), the winner chosen at random. The module removes the
// client's spelling, so the application always sees the real user.
func TestAttackUnderscoreHeaderThroughFastCGI(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	// A FastCGI application: it answers with the identity it was given.
	go func() {
		_ = fcgi.Serve(l, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			// What PHP's $_SERVER would hold: every spelling folded to one
			// HTTP_X_AUTH_EMAIL ('-', '_' and '.' alike), whichever came.
			var seen []string
			for name, v := range r.Header {
				if strings.NewReplacer("_", "-", ".", "-").Replace(strings.ToLower(name)) == "x-auth-email" {
					seen = append(seen, v...)
				}
			}
			sort.Strings(seen)
			_, _ = fmt.Fprint(w, strings.Join(seen, "|"))
		}))
	}()
	t.Cleanup(func() { l.Close() })
	e := newEnv(t, envOptions{
		global: "servers {\n\t\texpected_underscore_headers X_Auth_Email\n\t\texpected_dot_headers x.auth.email\n\t}",
		site:   fmt.Sprintf("handle /php/* {\n\t\treverse_proxy %s {\n\t\t\ttransport fastcgi\n\t\t}\n\t}", l.Addr()),
	})
	c := e.browser()
	readEcho(t, e.login(c, "/", "alice", "alice-password"))
	forged := 0
	for i := range 40 {
		name := []string{"X_Auth_Email", "x.auth.email"}[i%2]
		resp := e.get(c, "/php/index.php", map[string]string{name: "forged@evil.example"})
		b := make([]byte, 256)
		n, _ := resp.Body.Read(b)
		resp.Body.Close()
		if resp.StatusCode != 200 {
			t.Fatalf("FastCGI request: %d %s", resp.StatusCode, b[:n])
		}
		if got := string(b[:n]); got != "alice@example.com" {
			forged++
			t.Logf("request %d (%s): the application saw %q", i, name, got)
		}
	}
	if forged > 0 {
		t.Errorf("%d of 40 requests reached the FastCGI application with a forged identity", forged)
	}
}

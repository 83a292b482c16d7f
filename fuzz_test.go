package caddyoidc

import (
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"testing"

	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"

	"github.com/caddy-oidc/caddy-oidc/internal/testidp"
)

func FuzzSafeReturnTo(f *testing.F) {
	for _, s := range []string{"/", "//evil", "/\\evil", "https://evil", "/a?b=//c", "/%2F%2Fx", "\t/x", "/x\r\nSet-Cookie: a=b"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, in string) {
		out := safeReturnTo(in)
		if out == "/" {
			return
		}
		if out != in {
			t.Fatalf("safeReturnTo changed %q to %q", in, out)
		}
		if out[0] != '/' || (len(out) > 1 && (out[1] == '/' || out[1] == '\\')) || strings.ContainsAny(out, "\\\r\n\t\x00") {
			t.Fatalf("unsafe target kept: %q", out)
		}
		if u, err := url.Parse(out); err != nil || u.Host != "" || u.Scheme != "" {
			t.Fatalf("target with a host: %q", out)
		}
	})
}

func FuzzCaddyfile(f *testing.F) {
	for _, s := range []string{"issuer https://idp", "header X-A {http.auth.user.id}", "session_secret a b c", "colour blue",
		"session_lifetime 5m", "require_email_verified maybe", "auth_param prompt", "bearer x", "exclude"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, body string) {
		// Tokenize returns lexer errors (NewTestDispenser would exit).
		tokens, err := caddyfile.Tokenize([]byte("oidc {\n"+body+"\n}"), "Caddyfile")
		if err != nil {
			return
		}
		var h Handler
		_ = h.UnmarshalCaddyfile(caddyfile.NewDispenser(tokens))
	})
}

func FuzzCallbackParams(f *testing.F) {
	idp := testidp.New()
	defer idp.Close()
	h := newTestHandler(f, idp, nil)
	for _, s := range []string{"code=a&state=b", "state=", "error=access_denied&state=x", "iss=x&code=y&state=z", "%zz", strings.Repeat("state=a&", 100)} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, query string) {
		r := request("GET", "/oauth2/callback")
		r.URL.RawQuery = query
		w := httptest.NewRecorder()
		err := h.ServeHTTP(w, r, &recordNext{})
		if s := statusOf(err, w); s < 400 || s > 499 {
			t.Fatalf("callback ?%s: %d, want a 4xx", query, s)
		}
		if hasSessionCookie(w) {
			t.Fatal("a forged callback set a session")
		}
	})
}

func FuzzBackchannelBody(f *testing.F) {
	idp := testidp.New()
	defer idp.Close()
	h := newTestHandler(f, idp, nil)
	for _, s := range []string{"logout_token=a.b.c", "logout_token=", "x=y", "logout_token=" + testidp.Unsigned(map[string]any{"sub": "u"}), "%%%"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, body string) {
		r := httptest.NewRequest("POST", "/oauth2/backchannel_logout", strings.NewReader(body)).WithContext(request("GET", "/").Context())
		r.Header.Set("Content-Type", "application/x-www-form-urlencoded")
		w := httptest.NewRecorder()
		_ = h.ServeHTTP(w, r, &recordNext{})
		if w.Code == http.StatusOK {
			t.Fatalf("an unsigned body was accepted: %q", body)
		}
	})
}

package caddyoidc

import (
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/caddy-oidc/caddy-oidc/internal/testidp"
	"github.com/caddy-oidc/caddy-oidc/session"
)

// Issue 12.1: the session's current tokens reach the upstream through
// placeholders the operator writes, refreshed values included.
func TestTokenPlaceholders(t *testing.T) {
	idp := testidp.New()
	defer idp.Close()
	h := newTestHandler(t, idp, func(h *Handler) {
		h.Header["Authorization"] = "Bearer {http.auth.user.access_token}"
		h.Header["X-Id-Token"] = "{http.auth.user.id_token}"
		h.Header["X-Token-Expiry"] = "{http.auth.user.access_token_expiry}"
	})
	idp.OnToken(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		_, _ = w.Write([]byte(`{"access_token":"at-refreshed","token_type":"Bearer","refresh_token":"rt2","expires_in":600}`))
	})
	r := loggedIn(t, h, map[string]any{"sub": "u"}, func(s *session.Session) {
		s.AccessToken, s.RefreshToken = "at-old", "rt"
		s.AccessExpiry = time.Now().Add(30 * time.Second).Unix() // within refresh_before
	})
	code, next, _ := serve(h, withCookies(r, "/x"))
	if code != 200 {
		t.Fatalf("%d", code)
	}
	got := next.req.Header
	if got.Get("Authorization") != "Bearer at-refreshed" || got.Get("X-Id-Token") != "idt" {
		t.Errorf("token headers: Authorization %q, X-Id-Token %q", got.Get("Authorization"), got.Get("X-Id-Token"))
	}
	exp, _ := strconv.ParseInt(got.Get("X-Token-Expiry"), 10, 64)
	if d := time.Until(time.Unix(exp, 0)); d < 590*time.Second || d > 610*time.Second {
		t.Errorf("access_token_expiry %q, want the refreshed token's (in 600 s)", got.Get("X-Token-Expiry"))
	}
	// A client's own Authorization header never reaches the upstream as the user's.
	r = loggedIn(t, h, map[string]any{"sub": "u"}, nil)
	req := withCookies(r, "/x")
	req.Header.Set("Authorization", "Bearer forged")
	_, next, _ = serve(h, req)
	if got := next.req.Header.Get("Authorization"); got != "Bearer at" {
		t.Errorf("Authorization %q, want the session's token", got)
	}
}

// Issue 12.3: offline_access gets prompt=consent unless the config says
// otherwise (auth_param prompt, or prompt "" for none at all).
func TestOfflineAccessAsksForConsent(t *testing.T) {
	idp := testidp.New()
	defer idp.Close()
	for _, c := range []struct {
		prompt    *string
		want      string
		wantIsSet bool
	}{
		{nil, "consent", true},
		{ptr("login"), "login", true},
		{ptr(""), "", false},
	} {
		h := newTestHandler(t, idp, func(h *Handler) {
			h.Login.Scopes = []string{"openid", "offline_access"}
			if c.prompt != nil {
				h.Login.AuthParams = map[string]string{"prompt": *c.prompt}
			}
		})
		w := httptest.NewRecorder()
		if err := h.ServeHTTP(w, request("GET", "/"), &recordNext{}); err != nil || w.Code != http.StatusFound {
			t.Fatalf("%d %v", w.Code, err)
		}
		loc, _ := url.Parse(w.Header().Get("Location"))
		q := loc.Query()
		if q.Get("prompt") != c.want || q.Has("prompt") != c.wantIsSet {
			t.Errorf("auth_param prompt %v: prompt=%q (set %v), want %q", c.prompt, q.Get("prompt"), q.Has("prompt"), c.want)
		}
	}
}

func ptr[T any](v T) *T { return &v }

// Issue 12.4: userinfo_path tells a single-page app who is logged in and
// until when, with no token in it; 401 without a session; off by default.
func TestSessionInfoEndpoint(t *testing.T) {
	idp := testidp.New()
	defer idp.Close()
	h := newTestHandler(t, idp, func(h *Handler) { h.UserInfoPath = "/oauth2/userinfo" })
	r := loggedIn(t, h, map[string]any{"sub": "u1", "email": "u1@example.com", "groups": []any{"staff"}}, func(s *session.Session) {
		s.AccessToken, s.RefreshToken = "secret-access-token", "secret-refresh-token"
	})
	code, next, w := serve(h, withCookies(r, "/oauth2/userinfo"))
	if code != 200 || next.called {
		t.Fatalf("session info: %d (passed on: %v)", code, next.called)
	}
	body := w.Body.String()
	var info sessionInfo
	if err := json.Unmarshal([]byte(body), &info); err != nil {
		t.Fatal(err)
	}
	if info.Subject != "u1" || info.Email != "u1@example.com" || len(info.Groups) != 1 || info.ExpiresAt <= time.Now().Unix() {
		t.Errorf("session info %+v", info)
	}
	if strings.Contains(body, "secret-") || strings.Contains(body, "idt") {
		t.Errorf("a token in the session info: %s", body)
	}
	if code, _, _ := serve(h, apiRequest(request("GET", "/oauth2/userinfo"))); code != http.StatusUnauthorized {
		t.Errorf("without a session: %d, want 401", code)
	}
	off := newTestHandler(t, idp, nil)
	if _, next, _ := serve(off, withCookies(loggedIn(t, off, map[string]any{"sub": "u1"}, nil), "/oauth2/userinfo")); !next.called {
		t.Error("without userinfo_path the path is the upstream's")
	}
}

// Issue 12.10: health_path says whether the route can serve: 200 with the
// IdP's discovery and keys loaded, 503 (with the reason) while they cannot
// be had; no session needed.
func TestHealthPath(t *testing.T) {
	idp := testidp.New()
	defer idp.Close()
	h := newTestHandler(t, idp, func(h *Handler) { h.HealthPath = "/healthz/oidc" })
	code, next, w := serve(h, request("GET", "/healthz/oidc"))
	if code != 200 || next.called || !strings.Contains(w.Body.String(), `"ready":true`) {
		t.Fatalf("IdP up: %d %s", code, w.Body.String())
	}
	down := testidp.New()
	defer down.Close()
	down.OnJWKS(func(w http.ResponseWriter, r *http.Request) { http.Error(w, "down", http.StatusServiceUnavailable) })
	hd := newTestHandler(t, down, func(h *Handler) { h.HealthPath = "/healthz/oidc" })
	code, _, w = serve(hd, request("GET", "/healthz/oidc"))
	if code != http.StatusServiceUnavailable || !strings.Contains(w.Body.String(), `"idp":"unavailable"`) {
		t.Errorf("IdP keys unavailable: %d %s, want 503", code, w.Body.String())
	}
}

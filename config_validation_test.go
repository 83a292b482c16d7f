package caddyoidc

import (
	"context"
	"encoding/json"
	"strings"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"
	"go.uber.org/zap"

	"github.com/caddy-oidc/caddy-oidc/internal/testidp"
)

// 17.6: every JSON value is validated as strictly as its Caddyfile form,
// and each error names its field.
func TestAppConfigErrorsNameTheField(t *testing.T) {
	for _, c := range []struct{ json, field string }{
		{`{"refresh_lease": 1}`, "refresh_lease"},
		{`{"refresh_handoff": 1000}`, "refresh_handoff"},
		{`{"cache": {"l1_max_bytes": 2000}}`, "l1_max_bytes"},
		{`{"cache": {"l1_max_entries": 10}}`, "l1_max_entries"},
		{`{"cache": {"address": ["127.0.0.1:6379"]}}`, "address"},
		{`{"cache": {"password": "x"}}`, "password"},
		{`{"cache": {"db": 2}}`, "db"},
		{`{"cache": {"backend": "valkey", "address": ["127.0.0.1:6379"], "timeout": 1}}`, "timeout"},
		{`{"cache": {"backend": "valkey", "address": ["127.0.0.1:6379"], "db": -1}}`, "db"},
	} {
		var a App
		if err := json.Unmarshal([]byte(c.json), &a); err != nil {
			t.Fatal(err)
		}
		err := a.Provision(caddy.Context{})
		if err == nil {
			_ = a.Cleanup()
			t.Errorf("%s was accepted", c.json)
			continue
		}
		if !strings.Contains(err.Error(), c.field) {
			t.Errorf("%s: error %q does not name %s", c.json, err, c.field)
		}
	}
}

func TestHandlerConfigErrorsNameTheField(t *testing.T) {
	idp := testidp.New()
	defer idp.Close()
	for field, mod := range map[string]func(h *Handler){
		"idp_timeout":     func(h *Handler) { h.IdPTimeout = caddy.Duration(-time.Second) },
		"clock_skew":      func(h *Handler) { h.ClockSkew = caddy.Duration(-time.Second) },
		"cookie_samesite": func(h *Handler) { h.Session.CookieSameSite = "sideways" },
	} {
		h := &Handler{Issuer: idp.Issuer, Client: ClientConfig{ID: "app"}, Session: SessionConfig{Secrets: []string{testSecret}}}
		mod(h)
		err := h.provision(caddy.Context{}, zap.NewNop())
		if err == nil || !strings.Contains(err.Error(), field) {
			t.Errorf("%s: error %v does not name it", field, err)
		}
	}
	// SameSite=None without HTTPS would be dropped by browsers.
	h := &Handler{Issuer: idp.Issuer, Client: ClientConfig{ID: "app"}, Session: SessionConfig{Secrets: []string{testSecret}, CookieSameSite: "none"}}
	if err := h.provision(caddy.Context{}, zap.NewNop()); err == nil || !strings.Contains(err.Error(), "redirect_uri") {
		t.Errorf("cookie_samesite none on http: %v", err)
	}
}

// 16.2: an idp_timeout not clearly below the refresh lease would let a
// grant outlive its lease: the config fails at load naming both.
func TestIdPTimeoutMustFitTheLease(t *testing.T) {
	idp := testidp.New()
	defer idp.Close()
	app := newTestApp(t)
	app.RefreshLease = caddy.Duration(10 * time.Second)
	h := &Handler{Issuer: idp.Issuer, Client: ClientConfig{ID: "app"}, Session: SessionConfig{Secrets: []string{testSecret}}, IdPTimeout: caddy.Duration(8 * time.Second)}
	if err := h.provision(caddy.Context{}, zap.NewNop()); err != nil {
		t.Fatal(err)
	}
	err := h.attach(app)
	if err == nil || !strings.Contains(err.Error(), "idp_timeout") || !strings.Contains(err.Error(), "refresh_lease") {
		t.Errorf("idp_timeout 8s with refresh_lease 10s: %v", err)
	}
}

// 17.2: a reload that changes the lease, the hand-off or the L1 bounds keeps
// the cache set, its sessions and its revocations; the new bounds apply.
func TestReloadKeepsTheCacheSetWhenOnlySettingsChange(t *testing.T) {
	first := App{RefreshHandOff: caddy.Duration(30 * time.Second), Cache: &CacheConfig{L1MaxBytes: 8 << 20}}
	if err := first.Provision(caddy.Context{}); err != nil {
		t.Fatal(err)
	}
	defer first.Cleanup()
	_ = first.caches.shared.Set(context.Background(), "sess:kept", []byte("v"), time.Hour)
	second := App{RefreshHandOff: caddy.Duration(31 * time.Second), RefreshLease: caddy.Duration(30 * time.Second),
		Cache: &CacheConfig{L1MaxBytes: 4 << 20, L1MaxEntries: 5000}}
	if err := second.Provision(caddy.Context{}); err != nil {
		t.Fatal(err)
	}
	defer second.Cleanup()
	if second.caches != first.caches {
		t.Fatal("changing refresh_handoff, refresh_lease or the L1 bounds built a new cache set")
	}
	if _, found, _ := second.caches.shared.Get(context.Background(), "sess:kept"); !found {
		t.Error("the session stored before the reload is gone")
	}
}

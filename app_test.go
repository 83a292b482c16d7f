package caddyoidc

import (
	"net/http"
	"net/url"
	"testing"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/caddy-oidc/caddy-oidc/internal/testidp"
)

// caddy_oidc_sessions_created_total (README, Metrics) counts logins, and
// only those: a replayed callback creates nothing.
func TestSessionsCreatedIsCounted(t *testing.T) {
	idp := testidp.New()
	defer idp.Close()
	h := newTestHandler(t, idp, nil)
	before := sessionsCreatedTotal(t)
	attempt, q := startLogin(t, h, "/")
	idp.OnToken(testidp.TokenResponse(idp.Sign(idp.Claims("app", q.Get("nonce"))), nil))
	back := url.Values{"code": {"c"}, "state": {q.Get("state")}, "iss": {idp.Issuer}}
	if w, err := callback(h, attempt, back); err != nil || w.Code != http.StatusFound || !hasSessionCookie(w) {
		t.Fatalf("login: %d %v", w.Code, err)
	}
	if w, err := callback(h, attempt, back); statusOf(err, w) < 400 {
		t.Fatalf("replayed callback: %d, want refused", statusOf(err, w))
	}
	if got := sessionsCreatedTotal(t) - before; got != 1 {
		t.Errorf("caddy_oidc_sessions_created_total went up by %v, want 1", got)
	}
}

// sessionsCreatedTotal reads the metric as a scrape does.
func sessionsCreatedTotal(t *testing.T) float64 {
	t.Helper()
	reg := prometheus.NewPedanticRegistry()
	reg.MustRegister(sessionsCreated)
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() == "caddy_oidc_sessions_created_total" && len(mf.GetMetric()) == 1 {
			return mf.GetMetric()[0].GetCounter().GetValue()
		}
	}
	t.Fatal("caddy_oidc_sessions_created_total is not exposed")
	return 0
}

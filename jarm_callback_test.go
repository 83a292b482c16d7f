package caddyoidc

import (
	"net/http"
	"net/url"
	"testing"
	"time"

	"github.com/lestrrat-go/jwx/v2/jwa"

	"github.com/caddy-oidc/caddy-oidc/internal/testidp"
)

func TestJARMCallbackRefusals(t *testing.T) {
	idp := testidp.New()
	defer idp.Close()
	idp.SetDiscovery("authorization_signing_alg_values_supported", []string{"RS256", "ES256"})
	h := newTestHandler(t, idp, func(h *Handler) { h.Login.ResponseMode = "jwt" })
	jarm := func(state string, mod func(c map[string]any)) string {
		c := map[string]any{"iss": idp.Issuer, "aud": "app", "exp": time.Now().Add(time.Minute).Unix(), "code": "c", "state": state}
		if mod != nil {
			mod(c)
		}
		return idp.Sign(c)
	}
	for name, mk := range map[string]func(q url.Values) url.Values{
		"plain response": func(q url.Values) url.Values {
			return url.Values{"code": {"c"}, "state": {q.Get("state")}, "iss": {idp.Issuer}}
		},
		"other aud": func(q url.Values) url.Values {
			return url.Values{"response": {jarm(q.Get("state"), func(c map[string]any) { c["aud"] = "other" })}}
		},
		"expired": func(q url.Values) url.Values {
			return url.Values{"response": {jarm(q.Get("state"), func(c map[string]any) { c["exp"] = time.Now().Add(-time.Hour).Unix() })}}
		},
		"none": func(q url.Values) url.Values {
			return url.Values{"response": {testidp.Unsigned(map[string]any{"iss": idp.Issuer, "aud": "app", "exp": time.Now().Add(time.Minute).Unix(), "code": "c", "state": q.Get("state")})}}
		},
		"HS256": func(q url.Values) url.Values {
			return url.Values{"response": {testidp.SignWith(jwa.HS256, idp.PublicKeyBytes(), "k1", map[string]any{"iss": idp.Issuer, "aud": "app", "exp": time.Now().Add(time.Minute).Unix(), "code": "c", "state": q.Get("state")})}}
		},
		"id token as jarm": func(q url.Values) url.Values {
			return url.Values{"response": {idp.Sign(idp.Claims("app", q.Get("nonce")))}, "state": {q.Get("state")}, "code": {"c"}}
		},
		"two response params": func(q url.Values) url.Values { return url.Values{"response": {"x", jarm(q.Get("state"), nil)}} },
	} {
		attempt, q := startLogin(t, h, "/p")
		idp.OnToken(testidp.TokenResponse(idp.Sign(idp.Claims("app", q.Get("nonce"))), nil))
		w, err := callback(h, attempt, mk(q))
		if s := statusOf(err, w); s < 400 || hasSessionCookie(w) {
			t.Errorf("%s: %d", name, s)
		}
	}
	attempt, q := startLogin(t, h, "/p")
	idp.OnToken(testidp.TokenResponse(idp.Sign(idp.Claims("app", q.Get("nonce"))), nil))
	w, err := callback(h, attempt, url.Values{"response": {jarm(q.Get("state"), nil)}, "state": {"smuggled"}, "iss": {"https://evil"}})
	if s := statusOf(err, w); s != http.StatusFound {
		t.Errorf("valid jarm with smuggled outer params: %d %v", s, err)
	}
}

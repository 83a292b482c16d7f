package caddyoidc

import (
	"fmt"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"testing"

	"github.com/lestrrat-go/jwx/v2/jwa"

	"github.com/caddy-oidc/caddy-oidc/internal/testidp"
)

// TestRPConformance mirrors the OpenID Foundation's relying-party
// certification tests of the Basic and Config profiles: an IdP double
// misbehaves per case, a login runs through the handler, and the outcome
// must be what the certification expects. The table is logged.
func TestRPConformance(t *testing.T) {
	type env struct {
		idp *testidp.IdP
		h   *Handler
		// seen records what the IdP saw of the relying party.
		seen map[string]string
	}
	accept, reject := "login succeeds", "login refused (4xx, no session)"
	cases := []struct {
		id     string
		expect string
		setup  func(e *env)
		token  func(e *env, nonce string) string
		check  func(e *env, q url.Values) error // extra assertions on success
	}{
		{id: "rp-response_type-code", expect: accept, check: func(e *env, q url.Values) error {
			if q.Get("response_type") != "code" {
				return fmt.Errorf("response_type %q", q.Get("response_type"))
			}
			return nil
		}},
		{id: "rp-scope-userinfo-claims", expect: accept,
			setup: func(e *env) {
				e.h.Login.UserInfo = UserInfoOn
				e.idp.OnUserInfo(func(w http.ResponseWriter, r *http.Request) {
					w.Header().Set("Content-Type", "application/json")
					_, _ = w.Write([]byte(`{"sub":"user-1","phone_number":"+1 555"}`))
				})
			},
			check: func(e *env, q url.Values) error {
				if !strings.Contains(q.Get("scope"), "email") {
					return fmt.Errorf("scope %q", q.Get("scope"))
				}
				return nil
			}},
		{id: "rp-nonce-invalid", expect: reject, token: func(e *env, n string) string { return e.idp.Sign(e.idp.Claims("app", "x"+n)) }},
		{id: "rp-token_endpoint-client_secret_basic", expect: accept, check: func(e *env, _ url.Values) error {
			if e.seen["basic"] != "app" {
				return fmt.Errorf("the token endpoint saw no Basic auth")
			}
			return nil
		}},
		{id: "rp-id_token-aud", expect: reject, token: func(e *env, n string) string {
			c := e.idp.Claims("app", n)
			c["aud"], c["azp"] = "someone-else", "someone-else"
			return e.idp.Sign(c)
		}},
		{id: "rp-id_token-kid-absent-single-jwks", expect: accept, token: func(e *env, n string) string {
			k, alg := e.idp.SigningKey()
			return testidp.SignWith(alg, k, "", e.idp.Claims("app", n))
		}},
		{id: "rp-id_token-kid-absent-multiple-jwks", expect: reject,
			setup: func(e *env) { e.idp.AddKey("k2") },
			token: func(e *env, n string) string {
				k, alg := e.idp.SigningKey()
				return testidp.SignWith(alg, k, "", e.idp.Claims("app", n))
			}},
		{id: "rp-id_token-sig-none", expect: reject, token: func(e *env, n string) string { return testidp.Unsigned(e.idp.Claims("app", n)) }},
		{id: "rp-id_token-sig-rs256", expect: accept},
		{id: "rp-id_token-sig-es256", expect: accept, setup: func(e *env) {
			e.idp.AddECKey("ec1")
			e.idp.SetDiscovery("id_token_signing_alg_values_supported", []string{"RS256", "ES256"})
		}},
		{id: "rp-id_token-bad-sig-rs256", expect: reject, token: func(e *env, n string) string {
			return testidp.SignWith(jwa.RS256, testidp.ForeignKey("k1"), "k1", e.idp.Claims("app", n))
		}},
		{id: "rp-id_token-bad-sig-es256", expect: reject,
			setup: func(e *env) {
				e.idp.AddECKey("ec1")
				e.idp.SetDiscovery("id_token_signing_alg_values_supported", []string{"ES256"})
			},
			token: func(e *env, n string) string {
				tok := e.idp.Sign(e.idp.Claims("app", n))
				return tok[:len(tok)-6] + "AAAAAA"
			}},
		{id: "rp-id_token-issuer-mismatch", expect: reject, token: func(e *env, n string) string {
			c := e.idp.Claims("app", n)
			c["iss"] = "https://example.org/"
			return e.idp.Sign(c)
		}},
		{id: "rp-id_token-iat", expect: reject, token: func(e *env, n string) string {
			c := e.idp.Claims("app", n)
			delete(c, "iat")
			return e.idp.Sign(c)
		}},
		{id: "rp-id_token-sub", expect: reject, token: func(e *env, n string) string {
			c := e.idp.Claims("app", n)
			delete(c, "sub")
			return e.idp.Sign(c)
		}},
		{id: "rp-userinfo-bad-sub-claim", expect: reject, setup: func(e *env) {
			e.h.Login.UserInfo = UserInfoOn
			e.idp.OnUserInfo(func(w http.ResponseWriter, r *http.Request) {
				w.Header().Set("Content-Type", "application/json")
				_, _ = w.Write([]byte(`{"sub":"not-the-same"}`))
			})
		}},
		{id: "rp-userinfo-bearer-header", expect: accept, setup: func(e *env) {
			e.h.Login.UserInfo = UserInfoOn
			e.idp.OnUserInfo(func(w http.ResponseWriter, r *http.Request) {
				e.seen["userinfo-auth"] = r.Header.Get("Authorization")
				w.Header().Set("Content-Type", "application/json")
				_, _ = w.Write([]byte(`{"sub":"user-1"}`))
			})
		}, check: func(e *env, _ url.Values) error {
			if !strings.HasPrefix(e.seen["userinfo-auth"], "Bearer ") {
				return fmt.Errorf("userinfo called with %q", e.seen["userinfo-auth"])
			}
			return nil
		}},
		{id: "rp-discovery-openid-configuration", expect: accept, check: func(e *env, _ url.Values) error {
			if e.idp.DiscoveryHits.Load() == 0 {
				return fmt.Errorf("discovery not used")
			}
			return nil
		}},
		{id: "rp-discovery-jwks_uri-keys", expect: accept, check: func(e *env, _ url.Values) error {
			if e.idp.JWKSHits.Load() == 0 {
				return fmt.Errorf("jwks_uri not used")
			}
			return nil
		}},
		{id: "rp-discovery-issuer-not-matching-config", expect: "login refused (503 before the IdP)", setup: func(e *env) {
			e.idp.SetDiscovery("issuer", "https://example.org/")
		}},
		{id: "rp-key-rotation-op-sign-key", expect: accept, setup: func(e *env) {
			// The IdP rotates after the module has cached its first key set.
			_, _ = e.h.rp.Discovery(t.Context())
			_, _ = e.h.rp.VerifyLoginIDToken(t.Context(), e.idp.Sign(e.idp.Claims("app", "warm")), "warm")
			e.idp.AddKey("rotated")
		}},
	}
	var table strings.Builder
	fmt.Fprintf(&table, "\n| case | expected | got |\n| --- | --- | --- |\n")
	for _, tc := range cases {
		t.Run(tc.id, func(t *testing.T) {
			e := &env{idp: testidp.New(), seen: map[string]string{}}
			defer e.idp.Close()
			e.h = newTestHandler(t, e.idp, nil)
			if tc.setup != nil {
				tc.setup(e)
			}
			got := func() string {
				w0, _ := func() (int, error) {
					r := request("GET", "/conformance")
					rec := newRecorder()
					err := e.h.ServeHTTP(rec, r, &recordNext{})
					return statusOf(err, rec), err
				}()
				if w0 != http.StatusFound {
					return fmt.Sprintf("login refused (%d before the IdP)", w0)
				}
				attempt, q := startLogin(t, e.h, "/conformance")
				mint := tc.token
				if mint == nil {
					mint = func(e *env, n string) string { return e.idp.Sign(e.idp.Claims("app", n)) }
				}
				tok := mint(e, q.Get("nonce"))
				e.idp.OnToken(func(w http.ResponseWriter, r *http.Request) {
					if u, _, ok := r.BasicAuth(); ok {
						e.seen["basic"] = u
					}
					testidp.TokenResponse(tok, nil)(w, r)
				})
				w, err := callback(e.h, attempt, url.Values{"code": {"c"}, "state": {q.Get("state")}})
				s := statusOf(err, w)
				switch {
				case s == http.StatusFound && hasSessionCookie(w):
					if tc.check != nil {
						if err := tc.check(e, q); err != nil {
							return "login succeeds, but " + err.Error()
						}
					}
					return accept
				case s >= 400 && s < 500 && !hasSessionCookie(w):
					return reject
				default:
					return fmt.Sprintf("status %d, session %v", s, hasSessionCookie(w))
				}
			}()
			if got != tc.expect {
				t.Errorf("got %q, want %q", got, tc.expect)
			}
			fmt.Fprintf(&table, "| %s | %s | %s |\n", tc.id, tc.expect, got)
		})
	}
	t.Log(table.String())
}

func newRecorder() *httptest.ResponseRecorder { return httptest.NewRecorder() }

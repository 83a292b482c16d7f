package caddyoidc

import (
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"testing"

	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"

	"github.com/caddy-oidc/caddy-oidc/internal/testidp"
)

// idpFormPost is the IdP's page posting the response to the callback:
// cross-site, so a SameSite=Lax attempt cookie stays behind unless given.
func idpFormPost(h *Handler, fields url.Values, attempt *http.Cookie) (*httptest.ResponseRecorder, error) {
	r := request("POST", "/oauth2/callback")
	r.Body = io.NopCloser(strings.NewReader(fields.Encode()))
	r.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	r.Header.Set("Sec-Fetch-Site", "cross-site")
	if attempt != nil {
		r.AddCookie(attempt)
	}
	w := httptest.NewRecorder()
	return w, h.ServeHTTP(w, r, &recordNext{})
}

func TestFormPostLogin(t *testing.T) {
	idp := testidp.New()
	defer idp.Close()
	h := newTestHandler(t, idp, func(h *Handler) { h.Login.ResponseMode = responseModeFormPost })
	attempt, q := loginAt(t, h, request("GET", "/page?a=1"))
	if q.Get("response_mode") != "form_post" {
		t.Fatalf("response_mode %q, want form_post", q.Get("response_mode"))
	}
	idp.OnToken(testidp.TokenResponse(idp.Sign(idp.Claims("app", q.Get("nonce"))), nil))
	resp := url.Values{"code": {"c"}, "state": {q.Get("state")}, "iss": {idp.Issuer}, "ignored": {"x"}}

	// The IdP's POST arrives without the cookie: a page of this origin posts
	// the response again; nothing is redeemed yet.
	w, err := idpFormPost(h, resp, nil)
	if err != nil || w.Code != http.StatusOK || idp.TokenHits.Load() != 0 {
		t.Fatalf("cross-site POST: %d (%v), %d token calls", w.Code, err, idp.TokenHits.Load())
	}
	page := w.Body.String()
	for _, want := range []string{`action="/oauth2/callback"`, `name="code" value="c"`, `name="state" value="` + q.Get("state") + `"`, `name="` + repostField + `" value="1"`} {
		if !strings.Contains(page, want) {
			t.Errorf("re-post page lacks %s:\n%s", want, page)
		}
	}
	if strings.Contains(page, "ignored") {
		t.Error("the re-post echoes a field that is not part of the response")
	}
	// The same-site re-post carries the cookie and completes the login.
	resp.Set(repostField, "1")
	w, err = idpFormPost(h, resp, attempt)
	if err != nil || w.Code != http.StatusFound || w.Header().Get("Location") != "/page?a=1" || !hasSessionCookie(w) {
		t.Fatalf("re-post: %d to %q (%v)", w.Code, w.Header().Get("Location"), err)
	}
}

func TestFormPostCallbackMethods(t *testing.T) {
	idp := testidp.New()
	defer idp.Close()
	formPost := newTestHandler(t, idp, func(h *Handler) { h.Login.ResponseMode = responseModeFormPost })
	query := newTestHandler(t, idp, nil)
	attempt, q := loginAt(t, formPost, request("GET", "/"))
	// A form_post route takes no GET response (no code in a URL).
	w, err := callback(formPost, attempt, url.Values{"code": {"c"}, "state": {q.Get("state")}})
	if s := statusOf(err, w); s != http.StatusMethodNotAllowed || w.Header().Get("Allow") != "POST" {
		t.Errorf("GET on a form_post callback: %d, Allow %q", s, w.Header().Get("Allow"))
	}
	// A query route takes no POST.
	w, err = idpFormPost(query, url.Values{"code": {"c"}, "state": {"s"}}, nil)
	if s := statusOf(err, w); s != http.StatusMethodNotAllowed || w.Header().Get("Allow") != "GET" {
		t.Errorf("POST on a query callback: %d, Allow %q", s, w.Header().Get("Allow"))
	}
	// Oversized or non-form bodies are refused before anything else.
	w, err = idpFormPost(formPost, url.Values{"state": {strings.Repeat("s", maxCallbackBody)}}, nil)
	if s := statusOf(err, w); s != http.StatusRequestEntityTooLarge {
		t.Errorf("oversized form_post body: %d", s)
	}
	if idp.TokenHits.Load() != 0 {
		t.Errorf("%d token calls", idp.TokenHits.Load())
	}
}

// A response planted from another site, with the re-post marker already
// set, finds no attempt cookie and is refused: the re-post happens once,
// never in a loop, and no code is redeemed.
func TestAttackFormPostPlantedResponse(t *testing.T) {
	idp := testidp.New()
	defer idp.Close()
	h := newTestHandler(t, idp, func(h *Handler) { h.Login.ResponseMode = responseModeFormPost })
	w, err := idpFormPost(h, url.Values{"code": {"attacker-code"}, "state": {"attacker-state"}, repostField: {"1"}}, nil)
	if s := statusOf(err, w); s != http.StatusBadRequest || idp.TokenHits.Load() != 0 {
		t.Errorf("planted re-post: %d, %d token calls", s, idp.TokenHits.Load())
	}
	// A victim's attempt cookie does not match the attacker's state either.
	attempt, _ := loginAt(t, h, request("GET", "/"))
	w, err = idpFormPost(h, url.Values{"code": {"attacker-code"}, "state": {"attacker-state"}, repostField: {"1"}}, attempt)
	if s := statusOf(err, w); s != http.StatusBadRequest || idp.TokenHits.Load() != 0 || hasSessionCookie(w) {
		t.Errorf("attacker's response with the victim's cookie: %d, %d token calls", s, idp.TokenHits.Load())
	}
}

// Each login-flow subdirective fails at load, naming itself, when misused.
func TestLoginFlowBadConfig(t *testing.T) {
	for _, tc := range []struct{ caddyfile, want string }{
		{"max_age -5m", "max_age"},
		{"max_age 0s", "max_age"},
		{"max_age soon", "max_age"},
		{"response_mode fragment", "response_mode"},
		{"preserve_post 100", "preserve_post"},
		{"preserve_post 2MiB", "preserve_post"},
		{"preserve_post lots", "preserve_post"},
		{"acr_values", "after 'acr_values'"},
		{"acr_values gold\n\tauth_param acr_values silver", "acr_values"},
	} {
		block := "oidc {\n\tissuer https://idp.example.com\n\tclient_id app\n\tsession_secret " + testSecret + "\n\t" + tc.caddyfile + "\n}"
		var h Handler
		err := h.UnmarshalCaddyfile(caddyfile.NewTestDispenser(block))
		if err == nil {
			h.applyDefaults()
			err = h.Validate()
		}
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%q: got %v, want an error naming %s", tc.caddyfile, err, tc.want)
		}
	}
	// JSON has no Caddyfile parser in front of it: Validate catches the rest.
	for name, l := range map[string]LoginConfig{
		"max_age":       {MaxAge: -1},
		"preserve_post": {PreservePost: 1 << 30},
		"acr_values":    {ACRValues: []string{"gold silver"}},
	} {
		if err := l.validate(); err == nil || !strings.Contains(err.Error(), name) {
			t.Errorf("JSON %s: got %v", name, err)
		}
	}
}

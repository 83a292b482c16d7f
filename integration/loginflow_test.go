package integration

import (
	"html"
	"io"
	"net/http"
	"net/url"
	"regexp"
	"strings"
	"testing"

	"github.com/caddy-oidc/caddy-oidc/integration/flow"
)

var (
	autoSubmitAction = regexp.MustCompile(`<form[^>]*action="([^"]*)"`)
	autoSubmitInput  = regexp.MustCompile(`<input type="hidden" name="([^"]*)" value="([^"]*)"`)
)

// readForm returns an auto-submitting page's action and fields.
func readForm(t *testing.T, resp *http.Response) (string, url.Values) {
	t.Helper()
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	m := autoSubmitAction.FindSubmatch(b)
	if resp.StatusCode != http.StatusOK || m == nil {
		t.Fatalf("want an auto-submitting form, got %d: %s", resp.StatusCode, b)
	}
	fields := url.Values{}
	for _, in := range autoSubmitInput.FindAllSubmatch(b, -1) {
		fields.Add(html.UnescapeString(string(in[1])), html.UnescapeString(string(in[2])))
	}
	return html.UnescapeString(string(m[1])), fields
}

// A login in response_mode form_post against the development IdP (zitadel's
// op): the IdP's page posts the code cross-site, where a browser sends no
// SameSite=Lax cookie; the module posts it again from its own origin, with
// the cookie, and the user lands on the page first asked for.
func TestFormPostLoginAgainstDevIdP(t *testing.T) {
	e := newEnv(t, envOptions{oidc: "response_mode form_post"})
	c := e.browser()
	form, err := flow.Start(c, e.caddyURL+"/page?x=1")
	if err != nil {
		t.Fatal(err)
	}
	if q, _ := url.ParseQuery(form.RawQuery); q.Get("authRequestID") == "" {
		t.Fatalf("no login form: %s", form)
	}
	// The IdP's answer is its form_post page.
	idpPage := e.submitLogin(c, form, "alice", "alice-password")
	defer idpPage.Body.Close()
	action, fields := readForm(t, idpPage)
	if !strings.HasSuffix(action, "/oauth2/callback") || fields.Get("code") == "" || fields.Get("state") == "" {
		t.Fatalf("IdP's form_post page: action %q fields %v", action, fields)
	}
	// Its POST, cross-site: without the attempt cookie.
	crossSite := flow.Browser()
	req, _ := http.NewRequest(http.MethodPost, action, strings.NewReader(fields.Encode()))
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	req.Header.Set("Origin", e.idp.Issuer)
	req.Header.Set("Sec-Fetch-Site", "cross-site")
	resp, err := crossSite.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	repostAction, repost := readForm(t, resp)
	if repostAction != "/oauth2/callback" || repost.Get("code") != fields.Get("code") || repost.Get("oidc_repost") != "1" {
		t.Fatalf("re-post page: action %q fields %v", repostAction, repost)
	}
	// The page's same-site POST carries the cookie and completes the login.
	resp, err = c.PostForm(e.caddyURL+repostAction, repost)
	if err != nil {
		t.Fatal(err)
	}
	got := readEcho(t, resp)
	if got.Path != "/page" || got.Query != "x=1" || got.Headers.Get("X-Auth-User") != "alice-id" {
		t.Fatalf("landed on %s?%s as %q", got.Path, got.Query, got.Headers.Get("X-Auth-User"))
	}
	// A GET callback is refused in this mode: no code in a URL.
	resp = e.get(c, "/oauth2/callback?code=x&state=y", nil)
	resp.Body.Close()
	if resp.StatusCode != http.StatusMethodNotAllowed {
		t.Errorf("GET callback in form_post mode: %d", resp.StatusCode)
	}
}

// A form POST sent without a session is kept across the login at the
// development IdP and submitted again, same-origin, to its URL.
func TestPreservedPostAgainstDevIdP(t *testing.T) {
	e := newEnv(t, envOptions{oidc: "preserve_post 16KiB"})
	c := e.browser()
	body := url.Values{"title": {"draft & notes"}, "body": {strings.Repeat("typed for an hour ", 100)}}.Encode()
	req, _ := http.NewRequest(http.MethodPost, e.caddyURL+"/posts/new", strings.NewReader(body))
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	req.Header.Set("Sec-Fetch-Site", "same-origin")
	// The client follows the 303 to the IdP's login form with GET.
	resp, err := c.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.Request.URL.Path != "/login/username" {
		t.Fatalf("the POST did not lead to the IdP's login form: %s (%d)", resp.Request.URL, resp.StatusCode)
	}
	replayPage := e.submitLogin(c, resp.Request.URL, "alice", "alice-password")
	defer replayPage.Body.Close()
	action, fields := readForm(t, replayPage)
	if action != "/posts/new" || fields.Encode() != mustParse(t, body).Encode() {
		t.Fatalf("replay page: action %q fields %v", action, fields)
	}
	resp, err = c.PostForm(e.caddyURL+action, fields)
	if err != nil {
		t.Fatal(err)
	}
	got := readEcho(t, resp)
	if got.Path != "/posts/new" || got.Headers.Get("X-Auth-User") != "alice-id" || got.Headers.Get("Content-Length") == "" {
		t.Fatalf("replayed POST reached the upstream as %s by %q", got.Path, got.Headers.Get("X-Auth-User"))
	}
	// Over the size: 413, never a silent drop.
	big := "body=" + strings.Repeat("x", 20<<10)
	req, _ = http.NewRequest(http.MethodPost, e.caddyURL+"/posts/new", strings.NewReader(big))
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	req.Header.Set("Sec-Fetch-Site", "same-origin")
	resp, err = flow.Browser().Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusRequestEntityTooLarge {
		t.Errorf("oversized POST: %d, want 413", resp.StatusCode)
	}
}

func mustParse(t *testing.T, s string) url.Values {
	t.Helper()
	v, err := url.ParseQuery(s)
	if err != nil {
		t.Fatal(err)
	}
	return v
}

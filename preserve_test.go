package caddyoidc

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/caddy-oidc/caddy-oidc/internal/testidp"
)

// formPost is a browser's form submission to path, from origin.
func formPost(path, body, origin string) *http.Request {
	r := request("POST", path)
	r.Body = http.NoBody
	if body != "" {
		r = request("POST", path)
		r.Body = io.NopCloser(strings.NewReader(body))
		r.ContentLength = int64(len(body))
	}
	r.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	r.Header.Set("Sec-Fetch-Mode", "navigate")
	r.Header.Set("Sec-Fetch-Dest", "document")
	r.Header.Set("Origin", origin)
	if origin == "http://example.com" {
		r.Header.Set("Sec-Fetch-Site", "same-origin")
	} else {
		r.Header.Set("Sec-Fetch-Site", "cross-site")
	}
	return r
}

func TestPreservePostSurvivesLogin(t *testing.T) {
	idp := testidp.New()
	defer idp.Close()
	h := newTestHandler(t, idp, func(h *Handler) { h.Login.PreservePost = 4 << 10 })
	body := "comment=hello+w%C3%B6rld&tag=a&tag=b&csrf=%3Cx%3E"
	code, next, w := serve(h, formPost("/posts/new?draft=1", body, "http://example.com"))
	if code != http.StatusSeeOther || next.called {
		t.Fatalf("got %d, want 303 to the IdP", code)
	}
	loc, _ := url.Parse(w.Header().Get("Location"))
	q := loc.Query()
	var attempt *http.Cookie
	for _, c := range w.Result().Cookies() {
		attempt = c
	}
	cb, err := finishLogin(t, h, idp, attempt, q, map[string]any{})
	if err != nil || cb.Code != http.StatusOK || !hasSessionCookie(cb) {
		t.Fatalf("callback: %d (%v), session %v", cb.Code, err, hasSessionCookie(cb))
	}
	page := cb.Body.String()
	csp := cb.Header().Get("Content-Security-Policy")
	for _, want := range []string{
		`<form method="post" action="/posts/new?draft=1">`,
		`<input type="hidden" name="comment" value="hello wörld">`,
		`<input type="hidden" name="tag" value="a"><input type="hidden" name="tag" value="b">`,
		`<input type="hidden" name="csrf" value="&lt;x&gt;">`,
	} {
		if !strings.Contains(page, want) {
			t.Errorf("replay page lacks %s:\n%s", want, page)
		}
	}
	nonce := csp[strings.Index(csp, "'nonce-")+7:]
	nonce = nonce[:strings.Index(nonce, "'")]
	if !strings.Contains(page, `<script nonce="`+nonce+`">`) || !strings.Contains(csp, "default-src 'none'") {
		t.Errorf("the script does not run under the page's CSP nonce: %q", csp)
	}
	// Once only: the kept POST is gone after its replay.
	if _, ok := h.takePost(context.Background(), q.Get("state")); ok {
		t.Error("the kept POST outlived its replay")
	}
}

// A POST from another site (or a sibling subdomain) is never kept: else any
// site could make a logged-out victim submit a form of its choosing with
// the session the victim is about to get.
func TestAttackCrossSitePostIsNotPreserved(t *testing.T) {
	idp := testidp.New()
	defer idp.Close()
	h := newTestHandler(t, idp, func(h *Handler) { h.Login.PreservePost = 4 << 10 })
	before, _ := preservedPosts.Len()
	for name, r := range map[string]*http.Request{
		"cross-site": formPost("/transfer", "to=attacker&amount=1000", "https://evil.example"),
		"sibling": func() *http.Request {
			r := formPost("/transfer", "to=attacker", "http://evil.example.com")
			r.Header.Set("Sec-Fetch-Site", "same-site")
			return r
		}(),
		"no origin at all": func() *http.Request {
			r := formPost("/transfer", "to=attacker", "")
			r.Header.Del("Sec-Fetch-Site")
			return r
		}(),
		"fetch()": func() *http.Request {
			r := formPost("/transfer", "to=attacker", "http://example.com")
			r.Header.Set("Sec-Fetch-Mode", "cors")
			return r
		}(),
	} {
		code, next, w := serve(h, r)
		if code != http.StatusUnauthorized || next.called || len(w.Result().Cookies()) != 0 {
			t.Errorf("%s: got %d with %d cookies, want 401 and no login attempt", name, code, len(w.Result().Cookies()))
		}
	}
	if after, _ := preservedPosts.Len(); after != before {
		t.Errorf("hostile POSTs were kept: %d entries, was %d", after, before)
	}
}

// A kept POST replays only in the login its own browser started: moved to
// another attempt's key (as whoever could write the store would), it does
// not open, and the victim lands on the page by GET.
func TestAttackPreservedPostBoundToItsAttempt(t *testing.T) {
	idp := testidp.New()
	defer idp.Close()
	h := newTestHandler(t, idp, func(h *Handler) { h.Login.PreservePost = 4 << 10 })
	_, _, aw := serve(h, formPost("/transfer", "to=attacker", "http://example.com"))
	attackerLoc, _ := url.Parse(aw.Header().Get("Location"))
	_, _, vw := serve(h, formPost("/transfer", "to=landlord", "http://example.com"))
	victimLoc, _ := url.Parse(vw.Header().Get("Location"))
	victimAttempt := vw.Result().Cookies()[0]
	ctx := context.Background()
	sealed, _, _ := preservedPosts.Get(ctx, h.preservedPostKey(attackerLoc.Query().Get("state")))
	_ = preservedPosts.Set(ctx, h.preservedPostKey(victimLoc.Query().Get("state")), sealed, time.Minute)

	cb, err := finishLogin(t, h, idp, victimAttempt, victimLoc.Query(), map[string]any{})
	if err != nil || strings.Contains(cb.Body.String(), "attacker") || cb.Code != http.StatusFound || cb.Header().Get("Location") != "/transfer" {
		t.Fatalf("victim's callback: %d to %q (%v): %s", cb.Code, cb.Header().Get("Location"), err, cb.Body.String())
	}
}

// Over the cap: 413, never a silent drop; nothing is kept.
func TestPreservePostOverCapIs413(t *testing.T) {
	idp := testidp.New()
	defer idp.Close()
	h := newTestHandler(t, idp, func(h *Handler) { h.Login.PreservePost = 1 << 10 })
	big := "text=" + strings.Repeat("x", 2<<10)
	for name, r := range map[string]*http.Request{
		"declared": formPost("/posts", big, "http://example.com"),
		"chunked": func() *http.Request {
			r := formPost("/posts", big, "http://example.com")
			r.ContentLength = -1
			return r
		}(),
	} {
		code, next, w := serve(h, r)
		if code != http.StatusRequestEntityTooLarge || next.called || len(w.Result().Cookies()) != 0 {
			t.Errorf("%s: got %d with %d cookies, want 413", name, code, len(w.Result().Cookies()))
		}
	}
}

// Anyone may send same-origin-looking POSTs (a script sets Origin): the
// store of kept POSTs stays within its budget, and a flood never evicts a
// session from the shared cache.
func TestAttackPreservePostFloodIsBounded(t *testing.T) {
	idp := testidp.New()
	defer idp.Close()
	h := newTestHandler(t, idp, func(h *Handler) {
		h.Login.PreservePost = maxPreservePost
		h.Session.Store = "cache"
	})
	victim := loggedIn(t, h, map[string]any{"sub": "victim"}, nil)
	body := "f=" + strings.Repeat("y", 256<<10)
	const n = 150 // 37.5 MiB sent, about 50 MiB sealed
	for i := range n {
		if code, _, _ := serve(h, formPost(fmt.Sprintf("/f%d", i), body, "http://example.com")); code != http.StatusSeeOther {
			t.Fatalf("POST %d: %d", i, code)
		}
	}
	entries, bytes := preservedPosts.Len()
	t.Logf("after %d POSTs of %d KiB: %d kept, %d MiB", n, len(body)>>10, entries, bytes>>20)
	if bytes > preservedPostBudget || entries > preservedPostEntries {
		t.Errorf("the store of kept POSTs grew past its budget: %d entries, %d bytes", entries, bytes)
	}
	if l := h.sessions.Load(victim, time.Now()); !l.Usable() {
		t.Errorf("the flood cost a session: %v", l.Refusal)
	}
}

func TestParseFormOrdered(t *testing.T) {
	got, err := parseFormOrdered("b=2&a=1&b=3&empty=&flag&sp=a+b%20c")
	if err != nil {
		t.Fatal(err)
	}
	want := []formField{{"b", "2"}, {"a", "1"}, {"b", "3"}, {"empty", ""}, {"flag", ""}, {"sp", "a b c"}}
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Errorf("got %v, want %v", got, want)
	}
	if _, err := parseFormOrdered("a=%zz"); err == nil {
		t.Error("a malformed escape was accepted")
	}
}

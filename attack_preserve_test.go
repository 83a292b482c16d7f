package caddyoidc

import (
	"net/http"
	"net/url"
	"strings"
	"testing"

	"github.com/caddy-oidc/caddy-oidc/internal/testidp"
)

// a form within preserve_post's limit is accepted (303 to the
// IdP, no 413), but its sealed JSON is larger than one shard of the store
// of kept POSTs (32 MiB / 16 shards = 2 MiB), and cache.Memory silently
// refuses entries larger than a shard. json.Marshal writes '<', '>' and
// '&' as \u003c (6 bytes for a 3-byte %3C on the wire), and the seal adds
// base64. The user logs in and lands on the page by GET: the form is
// lost, which the README promises never happens ("Over the size: 413,
// never a silent drop").
func TestAttackPreservedPostWithinLimitSilentlyDropped(t *testing.T) {
	idp := testidp.New()
	defer idp.Close()
	h := newTestHandler(t, idp, func(h *Handler) { h.Login.PreservePost = maxPreservePost })
	// 1 MiB on the wire: an HTML snippet pasted into a textarea, as a
	// browser encodes it.
	body := "snippet=" + strings.Repeat("%3Cb%3E", (maxPreservePost-len("snippet="))/7)
	if len(body) > maxPreservePost {
		t.Fatalf("test body %d bytes is over the limit", len(body))
	}
	code, _, w := serve(h, formPost("/posts/new", body, "http://example.com"))
	if code == http.StatusRequestEntityTooLarge {
		return // refused loudly: fine
	}
	if code != http.StatusSeeOther {
		t.Fatalf("POST: %d", code)
	}
	loc, _ := url.Parse(w.Header().Get("Location"))
	var attempt *http.Cookie
	for _, c := range w.Result().Cookies() {
		if strings.Contains(c.Name, "_state_") {
			attempt = c
		}
	}
	cb, err := finishLogin(t, h, idp, attempt, loc.Query(), map[string]any{})
	if err != nil {
		t.Fatal(err)
	}
	if cb.Code != http.StatusOK || !strings.Contains(cb.Body.String(), `name="snippet"`) {
		t.Fatalf("a %d-byte form within preserve_post %d was accepted (303) and then silently dropped: callback %d to %q",
			len(body), maxPreservePost, cb.Code, cb.Header().Get("Location"))
	}
}

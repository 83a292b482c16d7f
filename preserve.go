package caddyoidc

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"html/template"
	"io"
	"mime"
	"net/http"
	"net/url"
	"strings"

	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"go.uber.org/zap"

	"github.com/caddy-oidc/caddy-oidc/cache"
	"github.com/caddy-oidc/caddy-oidc/internal/lograte"
)

// preserve_post: a form POST that arrives without a usable session (the
// session expired while the user typed) is kept, and submitted again after
// the login by a page of this origin.
//
// Where it is kept: a form of up to 512 KiB does not fit the attempt cookie
// (a browser holds up to maxLoginAttempts of them, and the Cookie header
// must stay under 8 KB), so the body is sealed and kept on the server,
// under the hash of the attempt's state, for the attempt's lifetime. Not in
// the shared cache: its L1 holds sessions, and anyone can send POSTs, which
// must never evict a session. Preserved POSTs have a store of their own,
// bounded in bytes and entries (a flood evicts only other preserved POSTs),
// in this process: with several replicas, the callback must reach the
// replica that kept the POST (sticky sessions); elsewhere the user lands on
// the page by GET and a warning is logged.

// errPostTooLarge: the sealed form is larger than the store keeps.
var errPostTooLarge = errors.New("the form is too large to keep across the login")

// purposePreservedPost seals a preserved POST (+ its cache key), bound to
// the route like every sealed value (see route.go).
const purposePreservedPost = "post\x00"

// The process's store of preserved POSTs: 32 MiB and 4096 forms at most.
const (
	preservedPostBudget  = 32 << 20
	preservedPostEntries = 4096
)

var preservedPosts = cache.NewMemory(preservedPostBudget, preservedPostEntries, nil)

// preservedPostLostLog limits the warnings of POSTs that could not be
// replayed.
var preservedPostLostLog lograte.Limit

// preservable reports whether r is a form POST that preserve_post keeps: a
// browser's top-level form submission, url-encoded, from this origin. A
// cross-site (or sibling-subdomain) POST is never kept: else any site could
// make a victim submit a form of its choosing with the victim's session,
// by sending it to log in.
func (h *Handler) preservable(r *http.Request) bool {
	if h.Login.PreservePost <= 0 || r.Method != http.MethodPost {
		return false
	}
	if mt, _, _ := mime.ParseMediaType(r.Header.Get("Content-Type")); mt != "application/x-www-form-urlencoded" {
		return false
	}
	if strings.EqualFold(r.Header.Get("X-Requested-With"), "XMLHttpRequest") {
		return false
	}
	if m := r.Header.Get("Sec-Fetch-Mode"); m != "" && m != "navigate" {
		return false
	}
	if d := r.Header.Get("Sec-Fetch-Dest"); d != "" && d != "document" {
		return false
	}
	return sameOriginPost(r, h.scheme)
}

// readPreservedPost reads a preservable POST's fields, in order: 413 over
// limit bytes (never a silent drop), 400 when the body is not a form.
func readPreservedPost(w http.ResponseWriter, r *http.Request, limit int64) ([]formField, error) {
	tooLarge := caddyhttp.Error(http.StatusRequestEntityTooLarge,
		fmt.Errorf("the form POST is over preserve_post's %d bytes and cannot be kept across the login", limit))
	if r.ContentLength > limit {
		return nil, tooLarge
	}
	body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, limit))
	if err != nil {
		if errors.As(err, new(*http.MaxBytesError)) {
			return nil, tooLarge
		}
		return nil, caddyhttp.Error(http.StatusBadRequest, fmt.Errorf("reading the form POST to keep: %w", err))
	}
	fields, err := parseFormOrdered(string(body))
	if err != nil {
		return nil, caddyhttp.Error(http.StatusBadRequest, fmt.Errorf("the form POST to keep: %w", err))
	}
	return fields, nil
}

// parseFormOrdered decodes an url-encoded body keeping the order of its
// fields (url.ParseQuery would not): the replayed form is the one sent.
func parseFormOrdered(body string) ([]formField, error) {
	fields := []formField{}
	for pair := range strings.SplitSeq(body, "&") {
		if pair == "" {
			continue
		}
		k, v, _ := strings.Cut(pair, "=")
		name, err := url.QueryUnescape(k)
		if err != nil {
			return nil, fmt.Errorf("field name: %w", err)
		}
		value, err := url.QueryUnescape(v)
		if err != nil {
			return nil, fmt.Errorf("field %q: %w", clipClaim(name), err)
		}
		fields = append(fields, formField{name, value})
	}
	return fields, nil
}

// preservedPostKey is where the POST of a route's attempt is kept: the hash
// of its state, which only the browser that started the attempt holds.
func (h *Handler) preservedPostKey(state string) string {
	sum := sha256.Sum256([]byte(state))
	return cache.PreservedPostKey(h.ns, hex.EncodeToString(sum[:16]))
}

// keepPost seals the fields under the attempt's key.
func (h *Handler) keepPost(ctx context.Context, state string, fields []formField) error {
	var buf bytes.Buffer
	enc := json.NewEncoder(&buf)
	enc.SetEscapeHTML(false) // < > & as they are: a form of HTML stays its size
	if err := enc.Encode(fields); err != nil {
		return fmt.Errorf("encoding the form POST to keep: %w", err)
	}
	key := h.preservedPostKey(state)
	if err := preservedPosts.Set(ctx, key, []byte(h.codec.Seal(h.bind(purposePreservedPost+key), buf.Bytes())), loginAttemptTTL); err != nil {
		return err
	}
	// The store drops what it cannot hold rather than fail: a form it did
	// not keep is refused now (413), not lost after the login.
	if _, kept, _ := preservedPosts.Get(ctx, key); !kept {
		return errPostTooLarge
	}
	return nil
}

// takePost returns and forgets the POST kept for an attempt.
func (h *Handler) takePost(ctx context.Context, state string) ([]formField, bool) {
	key := h.preservedPostKey(state)
	sealed, found, _ := preservedPosts.Get(ctx, key)
	if !found {
		return nil, false
	}
	_ = preservedPosts.Delete(ctx, key)
	pt, _, err := h.codec.Open(h.bind(purposePreservedPost+key), string(sealed))
	if err != nil {
		return nil, false
	}
	var fields []formField
	if json.Unmarshal(pt, &fields) != nil {
		return nil, false
	}
	return fields, true
}

// replayPost ends a login whose attempt kept a POST: a page of this origin
// submits it to the URL it was sent to.
func (h *Handler) replayPost(w http.ResponseWriter, r *http.Request, a *attempt) error {
	target := safeReturnTo(a.ReturnTo)
	fields, ok := h.takePost(r.Context(), a.State)
	if !ok {
		if ok, n := preservedPostLostLog.Allow(); ok {
			h.logger.Warn("the form POST kept at login is gone (expired, evicted under load, or this callback reached another replica: preserve_post needs sticky sessions); the user lands on the page by GET",
				zap.String("path", r.URL.Path), zap.Int64("more_since_last_log", n))
		}
		http.Redirect(w, r, target, http.StatusFound)
		return nil
	}
	return writeAutoSubmit(w, target, fields, "You are logged in. Send the form you filled in again?")
}

// autoSubmitForm posts hidden fields to a URL of this origin, as the RP
// logout form does: the inline script runs under a CSP nonce, a browser
// without scripts gets the button. The prototype's submit is called: a
// field named "submit" (a named submit button) shadows form.submit.
var autoSubmitForm = template.Must(template.New("autosubmit").Parse(`<!doctype html>
<html><head><meta charset="utf-8"><title>Continue</title></head>
<body><form method="post" action="{{.Action}}">
{{- range .Fields}}<input type="hidden" name="{{.Name}}" value="{{.Value}}">{{end -}}
<noscript><p>{{.Message}}</p><button type="submit">Continue</button></noscript></form>
<script nonce="{{.Nonce}}">HTMLFormElement.prototype.submit.call(document.forms[0])</script></body></html>
`))

// writeAutoSubmit writes the page that posts fields to action, a path of
// this origin: the POST then carries this origin in Origin and Referer
// (what CSRF checks look for), never this page's URL, which may hold a code.
func writeAutoSubmit(w http.ResponseWriter, action string, fields []formField, message string) error {
	return writeFormPage(w, action, fields, message, "origin")
}

// writeFormPage writes a page that posts fields to action by itself, with
// message and a button for a browser without scripts.
func writeFormPage(w http.ResponseWriter, action string, fields []formField, message, referrerPolicy string) error {
	b := make([]byte, 18)
	rand.Read(b)
	nonce := base64.RawURLEncoding.EncodeToString(b)
	hd := w.Header()
	hd.Set("Content-Type", "text/html; charset=utf-8")
	hd.Set("Cache-Control", "no-store")
	// No form-action: the application (or the IdP) may redirect elsewhere
	// after the POST, and browsers apply form-action to those redirects.
	hd.Set("Content-Security-Policy", "default-src 'none'; script-src 'nonce-"+nonce+"'; base-uri 'none'; frame-ancestors 'none'")
	hd.Set("X-Frame-Options", "DENY")
	hd.Set("Referrer-Policy", referrerPolicy)
	w.WriteHeader(http.StatusOK)
	return autoSubmitForm.Execute(w, struct {
		Action  string
		Fields  []formField
		Nonce   string
		Message string
	}{action, fields, nonce, message})
}

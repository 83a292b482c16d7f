package caddyoidc

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"net/http"
	"net/http/httptest"
	"net/url"
	"regexp"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"

	"github.com/caddy-oidc/caddy-oidc/internal/testidp"
	"github.com/caddy-oidc/caddy-oidc/session"
)

// carrying returns a request for target carrying the cookies of from.
func carrying(method, target string, from *http.Request) *http.Request {
	r := request(method, target)
	if from != nil {
		for _, c := range from.Cookies() {
			r.AddCookie(c)
		}
	}
	return r
}

func frontchannel(t *testing.T, h *Handler, from *http.Request, iss, sid string) *httptest.ResponseRecorder {
	t.Helper()
	r := carrying("GET", "/oauth2/frontchannel_logout?"+url.Values{"iss": {iss}, "sid": {sid}}.Encode(), from)
	r.Header.Set("Sec-Fetch-Site", "cross-site")
	r.Header.Set("Sec-Fetch-Dest", "iframe")
	w := httptest.NewRecorder()
	if err := h.ServeHTTP(w, r, &recordNext{}); err != nil {
		t.Fatalf("front-channel logout: %v", err)
	}
	return w
}

// clearsSession reports whether w deletes the session cookie.
func clearsSession(w *httptest.ResponseRecorder) bool {
	for _, c := range w.Result().Cookies() {
		if c.Name == DefaultCookieName && c.MaxAge < 0 {
			return true
		}
	}
	return false
}

// TestAttackFrontchannelLogoutEndsOnlyTheMatchingSession: a bare GET of the
// front-channel URL (from any site, with the victim's sid or any other)
// ends nobody's session and stores nothing; only the browser whose own
// session has that iss and sid is logged out, and then every copy of its
// cookie is dead.
func TestAttackFrontchannelLogoutEndsOnlyTheMatchingSession(t *testing.T) {
	idp := testidp.New()
	defer idp.Close()
	for _, store := range []string{"cookie", "cache"} {
		t.Run(store, func(t *testing.T) {
			h := newTestHandler(t, idp, func(h *Handler) { h.Session.Store = store })
			rs := freshSet(t, h)
			victim := loggedIn(t, h, map[string]any{"sub": "victim", "sid": "victim-sid"}, nil)
			attacker := loggedIn(t, h, map[string]any{"sub": "attacker", "sid": "attacker-sid"}, nil)

			for name, tc := range map[string]struct {
				from     *http.Request
				iss, sid string
			}{
				"no cookie, the victim's sid":         {nil, idp.Issuer, "victim-sid"},
				"the attacker's cookie, victim's sid": {attacker, idp.Issuer, "victim-sid"},
				"the victim's cookie, another sid":    {victim, idp.Issuer, "attacker-sid"},
				"the victim's cookie, another iss":    {victim, "https://evil.example", "victim-sid"},
				"the victim's cookie, no sid":         {victim, idp.Issuer, ""},
			} {
				w := frontchannel(t, h, tc.from, tc.iss, tc.sid)
				if w.Code != http.StatusOK || clearsSession(w) {
					t.Errorf("%s: got %d, cookie cleared %v; want 200 and nothing done", name, w.Code, clearsSession(w))
				}
				if n := testRevCount(rs); n != 0 {
					t.Errorf("%s: %d revocations stored, want 0", name, n)
				}
			}
			assertStatus(t, h, victim, http.StatusOK)
			assertStatus(t, h, attacker, http.StatusOK)

			w := frontchannel(t, h, victim, idp.Issuer, "victim-sid")
			if w.Code != http.StatusOK || !clearsSession(w) {
				t.Fatalf("the IdP's front-channel call with the victim's cookie: %d, cookie cleared %v", w.Code, clearsSession(w))
			}
			if csp := w.Header().Get("Content-Security-Policy"); !strings.Contains(csp, "frame-ancestors "+idp.Issuer) {
				t.Errorf("CSP %q, want framing by the IdP only", csp)
			}
			// A copy of the cookie is dead too; the other user is not touched.
			assertStatus(t, h, victim, http.StatusUnauthorized)
			assertStatus(t, h, attacker, http.StatusOK)
			if n := testRevCount(rs); n != 1 {
				t.Errorf("%d revocations, want the session's own", n)
			}
		})
	}
}

// TestAttackFrontchannelFloodEvictsNoSession: 12,000 anonymous front-channel
// GETs (random sids, some 10 KB long) evict none of 50 cache-store sessions
// from the L1 and create no entry anywhere.
func TestAttackFrontchannelFloodEvictsNoSession(t *testing.T) {
	idp := testidp.New()
	defer idp.Close()
	h := newTestHandler(t, idp, func(h *Handler) { h.Session.Store = "cache" })
	rs := freshSet(t, h)
	sessions := make([]*http.Request, 50)
	for i := range sessions {
		sessions[i] = loggedIn(t, h, map[string]any{"sub": "user-" + hex.EncodeToString([]byte{byte(i)}), "sid": "sid"}, nil)
	}
	l1 := testL1(h)
	before, beforeBytes := l1.Len()
	long := strings.Repeat("s", 10_000)
	for i := range 12_000 {
		b := make([]byte, 16)
		rand.Read(b)
		sid := hex.EncodeToString(b)
		if i%100 == 0 {
			sid = long + sid
		}
		if w := frontchannel(t, h, nil, idp.Issuer, sid); w.Code != http.StatusOK {
			t.Fatalf("hostile GET %d: %d", i, w.Code)
		}
	}
	after, afterBytes := l1.Len()
	t.Logf("L1 before: %d entries, %d bytes; after 12,000 hostile GETs: %d entries, %d bytes; revocations: %d", before, beforeBytes, after, afterBytes, testRevCount(rs))
	if after != before || testRevCount(rs) != 0 {
		t.Errorf("the flood left %d L1 entries (was %d) and %d revocations, want no new entry", after, before, testRevCount(rs))
	}
	evicted := 0
	for _, r := range sessions {
		r = r.Clone(r.Context())
		r.Header.Set("Accept", "application/json")
		w := httptest.NewRecorder()
		if statusOf(h.ServeHTTP(w, r, &recordNext{}), w) != http.StatusOK {
			evicted++
		}
	}
	if evicted != 0 {
		t.Errorf("%d of 50 sessions lost after the flood", evicted)
	}
}

func logoutPOST(h *Handler, from *http.Request, hdr map[string]string) (*httptest.ResponseRecorder, error) {
	r := carrying("POST", "/oauth2/logout", from)
	for k, v := range hdr {
		r.Header.Set(k, v)
	}
	w := httptest.NewRecorder()
	return w, h.ServeHTTP(w, r, &recordNext{})
}

// TestAttackLogoutFromAnotherOrigin: a POST (or GET) to the logout path from
// another site, a sibling subdomain, an <img>, a prefetch, or a client that
// says nothing about where it comes from logs nobody out: it gets the
// confirmation form. Same-origin requests log out.
func TestAttackLogoutFromAnotherOrigin(t *testing.T) {
	idp := testidp.New()
	defer idp.Close()
	h := newTestHandler(t, idp, nil)
	freshSet(t, h)
	refused := []struct {
		name, method string
		hdr          map[string]string
	}{
		{"cross-site POST", "POST", map[string]string{"Sec-Fetch-Site": "cross-site", "Origin": "https://evil.example"}},
		{"sibling subdomain POST", "POST", map[string]string{"Sec-Fetch-Site": "same-site", "Origin": "http://evil.example.com"}},
		{"sibling subdomain POST, old browser", "POST", map[string]string{"Origin": "http://evil.example.com"}},
		{"other port POST", "POST", map[string]string{"Origin": "http://example.com:8080"}},
		{"Origin null", "POST", map[string]string{"Origin": "null"}},
		{"cross-origin Referer only", "POST", map[string]string{"Referer": "http://evil.example.com/page"}},
		{"no Origin, Referer nor Fetch Metadata", "POST", nil},
		{"same-origin <img>", "GET", map[string]string{"Sec-Fetch-Site": "same-origin", "Sec-Fetch-Mode": "no-cors", "Sec-Fetch-Dest": "image"}},
		{"prefetch", "GET", map[string]string{"Sec-Fetch-Site": "same-origin", "Sec-Fetch-Mode": "navigate", "Sec-Purpose": "prefetch"}},
		{"cross-site GET", "GET", map[string]string{"Sec-Fetch-Site": "cross-site", "Sec-Fetch-Mode": "navigate"}},
		{"HEAD", "HEAD", map[string]string{"Sec-Fetch-Site": "same-origin"}},
	}
	for _, tc := range refused {
		victim := loggedIn(t, h, map[string]any{"sub": "u"}, nil)
		r := carrying(tc.method, "/oauth2/logout", victim)
		for k, v := range tc.hdr {
			r.Header.Set(k, v)
		}
		w := httptest.NewRecorder()
		if err := h.ServeHTTP(w, r, &recordNext{}); err != nil {
			t.Fatal(err)
		}
		if clearsSession(w) || w.Header().Get("Location") != "" || (tc.method != "HEAD" && !strings.Contains(w.Body.String(), `method="post"`)) {
			t.Errorf("%s: got %d, Location %q, cookie cleared %v; want the confirmation form", tc.name, w.Code, w.Header().Get("Location"), clearsSession(w))
		}
		assertStatus(t, h, victim, http.StatusOK)
	}
	for name, hdr := range map[string]map[string]string{
		"Fetch Metadata same-origin":    {"Sec-Fetch-Site": "same-origin", "Origin": "http://example.com"},
		"Origin of this site":           {"Origin": "http://example.com"},
		"Referer of this site only":     {"Referer": "http://example.com/account"},
		"https Origin behind TLS proxy": {"Origin": "https://example.com"},
	} {
		victim := loggedIn(t, h, map[string]any{"sub": "u"}, nil)
		w, err := logoutPOST(h, victim, hdr)
		if err != nil || !clearsSession(w) {
			t.Errorf("%s: got %d (%v), cookie cleared %v; want a logout", name, w.Code, err, clearsSession(w))
		}
		assertStatus(t, h, victim, http.StatusUnauthorized)
	}
}

// TestAttackRPLogoutPutsNoIDTokenInAURL: the ID token goes to the IdP's
// end_session endpoint in a POST body, never in a Location header (which
// Caddy's access log records) or any other header.
func TestAttackRPLogoutPutsNoIDTokenInAURL(t *testing.T) {
	idp := testidp.New()
	defer idp.Close()
	h := newTestHandler(t, idp, func(h *Handler) { h.Logout.PostLogoutRedirectURI = "/bye" })
	freshSet(t, h)
	const idToken = "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJ1In0.c2lnbmF0dXJl"
	victim := loggedIn(t, h, map[string]any{"sub": "u"}, func(s *session.Session) { s.IDToken = idToken })
	w, err := logoutPOST(h, victim, map[string]string{"Origin": "http://example.com"})
	if err != nil {
		t.Fatal(err)
	}
	for name, vs := range w.Header() {
		for _, v := range vs {
			if strings.Contains(v, idToken) || strings.Contains(v, "eyJ") {
				t.Errorf("the ID token is in the %s header: %.80q", name, v)
			}
		}
	}
	body := w.Body.String()
	if w.Code != http.StatusOK || !strings.Contains(body, `<form method="post" action="`+idp.Issuer+`/logout">`) {
		t.Fatalf("logout: got %d, want a form posting to the end_session endpoint:\n%s", w.Code, body)
	}
	for _, field := range []string{
		`name="id_token_hint" value="` + idToken + `"`,
		`name="client_id" value="app"`,
		`name="post_logout_redirect_uri" value="http://example.com/bye"`,
		`<noscript>`, `<button type="submit">`,
	} {
		if !strings.Contains(body, field) {
			t.Errorf("the end-session form lacks %s", field)
		}
	}
	m := regexp.MustCompile(`script-src 'nonce-([A-Za-z0-9_-]{16,})'`).FindStringSubmatch(w.Header().Get("Content-Security-Policy"))
	if m == nil || !strings.Contains(body, `<script nonce="`+m[1]+`">`) {
		t.Errorf("the submitting script does not run under the CSP: %q", w.Header().Get("Content-Security-Policy"))
	}
	if !clearsSession(w) {
		t.Error("the session cookie was not cleared")
	}
}

// TestAttackRevocationSetIsBounded: ids over 255 bytes are refused
// everywhere (a logout token's too); past the cap, revocations from
// sessions and from Valkey are refused rather than evicting any, and those
// the IdP signed still have room; nothing already there is lost.
func TestAttackRevocationSetIsBounded(t *testing.T) {
	idp := testidp.New()
	defer idp.Close()
	h := newTestHandler(t, idp, nil)
	rs := freshSet(t, h)
	long := strings.Repeat("x", 256)
	w := postLogoutToken(t, h, url.Values{"logout_token": {idp.Sign(logoutClaims(idp, "long-sid", func(c map[string]any) { c["sid"] = long }))}}.Encode())
	if w.Code != http.StatusBadRequest || testRevCount(rs) != 0 {
		t.Errorf("a 256-byte sid: got %d, %d revocations; want 400 and none", w.Code, testRevCount(rs))
	}
	if err := rs.revoke(context.Background(), revokeSubject, idp.Issuer, long, time.Now(), time.Hour, fromIdP); err == nil || testRevCount(rs) != 0 {
		t.Errorf("a 256-byte sub was stored (%v)", err)
	}

	rs.soft, rs.hard = 100, 110
	for i := range 100 {
		if err := rs.revoke(context.Background(), revokeSession, idp.Issuer, "s"+string(rune('0'+i/10))+string(rune('0'+i%10)), time.Now(), time.Hour, fromSession); err != nil {
			t.Fatalf("revocation %d: %v", i, err)
		}
	}
	if err := rs.revoke(context.Background(), revokeSession, idp.Issuer, "one-too-many", time.Now(), time.Hour, fromSession); err == nil {
		t.Error("a session's revocation past the cap was stored")
	}
	for i := range 10 {
		if err := rs.revoke(context.Background(), revokeSID, idp.Issuer, "idp-"+string(rune('0'+i)), time.Now(), time.Hour, fromIdP); err != nil {
			t.Errorf("an IdP-signed revocation past the soft cap was refused: %v", err)
		}
	}
	if err := rs.revoke(context.Background(), revokeSID, idp.Issuer, "idp-full", time.Now(), time.Hour, fromIdP); err == nil {
		t.Error("an IdP-signed revocation past the hard cap was stored")
	}
	if n := testRevCount(rs); n != 110 {
		t.Errorf("%d revocations, want 110", n)
	}
	for i := range 100 {
		if _, ok := rs.get(revKey{revokeSession, idp.Issuer, "s" + string(rune('0'+i/10)) + string(rune('0'+i%10))}); !ok {
			t.Fatalf("revocation %d was evicted", i)
		}
	}
	// A later revocation of an id already there is an update, not a new entry.
	if err := rs.revoke(context.Background(), revokeSession, idp.Issuer, "s00", time.Now().Add(time.Second), time.Hour, fromSession); err != nil {
		t.Errorf("updating a revocation in a full set: %v", err)
	}
}

// TestAttackRevocationLivesAsLongAsTheLongestRoute: two routes of one
// issuer, sessions of 1 h and of 48 h. A logout received by the 1-hour
// route ends the 48-hour route's sessions for as long as they can live; a
// reload that raises a lifetime extends the revocations already made.
func TestAttackRevocationLivesAsLongAsTheLongestRoute(t *testing.T) {
	idp := testidp.New()
	defer idp.Close()
	short := newTestHandler(t, idp, func(h *Handler) { h.Session.Lifetime = caddy.Duration(time.Hour) })
	long := newTestHandler(t, idp, func(h *Handler) { h.Session.Lifetime = caddy.Duration(48 * time.Hour) })
	w := postLogoutToken(t, short, url.Values{"logout_token": {idp.Sign(logoutClaims(idp, "lifetime", func(c map[string]any) { c["sid"] = "long-sid" }))}}.Encode())
	if w.Code != http.StatusOK {
		t.Fatalf("back-channel logout: %d %s", w.Code, w.Body.String())
	}
	rv, ok := long.revs.get(revKey{revokeSID, idp.Issuer, "long-sid"})
	if !ok {
		t.Fatal("the revocation is not known to the other route")
	}
	if lives := time.Duration(rv.expires-rv.at) * time.Second; lives < 48*time.Hour {
		t.Errorf("the revocation lives %s, want at least the longest session lifetime (48h)", lives)
	}
	// A reload raises the long route's lifetime to 72 h.
	noteLifetime(idp.Issuer, 72*time.Hour)
	rv, _ = long.revs.get(revKey{revokeSID, idp.Issuer, "long-sid"})
	if lives := time.Duration(rv.expires-rv.at) * time.Second; lives < 72*time.Hour {
		t.Errorf("after a reload raising the lifetime, the revocation lives %s, want at least 72h", lives)
	}
}

// TestAttackReplayedLogoutCostsNothing: a copy of a logged-out cookie
// POSTed to the logout path again and again makes no call to the IdP, gets
// no ID token back, and stores nothing more.
func TestAttackReplayedLogoutCostsNothing(t *testing.T) {
	idp := testidp.New()
	defer idp.Close()
	idp.SetDiscovery("revocation_endpoint", idp.Issuer+"/revoke")
	var revokes atomic.Int64
	idp.OnRevoke(func(w http.ResponseWriter, r *http.Request) { revokes.Add(1) })
	h := newTestHandler(t, idp, nil)
	rs := freshSet(t, h)
	const idToken = "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJ1In0.cmVwbGF5"
	victim := loggedIn(t, h, map[string]any{"sub": "u"}, func(s *session.Session) { s.RefreshToken, s.IDToken = "rt", idToken })
	if w, err := logoutPOST(h, victim, map[string]string{"Origin": "http://example.com"}); err != nil || !strings.Contains(w.Body.String(), idToken) {
		t.Fatalf("first logout: %d %v", w.Code, err)
	}
	if revokes.Load() != 1 || testRevCount(rs) != 1 {
		t.Fatalf("first logout: %d refresh-token revocations at the IdP, %d revocations; want 1 and 1", revokes.Load(), testRevCount(rs))
	}
	for range 100 {
		w, err := logoutPOST(h, victim, map[string]string{"Origin": "http://example.com"})
		if err != nil || strings.Contains(w.Body.String(), idToken) || !clearsSession(w) {
			t.Fatalf("replayed logout: %d %v, ID token in the answer %v", w.Code, err, strings.Contains(w.Body.String(), idToken))
		}
	}
	if revokes.Load() != 1 || testRevCount(rs) != 1 {
		t.Errorf("100 replays: %d refresh-token revocations at the IdP, %d revocations; want 1 and 1", revokes.Load(), testRevCount(rs))
	}
}

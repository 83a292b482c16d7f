package caddyoidc

import (
	"context"
	"fmt"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"sync"
	"testing"
	"testing/synctest"
	"time"

	"github.com/valkey-io/valkey-go"

	"github.com/caddy-oidc/caddy-oidc/cache"
	"github.com/caddy-oidc/caddy-oidc/internal/redistest"
	"github.com/caddy-oidc/caddy-oidc/internal/testidp"
	"github.com/caddy-oidc/caddy-oidc/session"
)

// revPoll waits (bounded) for cond, checking it every 10 ms.
func revPoll(t testing.TB, d time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.After(d)
	tick := time.NewTicker(10 * time.Millisecond)
	defer tick.Stop()
	for !cond() {
		select {
		case <-deadline:
			t.Fatalf("%s: not within %s", what, d)
		case <-tick.C:
		}
	}
}

// advance moves a synctest bubble's fake clock on by d: the controllable
// clock of the timer tests (no real time passes).
func advance(d time.Duration) {
	<-time.After(d)
	synctest.Wait()
}

// persistentValkey keeps its data over Kill and Restart, as a production
// Valkey would.
var persistentValkey = []string{"--appendonly", "yes", "--appendfsync", "always"}

// newTestReplica is one replica's shared state in this process: its own L1,
// Valkey client and revocation set. (Replicas in one test process must not
// share the process's set, or nothing would have to travel through Valkey.)
func newTestReplica(t testing.TB, addr string) *App {
	t.Helper()
	set, err := newCacheSet(CacheConfig{Backend: "valkey", Address: []string{addr}, KeyPrefix: "caddy-oidc:",
		L1MaxBytes: 1 << 20, L1MaxEntries: 1000, Timeout: caddyDuration(300 * time.Millisecond)})
	if err != nil {
		t.Fatal(err)
	}
	testOwnRevocations(set)
	set.shared.Start()
	t.Cleanup(func() { _ = set.Destruct() })
	select {
	case <-set.shared.Connected():
	case <-time.After(10 * time.Second):
		t.Fatal("the replica never connected to valkey")
	}
	app := newTestApp(t)
	app.caches = set
	return app
}

// onReplica re-attaches a handler to a replica's app.
func onReplica(t testing.TB, h *Handler, app *App) *Handler {
	t.Helper()
	_ = h.Cleanup()
	if err := h.attach(app); err != nil {
		t.Fatal(err)
	}
	return h
}

func rawValkey(t testing.TB, addr string) valkey.Client {
	t.Helper()
	c, err := valkey.NewClient(valkey.ClientOption{InitAddress: []string{addr}, DisableCache: true})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(c.Close)
	return c
}

func revocationKeys(c valkey.Client, pattern string) []string {
	keys, _ := c.Do(context.Background(), c.B().Keys().Pattern("caddy-oidc:rev:"+pattern).Build()).AsStrSlice()
	return keys
}

// TestRevocationLandsWhateverHappensToTheRequest (16.4a, 17.5): a logout
// whose request is dropped, or made while Valkey is down and the L1 churns,
// still reaches the other replicas (retried in the background with a
// context of its own, never evicted while unwritten); and after Valkey
// restarts empty, the replicas write back every revocation it lost.
func TestRevocationLandsWhateverHappensToTheRequest(t *testing.T) {
	srv := redistest.Start(t)
	a, b := newTestReplica(t, srv.Addr), newTestReplica(t, srv.Addr)
	ra, rb := a.caches.revs, b.caches.revs
	const iss = "https://idp.example/lands"
	// What a route of iss registers (its session secret's revocation key).
	for _, rs := range []*revocations{ra, rb} {
		rs.noteMACKeys(iss, [][]byte{[]byte("test-revocation-key-0123456789abcdef")})
	}
	known := func(rs *revocations, id string) func() bool {
		return func() bool { _, ok := rs.get(revKey{revokeSID, iss, id}); return ok }
	}

	// The request that logs out is gone before the write (client closed it).
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if err := ra.revoke(ctx, revokeSID, iss, "dropped", time.Now(), time.Hour, fromIdP); err != nil {
		t.Fatal(err)
	}
	revPoll(t, 5*time.Second, "replica b learns the logout of a dropped request, Valkey up all along", known(rb, "dropped"))

	// Valkey is down when the logout happens, and replica a's L1 churns.
	srv.Kill()
	if err := ra.revoke(context.Background(), revokeSID, iss, "outage", time.Now(), time.Hour, fromIdP); err != nil {
		t.Fatal(err)
	}
	for i := range 5000 {
		_ = a.caches.l1.Set(context.Background(), cache.SessionKey("route", strings.Repeat("k", 10)+string(rune(i))), make([]byte, 400), time.Hour)
	}
	srv.Restart() // empty: not persistent
	revPoll(t, 20*time.Second, "replica b learns the logout made during the outage", known(rb, "outage"))

	// Valkey came back empty: both revocations are written back to it, so a
	// replica started now learns them.
	c := newTestReplica(t, srv.Addr)
	c.caches.revs.noteMACKeys(iss, [][]byte{[]byte("test-revocation-key-0123456789abcdef")})
	revPoll(t, 20*time.Second, "a new replica learns both revocations from the restarted Valkey", func() bool {
		return known(c.caches.revs, "dropped")() && known(c.caches.revs, "outage")()
	})
	raw := rawValkey(t, srv.Addr)
	ttl, err := raw.Do(context.Background(), raw.B().Pttl().Key("caddy-oidc:rev:sid:"+iss+"|outage").Build()).AsInt64()
	if err != nil || time.Duration(ttl)*time.Millisecond < 59*time.Minute {
		t.Errorf("the revocation's TTL in Valkey is %dms (%v), want about its lifetime", ttl, err)
	}
}

// TestAttackRPLogoutWhileTheStoreCannotReadTheSession (16.4b): Valkey is
// down and this replica does not have the cache-store session in its L1.
// Logout still clears the cookie, revokes the session by the id in the
// cookie, and sends the user to the IdP's end_session; once Valkey is back
// the old cookie is refused on every replica.
func TestAttackRPLogoutWhileTheStoreCannotReadTheSession(t *testing.T) {
	idp := testidp.New()
	defer idp.Close()
	srv := redistest.Start(t, persistentValkey...)
	a, b := newTestReplica(t, srv.Addr), newTestReplica(t, srv.Addr)
	ha := onReplica(t, newTestHandler(t, idp, func(h *Handler) { h.Session.Store = "cache" }), a)
	hb := onReplica(t, newTestHandler(t, idp, func(h *Handler) { h.Session.Store = "cache" }), b)
	victim := loggedIn(t, ha, map[string]any{"sub": "u", "sid": "s"}, nil)
	assertStatus(t, hb, victim, http.StatusOK)
	// Replica b has not seen the session lately: it is not in b's L1.
	id, ok := hb.sessions.CacheID(victim)
	if !ok {
		t.Fatal("no cache-store session id in the cookie")
	}
	_ = b.caches.l1.Delete(context.Background(), session.Key(hb.ns, id))

	srv.Kill()
	w, err := logoutPOST(hb, victim, map[string]string{"Origin": "http://example.com"})
	if err != nil || !clearsSession(w) {
		t.Fatalf("logout while the store is down: %d (%v), cookie cleared %v", w.Code, err, clearsSession(w))
	}
	if !strings.Contains(w.Body.String(), `action="`+idp.Issuer+`/logout"`) || !strings.Contains(w.Body.String(), `name="client_id" value="app"`) {
		t.Errorf("logout while the store is down does not go to the IdP's end_session:\n%s", w.Body.String())
	}
	srv.Restart()
	revPoll(t, 20*time.Second, "the old cookie is refused on replica b", func() bool { return revAPIStatus(hb, victim) == http.StatusUnauthorized })
	revPoll(t, 20*time.Second, "the old cookie is refused on replica a", func() bool { return revAPIStatus(ha, victim) == http.StatusUnauthorized })
}

func revAPIStatus(h *Handler, r *http.Request) int {
	r = r.Clone(r.Context())
	r.Header.Set("Accept", "application/json")
	w := httptest.NewRecorder()
	return statusOf(h.ServeHTTP(w, r, &recordNext{}), w)
}

// TestAttackBackchannelLogoutWhileValkeyIsDown (16.4c): the replay check
// cannot run, yet the logout is recorded (here at once, on the other
// replicas when Valkey is back) and answered 200; a replayed token only
// logs out again.
func TestAttackBackchannelLogoutWhileValkeyIsDown(t *testing.T) {
	idp := testidp.New()
	defer idp.Close()
	srv := redistest.Start(t)
	a, b := newTestReplica(t, srv.Addr), newTestReplica(t, srv.Addr)
	ha := onReplica(t, newTestHandler(t, idp, nil), a)
	hb := onReplica(t, newTestHandler(t, idp, nil), b)
	victim := loggedIn(t, ha, map[string]any{"sub": "victim", "sid": "bc-down"}, nil)
	bystander := loggedIn(t, ha, map[string]any{"sub": "bystander", "sid": "other"}, nil)

	srv.Kill()
	tok := url.Values{"logout_token": {idp.Sign(logoutClaims(idp, "while-down", func(c map[string]any) { c["sid"] = "bc-down" }))}}.Encode()
	if w := postLogoutToken(t, ha, tok); w.Code != http.StatusOK {
		t.Fatalf("back-channel logout while Valkey is down: %d %s, want 200", w.Code, w.Body.String())
	}
	assertStatus(t, ha, victim, http.StatusUnauthorized)
	if w := postLogoutToken(t, ha, tok); w.Code >= 500 {
		t.Errorf("a replay while Valkey is down: %d", w.Code)
	}
	srv.Restart()
	revPoll(t, 20*time.Second, "replica b refuses the logged-out session", func() bool { return revAPIStatus(hb, victim) == http.StatusUnauthorized })
	assertStatus(t, hb, bystander, http.StatusOK)
	if w := postLogoutToken(t, hb, tok); w.Code >= 500 {
		t.Errorf("a replay once Valkey is back: %d", w.Code)
	}
	assertStatus(t, hb, bystander, http.StatusOK)
}

// TestAttackRevocationsOutliveEveryCacheConfig (17.2, 17.4): the revocation
// set belongs to the process. A reload to a new Valkey, and then to memory
// only, keeps every logout in force at once, and the new Valkey is seeded
// with the revocations it lacks.
func TestAttackRevocationsOutliveEveryCacheConfig(t *testing.T) {
	idp := testidp.New()
	defer idp.Close()
	srv1, srv2 := redistest.Start(t), redistest.Start(t)
	cfg := func(addr string) CacheConfig {
		return CacheConfig{Backend: "valkey", Address: []string{addr}, KeyPrefix: "caddy-oidc:", L1MaxBytes: 1 << 20, L1MaxEntries: 1000}
	}
	set1, _ := newCacheSet(cfg(srv1.Addr))
	set1.shared.Start()
	app1 := newTestApp(t)
	app1.caches = set1
	h1 := onReplica(t, newTestHandler(t, idp, nil), app1)
	victim := loggedIn(t, h1, map[string]any{"sub": "u", "sid": "reload"}, nil)
	if w, err := logoutPOST(h1, victim, map[string]string{"Origin": "http://example.com"}); err != nil || !clearsSession(w) {
		t.Fatalf("logout: %d %v", w.Code, err)
	}
	assertStatus(t, h1, victim, http.StatusUnauthorized)

	// Reload: another Valkey (and so another cache set).
	set2, _ := newCacheSet(cfg(srv2.Addr))
	set2.shared.Start()
	_ = set1.Destruct()
	app2 := newTestApp(t)
	app2.caches = set2
	h2 := onReplica(t, newTestHandler(t, idp, nil), app2)
	assertStatus(t, h2, victim, http.StatusUnauthorized)
	raw := rawValkey(t, srv2.Addr)
	revPoll(t, 20*time.Second, "the new Valkey is seeded with the revocation", func() bool {
		return len(revocationKeys(raw, "one:"+idp.Issuer+"|*")) == 1
	})

	// Reload: memory only.
	set3, _ := newCacheSet(CacheConfig{Backend: "memory", L1MaxBytes: 1 << 20, L1MaxEntries: 1000})
	_ = set2.Destruct()
	app3 := newTestApp(t)
	app3.caches = set3
	h3 := onReplica(t, newTestHandler(t, idp, nil), app3)
	assertStatus(t, h3, victim, http.StatusUnauthorized)
	_ = set3.Destruct()
}

// TestRevocationsArePrunedOnATimer: expired revocations leave the set on a
// timer, with every backend: memory alone (no Valkey stream to trigger
// anything), and Valkey while it cannot be reached.
func TestRevocationsArePrunedOnATimer(t *testing.T) {
	backends := map[string]func() cache.Shared{
		"memory": func() cache.Shared {
			return cache.NewLocal(cache.NewMemory(1<<20, 1000, nil), cache.NewMemory(1<<20, 1000, nil))
		},
		"valkey unreachable": func() cache.Shared {
			// Never started: every call fails as during an outage.
			return cache.NewHybrid(cache.NewMemory(1<<20, 1000, nil), cache.ValkeyOptions{Addresses: []string{"127.0.0.1:1"}}, nil, nil)
		},
	}
	for name, backend := range backends {
		t.Run(name, func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				sh := backend()
				defer sh.Close()
				rs := newRevocations()
				rs.attach(sh)
				const iss = "https://idp.example/prune"
				rs.noteMACKeys(iss, [][]byte{[]byte("test-revocation-key-0123456789abcdef")})
				for _, id := range []string{"a", "b", "c"} {
					if err := rs.revoke(context.Background(), revokeSID, iss, id, time.Now(), 10*time.Minute, fromIdP); err != nil {
						t.Fatal(err)
					}
				}
				advance(5 * time.Minute)
				if n := rs.len(); n != 3 {
					t.Errorf("%d revocations after 5 minutes, want all 3", n)
				}
				// Lifetime (10m) plus the margin for clock skew (1m), plus one timer tick.
				advance(6*time.Minute + revocationPruneEvery)
				if n := rs.len(); n != 0 {
					t.Errorf("%d revocations after they expired, want 0", n)
				}
				rs.detach(sh)
			})
		})
	}
}

// testClock is a clock a test moves by hand.
type testClock struct {
	mu sync.Mutex
	t  time.Time
}

func newTestClock(t time.Time) *testClock { return &testClock{t: t} }

func (c *testClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *testClock) Advance(d time.Duration) {
	c.mu.Lock()
	c.t = c.t.Add(d)
	c.mu.Unlock()
}

// TestRevocationsTakeOneCodePathInMemory: two revocation sets on one memory
// backend behave as two replicas on one Valkey: a logout on one reaches the
// other, and a set that attaches later reads what the backend holds.
func TestRevocationsTakeOneCodePathInMemory(t *testing.T) {
	local := cache.NewLocal(cache.NewMemory(1<<20, 1000, nil), cache.NewMemory(1<<20, 1000, nil))
	const iss = "https://idp.example/one-path"
	key := [][]byte{[]byte("test-revocation-key-0123456789abcdef")}
	a, b := newRevocations(), newRevocations()
	for _, rs := range []*revocations{a, b} {
		rs.noteMACKeys(iss, key)
		rs.attach(local)
		defer rs.detach(local)
	}
	if err := a.revoke(context.Background(), revokeSubject, iss, "u", time.Now(), time.Hour, fromIdP); err != nil {
		t.Fatal(err)
	}
	if _, ok := b.get(revKey{revokeSubject, iss, "u"}); !ok {
		t.Error("the other set did not learn the logout from the memory backend")
	}
	late := newRevocations()
	late.noteMACKeys(iss, key)
	late.attach(local)
	defer late.detach(local)
	if _, ok := late.get(revKey{revokeSubject, iss, "u"}); !ok || !late.ready() {
		t.Error("a set attached later did not read the memory backend")
	}
}

// TestRevocationSetReadyOnceValkeyWasRead: a process that just started with
// Valkey does not know the other replicas' logouts until it has read them;
// ready says when it does (memory alone is always ready).
func TestRevocationSetReadyOnceValkeyWasRead(t *testing.T) {
	mem := newRevocations()
	local := cache.NewLocal(cache.NewMemory(1<<20, 1000, nil), cache.NewMemory(1<<20, 1000, nil))
	mem.attach(local)
	defer mem.detach(local)
	if !mem.ready() {
		t.Error("a memory-only set is not ready")
	}
	srv := redistest.Start(t)
	srv.Kill()
	set, err := newCacheSet(CacheConfig{Backend: "valkey", Address: []string{srv.Addr}, KeyPrefix: "caddy-oidc:", L1MaxBytes: 1 << 20, L1MaxEntries: 1000})
	if err != nil {
		t.Fatal(err)
	}
	testOwnRevocations(set)
	defer set.Destruct()
	set.shared.Start()
	if set.revs.ready() {
		t.Error("ready before Valkey was ever read")
	}
	srv.Restart()
	revPoll(t, 20*time.Second, "ready once Valkey is read", set.revs.ready)
}

// Review M1: whoever can write to Valkey cannot log a user out (or fill the
// set): a revocation not sealed with a session secret of its issuer's
// routes is ignored; one written by a replica of the same routes lands.
func TestAttackForgedRevocationInValkey(t *testing.T) {
	srv := redistest.Start(t)
	idp := testidp.New()
	defer idp.Close()
	a, b := newTestReplica(t, srv.Addr), newTestReplica(t, srv.Addr)
	ha := onReplica(t, newTestHandler(t, idp, nil), a)
	hb := onReplica(t, newTestHandler(t, idp, nil), b)
	raw := rawValkey(t, srv.Addr)
	ctx := context.Background()
	now := time.Now().Unix()
	for _, v := range []string{fmt.Sprintf("%d %d", now+60, now+3600), fmt.Sprintf("%d %d AAAA", now+60, now+3600)} {
		key := "rev:sub:" + idp.Issuer + "|victim"
		_ = raw.Do(ctx, raw.B().Set().Key("caddy-oidc:"+key).Value(v).Build()).Error()
		_ = raw.Do(ctx, raw.B().Publish().Channel("caddy-oidc:invalidate").Message("forger|"+key).Build()).Error()
	}
	// A genuine logout on b, announced after the forgeries.
	if err := hb.revs.revoke(ctx, revokeSubject, idp.Issuer, "marker", time.Now(), time.Hour, fromIdP); err != nil {
		t.Fatal(err)
	}
	revPoll(t, 10*time.Second, "replica a learns the genuine logout", func() bool {
		_, ok := ha.revs.get(revKey{revokeSubject, idp.Issuer, "marker"})
		return ok
	})
	a.caches.revs.resyncAll()
	revPoll(t, 10*time.Second, "replica a re-reads Valkey", func() bool { return a.caches.revs.ready() })
	if _, ok := ha.revs.get(revKey{revokeSubject, idp.Issuer, "victim"}); ok {
		t.Fatal("a forged revocation written straight into Valkey was taken")
	}
	r := loggedIn(t, ha, map[string]any{"sub": "victim"}, func(s *session.Session) { s.Created = now - 10 })
	if code, _, _ := serve(ha, withCookies(r, "/x")); code != 200 {
		t.Errorf("the victim's session after the forgery: %d, want 200", code)
	}
}

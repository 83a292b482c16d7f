package session

import (
	"context"
	"net/http"
	"net/http/httptest"
	"testing"
	"time"

	"github.com/caddy-oidc/caddy-oidc/cache"
)

// A replica whose own copy of a cache-kept session predates another
// replica's write (the invalidation has not arrived yet) reads the shared
// tier before refusing: the newer value there is served; with none newer,
// the answer is unknown (503), never the older session.
func TestCachedSessionOlderThanItsCookie(t *testing.T) {
	codec, err := NewCodec("store-test-session-secret-0123456789abcdef")
	if err != nil {
		t.Fatal(err)
	}
	local := cache.NewMemory(1<<20, 1000, nil)
	valkey := cache.NewMemory(1<<20, 1000, nil) // stands for the shared tier
	cfg := StoreConfig{Codec: codec, Binding: "route\x00", Namespace: "ns", CookieName: "s",
		Secure: func(*http.Request) bool { return false }, Lifetime: time.Hour, Shared: local}
	writer := NewCacheStore(StoreConfig{Codec: codec, Binding: "route\x00", Namespace: "ns", CookieName: "s",
		Secure: func(*http.Request) bool { return false }, Lifetime: time.Hour, Shared: valkey})
	now := time.Now()
	sess := New(map[string]any{"sub": "u1", "groups": []any{"admins"}}, "", "", "", time.Time{}, now)
	w1 := httptest.NewRecorder()
	if err := writer.Save(w1, httptest.NewRequest("GET", "/", nil), sess, now); err != nil {
		t.Fatal(err)
	}
	key := Key("ns", sess.ID)
	v1, _, _ := valkey.Get(context.Background(), key)
	_ = local.Set(context.Background(), key, v1, time.Hour) // this replica's copy: version 1
	sess.Claims = map[string]any{"sub": "u1", "groups": []any{"staff"}}
	w2 := httptest.NewRecorder()
	if err := writer.Save(w2, httptest.NewRequest("GET", "/", nil), sess, now); err != nil {
		t.Fatal(err)
	}
	withCookie := func() *http.Request {
		r := httptest.NewRequest("GET", "/", nil)
		for _, c := range w2.Result().Cookies() {
			r.AddCookie(c)
		}
		return r
	}
	if l := NewCacheStore(cfg).Load(withCookie(), now); l.Refusal != Unavailable {
		t.Errorf("without the shared tier to ask: %v, want %v", l.Refusal, Unavailable)
	}
	cfg.Fresh = valkey.Get
	l := NewCacheStore(cfg).Load(withCookie(), now)
	if !l.Usable() || l.Session.Claims["groups"].([]any)[0] != "staff" {
		t.Errorf("the newer value in the shared tier: %v %v, want it served", l.Refusal, l.Session)
	}
}

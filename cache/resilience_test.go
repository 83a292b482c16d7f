package cache

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/valkey-io/valkey-go"

	"github.com/caddy-oidc/caddy-oidc/internal/redistest"
)

// aclServer is a Valkey whose user "caddy" the test can deny commands to
// (ACL SETUSER caddy -get): the data path fails while the connection and
// the invalidation stream stay up, as when a cluster master of some keys is
// down or a proxy has failed over only part of the way.
func aclServer(t *testing.T) *redistest.Server {
	t.Helper()
	return redistest.Start(t, "--user", "caddy", "on", ">caddy-pass", "~*", "&*", "+@all")
}

func acl(t *testing.T, srv *redistest.Server, rules ...string) {
	t.Helper()
	if out, err := redistest.CLI(srv.Addr, append([]string{"ACL", "SETUSER", "caddy"}, rules...)...); err != nil || !strings.Contains(out, "OK") {
		t.Fatalf("ACL SETUSER caddy %v: %v %s", rules, err, out)
	}
}

// newACLHybrid connects as user caddy, with a fresh key prefix unless one is given.
func newACLHybrid(t *testing.T, srv *redistest.Server, l1 *Memory, prefix ...string) *Hybrid {
	t.Helper()
	p := testPrefix()
	if len(prefix) > 0 {
		p = prefix[0]
	}
	h := NewHybrid(l1, ValkeyOptions{Addresses: []string{srv.Addr}, Username: "caddy", Password: "caddy-pass", KeyPrefix: p}, l1.stats, nil)
	t.Cleanup(h.Close)
	h.Start()
	select {
	case <-h.Connected():
	case <-time.After(10 * time.Second):
		t.Fatal("never connected to valkey")
	}
	return h
}

// resubscribe kills the server's pub/sub connections and waits until h has
// noticed and subscribed again.
func resubscribe(t *testing.T, h *Hybrid, addr string) {
	t.Helper()
	losses := h.stats.StreamLosses.Load()
	if _, err := redistest.CLI(addr, "CLIENT", "KILL", "TYPE", "pubsub"); err != nil {
		t.Fatal(err)
	}
	waitFor(t, func() bool { return h.stats.StreamLosses.Load() > losses && h.Healthy() })
}

func rawClient(t *testing.T, addrs ...string) valkey.Client {
	t.Helper()
	c, err := valkey.NewClient(valkey.ClientOption{InitAddress: addrs, DisableCache: true})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(c.Close)
	return c
}

// Issue 15 item 1: a re-established invalidation stream must not take away
// what L1 holds while Valkey cannot answer for it.
func TestHybridResubscribeKeepsL1WhenL2CannotAnswer(t *testing.T) {
	srv := aclServer(t)
	h := newACLHybrid(t, srv, NewMemory(1<<20, 1000, nil))
	ctx := context.Background()
	if err := h.Set(ctx, "sess:warm", []byte("v1"), time.Minute); err != nil {
		t.Fatal(err)
	}
	acl(t, srv, "-get") // reads fail from now on, the stream is fine
	resubscribe(t, h, srv.Addr)
	for i := range 3 {
		if v, ok, err := h.Get(ctx, "sess:warm"); err != nil || !ok || string(v) != "v1" {
			t.Fatalf("read %d of a warm entry after the stream came back, Valkey unable to answer: %q %v %v, want v1 from L1", i, v, ok, err)
		}
	}
	// What L1 never held is unknown, not missing.
	if _, _, err := h.Get(ctx, "sess:cold"); !errors.Is(err, ErrUnavailable) {
		t.Errorf("cold entry: got %v, want ErrUnavailable", err)
	}
	// Once Valkey answers again, the unverified entry takes Valkey's value
	// (changed here behind the cache's back, as by a missed invalidation).
	acl(t, srv, "+get")
	raw := rawClient(t, srv.Addr)
	if err := raw.Do(ctx, raw.B().Set().Key(h.opts.KeyPrefix+"sess:warm").Value("v2").Build()).Error(); err != nil {
		t.Fatal(err)
	}
	waitFor(t, func() bool { v, _, _ := h.Get(ctx, "sess:warm"); return string(v) == "v2" })
}

// After the stream is back, L1 entries that may have missed an
// invalidation are checked against Valkey: a changed value is taken, a
// deleted one is gone, an unchanged one is kept, and a value written during
// the outage is not overwritten by Valkey's older one.
func TestHybridResubscribeVerifiesAgainstL2(t *testing.T) {
	srv := aclServer(t)
	h := newACLHybrid(t, srv, NewMemory(1<<20, 1000, nil))
	ctx := context.Background()
	for _, k := range []string{"sess:changed", "sess:deleted", "sess:same", "sess:mine"} {
		if err := h.Set(ctx, k, []byte("old"), time.Minute); err != nil {
			t.Fatal(err)
		}
	}
	raw := rawClient(t, srv.Addr)
	p := h.opts.KeyPrefix
	raw.Do(ctx, raw.B().Set().Key(p+"sess:changed").Value("new").Build())
	raw.Do(ctx, raw.B().Del().Key(p+"sess:deleted").Build())
	acl(t, srv, "-set")
	if err := h.Set(ctx, "sess:mine", []byte("written-during-outage"), time.Minute); !errors.Is(err, ErrUnavailable) {
		t.Fatalf("write with SET denied: %v", err)
	}
	resubscribe(t, h, srv.Addr)
	for k, want := range map[string]string{"sess:changed": "new", "sess:same": "old", "sess:mine": "written-during-outage"} {
		if v, ok, err := h.Get(ctx, k); err != nil || !ok || string(v) != want {
			t.Errorf("%s after the stream came back: %q %v %v, want %q", k, v, ok, err, want)
		}
	}
	if _, ok, err := h.Get(ctx, "sess:deleted"); ok || err != nil {
		t.Errorf("sess:deleted after the stream came back: found %v err %v, want a miss", ok, err)
	}
}

// Issue 17 item 5 / 16 item 4a: a write that failed while the connection
// is up is written back in the background, without waiting for a
// reconnection.
func TestHybridDirtyRetriedWhileConnected(t *testing.T) {
	srv := aclServer(t)
	h := newACLHybrid(t, srv, NewMemory(1<<20, 1000, nil))
	ctx := context.Background()
	acl(t, srv, "-set")
	if err := h.Set(ctx, "rev:x", []byte("logout"), time.Minute); !errors.Is(err, ErrUnavailable) {
		t.Fatalf("write with SET denied: got %v, want ErrUnavailable", err)
	}
	if v, ok, _ := h.Get(ctx, "rev:x"); !ok || string(v) != "logout" {
		t.Fatal("the failed write is not readable here")
	}
	acl(t, srv, "+set")
	raw := rawClient(t, srv.Addr)
	waitFor(t, func() bool {
		v, err := raw.Do(ctx, raw.B().Get().Key(h.opts.KeyPrefix+"rev:x").Build()).ToString()
		return err == nil && v == "logout"
	})
	if !h.Healthy() || h.stats.StreamLosses.Load() != 0 {
		t.Error("the stream dropped: this test is about write-back while connected")
	}
}

// A value not yet written back is never evicted by the L1 bound: it is
// still served and still reaches Valkey.
func TestHybridDirtyNotEvictedByL1Bound(t *testing.T) {
	srv := aclServer(t)
	l1 := NewMemory(1<<20, 32, nil) // 2 entries per shard
	h := newACLHybrid(t, srv, l1)
	ctx := context.Background()
	acl(t, srv, "-set")
	_ = h.Set(ctx, "sess:dirty", []byte("unwritten"), time.Minute)
	for i := range 500 {
		_ = l1.Set(ctx, fmt.Sprintf("sess:filler-%d", i), []byte("x"), time.Minute)
	}
	if v, ok, err := h.Get(ctx, "sess:dirty"); err != nil || !ok || string(v) != "unwritten" {
		t.Errorf("the unwritten value after L1 filled up: %q %v %v", v, ok, err)
	}
	acl(t, srv, "+set")
	raw := rawClient(t, srv.Addr)
	waitFor(t, func() bool {
		v, err := raw.Do(ctx, raw.B().Get().Key(h.opts.KeyPrefix+"sess:dirty").Build()).ToString()
		return err == nil && v == "unwritten"
	})
}

// Close writes back what is still unwritten (bounded), instead of dropping it.
func TestHybridCloseWritesBack(t *testing.T) {
	srv := aclServer(t)
	l1 := NewMemory(1<<20, 1000, nil)
	h := NewHybrid(l1, ValkeyOptions{Addresses: []string{srv.Addr}, Username: "caddy", Password: "caddy-pass", KeyPrefix: testPrefix()}, l1.stats, nil)
	h.Start()
	<-h.Connected()
	ctx := context.Background()
	acl(t, srv, "-set")
	for i := range 20 {
		_ = h.Set(ctx, fmt.Sprintf("rev:%d", i), []byte("logout"), time.Minute)
	}
	acl(t, srv, "+set")
	start := time.Now()
	h.Close()
	if d := time.Since(start); d > 3*time.Second {
		t.Errorf("Close took %s", d)
	}
	raw := rawClient(t, srv.Addr)
	n, err := raw.Do(ctx, raw.B().Exists().Key(func() []string {
		var ks []string
		for i := range 20 {
			ks = append(ks, fmt.Sprintf("%srev:%d", h.opts.KeyPrefix, i))
		}
		return ks
	}()...).Build()).AsInt64()
	if err != nil || n != 20 {
		t.Errorf("after Close, %d of 20 unwritten values are in Valkey (%v)", n, err)
	}
}

// Close is bounded even when Valkey cannot take the values.
func TestHybridCloseIsBoundedWhileValkeyIsDown(t *testing.T) {
	srv := aclServer(t)
	l1 := NewMemory(1<<20, 1000, nil)
	h := NewHybrid(l1, ValkeyOptions{Addresses: []string{srv.Addr}, Username: "caddy", Password: "caddy-pass", KeyPrefix: testPrefix()}, l1.stats, nil)
	h.Start()
	<-h.Connected()
	acl(t, srv, "-set")
	for i := range 50 {
		_ = h.Set(context.Background(), fmt.Sprintf("sess:%d", i), []byte("v"), time.Minute)
	}
	srv.Kill()
	start := time.Now()
	h.Close()
	if d := time.Since(start); d > 3*time.Second {
		t.Errorf("Close took %s with Valkey down", d)
	}
}

// A write is not abandoned because the request that made it went away (a
// client dropping its logout request).
func TestHybridSetOutlivesRequestContext(t *testing.T) {
	srv := aclServer(t)
	h := newACLHybrid(t, srv, NewMemory(1<<20, 1000, nil))
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if err := h.Set(ctx, "rev:y", []byte("logout"), time.Minute); err != nil {
		t.Errorf("Set with a cancelled request context: %v", err)
	}
	raw := rawClient(t, srv.Addr)
	if v, err := raw.Do(context.Background(), raw.B().Get().Key(h.opts.KeyPrefix+"rev:y").Build()).ToString(); err != nil || v != "logout" {
		t.Errorf("Valkey holds %q (%v), want the value at once", v, err)
	}
}

package cache

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"testing"
	"time"

	"github.com/valkey-io/valkey-go"
	"go.uber.org/goleak"

	"github.com/caddy-oidc/caddy-oidc/internal/redistest"
)

func testPrefix() string {
	b := make([]byte, 6)
	rand.Read(b)
	return "caddy-oidc-test-" + hex.EncodeToString(b) + ":"
}

func newHybrid(t testing.TB, addr, prefix string) *Hybrid {
	t.Helper()
	h := NewHybrid(NewMemory(8<<20, 10000, nil), ValkeyOptions{Addresses: []string{addr}, KeyPrefix: prefix}, new(Stats), nil)
	t.Cleanup(h.Close)
	h.Start()
	select {
	case <-h.Connected():
	case <-time.After(10 * time.Second):
		t.Fatal("never connected to valkey")
	}
	return h
}

func TestHybridSharesAndInvalidatesAcrossReplicas(t *testing.T) {
	// Registered first, so it runs after the hybrids' own cleanups.
	ignore := goleak.IgnoreCurrent()
	t.Cleanup(func() { goleak.VerifyNone(t, ignore) })
	addr := redistest.Shared(t)
	prefix := testPrefix()
	a, b := newHybrid(t, addr, prefix), newHybrid(t, addr, prefix)
	ctx := context.Background()

	if err := a.Set(ctx, "sess:x", []byte("v1"), time.Minute); err != nil {
		t.Fatal(err)
	}
	// A read that races with an invalidation of its key is not kept in L1
	// (it could be older than the change announced): let a's announcement
	// arrive first, so b's first read is kept.
	waitFor(t, func() bool { return b.stats.Invalidations.Load() == 1 })
	if v, ok, err := b.Get(ctx, "sess:x"); err != nil || !ok || string(v) != "v1" {
		t.Fatalf("replica b reads %q %v %v, want v1 from valkey", v, ok, err)
	}
	if b.stats.Hits(NSSession, "l2") != 1 {
		t.Error("the first read on b was not an L2 hit")
	}
	if v, _, _ := b.Get(ctx, "sess:x"); string(v) != "v1" || b.stats.Hits(NSSession, "l1") != 1 {
		t.Error("the second read on b was not an L1 hit")
	}
	// a changes it: b's L1 copy is invalidated.
	if err := a.Set(ctx, "sess:x", []byte("v2"), time.Minute); err != nil {
		t.Fatal(err)
	}
	waitFor(t, func() bool { v, _, _ := b.Get(ctx, "sess:x"); return string(v) == "v2" })
	if err := a.Delete(ctx, "sess:x"); err != nil {
		t.Fatal(err)
	}
	waitFor(t, func() bool { _, ok, _ := b.Get(ctx, "sess:x"); return !ok })
	// The TTL reaches Valkey.
	if err := a.Set(ctx, "sess:ttl", []byte("v"), 1500*time.Millisecond); err != nil {
		t.Fatal(err)
	}
	c, _ := valkey.NewClient(valkey.ClientOption{InitAddress: []string{addr}, DisableCache: true})
	defer c.Close()
	if ms, _ := c.Do(ctx, c.B().Pttl().Key(prefix+"sess:ttl").Build()).AsInt64(); ms <= 0 || ms > 1500 {
		t.Errorf("PTTL %d ms, want within (0, 1500]", ms)
	}
}

// waitFor polls cond (bounded) for what real servers do in their own time.
func waitFor(t *testing.T, cond func() bool) {
	t.Helper()
	if !redistest.Poll(5*time.Second, cond) {
		t.Fatal("condition not met within 5s")
	}
}

func TestHybridSurvivesValkeyOutage(t *testing.T) {
	srv := redistest.Start(t)
	h := newHybrid(t, srv.Addr, testPrefix())
	ctx := context.Background()
	if err := h.Set(ctx, "sess:kept", []byte("in-l1"), time.Minute); err != nil {
		t.Fatal(err)
	}

	srv.Kill()
	waitFor(t, func() bool { return !h.Healthy() })
	// What L1 holds is still served; what it does not is unknown, not missing.
	if v, ok, err := h.Get(ctx, "sess:kept"); err != nil || !ok || string(v) != "in-l1" {
		t.Errorf("L1 entry during the outage: %q %v %v", v, ok, err)
	}
	start := time.Now()
	if _, _, err := h.Get(ctx, "sess:other"); !errors.Is(err, ErrUnavailable) {
		t.Errorf("L1 miss during the outage: got %v, want ErrUnavailable", err)
	}
	if d := time.Since(start); d > 2*time.Second {
		t.Errorf("a read during the outage took %s", d)
	}
	// A write during the outage stays in L1 and is written back.
	if err := h.Set(ctx, "sess:new", []byte("written-while-down"), time.Minute); !errors.Is(err, ErrUnavailable) {
		t.Errorf("write during the outage: got %v, want ErrUnavailable", err)
	}
	if v, ok, _ := h.Get(ctx, "sess:new"); !ok || string(v) != "written-while-down" {
		t.Error("a value written during the outage is not readable from L1")
	}

	srv.Restart()
	waitFor(t, h.Healthy)
	c, err := valkey.NewClient(valkey.ClientOption{InitAddress: []string{srv.Addr}, DisableCache: true})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	waitFor(t, func() bool {
		v, err := c.Do(ctx, c.B().Get().Key(h.opts.KeyPrefix+"sess:new").Build()).ToString()
		return err == nil && v == "written-while-down"
	})
	if h.stats.StreamLosses.Load() == 0 || h.stats.ValkeyErrors.Load() == 0 {
		t.Errorf("stream losses %d, errors %d: the outage was not counted", h.stats.StreamLosses.Load(), h.stats.ValkeyErrors.Load())
	}
}

func TestHybridStartsWhileValkeyIsDown(t *testing.T) {
	srv := redistest.Start(t)
	srv.Kill()
	h := NewHybrid(NewMemory(1<<20, 100, nil), ValkeyOptions{Addresses: []string{srv.Addr}, KeyPrefix: testPrefix()}, new(Stats), nil)
	defer h.Close()
	h.Start()
	ctx := context.Background()
	if _, _, err := h.Get(ctx, "sess:a"); !errors.Is(err, ErrUnavailable) {
		t.Errorf("got %v, want ErrUnavailable before the first connection", err)
	}
	srv.Restart()
	select {
	case <-h.Connected():
	case <-time.After(15 * time.Second):
		t.Fatal("did not connect once valkey came up")
	}
	if err := h.Set(ctx, "sess:a", []byte("v"), time.Minute); err != nil {
		t.Errorf("set after connecting: %v", err)
	}
}

func BenchmarkHybridL1Hit(b *testing.B) {
	h := newHybrid(b, redistest.Shared(b), testPrefix())
	ctx := context.Background()
	_ = h.Set(ctx, "sess:bench", make([]byte, 1500), time.Minute)
	b.ReportAllocs()
	for b.Loop() {
		_, _, _ = h.Get(ctx, "sess:bench")
	}
}

func BenchmarkValkeyGET(b *testing.B) {
	addr := redistest.Shared(b)
	c, err := valkey.NewClient(valkey.ClientOption{InitAddress: []string{addr}, DisableCache: true})
	if err != nil {
		b.Fatal(err)
	}
	defer c.Close()
	ctx := context.Background()
	c.Do(ctx, c.B().Set().Key("caddy-oidc-bench").Value(string(make([]byte, 1500))).Build())
	b.ReportAllocs()
	for b.Loop() {
		_, _ = c.Do(ctx, c.B().Get().Key("caddy-oidc-bench").Build()).AsBytes()
	}
}

func TestHybridAuthAndSentinel(t *testing.T) {
	ctx := context.Background()
	t.Run("password and ACL user", func(t *testing.T) {
		srv := redistest.Start(t, "--requirepass", "s3cret", "--user", "caddy", "on", ">caddy-pass", "~*", "&*", "+@all")
		for name, o := range map[string]ValkeyOptions{
			"requirepass": {Addresses: []string{srv.Addr}, Password: "s3cret"},
			"ACL user":    {Addresses: []string{srv.Addr}, Username: "caddy", Password: "caddy-pass"},
		} {
			o.KeyPrefix = testPrefix()
			h := NewHybrid(NewMemory(1<<20, 100, nil), o, new(Stats), nil)
			h.Start()
			select {
			case <-h.Connected():
			case <-time.After(10 * time.Second):
				t.Fatalf("%s: never connected", name)
			}
			if err := h.Set(ctx, "sess:a", []byte("v"), time.Minute); err != nil {
				t.Errorf("%s: %v", name, err)
			}
			h.Close()
		}
		bad := NewHybrid(NewMemory(1<<20, 100, nil), ValkeyOptions{Addresses: []string{srv.Addr}, Password: "wrong"}, new(Stats), nil)
		bad.Start()
		defer bad.Close()
		if _, _, err := bad.Get(ctx, "sess:a"); !errors.Is(err, ErrUnavailable) {
			t.Errorf("wrong password: got %v, want ErrUnavailable", err)
		}
	})
	t.Run("sentinel", func(t *testing.T) {
		master := redistest.Start(t)
		sentinel := redistest.StartSentinel(t, master)
		h := NewHybrid(NewMemory(1<<20, 100, nil), ValkeyOptions{Addresses: []string{sentinel}, SentinelMaster: "mymaster", KeyPrefix: testPrefix()}, new(Stats), nil)
		h.Start()
		defer h.Close()
		select {
		case <-h.Connected():
		case <-time.After(10 * time.Second):
			t.Fatal("never connected through the sentinel")
		}
		if err := h.Set(ctx, "sess:s", []byte("via-sentinel"), time.Minute); err != nil {
			t.Fatal(err)
		}
		c, _ := valkey.NewClient(valkey.ClientOption{InitAddress: []string{master.Addr}, DisableCache: true})
		defer c.Close()
		if v, _ := c.Do(ctx, c.B().Get().Key(h.opts.KeyPrefix+"sess:s").Build()).ToString(); v != "via-sentinel" {
			t.Errorf("the master holds %q", v)
		}
	})
}

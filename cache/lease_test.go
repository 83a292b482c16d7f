package cache

import (
	"context"
	"testing"
	"time"

	"github.com/caddy-oidc/caddy-oidc/internal/redistest"
)

// Leases and the writes made under them are fenced by the holder's token,
// against a real Redis: a holder whose lease ran out (a slow IdP, a Valkey
// blip) cannot extend, free or write over its successor's.
func TestLeaseIsFenced(t *testing.T) {
	addr := redistest.Shared(t)
	prefix := testPrefix()
	a, b := newHybrid(t, addr, prefix), newHybrid(t, addr, prefix)
	ctx := context.Background()
	lease, key := "lease:{x}", "rfr:{x}"
	ttl := 300 * time.Millisecond

	mustBe := func(what string, got bool, err error, want bool) {
		t.Helper()
		if err != nil || got != want {
			t.Fatalf("%s: %v %v, want %v", what, got, err, want)
		}
	}
	got, err := a.TryLease(ctx, lease, "tok-a", ttl)
	mustBe("a takes the free lease", got, err, true)
	got, err = b.TryLease(ctx, lease, "tok-b", ttl)
	mustBe("b takes a's lease", got, err, false)
	got, err = a.TryLease(ctx, lease, "tok-a", ttl)
	mustBe("a takes its own lease again (a retry after a lost answer)", got, err, true)
	got, err = b.RenewLease(ctx, lease, "tok-b", ttl)
	mustBe("b renews a's lease", got, err, false)
	got, err = b.PublishLeased(ctx, lease, "tok-b", key, []byte("b's"), time.Minute)
	mustBe("b publishes under a's lease", got, err, false)
	if _, found, _ := a.Get(ctx, key); found {
		t.Fatal("b's refused publish wrote the value")
	}

	// a's heartbeat keeps the lease past its first ttl.
	beat := time.NewTicker(ttl / 3) // the heartbeat's period
	defer beat.Stop()
	end := time.After(2 * ttl)
	for renewing := true; renewing; {
		got, err = a.RenewLease(ctx, lease, "tok-a", ttl)
		mustBe("a renews its lease", got, err, true)
		select {
		case <-end:
			renewing = false
		case <-beat.C:
		}
	}
	got, err = b.TryLease(ctx, lease, "tok-b", ttl)
	mustBe("b takes a lease kept by heartbeats", got, err, false)

	// a's publish lands and is announced to b's watchers.
	changed, stop := b.Watch(key)
	defer stop()
	got, err = a.PublishLeased(ctx, lease, "tok-a", key, []byte("a's result"), time.Minute)
	mustBe("a publishes under its lease", got, err, true)
	select {
	case <-changed:
	case <-time.After(5 * time.Second):
		t.Fatal("b was not told of a's fenced publish")
	}
	if v, found, err := b.Get(ctx, key); err != nil || !found || string(v) != "a's result" {
		t.Fatalf("b reads %q %v %v", v, found, err)
	}

	// a's lease runs out (no heartbeat); b takes it; a can no longer write.
	waitUntil(t, "a's lease to expire", func() bool {
		got, err := b.TryLease(ctx, lease, "tok-b", time.Minute)
		return err == nil && got
	})
	got, err = a.RenewLease(ctx, lease, "tok-a", ttl)
	mustBe("a renews a lease b took over", got, err, false)
	got, err = a.PublishLeased(ctx, lease, "tok-a", key, []byte("a's late result"), time.Minute)
	mustBe("a publishes after losing the lease", got, err, false)
	if err := a.ReleaseLease(ctx, lease, "tok-a"); err != nil {
		t.Fatal(err)
	}
	got, err = b.RenewLease(ctx, lease, "tok-b", time.Minute)
	mustBe("b's lease after a's release attempt", got, err, true)
	fresh := newHybrid(t, addr, prefix) // an empty L1: what Valkey holds
	if v, _, _ := fresh.Get(ctx, key); string(v) != "a's result" {
		t.Fatalf("the hand-off is %q after a's fenced late write", v)
	}
}

// waitUntil polls cond (bounded) instead of sleeping a guessed time.
func waitUntil(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.After(10 * time.Second)
	tick := time.NewTicker(10 * time.Millisecond)
	defer tick.Stop()
	for !cond() {
		select {
		case <-deadline:
			t.Fatalf("timed out waiting for %s", what)
		case <-tick.C:
		}
	}
}

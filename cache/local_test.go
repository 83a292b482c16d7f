package cache

import (
	"context"
	"fmt"
	"slices"
	"testing"
	"testing/synctest"
	"time"
)

func newLocal() *Local {
	return NewLocal(NewMemory(1<<20, 1000, nil), NewMemory(1<<20, 1000, nil))
}

// The memory backend's leases are fenced as Valkey's are, on the clock of
// a synctest bubble: a holder whose lease ran out cannot extend, free or
// write over its successor's.
func TestLocalLeaseIsFenced(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		l := newLocal()
		ctx := context.Background()
		lease, key := LeaseKey("x"), RefreshKey("x")
		const ttl = 300 * time.Millisecond
		mustBe := func(what string, got bool, err error, want bool) {
			t.Helper()
			if err != nil || got != want {
				t.Fatalf("%s: %v %v, want %v", what, got, err, want)
			}
		}
		got, err := l.TryLease(ctx, lease, "tok-a", ttl)
		mustBe("a takes the free lease", got, err, true)
		got, err = l.TryLease(ctx, lease, "tok-b", ttl)
		mustBe("b takes a's lease", got, err, false)
		got, err = l.TryLease(ctx, lease, "tok-a", ttl)
		mustBe("a takes its own lease again", got, err, true)
		got, err = l.PublishLeased(ctx, lease, "tok-b", key, []byte("b's"), time.Minute)
		mustBe("b publishes under a's lease", got, err, false)

		// Renewed every third of its length, the lease outlives its ttl.
		for range 6 {
			advance(ttl / 3)
			got, err = l.RenewLease(ctx, lease, "tok-a", ttl)
			mustBe("a renews its lease", got, err, true)
		}
		got, err = l.TryLease(ctx, lease, "tok-b", ttl)
		mustBe("b takes a lease kept by heartbeats", got, err, false)

		changed, stop := l.Watch(key)
		defer stop()
		got, err = l.PublishLeased(ctx, lease, "tok-a", key, []byte("a's result"), time.Minute)
		mustBe("a publishes under its lease", got, err, true)
		select {
		case <-changed:
		default:
			t.Fatal("a watcher of the key was not told of the publish")
		}
		if v, found, _ := l.Get(ctx, key); !found || string(v) != "a's result" {
			t.Fatalf("the hand-off reads %q %v", v, found)
		}

		advance(ttl)
		got, err = l.TryLease(ctx, lease, "tok-b", time.Minute)
		mustBe("b takes the lease a let expire", got, err, true)
		got, err = l.RenewLease(ctx, lease, "tok-a", ttl)
		mustBe("a renews a lease b took over", got, err, false)
		got, err = l.PublishLeased(ctx, lease, "tok-a", key, []byte("a's late result"), time.Minute)
		mustBe("a publishes after losing the lease", got, err, false)
		_ = l.ReleaseLease(ctx, lease, "tok-a")
		got, err = l.RenewLease(ctx, lease, "tok-b", time.Minute)
		mustBe("b's lease after a's release attempt", got, err, true)
		if v, _, _ := l.Get(ctx, key); string(v) != "a's result" {
			t.Fatalf("the hand-off is %q after a's fenced late write", v)
		}
	})
}

// Followers resynchronise as soon as they follow (the stream of one process
// is always up) and are told of every change of their prefix; Scan finds
// what SetShared wrote, and not what expired.
func TestLocalFollowAndScan(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		l := newLocal()
		ctx := context.Background()
		_ = l.SetShared(ctx, RevocationKey("sid:iss|old"), []byte("v"), time.Second)
		_ = l.SetShared(ctx, RevocationKey("sid:iss|kept"), []byte("v"), time.Hour)
		_ = l.Set(ctx, SessionKey("route", "abc"), []byte("s"), time.Hour)
		var changed []string
		resyncs := 0
		l.Follow(Follower{Prefix: RevocationPrefix, Changed: func(k string) { changed = append(changed, k) }, Resync: func() { resyncs++ }})
		if resyncs != 1 {
			t.Errorf("%d resyncs on Follow, want 1", resyncs)
		}
		_ = l.SetShared(ctx, RevocationKey("sub:iss|u"), []byte("v"), time.Hour)
		_ = l.Set(ctx, SessionKey("route", "def"), []byte("s"), time.Hour)
		if want := []string{RevocationKey("sub:iss|u")}; !slices.Equal(changed, want) {
			t.Errorf("the follower was told of %v, want %v", changed, want)
		}
		advance(2 * time.Second)
		keys, complete, err := l.Scan(ctx, RevocationPrefix)
		slices.Sort(keys)
		if want := []string{RevocationKey("sid:iss|kept"), RevocationKey("sub:iss|u")}; err != nil || !complete || !slices.Equal(keys, want) {
			t.Errorf("Scan: %v complete=%v err=%v, want %v", keys, complete, err, want)
		}
		if v, found, _ := l.GetShared(ctx, RevocationKey("sub:iss|u")); !found || string(v) != "v" {
			t.Errorf("GetShared: %q %v", v, found)
		}
	})
}

// What SetShared and Add keep never evicts what L1 holds (sessions), however
// many of them there are.
func TestLocalSharedValuesDoNotEvictSessions(t *testing.T) {
	l1 := NewMemory(1<<20, 1000, nil)
	l := NewLocal(l1, NewMemory(1<<20, 1000, nil))
	ctx := context.Background()
	_ = l.Set(ctx, SessionKey("route", "victim"), []byte("session"), time.Hour)
	for i := range 20000 {
		_ = l.SetShared(ctx, RevocationKey(fmt.Sprintf("one:iss|%d", i)), make([]byte, 200), time.Hour)
		_, _ = l.Add(ctx, AttemptKey("route", fmt.Sprint(i)), []byte{1}, time.Minute)
	}
	if v, found, _ := l.Get(ctx, SessionKey("route", "victim")); !found || string(v) != "session" {
		t.Error("the session was evicted by shared values or add records")
	}
	if fresh, _ := l.Add(ctx, AttemptKey("route", "19999"), []byte{1}, time.Minute); fresh {
		t.Error("a recorded attempt was added again")
	}
}

package cache

import (
	"context"
	"fmt"
	"runtime"
	"sync"
	"sync/atomic"
	"testing"
	"testing/synctest"
	"time"
)

// advance moves a synctest bubble's fake clock on by d.
func advance(d time.Duration) { <-time.After(d) }

func TestMemoryGetSetTTL(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		m := NewMemory(1<<20, 1000, nil)
		ctx := context.Background()
		_ = m.Set(ctx, "sess:a", []byte("1"), time.Hour)
		_ = m.Set(ctx, "sess:b", []byte("2"), 20*time.Millisecond)
		if v, ok, _ := m.Get(ctx, "sess:a"); !ok || string(v) != "1" {
			t.Fatalf("get a: %q %v", v, ok)
		}
		advance(20 * time.Millisecond)
		if _, ok, _ := m.Get(ctx, "sess:b"); !ok {
			t.Error("an entry was gone at the end of its TTL, not after it")
		}
		advance(time.Millisecond)
		if _, ok, _ := m.Get(ctx, "sess:b"); ok {
			t.Error("an expired entry was returned")
		}
		_ = m.Delete(ctx, "sess:a")
		if _, ok, _ := m.Get(ctx, "sess:a"); ok {
			t.Error("a deleted entry was returned")
		}
		if n, b := m.Len(); n != 0 || b != 0 {
			t.Errorf("after deleting everything: %d entries, %d bytes", n, b)
		}
	})
}

func TestMemoryStaysWithinBounds(t *testing.T) {
	stats := new(Stats)
	const budget = 256 << 10
	m := NewMemory(budget, 1<<20, stats)
	value := make([]byte, 1000)
	for i := range 5000 {
		_ = m.Set(context.Background(), fmt.Sprintf("sess:%d", i), value, time.Hour)
	}
	n, b := m.Len()
	if b > budget {
		t.Errorf("%d bytes held, budget %d", b, budget)
	}
	if n == 0 || stats.Evictions.Load() == 0 {
		t.Errorf("%d entries, %d evictions", n, stats.Evictions.Load())
	}
	if stats.L1Bytes.Load() != b || stats.L1Entries.Load() != int64(n) {
		t.Errorf("stats say %d bytes %d entries, store holds %d %d", stats.L1Bytes.Load(), stats.L1Entries.Load(), b, n)
	}
	// The most recent entries survive (LRU).
	if _, ok, _ := m.Get(context.Background(), "sess:4999"); !ok {
		t.Error("the newest entry was evicted")
	}

	byCount := NewMemory(1<<30, 160, nil)
	for i := range 1000 {
		_ = byCount.Set(context.Background(), fmt.Sprintf("k:%d", i), []byte("v"), time.Hour)
	}
	if n, _ := byCount.Len(); n > 160 {
		t.Errorf("%d entries held, bound 160", n)
	}
}

// After MarkUnverified every entry is unverified until stored again; a
// plain Memory store (backend memory) still serves it.
func TestMemoryMarkUnverified(t *testing.T) {
	m := NewMemory(1<<20, 1000, nil)
	now := time.Now()
	m.set("sess:a", []byte("a"), time.Hour)
	m.set("sess:b", []byte("b"), time.Hour)
	if _, st := m.lookup("sess:a", now); st != l1Hit {
		t.Fatalf("fresh entry: state %d", st)
	}
	m.MarkUnverified()
	for _, k := range []string{"sess:a", "sess:b"} {
		if v, st := m.lookup(k, now); st != l1Unverified || v == nil {
			t.Errorf("%s after MarkUnverified: %q state %d, want the value, unverified", k, v, st)
		}
	}
	m.deferCheck("sess:a", now.Add(time.Second))
	if _, st := m.lookup("sess:a", now); st != l1Deferred {
		t.Errorf("deferred entry: state %d", st)
	}
	if _, st := m.lookup("sess:a", now.Add(2*time.Second)); st != l1Unverified {
		t.Errorf("entry past its deferral: state %d", st)
	}
	m.fill("sess:b", []byte("b2"), time.Hour, m.epoch.Load(), m.gen("sess:b"))
	if v, st := m.lookup("sess:b", now); st != l1Hit || string(v) != "b2" {
		t.Errorf("entry confirmed by L2: %q state %d", v, st)
	}
	if v, ok, _ := m.Get(context.Background(), "sess:a"); !ok || string(v) != "a" {
		t.Error("Memory.Get does not serve an unverified entry")
	}
}

// A value read from L2 is not kept in L1 when a write or an invalidation
// of its key raced with the read: it could be older than the invalidation.
func TestMemoryFillAfterInvalidationIsNotKept(t *testing.T) {
	m := NewMemory(1<<20, 1000, nil)
	gen, epoch := m.gen("sess:x"), m.epoch.Load()
	_ = m.Delete(context.Background(), "sess:x") // the invalidation arrives during the read
	m.fill("sess:x", []byte("stale"), time.Hour, epoch, gen)
	if _, st := m.lookup("sess:x", time.Now()); st != l1Miss {
		t.Error("a value read before an invalidation was kept after it")
	}
	gen = m.gen("sess:x")
	m.set("sess:x", []byte("newer"), time.Hour) // a local write during the read
	m.fill("sess:x", []byte("older"), time.Hour, epoch, gen)
	if v, _ := m.lookup("sess:x", time.Now()); string(v) != "newer" {
		t.Errorf("L1 holds %q, want the local write", v)
	}
	// An epoch change during the read stores the value unverified.
	gen, epoch = m.gen("sess:y"), m.epoch.Load()
	m.MarkUnverified()
	m.fill("sess:y", []byte("v"), time.Hour, epoch, gen)
	if _, st := m.lookup("sess:y", time.Now()); st != l1Unverified {
		t.Errorf("a value read across MarkUnverified: state %d, want unverified", st)
	}
	// dropIf does not drop a value written after the check began.
	gen = m.gen("sess:y")
	m.set("sess:y", []byte("w"), time.Hour)
	m.dropIf("sess:y", gen)
	if v, _ := m.lookup("sess:y", time.Now()); string(v) != "w" {
		t.Error("dropIf removed a newer write")
	}
}

func TestMemoryConcurrent(t *testing.T) {
	m := NewMemory(1<<20, 10000, nil)
	var wg sync.WaitGroup
	for g := range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range 2000 {
				k := fmt.Sprintf("k:%d", (g*i)%500)
				_ = m.Set(context.Background(), k, []byte("v"), time.Minute)
				_, _, _ = m.Get(context.Background(), k)
				if i%7 == 0 {
					_ = m.Delete(context.Background(), k)
				}
			}
		}()
	}
	wg.Wait()
}

func BenchmarkMemoryGet(b *testing.B) {
	m := NewMemory(64<<20, 100000, nil)
	v := make([]byte, 1500)
	for i := range 10000 {
		_ = m.Set(context.Background(), fmt.Sprintf("sess:%d", i), v, time.Hour)
	}
	ctx := context.Background()
	b.ReportAllocs()
	for b.Loop() {
		_, _, _ = m.Get(ctx, "sess:4242")
	}
}

func BenchmarkMemorySet(b *testing.B) {
	m := NewMemory(64<<20, 100000, nil)
	v := make([]byte, 1500)
	ctx := context.Background()
	b.ReportAllocs()
	for b.Loop() {
		_ = m.Set(ctx, "sess:4242", v, time.Hour)
	}
}

// BenchmarkL1Sessions reports the heap an L1 entry of a typical sealed
// session (2.6 KB) costs, and that 100,000 sessions stay within the
// configured bound (64 MiB here).
func BenchmarkL1Sessions(b *testing.B) {
	for _, n := range []int{10_000, 100_000} {
		b.Run(fmt.Sprintf("%d", n), func(b *testing.B) {
			for b.Loop() {
				runtime.GC()
				var before, after runtime.MemStats
				runtime.ReadMemStats(&before)
				m := NewMemory(64<<20, 1_000_000, nil)
				for i := range n {
					v := make([]byte, 2600)
					_ = m.Set(context.Background(), fmt.Sprintf("sess:%064d", i), v, time.Hour)
				}
				runtime.GC()
				runtime.ReadMemStats(&after)
				entries, _ := m.Len()
				b.ReportMetric(float64(after.HeapAlloc-before.HeapAlloc)/float64(entries), "heap-bytes/session")
				b.ReportMetric(float64(after.HeapAlloc-before.HeapAlloc)/(1<<20), "heap-MiB")
				b.ReportMetric(float64(entries), "sessions-kept")
				runtime.KeepAlive(m)
			}
		})
	}
}

// Issue 17 item 6: of many concurrent Adds of one key, exactly one wins.
func TestMemoryAddOneWinner(t *testing.T) {
	m := NewMemory(1<<20, 100000, nil)
	ctx := context.Background()
	for round := range 3000 {
		key := fmt.Sprintf("jti:%d", round)
		var wins atomic.Int32
		var wg sync.WaitGroup
		start := make(chan struct{})
		for range 16 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				<-start
				if ok, _ := m.Add(ctx, key, []byte("seen"), time.Minute); ok {
					wins.Add(1)
				}
			}()
		}
		close(start)
		wg.Wait()
		if n := wins.Load(); n != 1 {
			t.Fatalf("round %d: %d of 16 concurrent Adds of one key won", round, n)
		}
	}
}

package cache

import (
	"context"
	"fmt"
	"runtime"
	"sync"
	"testing"
	"time"
)

func TestMemoryGetSetTTL(t *testing.T) {
	m := NewMemory(1<<20, 1000, nil)
	ctx := context.Background()
	_ = m.Set(ctx, "sess:a", []byte("1"), time.Hour)
	_ = m.Set(ctx, "sess:b", []byte("2"), 20*time.Millisecond)
	if v, ok, _ := m.Get(ctx, "sess:a"); !ok || string(v) != "1" {
		t.Fatalf("get a: %q %v", v, ok)
	}
	time.Sleep(30 * time.Millisecond)
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

func TestMemoryFlushKeepsDirty(t *testing.T) {
	m := NewMemory(1<<20, 1000, nil)
	m.set("sess:clean", []byte("c"), time.Hour, false)
	m.set("sess:dirty", []byte("d"), time.Hour, true)
	dirty := m.Flush()
	if len(dirty) != 1 || dirty[0].Key != "sess:dirty" {
		t.Fatalf("dirty entries: %+v", dirty)
	}
	if _, ok, _ := m.Get(context.Background(), "sess:clean"); ok {
		t.Error("a clean entry survived the flush")
	}
	if _, ok, _ := m.Get(context.Background(), "sess:dirty"); !ok {
		t.Error("a dirty entry was dropped by the flush")
	}
	if len(m.Flush()) != 0 {
		t.Error("an entry written back stays dirty")
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

package cache

import (
	"container/list"
	"context"
	"hash/maphash"
	"sync"
	"sync/atomic"
	"time"
)

const shardCount = 16

// entryOverhead approximates the bookkeeping bytes of one entry (list
// element, map slot, struct) so the byte bound holds for small values too.
const entryOverhead = 160

// Memory is a bounded in-process store: sharded maps with an LRU list per
// shard, a byte budget and a TTL per entry. It starts no goroutines:
// expired entries go when they are read or evicted.
//
// As Hybrid's L1 it also knows which entries may be stale: an entry stored
// before the last MarkUnverified (the invalidation stream was lost and is
// back) is "unverified" until L2 confirms it.
type Memory struct {
	seed   maphash.Seed
	shards [shardCount]shard
	// Bounds per shard; atomic so that a reload can change them (SetLimits).
	maxBytes atomic.Int64
	maxItems atomic.Int64
	stats    *Stats
	// epoch is bumped by MarkUnverified; an entry is verified while its
	// epoch is the current one.
	epoch atomic.Uint32
}

type shard struct {
	stats *Stats
	mu    sync.Mutex
	items map[string]*list.Element
	lru   list.List // front = most recently used
	bytes int64
	// gen changes on every write or delete in the shard: a value read from
	// L2 is kept only if no write or invalidation of the shard raced with
	// the read (else a stale value could outlive its invalidation).
	gen atomic.Uint64
}

type memEntry struct {
	key     string
	value   []byte
	expires time.Time
	epoch   uint32
	// recheck (unix ns) defers asking L2 about an unverified entry after L2
	// could not answer, so a dead master costs one failed call per entry
	// per recheckAfter, not one per request.
	recheck int64
}

// l1State is what L1 knows of a key.
type l1State uint8

const (
	l1Miss       l1State = iota
	l1Hit                // verified: serve it
	l1Unverified         // may have missed an invalidation: ask L2
	l1Deferred           // unverified, and L2 could not answer a moment ago: serve it
)

// NewMemory returns a store bounded to maxBytes and maxEntries in all.
func NewMemory(maxBytes int64, maxEntries int, stats *Stats) *Memory {
	if stats == nil {
		stats = new(Stats)
	}
	m := &Memory{seed: maphash.MakeSeed(), stats: stats}
	m.maxBytes.Store(max(maxBytes/shardCount, 1))
	m.maxItems.Store(int64(max(maxEntries/shardCount, 1)))
	for i := range m.shards {
		m.shards[i].items = make(map[string]*list.Element)
		m.shards[i].stats = stats
	}
	return m
}

func (m *Memory) shard(key string) *shard {
	return &m.shards[maphash.String(m.seed, key)%shardCount]
}

func size(key string, value []byte) int64 { return int64(len(key) + len(value) + entryOverhead) }

// Get implements Store.
func (m *Memory) Get(_ context.Context, key string) ([]byte, bool, error) {
	v, st := m.lookup(key, time.Now())
	ok := st != l1Miss
	m.stats.count(namespaceOf(key), "l1", ok)
	return v, ok, nil
}

// lookup returns key's value and whether it is verified.
func (m *Memory) lookup(key string, now time.Time) ([]byte, l1State) {
	s := m.shard(key)
	s.mu.Lock()
	el, ok := s.items[key]
	if !ok {
		s.mu.Unlock()
		return nil, l1Miss
	}
	e := el.Value.(*memEntry)
	if now.After(e.expires) {
		s.remove(el)
		s.mu.Unlock()
		return nil, l1Miss
	}
	s.lru.MoveToFront(el)
	v, st := e.value, l1Hit
	if e.epoch != m.epoch.Load() {
		st = l1Unverified
		if now.UnixNano() < e.recheck {
			st = l1Deferred
		}
	}
	s.mu.Unlock()
	return v, st
}

// Set implements Store.
func (m *Memory) Set(_ context.Context, key string, value []byte, ttl time.Duration) error {
	m.set(key, value, ttl)
	return nil
}

// set stores a value this process knows to be current (verified).
func (m *Memory) set(key string, value []byte, ttl time.Duration) {
	s := m.shard(key)
	s.mu.Lock()
	s.gen.Add(1)
	m.insertLocked(s, key, value, ttl, m.epoch.Load())
	s.mu.Unlock()
}

// gen returns the write generation of key's shard, to pass to fill.
func (m *Memory) gen(key string) uint64 { return m.shard(key).gen.Load() }

// fill stores a value read from L2, unless the shard was written or
// invalidated since gen was taken (then the read may be stale and is not
// kept). epoch is the epoch taken before the read.
func (m *Memory) fill(key string, value []byte, ttl time.Duration, epoch uint32, gen uint64) {
	s := m.shard(key)
	s.mu.Lock()
	if s.gen.Load() == gen {
		m.insertLocked(s, key, value, ttl, epoch)
	}
	s.mu.Unlock()
}

// dropIf removes key unless the shard changed since gen (L2 said the key is
// gone, and nothing newer was written meanwhile).
func (m *Memory) dropIf(key string, gen uint64) {
	s := m.shard(key)
	s.mu.Lock()
	if s.gen.Load() == gen {
		if el, ok := s.items[key]; ok {
			s.gen.Add(1)
			s.remove(el)
		}
	}
	s.mu.Unlock()
}

// deferCheck keeps an unverified entry from asking L2 again until t.
func (m *Memory) deferCheck(key string, t time.Time) {
	s := m.shard(key)
	s.mu.Lock()
	if el, ok := s.items[key]; ok {
		el.Value.(*memEntry).recheck = t.UnixNano()
	}
	s.mu.Unlock()
}

func (m *Memory) insertLocked(s *shard, key string, value []byte, ttl time.Duration, epoch uint32) {
	sz := size(key, value)
	if el, ok := s.items[key]; ok {
		s.remove(el)
	}
	maxBytes, maxItems := m.maxBytes.Load(), int(m.maxItems.Load())
	if sz > maxBytes {
		return // larger than a shard: never cached
	}
	e := &memEntry{key: key, value: value, expires: time.Now().Add(ttl), epoch: epoch}
	s.items[key] = s.lru.PushFront(e)
	s.bytes += sz
	s.stats.addL1(sz, 1)
	for s.bytes > maxBytes || len(s.items) > maxItems {
		s.remove(s.lru.Back())
		s.stats.Evictions.Add(1)
	}
}

// SetLimits changes the bounds (a reload that changes l1_max_bytes or
// l1_max_entries keeps the cache's contents) and evicts down to them.
func (m *Memory) SetLimits(maxBytes int64, maxEntries int) {
	mb, mi := max(maxBytes/shardCount, 1), max(maxEntries/shardCount, 1)
	m.maxBytes.Store(mb)
	m.maxItems.Store(int64(mi))
	for i := range m.shards {
		s := &m.shards[i]
		s.mu.Lock()
		for (s.bytes > mb || len(s.items) > mi) && s.lru.Len() > 0 {
			s.remove(s.lru.Back())
			s.stats.Evictions.Add(1)
		}
		s.mu.Unlock()
	}
}

// Delete implements Store.
func (m *Memory) Delete(_ context.Context, key string) error {
	s := m.shard(key)
	s.mu.Lock()
	s.gen.Add(1)
	if el, ok := s.items[key]; ok {
		s.remove(el)
	}
	s.mu.Unlock()
	return nil
}

func (s *shard) remove(el *list.Element) {
	e := el.Value.(*memEntry)
	s.lru.Remove(el)
	delete(s.items, e.key)
	sz := size(e.key, e.value)
	s.bytes -= sz
	s.stats.addL1(-sz, -1)
}

// Len reports the number of entries and their accounted bytes.
func (m *Memory) Len() (entries int, bytes int64) {
	for i := range m.shards {
		s := &m.shards[i]
		s.mu.Lock()
		entries += len(s.items)
		bytes += s.bytes
		s.mu.Unlock()
	}
	return entries, bytes
}

// MarkUnverified makes every entry unverified at once (O(1)): the next read
// of each asks L2. Called when invalidations may have been missed.
func (m *Memory) MarkUnverified() { m.epoch.Add(1) }

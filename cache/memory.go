package cache

import (
	"container/list"
	"context"
	"hash/maphash"
	"sync"
	"time"
)

const shardCount = 16

// entryOverhead approximates the bookkeeping bytes of one entry (list
// element, map slot, struct) so the byte bound holds for small values too.
const entryOverhead = 160

// Memory is a bounded in-process store: sharded maps with an LRU list per
// shard, a byte budget and a TTL per entry. It starts no goroutines:
// expired entries go when they are read or evicted.
type Memory struct {
	seed     maphash.Seed
	shards   [shardCount]shard
	maxBytes int64 // per shard
	maxItems int   // per shard
	stats    *Stats
}

type shard struct {
	stats *Stats
	mu    sync.Mutex
	items map[string]*list.Element
	lru   list.List // front = most recently used
	bytes int64
}

type memEntry struct {
	key     string
	value   []byte
	expires time.Time
	// dirty marks a value written while the shared tier was down: it is
	// written back, not dropped, when the tier returns.
	dirty bool
}

// NewMemory returns a store bounded to maxBytes and maxEntries in all.
func NewMemory(maxBytes int64, maxEntries int, stats *Stats) *Memory {
	if stats == nil {
		stats = new(Stats)
	}
	m := &Memory{seed: maphash.MakeSeed(), maxBytes: max(maxBytes/shardCount, 1), maxItems: max(maxEntries/shardCount, 1), stats: stats}
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
	v, ok := m.get(key, time.Now())
	m.stats.count(namespaceOf(key), "l1", ok)
	return v, ok, nil
}

func (m *Memory) get(key string, now time.Time) ([]byte, bool) {
	s := m.shard(key)
	s.mu.Lock()
	defer s.mu.Unlock()
	el, ok := s.items[key]
	if !ok {
		return nil, false
	}
	e := el.Value.(*memEntry)
	if now.After(e.expires) {
		s.remove(el)
		return nil, false
	}
	s.lru.MoveToFront(el)
	return e.value, true
}

// Set implements Store.
func (m *Memory) Set(_ context.Context, key string, value []byte, ttl time.Duration) error {
	m.set(key, value, ttl, false)
	return nil
}

func (m *Memory) set(key string, value []byte, ttl time.Duration, dirty bool) {
	sz := size(key, value)
	s := m.shard(key)
	s.mu.Lock()
	defer s.mu.Unlock()
	if el, ok := s.items[key]; ok {
		s.remove(el)
	}
	if sz > m.maxBytes {
		return // larger than a shard: never cached
	}
	e := &memEntry{key: key, value: value, expires: time.Now().Add(ttl), dirty: dirty}
	s.items[key] = s.lru.PushFront(e)
	s.bytes += sz
	s.stats.addL1(sz, 1)
	for s.bytes > m.maxBytes || len(s.items) > m.maxItems {
		s.remove(s.lru.Back())
		s.stats.Evictions.Add(1)
	}
}

// Delete implements Store.
func (m *Memory) Delete(_ context.Context, key string) error {
	s := m.shard(key)
	s.mu.Lock()
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

// Flush drops every clean entry and returns the dirty ones (written while
// the shared tier was down) for write-back; they stay cached.
func (m *Memory) Flush() (dirty []DirtyEntry) {
	now := time.Now()
	for i := range m.shards {
		s := &m.shards[i]
		s.mu.Lock()
		for el := s.lru.Front(); el != nil; {
			next := el.Next()
			e := el.Value.(*memEntry)
			switch {
			case now.After(e.expires):
				s.remove(el)
			case e.dirty:
				dirty = append(dirty, DirtyEntry{Key: e.key, Value: e.value, TTL: e.expires.Sub(now)})
				e.dirty = false
			default:
				s.remove(el)
			}
			el = next
		}
		s.mu.Unlock()
	}
	return dirty
}

// DirtyEntry is a value to write back to the shared tier.
type DirtyEntry struct {
	Key   string
	Value []byte
	TTL   time.Duration
}

package session

import "sync"

// DecodedCache remembers sessions already opened, so a busy session costs
// one decryption and decode, not one per request. An entry is keyed by
// where the sealed value was found (the cookie's name or the cache key) and
// the exact sealed value: the same bytes moved to another key (a Valkey
// value copied into someone else's session key) do not hit. It belongs to
// one route's codec. Bounded in entries; when full, an arbitrary entry
// makes room.
type DecodedCache struct {
	mu  sync.RWMutex
	m   map[decodedKey]*Session
	max int
}

type decodedKey struct{ where, sealed string }

// NewDecodedCache returns a cache of at most max entries.
func NewDecodedCache(max int) *DecodedCache {
	return &DecodedCache{m: make(map[decodedKey]*Session, max), max: max}
}

// Get returns a copy of the session sealed as value and found at where, if
// cached. The copy may be changed by the caller; its Claims map must be
// replaced, not mutated.
func (c *DecodedCache) Get(where, value string) (*Session, bool) {
	c.mu.RLock()
	s, ok := c.m[decodedKey{where, value}]
	c.mu.RUnlock()
	if !ok {
		return nil, false
	}
	cp := *s
	return &cp, true
}

// Put caches s as the session sealed in value at where. s must not be changed after.
func (c *DecodedCache) Put(where, value string, s *Session) {
	c.mu.Lock()
	defer c.mu.Unlock()
	k := decodedKey{where, value}
	if _, ok := c.m[k]; !ok && len(c.m) >= c.max {
		for old := range c.m {
			delete(c.m, old)
			break
		}
	}
	c.m[k] = s
}

// Len reports the number of cached sessions.
func (c *DecodedCache) Len() int {
	c.mu.RLock()
	defer c.mu.RUnlock()
	return len(c.m)
}

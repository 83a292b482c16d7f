package session

import "sync"

// DecodedCache remembers sessions already opened, keyed by their exact
// sealed cookie value, so a busy session costs one decryption and decode,
// not one per request. It belongs to one codec (one route's secrets): a
// value sealed under other keys never reaches it. Bounded in entries; when
// full, an arbitrary entry makes room.
type DecodedCache struct {
	mu  sync.RWMutex
	m   map[string]*Session
	max int
}

// NewDecodedCache returns a cache of at most max entries.
func NewDecodedCache(max int) *DecodedCache {
	return &DecodedCache{m: make(map[string]*Session, max), max: max}
}

// Get returns a copy of the session sealed as value, if cached. The copy may
// be changed by the caller; its Claims map must be replaced, not mutated.
func (c *DecodedCache) Get(value string) (*Session, bool) {
	c.mu.RLock()
	s, ok := c.m[value]
	c.mu.RUnlock()
	if !ok {
		return nil, false
	}
	cp := *s
	return &cp, true
}

// Put caches s as the session sealed in value. s must not be changed after.
func (c *DecodedCache) Put(value string, s *Session) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if _, ok := c.m[value]; !ok && len(c.m) >= c.max {
		for k := range c.m {
			delete(c.m, k)
			break
		}
	}
	c.m[value] = s
}

// Len reports the number of cached sessions.
func (c *DecodedCache) Len() int {
	c.mu.RLock()
	defer c.mu.RUnlock()
	return len(c.m)
}

// GetBytes is Get for a value held as bytes, without converting it.
func (c *DecodedCache) GetBytes(value []byte) (*Session, bool) {
	c.mu.RLock()
	s, ok := c.m[string(value)]
	c.mu.RUnlock()
	if !ok {
		return nil, false
	}
	cp := *s
	return &cp, true
}

package cache

import (
	"context"
	"sync"
	"time"

	"github.com/valkey-io/valkey-go"
)

// releaseScript deletes a lease only if it still holds the caller's fencing
// token: a leader whose lease expired and was taken over cannot free its
// successor's lease.
var releaseScript = valkey.NewLuaScript(`if redis.call("GET", KEYS[1]) == ARGV[1] then return redis.call("DEL", KEYS[1]) else return 0 end`)

// TryLease takes key for ttl with SET NX PX, unless another holder has it.
func (h *Hybrid) TryLease(ctx context.Context, key, token string, ttl time.Duration) (bool, error) {
	c := h.current()
	if c == nil {
		return false, ErrUnavailable
	}
	ctx, cancel := context.WithTimeout(ctx, h.opts.Timeout)
	defer cancel()
	err := c.Do(ctx, c.B().Set().Key(h.opts.KeyPrefix+key).Value(token).Nx().Px(ttl).Build()).Error()
	if valkey.IsValkeyNil(err) {
		return false, nil
	}
	if err != nil {
		h.noteError("SET NX", err)
		return false, ErrUnavailable
	}
	return true, nil
}

// ReleaseLease frees key if token still holds it.
func (h *Hybrid) ReleaseLease(ctx context.Context, key, token string) error {
	c := h.current()
	if c == nil {
		return ErrUnavailable
	}
	ctx, cancel := context.WithTimeout(ctx, h.opts.Timeout)
	defer cancel()
	if err := releaseScript.Exec(ctx, c, []string{h.opts.KeyPrefix + key}, []string{token}).Error(); err != nil {
		h.noteError("lease release", err)
		return ErrUnavailable
	}
	return nil
}

// watchers wakes waiters when another replica announces a key's change.
type watchers struct {
	mu sync.Mutex
	m  map[string]map[chan struct{}]struct{}
}

// Watch returns a channel closed when another replica changes key (Set or
// Delete announce it on the invalidation channel); stop releases it.
func (h *Hybrid) Watch(key string) (<-chan struct{}, func()) {
	ch := make(chan struct{})
	w := &h.watch
	w.mu.Lock()
	if w.m == nil {
		w.m = make(map[string]map[chan struct{}]struct{})
	}
	if w.m[key] == nil {
		w.m[key] = make(map[chan struct{}]struct{})
	}
	w.m[key][ch] = struct{}{}
	w.mu.Unlock()
	return ch, func() {
		w.mu.Lock()
		if set, ok := w.m[key]; ok {
			if _, still := set[ch]; still {
				delete(set, ch)
				if len(set) == 0 {
					delete(w.m, key)
				}
			}
		}
		w.mu.Unlock()
	}
}

func (w *watchers) fire(key string) {
	w.mu.Lock()
	set := w.m[key]
	delete(w.m, key)
	w.mu.Unlock()
	for ch := range set {
		close(ch)
	}
}

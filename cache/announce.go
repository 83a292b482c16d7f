package cache

import (
	"context"
	"strings"
	"sync"
	"time"

	"github.com/valkey-io/valkey-go"
)

// Adder stores a value only if its key is absent: the atomic check a replay
// record (a logout token's jti) needs.
type Adder interface {
	// Add stores value under key for ttl and reports true, unless key exists.
	Add(ctx context.Context, key string, value []byte, ttl time.Duration) (bool, error)
}

// Add implements Adder for the in-process store.
func (m *Memory) Add(_ context.Context, key string, value []byte, ttl time.Duration) (bool, error) {
	s := m.shard(key)
	s.mu.Lock()
	if el, ok := s.items[key]; ok && !time.Now().After(el.Value.(*memEntry).expires) {
		s.mu.Unlock()
		return false, nil
	}
	s.mu.Unlock()
	m.set(key, value, ttl, false)
	return true, nil
}

// Add implements Adder with SET NX in Valkey, so replicas agree.
func (h *Hybrid) Add(ctx context.Context, key string, value []byte, ttl time.Duration) (bool, error) {
	c := h.current()
	if c == nil {
		return false, ErrUnavailable
	}
	ctx, cancel := context.WithTimeout(ctx, h.opts.Timeout)
	defer cancel()
	err := c.Do(ctx, c.B().Set().Key(h.opts.KeyPrefix+key).Value(valkey.BinaryString(value)).Nx().Px(ttl).Build()).Error()
	if valkey.IsValkeyNil(err) {
		return false, nil
	}
	if err != nil {
		h.noteError("SET NX", err)
		return false, ErrUnavailable
	}
	return true, nil
}

// Follower is told of changes to keys with a prefix made by other
// replicas, and to resynchronise when announcements may have been missed.
type Follower struct {
	Prefix string
	// Changed runs (in its own goroutine) for each announced key.
	Changed func(key string)
	// Resync runs when the announcement stream is (re)established.
	Resync func()
}

type followers struct {
	mu   sync.Mutex
	list []Follower
}

// Follow registers f. It is meant for long-lived listeners (one per app state).
func (h *Hybrid) Follow(f Follower) {
	h.follow.mu.Lock()
	h.follow.list = append(h.follow.list, f)
	h.follow.mu.Unlock()
	if h.subscribed.Load() && f.Resync != nil {
		h.goBounded(f.Resync)
	}
}

func (h *Hybrid) announced(key string) {
	h.follow.mu.Lock()
	list := h.follow.list
	h.follow.mu.Unlock()
	for _, f := range list {
		if f.Changed != nil && strings.HasPrefix(key, f.Prefix) {
			h.goBounded(func() { f.Changed(key) })
		}
	}
}

func (h *Hybrid) resynced() {
	h.follow.mu.Lock()
	list := h.follow.list
	h.follow.mu.Unlock()
	for _, f := range list {
		if f.Resync != nil {
			h.goBounded(f.Resync)
		}
	}
}

// goBounded runs fn off the pub/sub reader, at most 64 at a time; past
// that fn runs inline, slowing the reader rather than piling goroutines.
func (h *Hybrid) goBounded(fn func()) {
	if h.ctx.Err() != nil {
		return
	}
	select {
	case h.sem <- struct{}{}:
		h.wg.Add(1)
		go func() {
			defer func() { <-h.sem; h.wg.Done() }()
			fn()
		}()
	default:
		fn()
	}
}

// Scan returns the keys (without the key prefix) that start with prefix, on
// every node of the deployment. Meant for small sets (revocations).
func (h *Hybrid) Scan(ctx context.Context, prefix string) ([]string, error) {
	c := h.current()
	if c == nil {
		return nil, ErrUnavailable
	}
	var keys []string
	for _, node := range c.Nodes() {
		var cursor uint64
		for {
			cctx, cancel := context.WithTimeout(ctx, h.opts.Timeout*4)
			e, err := node.Do(cctx, node.B().Scan().Cursor(cursor).Match(h.opts.KeyPrefix+prefix+"*").Count(500).Build()).AsScanEntry()
			cancel()
			if err != nil {
				h.noteError("SCAN", err)
				return nil, ErrUnavailable
			}
			for _, k := range e.Elements {
				keys = append(keys, strings.TrimPrefix(k, h.opts.KeyPrefix))
			}
			if e.Cursor == 0 {
				break
			}
			cursor = e.Cursor
		}
	}
	return keys, nil
}

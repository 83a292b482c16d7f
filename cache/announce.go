package cache

import (
	"context"
	"strings"
	"time"

	"github.com/valkey-io/valkey-go"
)

// Add stores value under key for ttl and reports true, unless key exists:
// the check and the set are under one lock, so of concurrent callers
// exactly one wins.
func (m *Memory) Add(_ context.Context, key string, value []byte, ttl time.Duration) (bool, error) {
	s := m.shard(key)
	s.mu.Lock()
	defer s.mu.Unlock()
	if el, ok := s.items[key]; ok && !time.Now().After(el.Value.(*memEntry).expires) {
		return false, nil
	}
	s.gen.Add(1)
	m.insertLocked(s, key, value, ttl, m.epoch.Load())
	return true, nil
}

// Add implements Shared with SET NX in Valkey, so replicas agree.
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

// Follow implements Shared. It is meant for long-lived listeners (one per
// app state); Changed and Resync run off the pub/sub reader.
func (h *Hybrid) Follow(f Follower) {
	h.follow.add(f)
	if h.subscribed.Load() && f.Resync != nil {
		h.goBounded(f.Resync)
	}
}

func (h *Hybrid) announced(key string) {
	for _, f := range h.follow.matching(key) {
		h.goBounded(func() { f.Changed(key) })
	}
}

func (h *Hybrid) resynced() {
	for _, f := range h.follow.all() {
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

// Scan implements Shared on every node of the deployment (keys without the
// key prefix). It does not fail as a whole because one node is down: it
// returns the keys of every node that answered, complete=false if any data
// node did not, and ErrUnavailable only if none did.
func (h *Hybrid) Scan(ctx context.Context, prefix string) (keys []string, complete bool, err error) {
	c := h.current()
	if c == nil {
		return nil, false, ErrUnavailable
	}
	addrs, nodes, complete := h.masters(ctx, c)
	seen := make(map[string]struct{})
	answered := 0
	for _, a := range addrs {
		node := nodes[a]
		if node == nil {
			complete = false
			continue
		}
		if err := h.scanNode(ctx, node, prefix, seen, &keys); err != nil {
			h.noteError("SCAN", err)
			complete = false
			continue
		}
		answered++
	}
	if answered == 0 {
		return keys, false, ErrUnavailable
	}
	return keys, complete, nil
}

func (h *Hybrid) scanNode(ctx context.Context, node valkey.Client, prefix string, seen map[string]struct{}, keys *[]string) error {
	var cursor uint64
	for {
		cctx, cancel := context.WithTimeout(ctx, h.opts.Timeout*4)
		e, err := node.Do(cctx, node.B().Scan().Cursor(cursor).Match(h.opts.KeyPrefix+prefix+"*").Count(500).Build()).AsScanEntry()
		cancel()
		if err != nil {
			return err
		}
		for _, k := range e.Elements {
			k = strings.TrimPrefix(k, h.opts.KeyPrefix)
			if _, dup := seen[k]; !dup {
				seen[k] = struct{}{}
				*keys = append(*keys, k)
			}
		}
		if e.Cursor == 0 {
			return nil
		}
		cursor = e.Cursor
	}
}

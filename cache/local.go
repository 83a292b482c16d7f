package cache

import (
	"context"
	"strings"
	"sync"
	"time"
)

// Bounds of Local's store of shared values (revocations' copies and
// refresh results): apart from L1, so they never evict a session, and
// apart from the add-if-absent records, so they never evict a replay
// record either.
const (
	localValuesMaxBytes   = 32 << 20
	localValuesMaxEntries = 128 << 10
)

// Local is the memory backend: a deployment of one process. Every Shared
// capability works in memory (leases, add-if-absent, watch, follow, scan),
// so the refresh coordinator and the revocation set run the same code with
// or without Valkey. Changes are announced to the followers and watchers of
// the process, which stand for the other replicas: two users of one Local
// behave as two replicas of one Valkey.
type Local struct {
	l1 *Memory
	// once holds Add's records, values what SetShared and PublishLeased
	// write (see the bounds above).
	once, values *Memory
	// now is the lease clock. Default: time.Now.
	now func() time.Time

	mu     sync.Mutex
	leases map[string]localLease

	watch     watchers
	follow    followers
	connected chan struct{}
}

type localLease struct {
	token   string
	expires time.Time
}

// NewLocal returns the memory backend on l1 (sessions and other cached
// values); once holds the add-if-absent records (login attempts, logout
// token ids), bounded apart from l1 so that unauthenticated traffic never
// evicts a session.
func NewLocal(l1, once *Memory) *Local {
	connected := make(chan struct{})
	close(connected)
	return &Local{l1: l1, once: once, values: NewMemory(localValuesMaxBytes, localValuesMaxEntries, nil),
		now: time.Now, leases: make(map[string]localLease), connected: connected}
}

// announce tells this process's watchers and followers of key's change.
func (l *Local) announce(key string) {
	l.watch.fire(key)
	for _, f := range l.follow.matching(key) {
		f.Changed(key)
	}
}

// Get implements Store.
func (l *Local) Get(ctx context.Context, key string) ([]byte, bool, error) {
	if v, ok, _ := l.l1.Get(ctx, key); ok {
		return v, true, nil
	}
	return l.values.Get(ctx, key)
}

// Set implements Store.
func (l *Local) Set(ctx context.Context, key string, value []byte, ttl time.Duration) error {
	_ = l.values.Delete(ctx, key)
	_ = l.l1.Set(ctx, key, value, ttl)
	l.announce(key)
	return nil
}

// Delete implements Store.
func (l *Local) Delete(ctx context.Context, key string) error {
	_ = l.l1.Delete(ctx, key)
	_ = l.values.Delete(ctx, key)
	l.announce(key)
	return nil
}

// Add implements Shared: the check and the set are under one lock.
func (l *Local) Add(ctx context.Context, key string, value []byte, ttl time.Duration) (bool, error) {
	return l.once.Add(ctx, key, value, ttl)
}

// SetShared implements Shared.
func (l *Local) SetShared(ctx context.Context, key string, value []byte, ttl time.Duration) error {
	_ = l.values.Set(ctx, key, value, ttl)
	l.announce(key)
	return nil
}

// GetShared implements Shared.
func (l *Local) GetShared(ctx context.Context, key string) ([]byte, bool, error) {
	return l.values.Get(ctx, key)
}

// holdsLocked reports whether token holds key's lease; l.mu is held.
func (l *Local) holdsLocked(key, token string, now time.Time) (held, free bool) {
	ls, ok := l.leases[key]
	if !ok || !now.Before(ls.expires) {
		delete(l.leases, key)
		return false, true
	}
	return ls.token == token, false
}

// TryLease implements Shared.
func (l *Local) TryLease(_ context.Context, key, token string, ttl time.Duration) (bool, error) {
	now := l.now()
	l.mu.Lock()
	defer l.mu.Unlock()
	if held, free := l.holdsLocked(key, token, now); !held && !free {
		return false, nil
	}
	if len(l.leases) >= 1024 {
		// Leases live as long as a grant: drop the expired ones now and
		// then rather than on a timer.
		for k, ls := range l.leases {
			if !now.Before(ls.expires) {
				delete(l.leases, k)
			}
		}
	}
	l.leases[key] = localLease{token: token, expires: now.Add(ttl)}
	return true, nil
}

// RenewLease implements Shared.
func (l *Local) RenewLease(_ context.Context, key, token string, ttl time.Duration) (bool, error) {
	now := l.now()
	l.mu.Lock()
	defer l.mu.Unlock()
	if held, _ := l.holdsLocked(key, token, now); !held {
		return false, nil
	}
	l.leases[key] = localLease{token: token, expires: now.Add(ttl)}
	return true, nil
}

// ReleaseLease implements Shared.
func (l *Local) ReleaseLease(_ context.Context, key, token string) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	if held, _ := l.holdsLocked(key, token, l.now()); held {
		delete(l.leases, key)
	}
	return nil
}

// PublishLeased implements Shared.
func (l *Local) PublishLeased(ctx context.Context, lease, token, key string, value []byte, ttl time.Duration) (bool, error) {
	l.mu.Lock()
	held, _ := l.holdsLocked(lease, token, l.now())
	if held {
		// Under the lease lock: a successor cannot take the lease between
		// the check and the write.
		_ = l.values.Set(ctx, key, value, ttl)
	}
	l.mu.Unlock()
	if held {
		l.announce(key)
	}
	return held, nil
}

// Watch implements Shared.
func (l *Local) Watch(key string) (<-chan struct{}, func()) { return l.watch.watch(key) }

// Follow implements Shared. The stream of a process is always up: f
// resynchronises at once.
func (l *Local) Follow(f Follower) {
	l.follow.add(f)
	if f.Resync != nil {
		f.Resync()
	}
}

// Scan implements Shared; it is always complete.
func (l *Local) Scan(_ context.Context, prefix string) ([]string, bool, error) {
	keys := l.values.keys(prefix, nil)
	return l.l1.keys(prefix, keys), true, nil
}

// Start implements Shared: there is nothing to connect to.
func (l *Local) Start() {}

// Close implements Shared: there is nothing to release.
func (l *Local) Close() {}

// Connected implements Shared: always.
func (l *Local) Connected() <-chan struct{} { return l.connected }

// Healthy implements Shared: always.
func (l *Local) Healthy() bool { return true }

// Replicated is false: a Local is this process's own.
func (l *Local) Replicated() bool { return false }

// keys appends the unexpired keys with prefix that out lacks.
func (m *Memory) keys(prefix string, out []string) []string {
	now := time.Now()
	seen := make(map[string]struct{}, len(out))
	for _, k := range out {
		seen[k] = struct{}{}
	}
	for i := range m.shards {
		s := &m.shards[i]
		s.mu.Lock()
		for k, el := range s.items {
			if _, dup := seen[k]; !dup && strings.HasPrefix(k, prefix) && !now.After(el.Value.(*memEntry).expires) {
				out = append(out, k)
			}
		}
		s.mu.Unlock()
	}
	return out
}

var (
	_ Shared = (*Local)(nil)
	_ Shared = (*Hybrid)(nil)
)

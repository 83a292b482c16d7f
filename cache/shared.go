package cache

import (
	"context"
	"strings"
	"sync"
	"time"
)

// Shared is what the replicas of a deployment share. Local implements it
// for one process, Hybrid across the replicas of a Valkey deployment.
// Errors are ErrUnavailable: the answer is unknown (the shared tier is
// away), never "missing".
type Shared interface {
	// Store: Set and Delete are announced to the other replicas, which
	// drop their copies.
	Store
	// Add stores value under key for ttl and reports true, unless key
	// exists: of concurrent callers on every replica, exactly one wins.
	Add(ctx context.Context, key string, value []byte, ttl time.Duration) (bool, error)
	// SetShared stores and announces value without keeping it in the L1
	// that holds sessions (so it never competes with them); on failure
	// it keeps nothing and the caller retries.
	SetShared(ctx context.Context, key string, value []byte, ttl time.Duration) error
	// GetShared reads what SetShared wrote, without filling L1.
	GetShared(ctx context.Context, key string) ([]byte, bool, error)

	// TryLease takes key for ttl unless another token holds it; taking it
	// again with the same token succeeds and extends it (a retry after a
	// lost answer finds the lease its own).
	TryLease(ctx context.Context, key, token string, ttl time.Duration) (bool, error)
	// RenewLease extends key to ttl from now if token still holds it.
	RenewLease(ctx context.Context, key, token string, ttl time.Duration) (bool, error)
	// ReleaseLease frees key if token still holds it.
	ReleaseLease(ctx context.Context, key, token string) error
	// PublishLeased stores value under key for ttl and announces it, only
	// while token holds lease (false: it does not, nothing was written).
	// lease and key share a hash tag (LeaseKey, RefreshKey).
	PublishLeased(ctx context.Context, lease, token, key string, value []byte, ttl time.Duration) (bool, error)

	// Watch returns a channel closed when key is changed by another
	// writer; stop releases it.
	Watch(key string) (changed <-chan struct{}, stop func())
	// Follow registers a long-lived listener of the changes of keys with a
	// prefix, told to resynchronise whenever announcements may have been
	// missed (and once the stream is first up).
	Follow(f Follower)
	// Scan returns the keys that start with prefix (meant for small sets:
	// revocations). complete is false when part of the deployment (a
	// cluster master) did not answer; err is ErrUnavailable when none did.
	Scan(ctx context.Context, prefix string) (keys []string, complete bool, err error)

	// Start connects in the background; Close writes back what it can and
	// releases the connections. Connected is closed once the shared tier
	// was first reached; Healthy reports whether it is reachable now.
	Start()
	Close()
	Connected() <-chan struct{}
	Healthy() bool
	// Replicated reports whether other processes share this backend:
	// what it holds may be news to this one (Valkey), or not (Local).
	Replicated() bool
}

// Follower is told of changes to keys with a prefix made by other
// replicas, and to resynchronise when announcements may have been missed.
type Follower struct {
	Prefix string
	// Changed runs for each announced key (off the caller's path on Valkey).
	Changed func(key string)
	// Resync runs when the announcement stream is (re)established.
	Resync func()
}

type followers struct {
	mu   sync.Mutex
	list []Follower
}

func (fs *followers) add(f Follower) {
	fs.mu.Lock()
	fs.list = append(fs.list, f)
	fs.mu.Unlock()
}

// matching returns the followers of key.
func (fs *followers) matching(key string) []Follower {
	fs.mu.Lock()
	defer fs.mu.Unlock()
	var out []Follower
	for _, f := range fs.list {
		if f.Changed != nil && strings.HasPrefix(key, f.Prefix) {
			out = append(out, f)
		}
	}
	return out
}

func (fs *followers) all() []Follower {
	fs.mu.Lock()
	defer fs.mu.Unlock()
	return append([]Follower(nil), fs.list...)
}

// watchers wakes waiters when a key changes.
type watchers struct {
	mu sync.Mutex
	m  map[string]map[chan struct{}]struct{}
}

func (w *watchers) watch(key string) (<-chan struct{}, func()) {
	ch := make(chan struct{})
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

package refresh

import (
	"context"
	"errors"
	"sync"
	"time"
)

// fakeValkey is an in-memory stand-in for the shared Valkey, on the clock
// of the test's synctest bubble, so lease expiry and heartbeats can be
// tested in virtual time. Each replica sees it through a fakeReplica,
// whose calls can be made to fail.
type fakeValkey struct {
	mu      sync.Mutex
	leases  map[string]fakeEntry
	values  map[string]fakeEntry
	watches map[string]map[chan struct{}]*fakeReplica
}

type fakeEntry struct {
	v       string
	expires time.Time
}

func newFakeValkey() *fakeValkey {
	return &fakeValkey{leases: map[string]fakeEntry{}, values: map[string]fakeEntry{},
		watches: map[string]map[chan struct{}]*fakeReplica{}}
}

var errTimeout = errors.New("valkey: i/o timeout")

// fakeReplica is one replica's connection to a fakeValkey.
type fakeReplica struct {
	kv *fakeValkey
	mu sync.Mutex
	// fail, when set, decides whether a call fails (before it reaches the
	// server) with errTimeout; op is the method's name.
	fail func(op string) bool
	// lostAnswers makes the next n TryLease calls take effect but report
	// errTimeout, as a call whose answer was lost.
	lostAnswers int
	calls       map[string]int
}

func (kv *fakeValkey) replica() *fakeReplica { return &fakeReplica{kv: kv, calls: map[string]int{}} }

func (r *fakeReplica) failing(op string) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.calls[op]++
	return r.fail != nil && r.fail(op)
}

func (r *fakeReplica) setFail(f func(op string) bool) {
	r.mu.Lock()
	r.fail = f
	r.mu.Unlock()
}

func (r *fakeReplica) count(op string) int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.calls[op]
}

// live returns m[key] if it has not expired; kv.mu is held.
func live(m map[string]fakeEntry, key string) (string, bool) {
	e, ok := m[key]
	if !ok || !time.Now().Before(e.expires) {
		delete(m, key)
		return "", false
	}
	return e.v, true
}

func (r *fakeReplica) TryLease(_ context.Context, key, token string, ttl time.Duration) (bool, error) {
	if r.failing("TryLease") {
		return false, errTimeout
	}
	kv := r.kv
	kv.mu.Lock()
	v, held := live(kv.leases, key)
	got := !held || v == token
	if got {
		kv.leases[key] = fakeEntry{token, time.Now().Add(ttl)}
	}
	kv.mu.Unlock()
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.lostAnswers > 0 {
		r.lostAnswers--
		return false, errTimeout
	}
	return got, nil
}

func (r *fakeReplica) RenewLease(_ context.Context, key, token string, ttl time.Duration) (bool, error) {
	if r.failing("RenewLease") {
		return false, errTimeout
	}
	kv := r.kv
	kv.mu.Lock()
	defer kv.mu.Unlock()
	if v, held := live(kv.leases, key); !held || v != token {
		return false, nil
	}
	kv.leases[key] = fakeEntry{token, time.Now().Add(ttl)}
	return true, nil
}

func (r *fakeReplica) ReleaseLease(_ context.Context, key, token string) error {
	if r.failing("ReleaseLease") {
		return errTimeout
	}
	kv := r.kv
	kv.mu.Lock()
	defer kv.mu.Unlock()
	if v, held := live(kv.leases, key); held && v == token {
		delete(kv.leases, key)
	}
	return nil
}

func (r *fakeReplica) Get(_ context.Context, key string) ([]byte, bool, error) {
	if r.failing("Get") {
		return nil, false, errTimeout
	}
	kv := r.kv
	kv.mu.Lock()
	defer kv.mu.Unlock()
	v, ok := live(kv.values, key)
	if !ok {
		return nil, false, nil
	}
	return []byte(v), true, nil
}

// set writes a value directly (what another party could write).
func (kv *fakeValkey) set(key, v string, ttl time.Duration) {
	kv.mu.Lock()
	kv.values[key] = fakeEntry{v, time.Now().Add(ttl)}
	kv.mu.Unlock()
}

func (kv *fakeValkey) get(key string) (string, bool) {
	kv.mu.Lock()
	defer kv.mu.Unlock()
	return live(kv.values, key)
}

func (r *fakeReplica) PublishLeased(_ context.Context, lease, token, key string, value []byte, ttl time.Duration) (bool, error) {
	if r.failing("PublishLeased") {
		return false, errTimeout
	}
	kv := r.kv
	kv.mu.Lock()
	if v, held := live(kv.leases, lease); !held || v != token {
		kv.mu.Unlock()
		return false, nil
	}
	kv.values[key] = fakeEntry{string(value), time.Now().Add(ttl)}
	var wake []chan struct{}
	for ch, owner := range kv.watches[key] {
		if owner != r { // a replica skips its own announcements
			wake = append(wake, ch)
			delete(kv.watches[key], ch)
		}
	}
	kv.mu.Unlock()
	for _, ch := range wake {
		close(ch)
	}
	return true, nil
}

func (r *fakeReplica) Watch(key string) (<-chan struct{}, func()) {
	ch := make(chan struct{})
	kv := r.kv
	kv.mu.Lock()
	if kv.watches[key] == nil {
		kv.watches[key] = map[chan struct{}]*fakeReplica{}
	}
	kv.watches[key][ch] = r
	kv.mu.Unlock()
	return ch, func() {
		kv.mu.Lock()
		delete(kv.watches[key], ch)
		kv.mu.Unlock()
	}
}

var _ Shared = (*fakeReplica)(nil)

// advance moves a synctest bubble's fake clock on by d: the controllable
// clock of the coordinator tests (no real time passes).
func advance(d time.Duration) { <-time.After(d) }

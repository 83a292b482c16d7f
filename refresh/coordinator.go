// Package refresh makes sure a refresh token is spent once. IdPs that rotate
// refresh tokens (Keycloak, Zitadel, Okta, Authentik...) answer invalid_grant
// to the second use of one, so concurrent requests of one session must share
// a single grant, and requests that arrive just after it must adopt its
// result instead of spending the old token again.
package refresh

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"sync"
	"sync/atomic"
	"time"
)

// ErrClosed is returned after Close.
var ErrClosed = errors.New("refresh coordinator is closed")

// Options tune a Coordinator. Zero values take the documented defaults.
type Options struct {
	// HandOff is how long a successful or definitively failed grant's result
	// is handed to late requests that still carry the spent refresh token.
	// Default: 30 s.
	HandOff time.Duration
	// ErrorHold is how long a transient failure (IdP down) is handed out
	// before the next attempt, so an outage is not hammered. Default: 5 s.
	ErrorHold time.Duration
	// GrantTimeout bounds one grant. Default: 30 s.
	GrantTimeout time.Duration
	// IsDefinitive tells errors that end a session (invalid_grant) from
	// transient ones. Default: every error is transient.
	IsDefinitive func(error) bool
	// Shared, when set, extends the one-grant rule across replicas (see
	// Shared). Without it, or while it fails, the rule holds in-process.
	Shared Shared
	// Lease is how long a replica may hold the right to spend a refresh
	// token before another takes over (a dead leader). Default: 10 s.
	Lease time.Duration
	// Poll is how often a waiting replica looks for the result when no
	// notification came. Default: 250 ms.
	Poll time.Duration
}

// Shared is the cross-replica state a Coordinator needs: leases, results
// and change notifications (the oidc app's Valkey-backed cache).
type Shared interface {
	// TryLease takes key for ttl unless someone holds it; token fences Release.
	TryLease(ctx context.Context, key, token string, ttl time.Duration) (bool, error)
	// ReleaseLease frees key if token still holds it.
	ReleaseLease(ctx context.Context, key, token string) error
	Get(ctx context.Context, key string) ([]byte, bool, error)
	Set(ctx context.Context, key string, value []byte, ttl time.Duration) error
	// Watch returns a channel closed when another replica announces a
	// change of key; stop releases it.
	Watch(key string) (changed <-chan struct{}, stop func())
}

// Codec turns a grant's outcome into bytes another replica can adopt, and
// back. Encode must seal (encrypt) token material: it leaves the process.
type Codec[T any] struct {
	Encode func(val T, err error) ([]byte, error)
	Decode func([]byte) (T, error)
}

// Coordinator runs at most one grant per refresh token at a time in this
// process and remembers each result for a hand-off window. T is the result
// of a grant (new tokens and what was verified of them).
type Coordinator[T any] struct {
	opts   Options
	ctx    context.Context
	cancel context.CancelFunc
	wg     sync.WaitGroup

	mu        sync.Mutex
	flights   map[[32]byte]*flight[T]
	nextSweep time.Time

	grants, adopted, shared atomic.Int64
}

type flight[T any] struct {
	done    chan struct{}
	val     T
	err     error
	expires time.Time // set when done
}

// New returns a Coordinator; Close releases it.
func New[T any](o Options) *Coordinator[T] {
	if o.HandOff <= 0 {
		o.HandOff = 30 * time.Second
	}
	if o.ErrorHold <= 0 {
		o.ErrorHold = 5 * time.Second
	}
	if o.GrantTimeout <= 0 {
		o.GrantTimeout = 30 * time.Second
	}
	if o.IsDefinitive == nil {
		o.IsDefinitive = func(error) bool { return false }
	}
	if o.Lease <= 0 {
		o.Lease = 10 * time.Second
	}
	if o.Poll <= 0 {
		o.Poll = 250 * time.Millisecond
	}
	ctx, cancel := context.WithCancel(context.Background())
	return &Coordinator[T]{opts: o, ctx: ctx, cancel: cancel, flights: make(map[[32]byte]*flight[T])}
}

// Do returns the result of spending refreshToken with grant. Concurrent
// callers with the same token share one grant; callers within the hand-off
// window after it get its result. The grant runs on the coordinator's own
// context, so a leader whose client goes away does not fail its followers;
// each caller waits at most until its own ctx ends.
//
// With a Shared backend and a codec, replicas coordinate too: the result of
// another replica's grant is adopted, and only the lease holder spends the
// token. codec may be nil for in-process coordination only.
func (c *Coordinator[T]) Do(ctx context.Context, refreshToken string, grant func(context.Context) (T, error), codec *Codec[T]) (T, error) {
	key := sha256.Sum256([]byte(refreshToken))
	now := time.Now()
	c.mu.Lock()
	if c.ctx.Err() != nil {
		c.mu.Unlock()
		var zero T
		return zero, ErrClosed
	}
	if now.After(c.nextSweep) {
		c.sweep(now)
	}
	f, ok := c.flights[key]
	if ok && isDone(f) && now.After(f.expires) {
		ok = false
	}
	if !ok {
		f = &flight[T]{done: make(chan struct{})}
		c.flights[key] = f
		c.wg.Add(1)
		go c.run(f, key, grant, codec)
	}
	c.mu.Unlock()

	select {
	case <-f.done:
		return f.val, f.err
	case <-ctx.Done():
		var zero T
		return zero, ctx.Err()
	}
}

func (c *Coordinator[T]) run(f *flight[T], key [32]byte, grant func(context.Context) (T, error), codec *Codec[T]) {
	defer c.wg.Done()
	ctx, cancel := context.WithTimeout(c.ctx, c.opts.GrantTimeout)
	defer cancel()
	var val T
	var err error
	if c.opts.Shared != nil && codec != nil {
		val, err = c.acrossReplicas(ctx, hex.EncodeToString(key[:]), grant, codec)
	} else {
		c.grants.Add(1)
		val, err = grant(ctx)
	}
	hold := c.opts.HandOff
	if err != nil && !c.opts.IsDefinitive(err) {
		hold = c.opts.ErrorHold
	}
	c.mu.Lock()
	f.val, f.err, f.expires = val, err, time.Now().Add(hold)
	close(f.done)
	c.mu.Unlock()
}

func isDone[T any](f *flight[T]) bool {
	select {
	case <-f.done:
		return true
	default:
		return false
	}
}

// sweep drops finished flights past their window; c.mu is held.
func (c *Coordinator[T]) sweep(now time.Time) {
	for k, f := range c.flights {
		if isDone(f) && now.After(f.expires) {
			delete(c.flights, k)
		}
	}
	c.nextSweep = now.Add(c.opts.HandOff)
}

// acrossReplicas is the protocol between replicas for one refresh token:
//
//  1. a result published by another replica (the hand-off) is adopted;
//  2. otherwise the replica that takes the lease spends the token, after
//     checking the hand-off once more (it may have appeared meanwhile), and
//     publishes the outcome (success or invalid_grant) for the others;
//  3. the others wait for its announcement (polling as a fallback) and take
//     the lease over if it expires without a result (a dead leader).
//
// A transient failure is not published: the token may still be good. If
// the shared state fails, the grant runs locally (in-process coordination
// still holds), so Valkey being down never blocks a refresh.
func (c *Coordinator[T]) acrossReplicas(ctx context.Context, id string, grant func(context.Context) (T, error), codec *Codec[T]) (T, error) {
	sh := c.opts.Shared
	resultKey, leaseKey := "rfr:"+id, "lease:"+id
	local := func() (T, error) {
		c.grants.Add(1)
		return grant(ctx)
	}
	for {
		if b, ok, err := sh.Get(ctx, resultKey); err != nil {
			return local()
		} else if ok {
			c.adopted.Add(1)
			return codec.Decode(b)
		}
		token := randomToken()
		got, err := sh.TryLease(ctx, leaseKey, token, c.opts.Lease)
		if err != nil {
			return local()
		}
		if got {
			if b, ok, _ := sh.Get(ctx, resultKey); ok {
				_ = sh.ReleaseLease(context.WithoutCancel(ctx), leaseKey, token)
				c.adopted.Add(1)
				return codec.Decode(b)
			}
			c.grants.Add(1)
			c.shared.Add(1)
			val, err := grant(ctx)
			if err == nil || c.opts.IsDefinitive(err) {
				if b, encErr := codec.Encode(val, err); encErr == nil {
					_ = sh.Set(context.WithoutCancel(ctx), resultKey, b, c.opts.HandOff)
				}
			}
			_ = sh.ReleaseLease(context.WithoutCancel(ctx), leaseKey, token)
			return val, err
		}
		changed, stop := sh.Watch(resultKey)
		t := time.NewTimer(c.opts.Poll)
		select {
		case <-changed:
		case <-t.C:
		case <-ctx.Done():
			t.Stop()
			stop()
			var zero T
			return zero, ctx.Err()
		}
		t.Stop()
		stop()
	}
}

func randomToken() string {
	b := make([]byte, 16)
	rand.Read(b)
	return hex.EncodeToString(b)
}

// Grants reports how many grants this coordinator has started.
func (c *Coordinator[T]) Grants() int64 { return c.grants.Load() }

// Adopted reports how many results of other replicas' grants were adopted.
func (c *Coordinator[T]) Adopted() int64 { return c.adopted.Load() }

// Close cancels grants in flight and waits for them to return.
func (c *Coordinator[T]) Close() {
	c.cancel()
	c.wg.Wait()
}

// Destruct implements caddy.Destructor so a Coordinator can live in a UsagePool.
func (c *Coordinator[T]) Destruct() error { c.Close(); return nil }

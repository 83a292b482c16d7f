// Package refresh makes sure a refresh token is spent once. IdPs that rotate
// refresh tokens (Keycloak, Zitadel, Okta, Authentik...) answer invalid_grant
// to the second use of one, so concurrent requests of one session must share
// a single grant, and requests that arrive just after it must adopt its
// result instead of spending the old token again.
package refresh

import (
	"context"
	"crypto/sha256"
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

	grants atomic.Int64
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
	ctx, cancel := context.WithCancel(context.Background())
	return &Coordinator[T]{opts: o, ctx: ctx, cancel: cancel, flights: make(map[[32]byte]*flight[T])}
}

// Do returns the result of spending refreshToken with grant. Concurrent
// callers with the same token share one grant; callers within the hand-off
// window after it get its result. The grant runs on the coordinator's own
// context, so a leader whose client goes away does not fail its followers;
// each caller waits at most until its own ctx ends.
func (c *Coordinator[T]) Do(ctx context.Context, refreshToken string, grant func(context.Context) (T, error)) (T, error) {
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
		go c.run(f, grant)
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

func (c *Coordinator[T]) run(f *flight[T], grant func(context.Context) (T, error)) {
	defer c.wg.Done()
	ctx, cancel := context.WithTimeout(c.ctx, c.opts.GrantTimeout)
	defer cancel()
	c.grants.Add(1)
	val, err := grant(ctx)
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

// Grants reports how many grants this coordinator has started.
func (c *Coordinator[T]) Grants() int64 { return c.grants.Load() }

// Close cancels grants in flight and waits for them to return.
func (c *Coordinator[T]) Close() {
	c.cancel()
	c.wg.Wait()
}

// Destruct implements caddy.Destructor so a Coordinator can live in a UsagePool.
func (c *Coordinator[T]) Destruct() error { c.Close(); return nil }

// Package refresh makes sure a refresh token is spent once. IdPs that rotate
// refresh tokens (Keycloak, Zitadel, Okta, Authentik...) answer invalid_grant
// to the second use of one, so concurrent requests of one session must share
// a single grant, and requests that arrive just after it must adopt its
// result instead of spending the old token again.
//
// One Coordinator serves the whole process, across config reloads: a grant
// in flight belongs to no request and to no config, so neither a client
// that goes away nor a reload nor Close cancels it, and its result goes to
// whoever asks next for the same token.
package refresh

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"github.com/caddy-oidc/caddy-oidc/cache"
)

// ErrClosed is returned after Close.
var ErrClosed = errors.New("refresh coordinator is closed")

// ErrPending means the refresh did not finish for this caller: its own
// context ended first, or another replica held the lease for longer than
// any grant may take. The token may be being spent right now (the grant
// goes on and its result is handed to the next caller), so it is never
// definitive: serve the session with its current access token while that
// is valid, else answer 503.
var ErrPending = errors.New("refresh still pending")

// Defaults of Via.
const (
	DefaultLease   = 10 * time.Second
	DefaultHandOff = 30 * time.Second
	// MinLease is the shortest lease used: shorter ones (a JSON "1", read as
	// 1 ns) are raised to it rather than silently disabling coordination.
	MinLease = 100 * time.Millisecond
)

// Options tune a Coordinator. Zero values take the documented defaults.
type Options struct {
	// ErrorHold is how long a transient failure (IdP down) is handed out
	// before the next attempt, so an outage is not hammered. Default: 5 s.
	ErrorHold time.Duration
	// GrantTimeout bounds one grant: it is the only deadline of the grant's
	// context. Default: 30 s.
	GrantTimeout time.Duration
	// IsDefinitive tells errors that end a session (invalid_grant) from
	// transient ones. Default: every error is transient.
	IsDefinitive func(error) bool
	// Poll is how often a waiting replica looks for the result when no
	// notification came. Default: 250 ms.
	Poll time.Duration
	// Now is the coordinator's clock (hand-off windows, waiting limits);
	// timers run on the runtime's, which a synctest bubble controls.
	// Default: time.Now.
	Now func() time.Time
}

// Via says how one call coordinates beyond this process. It comes with each
// call (from the config that serves the request), so a reload that changes
// it affects new flights only.
type Via struct {
	// Shared extends the one-grant rule to every user of it (the replicas
	// of a deployment); nil keeps it to this Coordinator.
	Shared Shared
	// Lease is how long a replica's right to spend a token lasts without a
	// heartbeat: how soon another replica takes over from one that died
	// mid-grant, and how long a replica that cannot reach Shared waits
	// before it spends the token itself. Default: DefaultLease.
	Lease time.Duration
	// HandOff is how long a successful or definitively failed grant's
	// result is handed to late requests that still carry the spent token.
	// Default: DefaultHandOff.
	HandOff time.Duration
}

func (v Via) withDefaults() Via {
	if v.Lease <= 0 {
		v.Lease = DefaultLease
	}
	v.Lease = max(v.Lease, MinLease)
	if v.HandOff <= 0 {
		v.HandOff = DefaultHandOff
	}
	return v
}

// Shared is the part of cache.Shared a Coordinator needs: fenced leases,
// results written under a lease, and change notifications. The oidc app
// passes its cache backend (in memory, a process is one replica; with
// Valkey, replicas coordinate). Errors are transient: the answer is unknown.
type Shared interface {
	// TryLease takes key for ttl unless another token holds it; taking it
	// again with the same token succeeds and extends it.
	TryLease(ctx context.Context, key, token string, ttl time.Duration) (bool, error)
	// RenewLease extends key to ttl if token still holds it.
	RenewLease(ctx context.Context, key, token string, ttl time.Duration) (bool, error)
	// ReleaseLease frees key if token still holds it.
	ReleaseLease(ctx context.Context, key, token string) error
	Get(ctx context.Context, key string) ([]byte, bool, error)
	// PublishLeased stores value under key for ttl and announces it, only
	// while token holds lease (false: it does not, nothing was written).
	PublishLeased(ctx context.Context, lease, token, key string, value []byte, ttl time.Duration) (bool, error)
	// Watch returns a channel closed when another replica announces a
	// change of key; stop releases it.
	Watch(key string) (changed <-chan struct{}, stop func())
}

// Codec turns a grant's outcome into bytes another replica can adopt, and
// back. Encode must seal (encrypt) token material: it leaves the process.
// Decode errors must not be definitive: a hand-off that does not open says
// the token was spent, not that the session is over.
type Codec[T any] struct {
	Encode func(val T, err error) ([]byte, error)
	Decode func([]byte) (T, error)
}

// Coordinator runs at most one grant per refresh token at a time in this
// process and remembers each result for a hand-off window. T is the result
// of a grant (new tokens and what was verified of them).
type Coordinator[T any] struct {
	opts Options
	wg   sync.WaitGroup

	mu        sync.Mutex
	closed    bool
	flights   map[[32]byte]*flight[T]
	nextSweep time.Time

	grants, adopted, fallbacks, leasesLost atomic.Int64
}

type flight[T any] struct {
	done    chan struct{}
	val     T
	err     error
	expires time.Time // set when done
}

// sweepEvery is how often finished flights past their window are dropped.
const sweepEvery = 5 * time.Second

// New returns a Coordinator. It starts no goroutine of its own: only
// flights run, each until its grant and hand-off are done.
func New[T any](o Options) *Coordinator[T] {
	if o.ErrorHold <= 0 {
		o.ErrorHold = 5 * time.Second
	}
	if o.GrantTimeout <= 0 {
		o.GrantTimeout = 30 * time.Second
	}
	if o.IsDefinitive == nil {
		o.IsDefinitive = func(error) bool { return false }
	}
	if o.Poll <= 0 {
		o.Poll = 250 * time.Millisecond
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	return &Coordinator[T]{opts: o, flights: make(map[[32]byte]*flight[T])}
}

// Do returns the result of spending refreshToken with grant. Concurrent
// callers with the same token share one grant; callers within the hand-off
// window after it get its result, whatever their via. The grant runs on a
// context of its own (bounded by GrantTimeout only): each caller waits at
// most until its own ctx ends, and then gets ErrPending while the grant
// goes on.
//
// With via.Shared and a codec, replicas coordinate too: the result of
// another replica's grant is adopted, and only the lease holder spends the
// token. codec may be nil for in-process coordination only. refreshToken
// should name its issuer and client too: two IdPs could issue equal tokens.
// The first caller's grant, codec and via run the flight; later callers
// (of any config) join it.
func (c *Coordinator[T]) Do(ctx context.Context, refreshToken string, grant func(context.Context) (T, error), codec *Codec[T], via Via) (T, error) {
	key := sha256.Sum256([]byte(refreshToken))
	now := c.opts.Now()
	c.mu.Lock()
	if c.closed {
		c.mu.Unlock()
		var zero T
		return zero, ErrClosed
	}
	if now.After(c.nextSweep) {
		c.sweep(now)
	}
	f, ok := c.flights[key]
	if ok && isDone(f) && !now.Before(f.expires) {
		ok = false
	}
	if !ok {
		f = &flight[T]{done: make(chan struct{})}
		c.flights[key] = f
		c.wg.Add(1)
		go c.run(f, key, grant, codec, via.withDefaults())
	}
	c.mu.Unlock()

	select {
	case <-f.done:
		return f.val, f.err
	case <-ctx.Done():
		if isDone(f) { // both were ready: the result wins
			return f.val, f.err
		}
		var zero T
		return zero, fmt.Errorf("%w (the grant goes on): %w", ErrPending, ctx.Err())
	}
}

func (c *Coordinator[T]) run(f *flight[T], key [32]byte, grant func(context.Context) (T, error), codec *Codec[T], via Via) {
	defer c.wg.Done()
	var val T
	var err error
	if via.Shared != nil && codec != nil {
		val, err = c.acrossReplicas(f, hex.EncodeToString(key[:]), grant, codec, via)
	} else {
		val, err = c.spend(grant)
	}
	c.finish(f, val, err, via)
}

// spend runs grant on a context that only its own deadline ends. A panic
// becomes a transient error: it must not take the process down (nothing
// above a flight's goroutine would recover it).
func (c *Coordinator[T]) spend(grant func(context.Context) (T, error)) (val T, err error) {
	c.grants.Add(1)
	ctx, cancel := context.WithTimeout(context.Background(), c.opts.GrantTimeout)
	defer cancel()
	defer func() {
		if r := recover(); r != nil {
			var zero T
			val, err = zero, fmt.Errorf("refresh grant panicked: %v", r)
		}
	}()
	return grant(ctx)
}

// finish hands val and err to the flight's callers (once).
func (c *Coordinator[T]) finish(f *flight[T], val T, err error, via Via) {
	hold := via.HandOff
	switch {
	case errors.Is(err, ErrPending):
		hold = 0 // the next caller looks again
	case err != nil && !c.opts.IsDefinitive(err):
		hold = c.opts.ErrorHold
	}
	c.mu.Lock()
	if !isDone(f) {
		f.val, f.err, f.expires = val, err, c.opts.Now().Add(hold)
		close(f.done)
	}
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
	c.nextSweep = now.Add(sweepEvery)
}

// acrossReplicas is the protocol between replicas for one refresh token:
//
//  1. a result published by another replica (the hand-off) is adopted;
//  2. otherwise the replica that takes the lease checks the hand-off once
//     more (it may have appeared meanwhile), spends the token while a
//     heartbeat keeps the lease, and publishes the outcome (success or
//     invalid_grant) only while the lease is still its own;
//  3. the others wait for its announcement (polling as a fallback) and take
//     the lease over if it expires without a result (a dead leader).
//
// A failed call to Shared is not a reason to spend the token: another
// replica may hold the lease. This replica keeps looking, and spends the
// token itself only once this key's calls have all failed for a whole lease
// period; by then no lease another replica took before the trouble can
// still hold (it is also how a cluster key whose master is down behaves).
// A transient grant failure is not published: the token may still be good.
func (c *Coordinator[T]) acrossReplicas(f *flight[T], id string, grant func(context.Context) (T, error), codec *Codec[T], via Via) (T, error) {
	sh := via.Shared
	resultKey, leaseKey := cache.RefreshKey(id), cache.LeaseKey(id)
	// One token for the whole flight: a lease taken by a call whose answer
	// was lost is found to be ours on the next try.
	token := randomToken()
	bg := context.Background()
	// Past this, any lease holder's grant has ended (GrantTimeout) and its
	// lease run out: waiting longer can only mean something is wrong.
	waitUntil := c.opts.Now().Add(c.opts.GrantTimeout + 2*via.Lease)
	var troubleSince time.Time
	for {
		// Watching before looking: an announcement in between is not lost.
		changed, stop := sh.Watch(resultKey)
		val, done, err := c.tryOnce(f, sh, leaseKey, resultKey, token, grant, codec, via)
		if done {
			stop()
			return val, err
		}
		now := c.opts.Now()
		if err != nil {
			if troubleSince.IsZero() {
				troubleSince = now
			}
			// A leader renews its lease for as long as its grant runs
			// (GrantTimeout at most): only after that and one more lease
			// can no other replica still be spending the token.
			if now.Sub(troubleSince) >= c.opts.GrantTimeout+via.Lease {
				stop()
				c.fallbacks.Add(1)
				return c.spendAlone(f, sh, leaseKey, resultKey, token, grant, codec, via)
			}
		} else {
			troubleSince = time.Time{}
		}
		if !now.Before(waitUntil) {
			stop()
			_ = sh.ReleaseLease(bg, leaseKey, token)
			var zero T
			return zero, fmt.Errorf("%w: another replica held the refresh lease for %s", ErrPending, c.opts.GrantTimeout+2*via.Lease)
		}
		t := time.NewTimer(c.opts.Poll)
		select {
		case <-changed:
		case <-t.C:
		}
		t.Stop()
		stop()
	}
}

// tryOnce is one round of the protocol: adopt, or lead, or neither (done
// false, with the error of the call that failed, if one did).
func (c *Coordinator[T]) tryOnce(f *flight[T], sh Shared, leaseKey, resultKey, token string, grant func(context.Context) (T, error), codec *Codec[T], via Via) (val T, done bool, err error) {
	bg := context.Background()
	b, found, err := sh.Get(bg, resultKey)
	if err == nil && found {
		c.adopted.Add(1)
		val, err = codec.Decode(b)
		return val, true, err
	}
	if err != nil {
		return val, false, err
	}
	got, err := sh.TryLease(bg, leaseKey, token, via.Lease)
	if err != nil || !got {
		return val, false, err
	}
	// The lease is ours (and stays ours if the next call fails: the retry
	// takes it again with the same token). A leader whose lease ended may
	// have published since we looked.
	if b, found, err = sh.Get(bg, resultKey); err != nil {
		return val, false, err
	}
	if found {
		_ = sh.ReleaseLease(bg, leaseKey, token)
		c.adopted.Add(1)
		val, err = codec.Decode(b)
		return val, true, err
	}
	val, err = c.lead(f, sh, leaseKey, resultKey, token, grant, codec, via)
	return val, true, err
}

// lead spends the token as the lease holder: a heartbeat renews the lease
// for as long as the grant runs (a slow IdP must not let another replica
// take over and spend the token again), the callers get the result as soon
// as it is known, and the outcome is published under the lease.
func (c *Coordinator[T]) lead(f *flight[T], sh Shared, leaseKey, resultKey, token string, grant func(context.Context) (T, error), codec *Codec[T], via Via) (T, error) {
	bg := context.Background()
	lost, stopBeat := c.heartbeat(sh, leaseKey, token, via.Lease)
	val, err := c.spend(grant)
	c.finish(f, val, err, via)
	if err == nil || c.opts.IsDefinitive(err) {
		if b, encErr := codec.Encode(val, err); encErr == nil {
			if !c.publish(sh, leaseKey, resultKey, token, b, via, lost) {
				lost.Store(true)
			}
		}
	}
	stopBeat()
	if lost.Load() {
		c.leasesLost.Add(1)
	}
	_ = sh.ReleaseLease(bg, leaseKey, token)
	return val, err
}

// heartbeat renews the lease every third of its length until stop; lost
// is set when Shared says another holder has it (renewal errors are retried
// at the next beat: the lease has two more beats of slack).
func (c *Coordinator[T]) heartbeat(sh Shared, key, token string, lease time.Duration) (lost *atomic.Bool, stop func()) {
	lost = new(atomic.Bool)
	done := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		t := time.NewTicker(lease / 3)
		defer t.Stop()
		for {
			select {
			case <-done:
				return
			case <-t.C:
				if held, err := sh.RenewLease(context.Background(), key, token, lease); err == nil && !held {
					lost.Store(true)
					return
				}
			}
		}
	}()
	return lost, func() { close(done); wg.Wait() }
}

// publish writes the hand-off under the lease, retrying transient errors
// (with the heartbeat still running) for up to the hand-off window: waiting
// replicas that find no result once the lease is released spend the token
// again. It reports false when the lease was found lost.
func (c *Coordinator[T]) publish(sh Shared, leaseKey, resultKey, token string, b []byte, via Via, lost *atomic.Bool) bool {
	deadline := c.opts.Now().Add(via.HandOff)
	backoff := 50 * time.Millisecond
	for {
		ok, err := sh.PublishLeased(context.Background(), leaseKey, token, resultKey, b, via.HandOff)
		if err == nil {
			return ok
		}
		if lost.Load() || !c.opts.Now().Add(backoff).Before(deadline) {
			return false // nothing was written
		}
		t := time.NewTimer(backoff)
		<-t.C
		backoff = min(backoff*2, via.Lease/3)
	}
}

// spendAlone spends the token while Shared has failed for a whole lease
// period. If Shared answers again by the end, the outcome is still
// published for replicas that would spend the token next, unless another
// replica has taken the lease or published meanwhile (one attempt).
func (c *Coordinator[T]) spendAlone(f *flight[T], sh Shared, leaseKey, resultKey, token string, grant func(context.Context) (T, error), codec *Codec[T], via Via) (T, error) {
	val, err := c.spend(grant)
	c.finish(f, val, err, via)
	if err != nil && !c.opts.IsDefinitive(err) {
		return val, err
	}
	bg := context.Background()
	if got, lerr := sh.TryLease(bg, leaseKey, token, via.Lease); lerr != nil || !got {
		return val, err
	}
	if _, found, gerr := sh.Get(bg, resultKey); gerr == nil && !found {
		if b, encErr := codec.Encode(val, err); encErr == nil {
			_, _ = sh.PublishLeased(bg, leaseKey, token, resultKey, b, via.HandOff)
		}
	}
	_ = sh.ReleaseLease(bg, leaseKey, token)
	return val, err
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

// Fallbacks reports how many grants ran without cross-replica coordination
// because the shared state failed for a whole lease period.
func (c *Coordinator[T]) Fallbacks() int64 { return c.fallbacks.Load() }

// LeasesLost reports grants whose lease another replica took before the
// result was published (the result was then not published: its holder's
// wins). Non-zero means Shared was unreachable for a lease period mid-grant.
func (c *Coordinator[T]) LeasesLost() int64 { return c.leasesLost.Load() }

// Close refuses new calls (ErrClosed) and waits until the flights in
// progress end or ctx ends, whichever is first; it never cancels a grant.
// It returns ctx's error if flights were still running.
func (c *Coordinator[T]) Close(ctx context.Context) error {
	c.mu.Lock()
	c.closed = true
	c.mu.Unlock()
	done := make(chan struct{})
	go func() { c.wg.Wait(); close(done) }()
	select {
	case <-done:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// destructWait bounds how long Destruct (a reload's cleanup) waits for
// flights: they finish on their own, it only gives them a chance first.
const destructWait = 2 * time.Second

// Destruct implements caddy.Destructor so a Coordinator can live in a
// UsagePool: Close, waiting at most destructWait.
func (c *Coordinator[T]) Destruct() error {
	ctx, cancel := context.WithTimeout(context.Background(), destructWait)
	defer cancel()
	_ = c.Close(ctx)
	return nil
}

package refresh

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"testing/synctest"
	"time"

	"github.com/caddy-oidc/caddy-oidc/cache"
)

// These tests run in synctest bubbles: time is virtual, so leases expire,
// heartbeats beat and slow IdPs answer exactly when the test says, with no
// real waiting. The same protocol against a real Valkey is in shared_test.go.

var errDefinitive = errors.New("invalid_grant")

func isDefinitive(err error) bool { return errors.Is(err, errDefinitive) }

func newTest() *Coordinator[string] {
	return New[string](Options{ErrorHold: 100 * time.Millisecond, IsDefinitive: isDefinitive})
}

var local = Via{HandOff: time.Second}

var errBadHandOff = errors.New("hand-off does not open")

// textCodec stands in for the handler's sealing codec.
var textCodec = &Codec[string]{
	Encode: func(v string, err error) ([]byte, error) {
		if err != nil {
			return []byte("!" + err.Error()), nil
		}
		return []byte("ok:" + v), nil
	},
	Decode: func(b []byte) (string, error) {
		s := string(b)
		switch {
		case strings.HasPrefix(s, "!"):
			return "", errDefinitive
		case strings.HasPrefix(s, "ok:"):
			return s[3:], nil
		}
		return "", errBadHandOff
	},
}

func resultKey(rt string) string {
	sum := sha256.Sum256([]byte(rt))
	return cache.RefreshKey(hex.EncodeToString(sum[:]))
}

// fakeIdP refuses a reused refresh token, as IdPs that rotate do, and
// takes delay to answer.
type fakeIdP struct {
	mu       sync.Mutex
	spent    map[string]bool
	attempts atomic.Int64
	delay    time.Duration
}

func newIdP(delay time.Duration) *fakeIdP { return &fakeIdP{spent: map[string]bool{}, delay: delay} }

func (i *fakeIdP) grant(rt, who string) func(context.Context) (string, error) {
	return func(ctx context.Context) (string, error) {
		i.attempts.Add(1)
		select {
		case <-time.After(i.delay):
		case <-ctx.Done():
			return "", ctx.Err()
		}
		i.mu.Lock()
		defer i.mu.Unlock()
		if i.spent[rt] {
			return "", errDefinitive
		}
		i.spent[rt] = true
		return "tokens-from-" + who, nil
	}
}

func TestOneGrantForConcurrentCallers(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		c := newTest()
		var calls atomic.Int64
		release := make(chan struct{})
		grant := func(context.Context) (string, error) {
			calls.Add(1)
			<-release
			return "new-tokens", nil
		}
		var wg sync.WaitGroup
		results := make([]string, 50)
		for i := range results {
			wg.Go(func() {
				v, err := c.Do(context.Background(), "rt-1", grant, nil, local)
				if err != nil {
					t.Error(err)
				}
				results[i] = v
			})
		}
		synctest.Wait() // every caller is waiting on the one grant
		close(release)
		wg.Wait()
		if calls.Load() != 1 {
			t.Errorf("%d grants for one refresh token, want 1", calls.Load())
		}
		for i, v := range results {
			if v != "new-tokens" {
				t.Errorf("caller %d got %q", i, v)
			}
		}
		// A late request with the spent token adopts the result (hand-off).
		if v, _ := c.Do(context.Background(), "rt-1", grant, nil, local); v != "new-tokens" || calls.Load() != 1 {
			t.Errorf("late caller: got %q after %d grants, want the handed-off result", v, calls.Load())
		}
		// Another token is another grant.
		if _, err := c.Do(context.Background(), "rt-2", grant, nil, local); err != nil || calls.Load() != 2 {
			t.Errorf("second token: %v, %d grants", err, calls.Load())
		}
		// Past the hand-off window, the token is spent again (it is the
		// caller's job not to come back with a spent token that late).
		advance(local.HandOff + time.Millisecond)
		_, _ = c.Do(context.Background(), "rt-1", grant, nil, local) // only the grant count matters
		if calls.Load() != 3 {
			t.Errorf("after the hand-off window: %d grants, want 3", calls.Load())
		}
	})
}

func TestErrorsAreHeldByKind(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		c := newTest()
		var calls atomic.Int64
		fail := func(err error) func(context.Context) (string, error) {
			return func(context.Context) (string, error) { calls.Add(1); return "", err }
		}
		// The leader: only what the follower gets is checked.
		_, _ = c.Do(context.Background(), "bad", fail(errDefinitive), nil, local)
		advance(500 * time.Millisecond) // past ErrorHold, within HandOff
		if _, err := c.Do(context.Background(), "bad", fail(errDefinitive), nil, local); !errors.Is(err, errDefinitive) || calls.Load() != 1 {
			t.Errorf("definitive error not handed to a follower: %v after %d grants", err, calls.Load())
		}
		calls.Store(0)
		// Only the grant counts matter here.
		_, _ = c.Do(context.Background(), "down", fail(errors.New("timeout")), nil, local)
		_, _ = c.Do(context.Background(), "down", fail(errors.New("timeout")), nil, local)
		if calls.Load() != 1 {
			t.Errorf("a transient error was not held for ErrorHold: %d grants, want 1", calls.Load())
		}
		advance(150 * time.Millisecond) // past ErrorHold
		_, _ = c.Do(context.Background(), "down", fail(errors.New("timeout")), nil, local)
		if calls.Load() != 2 {
			t.Errorf("a transient error was held past ErrorHold: %d grants, want 2", calls.Load())
		}
	})
}

// A caller whose request ends gets ErrPending (not definitive) and the
// grant goes on, on a context of its own: neither the callers nor Close end
// it, only GrantTimeout. Its result goes to the next caller.
func TestGrantOutlivesCallersAndClose(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		c := New[string](Options{GrantTimeout: time.Minute, IsDefinitive: isDefinitive})
		release := make(chan struct{})
		ctxs := make(chan context.Context, 1)
		started := time.Now()
		grant := func(ctx context.Context) (string, error) {
			ctxs <- ctx
			<-release
			return "rotated-tokens", ctx.Err()
		}
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Millisecond)
		defer cancel()
		_, err := c.Do(ctx, "slow", grant, nil, local)
		if !errors.Is(err, ErrPending) || !errors.Is(err, context.DeadlineExceeded) || isDefinitive(err) {
			t.Errorf("caller whose deadline passed: %v, want ErrPending wrapping its deadline", err)
		}
		gctx := <-ctxs
		if gctx.Err() != nil {
			t.Fatalf("the grant's context ended with the caller's: %v", gctx.Err())
		}
		if d, ok := gctx.Deadline(); !ok || d.Sub(started) != time.Minute {
			t.Errorf("grant deadline %v after start, want GrantTimeout (1m)", d.Sub(started))
		}

		cctx, ccancel := context.WithTimeout(context.Background(), time.Second)
		defer ccancel()
		if err := c.Close(cctx); !errors.Is(err, context.DeadlineExceeded) {
			t.Errorf("Close with a grant in flight: %v, want its bound reached", err)
		}
		if gctx.Err() != nil {
			t.Fatalf("Close cancelled the grant in flight: %v", gctx.Err())
		}
		if _, err := c.Do(context.Background(), "after", nil, nil, local); !errors.Is(err, ErrClosed) {
			t.Errorf("after Close: got %v, want ErrClosed", err)
		}
		close(release)
		if err := c.Close(context.Background()); err != nil {
			t.Errorf("Close after the grant ended: %v", err)
		}
	})
}

// After a reload the new config's requests (with another Via: other lease,
// hand-off, cache set) join the grant the old config started, and adopt
// its result: one coordinator per process, Via per call.
func TestReloadJoinsTheFlight(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		kv := newFakeValkey()
		c := New[string](Options{IsDefinitive: isDefinitive})
		idp := newIdP(3 * time.Second)
		oldVia := Via{Shared: kv.replica(), Lease: 2 * time.Second, HandOff: 10 * time.Second}
		newVia := Via{Shared: kv.replica(), Lease: 5 * time.Second, HandOff: 31 * time.Second}
		var wg sync.WaitGroup
		var got [2]string
		wg.Go(func() { got[0], _ = c.Do(context.Background(), "rt", idp.grant("rt", "old"), textCodec, oldVia) })
		advance(time.Second) // the reload, mid-grant
		wg.Go(func() { got[1], _ = c.Do(context.Background(), "rt", idp.grant("rt", "new"), textCodec, newVia) })
		wg.Wait()
		advance(5 * time.Second)
		late, err := c.Do(context.Background(), "rt", idp.grant("rt", "late"), textCodec, newVia)
		if idp.attempts.Load() != 1 || got[0] != "tokens-from-old" || got[1] != got[0] || late != got[0] || err != nil {
			t.Errorf("%d grants; old config %q, new config %q, late %q %v; want 1 grant shared by all", idp.attempts.Load(), got[0], got[1], late, err)
		}
	})
}

// replicas returns n coordinators sharing one fake Valkey.
func replicas(n int, o Options) (*fakeValkey, []*Coordinator[string], []*fakeReplica) {
	kv := newFakeValkey()
	var cs []*Coordinator[string]
	var rs []*fakeReplica
	for range n {
		o.IsDefinitive = isDefinitive
		cs = append(cs, New[string](o))
		rs = append(rs, kv.replica())
	}
	return kv, cs, rs
}

// Issue 16.2: a grant slower than the lease. Without a heartbeat, the lease
// expires mid-grant and a waiting replica spends the token again.
func TestSlowGrantKeepsTheLease(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		_, cs, rs := replicas(3, Options{})
		lease := time.Second
		idp := newIdP(lease * 3 / 2)
		var wg sync.WaitGroup
		var failures atomic.Int64
		burst := func(who string) {
			for i := range 60 {
				wg.Go(func() {
					via := Via{Shared: rs[i%3], Lease: lease, HandOff: 30 * time.Second}
					if v, err := cs[i%3].Do(context.Background(), "rt", idp.grant("rt", who), textCodec, via); err != nil || v != "tokens-from-first" {
						failures.Add(1)
					}
				})
			}
		}
		burst("first")
		advance(lease * 6 / 5) // a second burst once the lease would have run out
		burst("second")
		wg.Wait()
		var adopted int64
		for _, c := range cs {
			adopted += c.Adopted()
		}
		if idp.attempts.Load() != 1 || failures.Load() != 0 || adopted != 2 {
			t.Errorf("grant of 1.5x the lease, 3 replicas x 40 callers: %d grants, %d failed callers, %d adoptions; want 1, 0, 2",
				idp.attempts.Load(), failures.Load(), adopted)
		}
	})
}

// Issue 16.3: one failed call while another replica holds the lease is no
// reason to spend the token.
func TestOneValkeyErrorKeepsWaiting(t *testing.T) {
	for _, op := range []string{"Get", "TryLease"} {
		t.Run(op, func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				_, cs, rs := replicas(2, Options{})
				via := func(i int) Via { return Via{Shared: rs[i], Lease: time.Second} }
				idp := newIdP(2 * time.Second)
				a := make(chan string, 1)
				go func() { v, _ := cs[0].Do(context.Background(), "rt", idp.grant("rt", "a"), textCodec, via(0)); a <- v }()
				synctest.Wait() // a holds the lease and is at the IdP
				var once atomic.Bool
				rs[1].setFail(func(o string) bool { return o == op && once.CompareAndSwap(false, true) })
				b, err := cs[1].Do(context.Background(), "rt", idp.grant("rt", "b"), textCodec, via(1))
				if idp.attempts.Load() != 1 || err != nil || b != "tokens-from-a" || <-a != b {
					t.Errorf("one failed %s on b: %d grants, b got %q %v; want 1 grant and a's tokens", op, idp.attempts.Load(), b, err)
				}
			})
		})
	}
}

// Only a Valkey that fails every call for as long as any leader's grant
// could still run (GrantTimeout) plus a lease lets a replica spend the
// token without coordination; callers that cannot wait that long get
// ErrPending meanwhile.
func TestFailingForALeaseFallsBackToLocal(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		_, cs, rs := replicas(1, Options{})
		c, r := cs[0], rs[0]
		r.setFail(func(string) bool { return true })
		lease := 2 * time.Second
		via := Via{Shared: r, Lease: lease}
		idp := newIdP(0)
		start := time.Now()
		ctx, cancel := context.WithTimeout(context.Background(), 500*time.Millisecond)
		defer cancel()
		if _, err := c.Do(ctx, "rt", idp.grant("rt", "b"), textCodec, via); !errors.Is(err, ErrPending) || idp.attempts.Load() != 0 {
			t.Errorf("within the lease period: %v after %d grants, want ErrPending and none", err, idp.attempts.Load())
		}
		v, err := c.Do(context.Background(), "rt", idp.grant("rt", "b"), textCodec, via)
		took := time.Since(start)
		if err != nil || v != "tokens-from-b" || idp.attempts.Load() != 1 || c.Fallbacks() != 1 {
			t.Fatalf("fallback: %q %v, %d grants, %d fallbacks", v, err, idp.attempts.Load(), c.Fallbacks())
		}
		want := 30*time.Second + lease // the default GrantTimeout, then a lease
		if took < want || took > want+time.Second {
			t.Errorf("spent the token alone after %s, want %s of failures", took, want)
		}
	})
}

// A replica that waits past any grant's bound gives up with ErrPending
// (held for no one: the next caller looks again), never with a grant.
func TestLongLeaseHolderIsNeverRaced(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		kv := newFakeValkey()
		a := New[string](Options{IsDefinitive: isDefinitive, GrantTimeout: time.Minute})
		b := New[string](Options{IsDefinitive: isDefinitive, GrantTimeout: time.Second})
		ra, rb := kv.replica(), kv.replica()
		lease := time.Second
		idp := newIdP(10 * time.Second)
		go func() {
			_, _ = a.Do(context.Background(), "rt", idp.grant("rt", "a"), textCodec, Via{Shared: ra, Lease: lease})
		}()
		synctest.Wait()
		_, err := b.Do(context.Background(), "rt", idp.grant("rt", "b"), textCodec, Via{Shared: rb, Lease: lease})
		if !errors.Is(err, ErrPending) || idp.attempts.Load() != 1 {
			t.Errorf("b past its wait bound: %v after %d grants, want ErrPending and a's grant only", err, idp.attempts.Load())
		}
		advance(10 * time.Second) // a's grant ends and is published
		if v, err := b.Do(context.Background(), "rt", idp.grant("rt", "b"), textCodec, Via{Shared: rb, Lease: lease}); v != "tokens-from-a" || err != nil || idp.attempts.Load() != 1 {
			t.Errorf("b's next caller: %q %v after %d grants, want a's result", v, err, idp.attempts.Load())
		}
	})
}

// A leader whose lease was taken over (its heartbeats could not reach
// Valkey for a lease period) does not overwrite its successor's result.
func TestLostLeaseIsNotPublished(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		kv, cs, rs := replicas(3, Options{})
		lease := time.Second
		via := func(i int) Via { return Via{Shared: rs[i], Lease: lease} }
		rs[0].setFail(func(op string) bool { return op == "RenewLease" })
		slow, fast := newIdP(3*time.Second), newIdP(0)
		aDone := make(chan error, 1)
		go func() {
			_, err := cs[0].Do(context.Background(), "rt", slow.grant("rt", "a"), textCodec, via(0))
			aDone <- err
		}()
		advance(lease + 100*time.Millisecond)
		v, err := cs[1].Do(context.Background(), "rt", fast.grant("rt", "b"), textCodec, via(1))
		if err != nil || v != "tokens-from-b" {
			t.Fatalf("b after a's lease ran out: %q %v", v, err)
		}
		if err := <-aDone; err != nil {
			t.Fatalf("a: %v", err)
		}
		synctest.Wait() // a's flight tries to publish, and ends
		if got, _ := kv.get(resultKey("rt")); got != "ok:tokens-from-b" || cs[0].LeasesLost() != 1 {
			t.Errorf("hand-off %q, a's lost leases %d; want b's result kept and a's lease counted lost", got, cs[0].LeasesLost())
		}
	})
}

// A hand-off write that fails is retried under the lease: releasing the
// lease with no result published would let a waiting replica spend again.
func TestFailedPublishIsRetried(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		_, cs, rs := replicas(2, Options{})
		var n atomic.Int64
		rs[0].setFail(func(op string) bool { return op == "PublishLeased" && n.Add(1) <= 3 })
		idp := newIdP(time.Second)
		go func() {
			_, _ = cs[0].Do(context.Background(), "rt", idp.grant("rt", "a"), textCodec, Via{Shared: rs[0]})
		}()
		synctest.Wait()
		v, err := cs[1].Do(context.Background(), "rt", idp.grant("rt", "b"), textCodec, Via{Shared: rs[1]})
		if v != "tokens-from-a" || err != nil || idp.attempts.Load() != 1 || rs[0].count("PublishLeased") != 4 {
			t.Errorf("b: %q %v, %d grants, %d publish attempts; want a's result, 1 grant, 4 attempts", v, err, idp.attempts.Load(), rs[0].count("PublishLeased"))
		}
	})
}

// A lease taken by a call whose answer was lost is ours on the retry (same
// token): no lease period lost waiting for our own lease to expire.
func TestLeaseTakenWithALostAnswer(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		_, cs, rs := replicas(1, Options{})
		rs[0].lostAnswers = 1
		lease := 5 * time.Second
		start := time.Now()
		v, err := cs[0].Do(context.Background(), "rt", newIdP(0).grant("rt", "a"), textCodec, Via{Shared: rs[0], Lease: lease})
		if took := time.Since(start); v != "tokens-from-a" || err != nil || took >= lease {
			t.Errorf("%q %v after %s; want a grant well within the lease (%s)", v, err, took, lease)
		}
	})
}

// A hand-off that does not open (another key's, or tampered with in Valkey)
// means the token was spent: never spend it again, never end the session.
func TestUndecodableHandOffIsTransient(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		kv, cs, rs := replicas(1, Options{})
		kv.set(resultKey("rt"), "sealed for another key", time.Minute)
		idp := newIdP(0)
		_, err := cs[0].Do(context.Background(), "rt", idp.grant("rt", "a"), textCodec, Via{Shared: rs[0]})
		if !errors.Is(err, errBadHandOff) || isDefinitive(err) || idp.attempts.Load() != 0 {
			t.Errorf("%v after %d grants; want the decode error, transient, and no grant", err, idp.attempts.Load())
		}
	})
}

// A panic in a grant (the handler's code) must not take the process down:
// nothing above a flight's goroutine would recover it.
func TestPanickingGrantIsAnError(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		c := newTest()
		_, err := c.Do(context.Background(), "rt", func(context.Context) (string, error) { panic("nil provider") }, nil, local)
		if err == nil || isDefinitive(err) {
			t.Errorf("got %v, want a transient error", err)
		}
	})
}

package refresh_test

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/caddy-oidc/caddy-oidc/cache"
	"github.com/caddy-oidc/caddy-oidc/internal/redistest"
	"github.com/caddy-oidc/caddy-oidc/refresh"
)

// These tests run the protocol against a real Redis: several Coordinators,
// each with its own cache.Hybrid, stand in for replicas.

var errInvalidGrant = errors.New("invalid_grant")

// node is one replica: its process-wide coordinator and its cache.
type node struct {
	c     *refresh.Coordinator[string]
	h     *cache.Hybrid
	stats *cache.Stats
	via   refresh.Via
}

func (n *node) do(ctx context.Context, rt string, grant func(context.Context) (string, error)) (string, error) {
	return n.c.Do(ctx, rt, grant, plainCodec, n.via)
}

func newNode(t *testing.T, addrs []string, prefix string, lease time.Duration, tune ...func(*refresh.Options)) *node {
	t.Helper()
	stats := new(cache.Stats)
	h := cache.NewHybrid(cache.NewMemory(1<<20, 1000, nil), cache.ValkeyOptions{Addresses: addrs, KeyPrefix: prefix}, stats, nil)
	h.Start()
	t.Cleanup(h.Close)
	select {
	case <-h.Connected():
	case <-time.After(10 * time.Second):
		t.Fatal("no valkey")
	}
	o := refresh.Options{Poll: 50 * time.Millisecond, IsDefinitive: func(err error) bool { return errors.Is(err, errInvalidGrant) }}
	for _, f := range tune {
		f(&o)
	}
	c := refresh.New[string](o)
	// Registered after h.Close, so it runs first: flights publish through h.
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if err := c.Close(ctx); err != nil {
			t.Errorf("flights still running at the end: %v", err)
		}
	})
	return &node{c: c, h: h, stats: stats, via: refresh.Via{Shared: h, Lease: lease, HandOff: 30 * time.Second}}
}

// plainCodec stands in for the handler's sealing codec.
var plainCodec = &refresh.Codec[string]{
	Encode: func(v string, err error) ([]byte, error) {
		if err != nil {
			return []byte("!" + err.Error()), nil
		}
		return []byte(v), nil
	},
	Decode: func(b []byte) (string, error) {
		if len(b) > 0 && b[0] == '!' {
			return "", errInvalidGrant
		}
		return string(b), nil
	},
}

func prefix() string {
	b := make([]byte, 6)
	rand.Read(b)
	return "caddy-oidc-test-" + hex.EncodeToString(b) + ":"
}

// idp counts grant attempts and refuses a reused token, as IdPs that rotate do.
type idp struct {
	mu       sync.Mutex
	spent    map[string]bool
	attempts atomic.Int64
	refused  atomic.Int64
	delay    time.Duration
}

func newIdP(delay time.Duration) *idp { return &idp{spent: map[string]bool{}, delay: delay} }

func (i *idp) grant(rt string) func(context.Context) (string, error) {
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
			i.refused.Add(1)
			return "", errInvalidGrant
		}
		i.spent[rt] = true
		return "tokens-after-" + rt, nil
	}
}

func TestOneGrantAcrossReplicas(t *testing.T) {
	addr := []string{redistest.Shared(t)}
	p := prefix()
	nodes := []*node{newNode(t, addr, p, 5*time.Second), newNode(t, addr, p, 5*time.Second), newNode(t, addr, p, 5*time.Second)}
	server := newIdP(100 * time.Millisecond)

	var wg sync.WaitGroup
	var failures atomic.Int64
	for i := range 150 {
		wg.Go(func() {
			v, err := nodes[i%3].do(context.Background(), "rt-1", server.grant("rt-1"))
			if err != nil || v != "tokens-after-rt-1" {
				failures.Add(1)
			}
		})
	}
	wg.Wait()
	if server.attempts.Load() != 1 || failures.Load() != 0 {
		t.Errorf("3 replicas x 50 requests: %d grants, %d failures; want 1 and 0", server.attempts.Load(), failures.Load())
	}
	// A replica that comes late with the spent token adopts the hand-off.
	late := newNode(t, addr, p, 5*time.Second)
	if v, err := late.do(context.Background(), "rt-1", server.grant("rt-1")); err != nil || v != "tokens-after-rt-1" {
		t.Errorf("late replica: %q %v, want the handed-off tokens", v, err)
	}
	if late.c.Adopted() != 1 || server.attempts.Load() != 1 {
		t.Errorf("late replica adopted %d, grants %d", late.c.Adopted(), server.attempts.Load())
	}
}

// Issue 16.2: an IdP slower than the lease (1.5x). The lease is kept by a
// fenced heartbeat: 3 replicas, a burst at the start and a second one once
// the lease would have run out, still one grant. Before the fix: 2 grants
// and 50 of 150 callers refused (invalid_grant).
func TestSlowIdPAcrossReplicas(t *testing.T) {
	slowIdP(t, []string{redistest.Shared(t)})
}

// The same on a cluster: the lease and the hand-off share a hash tag, or
// the fenced publish fails (CROSSSLOT) and every replica spends alone.
func TestSlowIdPAcrossReplicasOnACluster(t *testing.T) {
	slowIdP(t, redistest.StartCluster(t))
}

func slowIdP(t *testing.T, addrs []string) {
	p := prefix()
	lease := 400 * time.Millisecond
	nodes := []*node{newNode(t, addrs, p, lease), newNode(t, addrs, p, lease), newNode(t, addrs, p, lease)}
	server := newIdP(lease * 3 / 2)
	second := make(chan struct{})
	time.AfterFunc(lease*6/5, func() { close(second) })
	var wg sync.WaitGroup
	var failures atomic.Int64
	for i := range 150 {
		wg.Go(func() {
			if i >= 75 {
				<-second
			}
			if v, err := nodes[i%3].do(context.Background(), "rt", server.grant("rt")); err != nil || v != "tokens-after-rt" {
				failures.Add(1)
			}
		})
	}
	wg.Wait()
	var lost, fallbacks int64
	for _, n := range nodes {
		lost += n.c.LeasesLost()
		fallbacks += n.c.Fallbacks()
	}
	t.Logf("lease %s, IdP %s, 3 replicas x 50 callers in two bursts: %d grants at the IdP, %d refused, %d failed callers, %d leases lost, %d fallbacks",
		lease, server.delay, server.attempts.Load(), server.refused.Load(), failures.Load(), lost, fallbacks)
	if server.attempts.Load() != 1 || failures.Load() != 0 {
		t.Errorf("%d grants and %d failed callers, want 1 and 0", server.attempts.Load(), failures.Load())
	}
}

func TestInvalidGrantIsHandedOn(t *testing.T) {
	addr := []string{redistest.Shared(t)}
	p := prefix()
	a, b := newNode(t, addr, p, 5*time.Second), newNode(t, addr, p, 5*time.Second)
	server := newIdP(0)
	server.spent["rt-dead"] = true
	if _, err := a.do(context.Background(), "rt-dead", server.grant("rt-dead")); !errors.Is(err, errInvalidGrant) {
		t.Fatalf("got %v", err)
	}
	var calls atomic.Int64
	_, err := b.do(context.Background(), "rt-dead", func(context.Context) (string, error) { calls.Add(1); return "", nil })
	if !errors.Is(err, errInvalidGrant) || calls.Load() != 0 {
		t.Errorf("replica b: %v after %d grants; want the handed-on invalid_grant and no grant", err, calls.Load())
	}
}

func TestDeadLeaderIsTakenOver(t *testing.T) {
	addr := []string{redistest.Shared(t)}
	p := prefix()
	lease := 800 * time.Millisecond
	b := newNode(t, addr, p, lease)
	// A leader took the lease and died (kill -9): nobody releases it.
	sum := sha256.Sum256([]byte("rt-x"))
	if ok, err := b.h.TryLease(context.Background(), cache.LeaseKey(hex.EncodeToString(sum[:])), "dead-leader", lease); !ok || err != nil {
		t.Fatalf("taking the lease: %v %v", ok, err)
	}
	server := newIdP(0)
	start := time.Now()
	v, err := b.do(context.Background(), "rt-x", server.grant("rt-x"))
	took := time.Since(start)
	if err != nil || v != "tokens-after-rt-x" || server.attempts.Load() != 1 {
		t.Fatalf("takeover: %q %v, %d grants", v, err, server.attempts.Load())
	}
	t.Logf("the follower took over after %s (lease %s)", took.Round(time.Millisecond), lease)
	if took < lease/2 {
		t.Errorf("the follower spent the token after %s, while the dead leader's lease (%s) still held", took, lease)
	}
}

// Issue 16.3: one Valkey timeout (a real one: the replica's connection is
// stalled past the 300 ms call timeout) while another replica holds the
// lease. Before the fix: 2 grants, the leader got invalid_grant.
func TestValkeyTimeoutKeepsWaiting(t *testing.T) {
	upstream := redistest.Shared(t)
	p := prefix()
	px := newProxy(t, upstream)
	a := newNode(t, []string{upstream}, p, 5*time.Second)
	b := newNode(t, []string{px.Addr}, p, 5*time.Second)
	server := newIdP(0)
	release, atIdP := make(chan struct{}), make(chan struct{})
	aRes := make(chan error, 1)
	go func() {
		g := server.grant("rt")
		_, err := a.do(context.Background(), "rt", func(ctx context.Context) (string, error) {
			close(atIdP)
			<-release
			return g(ctx)
		})
		aRes <- err
	}()
	<-atIdP // a holds the lease and is at the IdP
	px.Stall()
	errsBefore := b.stats.ValkeyErrors.Load()
	bRes := make(chan error, 1)
	var bTokens string
	go func() {
		var err error
		bTokens, err = b.do(context.Background(), "rt", server.grant("rt"))
		bRes <- err
	}()
	waitFor(t, "a Valkey timeout on b", func() bool { return b.stats.ValkeyErrors.Load() > errsBefore })
	px.Resume()
	close(release)
	errA, errB := <-aRes, <-bRes
	t.Logf("one timeout on the follower: %d grants at the IdP, %d refused; a: %v, b: %v", server.attempts.Load(), server.refused.Load(), errA, errB)
	if server.attempts.Load() != 1 || errA != nil || errB != nil || bTokens != "tokens-after-rt" {
		t.Errorf("%d grants; a %v, b %q %v; want 1 grant and both served", server.attempts.Load(), errA, bTokens, errB)
	}
}

// Valkey down for good: after one lease period of failed calls, a replica
// coordinates in-process only (one grant for its concurrent callers).
func TestValkeyDownDegradesToInProcess(t *testing.T) {
	srv := redistest.Start(t)
	// The fallback waits for any grant another replica may run
	// (GrantTimeout) and one lease more: a short grant timeout keeps that
	// wait (30 s by default) short.
	n := newNode(t, []string{srv.Addr}, prefix(), time.Second, func(o *refresh.Options) { o.GrantTimeout = 2 * time.Second })
	srv.Kill()
	server := newIdP(50 * time.Millisecond)
	var wg sync.WaitGroup
	var failures atomic.Int64
	start := time.Now()
	for range 20 {
		wg.Go(func() {
			if _, err := n.do(context.Background(), "rt-2", server.grant("rt-2")); err != nil {
				failures.Add(1)
			}
		})
	}
	wg.Wait()
	t.Logf("valkey down: served after %s (lease %s)", time.Since(start).Round(time.Millisecond), n.via.Lease)
	if waited := time.Since(start); waited < 3*time.Second {
		t.Errorf("the token was spent alone after %s, before a grant of another replica (2 s) and its lease (1 s) could have ended", waited)
	}
	if server.attempts.Load() != 1 || failures.Load() != 0 || n.c.Fallbacks() != 1 {
		t.Errorf("valkey down: %d grants, %d failures, %d fallbacks; want 1, 0, 1", server.attempts.Load(), failures.Load(), n.c.Fallbacks())
	}
}

// waitFor polls cond (bounded) instead of sleeping a guessed time.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.After(10 * time.Second)
	tick := time.NewTicker(5 * time.Millisecond)
	defer tick.Stop()
	for !cond() {
		select {
		case <-deadline:
			t.Fatalf("timed out waiting for %s", what)
		case <-tick.C:
		}
	}
}

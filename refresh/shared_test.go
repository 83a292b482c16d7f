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

var errInvalidGrant = errors.New("invalid_grant")

// replica is one process's coordinator on a shared Valkey.
func replica(t *testing.T, addr, prefix string, lease time.Duration) *refresh.Coordinator[string] {
	t.Helper()
	h := cache.NewHybrid(cache.NewMemory(1<<20, 1000, nil), cache.ValkeyOptions{Addresses: []string{addr}, KeyPrefix: prefix}, nil, nil)
	h.Start()
	t.Cleanup(h.Close)
	select {
	case <-h.Connected():
	case <-time.After(10 * time.Second):
		t.Fatal("no valkey")
	}
	c := refresh.New[string](refresh.Options{Shared: h, Lease: lease, Poll: 50 * time.Millisecond,
		IsDefinitive: func(err error) bool { return errors.Is(err, errInvalidGrant) }})
	t.Cleanup(c.Close)
	return c
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

// idp counts grants and refuses a reused token, as IdPs that rotate do.
type idp struct {
	mu     sync.Mutex
	spent  map[string]bool
	grants atomic.Int64
	delay  time.Duration
}

func (i *idp) grant(rt string) func(context.Context) (string, error) {
	return func(ctx context.Context) (string, error) {
		select {
		case <-time.After(i.delay):
		case <-ctx.Done():
			return "", ctx.Err()
		}
		i.mu.Lock()
		defer i.mu.Unlock()
		if i.spent[rt] {
			return "", errInvalidGrant
		}
		i.spent[rt] = true
		i.grants.Add(1)
		return "tokens-after-" + rt, nil
	}
}

func TestOneGrantAcrossReplicas(t *testing.T) {
	addr := redistest.Shared(t)
	p := prefix()
	replicas := []*refresh.Coordinator[string]{replica(t, addr, p, 5*time.Second), replica(t, addr, p, 5*time.Second), replica(t, addr, p, 5*time.Second)}
	server := &idp{spent: map[string]bool{}, delay: 100 * time.Millisecond}

	var wg sync.WaitGroup
	var failures atomic.Int64
	for i := range 150 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			c := replicas[i%3]
			v, err := c.Do(context.Background(), "rt-1", server.grant("rt-1"), plainCodec)
			if err != nil || v != "tokens-after-rt-1" {
				failures.Add(1)
			}
		}()
	}
	wg.Wait()
	if server.grants.Load() != 1 || failures.Load() != 0 {
		t.Errorf("3 replicas x 50 requests: %d grants, %d failures; want 1 and 0", server.grants.Load(), failures.Load())
	}
	// A replica that comes late with the spent token adopts the hand-off.
	late := replica(t, addr, p, 5*time.Second)
	if v, err := late.Do(context.Background(), "rt-1", server.grant("rt-1"), plainCodec); err != nil || v != "tokens-after-rt-1" {
		t.Errorf("late replica: %q %v, want the handed-off tokens", v, err)
	}
	if late.Adopted() != 1 || server.grants.Load() != 1 {
		t.Errorf("late replica adopted %d, grants %d", late.Adopted(), server.grants.Load())
	}
}

func TestInvalidGrantIsHandedOn(t *testing.T) {
	addr := redistest.Shared(t)
	p := prefix()
	a, b := replica(t, addr, p, 5*time.Second), replica(t, addr, p, 5*time.Second)
	server := &idp{spent: map[string]bool{"rt-dead": true}}
	if _, err := a.Do(context.Background(), "rt-dead", server.grant("rt-dead"), plainCodec); !errors.Is(err, errInvalidGrant) {
		t.Fatalf("got %v", err)
	}
	var calls atomic.Int64
	_, err := b.Do(context.Background(), "rt-dead", func(context.Context) (string, error) { calls.Add(1); return "", nil }, plainCodec)
	if !errors.Is(err, errInvalidGrant) || calls.Load() != 0 {
		t.Errorf("replica b: %v after %d grants; want the handed-on invalid_grant and no grant", err, calls.Load())
	}
}

func TestDeadLeaderIsTakenOver(t *testing.T) {
	addr := redistest.Shared(t)
	p := prefix()
	// A leader took the lease and died (kill -9): nobody releases it.
	h := cache.NewHybrid(cache.NewMemory(1<<20, 100, nil), cache.ValkeyOptions{Addresses: []string{addr}, KeyPrefix: p}, nil, nil)
	h.Start()
	defer h.Close()
	<-h.Connected()
	sum := sha256.Sum256([]byte("rt-x"))
	lease := 800 * time.Millisecond
	if ok, err := h.TryLease(context.Background(), "lease:"+hex.EncodeToString(sum[:]), "dead-leader", lease); !ok || err != nil {
		t.Fatalf("taking the lease: %v %v", ok, err)
	}
	b := replica(t, addr, p, lease)
	server := &idp{spent: map[string]bool{}}
	start := time.Now()
	v, err := b.Do(context.Background(), "rt-x", server.grant("rt-x"), plainCodec)
	took := time.Since(start)
	if err != nil || v != "tokens-after-rt-x" || server.grants.Load() != 1 {
		t.Fatalf("takeover: %q %v, %d grants", v, err, server.grants.Load())
	}
	t.Logf("the follower took over after %s (lease %s)", took.Round(time.Millisecond), lease)
	if took < lease/2 {
		t.Errorf("the follower spent the token after %s, while the dead leader's lease (%s) still held", took, lease)
	}
}

func TestValkeyDownDegradesToInProcess(t *testing.T) {
	srv := redistest.Start(t)
	c := replica(t, srv.Addr, prefix(), time.Second)
	srv.Kill()
	server := &idp{spent: map[string]bool{}, delay: 50 * time.Millisecond}
	var wg sync.WaitGroup
	var failures atomic.Int64
	for range 20 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if _, err := c.Do(context.Background(), "rt-2", server.grant("rt-2"), plainCodec); err != nil {
				failures.Add(1)
			}
		}()
	}
	wg.Wait()
	if server.grants.Load() != 1 || failures.Load() != 0 {
		t.Errorf("valkey down: %d grants, %d failures; want 1 and 0", server.grants.Load(), failures.Load())
	}
}

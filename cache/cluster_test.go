package cache

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"testing"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zaptest/observer"

	"github.com/caddy-oidc/caddy-oidc/internal/redistest"
)

// keysOnEachMaster returns, for each master of cl, a cache key (without
// prefix) whose slot it serves.
func keysOnEachMaster(t *testing.T, cl *redistest.Cluster, prefix, ns string) []string {
	t.Helper()
	keys := make([]string, len(cl.Addrs))
	found := 0
	for i := 0; found < len(keys) && i < 200; i++ {
		k := fmt.Sprintf("%s:%d", ns, i)
		if m := cl.MasterOf(prefix + k); keys[m] == "" {
			keys[m] = k
			found++
		}
	}
	if found < len(keys) {
		t.Fatal("could not find a key on every master")
	}
	return keys
}

// Issue 15 items 1 and 2 on a real cluster: one master dies.
func TestHybridClusterOneMasterDown(t *testing.T) {
	cl := redistest.StartClusterWith(t, "--cluster-require-full-coverage", "no", "--appendonly", "yes", "--appendfsync", "always")
	prefix := testPrefix()
	opts := ValkeyOptions{Addresses: cl.Addrs, KeyPrefix: prefix}
	core, logs := observer.New(zap.InfoLevel)
	mk := func(logger *zap.Logger) *Hybrid {
		l1 := NewMemory(1<<20, 1000, nil)
		h := NewHybrid(l1, opts, l1.stats, logger)
		t.Cleanup(h.Close)
		h.Start()
		select {
		case <-h.Connected():
		case <-time.After(15 * time.Second):
			t.Fatal("never connected to the cluster")
		}
		return h
	}
	h, w := mk(zap.New(core)), mk(nil) // h: the replica under test; w: another replica
	ctx := context.Background()
	sess := keysOnEachMaster(t, cl, prefix, "sess")
	victim := 0
	onVictim, healthy := sess[victim], sess[1]
	for _, k := range sess {
		if err := w.Set(ctx, k, []byte("v1"), time.Hour); err != nil {
			t.Fatal(err)
		}
	}
	cl.ForceSubscriptionsOnto(victim, h.channel, 2)
	waitFor(t, func() bool { return h.Healthy() && w.Healthy() })
	for _, k := range sess { // into h's L1, verified
		if v, ok, err := h.Get(ctx, k); err != nil || !ok || string(v) != "v1" {
			t.Fatalf("warming %s: %q %v %v", k, v, ok, err)
		}
	}

	waitFor(t, func() bool { return h.stats.NodesUp.Load() == 3 })
	losses := h.stats.StreamLosses.Load()
	cl.Nodes[victim].Kill()
	// h's stream was on the victim: it comes back on a surviving master.
	t0 := time.Now()
	waitFor(t, func() bool { return h.stats.StreamLosses.Load() > losses && h.Healthy() })
	// The next node in turn, not a random pick that can hit the dead master
	// again and again while the backoff grows (15 s was seen).
	if d := time.Since(t0); d > 3*time.Second {
		t.Errorf("h subscribed again %s after the kill", d)
	} else {
		t.Logf("h subscribed again %s after the kill", d.Round(time.Millisecond))
	}

	// The session on the dead master is still served from L1.
	for i := range 5 {
		if v, ok, err := h.Get(ctx, onVictim); err != nil || !ok || string(v) != "v1" {
			t.Fatalf("read %d of the warm key on the dead master after resubscribing: %q %v %v, want v1", i, v, ok, err)
		}
	}
	// Keys on healthy masters work: reads, writes (seen by the other
	// replica through the new subscription), deletes and adds.
	if err := w.Set(ctx, healthy, []byte("v2"), time.Minute); err != nil {
		t.Fatalf("write to a healthy master: %v", err)
	}
	waitFor(t, func() bool { v, _, _ := h.Get(ctx, healthy); return string(v) == "v2" })
	if err := h.Delete(ctx, sess[2]); err != nil {
		t.Errorf("delete on a healthy master: %v", err)
	}
	jti := keysOnEachMaster(t, cl, prefix, "jti")
	if ok, err := h.Add(ctx, jti[1], []byte("x"), time.Minute); !ok || err != nil {
		t.Errorf("add on a healthy master: %v %v", ok, err)
	}
	// A write to the dead master is kept and served here.
	if err := h.Set(ctx, onVictim, []byte("written-during-outage"), time.Minute); !errors.Is(err, ErrUnavailable) {
		t.Errorf("write to the dead master: got %v, want ErrUnavailable", err)
	}
	if v, _, _ := h.Get(ctx, onVictim); string(v) != "written-during-outage" {
		t.Errorf("the write made during the outage reads %q here", v)
	}
	// The revocation resync's scan answers with what the live masters hold.
	keys, complete, err := h.Scan(ctx, "sess:")
	slices.Sort(keys)
	if err != nil || complete || !slices.Equal(keys, []string{healthy}) {
		t.Errorf("Scan with a master down: %v complete=%v err=%v, want [%s] incomplete", keys, complete, err, healthy)
	}
	// What the operator sees: one node of three down, errors as "down".
	waitFor(t, func() bool { return h.stats.NodesDown.Load() == 1 && h.stats.NodesUp.Load() == 2 })
	if h.stats.Errors(ReasonDown) == 0 {
		t.Errorf("errors by reason: down %d, cluster %d, timeout %d, other %d", h.stats.Errors(ReasonDown), h.stats.Errors(ReasonCluster),
			h.stats.Errors(ReasonTimeout), h.stats.Errors(ReasonOther))
	}
	if e := logs.FilterMessage("valkey node unreachable").FilterField(zap.String("node", cl.Addrs[victim])).Len(); e != 1 {
		t.Errorf("%d 'valkey node unreachable' lines for the dead master, want 1", e)
	}
	if h.stats.StaleServed.Load() == 0 {
		t.Error("serving the unverified entry was not counted")
	}

	cl.Nodes[victim].Restart()
	cl.WaitOK()
	// Written back without h's stream dropping again, and seen by w.
	lossesAfter := h.stats.StreamLosses.Load()
	waitFor(t, func() bool {
		v, _, err := w.Get(ctx, onVictim)
		return err == nil && string(v) == "written-during-outage"
	})
	if h.stats.StreamLosses.Load() != lossesAfter {
		t.Log("h's stream dropped again after the restart")
	}
	waitFor(t, func() bool { return h.stats.NodesDown.Load() == 0 && h.stats.NodesUp.Load() == 3 })
	if logs.FilterMessage("valkey node reachable again").Len() != 1 {
		t.Error("no 'valkey node reachable again' line")
	}
	keys, complete, err = h.Scan(ctx, "sess:")
	if err != nil || !complete || !slices.Contains(keys, onVictim) {
		t.Errorf("Scan after the restart: %v complete=%v err=%v", keys, complete, err)
	}
	for _, e := range logs.All() {
		t.Logf("h logged: %s %s %v", e.Level, e.Message, e.ContextMap())
	}
}

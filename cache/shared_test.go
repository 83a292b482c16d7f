package cache

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap"
	"go.uber.org/zap/zaptest/observer"

	"github.com/caddy-oidc/caddy-oidc/internal/redistest"
)

// SetShared writes to Valkey and announces, never into L1; on failure it
// keeps nothing. GetShared reads Valkey only.
func TestHybridSharedEntries(t *testing.T) {
	srv := aclServer(t)
	l1 := NewMemory(1<<20, 1000, nil)
	h := newACLHybrid(t, srv, l1)
	other := newACLHybrid(t, srv, NewMemory(1<<20, 1000, nil), h.opts.KeyPrefix)
	ctx := context.Background()
	announced := make(chan string, 4)
	other.Follow(Follower{Prefix: "rev:", Changed: func(k string) { announced <- k }})

	if err := h.SetShared(ctx, "rev:a", []byte("r1"), time.Minute); err != nil {
		t.Fatal(err)
	}
	select {
	case k := <-announced:
		if k != "rev:a" {
			t.Errorf("announced %q", k)
		}
	case <-time.After(5 * time.Second):
		t.Error("SetShared was not announced to the other replica")
	}
	if n, _ := l1.Len(); n != 0 {
		t.Errorf("SetShared left %d entries in L1", n)
	}
	if v, ok, err := other.GetShared(ctx, "rev:a"); err != nil || !ok || string(v) != "r1" {
		t.Errorf("GetShared on the other replica: %q %v %v", v, ok, err)
	}
	if v, ok, err := h.GetShared(ctx, "rev:a"); err != nil || !ok || string(v) != "r1" {
		t.Errorf("GetShared: %q %v %v", v, ok, err)
	}
	if n, _ := l1.Len(); n != 0 {
		t.Errorf("GetShared filled L1 (%d entries)", n)
	}
	if _, ok, err := h.GetShared(ctx, "rev:none"); ok || err != nil {
		t.Errorf("GetShared of a missing key: %v %v", ok, err)
	}

	acl(t, srv, "-set", "-get")
	if err := h.SetShared(ctx, "rev:b", []byte("r2"), time.Minute); !errors.Is(err, ErrUnavailable) {
		t.Errorf("SetShared with SET denied: got %v, want ErrUnavailable", err)
	}
	if _, _, err := h.GetShared(ctx, "rev:a"); !errors.Is(err, ErrUnavailable) {
		t.Errorf("GetShared with GET denied: got %v, want ErrUnavailable", err)
	}
	if n, _ := l1.Len(); n != 0 || h.pending.len() != 0 {
		t.Errorf("a failed SetShared kept something: L1 %d, write-back %d", n, h.pending.len())
	}
}

// A delete Valkey could not take is kept and written back, and reads see
// the key as gone meanwhile.
func TestHybridDeleteWrittenBack(t *testing.T) {
	srv := aclServer(t)
	h := newACLHybrid(t, srv, NewMemory(1<<20, 1000, nil))
	ctx := context.Background()
	if err := h.Set(ctx, "sess:gone", []byte("v"), time.Minute); err != nil {
		t.Fatal(err)
	}
	acl(t, srv, "-del")
	if err := h.Delete(ctx, "sess:gone"); !errors.Is(err, ErrUnavailable) {
		t.Fatalf("delete with DEL denied: %v", err)
	}
	if _, ok, err := h.Get(ctx, "sess:gone"); ok || err != nil {
		t.Errorf("read after a failed delete: found %v err %v, want a miss", ok, err)
	}
	acl(t, srv, "+del")
	raw := rawClient(t, srv.Addr)
	waitFor(t, func() bool {
		n, err := raw.Do(ctx, raw.B().Exists().Key(h.opts.KeyPrefix+"sess:gone").Build()).AsInt64()
		return err == nil && n == 0
	})
}

// The write-back queue is bounded on its own: past the bound a value is
// kept in L1 only, counted and logged.
func TestHybridWritebackBound(t *testing.T) {
	srv := aclServer(t)
	core, logs := observer.New(zap.WarnLevel)
	l1 := NewMemory(1<<20, 1000, nil)
	h := NewHybrid(l1, ValkeyOptions{Addresses: []string{srv.Addr}, Username: "caddy", Password: "caddy-pass", KeyPrefix: testPrefix(), WritebackMaxEntries: 5}, l1.stats, zap.New(core))
	t.Cleanup(h.Close)
	h.Start()
	<-h.Connected()
	acl(t, srv, "-set")
	for i := range 12 {
		_ = h.Set(context.Background(), fmt.Sprintf("sess:%d", i), []byte("v"), time.Minute)
	}
	if n := h.pending.len(); n != 5 {
		t.Errorf("%d values pending, bound 5", n)
	}
	if d := h.stats.Dropped(DropFull); d != 7 {
		t.Errorf("%d counted as dropped, want 7", d)
	}
	if logs.FilterMessageSnippet("write-back queue full").Len() != 1 {
		t.Errorf("want one throttled log line, got %v", logs.All())
	}
	// The dropped values are still served by this replica.
	if v, ok, _ := h.Get(context.Background(), "sess:11"); !ok || string(v) != "v" {
		t.Error("a value past the write-back bound is not in L1")
	}
}

func TestErrorReason(t *testing.T) {
	srv := aclServer(t)
	l1 := NewMemory(1<<20, 1000, nil)
	h := newACLHybrid(t, srv, l1)
	c := h.current()
	ctx := context.Background()
	acl(t, srv, "-get")
	if r := errorReason(c.Do(ctx, c.B().Get().Key("x").Build()).Error()); r != ReasonAuth {
		t.Errorf("NOPERM: %s", r)
	}
	tctx, cancel := context.WithTimeout(ctx, time.Millisecond)
	defer cancel()
	if r := errorReason(c.Do(tctx, c.B().Blpop().Key("nothing").Timeout(1).Build()).Error()); r != ReasonTimeout {
		t.Errorf("deadline: %s", r)
	}
	srv.Kill()
	err := c.Do(ctx, c.B().Ping().Build()).Error()
	if err == nil {
		err = c.Do(ctx, c.B().Ping().Build()).Error()
	}
	if r := errorReason(err); r != ReasonDown {
		t.Errorf("server killed (%v): %s", err, r)
	}
	// A node asked for a key it does not serve answers MOVED.
	cl := redistest.StartCluster(t)
	raw := rawClient(t, cl[0])
	for _, n := range raw.Nodes() {
		if err := n.Do(ctx, n.B().Get().Key("any-key").Build()).Error(); err != nil && strings.HasPrefix(err.Error(), "MOVED") {
			if r := errorReason(err); r != ReasonCluster {
				t.Errorf("MOVED: %s", r)
			}
			return
		}
	}
	t.Error("no node answered MOVED")
}

// The metrics an operator reads: errors by reason, nodes up/down, the
// stream, write-back.
func TestCollectorMetrics(t *testing.T) {
	s := new(Stats)
	s.addError(ReasonDown)
	s.addError(ReasonDown)
	s.addError(ReasonTimeout)
	s.NodesUp.Store(2)
	s.NodesDown.Store(1)
	s.StreamUp.Store(1)
	s.WritebackPending.Store(3)
	s.addDropped(DropFull, 4)
	reg := prometheus.NewPedanticRegistry()
	reg.MustRegister(NewCollector(s))
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]float64{}
	for _, mf := range mfs {
		for _, m := range mf.GetMetric() {
			name := mf.GetName()
			for _, l := range m.GetLabel() {
				name += "|" + l.GetName() + "=" + l.GetValue()
			}
			v := m.GetCounter().GetValue() + m.GetGauge().GetValue()
			got[name] = v
		}
	}
	for name, want := range map[string]float64{
		"caddy_oidc_valkey_errors_total|reason=down":             2,
		"caddy_oidc_valkey_errors_total|reason=timeout":          1,
		"caddy_oidc_valkey_errors_total|reason=cluster":          0,
		"caddy_oidc_valkey_nodes|state=up":                       2,
		"caddy_oidc_valkey_nodes|state=down":                     1,
		"caddy_oidc_valkey_stream_up":                            1,
		"caddy_oidc_cache_writeback_pending":                     3,
		"caddy_oidc_cache_writeback_dropped_total|reason=full":   4,
		"caddy_oidc_cache_l1_stale_served_total":                 0,
		"caddy_oidc_valkey_stream_losses_total":                  0,
		"caddy_oidc_cache_writeback_written_total":               0,
		"caddy_oidc_cache_writeback_dropped_total|reason=closed": 0,
	} {
		if v, ok := got[name]; !ok || v != want {
			t.Errorf("%s = %v (present %v), want %v", name, v, ok, want)
		}
	}
}

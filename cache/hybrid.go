package cache

import (
	"context"
	"crypto/rand"
	"crypto/tls"
	"encoding/hex"
	"errors"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/valkey-io/valkey-go"
	"go.uber.org/zap"
)

// ValkeyOptions configure the shared tier. Zero values take the defaults.
type ValkeyOptions struct {
	// Addresses of the server, or seeds of a cluster or sentinel set.
	Addresses []string
	Username  string
	Password  string
	// DB is the database number (standalone only).
	DB int
	// TLS, when set, is used for every connection.
	TLS *tls.Config
	// SentinelMaster names the master set when Addresses are sentinels.
	SentinelMaster string
	// KeyPrefix starts every key and the invalidation channel. Default: "caddy-oidc:".
	KeyPrefix string
	// Timeout bounds every call made on the request path. Default: 300 ms.
	Timeout time.Duration
	// L1TTL caps how long a value read from Valkey stays in L1. Default: 10 min.
	L1TTL time.Duration
	// WritebackMaxBytes and WritebackMaxEntries bound the values kept for
	// write-back while Valkey cannot take them (outside L1, never evicted
	// by its bound). Default: 16 MiB, 10000 entries.
	WritebackMaxBytes   int64
	WritebackMaxEntries int
}

// recheckAfter is how long an unverified L1 entry is served without asking
// Valkey again after Valkey could not answer for it.
const recheckAfter = time.Second

// Hybrid is L1 (Memory) in front of L2 (Valkey). Writes go to both and are
// announced on a pub/sub channel so other replicas drop their L1 copies.
// Valkey is an accelerator, never a single point of failure: while it (or
// the cluster master of a key) is down, reads are served from L1, writes
// are kept for write-back (retried in the background, and by Close) and
// callers get ErrUnavailable only for what L1 cannot answer. When the
// invalidation stream is lost, L1 keeps serving; when it is back, every L1
// entry becomes unverified (it may have missed invalidations): its next
// read asks Valkey, and is served from L1 only if Valkey cannot answer.
type Hybrid struct {
	l1     *Memory
	opts   ValkeyOptions
	stats  *Stats
	logger *zap.Logger

	client  atomic.Pointer[valkey.Client]
	channel string
	origin  string // this process's id, to skip our own invalidations

	ctx    context.Context
	cancel context.CancelFunc
	wg     sync.WaitGroup

	lastErrLog  atomic.Int64
	lastFullLog atomic.Int64
	errsSince   atomic.Int64
	subscribed  atomic.Bool
	subMu       sync.Mutex // subscribed and subGen change together
	subGen      uint64     // changes when a subscription starts or ends
	subSeed     int        // where this replica starts in the node list
	downNodes   atomic.Pointer[map[string]bool]
	closeOnce   sync.Once

	pending         *writeback
	wbMu            sync.Mutex // serialises write-back rounds
	writtenSinceLog int        // under wbMu
	connectedCh     chan struct{}
	connectOnce     sync.Once
	startOnce       sync.Once
	watch           watchers
	follow          followers
	sem             chan struct{}
}

// NewHybrid returns a Hybrid that does no I/O until Start (so `caddy
// validate` never dials). Close releases it.
func NewHybrid(l1 *Memory, o ValkeyOptions, stats *Stats, logger *zap.Logger) *Hybrid {
	if o.KeyPrefix == "" {
		o.KeyPrefix = "caddy-oidc:"
	}
	if o.Timeout <= 0 {
		o.Timeout = 300 * time.Millisecond
	}
	if o.L1TTL <= 0 {
		o.L1TTL = 10 * time.Minute
	}
	if stats == nil {
		stats = new(Stats)
	}
	if logger == nil {
		logger = zap.NewNop()
	}
	if o.WritebackMaxBytes <= 0 {
		o.WritebackMaxBytes = 16 << 20
	}
	if o.WritebackMaxEntries <= 0 {
		o.WritebackMaxEntries = 10000
	}
	id := make([]byte, 8)
	rand.Read(id)
	ctx, cancel := context.WithCancel(context.Background())
	seed := int(id[0])<<8 | int(id[1])
	return &Hybrid{subSeed: seed, l1: l1, opts: o, stats: stats, logger: logger, channel: o.KeyPrefix + "invalidate",
		origin: hex.EncodeToString(id), ctx: ctx, cancel: cancel, connectedCh: make(chan struct{}),
		sem: make(chan struct{}, 64), pending: newWriteback(o.WritebackMaxBytes, o.WritebackMaxEntries, stats)}
}

// Start connects to Valkey in the background and returns at once: Caddy
// starts even while Valkey is down. Later calls do nothing.
func (h *Hybrid) Start() {
	h.startOnce.Do(func() {
		if h.ctx.Err() != nil {
			return
		}
		h.wg.Add(1)
		go h.run()
	})
}

// L1 returns the in-process tier.
func (h *Hybrid) L1() *Memory { return h.l1 }

// Connected is closed once the invalidation stream is first established.
func (h *Hybrid) Connected() <-chan struct{} { return h.connectedCh }

// Healthy reports whether the invalidation stream is up.
func (h *Hybrid) Healthy() bool { return h.subscribed.Load() }

// Replicated is true: the replicas of a deployment share the Valkey.
func (h *Hybrid) Replicated() bool { return true }

func (h *Hybrid) clientOption() valkey.ClientOption {
	o := valkey.ClientOption{
		InitAddress: h.opts.Addresses,
		Username:    h.opts.Username,
		Password:    h.opts.Password,
		SelectDB:    h.opts.DB,
		TLSConfig:   h.opts.TLS,
		ClientName:  "caddy-oidc",
		// Our own L1 is the client-side cache; RESP3 tracking would be a second one.
		DisableCache: true,
		// Fail fast and let the caller degrade, instead of retrying while
		// a request waits; the background loop does the reconnecting.
		DisableRetry:     true,
		ConnWriteTimeout: 2 * time.Second,
		Dialer:           netDialer(),
	}
	if h.opts.SentinelMaster != "" {
		o.Sentinel = valkey.SentinelOption{MasterSet: h.opts.SentinelMaster, Username: h.opts.Username, Password: h.opts.Password, TLSConfig: h.opts.TLS}
	}
	return o
}

func (h *Hybrid) run() {
	defer h.wg.Done()
	backoff := 100 * time.Millisecond
	for h.ctx.Err() == nil {
		c, err := valkey.NewClient(h.clientOption())
		if err != nil {
			h.noteError("connecting to valkey", err)
			if !h.sleep(backoff) {
				return
			}
			backoff = min(backoff*2, 5*time.Second)
			continue
		}
		h.client.Store(&c) // closed by Close, after the last write-back
		h.wg.Add(2)
		go h.writeLoop()
		go h.probeLoop(c)
		h.subscribeLoop(c)
		return
	}
}

func (h *Hybrid) sleep(d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-h.ctx.Done():
		return false
	}
}

// subscribeLoop keeps the invalidation subscription up until Close.
func (h *Hybrid) subscribeLoop(c valkey.Client) {
	backoff, fails := 100*time.Millisecond, 0
	// attempt goes round the nodes: after a failure or a loss, the next
	// subscription is tried on the next node.
	for attempt := 0; h.ctx.Err() == nil; attempt++ {
		target, n := h.subscribeTarget(c, attempt)
		h.subMu.Lock()
		h.subGen++
		gen := h.subGen
		h.subMu.Unlock()
		var established atomic.Bool
		err := target.Dedicated(func(dc valkey.DedicatedClient) error {
			wait := dc.SetPubSubHooks(valkey.PubSubHooks{
				OnMessage: h.onMessage,
				OnSubscription: func(s valkey.PubSubSubscription) {
					if s.Kind == "subscribe" && !established.Swap(true) {
						// Write-back needs other connections: not in this callback.
						h.wg.Add(1)
						go h.onSubscribed(c, gen)
					}
				},
			})
			if err := dc.Do(h.ctx, dc.B().Subscribe().Channel(h.channel).Build()).Error(); err != nil {
				return err
			}
			select {
			case err := <-wait:
				return err
			case <-h.ctx.Done():
				return nil
			}
		})
		if h.ctx.Err() != nil {
			return
		}
		// A late onSubscribed of this subscription must not mark it up.
		h.subMu.Lock()
		h.subGen++
		h.subscribed.Store(false)
		h.stats.StreamUp.Store(0)
		h.subMu.Unlock()
		if established.Load() {
			h.stats.StreamLosses.Add(1)
			h.logger.Warn("valkey invalidation stream lost; serving from L1 until it is back", zap.Error(err))
			backoff, fails = 100*time.Millisecond, 0 // it worked until now: retry soon
		} else {
			fails++
		}
		h.noteError("valkey subscription", err)
		if !h.sleep(backoff) {
			return
		}
		if fails > 0 && fails%n == 0 {
			// Every node failed once more: back off.
			backoff = min(backoff*2, 5*time.Second)
		}
	}
}

// subscribeTarget picks the node to subscribe on. In a cluster a PUBLISH
// reaches every node, so any node will do: attempts go round the nodes,
// those that failed their last probe last, instead of the client's random
// pick, which can hit a dead master several times in a row. n is the
// number of candidates.
func (h *Hybrid) subscribeTarget(c valkey.Client, attempt int) (target valkey.Client, n int) {
	if c.Mode() != valkey.ClientModeCluster {
		return c, 1
	}
	nodes := c.Nodes()
	if len(nodes) == 0 {
		return c, 1
	}
	down := h.downNodes.Load()
	var up, dn []string
	for a := range nodes {
		if down != nil && (*down)[a] {
			dn = append(dn, a)
		} else {
			up = append(up, a)
		}
	}
	slices.Sort(up)
	slices.Sort(dn)
	addrs := dn
	if len(up) > 0 {
		// Each replica starts at its own place: subscriptions spread.
		addrs = append(rotate(up, h.subSeed), dn...)
	}
	return nodes[addrs[attempt%len(addrs)]], len(addrs)
}

func rotate(s []string, k int) []string {
	k %= len(s)
	return append(s[k:len(s):len(s)], s[:k]...)
}

// onSubscribed runs when the stream is (re)established: L1 may have missed
// invalidations, so every entry becomes unverified (not dropped: a key whose
// node cannot answer is still served from L1), and what Valkey could not
// take is written back before the followers resynchronise.
func (h *Hybrid) onSubscribed(c valkey.Client, gen uint64) {
	defer h.wg.Done()
	h.l1.MarkUnverified()
	// A connection of the pool may still be the broken one from before the
	// outage: with retries off its first command fails. Prime the pool.
	for range 5 {
		ctx, cancel := context.WithTimeout(h.ctx, h.opts.Timeout*4)
		err := c.Do(ctx, c.B().Ping().Build()).Error()
		cancel()
		if err == nil || !h.sleep(50*time.Millisecond) {
			break
		}
	}
	if h.ctx.Err() != nil {
		return
	}
	ctx, cancel := context.WithTimeout(h.ctx, 5*time.Second)
	wrote, _, _ := h.writePending(ctx, c, true)
	cancel()
	h.subMu.Lock()
	current := h.subGen == gen
	if current {
		h.subscribed.Store(true)
		h.stats.StreamUp.Store(1)
	}
	h.subMu.Unlock()
	if !current {
		return // lost again meanwhile: the next subscription does this
	}
	h.resynced()
	h.connectOnce.Do(func() { close(h.connectedCh) })
	if wrote > 0 {
		h.logger.Info("valkey invalidation stream is back; wrote back values kept while Valkey could not take them", zap.Int("entries", wrote), zap.Int("still_pending", h.pending.len()))
	} else {
		h.logger.Info("valkey invalidation stream is up; L1 entries are checked against Valkey on their next read")
	}
}

func (h *Hybrid) onMessage(m valkey.PubSubMessage) {
	origin, key, ok := strings.Cut(m.Message, "|")
	if !ok || origin == h.origin {
		return
	}
	_ = h.l1.Delete(context.Background(), key)
	h.stats.Invalidations.Add(1)
	h.watch.fire(key)
	h.announced(key)
}

func (h *Hybrid) current() valkey.Client {
	if p := h.client.Load(); p != nil {
		return *p
	}
	return nil
}

// Get implements Store: L1, then Valkey (one round trip: GET and PTTL).
func (h *Hybrid) Get(ctx context.Context, key string) ([]byte, bool, error) {
	now := time.Now()
	v, st := h.l1.lookup(key, now)
	if st == l1Hit {
		h.stats.count(namespaceOf(key), "l1", true)
		return v, true, nil
	}
	return h.getSlow(ctx, key, v, st, now)
}

// getSlow answers an L1 miss or an unverified L1 entry.
func (h *Hybrid) getSlow(ctx context.Context, key string, l1v []byte, st l1State, now time.Time) ([]byte, bool, error) {
	ns := namespaceOf(key)
	// Taken before anything else: a write or invalidation from here on
	// keeps a value read from Valkey out of L1 (see Memory.fill).
	epoch, gen := h.l1.epoch.Load(), h.l1.gen(key)
	// A value Valkey has not taken yet is the newest this process knows.
	if pv, del, ok := h.pending.get(key); ok {
		h.stats.count(ns, "l1", !del)
		if del {
			return nil, false, nil
		}
		return pv, true, nil
	}
	stale := func() ([]byte, bool, error) {
		h.stats.count(ns, "l1", true)
		h.stats.StaleServed.Add(1)
		return l1v, true, nil
	}
	if st == l1Deferred {
		return stale()
	}
	c := h.current()
	if c == nil {
		if st == l1Unverified {
			return stale()
		}
		h.stats.count(ns, "l1", false)
		return nil, false, ErrUnavailable
	}
	v, ttl, found, err := h.read(ctx, c, key)
	if err != nil {
		h.noteError("GET", err)
		if st == l1Unverified {
			// As during an outage: what L1 holds is served.
			h.l1.deferCheck(key, now.Add(recheckAfter))
			return stale()
		}
		h.stats.count(ns, "l1", false)
		return nil, false, ErrUnavailable
	}
	if st == l1Miss {
		h.stats.count(ns, "l1", false)
	}
	h.stats.count(ns, "l2", found)
	if !found {
		if st == l1Unverified {
			h.l1.dropIf(key, gen) // deleted while invalidations were missed
		}
		return nil, false, nil
	}
	h.l1.fill(key, v, ttl, epoch, gen)
	return v, true, nil
}

// read is GET and PTTL of key in Valkey; ttl is capped by L1TTL.
func (h *Hybrid) read(ctx context.Context, c valkey.Client, key string) (v []byte, ttl time.Duration, found bool, err error) {
	ctx, cancel := context.WithTimeout(ctx, h.opts.Timeout)
	defer cancel()
	k := h.opts.KeyPrefix + key
	res := c.DoMulti(ctx, c.B().Get().Key(k).Build(), c.B().Pttl().Key(k).Build())
	v, err = res[0].AsBytes()
	if err != nil && !valkey.IsValkeyNil(err) && ctx.Err() == nil {
		// Retries are off (see clientOption): a connection broken by an
		// outage fails once and is redialled; give it that one chance.
		res = c.DoMulti(ctx, c.B().Get().Key(k).Build(), c.B().Pttl().Key(k).Build())
		v, err = res[0].AsBytes()
	}
	if valkey.IsValkeyNil(err) {
		return nil, 0, false, nil
	}
	if err != nil {
		return nil, 0, false, err
	}
	ttl = h.opts.L1TTL
	if ms, err := res[1].AsInt64(); err == nil && ms > 0 {
		ttl = min(ttl, time.Duration(ms)*time.Millisecond)
	}
	return v, ttl, true, nil
}

// Set implements Store. The write outlives ctx's cancellation (a client
// that drops its request does not abort it). When Valkey cannot take it,
// the value is kept here and written back in the background, and
// ErrUnavailable says other replicas cannot see it yet.
func (h *Hybrid) Set(ctx context.Context, key string, value []byte, ttl time.Duration) error {
	if c := h.current(); c != nil {
		wctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), h.opts.Timeout)
		err := h.write(wctx, c, key, value, ttl)
		cancel()
		if err == nil {
			h.pending.remove(key) // an older unwritten value must not follow
			h.l1.set(key, value, min(ttl, h.opts.L1TTL))
			return nil
		}
		h.noteError("SET", err)
	}
	h.keep(key, value, false, ttl)
	return ErrUnavailable
}

func (h *Hybrid) write(ctx context.Context, c valkey.Client, key string, value []byte, ttl time.Duration) error {
	k := h.opts.KeyPrefix + key
	// One pipeline, so in a cluster the PUBLISH goes to the key's master:
	// an announcement never fails on another, dead, node.
	res := c.DoMulti(ctx,
		c.B().Set().Key(k).Value(valkey.BinaryString(value)).Px(max(ttl, time.Millisecond)).Build(),
		c.B().Publish().Channel(h.channel).Message(h.origin+"|"+key).Build())
	return errors.Join(res[0].Error(), res[1].Error())
}

func (h *Hybrid) del(ctx context.Context, c valkey.Client, key string) error {
	k := h.opts.KeyPrefix + key
	res := c.DoMulti(ctx, c.B().Del().Key(k).Build(), c.B().Publish().Channel(h.channel).Message(h.origin+"|"+key).Build())
	return errors.Join(res[0].Error(), res[1].Error())
}

// Delete implements Store. Like Set, it outlives ctx and, when Valkey
// cannot take it, is kept and written back.
func (h *Hybrid) Delete(ctx context.Context, key string) error {
	_ = h.l1.Delete(ctx, key)
	if c := h.current(); c != nil {
		dctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), h.opts.Timeout)
		err := h.del(dctx, c, key)
		cancel()
		if err == nil {
			h.pending.remove(key)
			return nil
		}
		h.noteError("DEL", err)
	}
	h.keep(key, nil, true, tombstoneTTL)
	return ErrUnavailable
}

// SetShared writes value to Valkey and announces it, without keeping it in
// L1 (for values that must not compete with sessions for L1, such as the
// revocation set's). On failure it returns ErrUnavailable and keeps
// nothing: the caller retries. ctx bounds the call (with Timeout).
func (h *Hybrid) SetShared(ctx context.Context, key string, value []byte, ttl time.Duration) error {
	c := h.current()
	if c == nil {
		return ErrUnavailable
	}
	ctx, cancel := context.WithTimeout(ctx, h.opts.Timeout)
	defer cancel()
	if err := h.write(ctx, c, key, value, ttl); err != nil {
		h.noteError("SET", err)
		return ErrUnavailable
	}
	h.forgetLocal(key)
	return nil
}

// forgetLocal drops what this process holds of key after another path wrote
// it to Valkey (SetShared, a fenced publish): our own announcement is not
// delivered to us, so an L1 copy would stay stale, and an older value
// waiting for write-back would overwrite the new one.
func (h *Hybrid) forgetLocal(key string) {
	h.pending.remove(key)
	_ = h.l1.Delete(context.Background(), key)
}

// GetShared reads key from Valkey only, without filling L1.
func (h *Hybrid) GetShared(ctx context.Context, key string) ([]byte, bool, error) {
	c := h.current()
	if c == nil {
		return nil, false, ErrUnavailable
	}
	v, _, found, err := h.read(ctx, c, key)
	if err != nil {
		h.noteError("GET", err)
		return nil, false, ErrUnavailable
	}
	h.stats.count(namespaceOf(key), "l2", found)
	return v, found, nil
}

// Close stops the background work, writes back (for at most 2 s) what
// Valkey has not taken yet, and closes the connections. Later calls do
// nothing; the Hybrid then answers from L1 and ErrUnavailable.
func (h *Hybrid) Close() {
	h.closeOnce.Do(func() {
		h.cancel()
		h.wg.Wait()
		c := h.current()
		if c == nil {
			if n := h.pending.len(); n > 0 {
				h.stats.addDropped(DropClosed, int64(n))
				h.logger.Warn("closing before Valkey was ever reachable: values written meanwhile stay unknown to the other replicas", zap.Int("entries", n))
			}
			return
		}
		h.flushOnClose(c)
		h.client.Store(nil)
		c.Close()
	})
}

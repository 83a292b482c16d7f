package cache

import (
	"context"
	"crypto/rand"
	"crypto/tls"
	"encoding/hex"
	"errors"
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
}

// Hybrid is L1 (Memory) in front of L2 (Valkey). Writes go to both and are
// announced on a pub/sub channel so other replicas drop their L1 copies.
// Valkey is an accelerator, never a single point of failure: while it is
// down, reads are served from L1, writes stay in L1 (marked for write-back)
// and callers get ErrUnavailable only for what L1 cannot answer. When the
// invalidation stream is lost, L1 keeps serving; when it is back, L1 is
// flushed (it may have missed invalidations) after writing back what was
// written during the outage.
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
	errsSince   atomic.Int64
	subscribed  atomic.Bool
	connectedCh chan struct{}
	connectOnce sync.Once
	startOnce   sync.Once
	watch       watchers
	follow      followers
	sem         chan struct{}
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
	id := make([]byte, 8)
	rand.Read(id)
	ctx, cancel := context.WithCancel(context.Background())
	return &Hybrid{l1: l1, opts: o, stats: stats, logger: logger, channel: o.KeyPrefix + "invalidate",
		origin: hex.EncodeToString(id), ctx: ctx, cancel: cancel, connectedCh: make(chan struct{}),
		sem: make(chan struct{}, 64)}
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
		h.client.Store(&c)
		h.subscribeLoop(c)
		h.client.Store(nil)
		c.Close()
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
	backoff := 100 * time.Millisecond
	for h.ctx.Err() == nil {
		err := c.Dedicated(func(dc valkey.DedicatedClient) error {
			wait := dc.SetPubSubHooks(valkey.PubSubHooks{
				OnMessage: h.onMessage,
				OnSubscription: func(s valkey.PubSubSubscription) {
					if s.Kind == "subscribe" {
						// Write-back needs other connections: not in this callback.
						h.wg.Add(1)
						go h.onSubscribed(c)
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
		if h.subscribed.Swap(false) {
			h.stats.StreamLosses.Add(1)
			h.logger.Warn("valkey invalidation stream lost; serving from L1 until it is back")
		}
		h.noteError("valkey subscription", err)
		if !h.sleep(backoff) {
			return
		}
		backoff = min(backoff*2, 5*time.Second)
	}
}

// onSubscribed runs when the stream is (re)established: L1 may have missed
// invalidations, so clean entries go and dirty ones are written back.
func (h *Hybrid) onSubscribed(c valkey.Client) {
	defer h.wg.Done()
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
	dirty := h.l1.Flush()
	for _, e := range dirty {
		var err error
		for range 5 {
			ctx, cancel := context.WithTimeout(h.ctx, h.opts.Timeout*4)
			err = h.write(ctx, c, e.Key, e.Value, e.TTL)
			cancel()
			if err == nil || !h.sleep(50*time.Millisecond) {
				break
			}
		}
		if err != nil {
			h.l1.set(e.Key, e.Value, e.TTL, true)
			h.noteError("writing back", err)
		}
	}
	h.subscribed.Store(true)
	h.resynced()
	h.connectOnce.Do(func() { close(h.connectedCh) })
	if len(dirty) > 0 {
		h.logger.Info("valkey is back; wrote back values kept in L1 during the outage", zap.Int("entries", len(dirty)))
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

// noteError counts a Valkey error and logs at most one line per 10 s.
func (h *Hybrid) noteError(what string, err error) {
	if err == nil {
		return
	}
	h.stats.ValkeyErrors.Add(1)
	n := h.errsSince.Add(1)
	now := time.Now().UnixNano()
	last := h.lastErrLog.Load()
	if now-last < int64(10*time.Second) || !h.lastErrLog.CompareAndSwap(last, now) {
		return
	}
	h.errsSince.Store(0)
	h.logger.Warn("valkey unavailable", zap.String("during", what), zap.Error(err), zap.Int64("errors_since_last_log", n))
}

func (h *Hybrid) current() valkey.Client {
	if p := h.client.Load(); p != nil {
		return *p
	}
	return nil
}

// Get implements Store: L1, then Valkey (one round trip: GET and PTTL).
func (h *Hybrid) Get(ctx context.Context, key string) ([]byte, bool, error) {
	ns := namespaceOf(key)
	if v, ok := h.l1.get(key, time.Now()); ok {
		h.stats.count(ns, "l1", true)
		return v, true, nil
	}
	h.stats.count(ns, "l1", false)
	c := h.current()
	if c == nil {
		return nil, false, ErrUnavailable
	}
	ctx, cancel := context.WithTimeout(ctx, h.opts.Timeout)
	defer cancel()
	k := h.opts.KeyPrefix + key
	res := c.DoMulti(ctx, c.B().Get().Key(k).Build(), c.B().Pttl().Key(k).Build())
	v, err := res[0].AsBytes()
	if err != nil && !valkey.IsValkeyNil(err) && ctx.Err() == nil {
		// Retries are off (see clientOption): a connection broken by an
		// outage fails once and is redialled; give it that one chance.
		res = c.DoMulti(ctx, c.B().Get().Key(k).Build(), c.B().Pttl().Key(k).Build())
		v, err = res[0].AsBytes()
	}
	if valkey.IsValkeyNil(err) {
		h.stats.count(ns, "l2", false)
		return nil, false, nil
	}
	if err != nil {
		h.noteError("GET", err)
		return nil, false, ErrUnavailable
	}
	h.stats.count(ns, "l2", true)
	ttl := h.opts.L1TTL
	if ms, err := res[1].AsInt64(); err == nil && ms > 0 {
		ttl = min(ttl, time.Duration(ms)*time.Millisecond)
	}
	h.l1.set(key, v, ttl, false)
	return v, true, nil
}

// Set implements Store. While Valkey is down the value is kept in L1 for
// write-back, and ErrUnavailable says other replicas cannot see it yet.
func (h *Hybrid) Set(ctx context.Context, key string, value []byte, ttl time.Duration) error {
	c := h.current()
	if c == nil {
		h.l1.set(key, value, ttl, true)
		return ErrUnavailable
	}
	ctx, cancel := context.WithTimeout(ctx, h.opts.Timeout)
	defer cancel()
	if err := h.write(ctx, c, key, value, ttl); err != nil {
		h.l1.set(key, value, ttl, true)
		h.noteError("SET", err)
		return ErrUnavailable
	}
	h.l1.set(key, value, min(ttl, h.opts.L1TTL), false)
	return nil
}

func (h *Hybrid) write(ctx context.Context, c valkey.Client, key string, value []byte, ttl time.Duration) error {
	k := h.opts.KeyPrefix + key
	res := c.DoMulti(ctx,
		c.B().Set().Key(k).Value(valkey.BinaryString(value)).Px(max(ttl, time.Millisecond)).Build(),
		c.B().Publish().Channel(h.channel).Message(h.origin+"|"+key).Build())
	return errors.Join(res[0].Error(), res[1].Error())
}

// Delete implements Store.
func (h *Hybrid) Delete(ctx context.Context, key string) error {
	_ = h.l1.Delete(ctx, key)
	c := h.current()
	if c == nil {
		return ErrUnavailable
	}
	ctx, cancel := context.WithTimeout(ctx, h.opts.Timeout)
	defer cancel()
	k := h.opts.KeyPrefix + key
	res := c.DoMulti(ctx, c.B().Del().Key(k).Build(), c.B().Publish().Channel(h.channel).Message(h.origin+"|"+key).Build())
	if err := errors.Join(res[0].Error(), res[1].Error()); err != nil {
		h.noteError("DEL", err)
		return ErrUnavailable
	}
	return nil
}

// Close stops the background work and closes the connections.
func (h *Hybrid) Close() {
	h.cancel()
	h.wg.Wait()
}

package caddyoidc

import (
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"strings"
	"sync/atomic"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap"

	"github.com/caddy-oidc/caddy-oidc/cache"
	"github.com/caddy-oidc/caddy-oidc/internal/provider"
	"github.com/caddy-oidc/caddy-oidc/refresh"
)

func init() {
	caddy.RegisterModule(App{})
}

// Package-level state holds what must outlive a config reload: Caddy
// provisions the new config before it cleans up the old one, so an object
// still in use by the new config keeps its reference count above zero and
// survives, with its warm state and connections.
var (
	// providers holds one *provider.Provider per issuer: discovery and JWKS
	// are fetched once per process, whatever the number of routes.
	providers = caddy.NewUsagePool()
	// cacheSets holds one *cacheSet per cache backend (memory, or one Valkey
	// deployment): settings that do not change the backend (lease, hand-off,
	// L1 bounds) keep the set, its sessions and its connections.
	cacheSets = caddy.NewUsagePool()
	// processCoordinator is the refresh coordinator of the process. It is
	// never replaced: a grant in flight during a reload hands its result
	// to whoever asks next, under the old config or the new one.
	processCoordinator = refresh.New[*refreshResult](refresh.Options{IsDefinitive: isDefinitive})
	// currentApp is the newest started config's app: handlers of an older
	// config still serving requests after a reload use its cache set, so a
	// login that completes on them is visible to the new config.
	currentApp atomic.Pointer[App]
)

// sessionsCreated counts logins of the process, whatever its cache
// configs: a counter of the app, not of a cache.
var sessionsCreated = prometheus.NewCounter(prometheus.CounterOpts{
	Name: "caddy_oidc_sessions_created_total",
	Help: "Sessions created at login.",
})

// Defaults and bounds of the app's configuration.
const (
	DefaultL1MaxBytes     = 64 << 20
	DefaultL1MaxEntries   = 100_000
	DefaultRefreshLease   = 20 * time.Second
	DefaultRefreshHandOff = 30 * time.Second
	minL1MaxBytes         = 1 << 20
	minL1MaxEntries       = 1000
	// replayMaxBytes bounds the in-process record of used login attempts
	// and logout tokens, apart from the L1 that holds sessions, so that
	// unauthenticated traffic never evicts a session.
	replayMaxBytes = 8 << 20
	// drainTimeout bounds how long a cleaned-up config's shared state waits
	// for its requests and refresh grants still running.
	drainTimeout = 60 * time.Second
)

// App is the `oidc` app: one per Caddy process. It owns the state every
// `oidc` handler shares: the per-issuer provider metadata and keys, the
// refresh coordinator that makes concurrent requests of one session share
// one refresh grant, and the cache set (memory L1, optionally Valkey L2).
// Without configuration it runs on memory alone.
type App struct {
	// Cache configures the shared cache. Default: memory only.
	Cache *CacheConfig `json:"cache,omitempty"`
	// RefreshLease is how long one replica may hold the right to spend a
	// refresh token before another takes over (a replica that died
	// mid-grant). A grant is cut short before its lease ends, so every
	// route's idp_timeout must be at most half of it. Needs the valkey
	// cache. At least 1s. Default: 20s.
	RefreshLease caddy.Duration `json:"refresh_lease,omitempty"`
	// RefreshHandOff is how long the outcome of a refresh is handed to
	// requests (of any replica) that still carry the spent refresh token.
	// At least 1s. Default: 30s.
	RefreshHandOff caddy.Duration `json:"refresh_handoff,omitempty"`

	coordinator *refresh.Coordinator[*refreshResult]
	caches      *cacheSet
	cacheKey    string
	logger      *zap.Logger
	work        *appWork
	// l1Limits are this config's L1 bounds, applied when it starts (a
	// reload that fails must not shrink the running config's cache).
	l1Limits [2]int64
}

// appWork is what a config's requests do with its app: inflight counts
// requests and refresh grants still running, so that Cleanup releases
// shared state only once they end; retired is set by Cleanup.
type appWork struct {
	inflight atomic.Int64
	retired  atomic.Bool
}

// CacheConfig selects and tunes the shared cache.
type CacheConfig struct {
	// Backend is "memory" (in-process only) or "valkey" (memory L1 in front
	// of a Valkey or Redis L2 shared by replicas). Default: memory.
	Backend string `json:"backend,omitempty"`
	// Address lists the Valkey server, or the seeds of a cluster or of a
	// sentinel set. Required for valkey.
	Address []string `json:"address,omitempty"`
	// Username and Password authenticate to Valkey (ACL or requirepass).
	Username string `json:"username,omitempty"`
	Password string `json:"password,omitempty"`
	// DB selects the database (standalone only). Default: 0.
	DB int `json:"db,omitempty"`
	// KeyPrefix starts every key. Default: caddy-oidc:
	KeyPrefix string `json:"key_prefix,omitempty"`
	// TLS connects to Valkey over TLS.
	TLS bool `json:"tls,omitempty"`
	// TLSServerName overrides the name checked in Valkey's certificate.
	TLSServerName string `json:"tls_server_name,omitempty"`
	// SentinelMaster names the master set when Address lists sentinels.
	SentinelMaster string `json:"sentinel_master,omitempty"`
	// Timeout bounds each Valkey call made while a request waits. Default: 300ms.
	Timeout caddy.Duration `json:"timeout,omitempty"`
	// L1MaxBytes bounds the in-process cache. Default: 64 MiB.
	L1MaxBytes int64 `json:"l1_max_bytes,omitempty"`
	// L1MaxEntries bounds the in-process cache's entries. Default: 100000.
	L1MaxEntries int `json:"l1_max_entries,omitempty"`
}

// cacheSet is one cache backend's live state.
type cacheSet struct {
	// backend is the config's: "memory" or "valkey".
	backend string
	// shared is the backend: in memory, one process; with Valkey, every
	// replica of the deployment.
	shared cache.Shared
	l1     *cache.Memory
	// replay records used login attempts and logout token ids apart from
	// l1 (so they never evict a session): the memory backend's records,
	// and the fallback of Valkey's while it cannot answer.
	replay *cache.Memory
	// predecessor is the Valkey-backed set that served before a reload
	// changed the cache block: until this set's first connection, reads it
	// cannot answer are asked there, so the reload costs no 503s.
	predecessor atomic.Pointer[cacheSet]
	stats       *cache.Stats
	coll        *cache.Collector
	revs        *revocations
}

func (c *cacheSet) Destruct() error {
	c.revs.detach(c.shared)
	c.shared.Close()
	return nil
}

// health is the backend's state for health_path: "memory", or "ok" and
// "down" for Valkey.
func (c *cacheSet) health() string {
	switch {
	case c.backend == backendMemory:
		return "memory"
	case c.shared.Healthy():
		return "ok"
	default:
		return "down"
	}
}

// CaddyModule returns the Caddy module information.
func (App) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{
		ID:  "oidc",
		New: func() caddy.Module { return new(App) },
	}
}

// Provision takes the shared cache set from the pool.
func (a *App) Provision(ctx caddy.Context) error {
	a.logger = ctx.Logger()
	a.work = new(appWork)
	processStart.CompareAndSwap(0, time.Now().UnixNano())
	cfg, err := a.resolveCache()
	if err != nil {
		return err
	}
	switch {
	case a.RefreshLease == 0:
		a.RefreshLease = caddy.Duration(DefaultRefreshLease)
	case time.Duration(a.RefreshLease) < time.Second:
		return fmt.Errorf("refresh_lease %s is too short (every lease would expire mid-grant): use at least 1s", time.Duration(a.RefreshLease))
	}
	switch {
	case a.RefreshHandOff == 0:
		a.RefreshHandOff = caddy.Duration(DefaultRefreshHandOff)
	case time.Duration(a.RefreshHandOff) < time.Second:
		return fmt.Errorf("refresh_handoff %s is too short: use at least 1s", time.Duration(a.RefreshHandOff))
	}
	// The set's identity is its backend only: what a reload may change
	// without losing sessions, revocations or connections is left out.
	identity := cfg
	identity.L1MaxBytes, identity.L1MaxEntries = 0, 0
	keyJSON, _ := json.Marshal(identity)
	a.cacheKey = string(keyJSON)
	v, _, err := cacheSets.LoadOrNew(a.cacheKey, func() (caddy.Destructor, error) {
		set, err := newCacheSet(cfg)
		if err == nil && set.backend == backendValkey {
			if cur := currentApp.Load(); cur != nil && cur.caches != nil && cur.caches.backend == backendValkey {
				set.predecessor.Store(cur.caches)
			}
		}
		return set, err
	})
	if err != nil {
		return fmt.Errorf("cache: %w", err)
	}
	a.caches = v.(*cacheSet)
	a.l1Limits = [2]int64{cfg.L1MaxBytes, int64(cfg.L1MaxEntries)}
	if reg := ctx.GetMetricsRegistry(); reg != nil {
		for _, c := range []prometheus.Collector{a.caches.coll, sessionsCreated, readiness} {
			if err := reg.Register(c); err != nil && !errors.As(err, &prometheus.AlreadyRegisteredError{}) {
				a.logger.Warn("registering metrics", zap.Error(err))
			}
		}
	}
	a.coordinator = processCoordinator
	return nil
}

// revocationStartupWait bounds how long after the process started a
// session waits (503) for the revocation set's first read of Valkey; past
// it, a Valkey that is down costs no outage.
const revocationStartupWait = 10 * time.Second

// processStart is when this process loaded its first oidc config.
var processStart atomic.Int64

// awaitingRevocations reports whether a session should wait for the
// revocation set's first read of Valkey: only just after the process
// started, and only while Valkey has not failed yet (a Valkey that is down
// at start costs no outage: sessions are served, as during any outage).
// The memory backend is read at once: it never waits.
func (a *App) awaitingRevocations(revs *revocations) bool {
	if a.work == nil || time.Now().UnixNano()-processStart.Load() >= int64(revocationStartupWait) {
		return false
	}
	return a.set().stats.ValkeyErrors.Load() == 0 && !revs.ready()
}

// hold marks work of this config in progress, until release.
func (a *App) hold() {
	if a.work != nil {
		a.work.inflight.Add(1)
	}
}

// release ends what hold began. Two methods, not a returned closure: this
// runs on every request and must not allocate.
func (a *App) release() {
	if a.work != nil {
		a.work.inflight.Add(-1)
	}
}

// set returns the cache set requests use: this config's, or once it was
// replaced by a reload, the newest config's, so that the requests it still
// serves land where the new config reads.
func (a *App) set() *cacheSet {
	if a.work != nil && a.work.retired.Load() {
		if cur := currentApp.Load(); cur != nil && cur.caches != nil {
			return cur.caches
		}
	}
	return a.caches
}

// liveStore is the cache store of whatever config is current (see set).
type liveStore struct{ app *App }

func (s liveStore) Get(ctx context.Context, key string) ([]byte, bool, error) {
	set := s.app.set()
	v, found, err := set.shared.Get(ctx, key)
	if err != nil {
		if prev := set.waitingFor(); prev != nil {
			return prev.shared.Get(ctx, key)
		}
	}
	return v, found, err
}

// waitingFor returns the set to read from while this one has not yet
// connected to Valkey, or nil.
func (c *cacheSet) waitingFor() *cacheSet {
	prev := c.predecessor.Load()
	if prev == nil {
		return nil
	}
	select {
	case <-c.shared.Connected():
		c.predecessor.Store(nil) // connected: the old set may go
		return nil
	default:
		return prev
	}
}

func (s liveStore) Set(ctx context.Context, key string, value []byte, ttl time.Duration) error {
	return s.app.set().shared.Set(ctx, key, value, ttl)
}

func (s liveStore) Delete(ctx context.Context, key string) error {
	return s.app.set().shared.Delete(ctx, key)
}

// via is how the coordinator reaches the other replicas of this config (in
// memory, the process is the only one). The shared state is looked up on
// every call: a flight that outlives its config (waiting on another
// replica's lease during a reload) talks to the current cache set, never
// to a closed one.
func (a *App) via() refresh.Via {
	return refresh.Via{Shared: liveShared{a}, Lease: time.Duration(a.RefreshLease), HandOff: time.Duration(a.RefreshHandOff)}
}

// liveShared is refresh.Shared on the current cache set (see via).
type liveShared struct{ app *App }

func (s liveShared) TryLease(ctx context.Context, key, token string, ttl time.Duration) (bool, error) {
	return s.app.set().shared.TryLease(ctx, key, token, ttl)
}

func (s liveShared) RenewLease(ctx context.Context, key, token string, ttl time.Duration) (bool, error) {
	return s.app.set().shared.RenewLease(ctx, key, token, ttl)
}

func (s liveShared) ReleaseLease(ctx context.Context, key, token string) error {
	return s.app.set().shared.ReleaseLease(ctx, key, token)
}

func (s liveShared) Get(ctx context.Context, key string) ([]byte, bool, error) {
	return s.app.set().shared.Get(ctx, key)
}

func (s liveShared) PublishLeased(ctx context.Context, lease, token, key string, value []byte, ttl time.Duration) (bool, error) {
	return s.app.set().shared.PublishLeased(ctx, lease, token, key, value, ttl)
}

func (s liveShared) Watch(key string) (<-chan struct{}, func()) {
	return s.app.set().shared.Watch(key)
}

// addOnce records key for ttl and reports whether it was new, on every
// replica of the backend, never in the L1 that holds sessions.
func (a *App) addOnce(ctx context.Context, key string, ttl time.Duration) (bool, error) {
	s := a.set()
	fresh, err := s.shared.Add(ctx, key, []byte{1}, ttl)
	if err != nil {
		// Valkey is away: one replica's record still stops replays here.
		return s.replay.Add(ctx, key, []byte{1}, ttl)
	}
	return fresh, nil
}

// resolveCache applies defaults and placeholders and validates the cache config.
func (a *App) resolveCache() (CacheConfig, error) {
	var c CacheConfig
	if a.Cache != nil {
		c = *a.Cache
	}
	repl := caddy.NewReplacer()
	c.Username = repl.ReplaceAll(c.Username, "")
	c.Password = repl.ReplaceAll(c.Password, "")
	addrs := make([]string, 0, len(c.Address))
	if strings.ContainsAny(c.KeyPrefix, "{}") {
		// Braces would split the hash tag that keeps a lease and its
		// result on one cluster slot.
		return c, fmt.Errorf("cache key_prefix %q must not contain { or }", c.KeyPrefix)
	}
	for _, ad := range c.Address {
		addrs = append(addrs, repl.ReplaceAll(ad, ""))
	}
	c.Address = addrs
	if c.Backend == "" {
		c.Backend = backendMemory
	}
	if c.L1MaxBytes == 0 {
		c.L1MaxBytes = DefaultL1MaxBytes
	}
	if c.L1MaxEntries == 0 {
		c.L1MaxEntries = DefaultL1MaxEntries
	}
	switch {
	case c.Backend != backendMemory && c.Backend != backendValkey:
		return c, fmt.Errorf("cache backend %q is unknown; use memory or valkey", c.Backend)
	case c.Backend == backendValkey && len(c.Address) == 0:
		return c, errors.New("cache valkey: address is required (host:port of Valkey or Redis)")
	case c.L1MaxBytes < minL1MaxBytes:
		return c, fmt.Errorf("cache l1_max_bytes %d is too small to hold sessions: use at least %d (1 MiB)", c.L1MaxBytes, minL1MaxBytes)
	case c.L1MaxEntries < minL1MaxEntries:
		return c, fmt.Errorf("cache l1_max_entries %d is too small: use at least %d", c.L1MaxEntries, minL1MaxEntries)
	case c.DB < 0:
		return c, fmt.Errorf("cache db %d must not be negative", c.DB)
	case c.Timeout < 0 || c.Timeout > 0 && time.Duration(c.Timeout) < 10*time.Millisecond:
		return c, fmt.Errorf("cache timeout %s must be at least 10ms", time.Duration(c.Timeout))
	}
	if c.Backend == backendMemory {
		// Settings of a Valkey connection on the memory backend are a
		// mistake (a missing "backend valkey"), not something to ignore.
		for field, set := range map[string]bool{"address": len(c.Address) > 0, "username": c.Username != "", "password": c.Password != "",
			"db": c.DB != 0, "key_prefix": c.KeyPrefix != "", "tls": c.TLS, "tls_server_name": c.TLSServerName != "", "sentinel_master": c.SentinelMaster != ""} {
			if set {
				return c, fmt.Errorf("cache %s is set but the backend is memory; add backend valkey or remove %s", field, field)
			}
		}
	}
	for _, ad := range c.Address {
		if ad == "" || strings.Contains(ad, "://") {
			return c, fmt.Errorf("cache valkey: address %q must be host:port", ad)
		}
	}
	if c.KeyPrefix == "" && c.Backend == backendValkey {
		c.KeyPrefix = "caddy-oidc:"
	}
	return c, nil
}

// The cache backends.
const (
	backendMemory = "memory"
	backendValkey = "valkey"
)

func newCacheSet(c CacheConfig) (*cacheSet, error) {
	stats := new(cache.Stats)
	l1 := cache.NewMemory(c.L1MaxBytes, c.L1MaxEntries, stats)
	set := &cacheSet{backend: c.Backend, l1: l1, stats: stats, coll: cache.NewCollector(stats),
		replay: cache.NewMemory(replayMaxBytes, replayMaxBytes/256, nil)}
	if c.Backend == backendValkey {
		var tlsConf *tls.Config
		if c.TLS {
			tlsConf = &tls.Config{MinVersion: tls.VersionTLS12, ServerName: c.TLSServerName}
		}
		set.shared = cache.NewHybrid(l1, cache.ValkeyOptions{
			Addresses: c.Address, Username: c.Username, Password: c.Password, DB: c.DB, TLS: tlsConf,
			SentinelMaster: c.SentinelMaster, KeyPrefix: c.KeyPrefix, Timeout: timeDuration(c.Timeout),
		}, stats, caddy.Log().Named("oidc.cache"))
	} else {
		set.shared = cache.NewLocal(l1, set.replay)
	}
	// The revocation set is the process's, whatever the config: it attaches
	// to this set's backend (follows it, writes to it what it lacks).
	set.revs = processRevocations
	set.revs.attach(set.shared)
	return set, nil
}

// Start connects the shared cache to Valkey in the background (a no-op when
// it already is, as after a reload). It does not wait: Caddy starts while
// Valkey is down and the cache connects when it comes up.
func (a *App) Start() error {
	if a.caches != nil {
		if a.l1Limits[0] > 0 {
			// A kept set takes this config's bounds, with its contents.
			a.caches.l1.SetLimits(a.l1Limits[0], int(a.l1Limits[1]))
		}
		a.caches.shared.Start()
		currentApp.Store(a)
	}
	return nil
}

// Stop implements caddy.App; pooled state is released in Cleanup.
func (a *App) Stop() error { return nil }

// Cleanup releases this config's reference to the shared cache set, once
// the requests and refresh grants of this config still running have ended
// (Caddy does not wait for them on a reload), or after drainTimeout.
func (a *App) Cleanup() error {
	if a.caches == nil {
		return nil
	}
	w := a.work
	w.retired.Store(true)
	key := a.cacheKey
	release := func() { _, _ = cacheSets.Delete(key) }
	if w.inflight.Load() == 0 {
		release()
		return nil
	}
	go func() {
		deadline := time.Now().Add(drainTimeout)
		t := time.NewTicker(50 * time.Millisecond)
		defer t.Stop()
		for w.inflight.Load() > 0 && time.Now().Before(deadline) {
			<-t.C
		}
		release()
	}()
	return nil
}

// provider returns the shared Provider of issuer (with this IdP call
// timeout); release it with releaseProvider.
func (a *App) provider(issuer string, timeout time.Duration) (*provider.Provider, error) {
	v, _, err := providers.LoadOrNew(providerKey(issuer, timeout), func() (caddy.Destructor, error) {
		return provider.New(issuer, provider.Options{HTTPClient: &http.Client{
			Timeout:   timeout,
			Transport: provider.NewLimitedTransport(http.DefaultTransport),
		}}), nil
	})
	if err != nil {
		return nil, err
	}
	return v.(*provider.Provider), nil
}

func (a *App) releaseProvider(issuer string, timeout time.Duration) {
	_, _ = providers.Delete(providerKey(issuer, timeout))
}

func providerKey(issuer string, timeout time.Duration) string { return issuer + "|" + timeout.String() }

// isDefinitive tells refresh failures that end a session from transient ones.
func isDefinitive(err error) bool {
	return errors.Is(err, provider.ErrInvalidGrant) || errors.Is(err, provider.ErrInvalidToken)
}

// Interface guards
var (
	_ caddy.App          = (*App)(nil)
	_ caddy.Provisioner  = (*App)(nil)
	_ caddy.CleanerUpper = (*App)(nil)
	_ caddy.Destructor   = (*cacheSet)(nil)
	_ cache.Store        = liveStore{}
	_ refresh.Shared     = liveShared{}
	_ refresh.Shared     = cache.Shared(nil)
)

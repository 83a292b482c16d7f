package caddyoidc

import (
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"strings"
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

// Package-level pools hold what must outlive a config reload: Caddy
// provisions the new config before it cleans up the old one, so an object
// still in use by the new config keeps its reference count above zero and
// survives, with its warm state and connections.
var (
	// providers holds one *provider.Provider per issuer: discovery and JWKS
	// are fetched once per process, whatever the number of routes.
	providers = caddy.NewUsagePool()
	// coordinators holds the process's refresh coordinator.
	coordinators = caddy.NewUsagePool()
	// cacheSets holds one *cacheSet per cache configuration: an unchanged
	// config keeps its L1 contents and Valkey connections over a reload.
	cacheSets = caddy.NewUsagePool()
)

// Defaults of the cache configuration.
const (
	DefaultL1MaxBytes   = 64 << 20
	DefaultL1MaxEntries = 100_000
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
	// mid-grant). Needs the valkey cache. Default: 10s.
	RefreshLease caddy.Duration `json:"refresh_lease,omitempty"`
	// RefreshHandOff is how long the outcome of a refresh is handed to
	// requests (of any replica) that still carry the spent refresh token.
	// Default: 30s.
	RefreshHandOff caddy.Duration `json:"refresh_handoff,omitempty"`

	coordinator *refresh.Coordinator[*refreshResult]
	caches      *cacheSet
	cacheKey    string
	logger      *zap.Logger
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

// cacheSet is one cache configuration's live state.
type cacheSet struct {
	store  cache.Store
	l1     *cache.Memory
	hybrid *cache.Hybrid // nil for memory only
	stats  *cache.Stats
	coll   *cache.Collector
	revs   *revocations
}

func (c *cacheSet) Destruct() error {
	if c.hybrid != nil {
		c.hybrid.Close()
	}
	return nil
}

// CaddyModule returns the Caddy module information.
func (App) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{
		ID:  "oidc",
		New: func() caddy.Module { return new(App) },
	}
}

// Provision takes the shared refresh coordinator and cache set from the pools.
func (a *App) Provision(ctx caddy.Context) error {
	a.logger = ctx.Logger()
	cfg, err := a.resolveCache()
	if err != nil {
		return err
	}
	if a.RefreshLease < 0 || a.RefreshHandOff < 0 {
		return errors.New("oidc app: refresh_lease and refresh_handoff must not be negative")
	}
	keyJSON, _ := json.Marshal(struct {
		Cache          CacheConfig
		Lease, HandOff caddy.Duration
	}{cfg, a.RefreshLease, a.RefreshHandOff})
	a.cacheKey = string(keyJSON)
	v, _, err := cacheSets.LoadOrNew(a.cacheKey, func() (caddy.Destructor, error) { return newCacheSet(cfg) })
	if err != nil {
		return fmt.Errorf("oidc app: cache: %w", err)
	}
	a.caches = v.(*cacheSet)
	if reg := ctx.GetMetricsRegistry(); reg != nil {
		if err := reg.Register(a.caches.coll); err != nil && !errors.As(err, &prometheus.AlreadyRegisteredError{}) {
			a.logger.Warn("registering metrics", zap.Error(err))
		}
	}

	// One coordinator per cache set: with Valkey, it coordinates replicas.
	c, _, err := coordinators.LoadOrNew(a.cacheKey, func() (caddy.Destructor, error) {
		o := refresh.Options{IsDefinitive: isDefinitive,
			HandOff: timeDuration(a.RefreshHandOff), Lease: timeDuration(a.RefreshLease)}
		if a.caches.hybrid != nil {
			o.Shared = a.caches.hybrid
		}
		return refresh.New[*refreshResult](o), nil
	})
	if err != nil {
		return fmt.Errorf("oidc app: refresh coordinator: %w", err)
	}
	a.coordinator = c.(*refresh.Coordinator[*refreshResult])
	return nil
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
	for _, ad := range c.Address {
		addrs = append(addrs, repl.ReplaceAll(ad, ""))
	}
	c.Address = addrs
	if c.Backend == "" {
		c.Backend = "memory"
	}
	if c.L1MaxBytes == 0 {
		c.L1MaxBytes = DefaultL1MaxBytes
	}
	if c.L1MaxEntries == 0 {
		c.L1MaxEntries = DefaultL1MaxEntries
	}
	switch {
	case c.Backend != "memory" && c.Backend != "valkey":
		return c, fmt.Errorf("oidc app: cache backend %q is unknown; use memory or valkey", c.Backend)
	case c.Backend == "valkey" && len(c.Address) == 0:
		return c, errors.New("oidc app: cache valkey: address is required (host:port of Valkey or Redis)")
	case c.L1MaxBytes < 0 || c.L1MaxEntries < 0 || c.DB < 0 || c.Timeout < 0:
		return c, errors.New("oidc app: cache: l1_max_bytes, l1_max_entries, db and timeout must not be negative")
	}
	for _, ad := range c.Address {
		if ad == "" || strings.Contains(ad, "://") {
			return c, fmt.Errorf("oidc app: cache valkey: address %q must be host:port", ad)
		}
	}
	if c.KeyPrefix == "" && c.Backend == "valkey" {
		c.KeyPrefix = "caddy-oidc:"
	}
	return c, nil
}

func newCacheSet(c CacheConfig) (*cacheSet, error) {
	stats := new(cache.Stats)
	l1 := cache.NewMemory(c.L1MaxBytes, c.L1MaxEntries, stats)
	set := &cacheSet{store: l1, l1: l1, stats: stats, coll: cache.NewCollector(stats)}
	if c.Backend == "valkey" {
		var tlsConf *tls.Config
		if c.TLS {
			tlsConf = &tls.Config{MinVersion: tls.VersionTLS12, ServerName: c.TLSServerName}
		}
		set.hybrid = cache.NewHybrid(l1, cache.ValkeyOptions{
			Addresses: c.Address, Username: c.Username, Password: c.Password, DB: c.DB, TLS: tlsConf,
			SentinelMaster: c.SentinelMaster, KeyPrefix: c.KeyPrefix, Timeout: timeDuration(c.Timeout),
		}, stats, caddy.Log().Named("oidc.cache"))
		set.store = set.hybrid
	}
	set.revs = newRevocations(set.store, set.hybrid, caddy.Log().Named("oidc.revocations"))
	return set, nil
}

// Start connects the shared cache to Valkey in the background (a no-op when
// it already is, as after a reload). It does not wait: Caddy starts while
// Valkey is down and the cache connects when it comes up.
func (a *App) Start() error {
	if a.caches != nil && a.caches.hybrid != nil {
		a.caches.hybrid.Start()
	}
	return nil
}

// Stop implements caddy.App; pooled state is released in Cleanup.
func (a *App) Stop() error { return nil }

// Cleanup releases this config's references to the shared state.
func (a *App) Cleanup() error {
	if a.coordinator != nil {
		_, _ = coordinators.Delete(a.cacheKey)
		a.coordinator = nil
	}
	if a.caches != nil {
		_, _ = cacheSets.Delete(a.cacheKey)
		a.caches = nil
	}
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
)

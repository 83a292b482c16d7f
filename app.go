package caddyoidc

import (
	"errors"
	"fmt"

	"github.com/caddyserver/caddy/v2"
	"go.uber.org/zap"

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
)

const coordinatorKey = "refresh"

// App is the `oidc` app: one per Caddy process. It owns the state every
// `oidc` handler shares: the per-issuer provider metadata and keys, and the
// refresh coordinator that makes concurrent requests of one session share
// one refresh grant. Without configuration it runs on memory alone.
type App struct {
	coordinator *refresh.Coordinator[*refreshResult]
	logger      *zap.Logger
}

// CaddyModule returns the Caddy module information.
func (App) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{
		ID:  "oidc",
		New: func() caddy.Module { return new(App) },
	}
}

// Provision takes the shared refresh coordinator from the pool.
func (a *App) Provision(ctx caddy.Context) error {
	a.logger = ctx.Logger()
	v, _, err := coordinators.LoadOrNew(coordinatorKey, func() (caddy.Destructor, error) {
		return refresh.New[*refreshResult](refresh.Options{IsDefinitive: isDefinitive}), nil
	})
	if err != nil {
		return fmt.Errorf("oidc app: refresh coordinator: %w", err)
	}
	a.coordinator = v.(*refresh.Coordinator[*refreshResult])
	return nil
}

// Start implements caddy.App; the shared state needs no start.
func (a *App) Start() error { return nil }

// Stop implements caddy.App; pooled state is released in Cleanup.
func (a *App) Stop() error { return nil }

// Cleanup releases this config's reference to the shared state.
func (a *App) Cleanup() error {
	if a.coordinator != nil {
		_, _ = coordinators.Delete(coordinatorKey)
		a.coordinator = nil
	}
	return nil
}

// provider returns the shared Provider of issuer; release it with releaseProvider.
func (a *App) provider(issuer string) (*provider.Provider, error) {
	v, _, err := providers.LoadOrNew(issuer, func() (caddy.Destructor, error) {
		return provider.New(issuer, provider.Options{}), nil
	})
	if err != nil {
		return nil, err
	}
	return v.(*provider.Provider), nil
}

func (a *App) releaseProvider(issuer string) { _, _ = providers.Delete(issuer) }

// isDefinitive tells refresh failures that end a session from transient ones.
func isDefinitive(err error) bool {
	return errors.Is(err, provider.ErrInvalidGrant) || errors.Is(err, provider.ErrInvalidToken)
}

// Interface guards
var (
	_ caddy.App          = (*App)(nil)
	_ caddy.Provisioner  = (*App)(nil)
	_ caddy.CleanerUpper = (*App)(nil)
)

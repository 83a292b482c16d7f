package provider

import "time"

// DiscoveryFetches reports how many discovery fetches completed.
func (p *Provider) DiscoveryFetches() int { return p.disc.count() }

// JWKSFetches reports how many JWKS fetches completed.
func (p *Provider) JWKSFetches() int { return p.keys.count() }

// SetClock makes the Provider's fetch scheduling (TTLs, backoff, refetch
// budgets) read now; call it before the Provider is used.
func SetClock(p *Provider, now func() time.Time) {
	p.disc.clock, p.keys.clock = now, now
}

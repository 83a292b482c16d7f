package provider

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"sync"
	"sync/atomic"
	"time"

	"github.com/lestrrat-go/jwx/v2/jwk"
)

// jwksTTL is how old a key set may grow before it is refetched (lazily, on
// the next use), so keys the IdP retires stop being accepted.
const jwksTTL = 15 * time.Minute

// maxTrustedKids bounds the per-kid refetch budget of tokens from the token
// endpoint; an IdP rotates a handful of keys, not hundreds.
const maxTrustedKids = 32

// refetchBudget rate-limits JWKS refetches caused by an unknown kid. Input
// anyone can send (bearer JWTs, logout tokens) shares one budget; tokens the
// IdP's token endpoint just returned have their own, per kid, so an attacker
// spending the shared budget cannot make a key rotation look like a bad token.
type refetchBudget struct {
	every time.Duration

	mu        sync.Mutex
	untrusted time.Time            // last refetch for untrusted input
	trusted   map[string]time.Time // kid: last refetch for a token endpoint token
}

// allow reports whether a refetch for kid may start now, and spends the budget.
func (b *refetchBudget) allow(kid string, fromTokenEndpoint bool, now time.Time) bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	if !fromTokenEndpoint {
		if now.Sub(b.untrusted) < b.every {
			return false
		}
		b.untrusted = now
		return true
	}
	if last, ok := b.trusted[kid]; ok && now.Sub(last) < b.every {
		return false
	}
	if b.trusted == nil {
		b.trusted = make(map[string]time.Time)
	}
	if len(b.trusted) >= maxTrustedKids {
		for k, last := range b.trusted {
			if now.Sub(last) >= b.every {
				delete(b.trusted, k)
			}
		}
		if len(b.trusted) >= maxTrustedKids {
			return false
		}
	}
	b.trusted[kid] = now
	return true
}

// fetchJWKS reads the IdP's key set. An empty set counts as a failure, so
// a good set already known is kept.
func (p *Provider) fetchJWKS(ctx context.Context, u string) (jwk.Set, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
	if err != nil {
		return nil, fmt.Errorf("JWKS request %s: %v: %w", u, err, ErrUnavailable)
	}
	req.Header.Set("Accept", "application/jwk-set+json, application/json")
	resp, err := p.hc.Do(req)
	if err != nil {
		return nil, fmt.Errorf("fetching JWKS %s: %v: %w", u, err, ErrUnavailable)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("fetching JWKS %s: HTTP %d: %w", u, resp.StatusCode, ErrUnavailable)
	}
	// The caller's client may lack the limited transport: cap here as well.
	body, err := io.ReadAll(io.LimitReader(resp.Body, MaxResponseBytes+1))
	if err != nil {
		return nil, fmt.Errorf("reading JWKS %s: %v: %w", u, err, ErrUnavailable)
	}
	if len(body) > MaxResponseBytes {
		return nil, fmt.Errorf("JWKS %s exceeds %d bytes: %w", u, MaxResponseBytes, ErrUnavailable)
	}
	set, err := jwk.Parse(body)
	if err != nil {
		return nil, fmt.Errorf("parsing JWKS %s: %v: %w", u, err, ErrUnavailable)
	}
	if set.Len() == 0 {
		return nil, fmt.Errorf("JWKS %s has no keys: %w", u, ErrUnavailable)
	}
	return set, nil
}

// signingKey finds the key for kid, refetching the JWKS (rate-limited) when
// none fits, which is how an IdP's key rotation shows up. A token whose key
// is missing is refused (ErrInvalidToken) when anyone could have sent it;
// when it came from the token endpoint the IdP signed it and our key set is
// behind, so it is transient (ErrUnavailable) and the tokens the IdP granted
// are not thrown away. A token that names its key ambiguously or names a
// key of another type is refused whatever its source.
func (p *Provider) signingKey(ctx context.Context, jwksURL, kid, alg string, fromTokenEndpoint bool) (jwk.Key, error) {
	set, err := p.keys.get(ctx, jwksURL)
	if err != nil {
		return nil, err
	}
	k, res := findKey(set, kid, alg)
	if res == keyFound {
		return k, nil
	}
	var looked atomic.Bool
	set, err = p.keys.refetch(ctx, jwksURL, func(now time.Time) bool {
		ok := p.budget.allow(kid, fromTokenEndpoint, now)
		looked.Store(ok)
		return ok
	})
	if err != nil {
		return nil, err
	}
	switch k, res = findKey(set, kid, alg); {
	case res == keyFound:
		return k, nil
	case res == keyUnfit && kid == "":
		// Core §10.1: with several keys in the set, kid is required.
		return nil, fmt.Errorf("token has no kid and the IdP's JWKS has several %s keys: %w", alg, ErrInvalidToken)
	case res == keyUnfit:
		return nil, fmt.Errorf("the IdP's key %q does not fit algorithm %s: %w", clip(kid), alg, ErrInvalidToken)
	case fromTokenEndpoint:
		return nil, fmt.Errorf("no key with id %q for %s in the IdP's JWKS yet: %w", clip(kid), alg, ErrUnavailable)
	case !looked.Load():
		// The refetch budget was spent (maybe by junk tokens): the key may
		// be the IdP's newest. Not a verdict on the token: try again soon
		// (a logout token answered 400 would be lost for good).
		return nil, fmt.Errorf("no key with id %q for %s in the IdP's JWKS, and its keys were fetched too recently to look again: %w", clip(kid), alg, ErrUnavailable)
	}
	return nil, fmt.Errorf("no key with id %q for %s in the IdP's JWKS: %w", clip(kid), alg, ErrInvalidToken)
}

// clip shortens a value taken from untrusted input before it goes into an
// error message (and so into logs).
func clip(s string) string {
	if len(s) > 64 {
		return s[:64] + "..."
	}
	return s
}

type keyLookup int

const (
	keyFound   keyLookup = iota
	keyMissing           // no key with the kid (or, without kid, no key fits)
	keyUnfit             // the kid's key does not fit alg, or without kid several fit
)

func findKey(set jwk.Set, kid, alg string) (jwk.Key, keyLookup) {
	if kid != "" {
		k, ok := set.LookupKeyID(kid)
		switch {
		case !ok:
			return nil, keyMissing
		case !keyFits(k, alg):
			return nil, keyUnfit
		}
		return k, keyFound
	}
	// No kid: only an unambiguous single signing key will do.
	var found jwk.Key
	for i := 0; i < set.Len(); i++ {
		k, _ := set.Key(i)
		if keyFits(k, alg) {
			if found != nil {
				return nil, keyUnfit
			}
			found = k
		}
	}
	if found == nil {
		return nil, keyMissing
	}
	return found, keyFound
}

func keyFits(k jwk.Key, alg string) bool {
	if u := k.KeyUsage(); u != "" && u != "sig" {
		return false
	}
	if a := k.Algorithm().String(); a != "" && a != alg {
		return false
	}
	switch k.KeyType() {
	case "RSA":
		return alg[0] == 'R' || alg[0] == 'P'
	case "EC":
		return alg[0] == 'E' && alg != "EdDSA"
	case "OKP":
		return alg == "EdDSA"
	}
	return false
}

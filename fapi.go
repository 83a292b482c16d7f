package caddyoidc

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"errors"
	"fmt"
	"net/url"
	"strconv"
	"sync"
	"time"

	"github.com/caddy-oidc/caddy-oidc/internal/provider"
	"github.com/caddy-oidc/caddy-oidc/session"
)

// profileFAPI2 is the FAPI 2.0 Security Profile for this client.
const profileFAPI2 = "fapi2"

// fapi2Algorithms are the signature algorithms FAPI 2.0 allows for ID
// tokens and authorization responses (§5.4.1).
var fapi2Algorithms = []string{"PS256", "ES256", "EdDSA"}

// fapi2 reports whether the route runs the FAPI 2.0 profile.
func (h *Handler) fapi2() bool { return h.Profile == profileFAPI2 }

// pushedRequests reports whether authorization requests are pushed (PAR).
func (h *Handler) pushedRequests() bool { return h.Login.PAR || h.fapi2() }

// validateProfile checks that nothing in the configuration contradicts
// the profile; each error names the rule.
func (h *Handler) validateProfile() error {
	switch h.Profile {
	case "":
		return nil
	case profileFAPI2:
	default:
		return fmt.Errorf("profile %q is unknown; use fapi2", h.Profile)
	}
	c := h.Client
	switch {
	case c.Secret != "":
		return errors.New("profile fapi2: client_secret is not allowed; authenticate with private_key_jwt (client_private_key) or tls_client_auth (client_certificate) (FAPI 2.0 §5.3.2.1)")
	case c.AuthMethod != "" && c.AuthMethod != provider.AuthPrivateKeyJWT && c.AuthMethod != provider.AuthTLSClient:
		return fmt.Errorf("profile fapi2: client_auth_method %s is not allowed; use private_key_jwt or tls_client_auth (FAPI 2.0 §5.3.2.1)", c.AuthMethod)
	case c.PrivateKey == "" && c.Certificate == "":
		return errors.New("profile fapi2: the client needs client_private_key (private_key_jwt) or client_certificate (tls_client_auth) (FAPI 2.0 §5.3.2.1)")
	case !c.DPoP && c.Certificate == "":
		return errors.New("profile fapi2: access tokens must be sender-constrained: turn on dpop, or use client_certificate for certificate-bound tokens (FAPI 2.0 §5.3.2.2)")
	case h.Bearer != nil && h.Bearer.DPoP != DPoPRequired:
		return errors.New("profile fapi2: a resource server accepts only sender-constrained tokens: set bearer_dpop required (FAPI 2.0 §5.3.3)")
	case !secureEndpoint(h.Issuer):
		return fmt.Errorf("profile fapi2: issuer %s must be https (FAPI 2.0 §5.2.1: TLS to every server)", h.Issuer)
	case h.Bearer != nil && h.Bearer.IntrospectionEndpoint != "" && !secureEndpoint(h.Bearer.IntrospectionEndpoint):
		return fmt.Errorf("profile fapi2: introspection_endpoint %s must be https (FAPI 2.0 §5.2.1)", h.Bearer.IntrospectionEndpoint)
	case h.Login.ResponseMode == responseModeFormPost:
		return errors.New("profile fapi2: response_mode form_post carries an unsigned response; use query (with the iss parameter) or a JWT response mode (FAPI 2.0 §5.3.1.2)")
	}
	return nil
}

// secureEndpoint reports an https URL, or one on a loopback host (a test
// IdP on this machine).
func secureEndpoint(raw string) bool {
	u, err := url.Parse(raw)
	if err != nil {
		return false
	}
	return u.Scheme == "https" || u.Scheme == "http" && isLoopback(u.Hostname())
}

// derivedP256 derives a P-256 private key from a session secret, for a
// purpose and a route: every replica and reload derives the same key, and
// nothing is stored. A derived scalar at or above the group order (odds of
// about 2^-32) takes the next counter value.
func derivedP256(secret, purpose, route string) (*ecdsa.PrivateKey, error) {
	for attempt := range 4 {
		seed, err := session.DeriveKey(secret, purpose+"\x00"+strconv.Itoa(attempt)+"\x00"+route)
		if err != nil {
			return nil, err
		}
		if priv, err := ecdsa.ParseRawPrivateKey(elliptic.P256(), seed); err == nil {
			return priv, nil
		}
	}
	return nil, errors.New("no valid scalar")
}

// deriveDPoPKeys derives the route's DPoP keys, one per session secret: the
// first binds new logins; a session refreshes with the key that bound its
// tokens (its thumbprint is in the session), so a rotation of
// session_secret does not strand DPoP-bound refresh tokens while the older
// secret is still listed.
func deriveDPoPKeys(secrets []string, route string) ([]*provider.DPoPKey, error) {
	var keys []*provider.DPoPKey
	for i, secret := range secrets {
		priv, err := derivedP256(secret, "caddy-oidc dpop v1", route)
		if err != nil {
			return nil, fmt.Errorf("session_secret #%d: deriving the DPoP key: %w", i+1, err)
		}
		k, err := provider.DPoPKeyFrom(priv)
		if err != nil {
			return nil, err
		}
		keys = append(keys, k)
	}
	return keys, nil
}

// rpFor is the relying party whose DPoP key bound s's tokens (the route's
// own without DPoP).
func (h *Handler) rpFor(s *session.Session) *provider.RelyingParty {
	if s != nil && s.DPoPKey != "" {
		if rp, ok := h.dpopRPs[s.DPoPKey]; ok {
			return rp
		}
	}
	return h.rp
}

// Pushed authorization requests cost an IdP call per login start, which
// anyone can cause: at most this many at once and this rate per route.
// A client address (an IPv6 client by its /64) has a rate of its own, so
// one client's flood cannot use up the route's and lock everyone out.
const (
	maxConcurrentPushes = 16
	pushRate            = 20 // per second
	pushBurst           = 40
	pushClientRate      = 2 // per second
	pushClientBurst     = 5
	maxPushClients      = 10_000
)

// pushLimit bounds a route's pushed authorization requests.
type pushLimit struct {
	slots   chan struct{}
	mu      sync.Mutex
	bucket  tokenBucket
	clients map[string]*tokenBucket
}

func newPushLimit() *pushLimit {
	return &pushLimit{slots: make(chan struct{}, maxConcurrentPushes), bucket: tokenBucket{rate: pushRate, burst: pushBurst},
		clients: make(map[string]*tokenBucket)}
}

// acquire takes a slot if client's rate and the route's allow one now;
// release gives it back.
func (p *pushLimit) acquire(client string, now time.Time) bool {
	p.mu.Lock()
	b := p.clients[client]
	if b == nil {
		if len(p.clients) >= maxPushClients {
			clear(p.clients) // bounded: a flood of addresses forgets them all
		}
		b = &tokenBucket{rate: pushClientRate, burst: pushClientBurst}
		p.clients[client] = b
	}
	ok := b.take(now) && p.bucket.take(now)
	p.mu.Unlock()
	if !ok {
		return false
	}
	select {
	case p.slots <- struct{}{}:
		return true
	default:
		return false
	}
}

func (p *pushLimit) release() { <-p.slots }

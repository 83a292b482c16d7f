package caddyoidc

import (
	"context"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"go.uber.org/zap"

	"github.com/caddy-oidc/caddy-oidc/cache"
	"github.com/caddy-oidc/caddy-oidc/session"
)

// Kinds of revocation: an IdP session (sid), a user (sub), one session.
const (
	revokeSID     = "sid"
	revokeSubject = "sub"
	revokeSession = "one"
)

// revocations is the set of ended IdP sessions, users and sessions, each
// with the time it was ended: a session started before that time is over.
// Cookie sessions cannot be deleted, so this is how logout reaches them.
// Every replica keeps the whole set in memory, so checking it costs no
// Valkey round trip; changes arrive through the cache's announcements, and
// the set is reloaded whenever announcements may have been missed.
type revocations struct {
	store  cache.Store
	hybrid *cache.Hybrid // nil for memory only
	logger *zap.Logger

	mu    sync.RWMutex
	m     map[string]revocation // "<kind>:<issuer>|<id>"
	count atomic.Int64
}

type revocation struct{ at, expires int64 }

func newRevocations(store cache.Store, hybrid *cache.Hybrid, logger *zap.Logger) *revocations {
	r := &revocations{store: store, hybrid: hybrid, logger: logger, m: make(map[string]revocation)}
	if hybrid != nil {
		hybrid.Follow(cache.Follower{Prefix: cache.NSRevocation + ":", Changed: r.fetch, Resync: r.reload})
	}
	return r
}

func revocationID(kind, issuer, id string) string { return kind + ":" + issuer + "|" + id }

// ended reports whether s was ended by a revocation made after it started.
func (r *revocations) ended(issuer string, s *session.Session) bool {
	if r.count.Load() == 0 {
		return false
	}
	r.mu.RLock()
	defer r.mu.RUnlock()
	now := time.Now().Unix()
	for _, k := range [...]string{
		revocationID(revokeSID, issuer, s.SID()),
		revocationID(revokeSubject, issuer, s.Subject()),
		revocationID(revokeSession, issuer, s.LocalID),
	} {
		if k[len(k)-1] == '|' {
			continue // no such id in this session
		}
		if rv, ok := r.m[k]; ok && rv.expires > now && s.Created <= rv.at {
			return true
		}
	}
	return false
}

// revoke ends every session of id started until now, here at once and on
// the other replicas through the shared cache. ttl is how long sessions
// that could be affected live.
func (r *revocations) revoke(ctx context.Context, kind, issuer, id string, ttl time.Duration) error {
	if id == "" {
		return nil
	}
	now := time.Now()
	k := revocationID(kind, issuer, id)
	r.add(k, revocation{at: now.Unix(), expires: now.Add(ttl).Unix()})
	v := strconv.FormatInt(now.Unix(), 10) + " " + strconv.FormatInt(now.Add(ttl).Unix(), 10)
	return r.store.Set(ctx, cache.Key(cache.NSRevocation, k), []byte(v), ttl)
}

func (r *revocations) add(k string, rv revocation) {
	r.mu.Lock()
	if old, ok := r.m[k]; !ok || old.at < rv.at {
		r.m[k] = rv
	}
	r.count.Store(int64(len(r.m)))
	r.mu.Unlock()
}

// fetch reads one revocation announced by another replica.
func (r *revocations) fetch(key string) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	v, found, err := r.store.Get(ctx, key)
	if err != nil || !found {
		return
	}
	at, exp, ok := parseRevocation(string(v))
	if ok {
		r.add(strings.TrimPrefix(key, cache.NSRevocation+":"), revocation{at: at, expires: exp})
	}
}

// reload reads the whole set: at start and after announcements were lost.
func (r *revocations) reload() {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	keys, err := r.hybrid.Scan(ctx, cache.NSRevocation+":")
	if err != nil {
		r.logger.Warn("reloading the revocation set failed; keeping what is known", zap.Error(err))
		return
	}
	for _, k := range keys {
		r.fetch(k)
	}
	r.prune()
}

func (r *revocations) prune() {
	now := time.Now().Unix()
	r.mu.Lock()
	for k, rv := range r.m {
		if rv.expires <= now {
			delete(r.m, k)
		}
	}
	r.count.Store(int64(len(r.m)))
	r.mu.Unlock()
}

func parseRevocation(v string) (at, expires int64, ok bool) {
	a, e, found := strings.Cut(v, " ")
	if !found {
		return 0, 0, false
	}
	at, err1 := strconv.ParseInt(a, 10, 64)
	expires, err2 := strconv.ParseInt(e, 10, 64)
	return at, expires, err1 == nil && err2 == nil
}

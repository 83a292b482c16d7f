package caddyoidc

import (
	"testing"

	"github.com/caddy-oidc/caddy-oidc/cache"
)

// freshSet gives the handlers a revocation set of their own (memory only),
// so a test counts only its own entries.
func freshSet(t testing.TB, hs ...*Handler) *revocations {
	t.Helper()
	rs := newRevocations()
	local := cache.NewLocal(cache.NewMemory(1<<20, 1000, nil), cache.NewMemory(1<<20, 1000, nil))
	rs.attach(local)
	t.Cleanup(func() { rs.detach(local) })
	for _, h := range hs {
		h.revs = rs
	}
	return rs
}

func testRevCount(rs *revocations) int { return rs.len() }

// testL1 is the in-process cache that holds the handler's sessions.
func testL1(h *Handler) *cache.Memory { return h.app.caches.l1 }

// testOwnRevocations gives a cache set a revocation set of its own instead
// of the process's, as if it were another replica's.
func testOwnRevocations(set *cacheSet) {
	set.revs.detach(set.shared)
	set.revs = newRevocations()
	set.revs.attach(set.shared)
}

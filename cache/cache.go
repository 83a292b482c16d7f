// Package cache is the shared cache of the oidc app: a Store interface and
// three implementations. Memory is the in-process L1 (sharded, bounded in
// bytes, TTL-aware); Valkey is the L2 shared by replicas; Hybrid puts L1 in
// front of L2 and keeps replicas' L1s coherent through pub/sub
// invalidation. Values are opaque bytes: callers encode (and, for token
// material, encrypt) them with their own versioned codecs.
package cache

import (
	"context"
	"errors"
	"time"
)

// ErrUnavailable means the shared tier could not answer in time: the value
// may exist, so callers must not treat it as missing (no logout, no delete).
var ErrUnavailable = errors.New("cache unavailable")

// Store is a byte store with per-entry TTLs.
type Store interface {
	// Get returns the value of key; found is false for a missing or expired
	// key. An error (ErrUnavailable) means the answer is unknown.
	Get(ctx context.Context, key string) (value []byte, found bool, err error)
	// Set stores value under key for ttl (> 0).
	Set(ctx context.Context, key string, value []byte, ttl time.Duration) error
	// Delete removes key.
	Delete(ctx context.Context, key string) error
}

// Namespaces: every key starts with one, so metrics can tell them apart.
const (
	NSSession    = "sess"
	NSDiscovery  = "disc"
	NSJWKS       = "jwks"
	NSToken      = "tok"
	NSRevocation = "rev"
	NSLease      = "lease"
	NSRefresh    = "rfr"
)

// Key joins a namespace and an id: "sess:0123...".
func Key(namespace, id string) string { return namespace + ":" + id }

func namespaceOf(key string) string {
	for i := 0; i < len(key) && i < 8; i++ {
		if key[i] == ':' {
			return key[:i]
		}
	}
	return "other"
}

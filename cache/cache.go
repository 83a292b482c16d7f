// Package cache is the shared cache of the oidc app. Store is a byte store
// with TTLs; Shared is what the replicas of a deployment share (entries,
// add-if-absent, fenced leases, announcements, scans). Two backends
// implement Shared: Local, the memory backend, a deployment of one process
// (every capability works in memory, so callers take one code path with or
// without Valkey); and Hybrid, Memory as L1 in front of a Valkey L2 shared
// by replicas, whose L1s stay coherent through pub/sub invalidation.
// Values are opaque bytes: callers encode (and, for token material,
// encrypt) them with their own versioned codecs.
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

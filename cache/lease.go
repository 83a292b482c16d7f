package cache

import (
	"context"
	"fmt"
	"strconv"
	"time"

	"github.com/valkey-io/valkey-go"
)

// Leases give one replica at a time the right to do something (spend a
// refresh token). Every lease holds its holder's random token, and every
// write made under a lease is fenced by it: a holder whose lease expired
// (a slow grant, a Valkey blip) cannot free, extend or overwrite its
// successor's work. They are Lua scripts: a Valkey ACL user needs the
// @scripting commands (EVALSHA, EVAL), or every lease call fails.

// tryLeaseScript takes a free lease, or extends one this token already
// holds: a retry after an ambiguous failure (the SET reached Valkey, its
// answer did not) finds the lease its own.
var tryLeaseScript = valkey.NewLuaScript(`local v = redis.call("GET", KEYS[1])
if not v then redis.call("SET", KEYS[1], ARGV[1], "PX", ARGV[2]) return 1 end
if v == ARGV[1] then redis.call("PEXPIRE", KEYS[1], ARGV[2]) return 1 end
return 0`)

// renewScript extends a lease only if it still holds the caller's token.
var renewScript = valkey.NewLuaScript(`if redis.call("GET", KEYS[1]) == ARGV[1] then return redis.call("PEXPIRE", KEYS[1], ARGV[2]) else return 0 end`)

// releaseScript deletes a lease only if it still holds the caller's fencing
// token: a leader whose lease expired and was taken over cannot free its
// successor's lease.
var releaseScript = valkey.NewLuaScript(`if redis.call("GET", KEYS[1]) == ARGV[1] then return redis.call("DEL", KEYS[1]) else return 0 end`)

// publishLeasedScript writes a value only while the lease holds the
// caller's token, and announces it on the invalidation channel as
// Hybrid.Set does, in the same step (PUBLISH is not a key: it works from a
// script on a cluster too). KEYS: lease, value; they must share a slot.
var publishLeasedScript = valkey.NewLuaScript(`if redis.call("GET", KEYS[1]) ~= ARGV[1] then return 0 end
redis.call("SET", KEYS[2], ARGV[2], "PX", ARGV[3])
redis.call("PUBLISH", ARGV[4], ARGV[5])
return 1`)

// pxArg renders a TTL for PX/PEXPIRE, at least 1 ms (0 is refused by Valkey).
func pxArg(ttl time.Duration) string {
	return strconv.FormatInt(max(ttl.Milliseconds(), 1), 10)
}

// leaseCall runs one fenced script with the request-path timeout.
func (h *Hybrid) leaseCall(ctx context.Context, what string, s *valkey.Lua, keys, args []string) (ok bool, err error) {
	c := h.current()
	if c == nil {
		return false, ErrUnavailable
	}
	defer func() {
		// A cluster client panics on keys of different slots (a key_prefix
		// with an unbalanced brace splits the hash tag): an error, not a crash.
		if r := recover(); r != nil {
			h.noteError(what, fmt.Errorf("%v", r))
			ok, err = false, ErrUnavailable
		}
	}()
	ctx, cancel := context.WithTimeout(ctx, h.opts.Timeout)
	defer cancel()
	for i := range keys {
		keys[i] = h.opts.KeyPrefix + keys[i]
	}
	n, err := s.Exec(ctx, c, keys, args).AsInt64()
	if err != nil {
		h.noteError(what, err)
		return false, ErrUnavailable
	}
	return n == 1, nil
}

// TryLease implements Shared. Taking a lease again with the same token
// succeeds and extends it, so a caller that got an error (maybe after
// Valkey took it) retries with its token safely.
func (h *Hybrid) TryLease(ctx context.Context, key, token string, ttl time.Duration) (bool, error) {
	return h.leaseCall(ctx, "lease take", tryLeaseScript, []string{key}, []string{token, pxArg(ttl)})
}

// RenewLease extends key to ttl from now if token still holds it; false
// means it does not (it expired, or another holder took it).
func (h *Hybrid) RenewLease(ctx context.Context, key, token string, ttl time.Duration) (bool, error) {
	return h.leaseCall(ctx, "lease renew", renewScript, []string{key}, []string{token, pxArg(ttl)})
}

// ReleaseLease frees key if token still holds it.
func (h *Hybrid) ReleaseLease(ctx context.Context, key, token string) error {
	_, err := h.leaseCall(ctx, "lease release", releaseScript, []string{key}, []string{token})
	return err
}

// PublishLeased stores value under key for ttl and announces the change to
// other replicas, only while token holds lease; false means the lease was
// lost and nothing was written. Unlike Set, nothing is kept in L1 for a
// later write-back: a write-back would not be fenced. On a cluster, lease
// and key must share a hash tag ("lease:{id}", "rfr:{id}").
func (h *Hybrid) PublishLeased(ctx context.Context, lease, token, key string, value []byte, ttl time.Duration) (bool, error) {
	ok, err := h.leaseCall(ctx, "fenced publish", publishLeasedScript, []string{lease, key},
		[]string{token, string(value), pxArg(ttl), h.channel, h.origin + "|" + key})
	if ok {
		// Our own announcement is not delivered to us: drop what this
		// replica holds of key, or its L1 would serve a stale copy.
		h.forgetLocal(key)
	}
	return ok, err
}

// Watch implements Shared: the channel is closed when another replica
// changes key (Set, Delete and PublishLeased announce it).
func (h *Hybrid) Watch(key string) (<-chan struct{}, func()) { return h.watch.watch(key) }

package provider

import (
	"context"
	"fmt"
	"sync"
	"time"
)

// fetchTimeout bounds one shared fetch. It is not tied to any caller: a
// caller that gives up leaves the fetch running for the others.
const fetchTimeout = 15 * time.Second

// shared is one document of the IdP (discovery, JWKS) shared by every
// caller of a Provider. At most one fetch is in flight; it runs detached
// from the callers' contexts, each of which waits only as long as its own
// context allows. Failed fetches back off (1 s doubling to 1 min), so an
// outage costs one IdP request per interval, not one per user request, and
// a good value is kept (and served) when a refetch fails. A value older
// than ttl is served while a background fetch replaces it, so no request
// ever waits for a periodic refresh and no goroutine runs between fetches.
type shared[T any] struct {
	what  string                                           // names the document in errors
	ttl   time.Duration                                    // age after which a value is refetched
	fetch func(ctx context.Context, key string) (T, error) // key: the URL or "" when fixed
	clock func() time.Time

	mu         sync.Mutex
	key        string // what the value was fetched for; a new key drops it
	val        T
	have       bool
	at         time.Time
	failures   int
	retryAfter time.Time
	lastErr    error
	inflight   chan struct{}
	fetches    int // completed fetches, for tests
}

// get returns the value for key, fetching it when missing (and waiting for
// it) or stale (in the background, returning the stale value at once).
func (s *shared[T]) get(ctx context.Context, key string) (T, error) {
	s.mu.Lock()
	s.rekey(key)
	now := s.clock()
	if s.have {
		if now.Sub(s.at) >= s.ttl && s.inflight == nil && !now.Before(s.retryAfter) {
			s.start(key)
		}
		v := s.val
		s.mu.Unlock()
		return v, nil
	}
	ch := s.inflight
	if ch == nil {
		if now.Before(s.retryAfter) {
			err := s.lastErr
			wait := s.retryAfter.Sub(now).Round(100 * time.Millisecond)
			s.mu.Unlock()
			return *new(T), fmt.Errorf("the %s failed recently, next try in %s: %w", s.what, wait, err)
		}
		ch = s.start(key)
	}
	s.mu.Unlock()
	return s.wait(ctx, ch)
}

// refetch fetches the value for key again and returns what is known after
// that fetch. A fetch already in flight may predate what the caller looks
// for (a key the IdP has just added), so refetch waits for it and then
// starts one more, unless allow (asked under the lock, only when a new
// fetch would start; nil allows) refuses or failures are being backed off:
// then it returns what is known. Concurrent refetches share their fetches.
func (s *shared[T]) refetch(ctx context.Context, key string, allow func(now time.Time) bool) (T, error) {
	s.mu.Lock()
	s.rekey(key)
	if ch := s.inflight; ch != nil {
		s.mu.Unlock()
		if _, err := s.wait(ctx, ch); ctx.Err() != nil {
			return *new(T), err
		}
		s.mu.Lock()
		if ch := s.inflight; ch != nil {
			// Another caller started a fetch after ours began: it is fresh enough.
			s.mu.Unlock()
			return s.wait(ctx, ch)
		}
	}
	now := s.clock()
	if now.Before(s.retryAfter) || (allow != nil && !allow(now)) {
		s.mu.Unlock()
		return s.current()
	}
	ch := s.start(key)
	s.mu.Unlock()
	return s.wait(ctx, ch)
}

// rekey drops what was fetched for another key (the IdP's discovery now
// names another JWKS URL). A fetch in flight for the old key is forgotten:
// it completes without storing anything.
func (s *shared[T]) rekey(key string) {
	if key == s.key {
		return
	}
	s.key = key
	s.val, s.have = *new(T), false
	s.at, s.failures, s.retryAfter, s.lastErr = time.Time{}, 0, time.Time{}, nil
	s.inflight = nil
}

// start begins a fetch for key; s.mu must be held.
func (s *shared[T]) start(key string) chan struct{} {
	ch := make(chan struct{})
	s.inflight = ch
	go func() {
		defer close(ch)
		v, err := s.fetchSafely(key)
		s.mu.Lock()
		defer s.mu.Unlock()
		if s.inflight == ch {
			s.inflight = nil
		}
		if s.key != key {
			return
		}
		s.fetches++
		if err != nil {
			s.failures++
			s.retryAfter = s.clock().Add(min(time.Second<<min(s.failures-1, 6), time.Minute))
			s.lastErr = err
			return
		}
		s.val, s.have, s.at = v, true, s.clock()
		s.failures, s.retryAfter, s.lastErr = 0, time.Time{}, nil
	}()
	return ch
}

// fetchSafely runs one fetch; a panic in it (a parser's bug) is a failed
// fetch, not a crashed process: it runs outside any request's recovery.
func (s *shared[T]) fetchSafely(key string) (v T, err error) {
	ctx, cancel := context.WithTimeout(context.Background(), fetchTimeout)
	defer cancel()
	defer func() {
		if r := recover(); r != nil {
			err = fmt.Errorf("fetching the %s: panic: %v: %w", s.what, r, ErrUnavailable)
		}
	}()
	return s.fetch(ctx, key)
}

// wait waits for the fetch behind ch, or for ctx, and returns what is known.
func (s *shared[T]) wait(ctx context.Context, ch chan struct{}) (T, error) {
	select {
	case <-ch:
		return s.current()
	case <-ctx.Done():
		return *new(T), fmt.Errorf("waiting for the %s: %w (%w)", s.what, ErrUnavailable, ctx.Err())
	}
}

// current is the value known now: the last good one, else the last error.
func (s *shared[T]) current() (T, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	switch {
	case s.have:
		return s.val, nil
	case s.lastErr != nil:
		return *new(T), s.lastErr
	}
	return *new(T), fmt.Errorf("the %s is not fetched yet: %w", s.what, ErrUnavailable)
}

// count reports how many fetches completed.
func (s *shared[T]) count() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.fetches
}

package cache

import (
	"context"
	"math/rand/v2"
	"sync"
	"sync/atomic"
	"time"

	"github.com/valkey-io/valkey-go"
	"go.uber.org/zap"
)

// Write-back retry timing: per value, from retryMin doubling to retryMax.
const (
	retryMin = 100 * time.Millisecond
	retryMax = 5 * time.Second
	// tombstoneTTL is how long a delete that Valkey could not take is
	// retried (the deleted value's own TTL is not known here).
	tombstoneTTL = 24 * time.Hour
	// closeBudget bounds the write-back done by Close.
	closeBudget = 2 * time.Second
)

// writeback holds the values (and deletes) that Valkey could not take,
// until they are written: outside L1, so the L1 bound never evicts them,
// and under a bound of their own.
type writeback struct {
	mu         sync.Mutex
	m          map[string]*pending
	bytes      int64
	seq        uint64
	maxBytes   int64
	maxEntries int
	n          atomic.Int64 // len(m), read without the lock on L1 misses
	wake       chan struct{}
	stats      *Stats
}

type pending struct {
	value   []byte
	del     bool
	expires time.Time
	seq     uint64 // changes when the key is written again
	tries   int
	next    time.Time
}

type dueWrite struct {
	key   string
	value []byte
	del   bool
	ttl   time.Duration
	seq   uint64
}

func newWriteback(maxBytes int64, maxEntries int, stats *Stats) *writeback {
	return &writeback{m: make(map[string]*pending), maxBytes: maxBytes, maxEntries: maxEntries, wake: make(chan struct{}, 1), stats: stats}
}

func (w *writeback) sync() {
	w.n.Store(int64(len(w.m)))
	w.stats.WritebackPending.Store(int64(len(w.m)))
}

// put keeps key's value (or its delete) for write-back; false when the
// bound does not allow it.
func (w *writeback) put(key string, value []byte, del bool, ttl time.Duration) bool {
	now := time.Now()
	sz := size(key, value)
	w.mu.Lock()
	defer w.mu.Unlock()
	old := w.m[key]
	if old != nil {
		w.bytes -= size(key, old.value)
	}
	if old == nil && len(w.m) >= w.maxEntries || w.bytes+sz > w.maxBytes {
		w.pruneLocked(now)
	}
	if old == nil && len(w.m) >= w.maxEntries || w.bytes+sz > w.maxBytes {
		if old != nil {
			// The older value is superseded and the new one does not fit:
			// writing the older one back later would be wrong.
			delete(w.m, key)
			w.sync()
		}
		return false
	}
	w.seq++
	w.m[key] = &pending{value: value, del: del, expires: now.Add(ttl), seq: w.seq, next: now.Add(retryMin)}
	w.bytes += sz
	w.sync()
	return true
}

func (w *writeback) pruneLocked(now time.Time) {
	var n int64
	for k, p := range w.m {
		if now.After(p.expires) {
			w.bytes -= size(k, p.value)
			delete(w.m, k)
			n++
		}
	}
	w.stats.addDropped(DropExpired, n)
	w.sync()
}

// get returns the unwritten value of key, the newest this process knows.
func (w *writeback) get(key string) (value []byte, del, ok bool) {
	if w.n.Load() == 0 {
		return nil, false, false
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	p := w.m[key]
	if p == nil || time.Now().After(p.expires) {
		return nil, false, false
	}
	return p.value, p.del, true
}

// remove forgets key: a newer value of it reached Valkey.
func (w *writeback) remove(key string) {
	if w.n.Load() == 0 {
		return
	}
	w.mu.Lock()
	if p := w.m[key]; p != nil {
		w.bytes -= size(key, p.value)
		delete(w.m, key)
		w.sync()
	}
	w.mu.Unlock()
}

func (w *writeback) len() int { return int(w.n.Load()) }

// due returns the writes whose retry time has come (all of them with
// force), dropping the expired ones.
func (w *writeback) due(now time.Time, force bool) []dueWrite {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.pruneLocked(now)
	var out []dueWrite
	for k, p := range w.m {
		if force || !now.Before(p.next) {
			out = append(out, dueWrite{key: k, value: p.value, del: p.del, ttl: p.expires.Sub(now), seq: p.seq})
		}
	}
	return out
}

// done forgets key if it still holds the write of seq.
func (w *writeback) done(key string, seq uint64) {
	w.mu.Lock()
	if p := w.m[key]; p != nil && p.seq == seq {
		w.bytes -= size(key, p.value)
		delete(w.m, key)
		w.sync()
	}
	w.mu.Unlock()
}

// failed schedules key's next attempt, backing off.
func (w *writeback) failed(key string, seq uint64, now time.Time) {
	w.mu.Lock()
	if p := w.m[key]; p != nil && p.seq == seq {
		p.tries++
		d := min(retryMin<<min(p.tries, 10), retryMax)
		p.next = now.Add(d/2 + rand.N(d/2+1)) //nolint:gosec // G404: jitter, so replicas do not retry in step; nothing secret
	}
	w.mu.Unlock()
}

// nextDue is the earliest retry time; ok is false when nothing is pending.
func (w *writeback) nextDue() (t time.Time, ok bool) {
	w.mu.Lock()
	defer w.mu.Unlock()
	for _, p := range w.m {
		if !ok || p.next.Before(t) {
			t, ok = p.next, true
		}
	}
	return t, ok
}

func (w *writeback) signal() {
	select {
	case w.wake <- struct{}{}:
	default:
	}
}

// keep holds a write Valkey did not take: first in the write-back queue,
// then in L1 (in that order, so a concurrent read either sees the queued
// value or finds L1 changed under it). A delete is a nil value with del.
func (h *Hybrid) keep(key string, value []byte, del bool, ttl time.Duration) {
	if h.ctx.Err() != nil {
		// Closed: nothing would write it back.
	} else if !h.pending.put(key, value, del, ttl) {
		h.stats.addDropped(DropFull, 1)
		h.logThrottled(&h.lastFullLog, "valkey write-back queue full: a value written while Valkey could not take it is kept in this replica's L1 only and will not reach the other replicas",
			zap.String("namespace", namespaceOf(key)), zap.Int("pending", h.pending.len()), zap.Int64("dropped_total", h.stats.Dropped(DropFull)))
	} else {
		h.pending.signal()
	}
	if del {
		_ = h.l1.Delete(context.Background(), key)
	} else {
		h.l1.set(key, value, min(ttl, h.opts.L1TTL))
	}
}

// writeLoop writes back, in the background and while connected, what
// Valkey could not take, each value backing off on its own.
func (h *Hybrid) writeLoop() {
	defer h.wg.Done()
	roundDelay := retryMin
	t := time.NewTimer(time.Hour)
	defer t.Stop()
	for {
		wait := time.Hour
		if next, ok := h.pending.nextDue(); ok {
			wait = max(time.Until(next), 10*time.Millisecond)
		}
		t.Reset(wait)
		select {
		case <-h.ctx.Done():
			return
		case <-h.pending.wake:
			continue // recompute the wait: a new value is due in retryMin
		case <-t.C:
		}
		c := h.current()
		if c == nil {
			continue
		}
		_, failed, gaveUp := h.writePending(h.ctx, c, false)
		if gaveUp {
			// Valkey looks down: slow the rounds, on top of each value's backoff.
			if !h.sleep(roundDelay) {
				return
			}
			roundDelay = min(roundDelay*2, retryMax)
		} else if failed == 0 {
			roundDelay = retryMin
		}
	}
}

// writePending writes the due values (all with force); a round gives up
// after 5 failures in a row, as Valkey then looks down as a whole.
func (h *Hybrid) writePending(ctx context.Context, c valkey.Client, force bool) (wrote, failed int, gaveUp bool) {
	if h.pending.len() == 0 {
		return 0, 0, false
	}
	// One writer at a time (the background loop, a reconnection, Close).
	h.wbMu.Lock()
	defer h.wbMu.Unlock()
	inRow := 0
	for _, d := range h.pending.due(time.Now(), force) {
		if ctx.Err() != nil {
			break
		}
		wctx, cancel := context.WithTimeout(ctx, h.opts.Timeout)
		var err error
		if d.del {
			err = h.del(wctx, c, d.key)
		} else {
			err = h.write(wctx, c, d.key, d.value, max(d.ttl, time.Millisecond))
		}
		cancel()
		if err == nil {
			h.pending.done(d.key, d.seq)
			h.stats.WrittenBack.Add(1)
			wrote++
			inRow = 0
			continue
		}
		h.noteError("writing back", err)
		h.pending.failed(d.key, d.seq, time.Now())
		failed++
		if inRow++; inRow >= 5 && !force {
			gaveUp = true
			break
		}
	}
	h.writtenSinceLog += wrote
	if h.pending.len() == 0 && h.writtenSinceLog > 0 {
		h.logger.Info("valkey write-back done: every value kept while Valkey could not take it is written", zap.Int("entries", h.writtenSinceLog))
		h.writtenSinceLog = 0
	}
	return wrote, failed, gaveUp
}

// flushOnClose writes back what is left, within closeBudget.
func (h *Hybrid) flushOnClose(c valkey.Client) {
	if h.pending.len() == 0 {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), closeBudget)
	defer cancel()
	for h.pending.len() > 0 && ctx.Err() == nil {
		wrote, _, _ := h.writePending(ctx, c, true)
		if wrote == 0 {
			t := time.NewTimer(retryMin)
			select {
			case <-t.C:
			case <-ctx.Done():
			}
			t.Stop()
		}
	}
	if n := h.pending.len(); n > 0 {
		h.stats.addDropped(DropClosed, int64(n))
		h.logger.Warn("closing with values Valkey did not take: they stay unknown to the other replicas",
			zap.Int("entries", n), zap.Duration("tried_for", closeBudget))
	}
}

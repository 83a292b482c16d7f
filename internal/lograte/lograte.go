// Package lograte keeps log lines that a request can trigger (per request,
// during an IdP or Valkey outage) from flooding the log: one line per
// interval, with the count of those left out.
package lograte

import (
	"sync/atomic"
	"time"

	"go.uber.org/zap"
)

// Every is the interval between two lines of one Limit.
const Every = 10 * time.Second

// Limit lets one line through per Every and counts the rest. The zero
// value is ready to use.
type Limit struct{ last, suppressed atomic.Int64 }

// Allow reports whether a line may be written now, and how many were left
// out since the last one.
func (l *Limit) Allow() (bool, int64) {
	now := time.Now().UnixNano()
	last := l.last.Load()
	if now-last < int64(Every) || !l.last.CompareAndSwap(last, now) {
		l.suppressed.Add(1)
		return false, 0
	}
	return true, l.suppressed.Swap(0)
}

// Warn writes msg at Warn level if l allows it, with a "suppressed" field
// when earlier lines were left out.
func (l *Limit) Warn(logger *zap.Logger, msg string, fields ...zap.Field) {
	ok, n := l.Allow()
	if !ok {
		return
	}
	if n > 0 {
		fields = append(fields, zap.Int64("suppressed", n))
	}
	logger.Warn(msg, fields...)
}

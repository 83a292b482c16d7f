package cache

import (
	"sync/atomic"

	"github.com/prometheus/client_golang/prometheus"
)

func nsIndex(ns string) int {
	for i, n := range namespaces[:len(namespaces)-1] {
		if n == ns {
			return i
		}
	}
	return len(namespaces) - 1
}

// Reasons a Valkey call fails, as counted in caddy_oidc_valkey_errors_total.
const (
	// ReasonTimeout: no answer within the deadline (a node hung or unreachable).
	ReasonTimeout = "timeout"
	// ReasonDown: the node refused or dropped the connection (not running,
	// restarting, loading its data).
	ReasonDown = "down"
	// ReasonCluster: the cluster could not route the key (CLUSTERDOWN,
	// MOVED/ASK loops, TRYAGAIN, a slot without a master).
	ReasonCluster = "cluster"
	// ReasonAuth: authentication or ACL refused the call.
	ReasonAuth = "auth"
	// ReasonOther: anything else.
	ReasonOther = "other"
)

var reasons = []string{ReasonTimeout, ReasonDown, ReasonCluster, ReasonAuth, ReasonOther}

// Why a value kept for write-back was given up.
const (
	// DropFull: the write-back queue was at its bound.
	DropFull = "full"
	// DropExpired: its TTL ran out before Valkey could take it.
	DropExpired = "expired"
	// DropClosed: Valkey did not take it before Close's deadline.
	DropClosed = "closed"
)

var dropReasons = []string{DropFull, DropExpired, DropClosed}

// Stats counts what a cache set does; lock-free so the hot path pays one
// atomic add. A Collector exposes them to Prometheus.
type Stats struct {
	// hits and misses per namespace and tier (0: l1, 1: l2).
	hits, misses [len(namespaces)][2]atomic.Int64

	L1Bytes, L1Entries atomic.Int64
	Evictions          atomic.Int64
	// ValkeyErrors counts every failed call; errs splits them by reason.
	ValkeyErrors  atomic.Int64
	errs          [5]atomic.Int64
	Invalidations atomic.Int64
	StreamLosses  atomic.Int64
	// StreamUp is 1 while the invalidation stream is subscribed.
	StreamUp atomic.Int64
	// NodesUp and NodesDown are the Valkey nodes (masters in a cluster)
	// that answered or not the last health probe.
	NodesUp, NodesDown atomic.Int64
	// StaleServed counts L1 entries served without Valkey's confirmation
	// after the invalidation stream came back, because Valkey could not
	// answer for them.
	StaleServed atomic.Int64
	// WritebackPending is the number of values written while Valkey could
	// not take them, waiting to be written back; WrittenBack counts those
	// that were.
	WritebackPending, WrittenBack atomic.Int64
	dropped                       [3]atomic.Int64
}

func (s *Stats) count(ns, tier string, hit bool) {
	t := 0
	if tier == "l2" {
		t = 1
	}
	i := nsIndex(ns)
	if hit {
		s.hits[i][t].Add(1)
	} else {
		s.misses[i][t].Add(1)
	}
}

func (s *Stats) addL1(bytes int64, entries int64) {
	s.L1Bytes.Add(bytes)
	s.L1Entries.Add(entries)
}

// Hits reports the hits of a namespace in a tier ("l1" or "l2").
func (s *Stats) Hits(ns, tier string) int64 {
	t := 0
	if tier == "l2" {
		t = 1
	}
	return s.hits[nsIndex(ns)][t].Load()
}

// Errors reports the failed Valkey calls of one reason (ReasonTimeout...).
func (s *Stats) Errors(reason string) int64 {
	for i, r := range reasons {
		if r == reason {
			return s.errs[i].Load()
		}
	}
	return 0
}

func (s *Stats) addError(reason string) {
	s.ValkeyErrors.Add(1)
	for i, r := range reasons {
		if r == reason {
			s.errs[i].Add(1)
			return
		}
	}
}

// Dropped reports the values given up for write-back, by reason (DropFull...).
func (s *Stats) Dropped(reason string) int64 {
	for i, r := range dropReasons {
		if r == reason {
			return s.dropped[i].Load()
		}
	}
	return 0
}

func (s *Stats) addDropped(reason string, n int64) {
	for i, r := range dropReasons {
		if r == reason {
			s.dropped[i].Add(n)
		}
	}
}

// Collector exposes Stats as caddy_oidc_* metrics.
type Collector struct {
	stats *Stats

	requests, l1Bytes, l1Entries, evictions, valkeyErrors, invalidations        *prometheus.Desc
	streamUp, streamLosses, nodes, staleServed, wbPending, wbWritten, wbDropped *prometheus.Desc
}

// NewCollector returns a Prometheus collector for stats.
func NewCollector(stats *Stats) *Collector {
	d := func(name, help string, labels ...string) *prometheus.Desc {
		return prometheus.NewDesc("caddy_oidc_"+name, help, labels, nil)
	}
	return &Collector{
		stats:         stats,
		requests:      d("cache_requests_total", "Cache lookups by namespace, tier (l1, l2) and result (hit, miss).", "namespace", "tier", "result"),
		l1Bytes:       d("cache_l1_bytes", "Bytes held by the in-process L1 cache."),
		l1Entries:     d("cache_l1_entries", "Entries held by the in-process L1 cache."),
		evictions:     d("cache_l1_evictions_total", "L1 entries evicted to stay within bounds."),
		valkeyErrors:  d("valkey_errors_total", "Valkey calls that failed, by reason: timeout, down (connection refused or dropped, loading), cluster (CLUSTERDOWN, no master for the slot, redirections), auth, other.", "reason"),
		invalidations: d("cache_invalidations_total", "L1 invalidations received from other replicas."),
		streamUp:      d("valkey_stream_up", "1 while the invalidation stream (pub/sub) is subscribed, else 0."),
		streamLosses:  d("valkey_stream_losses_total", "Times the invalidation stream was lost."),
		nodes:         d("valkey_nodes", "Valkey nodes (masters of a cluster) by the state of their last health probe: up or down.", "state"),
		staleServed:   d("cache_l1_stale_served_total", "L1 entries served without Valkey's confirmation after the invalidation stream came back, because Valkey could not answer for them."),
		wbPending:     d("cache_writeback_pending", "Values written while Valkey could not take them, waiting to be written back."),
		wbWritten:     d("cache_writeback_written_total", "Values written back to Valkey after a failed write."),
		wbDropped:     d("cache_writeback_dropped_total", "Values given up for write-back, by reason: full (queue bound), expired (TTL ran out first), closed (not written before shutdown or reload).", "reason"),
	}
}

// Describe implements prometheus.Collector.
func (c *Collector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{c.requests, c.l1Bytes, c.l1Entries, c.evictions, c.valkeyErrors, c.invalidations,
		c.streamUp, c.streamLosses, c.nodes, c.staleServed, c.wbPending, c.wbWritten, c.wbDropped} {
		ch <- d
	}
}

// Collect implements prometheus.Collector.
func (c *Collector) Collect(ch chan<- prometheus.Metric) {
	s := c.stats
	for i, ns := range namespaces {
		for t, tier := range []string{"l1", "l2"} {
			ch <- prometheus.MustNewConstMetric(c.requests, prometheus.CounterValue, float64(s.hits[i][t].Load()), ns, tier, "hit")
			ch <- prometheus.MustNewConstMetric(c.requests, prometheus.CounterValue, float64(s.misses[i][t].Load()), ns, tier, "miss")
		}
	}
	counter := func(d *prometheus.Desc, v int64, labels ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.CounterValue, float64(v), labels...)
	}
	gauge := func(d *prometheus.Desc, v int64, labels ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.GaugeValue, float64(v), labels...)
	}
	gauge(c.l1Bytes, s.L1Bytes.Load())
	gauge(c.l1Entries, s.L1Entries.Load())
	counter(c.evictions, s.Evictions.Load())
	for i, r := range reasons {
		counter(c.valkeyErrors, s.errs[i].Load(), r)
	}
	counter(c.invalidations, s.Invalidations.Load())
	gauge(c.streamUp, s.StreamUp.Load())
	counter(c.streamLosses, s.StreamLosses.Load())
	gauge(c.nodes, s.NodesUp.Load(), "up")
	gauge(c.nodes, s.NodesDown.Load(), "down")
	counter(c.staleServed, s.StaleServed.Load())
	gauge(c.wbPending, s.WritebackPending.Load())
	counter(c.wbWritten, s.WrittenBack.Load())
	for i, r := range dropReasons {
		counter(c.wbDropped, s.dropped[i].Load(), r)
	}
}

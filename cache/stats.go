package cache

import (
	"sync/atomic"

	"github.com/prometheus/client_golang/prometheus"
)

var namespaces = []string{NSSession, NSDiscovery, NSJWKS, NSToken, NSRevocation, NSLease, NSRefresh, "other"}

func nsIndex(ns string) int {
	for i, n := range namespaces[:len(namespaces)-1] {
		if n == ns {
			return i
		}
	}
	return len(namespaces) - 1
}

// Stats counts what a cache set does; lock-free so the hot path pays one
// atomic add. A Collector exposes them to Prometheus.
type Stats struct {
	// hits and misses per namespace and tier (0: l1, 1: l2).
	hits, misses [8][2]atomic.Int64

	L1Bytes, L1Entries atomic.Int64
	Evictions          atomic.Int64
	ValkeyErrors       atomic.Int64
	SessionsCreated    atomic.Int64
	Invalidations      atomic.Int64
	StreamLosses       atomic.Int64
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

// Collector exposes Stats as caddy_oidc_* metrics.
type Collector struct {
	stats *Stats

	requests, l1Bytes, l1Entries, evictions, valkeyErrors, sessions, invalidations *prometheus.Desc
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
		valkeyErrors:  d("valkey_errors_total", "Valkey calls that failed or timed out."),
		sessions:      d("sessions_created_total", "Sessions created at login."),
		invalidations: d("cache_invalidations_total", "L1 invalidations received from other replicas."),
	}
}

// Describe implements prometheus.Collector.
func (c *Collector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{c.requests, c.l1Bytes, c.l1Entries, c.evictions, c.valkeyErrors, c.sessions, c.invalidations} {
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
	ch <- prometheus.MustNewConstMetric(c.l1Bytes, prometheus.GaugeValue, float64(s.L1Bytes.Load()))
	ch <- prometheus.MustNewConstMetric(c.l1Entries, prometheus.GaugeValue, float64(s.L1Entries.Load()))
	ch <- prometheus.MustNewConstMetric(c.evictions, prometheus.CounterValue, float64(s.Evictions.Load()))
	ch <- prometheus.MustNewConstMetric(c.valkeyErrors, prometheus.CounterValue, float64(s.ValkeyErrors.Load()))
	ch <- prometheus.MustNewConstMetric(c.sessions, prometheus.CounterValue, float64(s.SessionsCreated.Load()))
	ch <- prometheus.MustNewConstMetric(c.invalidations, prometheus.CounterValue, float64(s.Invalidations.Load()))
}

package caddyoidc

import (
	"slices"
	"sync"

	"github.com/prometheus/client_golang/prometheus"
)

// readiness is the process's readiness metrics, per route (issuer and
// client): caddy_oidc_ready, and caddy_oidc_ready_check for each check.
// Values are read at scrape time from what the route already holds, so a
// scrape never waits on the IdP or Valkey; health_path is what fetches.
var readiness = &readinessCollector{routes: make(map[readyRoute][]*Handler)}

var (
	readyDesc = prometheus.NewDesc("caddy_oidc_ready",
		"1 when the route's IdP discovery document and keys are loaded and its shared cache is reachable, else 0.",
		[]string{"issuer", "client"}, nil)
	readyCheckDesc = prometheus.NewDesc("caddy_oidc_ready_check",
		"Each readiness check of a route (discovery, keys, cache): 1 when it passes, else 0.",
		[]string{"issuer", "client", "check"}, nil)
)

type readyRoute struct{ issuer, client string }

// readinessCollector tracks the handlers of each route: several handlers
// (sites, or the old and new config during a reload) share one series,
// read from the newest.
type readinessCollector struct {
	mu     sync.Mutex
	routes map[readyRoute][]*Handler
}

func (c *readinessCollector) add(h *Handler) {
	c.mu.Lock()
	defer c.mu.Unlock()
	k := readyRoute{h.Issuer, h.Client.ID}
	c.routes[k] = append(c.routes[k], h)
}

func (c *readinessCollector) remove(h *Handler) {
	c.mu.Lock()
	defer c.mu.Unlock()
	k := readyRoute{h.Issuer, h.Client.ID}
	hs := slices.DeleteFunc(c.routes[k], func(x *Handler) bool { return x == h })
	if len(hs) == 0 {
		delete(c.routes, k)
		return
	}
	c.routes[k] = hs
}

// Describe implements prometheus.Collector.
func (c *readinessCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- readyDesc
	ch <- readyCheckDesc
}

// Collect implements prometheus.Collector; it does no I/O.
func (c *readinessCollector) Collect(ch chan<- prometheus.Metric) {
	c.mu.Lock()
	newest := make(map[readyRoute]*Handler, len(c.routes))
	for k, hs := range c.routes {
		newest[k] = hs[len(hs)-1]
	}
	c.mu.Unlock()
	for k, h := range newest {
		discovery, keys := h.rp.Loaded()
		cacheUp := h.app.set().health() != "down"
		for _, check := range []struct {
			name string
			ok   bool
		}{{"discovery", discovery}, {"keys", keys}, {"cache", cacheUp}} {
			ch <- prometheus.MustNewConstMetric(readyCheckDesc, prometheus.GaugeValue, gaugeOf(check.ok), k.issuer, k.client, check.name)
		}
		ch <- prometheus.MustNewConstMetric(readyDesc, prometheus.GaugeValue, gaugeOf(discovery && keys && cacheUp), k.issuer, k.client)
	}
}

func gaugeOf(ok bool) float64 {
	if ok {
		return 1
	}
	return 0
}

var _ prometheus.Collector = (*readinessCollector)(nil)

package main

import (
	"os"
	"path/filepath"

	"gonum.org/v1/plot"
	"gonum.org/v1/plot/plotter"
	"gonum.org/v1/plot/vg"
)

// drawChart writes a bar chart of requests/s per scenario.
func drawChart(ss []*scenario, path string) error {
	p := plot.New()
	p.Title.Text = "Requests per second (same machine, one run)"
	p.Y.Label.Text = "req/s"
	values := make(plotter.Values, len(ss))
	names := make([]string, len(ss))
	for i, s := range ss {
		values[i] = s.rps()
		names[i] = shortName(s.name)
	}
	bars, err := plotter.NewBarChart(values, vg.Points(28))
	if err != nil {
		return err
	}
	p.Add(bars)
	p.NominalX(names...)
	p.X.Tick.Label.Rotation = 0.6
	p.X.Tick.Label.XAlign = -0.9
	p.X.Tick.Label.YAlign = -0.5
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return err
	}
	return p.Save(10*vg.Inch, 6*vg.Inch, path)
}

func shortName(n string) string {
	m := map[string]string{
		"Caddy reverse_proxy (ceiling)":                      "proxy ceiling",
		"oidc cookie session + reverse_proxy":                "oidc cookie+proxy",
		"Caddy respond (ceiling)":                            "respond ceiling",
		"oidc cookie session + respond":                      "oidc cookie",
		"oidc cache session (L1 hit) + respond":              "oidc cache (L1)",
		"oidc bearer JWT + respond":                          "oidc bearer",
		"oidc cache session (L1 miss, Valkey hit) + respond": "oidc cache (Valkey)",
		"Caddy forward_auth + oauth2-proxy":                  "fwd_auth+o2p",
		"oauth2-proxy standalone":                            "o2p standalone",
	}
	if s, ok := m[n]; ok {
		return s
	}
	return n
}

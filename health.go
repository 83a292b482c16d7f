package caddyoidc

import (
	"context"
	"encoding/json"
	"net/http"
	"time"
)

// health is what health_path answers: whether this route can log users in
// and serve sessions right now.
type health struct {
	Ready bool `json:"ready"`
	// IdP is "ok" when the discovery document and keys are loaded.
	IdP string `json:"idp"`
	// Cache is "memory", "ok" (Valkey's stream up) or "down".
	Cache string `json:"cache"`
}

// serveHealth answers health_path for load balancers and Kubernetes
// probes: 200 when the IdP's discovery and keys are loaded and the shared
// cache is reachable, else 503, with the reason in JSON either way. It
// needs no session.
func (h *Handler) serveHealth(w http.ResponseWriter, r *http.Request) error {
	w.Header().Set("Cache-Control", "no-store")
	w.Header().Set("Content-Type", "application/json")
	ctx, cancel := context.WithTimeout(r.Context(), time.Duration(h.IdPTimeout))
	defer cancel()
	st := health{IdP: "ok", Cache: h.app.set().health()}
	if err := h.rp.Ready(ctx); err != nil {
		st.IdP = "unavailable"
	}
	st.Ready = st.IdP == "ok" && st.Cache != "down"
	if !st.Ready {
		w.Header().Set("Retry-After", "5")
		w.WriteHeader(http.StatusServiceUnavailable)
	}
	if r.Method == http.MethodHead {
		return nil
	}
	return json.NewEncoder(w).Encode(st)
}

package provider

// Loaded reports, without any I/O, whether the discovery document and a
// key set are held (a stale one being refetched counts): what a metrics
// scrape may look at, where Ready would fetch.
func (p *Provider) Loaded() (discovery, keys bool) { return p.disc.held(), p.keys.held() }

// Loaded reports what the issuer's Provider holds (see Provider.Loaded).
func (rp *RelyingParty) Loaded() (discovery, keys bool) { return rp.p.Loaded() }

func (s *shared[T]) held() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.have
}

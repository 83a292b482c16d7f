package provider

import (
	"crypto/tls"
	"fmt"
	"net/http"
	"sync"
)

// ClientCertificate is a client's TLS certificate for mutual-TLS client
// authentication and certificate-bound tokens (RFC 8705).
type ClientCertificate struct {
	cert tls.Certificate

	mu      sync.Mutex
	clients map[*http.Client]*http.Client // the Provider's client -> one that presents cert
}

// ParseClientCertificate reads a PEM certificate (chain) and its private key.
func ParseClientCertificate(certPEM, keyPEM []byte) (*ClientCertificate, error) {
	cert, err := tls.X509KeyPair(certPEM, keyPEM)
	if err != nil {
		return nil, fmt.Errorf("parsing the client certificate: %w", err)
	}
	return &ClientCertificate{cert: cert}, nil
}

// httpClient is the client c's calls to the IdP go through: the
// Provider's, or a copy of it whose TLS presents c's certificate.
func (p *Provider) httpClient(c Client) (*http.Client, error) {
	if c.Certificate == nil {
		return p.hc, nil
	}
	return c.Certificate.clientFor(p.hc)
}

// clientFor derives from base a client that presents the certificate,
// once per base: its transport (and connection pool) is reused.
func (cc *ClientCertificate) clientFor(base *http.Client) (*http.Client, error) {
	cc.mu.Lock()
	defer cc.mu.Unlock()
	if hc, ok := cc.clients[base]; ok {
		return hc, nil
	}
	rt := base.Transport
	if rt == nil {
		rt = http.DefaultTransport
	}
	limited, isLimited := rt.(limitedTransport)
	if isLimited {
		rt = limited.base
	}
	t, ok := rt.(*http.Transport)
	if !ok {
		return nil, fmt.Errorf("cannot present a client certificate through an HTTP transport of type %T", rt)
	}
	t = t.Clone()
	if t.TLSClientConfig == nil {
		t.TLSClientConfig = &tls.Config{MinVersion: tls.VersionTLS12}
	}
	t.TLSClientConfig.Certificates = []tls.Certificate{cc.cert}
	hc := *base
	hc.Transport = t
	if isLimited {
		hc.Transport = limitedTransport{base: t}
	}
	if cc.clients == nil {
		cc.clients = make(map[*http.Client]*http.Client)
	}
	cc.clients[base] = &hc
	return &hc, nil
}

// endpoint is the URL of the IdP endpoint that discovery names name (for
// its mtls_endpoint_aliases) and announces at def: a client with a
// certificate calls the alias when there is one (RFC 8705 §5).
func (c Client) endpoint(d *Discovery, name, def string) string {
	if c.Certificate != nil {
		if alias := d.MTLSEndpointAliases[name]; alias != "" {
			return alias
		}
	}
	return def
}

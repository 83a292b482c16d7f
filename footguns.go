package caddyoidc

import (
	"net"
	"net/url"
	"strings"
	"sync/atomic"

	"go.uber.org/zap"
)

// warnOnce logs msg the first time flag is raised: for conditions that
// would otherwise be logged on every request.
func (h *Handler) warnOnce(flag *atomic.Bool, msg string, fields ...zap.Field) {
	if flag.CompareAndSwap(false, true) {
		h.logger.Warn(msg, fields...)
	}
}

// warnFootguns logs one warning, with the fix, for each risky setting that
// is still a valid configuration.
func (h *Handler) warnFootguns(secrets []string) {
	if u, err := url.Parse(h.Issuer); err == nil && u.Scheme == "http" && !isLoopback(u.Hostname()) {
		h.logger.Warn("the issuer is plain http on a network host: discovery, keys and tokens can be altered in transit; use the IdP's https URL",
			zap.String("issuer", h.Issuer))
	}
	if multiTenantIssuer(h.Issuer) && len(h.Allow.Users)+len(h.Allow.Domains)+len(h.Allow.Groups)+len(h.Allow.Roles) == 0 && h.Allow.Expression == "" {
		h.logger.Warn("this issuer signs in accounts of any organisation (any Google account, any Entra tenant): without an allow rule every one of them gets in; add allow_domains, allow_users, allow_groups or allow_expression (for Entra, on the tid claim)",
			zap.String("issuer", h.Issuer))
	}
	for _, p := range h.Exclude {
		if strings.HasPrefix(p, "*") {
			h.logger.Warn("an exclude pattern matches by suffix anywhere on the site (any path ending like it skips login, such as /admin/report.css); prefer a directory such as /static/*",
				zap.String("exclude", p))
		}
	}
	for i, s := range secrets {
		if lowEntropy(s) {
			h.logger.Warn("a session_secret looks guessable (few distinct characters); generate one with: openssl rand -base64 48",
				zap.Int("secret", i+1))
		}
	}
}

func isLoopback(host string) bool {
	if host == "localhost" || strings.HasSuffix(host, ".localhost") {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}

// multiTenantIssuer recognises issuers that accept accounts of any
// organisation: Google, and Entra ID's common, organizations and consumers.
func multiTenantIssuer(issuer string) bool {
	u, err := url.Parse(issuer)
	if err != nil {
		return false
	}
	switch u.Host {
	case "accounts.google.com":
		return true
	case "login.microsoftonline.com":
		seg, _, _ := strings.Cut(strings.TrimPrefix(u.Path, "/"), "/")
		return seg == "common" || seg == "organizations" || seg == "consumers"
	}
	return false
}

// lowEntropy flags secrets made of few distinct characters (a repeated
// word, "aaaa...", a keyboard run): random base64 of 32+ bytes has 25 or more.
func lowEntropy(s string) bool {
	var seen [256]bool
	n := 0
	for i := 0; i < len(s); i++ {
		if !seen[s[i]] {
			seen[s[i]] = true
			n++
		}
	}
	return n < 12
}

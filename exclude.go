package caddyoidc

import (
	"net/http"
	"strings"
)

// excluded reports whether r may pass without authentication. Caddy's path
// matcher and the upstream can read one path differently: Tomcat and Spring
// drop ";" parameters and resolve "..;" (/public/..;/admin passes a
// /public/* exclusion, /admin/users;.css a *.css one), other servers merge
// "//" or decode %2F, %5C, %2E, %23 and %3F. So a path is excluded only when
// it has none of these: what the matcher sees is then what the upstream gets.
func (h *Handler) excluded(r *http.Request) bool {
	return h.exclude != nil && unambiguousPath(r) && h.exclude.Match(r)
}

// unambiguousPath reports whether every server reads r's path the same way.
func unambiguousPath(r *http.Request) bool {
	if !plainPath(r.URL.Path) || !plainPath(r.URL.EscapedPath()) {
		return false
	}
	// What the client sent, before any rewrite by an earlier handler.
	raw, _, _ := strings.Cut(r.RequestURI, "?")
	return raw == "" || raw == "*" || plainPath(raw)
}

func plainPath(p string) bool {
	if strings.ContainsAny(p, ";\\") || strings.Contains(p, "//") {
		return false
	}
	for i := 0; i < len(p); i++ {
		switch c := p[i]; {
		case c < 0x20 || c >= 0x7f:
			// Controls, and anything beyond ASCII: lookalike dots (U+2025)
			// and overlong forms some stacks normalise into "..".
			return false
		case c == '%':
			if i+2 >= len(p) {
				return false
			}
			switch h := strings.ToLower(p[i+1 : i+3]); {
			case h == "2f", h == "5c", h == "2e", h == "23", h == "3f", h == "25", h == "3b", h == "00", h == "20":
				return false
			case h[0] >= '8': // an encoded byte beyond ASCII
				return false
			}
		}
	}
	for seg := range strings.SplitSeq(p, "/") {
		// ".", "..", and what Windows file servers read as them ("...",
		// ".. ", ". .").
		if seg != "" && strings.Trim(seg, ". ") == "" {
			return false
		}
	}
	return true
}

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
		case c < 0x20 || c == 0x7f:
			return false
		case c == '%':
			if i+2 >= len(p) {
				return false
			}
			switch strings.ToLower(p[i+1 : i+3]) {
			case "2f", "5c", "2e", "23", "3f", "25", "3b", "00":
				return false
			}
		}
	}
	for seg := range strings.SplitSeq(p, "/") {
		if seg == "." || seg == ".." {
			return false
		}
	}
	return true
}

package caddyoidc

import (
	"cmp"
	"encoding/json"
	"net/http"
	"slices"
	"strconv"
	"strings"

	"github.com/caddyserver/caddy/v2"

	"github.com/caddy-oidc/caddy-oidc/session"
)

const userPrefix = "http.auth.user."

// identity is what the upstream learns about the user: the
// {http.auth.user.*} placeholders and the configured headers, and the
// client-sent copies of those headers it removes.
type identity struct {
	groupsClaim, rolesClaim string
	// issuer and provider say who authenticated the user: sub is unique
	// only per IdP ({http.auth.user.issuer}, {http.auth.user.provider}).
	issuer, provider string
	headers          []headerRule
	// spellings are the configured header names, lowercased with '_' and
	// '.' read as '-': a client header equal to one of them after that
	// mapping is removed (CGI and FastCGI map all three alike).
	spellings []string
	// variantNames: a configured name has '_' or '.', so a client's
	// plain-dash spelling of it is not removed by its canonical name.
	variantNames bool
	// assertions signs {http.auth.user.assertion}; nil when off.
	assertions *assertionSigner
}

// headerRule is one `header` line. userKey is set when the value is
// exactly one {http.auth.user.*} placeholder, which is then rendered
// directly instead of through the replacer (the common case, and cheaper).
type headerRule struct{ name, value, userKey string }

// newIdentity prepares the header lines and the claims groups and roles
// are read from (groups and roles unless configured).
func newIdentity(header map[string]string, groupsClaim, rolesClaim string) identity {
	id := identity{groupsClaim: cmp.Or(groupsClaim, "groups"), rolesClaim: cmp.Or(rolesClaim, "roles")}
	for name, value := range header {
		id.spellings = append(id.spellings, headerIdentity(name))
		id.variantNames = id.variantNames || strings.ContainsAny(name, "_.")
		hr := headerRule{name: http.CanonicalHeaderKey(name), value: value}
		if k, ok := strings.CutPrefix(value, "{"+userPrefix); ok && strings.HasSuffix(k, "}") && !strings.ContainsAny(k[:len(k)-1], "{}") {
			hr.userKey = k[:len(k)-1]
		}
		id.headers = append(id.headers, hr)
	}
	slices.SortFunc(id.headers, func(a, b headerRule) int { return strings.Compare(a.name, b.name) })
	return id
}

// headerIdentity is how CGI, FastCGI (PHP), WSGI and Rack stacks see a
// header name: case-insensitive, with '_' and '.' read as '-' (all three
// become HTTP_X_AUTH_EMAIL).
func headerIdentity(name string) string {
	return strings.Map(func(r rune) rune {
		switch r {
		case '_', '.':
			return '-'
		}
		if 'A' <= r && r <= 'Z' {
			return r + ('a' - 'A')
		}
		return r
	}, name)
}

// stripIdentityHeaders removes every client header an upstream could read
// as a configured identity header: the canonical name, and any spelling
// with '_' or '.' (which Caddy forwards when expected_underscore_headers or
// expected_dot_headers allow them). Only names with those characters need
// the slower comparison.
func (id *identity) strip(r *http.Request) {
	for _, hr := range id.headers {
		r.Header.Del(hr.name)
	}
	if len(id.spellings) == 0 {
		return
	}
	for name := range r.Header {
		if (id.variantNames || strings.ContainsAny(name, "_.")) && slices.Contains(id.spellings, headerIdentity(name)) {
			delete(r.Header, name)
		}
	}
}

// ClaimList is a list-valued claim. It renders comma-joined in headers and
// placeholders, and stays a list for CEL expressions ('admin' in ...).
type ClaimList []string

func (l ClaimList) String() string { return strings.Join(l, ",") }

// setIdentity makes the session's identity available as {http.auth.user.*}.
// The values are computed when a placeholder is used, not per request.
// tokens carries the session's current (refreshed) tokens for the token
// placeholders; nil leaves them empty.
func (id *identity) set(r *http.Request, claims map[string]any, tokens *session.Session) {
	repl, ok := r.Context().Value(caddy.ReplacerCtxKey).(*caddy.Replacer)
	if !ok {
		return
	}
	repl.Map(func(key string) (any, bool) {
		if !strings.HasPrefix(key, userPrefix) {
			return nil, false
		}
		return id.placeholder(r, claims, tokens, key[len(userPrefix):])
	})
	for _, hr := range id.headers {
		var v string
		if hr.userKey != "" {
			if val, ok := id.placeholder(r, claims, tokens, hr.userKey); ok {
				v = caddy.ToString(val)
			}
		} else {
			v = repl.ReplaceAll(hr.value, "")
		}
		if v != "" {
			r.Header[hr.name] = []string{v}
		}
	}
}

func (id *identity) placeholder(r *http.Request, claims map[string]any, tokens *session.Session, key string) (any, bool) {
	switch key {
	case "assertion":
		// Signed only when a placeholder asks for it (and then mostly
		// taken from the signer's cache): most requests never pay for it.
		if id.assertions == nil {
			return "", true
		}
		return id.assertions.assertion(r, id, claims, tokens), true
	case "access_token", "id_token", "access_token_expiry", "access_token_type":
		// The tokens reach the upstream only through placeholders the
		// operator wrote; the module never logs them.
		if tokens == nil {
			return "", true
		}
		switch key {
		case "access_token":
			return tokens.AccessToken, true
		case "id_token":
			return tokens.IDToken, true
		case "access_token_type":
			// A DPoP-bound token is usable only with proofs of the
			// module's key: an upstream cannot call APIs with it.
			if tokens.DPoPKey != "" {
				return "DPoP", true
			}
			return "Bearer", true
		}
		if tokens.AccessExpiry == 0 {
			return "", true
		}
		return strconv.FormatInt(tokens.AccessExpiry, 10), true
	case "id":
		return claimString(claims["sub"]), true
	case "issuer":
		return id.issuer, true
	case "provider":
		return id.provider, true
	case "email", "name":
		return claimString(claims[key]), true
	case "groups":
		return id.groups(claims), true
	case "roles":
		return id.roles(claims), true
	}
	if path, ok := strings.CutPrefix(key, "claims."); ok {
		v, found := lookupClaim(claims, path)
		if !found {
			return "", true
		}
		if l, isList := v.([]any); isList {
			return claimList(l), true
		}
		return claimString(v), true
	}
	return nil, false
}

// lookupClaim finds a claim by name, or by a dotted path into nested
// objects (realm_access.roles). A claim whose own name has dots (namespaced
// URL claims) is found first by its full name.
func lookupClaim(claims map[string]any, path string) (any, bool) {
	if v, ok := claims[path]; ok {
		return v, true
	}
	cur := claims
	for {
		head, rest, more := strings.Cut(path, ".")
		v, ok := cur[head]
		if !ok {
			return nil, false
		}
		if !more {
			return v, true
		}
		if next, ok := v.(map[string]any); ok {
			if vv, ok := next[rest]; ok {
				return vv, true
			}
			cur, path = next, rest
			continue
		}
		return nil, false
	}
}

func claimString(v any) string {
	switch t := v.(type) {
	case nil:
		return ""
	case string:
		return t
	case bool:
		return strconv.FormatBool(t)
	case float64:
		return strconv.FormatFloat(t, 'f', -1, 64)
	case json.Number:
		return t.String()
	case []any:
		return claimList(t).String()
	}
	b, _ := json.Marshal(v)
	return string(b)
}

func claimList(v any) ClaimList {
	switch t := v.(type) {
	case []any:
		l := make(ClaimList, 0, len(t))
		for _, e := range t {
			l = append(l, claimString(e))
		}
		return l
	case []string:
		return ClaimList(t)
	case string:
		if t == "" {
			return nil
		}
		return ClaimList{t}
	case map[string]any:
		// Role maps such as Zitadel's urn:zitadel:iam:org:project:roles
		// ({"admin": {...}}): the names are the keys.
		l := make(ClaimList, 0, len(t))
		for k := range t {
			l = append(l, k)
		}
		slices.Sort(l)
		return l
	}
	return nil
}

// asciiEqualFold compares case-insensitively in ASCII only: Unicode folding
// (strings.EqualFold) would let a Kelvin sign (U+212A) stand for "k".
func asciiEqualFold(a, b string) bool {
	if len(a) != len(b) {
		return false
	}
	for i := 0; i < len(a); i++ {
		x, y := a[i], b[i]
		if 'A' <= x && x <= 'Z' {
			x += 'a' - 'A'
		}
		if 'A' <= y && y <= 'Z' {
			y += 'a' - 'A'
		}
		if x != y {
			return false
		}
	}
	return true
}

func intersects(have ClaimList, want []string) bool {
	for _, h := range have {
		for _, w := range want {
			if h == w {
				return true
			}
		}
	}
	return false
}

// groups and roles read the configured claims (groups_claim, roles_claim),
// which may be nested paths such as realm_access.roles.
func (id *identity) groups(claims map[string]any) ClaimList {
	v, _ := lookupClaim(claims, id.groupsClaim)
	return claimList(v)
}

func (id *identity) roles(claims map[string]any) ClaimList {
	v, _ := lookupClaim(claims, id.rolesClaim)
	return claimList(v)
}

package caddyoidc

import (
	"slices"
	"strings"

	"cel.dev/cel-go/cel"
	celast "cel.dev/cel-go/common/ast"
	"cel.dev/cel-go/common/operators"
)

// The modes of login's userinfo.
const (
	UserInfoAuto = "auto"
	UserInfoOn   = "on"
	UserInfoOff  = "off"
)

// scopeClaims are the claims each standard scope asks for (OpenID Connect
// Core §5.4). An IdP that puts a scope's claims in its ID tokens puts at
// least one of them there, so an ID token with none of them has left them
// to UserInfo. email_verified and phone_number_verified are left out: a
// verification is taken only together with its value (setVerified), so
// fetching for it alone could not change anything.
var scopeClaims = map[string][]string{
	"profile": {"name", "family_name", "given_name", "middle_name", "nickname", "preferred_username",
		"profile", "picture", "website", "gender", "birthdate", "zoneinfo", "locale", "updated_at"},
	"email":   {"email"},
	"address": {"address"},
	"phone":   {"phone_number"},
}

// userInfoNeeds is what, in auto mode, the ID token must carry for UserInfo
// to be skipped: each requirement is met by any one of its claims (claim
// paths, as rules and headers name them).
type userInfoNeeds struct {
	anyOf [][]string
	// always: an allow_expression reads the claims in a way that cannot be
	// listed (claims passed whole, a computed key), so any login fetches.
	always bool
}

// newUserInfoNeeds lists the claims the requested scopes imply and those
// the allow rules and header lines read.
func newUserInfoNeeds(scopes []string, allow *AllowPolicy, header map[string]string, groupsClaim, rolesClaim string) userInfoNeeds {
	var n userInfoNeeds
	add := func(claims ...string) {
		if !slices.ContainsFunc(n.anyOf, func(have []string) bool { return slices.Equal(have, claims) }) {
			n.anyOf = append(n.anyOf, claims)
		}
	}
	for _, s := range scopes {
		if c, ok := scopeClaims[s]; ok {
			add(c...)
		}
	}
	if len(allow.Domains) > 0 || slices.ContainsFunc(allow.Users, func(u string) bool { return strings.Contains(u, "@") }) {
		add("email")
	}
	if len(allow.Groups) > 0 {
		add(groupsClaim)
	}
	if len(allow.Roles) > 0 {
		add(rolesClaim)
	}
	if allow.Expression != "" {
		claims, all := expressionClaims(allow.Expression)
		n.always = n.always || all
		for _, c := range claims {
			add(c)
		}
	}
	for _, value := range header {
		for _, key := range userPlaceholders(value) {
			switch key {
			case "email", "name":
				add(key)
			case "groups":
				add(groupsClaim)
			case "roles":
				add(rolesClaim)
			default:
				if path, ok := strings.CutPrefix(key, "claims."); ok && path != "" {
					add(path)
				}
			}
		}
	}
	return n
}

// lacking names a requirement the claims do not meet ("" if none).
func (n *userInfoNeeds) lacking(claims map[string]any) string {
	if n.always {
		return "any claim allow_expression reads"
	}
	for _, alts := range n.anyOf {
		if !slices.ContainsFunc(alts, func(c string) bool { _, ok := lookupClaim(claims, c); return ok }) {
			return strings.Join(alts, "|")
		}
	}
	return ""
}

// userPlaceholders are the keys of the {http.auth.user.*} placeholders in
// a header value ("email", "claims.department").
func userPlaceholders(value string) []string {
	var keys []string
	for {
		_, rest, found := strings.Cut(value, "{"+userPrefix)
		if !found {
			return keys
		}
		key, after, closed := strings.Cut(rest, "}")
		if !closed {
			return keys
		}
		keys = append(keys, key)
		value = after
	}
}

// expressionClaims lists the top-level claims a CEL allow_expression reads
// (claims.x, claims["x"], has(claims.x)); all is true when it uses claims
// in any other way, so that which claims it needs cannot be known.
func expressionClaims(src string) (names []string, all bool) {
	env, err := cel.NewEnv(cel.Variable("claims", cel.MapType(cel.StringType, cel.DynType)))
	if err != nil {
		return nil, true
	}
	ast, iss := env.Parse(src)
	if iss.Err() != nil {
		return nil, true
	}
	nav := celast.NavigateAST(ast.NativeRep())
	idents := celast.MatchDescendants(nav, func(e celast.NavigableExpr) bool {
		return e.Kind() == celast.IdentKind && e.AsIdent() == "claims"
	})
	for _, id := range idents {
		parent, ok := id.Parent()
		if !ok {
			return nil, true
		}
		switch parent.Kind() {
		case celast.SelectKind:
			names = append(names, parent.AsSelect().FieldName())
			continue
		case celast.CallKind:
			call := parent.AsCall()
			if call.FunctionName() == operators.Index && len(call.Args()) == 2 && call.Args()[0].ID() == id.ID() {
				if key := call.Args()[1]; key.Kind() == celast.LiteralKind {
					if name, isString := key.AsLiteral().Value().(string); isString {
						names = append(names, name)
						continue
					}
				}
			}
		}
		return nil, true
	}
	return names, false
}

// wantsUserInfo reports whether a login (fromUI nil) or a refresh of a
// session with these claims fetches UserInfo. In auto mode: when the
// claims lack what the scopes, rules or headers need, and on refresh also
// when UserInfo added claims at login, so that they stay current.
func (h *Handler) wantsUserInfo(claims map[string]any, fromUI []string) (bool, string) {
	switch h.Login.UserInfo {
	case UserInfoOn:
		return true, "userinfo on"
	case UserInfoOff:
		return false, ""
	}
	if len(fromUI) > 0 {
		return true, "claims from userinfo at login"
	}
	if missing := h.userInfoNeeds.lacking(claims); missing != "" {
		return true, "the ID token lacks " + missing
	}
	return false, ""
}

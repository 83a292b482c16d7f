package caddyoidc

import (
	"fmt"
	"slices"
	"strings"
)

// AllowPolicy decides which authenticated users a route admits. With no
// rule every authenticated user is admitted; otherwise a user matching any
// one rule is, and everyone else gets 403.
type AllowPolicy struct {
	// Users admitted by email (verified, case-insensitive) or sub.
	Users []string `json:"allow_users,omitempty"`
	// Email domains admitted (the email must be verified).
	Domains []string `json:"allow_domains,omitempty"`
	// Values of the groups claim (groups_claim) admitted.
	Groups []string `json:"allow_groups,omitempty"`
	// Values of the roles claim (roles_claim) admitted.
	Roles []string `json:"allow_roles,omitempty"`
	// A CEL expression over the user's claims (the variable `claims`) that
	// admits the user when true, for rules the lists cannot say:
	// `claims.department == "ops" && "oncall" in claims.groups`.
	Expression string `json:"allow_expression,omitempty"`
	// Make email rules ignore an email whose email_verified claim is not the
	// boolean true. Turn off only for a single tenant you trust.
	// Default: true.
	RequireEmailVerified *bool `json:"require_email_verified,omitempty"`

	expr                    *claimExpression
	groupsClaim, rolesClaim string
}

// provision compiles the expression and takes the claim names the group and
// role rules read.
func (p *AllowPolicy) provision(groupsClaim, rolesClaim string) error {
	p.groupsClaim, p.rolesClaim = groupsClaim, rolesClaim
	p.expr = nil
	if p.Expression != "" {
		expr, err := compileClaimExpression(p.Expression)
		if err != nil {
			return fmt.Errorf("allow_expression: %w", err)
		}
		p.expr = expr
	}
	return nil
}

func (p *AllowPolicy) empty() bool {
	return len(p.Users)+len(p.Domains)+len(p.Groups)+len(p.Roles) == 0 && p.Expression == ""
}

// allows applies the rules. Email rules count an email only when
// email_verified is the boolean true (unless require_email_verified is
// off): a missing or string value is not proof, and on multi-tenant IdPs
// (Entra ID) a tenant chooses its users' emails.
func (p *AllowPolicy) allows(claims map[string]any) bool {
	if p.empty() {
		return true
	}
	sub := claimString(claims["sub"])
	email := claimString(claims["email"])
	requireVerified := p.RequireEmailVerified == nil || *p.RequireEmailVerified
	verified := email != "" && (claims["email_verified"] == true || !requireVerified)
	for _, u := range p.Users {
		if u == sub || verified && asciiEqualFold(u, email) {
			return true
		}
	}
	if verified {
		if at := strings.LastIndexByte(email, '@'); at >= 0 {
			domain := email[at+1:]
			for _, d := range p.Domains {
				if asciiEqualFold(strings.TrimPrefix(d, "@"), domain) {
					return true
				}
			}
		}
	}
	if len(p.Groups) > 0 && claimHasAny(claims, p.groupsClaim, p.Groups) ||
		len(p.Roles) > 0 && claimHasAny(claims, p.rolesClaim, p.Roles) {
		return true
	}
	return p.expr != nil && p.expr.allows(claims)
}

// claimHasAny reports whether the list claim at path holds one of want,
// without building the list (this runs on every request).
func claimHasAny(claims map[string]any, path string, want []string) bool {
	v, _ := lookupClaim(claims, path)
	switch t := v.(type) {
	case []any:
		for _, e := range t {
			if s, ok := e.(string); ok && slices.Contains(want, s) {
				return true
			}
		}
		return false
	case string:
		return slices.Contains(want, t)
	}
	return intersects(claimList(v), want)
}

package caddyoidc

import "testing"

// A refresh's UserInfo never states how the user logged in: acr and
// auth_time (which step-up routes check) come from ID tokens only.
func TestAttackRefreshUserInfoCannotSupplyACR(t *testing.T) {
	old := map[string]any{"sub": "u1", "email": "u1@example.com"}
	ui := map[string]any{"sub": "u1", "acr": "urn:example:mfa", "auth_time": float64(4102444800), "amr": []any{"hwk"}, "sid": "x"}
	merged, _ := refreshedClaims(old, []string{"email"}, nil, ui)
	for _, k := range []string{"acr", "auth_time", "amr", "sid"} {
		if _, ok := merged[k]; ok {
			t.Errorf("UserInfo at refresh added %s to the session", k)
		}
	}
}

package provider

import (
	"context"
	"fmt"
	"time"

	"github.com/lestrrat-go/jwx/v2/jwt"
)

// BackchannelLogoutEvent is the member of the events claim that makes a JWT
// a logout token (OpenID Connect Back-Channel Logout 1.0 §2.4).
const BackchannelLogoutEvent = "http://schemas.openid.net/event/backchannel-logout"

// LogoutToken is what a verified logout token says.
type LogoutToken struct {
	Subject  string
	SID      string
	JTI      string
	IssuedAt time.Time
	Expiry   time.Time
}

// VerifyLogoutToken checks a back-channel logout token as §2.6 of the spec
// requires: signature by the IdP with an announced algorithm, iss, aud,
// iat (within maxAge), the back-channel member of events, sid and/or sub,
// and no nonce. typ, if present, must be logout+jwt or JWT.
func (p *Provider) VerifyLogoutToken(ctx context.Context, raw, clientID string, skew, maxAge time.Duration) (*LogoutToken, error) {
	_, withKey, err := p.signedBy(ctx, raw, "logout token", false, "logout+jwt", "jwt")
	if err != nil {
		return nil, err
	}
	tok, err := jwt.Parse([]byte(raw),
		withKey,
		jwt.WithValidate(true),
		jwt.WithIssuer(p.issuer),
		jwt.WithAudience(clientID),
		jwt.WithAcceptableSkew(skew),
		jwt.WithRequiredClaim("iat"),
		jwt.WithRequiredClaim("jti"),
	)
	if err != nil {
		return nil, fmt.Errorf("validating logout token: %v: %w", err, ErrInvalidToken)
	}
	if age := time.Since(tok.IssuedAt()); age > maxAge+skew {
		return nil, fmt.Errorf("logout token was issued %s ago: %w", age.Round(time.Second), ErrInvalidToken)
	}
	claims, err := tok.AsMap(ctx)
	if err != nil {
		return nil, fmt.Errorf("reading logout token claims: %v: %w", err, ErrInvalidToken)
	}
	events, _ := claims["events"].(map[string]any)
	if _, ok := events[BackchannelLogoutEvent].(map[string]any); !ok {
		return nil, fmt.Errorf("logout token lacks the back-channel logout event: %w", ErrInvalidToken)
	}
	if _, ok := claims["nonce"]; ok {
		return nil, fmt.Errorf("logout token carries a nonce: %w", ErrInvalidToken)
	}
	sid, _ := claims["sid"].(string)
	if tok.Subject() == "" && sid == "" {
		return nil, fmt.Errorf("logout token has neither sid nor sub: %w", ErrInvalidToken)
	}
	return &LogoutToken{Subject: tok.Subject(), SID: sid, JTI: tok.JwtID(), IssuedAt: tok.IssuedAt(), Expiry: tok.Expiration()}, nil
}

package caddyoidc

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"slices"
	"time"

	"go.uber.org/zap"

	"github.com/caddy-oidc/caddy-oidc/internal/provider"
	"github.com/caddy-oidc/caddy-oidc/refresh"
	"github.com/caddy-oidc/caddy-oidc/session"
)

// refreshResult is what one refresh grant yields, shared by every request
// that waited for it (on this replica, or on another through a hand-off).
type refreshResult struct {
	tokens *provider.TokenResponse
	// claims are those of a new, verified ID token; nil if the IdP sent
	// none or its keys could not be fetched (the tokens are kept anyway).
	claims map[string]any
	// userinfo is the UserInfo re-fetched with the new access token.
	userinfo map[string]any
	at       time.Time
}

// needsRefresh reports a session whose access token is due for a refresh
// (refresh_before ahead of its expiry) with a refresh token still usable.
func (h *Handler) needsRefresh(s *session.Session, now time.Time) bool {
	return s.RefreshToken != "" && s.AccessExpiry != 0 && !s.RefreshTokenTooOld(time.Duration(h.Session.RefreshTokenMaxAge), now) &&
		now.Add(time.Duration(h.Session.RefreshBefore)).Unix() >= s.AccessExpiry
}

// refresh spends the session's refresh token through the app's coordinator,
// so concurrent requests of this session share one grant, and updates s.
func (h *Handler) refresh(ctx context.Context, s *session.Session) error {
	rt, sub := s.RefreshToken, s.Subject()
	// The flight is named by route and token: a token is one route's.
	flight := h.route + rt
	sum := sha256.Sum256([]byte(flight))
	codec := newRefreshCodec(h.codec, h.bind(purposeHandOff+hex.EncodeToString(sum[:])), sub)
	// Decided on the session as it is: UserInfo that filled in claims at
	// login is fetched again, so they stay current.
	withUserInfo, _ := h.wantsUserInfo(s.Claims, s.FromUserInfo)
	// A DPoP-bound refresh token is spent with the key that bound it.
	rp := h.rpFor(s)
	grant := func(gctx context.Context) (*refreshResult, error) {
		h.app.hold()
		defer h.app.release()
		return h.grant(gctx, rp, rt, sub, withUserInfo)
	}
	res, err := h.app.coordinator.Do(ctx, flight, grant, codec, h.app.via())
	if err != nil {
		return err
	}
	h.applyRefresh(s, res)
	return nil
}

// grant spends rt at the IdP and verifies what comes back, and fetches
// UserInfo with the new access token if withUserInfo.
func (h *Handler) grant(ctx context.Context, rp *provider.RelyingParty, rt, sub string, withUserInfo bool) (res *refreshResult, err error) {
	start := time.Now()
	defer func() {
		outcome := "ok"
		switch {
		case err == nil:
		case isDefinitive(err):
			outcome = "refused"
		default:
			outcome = "failed"
		}
		h.logger.Info("refresh", zap.String("sub", sub), zap.String("outcome", outcome),
			zap.Duration("took", time.Since(start)), zap.Error(err))
	}()
	tr, err := rp.Refresh(ctx, rt)
	if err != nil {
		return nil, err
	}
	res = &refreshResult{tokens: tr, at: time.Now()}
	if tr.IDToken != "" {
		// Core §12.2: a refreshed ID token must be about the same user, from
		// the same issuer (VerifyIDToken checks iss).
		claims, err := rp.VerifyRefreshedIDToken(ctx, tr.IDToken, sub)
		switch {
		case err == nil:
			res.claims = claims
		case errors.Is(err, provider.ErrUnavailable):
			// The IdP's keys cannot be had right now. The IdP has already
			// rotated the refresh token: throwing the answer away would end
			// the session. Keep the tokens and the claims the session has.
			h.warned.refreshDegraded.Warn(h.logger, "refreshed ID token not verified (IdP keys unavailable); keeping the new tokens and the session's claims",
				zap.String("sub", sub), zap.Error(err))
			cp := *tr
			cp.IDToken = ""
			res.tokens = &cp
		default:
			return nil, err
		}
	}
	if withUserInfo {
		ui, err := rp.UserInfo(ctx, tr.AccessToken, sub)
		if err != nil {
			h.warned.userinfoFailed.Warn(h.logger, "userinfo not refreshed; the session keeps its earlier claims", zap.String("sub", sub), zap.Error(err))
		}
		res.userinfo = ui
	}
	return res, nil
}

// applyRefresh updates s with a refresh's outcome.
func (h *Handler) applyRefresh(s *session.Session, res *refreshResult) {
	s.AccessToken = res.tokens.AccessToken
	if res.tokens.RefreshToken != "" && res.tokens.RefreshToken != s.RefreshToken {
		s.RefreshToken = res.tokens.RefreshToken
		s.RefreshIssued = res.at.Unix()
	}
	s.AccessExpiry = 0
	if exp := res.tokens.Expiry(res.at); !exp.IsZero() {
		s.AccessExpiry = exp.Unix()
	}
	if claims, fromUI := refreshedClaims(s.Claims, s.FromUserInfo, res.claims, res.userinfo); claims != nil {
		// The cached decoded session shares the old map: replace, never mutate.
		s.Claims, s.FromUserInfo = claims, fromUI
	}
	if res.claims != nil {
		s.IDToken = res.tokens.IDToken
	}
}

// sessionClaims describe the login itself, not the user's attributes: a
// refreshed ID token that lacks them does not take them away.
var sessionClaims = []string{"sub", "sid", "auth_time", "acr", "amr"}

// refreshedClaims are a session's claims after a refresh (nil: unchanged),
// and the names of those UserInfo added. A refreshed ID token that says
// anything about the user (Keycloak, Entra, Okta, Hydra) is the IdP's
// current statement: the claims the earlier ID token carried and this one
// does not (the user left their last group) are gone. One that carries only
// sub and protocol claims, or none at all (panva's oidc-provider), leaves
// them. UserInfo fetched again restates the claims it added at login: those
// it no longer carries are gone; a failed UserInfo keeps them (degraded,
// logged). Claims describing the login itself (sid, auth_time...) stay.
func refreshedClaims(old map[string]any, oldFromUI []string, idClaims, userinfo map[string]any) (map[string]any, []string) {
	full := false
	for k := range idClaims {
		if !slices.Contains(session.ProtocolClaims, k) && !slices.Contains(sessionClaims, k) {
			full = true
			break
		}
	}
	refetched := len(userinfo) > 0
	if idClaims == nil && !refetched {
		return nil, oldFromUI
	}
	merged := maps.Clone(old)
	if full {
		// Drop what the earlier ID token said; keep the login's own claims
		// and, unless UserInfo restates them below, what UserInfo said.
		for k := range old {
			if !slices.Contains(sessionClaims, k) && !slices.Contains(oldFromUI, k) {
				delete(merged, k)
			}
		}
	}
	fromUI := oldFromUI
	if refetched {
		for _, k := range oldFromUI {
			if _, still := userinfo[k]; !still {
				if _, inToken := idClaims[k]; !inToken {
					delete(merged, k)
				}
			}
		}
		fromUI = nil
	}
	overlay(merged, idClaims)
	for k, v := range userinfo {
		if _, inToken := idClaims[k]; inToken || slices.Contains(session.ProtocolClaims, k) || k == "email_verified" {
			continue // email_verified goes only with its email (setVerified)
		}
		if slices.Contains(sessionClaims, k) {
			continue // acr, auth_time, amr, sid: only an ID token says how the user logged in
		}
		if _, inOld := old[k]; inOld && !slices.Contains(oldFromUI, k) && !full {
			// The ID token carried it (at login): the ID token's word stands.
			continue
		}
		merged[k] = v
		fromUI = append(fromUI, k)
		if k == "email" {
			setVerified(merged, userinfo)
		}
	}
	return merged, fromUI
}

// overlay copies src's user claims into dst. An email and its
// email_verified always come from the same source: a new email never
// inherits an earlier one's verification.
func overlay(dst, src map[string]any) {
	for k, v := range src {
		if !slices.Contains(session.ProtocolClaims, k) && k != "email_verified" {
			dst[k] = v
		}
	}
	if _, ok := src["email"]; ok {
		setVerified(dst, src)
	}
}

func setVerified(dst, src map[string]any) {
	if v, ok := src["email_verified"]; ok {
		dst["email_verified"] = v
	} else {
		delete(dst, "email_verified")
	}
}

// handOff is a refresh outcome as other replicas adopt it.
type handOff struct {
	Tokens   *provider.TokenResponse `json:"t,omitempty"`
	Claims   map[string]any          `json:"c,omitempty"`
	UserInfo map[string]any          `json:"u,omitempty"`
	// Sub is the user the grant was for: an adopted hand-off must be about
	// the session's own user.
	Sub string `json:"s"`
	At  int64  `json:"at"`
	// Err is the definitive error ("invalid_grant"), handed to followers so
	// they do not spend the token again.
	Err string `json:"e,omitempty"`
}

// newRefreshCodec seals hand-offs with this route's keys, bound to the
// flight (route and refresh token) they answer: they carry tokens and
// travel through Valkey, which is not trusted to keep values in place.
func newRefreshCodec(c *session.Codec, aad, sub string) *refresh.Codec[*refreshResult] {
	return &refresh.Codec[*refreshResult]{
		Encode: func(r *refreshResult, err error) ([]byte, error) {
			ho := handOff{Sub: sub}
			if err != nil {
				ho.Err = "invalid_grant"
			} else {
				ho.Tokens, ho.Claims, ho.UserInfo, ho.At = r.tokens, r.claims, r.userinfo, r.at.Unix()
			}
			b, jerr := json.Marshal(ho)
			if jerr != nil {
				return nil, jerr
			}
			return []byte(c.Seal(aad, b)), nil
		},
		Decode: func(b []byte) (*refreshResult, error) {
			pt, _, err := c.Open(aad, string(b))
			if err != nil {
				return nil, fmt.Errorf("opening a refresh hand-off: %w", provider.ErrUnavailable)
			}
			var ho handOff
			if err := json.Unmarshal(pt, &ho); err != nil {
				return nil, fmt.Errorf("decoding a refresh hand-off: %w", provider.ErrUnavailable)
			}
			if ho.Sub != sub {
				return nil, fmt.Errorf("a refresh hand-off for another user: %w", provider.ErrUnavailable)
			}
			if ho.Err != "" {
				return nil, fmt.Errorf("refresh refused on another replica: %w", provider.ErrInvalidGrant)
			}
			if ho.Tokens == nil {
				return nil, fmt.Errorf("empty refresh hand-off: %w", provider.ErrUnavailable)
			}
			return &refreshResult{tokens: ho.Tokens, claims: ho.Claims, userinfo: ho.UserInfo, at: time.Unix(ho.At, 0)}, nil
		},
	}
}

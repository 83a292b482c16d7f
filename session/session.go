// Package session holds the login session record and its cookie codec:
// authenticated encryption with keys derived from the route's
// session_secret, key rotation, and chunking across cookies.
package session

import (
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"time"
)

// Session is what a successful login leaves behind. It is sealed into the
// session cookie, so every field costs cookie bytes: keep names short.
type Session struct {
	// ID is the opaque id of a session kept in the shared cache
	// (session_store cache); empty for cookie sessions. Never serialized:
	// it travels only in the cookie.
	ID string `json:"-"`
	// LocalID names this session (random, 128 bits) so that logout can
	// revoke it on every replica even as a stateless cookie.
	LocalID string `json:"n,omitempty"`
	// Claims are the ID token's claims, without the protocol ones (see
	// ProtocolClaims), and those UserInfo added.
	Claims map[string]any `json:"c"`
	// FromUserInfo names the claims UserInfo added (the ID token lacked
	// them): a refresh whose UserInfo no longer carries one removes it.
	FromUserInfo []string `json:"u,omitempty"`
	// IDToken is the raw ID token, kept as id_token_hint for logout.
	IDToken      string `json:"i,omitempty"`
	AccessToken  string `json:"a,omitempty"`
	RefreshToken string `json:"r,omitempty"`
	// AccessExpiry is the access token's expiry in Unix seconds; 0 when unknown.
	AccessExpiry int64 `json:"x,omitempty"`
	// RefreshIssued is when the current refresh token was received (Unix
	// seconds), for refresh_token_max_age.
	RefreshIssued int64 `json:"ri,omitempty"`
	// Created is the login time in Unix seconds: the absolute lifetime counts from it.
	Created int64 `json:"t"`
	// LastSeen is the last time (Unix seconds) the cookie was re-issued for
	// activity: the idle timeout counts from it.
	LastSeen int64 `json:"l"`
	// DPoPKey is the thumbprint of the DPoP key the tokens are bound to
	// (empty: Bearer tokens): refreshes must prove that key.
	DPoPKey string `json:"dk,omitempty"`
}

// ProtocolClaims are ID token claims that describe the token rather than the
// user; they are dropped from the session to save cookie bytes.
var ProtocolClaims = []string{"iss", "aud", "exp", "iat", "nbf", "nonce", "at_hash", "c_hash", "azp", "jti"}

// New builds a session from verified ID token claims and a token response.
func New(claims map[string]any, idToken, accessToken, refreshToken string, accessExpiry time.Time, now time.Time) *Session {
	c := make(map[string]any, len(claims))
	for k, v := range claims {
		c[k] = v
	}
	for _, k := range ProtocolClaims {
		delete(c, k)
	}
	id := make([]byte, 16)
	rand.Read(id)
	s := &Session{
		LocalID:      hex.EncodeToString(id),
		Claims:       c,
		IDToken:      idToken,
		AccessToken:  accessToken,
		RefreshToken: refreshToken,
		Created:      now.Unix(),
		LastSeen:     now.Unix(),
	}
	if !accessExpiry.IsZero() {
		s.AccessExpiry = accessExpiry.Unix()
	}
	if refreshToken != "" {
		s.RefreshIssued = now.Unix()
	}
	return s
}

// Subject returns the sub claim.
func (s *Session) Subject() string { v, _ := s.Claims["sub"].(string); return v }

// SID returns the IdP session id (sid claim), used by logout.
func (s *Session) SID() string { v, _ := s.Claims["sid"].(string); return v }

// Marshal encodes the session for sealing.
func (s *Session) Marshal() ([]byte, error) { return json.Marshal(s) }

// Unmarshal decodes a session sealed by Marshal.
func Unmarshal(b []byte) (*Session, error) {
	var s Session
	if err := json.Unmarshal(b, &s); err != nil {
		return nil, fmt.Errorf("decoding session: %w", err)
	}
	if s.Claims == nil || s.Created == 0 {
		return nil, fmt.Errorf("decoding session: incomplete record")
	}
	return &s, nil
}

// Expired reports whether the session is past its absolute lifetime or its
// idle timeout (a zero duration disables that limit).
func (s *Session) Expired(now time.Time, lifetime, idle time.Duration) bool {
	if lifetime > 0 && now.After(time.Unix(s.Created, 0).Add(lifetime)) {
		return true
	}
	if idle > 0 && now.After(time.Unix(s.LastSeen, 0).Add(idle)) {
		return true
	}
	return false
}

// RefreshTokenTooOld reports a refresh token past maxAge (zero: no limit):
// it is not spent any more, and the session ends with its access token.
func (s *Session) RefreshTokenTooOld(maxAge time.Duration, now time.Time) bool {
	return maxAge > 0 && s.RefreshToken != "" && now.Sub(time.Unix(s.RefreshIssued, 0)) > maxAge
}

// Package devidp is a development OpenID Provider for the demo and the
// integration tests: github.com/zitadel/oidc/v3's OpenID-certified `op`
// package with an in-memory store, a login form, refresh-token rotation with
// reuse detection (a spent refresh token gets invalid_grant), a configurable
// access-token lifetime, and counters of the grants it has answered.
package devidp

import (
	"context"
	"encoding/json"
	"net"
	"net/http"
	"net/url"
	"sync/atomic"
	"time"

	"github.com/go-jose/go-jose/v4"
	"github.com/google/uuid"
	"github.com/zitadel/oidc/v3/example/server/exampleop"
	"github.com/zitadel/oidc/v3/example/server/storage"
	"github.com/zitadel/oidc/v3/pkg/oidc"
	"github.com/zitadel/oidc/v3/pkg/op"
	"golang.org/x/text/language"
)

// User is a demo account.
type User struct {
	ID, Username, Password, Email, FirstName, LastName string
	Groups                                             []string
}

// DefaultUsers are the demo accounts.
var DefaultUsers = []User{
	{ID: "alice-id", Username: "alice", Password: "alice-password", Email: "alice@example.com", FirstName: "Alice", LastName: "Liddell", Groups: []string{"admins", "staff"}},
	{ID: "bob-id", Username: "bob", Password: "bob-password", Email: "bob@other.example", FirstName: "Bob", LastName: "Builder", Groups: []string{"staff"}},
}

// Options configure a development IdP. Zero values take the defaults.
type Options struct {
	// Addr to listen on. Default: 127.0.0.1:0 (a free port).
	Addr string
	// ClientID and ClientSecret of the one registered client. Default: demo / demo-secret.
	ClientID, ClientSecret string
	// RedirectURIs and PostLogoutRedirectURIs registered for the client.
	RedirectURIs, PostLogoutRedirectURIs []string
	// AccessTokenLifetime is the expires_in of access tokens. Default: 5 min.
	AccessTokenLifetime time.Duration
	// Users; default DefaultUsers.
	Users []User
	// BackchannelLogoutURIs receive a signed logout token (sub of the user)
	// when a user's session ends at the IdP (its end_session endpoint).
	BackchannelLogoutURIs []string
	// ThinIDTokens puts only sub and protocol claims in ID tokens, as
	// panva's certified oidc-provider does by default: email, profile and
	// groups are served by the UserInfo endpoint alone.
	ThinIDTokens bool
}

// IdP is a running development OpenID Provider.
type IdP struct {
	// Issuer is the issuer URL, http://127.0.0.1:<port>.
	Issuer string
	store  *store
	srv    *http.Server
}

// Start runs an IdP until Close.
func Start(o Options) (*IdP, error) {
	if o.Addr == "" {
		o.Addr = "127.0.0.1:0"
	}
	if o.ClientID == "" {
		o.ClientID, o.ClientSecret = "demo", "demo-secret"
	}
	if o.AccessTokenLifetime <= 0 {
		o.AccessTokenLifetime = 5 * time.Minute
	}
	if o.Users == nil {
		o.Users = DefaultUsers
	}
	ln, err := net.Listen("tcp", o.Addr)
	if err != nil {
		return nil, err
	}
	issuer := "http://" + ln.Addr().String()
	us := userStore{byID: map[string]*storage.User{}, groups: map[string][]string{}}
	for _, u := range o.Users {
		su := &storage.User{ID: u.ID, Username: u.Username, Password: u.Password, Email: u.Email, EmailVerified: true,
			FirstName: u.FirstName, LastName: u.LastName, PreferredLanguage: language.English}
		us.byID[u.ID] = su
		us.groups[u.ID] = u.Groups
	}
	client := storage.WebClient(o.ClientID, o.ClientSecret, o.RedirectURIs...)
	s := &store{
		Storage: storage.NewStorageWithClients(us, map[string]*storage.Client{o.ClientID: client}),
		users:   us,
		client:  &devClient{Client: client, postLogout: o.PostLogoutRedirectURIs, thin: o.ThinIDTokens},
		issuer:  issuer,
		bcl:     o.BackchannelLogoutURIs,
		thin:    o.ThinIDTokens,
	}
	router := exampleop.SetupServer(issuer, s, nil, false)
	handler := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/.well-known/openid-configuration" {
			s.discoveryHits.Add(1)
		}
		if s.tokenDown.Load() && r.URL.Path == "/oauth/token" {
			http.Error(w, "temporarily down", http.StatusServiceUnavailable)
			return
		}
		router.ServeHTTP(w, r)
	})
	s.accessTTL.Store(int64(o.AccessTokenLifetime))
	idp := &IdP{Issuer: issuer, store: s, srv: &http.Server{Handler: handler, ReadHeaderTimeout: 5 * time.Second}}
	go func() { _ = idp.srv.Serve(ln) }()
	return idp, nil
}

// Close stops the IdP.
func (i *IdP) Close() error {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	return i.srv.Shutdown(ctx)
}

// CodeGrants counts successful authorization-code grants.
func (i *IdP) CodeGrants() int64 { return i.store.codeGrants.Load() }

// RefreshGrants counts successful refresh-token grants.
func (i *IdP) RefreshGrants() int64 { return i.store.refreshGrants.Load() }

// RefusedRefreshGrants counts refresh grants refused (a reused or unknown refresh token).
func (i *IdP) RefusedRefreshGrants() int64 { return i.store.refusedRefresh.Load() }

// DiscoveryFetches counts requests for the discovery document.
func (i *IdP) DiscoveryFetches() int64 { return i.store.discoveryHits.Load() }

// LogoutToken signs a back-channel logout token with the IdP's own key.
func (i *IdP) LogoutToken(c LogoutClaims) (string, error) { return i.store.LogoutToken(c) }

// BackchannelLogoutsSent counts logout tokens the IdP delivered.
func (i *IdP) BackchannelLogoutsSent() int64 { return i.store.backchannelSent.Load() }

// SetRefreshDelay makes every refresh grant wait d before it is answered.
func (i *IdP) SetRefreshDelay(d time.Duration) { i.store.refreshDelay.Store(int64(d)) }

// SetAccessTokenLifetime changes the lifetime of the access tokens issued
// from now on.
func (i *IdP) SetAccessTokenLifetime(d time.Duration) { i.store.accessTTL.Store(int64(d)) }

// SetCodeDelay makes every authorization-code grant wait d before it is
// answered (a login callback held at the IdP).
func (i *IdP) SetCodeDelay(d time.Duration) { i.store.codeDelay.Store(int64(d)) }

// GrantsWaiting counts token grants (code or refresh) held by a delay now.
func (i *IdP) GrantsWaiting() int64 { return i.store.waiting.Load() }

// RevocationsReceived counts token revocations the IdP accepted (RFC 7009).
func (i *IdP) RevocationsReceived() int64 { return i.store.revocations.Load() }

// RevokeToken counts revocations, as RevocationsReceived reports them.
func (s *store) RevokeToken(ctx context.Context, token, userID, clientID string) *oidc.Error {
	err := s.Storage.RevokeToken(ctx, token, userID, clientID)
	if err == nil {
		s.revocations.Add(1)
	}
	return err
}

// SetTokenEndpointDown makes the token endpoint answer 503, as an IdP in
// an outage would, while on.
func (i *IdP) SetTokenEndpointDown(on bool) { i.store.tokenDown.Store(on) }

type store struct {
	*storage.Storage
	users     userStore
	accessTTL atomic.Int64 // time.Duration
	client    *devClient

	codeGrants, refreshGrants, refusedRefresh atomic.Int64
	discoveryHits                             atomic.Int64
	refreshDelay, codeDelay, waiting          atomic.Int64
	revocations                               atomic.Int64
	tokenDown                                 atomic.Bool
	issuer                                    string
	bcl                                       []string
	backchannelSent                           atomic.Int64
	thin                                      bool
	userinfoHits                              atomic.Int64
}

// TerminateSession ends the user's refresh tokens and, like an IdP with
// back-channel logout, tells every registered relying party.
func (s *store) TerminateSession(ctx context.Context, userID, clientID string) error {
	if err := s.Storage.TerminateSession(ctx, userID, clientID); err != nil {
		return err
	}
	for _, u := range s.bcl {
		tok, err := s.LogoutToken(LogoutClaims{Subject: userID})
		if err != nil {
			return err
		}
		resp, err := http.PostForm(u, url.Values{"logout_token": {tok}})
		if err == nil {
			resp.Body.Close()
			s.backchannelSent.Add(1)
		}
	}
	return nil
}

// LogoutClaims say what a logout token is about; zero fields are left out
// or defaulted (iat now, a fresh jti, the back-channel event).
type LogoutClaims struct {
	Subject, SID, JTI, Audience, Issuer, Nonce string
	IssuedAt                                   time.Time
	NoEvents                                   bool
}

// LogoutToken signs a back-channel logout token with the IdP's own key.
func (s *store) LogoutToken(c LogoutClaims) (string, error) {
	key, err := s.Storage.SigningKey(context.Background())
	if err != nil {
		return "", err
	}
	claims := map[string]any{"iss": s.issuer, "aud": s.client.GetID(), "iat": time.Now().Unix(), "jti": uuid.NewString()}
	if c.Issuer != "" {
		claims["iss"] = c.Issuer
	}
	if c.Audience != "" {
		claims["aud"] = c.Audience
	}
	if !c.IssuedAt.IsZero() {
		claims["iat"] = c.IssuedAt.Unix()
	}
	if c.JTI != "" {
		claims["jti"] = c.JTI
	}
	if c.Subject != "" {
		claims["sub"] = c.Subject
	}
	if c.SID != "" {
		claims["sid"] = c.SID
	}
	if c.Nonce != "" {
		claims["nonce"] = c.Nonce
	}
	if !c.NoEvents {
		claims["events"] = map[string]any{"http://schemas.openid.net/event/backchannel-logout": map[string]any{}}
	}
	payload, err := json.Marshal(claims)
	if err != nil {
		return "", err
	}
	signer, err := jose.NewSigner(jose.SigningKey{Algorithm: key.SignatureAlgorithm(), Key: jose.JSONWebKey{Key: key.Key(), KeyID: key.ID()}},
		(&jose.SignerOptions{}).WithType("logout+jwt"))
	if err != nil {
		return "", err
	}
	obj, err := signer.Sign(payload)
	if err != nil {
		return "", err
	}
	return obj.CompactSerialize()
}

func (s *store) CreateAccessAndRefreshTokens(ctx context.Context, req op.TokenRequest, current string) (string, string, time.Time, error) {
	delay := time.Duration(s.codeDelay.Load())
	if current != "" {
		delay = time.Duration(s.refreshDelay.Load())
	}
	if delay > 0 {
		// A client that goes away during the delay (a killed replica)
		// gets nothing, and its token is not spent.
		s.waiting.Add(1)
		select {
		case <-time.After(delay):
			s.waiting.Add(-1)
		case <-ctx.Done():
			s.waiting.Add(-1)
			return "", "", time.Time{}, ctx.Err()
		}
	}
	id, rt, _, err := s.Storage.CreateAccessAndRefreshTokens(ctx, req, current)
	switch {
	case err != nil && current != "":
		s.refusedRefresh.Add(1)
		return "", "", time.Time{}, oidc.ErrInvalidGrant().WithParent(err)
	case err != nil:
		return "", "", time.Time{}, err
	case current != "":
		s.refreshGrants.Add(1)
	default:
		s.codeGrants.Add(1)
	}
	return id, rt, time.Now().Add(time.Duration(s.accessTTL.Load())), nil
}

func (s *store) CreateAccessToken(ctx context.Context, req op.TokenRequest) (string, time.Time, error) {
	id, _, err := s.Storage.CreateAccessToken(ctx, req)
	if err == nil {
		s.codeGrants.Add(1)
	}
	return id, time.Now().Add(time.Duration(s.accessTTL.Load())), err
}

// TokenRequestByRefreshToken counts a reused refresh token as a refused grant.
func (s *store) TokenRequestByRefreshToken(ctx context.Context, rt string) (op.RefreshTokenRequest, error) {
	r, err := s.Storage.TokenRequestByRefreshToken(ctx, rt)
	if err != nil {
		s.refusedRefresh.Add(1)
	}
	return r, err
}

// SetUserinfoFromRequest adds the groups claim to ID tokens (unless they
// are thin).
func (s *store) SetUserinfoFromRequest(ctx context.Context, ui *oidc.UserInfo, token op.IDTokenRequest, scopes []string) error {
	if err := s.Storage.SetUserinfoFromRequest(ctx, ui, token, scopes); err != nil {
		return err
	}
	if g := s.users.groups[token.GetSubject()]; len(g) > 0 && !s.thin {
		ui.AppendClaims("groups", g)
	}
	return nil
}

// SetUserinfoFromToken answers the UserInfo endpoint, counting its calls;
// with thin ID tokens it carries the groups they leave out.
func (s *store) SetUserinfoFromToken(ctx context.Context, ui *oidc.UserInfo, tokenID, subject, origin string) error {
	s.userinfoHits.Add(1)
	if err := s.Storage.SetUserinfoFromToken(ctx, ui, tokenID, subject, origin); err != nil {
		return err
	}
	if g := s.users.groups[ui.Subject]; len(g) > 0 && s.thin {
		ui.AppendClaims("groups", g)
	}
	return nil
}

// UserInfoRequests counts calls of the UserInfo endpoint.
func (i *IdP) UserInfoRequests() int64 { return i.store.userinfoHits.Load() }

func (s *store) GetClientByClientID(ctx context.Context, id string) (op.Client, error) {
	if id == s.client.GetID() {
		return s.client, nil
	}
	return s.Storage.GetClientByClientID(ctx, id)
}

// Service account for the client credentials grant: its access tokens are
// JWTs with the IdP's signature, for the relying party's audience.
const (
	ServiceClientID     = "robot"
	ServiceClientSecret = "robot-secret"
)

type serviceClient struct{ *storage.Client }

func (serviceClient) AccessTokenType() op.AccessTokenType { return op.AccessTokenTypeJWT }
func (serviceClient) GrantTypes() []oidc.GrantType {
	return []oidc.GrantType{oidc.GrantTypeClientCredentials}
}

// ClientCredentials authenticates the service account.
func (s *store) ClientCredentials(ctx context.Context, id, secret string) (op.Client, error) {
	if id == ServiceClientID && secret == ServiceClientSecret {
		return serviceClient{storage.WebClient(ServiceClientID, ServiceClientSecret)}, nil
	}
	return s.Storage.ClientCredentials(ctx, id, secret)
}

// ClientCredentialsTokenRequest issues the service account's tokens for the
// relying party's audience.
func (s *store) ClientCredentialsTokenRequest(ctx context.Context, id string, scopes []string) (op.TokenRequest, error) {
	if id == ServiceClientID {
		return &oidc.JWTTokenRequest{Subject: id, Audience: []string{s.client.GetID(), id}, Scopes: scopes}, nil
	}
	return s.Storage.ClientCredentialsTokenRequest(ctx, id, scopes)
}

// devClient puts the user's claims in the ID token, as most IdPs do
// (unless thin), and registers post-logout redirect URIs.
type devClient struct {
	*storage.Client
	postLogout []string
	thin       bool
}

func (c *devClient) IDTokenUserinfoClaimsAssertion() bool { return !c.thin }
func (c *devClient) PostLogoutRedirectURIs() []string     { return c.postLogout }

type userStore struct {
	byID   map[string]*storage.User
	groups map[string][]string
}

func (u userStore) GetUserByID(id string) *storage.User { return u.byID[id] }
func (u userStore) GetUserByUsername(name string) *storage.User {
	for _, su := range u.byID {
		if su.Username == name {
			return su
		}
	}
	return nil
}
func (u userStore) ExampleClientID() string { return "" }

// RevokeRefreshTokens ends every refresh token of a user at the IdP, as an
// administrator's "log out everywhere" would: the next refresh gets invalid_grant.
func (i *IdP) RevokeRefreshTokens(userID string) error {
	return i.store.TerminateSession(context.Background(), userID, i.store.client.GetID())
}

package caddyoidc

import (
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"

	"github.com/caddy-oidc/caddy-oidc/cache"
	"github.com/caddy-oidc/caddy-oidc/internal/provider"
	"github.com/caddy-oidc/caddy-oidc/session"
)

// loginAttemptTTL bounds how long a user may take at the IdP's login page.
const loginAttemptTTL = 10 * time.Minute

// maxLoginAttempts bounds the login-attempt cookies one browser holds (one
// per tab logging in at once), so they cannot swell the Cookie header.
const maxLoginAttempts = 8

// attempt is one login in progress, sealed in its own short-lived cookie so
// that several tabs can log in at once.
type attempt struct {
	State    string `json:"s"`
	Nonce    string `json:"n"`
	Verifier string `json:"v"`
	ReturnTo string `json:"r"`
	Created  int64  `json:"t"`
	// ACR and MaxAge are what the login asked of the IdP (the route's
	// acr_values and max_age in seconds): the callback checks the ID token
	// against them, whichever route serves it.
	ACR    []string `json:"acr,omitempty"`
	MaxAge int64    `json:"ma,omitempty"`
	// FormPost says the IdP answers by POST (response_mode form_post).
	FormPost bool `json:"fp,omitempty"`
	// Post says a form POST was kept for this attempt (preserve_post).
	Post bool `json:"p,omitempty"`
}

// isAPIRequest tells requests that cannot follow a login redirect: XHR and
// fetch calls, JSON clients, and anything that is not a top-level GET.
func isAPIRequest(r *http.Request) bool {
	if r.Method != http.MethodGet && r.Method != http.MethodHead {
		return true
	}
	if strings.EqualFold(r.Header.Get("X-Requested-With"), "XMLHttpRequest") {
		return true
	}
	if m := r.Header.Get("Sec-Fetch-Mode"); m != "" && m != "navigate" {
		return true
	}
	accept := r.Header.Get("Accept")
	return strings.Contains(accept, "application/json") && !strings.Contains(accept, "text/html")
}

// challenge answers a request that has no valid session: API clients get
// 401, browsers are sent to the IdP (with their form POST kept, when
// preserve_post allows).
func (h *Handler) challenge(w http.ResponseWriter, r *http.Request, oauthErr string) error {
	if isAPIRequest(r) && !h.preservable(r) {
		w.Header().Set("Cache-Control", "no-store")
		if h.Bearer != nil {
			// Every scheme the route accepts tokens in (RFC 9449 §7.1).
			h.tokenChallenges(w, false, oauthErr, "")
			return caddyhttp.Error(http.StatusUnauthorized, errors.New("no valid session"))
		}
		v := `Bearer realm="` + h.realm() + `"`
		if oauthErr != "" {
			v += `, error="` + oauthErr + `"`
		}
		w.Header().Set("WWW-Authenticate", v)
		return caddyhttp.Error(http.StatusUnauthorized, errors.New("no valid session"))
	}
	return h.login(w, r, false)
}

// login sends the browser to the IdP, after keeping its form POST when
// preserve_post allows; reauth asks the IdP to authenticate the user again.
func (h *Handler) login(w http.ResponseWriter, r *http.Request, reauth bool) error {
	var post []formField
	if h.preservable(r) {
		var err error
		if post, err = readPreservedPost(w, r, h.Login.PreservePost); err != nil {
			return err
		}
	}
	return h.startLogin(w, r, reauth, post)
}

func (h *Handler) realm() string { return strings.ReplaceAll(h.Issuer, `"`, "") }

func randomToken(n int) string {
	b := make([]byte, n)
	rand.Read(b)
	return base64.RawURLEncoding.EncodeToString(b)
}

// stateCookieName derives the attempt cookie's name from its state value,
// which is how the callback finds it.
func (h *Handler) stateCookieName(r *http.Request, state string) string {
	sum := sha256.Sum256([]byte(state))
	return h.sessions.CookieName(r) + "_state_" + hex.EncodeToString(sum[:6])
}

// redirectURL is the absolute redirect_uri for this request.
func (h *Handler) redirectURL(r *http.Request) string {
	if h.absRedirect {
		return h.Login.RedirectURI
	}
	return h.scheme(r) + "://" + r.Host + h.Login.RedirectURI
}

// startLogin sends the browser to the IdP's authorization endpoint with a
// fresh state, nonce and PKCE S256 challenge, and this route's acr_values
// and max_age. A kept form POST is stored under the attempt.
func (h *Handler) startLogin(w http.ResponseWriter, r *http.Request, reauth bool, post []formField) error {
	d, err := h.rp.Discovery(r.Context())
	if err != nil {
		w.Header().Set("Retry-After", "10")
		return caddyhttp.Error(http.StatusServiceUnavailable, err)
	}
	a := attempt{
		State:    randomToken(32),
		Nonce:    randomToken(32),
		Verifier: randomToken(32),
		ReturnTo: returnTo(r),
		Created:  time.Now().Unix(),
		ACR:      h.Login.ACRValues,
		MaxAge:   h.Login.maxAgeSeconds(),
		FormPost: postedResponse(h.Login.ResponseMode),
	}
	if post != nil {
		if err := h.keepPost(r.Context(), a.State, post); errors.Is(err, errPostTooLarge) {
			return caddyhttp.Error(http.StatusRequestEntityTooLarge, err)
		} else if err != nil {
			return caddyhttp.Error(http.StatusInternalServerError, err)
		}
		a.Post = true
	}
	pt, _ := json.Marshal(a)
	name := h.stateCookieName(r, a.State)
	h.pruneAttempts(w, r)
	// Lax whatever cookie_samesite says: the IdP's redirect back is a
	// top-level navigation, and Strict would not carry the cookie on it.
	session.SetCookie(w, name, h.codec.Seal(h.bind(purposeAttempt+name), pt), session.CookieOptions{Secure: h.secure(r), MaxAge: int(loginAttemptTTL / time.Second)})

	challenge := sha256.Sum256([]byte(a.Verifier))
	q := h.authorizationParams(r.URL.Query().Get("login_hint"))
	q.Set("response_type", "code")
	q.Set("client_id", h.Client.ID)
	q.Set("redirect_uri", h.redirectURL(r))
	q.Set("state", a.State)
	q.Set("nonce", a.Nonce)
	q.Set("code_challenge", base64.RawURLEncoding.EncodeToString(challenge[:]))
	q.Set("code_challenge_method", "S256")
	if len(a.ACR) > 0 {
		q.Set("acr_values", strings.Join(a.ACR, " "))
	}
	if a.MaxAge > 0 {
		q.Set("max_age", strconv.FormatInt(a.MaxAge, 10))
	}
	if reauth {
		// max_age alone may be met by an IdP session of the right age that
		// the route has just found too old: ask for a fresh login.
		q.Set("prompt", withPrompt(q.Get("prompt"), "login"))
	}
	if m := h.Login.ResponseMode; m != "" && m != responseModeQuery {
		q.Set("response_mode", m)
	}
	// A pushed request costs an IdP call that anyone can cause: bounded.
	opts := provider.AuthRequestOptions{PAR: h.pushedRequests(), RequestObject: h.Login.RequestObject}
	if opts.PAR || d.RequirePushedAuthorizationRequests {
		if !h.pushes.acquire(clientKey(r.Context()), time.Now()) {
			w.Header().Set("Retry-After", "2")
			return caddyhttp.Error(http.StatusServiceUnavailable, errors.New("login: too many pushed authorization requests at once"))
		}
		defer h.pushes.release()
	}
	target, err := h.rp.AuthorizationURL(r.Context(), q, opts)
	if err != nil {
		if errors.Is(err, provider.ErrUnavailable) {
			w.Header().Set("Retry-After", "10")
			return caddyhttp.Error(http.StatusServiceUnavailable, fmt.Errorf("login: %w", err))
		}
		return caddyhttp.Error(http.StatusBadGateway, fmt.Errorf("login: %w", err))
	}
	w.Header().Set("Cache-Control", "no-store")
	status := http.StatusFound
	if r.Method != http.MethodGet && r.Method != http.MethodHead {
		// Says plainly what browsers do with a 302 after a POST: GET.
		status = http.StatusSeeOther
	}
	http.Redirect(w, r, target, status)
	return nil
}

// pruneAttempts expires old attempt cookies once a browser holds too many.
func (h *Handler) pruneAttempts(w http.ResponseWriter, r *http.Request) {
	prefix := h.sessions.CookieName(r) + "_state_"
	var names []string
	for _, c := range r.Cookies() {
		if strings.HasPrefix(c.Name, prefix) {
			names = append(names, c.Name)
		}
	}
	if len(names) < maxLoginAttempts {
		return
	}
	for _, n := range names {
		session.Expire(w, n, h.secure(r))
	}
}

// maxReturnTo bounds the return-to URL kept in an attempt cookie: with up
// to maxLoginAttempts of them, the Cookie header stays under the 8 KB that
// common proxies accept.
const maxReturnTo = 512

// returnTo is where the user goes after login: this request's URI, when it
// is unambiguously a path on this site; without its query when that is too
// long, and the home page when even the path is.
func returnTo(r *http.Request) string {
	if strings.Contains(r.URL.Path, "\\") || strings.HasPrefix(r.URL.Path, "//") {
		return "/"
	}
	if u := r.URL.RequestURI(); len(u) <= maxReturnTo {
		return safeReturnTo(u)
	}
	return safeReturnTo(r.URL.EscapedPath())
}

// safeReturnTo keeps only same-site targets: a local absolute path. Anything
// a browser could read as another host (//evil, /\evil, schemes) becomes "/".
func safeReturnTo(s string) string {
	if s == "" || s[0] != '/' || len(s) > maxReturnTo {
		return "/"
	}
	if len(s) > 1 && (s[1] == '/' || s[1] == '\\') {
		return "/"
	}
	if strings.ContainsAny(s, "\\\r\n\t\x00") {
		return "/"
	}
	u, err := url.Parse(s)
	if err != nil || u.IsAbs() || u.Host != "" {
		return "/"
	}
	return s
}

// serveCallback completes a login: it checks the attempt, the RFC 9207 iss
// parameter and the ID token, then sets the session cookie and sends the
// user to the page first asked for.
func (h *Handler) serveCallback(w http.ResponseWriter, r *http.Request) error {
	err := h.callback(w, r)
	if err != nil {
		// Why a login failed (state, iss, code exchange, which ID token
		// check): what an operator needs when a user cannot get in.
		if c := h.logger.Check(zapcore.DebugLevel, "login failed at the callback"); c != nil {
			status := http.StatusInternalServerError
			if he, ok := err.(caddyhttp.HandlerError); ok {
				status = he.StatusCode
			}
			c.Write(zap.Int("status", status), zap.Error(err))
		}
	}
	return err
}

// callback completes a login: it checks the response against its login
// attempt, redeems the code, verifies the ID token and starts the session.
func (h *Handler) callback(w http.ResponseWriter, r *http.Request) error {
	w.Header().Set("Cache-Control", "no-store")
	outer, err := h.callbackParams(w, r)
	if err != nil {
		return err
	}
	q := outer
	if signedResponse(h.Login.ResponseMode) {
		// JARM: the whole response is one JWT the IdP signed for this
		// client; nothing outside it is read.
		if q, err = h.rp.VerifyAuthorizationResponse(r.Context(), outer.Get("response")); err != nil {
			if errors.Is(err, provider.ErrUnavailable) {
				w.Header().Set("Retry-After", "10")
				return caddyhttp.Error(http.StatusServiceUnavailable, fmt.Errorf("callback: %w", err))
			}
			return caddyhttp.Error(http.StatusBadRequest, fmt.Errorf("callback: %w", err))
		}
	}
	// The code may travel on to the next page in a Referer header.
	w.Header().Set("Referrer-Policy", "no-referrer")
	state := q.Get("state")
	if state == "" {
		return caddyhttp.Error(http.StatusBadRequest, errors.New("callback: missing state"))
	}
	name := h.stateCookieName(r, state)
	c, err := r.Cookie(name)
	if err != nil {
		if r.Method == http.MethodPost && !outer.Has(repostField) {
			// The IdP's cross-site POST carries no SameSite=Lax cookie:
			// post it again from this origin, which does.
			return h.repostCallback(w, outer)
		}
		return caddyhttp.Error(http.StatusBadRequest, errors.New("callback: unknown, used or expired login attempt"))
	}
	// One use only: the attempt cookie goes whatever happens next.
	session.Expire(w, name, h.secure(r))
	pt, _, err := h.codec.Open(h.bind(purposeAttempt+name), c.Value)
	var a attempt
	if err == nil {
		err = json.Unmarshal(pt, &a)
	}
	if err != nil || subtle.ConstantTimeCompare([]byte(a.State), []byte(state)) != 1 {
		return caddyhttp.Error(http.StatusBadRequest, errors.New("callback: state does not match the login attempt"))
	}
	now := time.Now()
	if now.Sub(time.Unix(a.Created, 0)) > loginAttemptTTL {
		return caddyhttp.Error(http.StatusBadRequest, errors.New("callback: login attempt expired"))
	}
	if a.FormPost != (r.Method == http.MethodPost) {
		return caddyhttp.Error(http.StatusBadRequest, errors.New("callback: the response does not come in the response_mode the login asked for; give every oidc block of this redirect_uri the same response_mode"))
	}
	if e := q.Get("error"); e != "" {
		status := http.StatusBadRequest
		if e == "access_denied" || e == "login_required" || e == "consent_required" || e == "interaction_required" {
			status = http.StatusForbidden
		}
		return caddyhttp.Error(status, fmt.Errorf("callback: the IdP answered %q: %.200s", e, q.Get("error_description")))
	}
	d, err := h.rp.Discovery(r.Context())
	if err != nil {
		w.Header().Set("Retry-After", "10")
		return caddyhttp.Error(http.StatusServiceUnavailable, err)
	}
	// RFC 9207: a mix-up attack shows as a response from another issuer.
	// FAPI 2.0 requires it in every response, whatever discovery says.
	if iss, ok := q["iss"]; ok || d.AuthorizationResponseIssParameter || h.fapi2() {
		if !ok || len(iss) != 1 || iss[0] != h.Issuer {
			return caddyhttp.Error(http.StatusBadRequest, errors.New("callback: iss parameter does not match the issuer"))
		}
	}
	code := q.Get("code")
	if code == "" {
		return caddyhttp.Error(http.StatusBadRequest, errors.New("callback: missing code"))
	}
	// The browser drops the attempt cookie, but a copy could be replayed
	// with other codes: each attempt reaches the token endpoint once, on
	// every replica.
	stateSum := sha256.Sum256([]byte(a.State))
	first, err := h.app.addOnce(r.Context(), cache.AttemptKey(h.ns, hex.EncodeToString(stateSum[:16])), loginAttemptTTL)
	if err != nil {
		w.Header().Set("Retry-After", "5")
		return caddyhttp.Error(http.StatusServiceUnavailable, fmt.Errorf("callback: %w", err))
	}
	if !first {
		return caddyhttp.Error(http.StatusBadRequest, errors.New("callback: login attempt already used"))
	}
	// Anyone can start logins and send codes: a bounded number of code
	// exchanges run at once, so a flood cannot drive the token endpoint.
	select {
	case h.exchanges <- struct{}{}:
		defer func() { <-h.exchanges }()
	case <-time.After(time.Second):
		w.Header().Set("Retry-After", "2")
		return caddyhttp.Error(http.StatusServiceUnavailable, errors.New("callback: too many logins completing at once"))
	case <-r.Context().Done():
		return caddyhttp.Error(http.StatusServiceUnavailable, r.Context().Err())
	}
	tr, err := h.rp.Exchange(r.Context(), code, h.redirectURL(r), a.Verifier)
	if err != nil {
		if errors.Is(err, provider.ErrUnavailable) {
			w.Header().Set("Retry-After", "10")
			return caddyhttp.Error(http.StatusBadGateway, err)
		}
		return caddyhttp.Error(http.StatusBadRequest, fmt.Errorf("callback: code exchange: %w", err))
	}
	if tr.IDToken == "" {
		return caddyhttp.Error(http.StatusBadGateway, errors.New("callback: the token response has no id_token (is the openid scope allowed for this client?)"))
	}
	claims, err := h.rp.VerifyLoginIDToken(r.Context(), tr.IDToken, a.Nonce)
	if err != nil {
		if errors.Is(err, provider.ErrUnavailable) {
			w.Header().Set("Retry-After", "10")
			return caddyhttp.Error(http.StatusServiceUnavailable, err)
		}
		return caddyhttp.Error(http.StatusUnauthorized, fmt.Errorf("callback: %w", err))
	}
	if err := a.unmetBy(claims, now, time.Duration(h.ClockSkew)); err != nil {
		// A 403, not a new login: an IdP that cannot step up would loop.
		h.noteStepUpRefused(err, claims)
		return caddyhttp.Error(http.StatusForbidden, fmt.Errorf("callback: %w", err))
	}
	var fromUserInfo []string
	if fetch, why := h.wantsUserInfo(claims, nil); fetch {
		sub, _ := claims["sub"].(string)
		if c := h.logger.Check(zapcore.DebugLevel, "fetching userinfo at login"); c != nil {
			c.Write(zap.String("sub", sub), zap.String("why", why))
		}
		extra, err := h.rp.UserInfo(r.Context(), tr.AccessToken, sub)
		switch {
		case errors.Is(err, provider.ErrInvalidToken):
			return caddyhttp.Error(http.StatusUnauthorized, fmt.Errorf("callback: %w", err))
		case err != nil:
			h.warned.userinfoFailed.Warn(h.logger, "userinfo unavailable; the session has the ID token's claims only", zap.Error(err))
		}
		for k, v := range extra {
			// The login's own claims (acr, auth_time...) are the ID token's
			// word alone: step-up checks them.
			if _, has := claims[k]; !has && !slices.Contains(session.ProtocolClaims, k) && !slices.Contains(sessionClaims, k) && k != "email_verified" {
				claims[k] = v
				fromUserInfo = append(fromUserInfo, k)
				if k == "email" {
					// A UserInfo email is verified only by UserInfo's word.
					setVerified(claims, extra)
				}
			}
		}
	}
	if names, ok := claims["_claim_names"].(map[string]any); ok && names[h.identity.groupsClaim] != nil {
		// Entra ID's groups overage: too many groups to put in the token.
		h.logger.Warn("the IdP left the groups out of the ID token (Entra ID groups overage); allow_groups cannot see them: emit only groups assigned to the application, or use app roles",
			zap.String("sub", claimString(claims["sub"])))
	}
	if tr.RefreshToken == "" && slices.Contains(h.Login.Scopes, "offline_access") && h.warned.noRefreshToken.CompareAndSwap(false, true) {
		h.logger.Warn("offline_access was requested but the IdP sent no refresh token: sessions end when their access token expires; allow the refresh_token grant (and offline_access) for this client at the IdP, and if it needs consent for offline access set auth_param prompt consent")
	}
	// A new login replaces the browser's previous session: a cache-kept one
	// is deleted rather than left to expire.
	if _, ok := h.sessions.CacheID(r); ok {
		h.sessions.Clear(w, r, nil)
	}
	sess := session.New(claims, tr.IDToken, tr.AccessToken, tr.RefreshToken, tr.Expiry(now), now)
	sess.FromUserInfo = fromUserInfo
	if len(h.dpopKeys) > 0 {
		sess.DPoPKey = h.dpopKeys[0].Thumbprint()
	}
	if err := h.sessions.Save(w, r, sess, now); err != nil {
		return caddyhttp.Error(http.StatusInternalServerError, err)
	}
	sessionsCreated.Inc()
	h.logger.Info("login", zap.String("sub", sess.Subject()), zap.Bool("refresh_token", tr.RefreshToken != ""))
	if a.Post {
		return h.replayPost(w, r, &a)
	}
	http.Redirect(w, r, safeReturnTo(a.ReturnTo), http.StatusFound)
	return nil
}

// redactCode removes the authorization code from the request that Caddy's
// access log prints. (Caddy's error log restores the original URI; a code
// there is useless without the PKCE verifier, which never leaves the
// browser's encrypted attempt cookie.)
func redactCode(r *http.Request, q url.Values) {
	if !q.Has("code") {
		return
	}
	red := make(url.Values, len(q))
	for k, v := range q {
		red[k] = v
	}
	red.Set("code", "REDACTED")
	r.URL.RawQuery = red.Encode()
	r.RequestURI = r.URL.RequestURI()
}

// reservedAuthParams are the protocol's own: auth_params cannot set them.
var reservedAuthParams = []string{"response_type", "client_id", "redirect_uri", "scope", "state", "nonce",
	"code_challenge", "code_challenge_method", "response_mode", "request", "request_uri"}

// googleIssuer is Google's: it wants access_type=offline (and consent)
// instead of the offline_access scope for a refresh token.
const googleIssuer = "https://accounts.google.com"

// authorizationParams are the scope and the extra parameters of the
// authorization request: auth_params, a login_hint passed through from the
// request, and the provider quirks that need them.
func (h *Handler) authorizationParams(loginHint string) url.Values {
	q := url.Values{}
	for k, v := range h.Login.AuthParams {
		q.Set(k, v)
	}
	if loginHint != "" && len(loginHint) <= 256 {
		q.Set("login_hint", loginHint)
	}
	scopes := h.Login.Scopes
	if slices.Contains(scopes, "offline_access") && !q.Has("prompt") {
		// OpenID Connect Core §11: offline access needs consent, and
		// certified IdPs issue no refresh token without prompt=consent.
		q.Set("prompt", "consent")
	}
	if strings.TrimSuffix(h.Issuer, "/") == googleIssuer && slices.Contains(scopes, "offline_access") {
		scopes = slices.DeleteFunc(slices.Clone(scopes), func(s string) bool { return s == "offline_access" })
		q.Set("access_type", "offline")
		if !q.Has("prompt") {
			q.Set("prompt", "consent")
		}
	}
	if q.Get("prompt") == "" {
		// auth_param prompt "" asks for no prompt at all, even with
		// offline_access (IdPs that issue refresh tokens without consent,
		// such as Entra ID and Keycloak, would show a consent page).
		q.Del("prompt")
	}
	q.Set("scope", strings.Join(scopes, " "))
	return q
}

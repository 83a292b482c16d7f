package caddyoidc

import (
	"context"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"go.uber.org/zap"

	"github.com/caddy-oidc/caddy-oidc/cache"
	"github.com/caddy-oidc/caddy-oidc/internal/lograte"
	"github.com/caddy-oidc/caddy-oidc/internal/provider"
	"github.com/caddy-oidc/caddy-oidc/session"
)

// Bounds of the bearer-token result cache: entries per route, and how long
// a result is trusted whatever the token's own exp says.
const (
	bearerCacheSize   = 10_000
	bearerCacheMaxTTL = 10 * time.Minute
)

// bearerToken is the access token of an `Authorization: Bearer` or
// `Authorization: DPoP` header (the scheme is serveBearer's to check).
func bearerToken(r *http.Request) (string, bool) {
	token, _, ok := accessToken(r)
	return token, ok
}

// accessToken parses the Authorization header: the token, and whether it
// came under the DPoP scheme (RFC 9449 §7.1) rather than Bearer (RFC 6750).
func accessToken(r *http.Request) (token string, dpop, ok bool) {
	scheme, rest, found := strings.Cut(r.Header.Get("Authorization"), " ")
	if !found {
		return "", false, false
	}
	switch {
	case strings.EqualFold(scheme, "Bearer"):
	case strings.EqualFold(scheme, "DPoP"):
		dpop = true
	default:
		return "", false, false
	}
	token = strings.TrimSpace(rest)
	return token, dpop, token != ""
}

// bearerCache remembers verified tokens by hash until their expiry.
type bearerCache struct {
	mu  sync.RWMutex
	m   map[[32]byte]bearerEntry
	max int
}

type bearerEntry struct {
	claims  map[string]any
	expires time.Time
}

func newBearerCache(max int) *bearerCache {
	return &bearerCache{m: make(map[[32]byte]bearerEntry), max: max}
}

func (c *bearerCache) get(k [32]byte, now time.Time) (map[string]any, bool) {
	c.mu.RLock()
	e, ok := c.m[k]
	c.mu.RUnlock()
	if !ok || now.After(e.expires) {
		return nil, false
	}
	return e.claims, true
}

func (c *bearerCache) put(k [32]byte, e bearerEntry) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if len(c.m) >= c.max {
		for old := range c.m {
			delete(c.m, old)
			break
		}
	}
	c.m[k] = e
}

// Bounds of opaque-token introspection, so random tokens cannot drive the
// IdP's rate limit against us: refusals are remembered briefly, identical
// calls in flight are shared, and few run at once per route.
const (
	introspectionNegativeTTL = 30 * time.Second
	introspectionConcurrency = 8
	// introspectionRate and introspectionBurst bound the introspections of
	// tokens this route has not seen (per second): beyond them a new token
	// gets 503 at once, and the IdP's rate limit is never ours to trip.
	introspectionRate  = 20
	introspectionBurst = 40
	// Per client address (Caddy's client_ip, trusted proxies applied), so
	// one source flooding random tokens does not use up the route's rate.
	introspectionClientRate  = 2
	introspectionClientBurst = 5
	introspectionClients     = 10_000
)

// tokenBucket allows rate events a second, burst at once. Not safe for
// concurrent use: callers hold a lock.
type tokenBucket struct {
	rate, burst float64
	tokens      float64
	last        time.Time
}

func (b *tokenBucket) take(now time.Time) bool {
	if !b.has(now) {
		return false
	}
	b.tokens--
	return true
}

// has refills the bucket and reports whether one event may pass.
func (b *tokenBucket) has(now time.Time) bool {
	if b.last.IsZero() {
		b.tokens = b.burst
	} else {
		b.tokens = min(b.burst, b.tokens+now.Sub(b.last).Seconds()*b.rate)
	}
	b.last = now
	return b.tokens >= 1
}

// serveBearer authenticates an API request by its access token: a Bearer
// token, or a DPoP-bound one with its proof (RFC 9449).
func (h *Handler) serveBearer(w http.ResponseWriter, r *http.Request, next caddyhttp.Handler, token string) error {
	_, dpop, _ := accessToken(r)
	var proof string
	if dpop {
		// Checked before the token costs a verification or an introspection.
		p, err := singleDPoPProof(r)
		if err != nil {
			return h.refuseToken(w, true, "invalid_dpop_proof", "the request needs exactly one DPoP proof header", err)
		}
		proof = p
	} else if h.Bearer.DPoP == DPoPRequired {
		return h.refuseToken(w, false, "invalid_token", "this resource accepts DPoP-bound tokens only (Authorization: DPoP)", errors.New("a bearer token where bearer_dpop requires DPoP"))
	}
	now := time.Now()
	claims, err := h.tokens.verify(r.Context(), token, now)
	if err != nil {
		if errors.Is(err, provider.ErrUnavailable) || errors.Is(err, cache.ErrUnavailable) || errors.Is(err, errIntrospectionBusy) {
			w.Header().Set("Retry-After", "10")
			return caddyhttp.Error(http.StatusServiceUnavailable, err)
		}
		return h.refuseToken(w, dpop, "invalid_token", "the access token is invalid or expired", err)
	}
	// Only the token's verification is cached: a bound token's proof is
	// checked on every request, and a bound token is never a bearer one.
	jkt := provider.ConfirmationJKT(claims)
	switch {
	case dpop && jkt == "":
		return h.refuseToken(w, true, "invalid_token", "the access token is not DPoP-bound: send it as a Bearer token", errors.New("a token without cnf.jkt under the DPoP scheme"))
	case dpop:
		if err := h.proofs.check(r, proof, token, jkt, now); err != nil {
			if errors.Is(err, cache.ErrUnavailable) {
				w.Header().Set("Retry-After", "10")
				return caddyhttp.Error(http.StatusServiceUnavailable, err)
			}
			return h.refuseToken(w, true, "invalid_dpop_proof", "the DPoP proof is invalid, expired or replayed", err)
		}
	case jkt != "":
		return h.refuseToken(w, false, "invalid_token", "the access token is DPoP-bound: send it as Authorization: DPoP with a proof", errors.New("a DPoP-bound token (cnf.jkt) under the Bearer scheme"))
	}
	// A certificate-bound token (RFC 8705 §3) is used only over the TLS
	// connection whose client certificate it names.
	if x5t := certificateThumbprint(claims); x5t != "" && !presentsCertificate(r, x5t) {
		return h.refuseToken(w, dpop, "invalid_token", "the access token is bound to a client certificate this connection did not present", errors.New("a certificate-bound token (cnf.x5t#S256) without its certificate"))
	}
	if h.bearerRevoked(claims) {
		return h.refuseToken(w, dpop, "invalid_token", "the access token is invalid or expired", errors.New("the access token's user or IdP session was logged out"))
	}
	if !h.Allow.allows(claims) {
		h.tokenChallenges(w, dpop, "insufficient_scope", "")
		return caddyhttp.Error(http.StatusForbidden, fmt.Errorf("bearer %q is not allowed by the allow rules", claimString(claims["sub"])))
	}
	tokens := &session.Session{AccessToken: token, DPoPKey: jkt}
	if exp, ok := claims["exp"].(float64); ok {
		tokens.AccessExpiry = int64(exp)
	}
	h.identity.set(r, claims, tokens)
	h.sessions.StripCookies(r)
	return next.ServeHTTP(w, r)
}

// refuseToken answers 401 to a token request; the error goes with the
// challenge of the scheme the client used (dpop) or must use.
func (h *Handler) refuseToken(w http.ResponseWriter, dpop bool, code, description string, err error) error {
	h.tokenChallenges(w, dpop, code, description)
	w.Header().Set("Cache-Control", "no-store")
	return caddyhttp.Error(http.StatusUnauthorized, err)
}

// certificateThumbprint is a token's cnf.x5t#S256 (RFC 8705 §3.1), "" if
// it has none.
func certificateThumbprint(claims map[string]any) string {
	cnf, _ := claims["cnf"].(map[string]any)
	x5t, _ := cnf["x5t#S256"].(string)
	return x5t
}

// presentsCertificate reports whether r's TLS connection presented the
// client certificate whose SHA-256 thumbprint is x5t.
func presentsCertificate(r *http.Request, x5t string) bool {
	if r.TLS == nil || len(r.TLS.PeerCertificates) == 0 {
		return false
	}
	sum := sha256.Sum256(r.TLS.PeerCertificates[0].Raw)
	return subtle.ConstantTimeCompare([]byte(base64.RawURLEncoding.EncodeToString(sum[:])), []byte(x5t)) == 1
}

// tokenChallenges sets a WWW-Authenticate challenge for each scheme the
// route accepts (RFC 6750 §3, RFC 9449 §7.1): Bearer unless bearer_dpop
// is required, and DPoP with its algorithms. The error (if code is set)
// goes with the DPoP challenge when the client used DPoP or must.
func (h *Handler) tokenChallenges(w http.ResponseWriter, dpop bool, code, description string) {
	var params string
	if code != "" {
		params = `, error="` + code + `"`
		if description != "" {
			params += `, error_description="` + description + `"`
		}
	}
	realm := `realm="` + h.realm() + `"`
	required := h.Bearer != nil && h.Bearer.DPoP == DPoPRequired
	if !required {
		v := "Bearer " + realm
		if !dpop {
			v += params
		}
		w.Header().Add("WWW-Authenticate", v)
	}
	v := "DPoP " + realm + `, algs="` + dpopAlgs + `"`
	if dpop || required {
		v += params
	}
	w.Header().Add("WWW-Authenticate", v)
}

// bearerRevoked applies the revocation set to an access token: a logout
// (back-channel by sid or sub) ends the tokens issued before it too.
func (h *Handler) bearerRevoked(claims map[string]any) bool {
	// A token that does not say when it was issued may predate any logout.
	var issued int64
	if iat, ok := claims["iat"].(float64); ok {
		issued = int64(iat)
	}
	return h.revs.ended(h.Issuer, &session.Session{Claims: claims, Created: issued})
}

// newBearerVerifiers builds the route's access-token verifier and DPoP
// proof checker.
func (h *Handler) newBearerVerifiers() (*tokenVerifier, *proofChecker) {
	// Introspection results are shared only by routes of the same issuer,
	// client and accepted audiences.
	auds := slices.Sorted(slices.Values(h.bearerAudience()))
	audSum := sha256.Sum256([]byte(strings.Join(auds, "\x00")))
	tv := &tokenVerifier{rp: h.rp, clientID: h.Client.ID, verified: newBearerCache(bearerCacheSize),
		introspections: newIntrospector(), ns: h.ns + ":" + hex.EncodeToString(audSum[:8]),
		shared: h.shared, codec: h.codec, bind: h.bind}
	pc := &proofChecker{ns: h.ns, origins: h.Bearer.DPoPOrigins, scheme: h.scheme,
		skew: time.Duration(h.ClockSkew), app: h.app, logger: h.logger}
	return tv, pc
}

// tokenVerifier verifies a route's access tokens: JWTs against the IdP's
// keys, opaque ones by introspection. Verified claims are cached in the
// process by the token's hash until its expiry (10 min at most), and
// introspection results are shared between replicas through the cache.
type tokenVerifier struct {
	rp             *provider.RelyingParty
	clientID       string
	verified       *bearerCache
	introspections *introspector
	// ns names this route's introspection results: issuer, client and the
	// accepted audiences.
	ns     string
	shared cache.Store
	codec  *session.Codec
	bind   func(purpose string) string
}

// verify returns the claims of token, from the cache or verified now.
func (v *tokenVerifier) verify(ctx context.Context, token string, now time.Time) (map[string]any, error) {
	sum := sha256.Sum256([]byte(token))
	if claims, ok := v.verified.get(sum, now); ok {
		return claims, nil
	}
	ac, err := v.check(ctx, token, sum)
	if err != nil {
		return nil, err
	}
	expires := now.Add(bearerCacheMaxTTL)
	if !ac.Expiry.IsZero() && ac.Expiry.Before(expires) {
		expires = ac.Expiry
	}
	v.verified.put(sum, bearerEntry{claims: ac.Claims, expires: expires})
	return ac.Claims, nil
}

// check verifies a JWT locally, or introspects an opaque token;
// introspection results are shared through the cache (sealed, keyed by the
// route, the accepted audiences and the token's hash) so replicas ask the
// IdP once per token.
func (v *tokenVerifier) check(ctx context.Context, token string, sum [32]byte) (*provider.AccessClaims, error) {
	if provider.IsJWT(token) {
		ac, err := v.rp.VerifyAccessToken(ctx, token)
		if err == nil && looksLikeIDToken(ac.Claims, v.clientID) {
			return nil, fmt.Errorf("the token is for this client and grants no scope: an ID token, not an access token: %w", provider.ErrInvalidToken)
		}
		return ac, err
	}
	if v.introspections.refused(sum, time.Now()) {
		return nil, fmt.Errorf("the IdP said recently that this token is not active: %w", provider.ErrInvalidToken)
	}
	key := cache.IntrospectionKey(v.ns, hex.EncodeToString(sum[:]))
	aad := v.bind(purposeIntrospection + key)
	if b, found, err := v.shared.Get(ctx, key); err == nil && found {
		if pt, _, err := v.codec.Open(aad, string(b)); err == nil {
			var ac introspected
			if json.Unmarshal(pt, &ac) == nil && time.Now().Before(time.Unix(ac.Exp, 0)) {
				return &provider.AccessClaims{Claims: ac.Claims, Expiry: time.Unix(ac.Exp, 0)}, nil
			}
		}
	}
	ac, err := v.introspections.do(ctx, sum, func(ctx context.Context) (*provider.AccessClaims, error) {
		return v.rp.Introspect(ctx, token)
	})
	if err != nil {
		if errors.Is(err, provider.ErrInvalidToken) {
			v.introspections.refuse(sum, time.Now())
		}
		return nil, err
	}
	v.introspections.vouch(ctx)
	exp := time.Now().Add(bearerCacheMaxTTL)
	if !ac.Expiry.IsZero() && ac.Expiry.Before(exp) {
		exp = ac.Expiry
	}
	if b, err := json.Marshal(introspected{Claims: ac.Claims, Exp: exp.Unix()}); err == nil {
		_ = v.shared.Set(context.WithoutCancel(ctx), key, []byte(v.codec.Seal(aad, b)), time.Until(exp))
	}
	return ac, nil
}

// looksLikeIDToken tells an ID token that lacks nonce and at_hash (a
// refreshed one) from an access token: it has none of what access tokens
// carry (RFC 9068: client_id; scope or scp), and it was issued to this
// client as its own audience (azp absent or this client): what an ID token
// of this route is. An access token for this client obtained by another
// one (Entra's app-only tokens: roles, azp the caller) is not one.
func looksLikeIDToken(claims map[string]any, clientID string) bool {
	for _, c := range []string{"scope", "scp", "client_id"} {
		if _, ok := claims[c]; ok {
			return false
		}
	}
	azp, hasAzp := claims["azp"].(string)
	var auds []string
	switch aud := claims["aud"].(type) {
	case string:
		auds = []string{aud}
	case []string:
		auds = aud
	case []any:
		for _, a := range aud {
			if s, ok := a.(string); ok {
				auds = append(auds, s)
			}
		}
	}
	return slices.Contains(auds, clientID) && (!hasAzp || azp == clientID)
}

type introspected struct {
	Claims map[string]any `json:"c"`
	Exp    int64          `json:"x"`
}

// errIntrospectionBusy: too many introspections are running; the request
// is answered 503 rather than queued without bound.
var errIntrospectionBusy = errors.New("too many token introspections in progress")

// introspector bounds a route's introspection calls: at most
// introspectionConcurrency at once, one per token in flight, and a short
// memory of tokens the IdP called inactive (in-process only, so hostile
// tokens never become shared entries).
type introspector struct {
	sem     chan struct{}
	bucket  tokenBucket
	clients map[string]*tokenBucket // bounded: introspectionClients
	// vouched are clients whose tokens the IdP recently called active:
	// the route's rate does not apply to them, so a flood from elsewhere
	// does not lock out the API's real callers (their own rate does).
	vouched map[string]time.Time // bounded: introspectionClients
	mu      sync.Mutex
	flights map[[32]byte]*introspection
	refusal *bearerCache
}

type introspection struct {
	done chan struct{}
	ac   *provider.AccessClaims
	err  error
}

func newIntrospector() *introspector {
	return &introspector{sem: make(chan struct{}, introspectionConcurrency),
		bucket:  tokenBucket{rate: introspectionRate, burst: introspectionBurst},
		clients: make(map[string]*tokenBucket),
		vouched: make(map[string]time.Time),
		flights: make(map[[32]byte]*introspection), refusal: newBearerCache(bearerCacheSize)}
}

func (in *introspector) refused(sum [32]byte, now time.Time) bool {
	_, ok := in.refusal.get(sum, now)
	return ok
}

func (in *introspector) refuse(sum [32]byte, now time.Time) {
	in.refusal.put(sum, bearerEntry{expires: now.Add(introspectionNegativeTTL)})
}

// clientKey names the request's client for rate limits: its address as
// Caddy sees it (trusted proxies applied), an IPv6 one by its /64 (one
// host holds a whole /64).
func clientKey(ctx context.Context) string {
	s, _ := caddyhttp.GetVar(ctx, caddyhttp.ClientIPVarKey).(string)
	ip, err := netip.ParseAddr(s)
	if err != nil || ip.Is4() || ip.Is4In6() {
		return s
	}
	p, _ := ip.Prefix(64)
	return p.String()
}

// vouch marks client as a caller of real tokens for a while.
func (in *introspector) vouch(ctx context.Context) {
	client := clientKey(ctx)
	in.mu.Lock()
	defer in.mu.Unlock()
	if _, ok := in.vouched[client]; !ok && len(in.vouched) >= introspectionClients {
		for k := range in.vouched {
			delete(in.vouched, k)
			break
		}
	}
	in.vouched[client] = time.Now().Add(10 * time.Minute)
}

// clientBucket is the rate bucket of client; in.mu is held.
func (in *introspector) clientBucket(ip string) *tokenBucket {
	b, ok := in.clients[ip]
	if !ok {
		if len(in.clients) >= introspectionClients {
			for k := range in.clients { // an arbitrary one makes room
				delete(in.clients, k)
				break
			}
		}
		b = &tokenBucket{rate: introspectionClientRate, burst: introspectionClientBurst}
		in.clients[ip] = b
	}
	return b
}

// do runs call once for concurrent requests of one token, within the bound.
func (in *introspector) do(ctx context.Context, sum [32]byte, call func(context.Context) (*provider.AccessClaims, error)) (*provider.AccessClaims, error) {
	in.mu.Lock()
	f, ok := in.flights[sum]
	if !ok {
		now := time.Now()
		client := clientKey(ctx)
		cb := in.clientBucket(client)
		good := now.Before(in.vouched[client])
		if !cb.has(now) || !good && !in.bucket.take(now) {
			in.mu.Unlock()
			return nil, errIntrospectionBusy
		}
		cb.take(now)
		f = &introspection{done: make(chan struct{})}
		in.flights[sum] = f
	}
	in.mu.Unlock()
	if !ok {
		go func() {
			defer func() {
				in.mu.Lock()
				delete(in.flights, sum)
				in.mu.Unlock()
				close(f.done)
			}()
			// The call is shared: it must not end with the first caller.
			cctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 30*time.Second)
			defer cancel()
			select {
			case in.sem <- struct{}{}:
			case <-time.After(100 * time.Millisecond):
				f.err = errIntrospectionBusy
				return
			}
			defer func() { <-in.sem }()
			f.ac, f.err = call(cctx)
		}()
	}
	select {
	case <-f.done:
		return f.ac, f.err
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}

// bearer_dpop modes (RFC 9449 at the resource server).
const (
	// DPoPAllowed accepts Bearer tokens and DPoP-bound tokens with proofs.
	DPoPAllowed = "allowed"
	// DPoPRequired accepts DPoP-bound tokens only (FAPI 2.0
	// sender-constraining).
	DPoPRequired = "required"
)

// maxDPoPProofBytes bounds a proof before it is parsed: an RSA-4096 key
// and signature take about 2 KiB.
const maxDPoPProofBytes = 8 << 10

// Bounds of the process's record of accepted proofs: about 1 000 proofs a
// second stay recorded for their whole window (2 minutes with the default
// clock_skew); beyond that the oldest records give way, to DPoP records
// only, never to login attempts or logout tokens.
const (
	dpopProofsMaxBytes   = 32 << 20
	dpopProofsMaxEntries = 1 << 17
)

// dpopAlgs is the algs parameter of the DPoP challenge.
var dpopAlgs = strings.Join(provider.DPoPAlgorithms(), " ")

// dpopProofs records the proofs this process accepted: the whole record
// with the memory backend, and with Valkey the replay check that still
// holds on this replica while Valkey cannot answer. It is the process's,
// as a replica is.
var dpopProofs = cache.NewMemory(dpopProofsMaxBytes, dpopProofsMaxEntries, nil)

// dpopLocalOnlyLog: proofs checked on one replica only, while Valkey is away.
var dpopLocalOnlyLog lograte.Limit

var errDPoPReplayed = errors.New("DPoP proof replayed (its jti was seen for this key)")

// singleDPoPProof is the request's one DPoP header (RFC 9449 §4.3: not
// several, not empty, and bounded before parsing).
func singleDPoPProof(r *http.Request) (string, error) {
	proofs := r.Header.Values("DPoP")
	switch {
	case len(proofs) != 1:
		return "", fmt.Errorf("%d DPoP headers, want 1", len(proofs))
	case proofs[0] == "":
		return "", errors.New("an empty DPoP header")
	case len(proofs[0]) > maxDPoPProofBytes:
		return "", fmt.Errorf("a DPoP proof of %d bytes, over %d", len(proofs[0]), maxDPoPProofBytes)
	}
	return proofs[0], nil
}

// proofChecker checks a route's DPoP proofs (RFC 9449) and refuses
// replayed ones on every replica.
type proofChecker struct {
	// ns names this route's records of seen proofs.
	ns string
	// origins, when set, are the only origins a proof's htu may name.
	origins []string
	scheme  func(*http.Request) string
	skew    time.Duration
	app     *App
	logger  *zap.Logger
}

// check verifies proof for this request and token (bound to the key jkt)
// and records its jti, refusing one seen before on any replica. It is
// called once the token is verified and the proof too, so nothing
// unauthenticated is ever recorded.
func (pc *proofChecker) check(r *http.Request, proof, token, jkt string, now time.Time) error {
	p, err := provider.VerifyDPoPProof(proof, provider.DPoPCheck{
		Method: r.Method, URL: pc.requestURL(r), AccessToken: token, JKT: jkt,
		Now: now, ClockSkew: pc.skew,
	})
	if err != nil {
		return err
	}
	sum := sha256.Sum256([]byte(p.JKT + "\x00" + p.JTI))
	key := cache.DPoPProofKey(pc.ns, hex.EncodeToString(sum[:]))
	ttl := p.Expiry.Sub(now)
	ctx := context.WithoutCancel(r.Context())
	// This replica's record first: it stops a replay here without a round
	// trip, and still stops it while Valkey is away.
	if fresh, _ := dpopProofs.Add(ctx, key, []byte{1}, ttl); !fresh {
		return errDPoPReplayed
	}
	shared := pc.app.set().shared
	if !shared.Replicated() {
		return nil // one process: its own record is the whole record
	}
	fresh, err := shared.Add(ctx, key, []byte{1}, ttl)
	switch {
	case err != nil:
		// Refusing every DPoP request while Valkey is away would make it a
		// single point of failure; a replay needs a captured request and
		// another replica within the proof's window.
		dpopLocalOnlyLog.Warn(pc.logger, "DPoP proofs are checked for replay on this replica only while Valkey cannot answer", zap.Error(err))
	case !fresh:
		return errDPoPReplayed
	}
	return nil
}

// requestURL is the URL as the client addressed it, the htu its proof
// must name: the scheme it used, its Host, and the path before any rewrite
// (Caddy keeps the original request), without query or fragment.
func (pc *proofChecker) requestURL(r *http.Request) string {
	host, path := r.Host, r.URL.EscapedPath()
	// Caddy's copy of the original request keeps its URL (before any
	// rewrite) but not its Host: the host is the request's.
	if orig, ok := r.Context().Value(caddyhttp.OriginalRequestCtxKey).(http.Request); ok && orig.URL != nil {
		path = orig.URL.EscapedPath()
		if orig.Host != "" {
			host = orig.Host
		}
	}
	origin := pc.scheme(r) + "://" + host
	if origins := pc.origins; len(origins) > 0 && !slices.ContainsFunc(origins, func(o string) bool {
		return strings.EqualFold(strings.TrimSuffix(o, "/"), origin)
	}) {
		// Not an origin of this resource: no proof names it rightly.
		return ""
	}
	return origin + path
}

package session

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"net/http"
	"strings"
	"sync/atomic"
	"time"

	"go.uber.org/zap"

	"github.com/caddy-oidc/caddy-oidc/cache"
	"github.com/caddy-oidc/caddy-oidc/internal/lograte"
)

// Store finds, keeps and ends the sessions of one route (one issuer, client
// and cookie name). There are two: NewCookieStore keeps a session in its
// cookies, NewCacheStore in the shared cache with an id in the cookie.
type Store interface {
	// Load finds the request's session and decides whether it is usable:
	// it opens and checks the binding of the sealed value, and applies the
	// lifetime, the idle timeout, the revocations and the refresh-token age.
	Load(r *http.Request, now time.Time) Loaded
	// Save writes s: sets its cookies, and its cache entry if it has one.
	Save(w http.ResponseWriter, r *http.Request, s *Session, now time.Time) error
	// Clear ends s in this browser: expires its cookies and deletes its
	// cache entry (or, with s nil, the one the request's cookie names).
	Clear(w http.ResponseWriter, r *http.Request, s *Session)
	// CacheID is the id of the cache-kept session the request's cookie
	// names, read without the shared cache (a logout works while it is down).
	CacheID(r *http.Request) (string, bool)
	// StripCookies removes the store's cookies (session chunks and login
	// attempts) from r, so they never reach the upstream.
	StripCookies(r *http.Request)
	// CookieName is the session cookie's name on r (with the __Host-
	// prefix on HTTPS).
	CookieName(r *http.Request) string
	// CookieOptions are the attributes of the store's cookies on r.
	CookieOptions(r *http.Request, maxAge int) CookieOptions
}

// Refusal says why a request has no usable session.
type Refusal uint8

const (
	// Usable: the session may be used.
	Usable Refusal = iota
	// NoSession: the request carries no session cookie.
	NoSession
	// Unreadable: the cookie (or the cache entry it names) does not open
	// here: tampered, truncated, of another route or issuer, sealed with a
	// secret no longer configured, or the cache entry is gone.
	Unreadable
	// Expired: past session_lifetime or session_idle_timeout.
	Expired
	// Revoked: logged out (back-channel, front-channel or RP-initiated) on
	// some replica.
	Revoked
	// RefreshTooOld: the refresh token is past refresh_token_max_age and
	// the access token has expired.
	RefreshTooOld
	// Unavailable: the shared cache cannot say whether the session exists
	// (503: neither a login redirect nor a deletion).
	Unavailable
	// NotReady: this process has not read the other replicas' logouts yet
	// (503 for a moment).
	NotReady
)

var refusalNames = [...]string{"usable", "no session", "unreadable", "expired", "revoked", "refresh token too old", "shared cache unavailable", "revocations not loaded yet"}

func (r Refusal) String() string {
	if int(r) < len(refusalNames) {
		return refusalNames[r]
	}
	return "unknown"
}

// Loaded is what Load found.
type Loaded struct {
	// Session is the usable session, or the refused one when it was opened
	// (Revoked, RefreshTooOld, NotReady), so the caller can clear it.
	Session *Session
	Refusal Refusal
	// Reissue is set when the session was sealed with an older secret: the
	// caller writes it again with the current one.
	Reissue bool
}

// Usable reports whether the session may be used.
func (l Loaded) Usable() bool { return l.Refusal == Usable }

// Purposes of the values a store seals, bound with the route into the
// AEAD's associated data: a value sealed for one purpose, key or route does
// not open as another.
const (
	PurposeCookie = "cookie\x00"  // + cookie name
	purposeValue  = "session\x00" // + cache key
)

// cacheIDPrefix marks the cookie payload of a session kept in the cache.
const cacheIDPrefix = "id:"

// decodedCacheSize bounds each route's cache of opened sessions: about 5 KB
// each for a typical session, so a few MB at most.
const decodedCacheSize = 1024

// StoreConfig is what a store needs from its route.
type StoreConfig struct {
	Codec *Codec
	// Binding prefixes the associated data of every value the store seals:
	// the route (issuer and client), so another route's session never
	// opens here, even with the same session_secret.
	Binding string
	// Namespace names the route's keys in the shared cache.
	Namespace string
	// CookieName is the session cookie's name without the __Host- prefix.
	CookieName string
	SameSite   http.SameSite
	// Secure reports whether r's cookies get Secure and the __Host- prefix.
	Secure func(r *http.Request) bool
	// Lifetime, IdleTimeout and RefreshTokenMaxAge: zero disables a limit.
	Lifetime, IdleTimeout, RefreshTokenMaxAge time.Duration
	// Shared is the app's shared cache: every session of a cache store,
	// and a cookie session too large for cookies.
	Shared cache.Store
	// Revoked reports a session logged out anywhere; Ready, whether the
	// revocations of other replicas have been read. Nil: none, ready.
	Revoked func(*Session) bool
	Ready   func() bool
	Logger  *zap.Logger
	// DecodedCacheSize bounds the opened sessions kept. Default: 1024.
	DecodedCacheSize int
}

// core is what both stores share: reading, opening and checking a session,
// cache-kept sessions (a cookie session may overflow into the cache), and
// the cookies.
type core struct {
	StoreConfig
	hostName                  string
	plainCookieAAD, hostAAD   string
	decoded                   *DecodedCache
	warnedOversize            atomic.Bool
	unavailable, cacheWriting lograte.Limit
}

func newCore(c StoreConfig) *core {
	if c.Logger == nil {
		c.Logger = zap.NewNop()
	}
	if c.DecodedCacheSize <= 0 {
		c.DecodedCacheSize = decodedCacheSize
	}
	s := &core{StoreConfig: c, hostName: "__Host-" + c.CookieName, decoded: NewDecodedCache(c.DecodedCacheSize)}
	s.plainCookieAAD, s.hostAAD = c.Binding+PurposeCookie+c.CookieName, c.Binding+PurposeCookie+s.hostName
	return s
}

// cookieStore keeps a session in its cookies; one too large for them goes
// to the shared cache with its id in the cookie.
type cookieStore struct{ *core }

// cacheStore keeps every session in the shared cache, with its id in the cookie.
type cacheStore struct{ *core }

// NewCookieStore keeps sessions in encrypted, chunked cookies.
func NewCookieStore(c StoreConfig) Store { return cookieStore{newCore(c)} }

// NewCacheStore keeps sessions in the shared cache, with an opaque id in
// the cookie, so any replica sharing the cache serves them.
func NewCacheStore(c StoreConfig) Store { return cacheStore{newCore(c)} }

func (s *core) CookieName(r *http.Request) string {
	if s.Secure(r) {
		return s.hostName
	}
	return s.StoreConfig.CookieName
}

func (s *core) CookieOptions(r *http.Request, maxAge int) CookieOptions {
	return CookieOptions{Secure: s.Secure(r), MaxAge: maxAge, SameSite: s.SameSite}
}

// cookieAAD is the associated data of the session cookie called name,
// precomputed for the two names a route uses (every request needs it).
func (s *core) cookieAAD(name string) string {
	switch name {
	case s.StoreConfig.CookieName:
		return s.plainCookieAAD
	case s.hostName:
		return s.hostAAD
	}
	return s.Binding + PurposeCookie + name
}

// Key is where the cache-kept session id of a route (namespace) lives: a
// hash of the id (the id itself is a bearer credential and never a key in
// Valkey), in the route's namespace.
func Key(namespace, id string) string {
	sum := sha256.Sum256([]byte(id))
	return cache.SessionKey(namespace, hex.EncodeToString(sum[:]))
}

func (s *core) Key(id string) string { return Key(s.Namespace, id) }

func (s *core) Load(r *http.Request, now time.Time) Loaded {
	name := s.CookieName(r)
	v, ok := ReadChunked(r, name)
	if !ok {
		return Loaded{Refusal: NoSession}
	}
	sess, reissue, err := s.open(r.Context(), name, v)
	switch {
	case err != nil:
		return Loaded{Refusal: Unavailable}
	case sess == nil:
		return Loaded{Refusal: Unreadable}
	case sess.Expired(now, s.Lifetime, s.IdleTimeout):
		return Loaded{Refusal: Expired}
	case s.Ready != nil && !s.Ready():
		return Loaded{Session: sess, Refusal: NotReady}
	case s.Revoked != nil && s.Revoked(sess):
		return Loaded{Session: sess, Refusal: Revoked}
	case s.refreshTooOld(sess, now) && sess.AccessExpiry != 0 && now.Unix() >= sess.AccessExpiry:
		return Loaded{Session: sess, Refusal: RefreshTooOld}
	}
	return Loaded{Session: sess, Reissue: reissue}
}

func (s *core) refreshTooOld(sess *Session, now time.Time) bool {
	return sess.RefreshTokenTooOld(s.RefreshTokenMaxAge, now)
}

// errUnavailable: the session may exist but the shared cache cannot say.
var errUnavailable = errors.New("session store unavailable")

// open opens the session cookie's value: the session itself, or the id of
// a session kept in the cache. A nil session without error means the value
// does not open here.
func (s *core) open(ctx context.Context, name, v string) (*Session, bool, error) {
	if sess, ok := s.decoded.Get(name, v); ok {
		return sess, false, nil
	}
	pt, rotated, err := s.Codec.Open(s.cookieAAD(name), v)
	if err != nil {
		return nil, false, nil
	}
	if id, ok := cacheRef(pt); ok {
		sess, rotatedValue, err := s.loadCached(ctx, id)
		return sess, rotated || rotatedValue, err
	}
	sess, err := Unmarshal(pt)
	if err != nil {
		return nil, false, nil
	}
	if !rotated {
		// Cache a private copy: the caller may change sess.
		cp := *sess
		s.decoded.Put(name, v, &cp)
	}
	return sess, rotated, nil
}

// cacheRef reads a cookie payload that names a cache-kept session.
func cacheRef(pt []byte) (string, bool) {
	id, ok := strings.CutPrefix(string(pt), cacheIDPrefix)
	if !ok || len(id) < 32 {
		return "", false
	}
	return id, true
}

func (s *core) loadCached(ctx context.Context, id string) (*Session, bool, error) {
	key := s.Key(id)
	v, found, err := s.Shared.Get(ctx, key)
	if err != nil {
		s.unavailable.Warn(s.Logger, "a cache-kept session could not be read: the shared cache is unavailable; answering 503", zap.Error(err))
		return nil, false, errUnavailable
	}
	if !found {
		return nil, false, nil
	}
	sealed := string(v)
	if sess, ok := s.decoded.Get(key, sealed); ok {
		sess.ID = id
		return sess, false, nil
	}
	pt, rotated, err := s.Codec.Open(s.Binding+purposeValue+key, sealed)
	if err != nil {
		return nil, false, nil
	}
	sess, err := Unmarshal(pt)
	if err != nil {
		return nil, false, nil
	}
	if !rotated {
		cp := *sess
		s.decoded.Put(key, sealed, &cp)
	}
	sess.ID = id
	return sess, rotated, nil
}

func (s *core) CacheID(r *http.Request) (string, bool) {
	name := s.CookieName(r)
	v, ok := ReadChunked(r, name)
	if !ok {
		return "", false
	}
	pt, _, err := s.Codec.Open(s.cookieAAD(name), v)
	if err != nil {
		return "", false
	}
	return cacheRef(pt)
}

// cookieMaxAge is what remains of sess's lifetime, in cookie terms.
func (s *core) remaining(sess *Session, now time.Time) time.Duration {
	return time.Unix(sess.Created, 0).Add(s.Lifetime).Sub(now)
}

func (st cookieStore) Save(w http.ResponseWriter, r *http.Request, sess *Session, now time.Time) error {
	s := st.core
	if sess.ID == "" {
		pt, err := sess.Marshal()
		if err != nil {
			return fmt.Errorf("encoding session: %w", err)
		}
		name := s.CookieName(r)
		if WriteChunked(w, r, name, s.Codec.Seal(s.cookieAAD(name), pt), s.CookieOptions(r, max(int(s.remaining(sess, now)/time.Second), 1))) {
			return nil
		}
		// An Entra user with hundreds of groups, say: keep it server-side.
		if s.warnedOversize.CompareAndSwap(false, true) {
			s.Logger.Warn("a session is too large for cookies; keeping it in the oidc app's cache with only its id in the cookie (with the memory cache it lives in this process only: configure valkey for several replicas)",
				zap.Int("session_bytes", len(pt)))
		}
	}
	return s.saveCached(w, r, sess, now)
}

func (st cacheStore) Save(w http.ResponseWriter, r *http.Request, sess *Session, now time.Time) error {
	return st.saveCached(w, r, sess, now)
}

// saveCached writes sess to the shared cache and its id to the cookie. A
// cache outage keeps the session in this process's L1 (written back later)
// and is not an error.
func (s *core) saveCached(w http.ResponseWriter, r *http.Request, sess *Session, now time.Time) error {
	pt, err := sess.Marshal()
	if err != nil {
		return fmt.Errorf("encoding session: %w", err)
	}
	if sess.ID == "" {
		b := make([]byte, 16) // 128 bits
		rand.Read(b)
		sess.ID = hex.EncodeToString(b)
	}
	remaining := s.remaining(sess, now)
	key := s.Key(sess.ID)
	if err := s.Shared.Set(r.Context(), key, []byte(s.Codec.Seal(s.Binding+purposeValue+key, pt)), max(remaining, time.Second)); err != nil {
		s.cacheWriting.Warn(s.Logger, "session kept in this process only: the shared cache is unavailable", zap.Error(err))
	}
	name := s.CookieName(r)
	WriteChunked(w, r, name, s.Codec.Seal(s.cookieAAD(name), []byte(cacheIDPrefix+sess.ID)), s.CookieOptions(r, max(int(remaining/time.Second), 1)))
	return nil
}

func (s *core) Clear(w http.ResponseWriter, r *http.Request, sess *Session) {
	ClearChunked(w, r, s.CookieName(r), s.CookieOptions(r, 0))
	id := ""
	if sess != nil {
		id = sess.ID
	} else if cid, ok := s.CacheID(r); ok {
		id = cid
	}
	if id == "" {
		return
	}
	if err := s.Shared.Delete(context.WithoutCancel(r.Context()), s.Key(id)); err != nil {
		s.cacheWriting.Warn(s.Logger, "deleting a session from the shared cache failed", zap.Error(err))
	}
}

// StripCookies removes the store's own cookies (session chunks and login
// attempts, all named <cookie_name>...) from the request.
func (s *core) StripCookies(r *http.Request) {
	lines := r.Header["Cookie"]
	if len(lines) == 0 {
		return
	}
	found := false
	for _, l := range lines {
		if strings.Contains(l, s.StoreConfig.CookieName) {
			found = true
			break
		}
	}
	if !found {
		return
	}
	var kept []string
	for _, l := range lines {
		for part := range strings.SplitSeq(l, ";") {
			p := strings.TrimSpace(part)
			if p == "" || s.isOwnCookie(p) {
				continue
			}
			kept = append(kept, p)
		}
	}
	if len(kept) == 0 {
		r.Header.Del("Cookie")
		return
	}
	r.Header["Cookie"] = []string{strings.Join(kept, "; ")}
}

func (s *core) isOwnCookie(pair string) bool {
	name, _, _ := strings.Cut(pair, "=")
	name = strings.TrimPrefix(strings.TrimSpace(name), "__Host-")
	return name == s.StoreConfig.CookieName || strings.HasPrefix(name, s.StoreConfig.CookieName+"_")
}

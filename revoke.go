package caddyoidc

import (
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/caddyserver/caddy/v2"
	"go.uber.org/zap"

	"github.com/caddy-oidc/caddy-oidc/cache"
	"github.com/caddy-oidc/caddy-oidc/internal/lograte"
	"github.com/caddy-oidc/caddy-oidc/session"
)

// Kinds of revocation: an IdP session (sid), a user (sub), one session by
// its LocalID, one cache-store session by the hash of its id (logout while
// the store cannot read the session).
const (
	revokeSID     = "sid"
	revokeSubject = "sub"
	revokeSession = "one"
	revokeCacheID = "cid"
)

// Bounds of the revocation set. Every entry costs about 200 bytes, so the
// hard cap is a few tens of MB at worst.
const (
	// maxRevocationID refuses a sid, sub or session id longer than this.
	maxRevocationID = 255
	// maxRevocations bounds entries made by sessions' own logouts (RP and
	// front-channel) and entries read from Valkey (which anyone who can
	// write to it can fill). Past it those are refused, never evicted.
	maxRevocations = 100_000
	// maxIdPRevocations leaves room above maxRevocations for logouts the
	// IdP signed, so a full set still honours them.
	maxIdPRevocations = maxRevocations + maxRevocations/10
	// revocationMargin covers clock skew between replicas: a revocation
	// outlives the sessions it ends by this much.
	revocationMargin = time.Minute
	// revocationFuture refuses a revocation from Valkey dated later than
	// this (it would refuse logins still to come).
	revocationFuture     = 5 * time.Minute
	revocationPruneEvery = 30 * time.Second
	// revocationWriteTimeout bounds one Valkey write of the write-back.
	revocationWriteTimeout = 2 * time.Second
)

var (
	errRevocationID   = errors.New("revocation id empty or longer than 255 bytes")
	errRevocationFull = errors.New("revocation set full")
)

// trust says where a revocation comes from, for the cap.
type trust int

const (
	// fromSession: the logout of a session the request proved it holds.
	fromSession trust = iota
	// fromIdP: a logout token signed by the IdP.
	fromIdP
	// fromShared: read from Valkey, written by another replica or by
	// anyone who can write to it.
	fromShared
)

// processRevocations is the process's one revocation set. It outlives every
// config: a reload, whatever it changes (cache block included), keeps every
// logout. Cache sets attach to it and detach when they are destroyed.
var processRevocations = newRevocations()

// noteLifetime records that a route of issuer holds sessions for up to d:
// revocations of that issuer then live at least that long, in this process
// and in Valkey. Handlers call it at Provision; the maximum ever seen in
// the process is kept, so a reload that raises it extends the revocations
// already made.
func noteLifetime(issuer string, d time.Duration) { processRevocations.noteLifetime(issuer, d) }

// revocations is the set of ended IdP sessions, users and sessions, each
// with the time it was ended: a session started before that time is over.
// Cookie sessions cannot be deleted, so this is how logout reaches them.
// Every replica keeps the whole set in memory (never in the L1 that holds
// sessions, so it cannot evict them), so checking it costs no Valkey round
// trip. Each revocation is written to every attached cache backend
// (retried in the background until it lands), other replicas learn it from
// the announcement, and the set is re-read and written back whenever
// announcements may have been missed. The memory backend is a deployment
// of one: the same code runs, in memory.
type revocations struct {
	mu        sync.RWMutex
	m         map[revKey]revocation
	lifetimes map[string]time.Duration // per issuer, the longest ever noted
	// macKeys, per issuer, authenticate revocations in Valkey: derived from
	// the session secrets of that issuer's routes; the first signs, all verify.
	macKeys map[string][]*macKey
	// signer, per issuer, is the key new revocations are sealed with: the
	// current secret of the route attached last (the newest config's).
	signer    map[string][]byte
	longest   time.Duration // over every issuer
	lastPrune time.Time
	// now is the set's clock. Default: time.Now.
	now func() time.Time

	count atomic.Int64 // len(m): the hot path skips the lock when 0
	cids  atomic.Int64 // entries of kind cid: only then does the hot path hash a cache session id

	soft, hard int
	every      time.Duration // prune interval

	attMu   sync.Mutex
	att     []*attachment
	refs    int
	stopRun context.CancelFunc
	runDone chan struct{}

	refused, unshared, forged lograte.Limit
	// synced is set by the first complete read of a backend: until then a
	// process that just started does not know the other replicas' logouts.
	synced atomic.Bool
}

type revKey struct{ kind, issuer, id string }

type revocation struct{ at, expires int64 }

func newRevocations() *revocations {
	return &revocations{m: make(map[revKey]revocation), lifetimes: make(map[string]time.Duration),
		macKeys: make(map[string][]*macKey), signer: make(map[string][]byte), soft: maxRevocations, hard: maxIdPRevocations, every: revocationPruneEvery, now: time.Now}
}

func (r *revocations) logger() *zap.Logger { return caddy.Log().Named("oidc.revocations") }

// storeID is the Valkey key id of k (compatible with earlier versions).
func (k revKey) storeID() string { return k.kind + ":" + k.issuer + "|" + k.id }

// parseRevKey reads a key announced or scanned in Valkey ("rev:<kind>:<issuer>|<id>").
func parseRevKey(key string) (revKey, bool) {
	rest, ok := strings.CutPrefix(key, cache.RevocationPrefix)
	if !ok {
		return revKey{}, false
	}
	kind, rest, ok := strings.Cut(rest, ":")
	if !ok {
		return revKey{}, false
	}
	issuer, id, ok := strings.Cut(rest, "|")
	switch {
	case !ok || issuer == "" || len(issuer) > 2048 || id == "" || len(id) > maxRevocationID:
		return revKey{}, false
	case kind != revokeSID && kind != revokeSubject && kind != revokeSession && kind != revokeCacheID:
		return revKey{}, false
	}
	return revKey{kind, issuer, id}, true
}

// cacheIDHash is the revocation id of a cache-store session id: the id is a
// bearer credential and never goes to Valkey as such.
func cacheIDHash(id string) string {
	sum := sha256.Sum256([]byte("caddy-oidc revoked cache session\x00" + id))
	return hex.EncodeToString(sum[:])
}

// ended reports whether s was ended by a revocation made after it started.
func (r *revocations) ended(issuer string, s *session.Session) bool {
	if r.count.Load() == 0 {
		return false
	}
	var cid string
	if s.ID != "" && r.cids.Load() > 0 {
		cid = cacheIDHash(s.ID)
	}
	now := r.now().Unix()
	r.mu.RLock()
	defer r.mu.RUnlock()
	return r.hit(revKey{revokeSID, issuer, s.SID()}, s, now) ||
		r.hit(revKey{revokeSubject, issuer, s.Subject()}, s, now) ||
		r.hit(revKey{revokeSession, issuer, s.LocalID}, s, now) ||
		r.hit(revKey{revokeCacheID, issuer, cid}, s, now)
}

func (r *revocations) hit(k revKey, s *session.Session, now int64) bool {
	if k.id == "" {
		return false
	}
	rv, ok := r.m[k]
	return ok && rv.expires > now && s.Created <= rv.at
}

// lifetimeLocked is how long sessions of issuer may live here.
func (r *revocations) lifetimeLocked(issuer string) time.Duration {
	if d, ok := r.lifetimes[issuer]; ok {
		return d
	}
	if r.longest > 0 {
		return r.longest
	}
	return DefaultSessionLifetime
}

// noteLifetime raises issuer's longest session lifetime to d and extends
// the revocations already made for it (in Valkey too).
func (r *revocations) noteLifetime(issuer string, d time.Duration) {
	if d <= 0 {
		return
	}
	r.mu.Lock()
	if d <= r.lifetimes[issuer] {
		r.mu.Unlock()
		return
	}
	r.lifetimes[issuer] = d
	r.longest = max(r.longest, d)
	var extended []revKey
	for k, rv := range r.m {
		if k.issuer != issuer {
			continue
		}
		if exp := time.Unix(rv.at, 0).Add(d + revocationMargin).Unix(); exp > rv.expires {
			rv.expires = exp
			r.m[k] = rv
			extended = append(extended, k)
		}
	}
	r.mu.Unlock()
	if len(extended) > 0 {
		r.markPending(nil, extended)
	}
}

// revoke ends every session of (kind, issuer, id) started until at: here
// at once, and on the other replicas through Valkey (now if it answers,
// else retried in the background with a context of its own until it
// lands). lifetime is the calling route's session lifetime. The only
// errors are refusals: an id too long, or a full set.
func (r *revocations) revoke(ctx context.Context, kind, issuer, id string, at time.Time, lifetime time.Duration, tr trust) error {
	if id == "" || len(id) > maxRevocationID {
		r.refuse("id", kind, issuer)
		return errRevocationID
	}
	r.noteLifetime(issuer, lifetime)
	k := revKey{kind, issuer, id}
	now := r.now()
	if at.After(now) {
		at = now
	}
	r.mu.Lock()
	exp := at.Add(r.lifetimeLocked(issuer) + revocationMargin).Unix()
	changed, err := r.addLocked(k, revocation{at: at.Unix(), expires: exp}, tr, now)
	r.mu.Unlock()
	if err != nil {
		r.refuse("full", kind, issuer)
		return err
	}
	if changed {
		r.share(ctx, k)
	}
	return nil
}

// addLocked stores rv under k unless k holds a later one, within the caps.
func (r *revocations) addLocked(k revKey, rv revocation, tr trust, now time.Time) (changed bool, err error) {
	old, exists := r.m[k]
	if exists {
		if old.at > rv.at || old.at == rv.at && old.expires >= rv.expires {
			return false, nil
		}
		rv.at, rv.expires = max(old.at, rv.at), max(old.expires, rv.expires)
		r.m[k] = rv
		return true, nil
	}
	limit := r.soft
	if tr == fromIdP {
		limit = r.hard
	}
	if len(r.m) >= limit && now.Sub(r.lastPrune) > time.Second {
		// Expired entries make room; at most once a second, so a flood of
		// refused requests cannot make every one of them scan the set.
		r.pruneLocked(now)
	}
	if len(r.m) >= limit {
		return false, errRevocationFull
	}
	r.m[k] = rv
	r.count.Store(int64(len(r.m)))
	if k.kind == revokeCacheID {
		r.cids.Add(1)
	}
	return true, nil
}

func (r *revocations) refuse(why, kind, issuer string) {
	if ok, n := r.refused.Allow(); ok {
		r.logger().Warn("revocation refused", zap.String("reason", why), zap.String("kind", kind),
			zap.String("issuer", issuer), zap.Int("entries", r.len()), zap.Int64("refused_since_last_log", n))
	}
}

func (r *revocations) len() int { return int(r.count.Load()) }

// get returns the revocation of k.
func (r *revocations) get(k revKey) (revocation, bool) {
	r.mu.RLock()
	defer r.mu.RUnlock()
	rv, ok := r.m[k]
	return rv, ok
}

func (r *revocations) prune() {
	r.mu.Lock()
	r.pruneLocked(r.now())
	r.mu.Unlock()
}

func (r *revocations) pruneLocked(now time.Time) {
	r.lastPrune = now
	n := now.Unix()
	for k, rv := range r.m {
		if rv.expires <= n {
			delete(r.m, k)
			if k.kind == revokeCacheID {
				r.cids.Add(-1)
			}
		}
	}
	r.count.Store(int64(len(r.m)))
}

// attach connects a cache backend to the set: the set follows its
// announcements, re-reads it when they may have been missed, and writes to
// it every revocation it lacks (all of them, for a new Valkey). Each
// attach is paired with a detach. While anything is attached, expired
// entries are pruned on a timer, whatever the backend.
func (r *revocations) attach(sh cache.Shared) {
	r.attMu.Lock()
	r.refs++
	if r.refs == 1 {
		ctx, cancel := context.WithCancel(context.Background())
		r.stopRun, r.runDone = cancel, make(chan struct{})
		go r.pruneLoop(ctx, r.runDone)
	}
	a := newAttachment(r, sh)
	r.att = append(r.att, a)
	r.attMu.Unlock()
	// Outside attMu: Follow may run the resync inline, which takes it.
	sh.Follow(cache.Follower{Prefix: cache.RevocationPrefix, Changed: a.changed, Resync: a.resync})
}

// detach undoes attach: revocations not yet written to sh get one bounded
// last try, then its write-back stops.
func (r *revocations) detach(sh cache.Shared) {
	r.attMu.Lock()
	var a *attachment
	for i, x := range r.att {
		if x.h == sh {
			a = x
			r.att = append(r.att[:i:i], r.att[i+1:]...)
			break
		}
	}
	r.refs = max(r.refs-1, 0)
	var stop context.CancelFunc
	var done chan struct{}
	if r.refs == 0 && r.stopRun != nil {
		stop, done, r.stopRun = r.stopRun, r.runDone, nil
	}
	r.attMu.Unlock()
	if a != nil {
		a.close()
	}
	if stop != nil {
		stop()
		<-done
	}
}

func (r *revocations) attachments() []*attachment {
	r.attMu.Lock()
	defer r.attMu.Unlock()
	return append([]*attachment(nil), r.att...)
}

func (r *revocations) pruneLoop(ctx context.Context, done chan struct{}) {
	defer close(done)
	defer func() {
		if v := recover(); v != nil {
			r.logger().Error("revocation pruning stopped", zap.Any("panic", v))
		}
	}()
	t := time.NewTicker(r.every)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			r.prune()
		}
	}
}

// markPending queues keys for writing to every attachment but skip.
func (r *revocations) markPending(skip *attachment, keys []revKey) {
	for _, a := range r.attachments() {
		if a != skip {
			a.queue(keys...)
		}
	}
}

// share writes k to every attached Valkey now, with a context that a
// dropped request does not cancel; what fails stays queued for write-back.
func (r *revocations) share(ctx context.Context, k revKey) {
	ctx = context.WithoutCancel(ctx)
	for _, a := range r.attachments() {
		a.queue(k)
		if err := a.write(ctx, k); err != nil {
			a.kickWriter()
			if ok, n := r.unshared.Allow(); ok {
				r.logger().Warn("revocation in effect here; other replicas get it when Valkey takes the write (retrying)",
					zap.Error(err), zap.Int64("more_since_last_log", n))
			}
		}
	}
}

// attachment is the set's link to one cache backend: its queue of
// revocations not yet written there, and the goroutine writing them.
type attachment struct {
	r      *revocations
	h      cache.Shared
	ctx    context.Context
	cancel context.CancelFunc
	done   chan struct{}
	kick   chan struct{}

	mu      sync.Mutex
	pending map[revKey]struct{}
}

func newAttachment(r *revocations, h cache.Shared) *attachment {
	ctx, cancel := context.WithCancel(context.Background())
	a := &attachment{r: r, h: h, ctx: ctx, cancel: cancel, done: make(chan struct{}), kick: make(chan struct{}, 1),
		pending: make(map[revKey]struct{})}
	go a.run()
	return a
}

func (a *attachment) queue(keys ...revKey) {
	a.mu.Lock()
	for _, k := range keys {
		a.pending[k] = struct{}{}
	}
	a.mu.Unlock()
	a.kickWriter()
}

func (a *attachment) kickWriter() {
	select {
	case a.kick <- struct{}{}:
	default:
	}
}

func (a *attachment) pendingLen() int {
	a.mu.Lock()
	defer a.mu.Unlock()
	return len(a.pending)
}

// write writes k's current revocation to Valkey and unqueues it, unless it
// changed meanwhile (the newer one stays queued).
func (a *attachment) write(ctx context.Context, k revKey) error {
	rv, ok := a.r.get(k)
	now := a.r.now()
	if !ok || rv.expires <= now.Unix() {
		a.done1(k, rv)
		return nil
	}
	ctx, cancel := context.WithTimeout(ctx, revocationWriteTimeout)
	defer cancel()
	v, ok := a.r.seal(k, rv)
	if !ok {
		a.done1(k, rv) // no route of this issuer here to vouch for it
		return nil
	}
	ttl := max(time.Unix(rv.expires, 0).Sub(now), time.Second)
	if err := a.h.SetShared(ctx, cache.RevocationKey(k.storeID()), []byte(v), ttl); err != nil {
		return err
	}
	a.done1(k, rv)
	return nil
}

func (a *attachment) done1(k revKey, written revocation) {
	if cur, ok := a.r.get(k); ok && cur != written {
		return
	}
	a.mu.Lock()
	delete(a.pending, k)
	a.mu.Unlock()
}

// run writes queued revocations until detach: at once when kicked, and
// again with backoff while writes fail. Nothing is dropped while unwritten
// (the queue is bounded by the set's caps; expired entries leave it).
func (a *attachment) run() {
	defer close(a.done)
	defer func() {
		if v := recover(); v != nil {
			a.r.logger().Error("revocation write-back stopped", zap.Any("panic", v))
		}
	}()
	backoff := 100 * time.Millisecond
	var retry <-chan time.Time
	for {
		select {
		case <-a.ctx.Done():
			return
		case <-a.kick:
		case <-retry:
		}
		if a.flush(a.ctx) {
			backoff, retry = 100*time.Millisecond, nil
			continue
		}
		retry = time.After(backoff)
		backoff = min(2*backoff, 5*time.Second)
	}
}

// flush writes the queue; it stops at the first failure (Valkey down: the
// rest would fail too) and reports whether the queue is empty.
func (a *attachment) flush(ctx context.Context) bool {
	a.mu.Lock()
	keys := make([]revKey, 0, len(a.pending))
	for k := range a.pending {
		keys = append(keys, k)
	}
	a.mu.Unlock()
	for _, k := range keys {
		if ctx.Err() != nil {
			return false
		}
		if err := a.write(ctx, k); err != nil {
			return false
		}
	}
	return a.pendingLen() == 0
}

// close stops the write-back after one bounded last try.
func (a *attachment) close() {
	ctx, cancel := context.WithTimeout(context.Background(), revocationWriteTimeout)
	if !a.flush(ctx) {
		if n := a.pendingLen(); n > 0 {
			a.r.logger().Warn("revocations not written to the Valkey of a cache config being replaced; the new one gets them",
				zap.Int("entries", n))
		}
	}
	cancel()
	a.cancel()
	<-a.done
}

func (a *attachment) active() bool { return a.ctx.Err() == nil }

// changed reads one revocation announced by another replica.
func (a *attachment) changed(key string) {
	if !a.active() {
		return
	}
	k, ok := parseRevKey(key)
	if !ok {
		return
	}
	ctx, cancel := context.WithTimeout(a.ctx, revocationWriteTimeout)
	defer cancel()
	a.fetch(ctx, k, key)
}

// fetch reads k from Valkey into the set; it returns the stored
// revocation's time (0 when absent or unreadable).
func (a *attachment) fetch(ctx context.Context, k revKey, key string) int64 {
	at, _ := a.fetchErr(ctx, k, key)
	return at
}

// fetchErr is fetch that also reports a read that failed (not a missing or
// refused value).
func (a *attachment) fetchErr(ctx context.Context, k revKey, key string) (int64, error) {
	v, found, err := a.h.GetShared(ctx, key)
	if err != nil || !found {
		return 0, err
	}
	r := a.r
	at, exp, ok := r.open(k, string(v))
	if !ok {
		// Not written by a replica holding this issuer's session secret:
		// whoever can write to Valkey cannot log users out or fill the set.
		if ok, n := r.forged.Allow(); ok {
			r.logger().Warn("revocation in Valkey ignored: not sealed with this issuer's session secret", zap.String("kind", k.kind),
				zap.String("issuer", k.issuer), zap.Int64("ignored_since_last_log", n))
		}
		return 0, nil
	}
	now := r.now()
	if at > now.Add(revocationFuture).Unix() {
		return 0, nil // a revocation from the future would refuse logins to come
	}
	r.mu.Lock()
	// Valkey is not trusted for how long: no longer than a session can live here.
	exp = min(exp, time.Unix(at, 0).Add(r.lifetimeLocked(k.issuer)+revocationMargin).Unix())
	changed := false
	if exp > now.Unix() {
		changed, err = r.addLocked(k, revocation{at: at, expires: exp}, fromShared, now)
	}
	r.mu.Unlock()
	if err != nil {
		r.refuse("full", k.kind, k.issuer)
	}
	if changed {
		// Another Valkey attached (a reload to a new cache config) gets it too.
		r.markPending(a, []revKey{k})
	}
	return at, nil
}

// resync runs when the announcement stream is (re)established: announcements
// may have been missed, and Valkey may have restarted empty or be a new
// one. Read every revocation it has, then write back each one it lacks or
// has older.
func (a *attachment) resync() {
	if !a.active() {
		return
	}
	ctx, cancel := context.WithTimeout(a.ctx, time.Minute)
	defer cancel()
	// Partial (a cluster master down): read what answers, write back only
	// after a complete read (the queue keeps what is unwritten meanwhile).
	keys, complete, err := a.h.Scan(ctx, cache.RevocationPrefix)
	if err != nil {
		// The next (re)subscription runs this again.
		a.r.logger().Warn("reading the revocation set from Valkey failed; keeping what is known", zap.Error(err))
		return
	}
	// Many round trips at once: a large set must be read well within the
	// deadline, and the start-up wait ends only on a complete read.
	stored := make(map[revKey]int64, len(keys))
	var mu sync.Mutex
	var failed atomic.Int64
	work := make(chan string)
	var wg sync.WaitGroup
	for range revocationReaders {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for key := range work {
				k, ok := parseRevKey(key)
				if !ok {
					continue
				}
				fctx, fcancel := context.WithTimeout(ctx, revocationWriteTimeout)
				at, err := a.fetchErr(fctx, k, key)
				fcancel()
				if err != nil {
					failed.Add(1)
					continue
				}
				mu.Lock()
				stored[k] = at
				mu.Unlock()
			}
		}()
	}
	for _, key := range keys {
		work <- key
	}
	close(work)
	wg.Wait()
	a.r.prune()
	if complete && failed.Load() == 0 {
		a.queueAll(stored)
		if a.h.Replicated() {
			// Only a backend other replicas write to tells this process
			// their logouts (an in-process one holds only its own).
			a.r.synced.Store(true)
		}
		return
	}
	// Incomplete: read again later rather than take a part for the whole.
	a.r.logger().Warn("reading the revocation set from Valkey was incomplete; reading it again in 10s",
		zap.Int("keys", len(keys)), zap.Int64("failed", failed.Load()), zap.Bool("all_nodes", complete))
	time.AfterFunc(10*time.Second, func() {
		if a.active() {
			a.resync()
		}
	})
}

// ready reports whether the set knows the logouts of the other replicas:
// it has read a replicated backend (Valkey) completely once in this
// process, or none is attached (memory alone: there are no other
// replicas). A reload keeps it.
func (r *revocations) ready() bool {
	if r.synced.Load() {
		return true
	}
	r.attMu.Lock()
	defer r.attMu.Unlock()
	for _, a := range r.att {
		if a.h.Replicated() {
			return false
		}
	}
	return true
}

// queueAll queues every unexpired revocation that stored (what Valkey has)
// lacks or has older.
func (a *attachment) queueAll(stored map[revKey]int64) {
	r := a.r
	now := r.now().Unix()
	var missing []revKey
	r.mu.RLock()
	for k, rv := range r.m {
		if rv.expires > now && (stored[k] < rv.at) {
			missing = append(missing, k)
		}
	}
	r.mu.RUnlock()
	if len(missing) > 0 {
		a.queue(missing...)
	}
}

// macKey is a revocation key and how many attached routes hold it.
type macKey struct {
	key  []byte
	refs int
}

// noteMACKeys registers the revocation keys of a route of issuer (its
// session secrets'; the first seals); forgetMACKeys takes them back when
// the route is cleaned up, so a secret rotated out stops being trusted.
func (r *revocations) noteMACKeys(issuer string, keys [][]byte) {
	if len(keys) == 0 {
		return
	}
	r.mu.Lock()
	added := false
	for _, k := range keys {
		i := slices.IndexFunc(r.macKeys[issuer], func(have *macKey) bool { return hmac.Equal(have.key, k) })
		if i >= 0 {
			r.macKeys[issuer][i].refs++
			continue
		}
		r.macKeys[issuer] = append(r.macKeys[issuer], &macKey{key: k, refs: 1})
		added = true
	}
	r.signer[issuer] = keys[0]
	r.mu.Unlock()
	if added {
		// Entries a new key vouches for were ignored until now.
		r.resyncAll()
	}
}

func (r *revocations) forgetMACKeys(issuer string, keys [][]byte) {
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, k := range keys {
		list := r.macKeys[issuer]
		i := slices.IndexFunc(list, func(have *macKey) bool { return hmac.Equal(have.key, k) })
		if i < 0 {
			continue
		}
		if list[i].refs--; list[i].refs == 0 {
			r.macKeys[issuer] = slices.Delete(list, i, i+1)
		}
	}
	if s := r.signer[issuer]; s != nil && !slices.ContainsFunc(r.macKeys[issuer], func(have *macKey) bool { return hmac.Equal(have.key, s) }) {
		delete(r.signer, issuer)
		if list := r.macKeys[issuer]; len(list) > 0 {
			r.signer[issuer] = list[len(list)-1].key
		}
	}
}

// resyncAll re-reads every attached Valkey in the background.
func (r *revocations) resyncAll() {
	for _, a := range r.attachments() {
		if a.active() && a.h.Healthy() {
			go a.resync()
		}
	}
}

func revocationMAC(key []byte, k revKey, payload string) string {
	m := hmac.New(sha256.New, key)
	m.Write([]byte(k.storeID() + "\x00" + payload))
	return base64.RawURLEncoding.EncodeToString(m.Sum(nil))
}

// seal is the Valkey value of rv: its times and a MAC over them and its key.
func (r *revocations) seal(k revKey, rv revocation) (string, bool) {
	r.mu.RLock()
	key := r.signer[k.issuer]
	r.mu.RUnlock()
	if key == nil {
		return "", false
	}
	payload := strconv.FormatInt(rv.at, 10) + " " + strconv.FormatInt(rv.expires, 10)
	return payload + " " + revocationMAC(key, k, payload), true
}

// open verifies a Valkey value against every key of the issuer.
func (r *revocations) open(k revKey, v string) (at, expires int64, ok bool) {
	i := strings.LastIndexByte(v, ' ')
	if i < 0 {
		return 0, 0, false
	}
	payload, mac := v[:i], v[i+1:]
	r.mu.RLock()
	keys := r.macKeys[k.issuer]
	r.mu.RUnlock()
	verified := false
	for _, key := range keys {
		if hmac.Equal([]byte(revocationMAC(key.key, k, payload)), []byte(mac)) {
			verified = true
			break
		}
	}
	if !verified {
		return 0, 0, false
	}
	return parseRevocation(payload)
}

func parseRevocation(v string) (at, expires int64, ok bool) {
	a, e, found := strings.Cut(v, " ")
	if !found {
		return 0, 0, false
	}
	at, err1 := strconv.ParseInt(a, 10, 64)
	expires, err2 := strconv.ParseInt(e, 10, 64)
	return at, expires, err1 == nil && err2 == nil && at > 0 && expires > at
}

// revocationReaders is how many revocations a resync reads at once.
const revocationReaders = 32

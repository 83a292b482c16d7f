package provider_test

import (
	"context"
	"errors"
	"net/http"
	"runtime"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/lestrrat-go/jwx/v2/jwa"

	"github.com/caddy-oidc/caddy-oidc/internal/provider"
	"github.com/caddy-oidc/caddy-oidc/internal/testidp"
)

// clock is a controllable clock for the Provider's fetch scheduling: real
// time plus an offset a test advances.
type clock struct{ off atomic.Int64 }

func (c *clock) now() time.Time          { return time.Now().Add(time.Duration(c.off.Load())) }
func (c *clock) advance(d time.Duration) { c.off.Add(int64(d)) }

func setupClock(t *testing.T) (*testidp.IdP, *provider.Provider, *clock) {
	t.Helper()
	idp, p := setup(t)
	c := &clock{}
	provider.SetClock(p, c.now)
	return idp, p, c
}

// eventually polls cond (bounded) until it holds.
func eventually(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.After(5 * time.Second)
	tick := time.NewTicker(5 * time.Millisecond)
	defer tick.Stop()
	for !cond() {
		select {
		case <-deadline:
			t.Fatalf("timed out waiting for %s", what)
		case <-tick.C:
		}
	}
}

// failingJWKS makes the IdP's JWKS endpoint answer 503 while down is set.
func failingJWKS(idp *testidp.IdP) *atomic.Bool {
	var down atomic.Bool
	down.Store(true)
	idp.OnJWKS(func(w http.ResponseWriter, r *http.Request) {
		if down.Load() {
			http.Error(w, "down", http.StatusServiceUnavailable)
			return
		}
		idp.ServeJWKS(w, r)
	})
	return &down
}

var loginOpts = provider.VerifyOptions{ClientID: clientID, Nonce: "n", ClockSkew: time.Minute, FromTokenEndpoint: true}

// Issue 16.1: one failed JWKS fetch used to leave the key cache "fetched,
// with no keys" for 15 minutes. Now it is retried after the backoff (1 s).
func TestJWKSFailsOnceThenRecovers(t *testing.T) {
	idp, p, clk := setupClock(t)
	ctx := context.Background()
	down := failingJWKS(idp)
	tok := idp.Sign(idp.Claims(clientID, "n"))

	if _, err := p.VerifyIDToken(ctx, tok, loginOpts); !errors.Is(err, provider.ErrUnavailable) {
		t.Fatalf("JWKS down: got %v, want ErrUnavailable", err)
	}
	if _, err := p.VerifyIDToken(ctx, tok, loginOpts); !errors.Is(err, provider.ErrUnavailable) {
		t.Fatalf("JWKS down, in the backoff: got %v, want ErrUnavailable", err)
	}
	if n := idp.JWKSHits.Load(); n != 1 {
		t.Errorf("%d JWKS fetches within the backoff, want 1", n)
	}
	down.Store(false)
	clk.advance(time.Second)
	if _, err := p.VerifyIDToken(ctx, tok, loginOpts); err != nil {
		t.Fatalf("JWKS back for 1 s, verification still fails: %v", err)
	}
	if n := idp.JWKSHits.Load(); n != 2 {
		t.Errorf("%d JWKS fetches, want 2", n)
	}
}

// Failures back off 1 s, 2 s, 4 s ... capped at 1 min: each retry happens
// exactly when its backoff has passed, never before.
func TestJWKSBackoffDoublesToAMinute(t *testing.T) {
	idp, p, clk := setupClock(t)
	ctx := context.Background()
	failingJWKS(idp)
	tok := idp.Sign(idp.Claims(clientID, "n"))
	_, _ = p.VerifyIDToken(ctx, tok, loginOpts)
	for i, wait := range []time.Duration{1, 2, 4, 8, 16, 32, 60, 60} {
		wait *= time.Second
		hits := idp.JWKSHits.Load()
		clk.advance(wait - 10*time.Millisecond)
		_, _ = p.VerifyIDToken(ctx, tok, loginOpts)
		if n := idp.JWKSHits.Load(); n != hits {
			t.Fatalf("failure %d: fetched again before %s", i+1, wait)
		}
		clk.advance(10 * time.Millisecond)
		if _, err := p.VerifyIDToken(ctx, tok, loginOpts); !errors.Is(err, provider.ErrUnavailable) {
			t.Fatalf("got %v, want ErrUnavailable", err)
		}
		if n := idp.JWKSHits.Load(); n != hits+1 {
			t.Fatalf("failure %d: %d fetches after %s, want 1", i+1, n-hits, wait)
		}
	}
}

// A storm of verifications while the JWKS endpoint hangs and then fails
// costs one fetch; once it is back, the next storm costs one more.
func TestJWKSStormSharesOneFetch(t *testing.T) {
	idp, p, clk := setupClock(t)
	release := make(chan struct{})
	var down atomic.Bool
	down.Store(true)
	idp.OnJWKS(func(w http.ResponseWriter, r *http.Request) {
		if down.Load() {
			<-release
			http.Error(w, "down", http.StatusServiceUnavailable)
			return
		}
		idp.ServeJWKS(w, r)
	})
	tok := idp.Sign(idp.Claims(clientID, "n"))
	storm := func(n int, whileRunning func()) (failed int) {
		var wg sync.WaitGroup
		var mu sync.Mutex
		for range n {
			wg.Go(func() {
				if _, err := p.VerifyIDToken(context.Background(), tok, loginOpts); err != nil {
					if !errors.Is(err, provider.ErrUnavailable) {
						t.Errorf("got %v, want ErrUnavailable", err)
					}
					mu.Lock()
					failed++
					mu.Unlock()
				}
			})
		}
		whileRunning()
		wg.Wait()
		return failed
	}
	if failed := storm(200, func() {
		eventually(t, "the JWKS request", func() bool { return idp.JWKSHits.Load() >= 1 })
		close(release)
	}); failed != 200 {
		t.Errorf("%d of 200 failed while the JWKS endpoint was down", failed)
	}
	if n := idp.JWKSHits.Load(); n != 1 {
		t.Errorf("200 concurrent verifications during the failure made %d JWKS fetches, want 1", n)
	}
	down.Store(false)
	clk.advance(time.Second)
	if failed := storm(200, func() {}); failed != 0 {
		t.Errorf("%d of 200 failed after the JWKS endpoint came back", failed)
	}
	if n := idp.JWKSHits.Load(); n != 2 {
		t.Errorf("%d JWKS fetches in all, want 2", n)
	}
}

// The shared fetch is not bound to the context of the caller that started
// it: that caller giving up neither cancels it nor wastes it.
func TestJWKSFetchOutlivesFirstCaller(t *testing.T) {
	idp, p := setup(t)
	release := make(chan struct{})
	idp.OnJWKS(func(w http.ResponseWriter, r *http.Request) {
		<-release
		idp.ServeJWKS(w, r)
	})
	if _, err := p.Discovery(context.Background()); err != nil {
		t.Fatal(err)
	}
	tok := idp.Sign(idp.Claims(clientID, "n"))
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error)
	go func() { _, err := p.VerifyIDToken(ctx, tok, loginOpts); done <- err }()
	eventually(t, "the JWKS request", func() bool { return idp.JWKSHits.Load() == 1 })
	cancel()
	if err := <-done; !errors.Is(err, provider.ErrUnavailable) || !errors.Is(err, context.Canceled) {
		t.Errorf("the caller that gave up got %v, want ErrUnavailable and context.Canceled", err)
	}
	close(release)
	eventually(t, "the fetch to complete", func() bool { return p.JWKSFetches() == 1 })
	if _, err := p.VerifyIDToken(context.Background(), tok, loginOpts); err != nil {
		t.Fatalf("after the detached fetch completed: %v", err)
	}
	if n := idp.JWKSHits.Load(); n != 1 {
		t.Errorf("%d JWKS fetches, want 1", n)
	}
}

// Keys are refreshed lazily when older than 15 min, in the background (the
// request is served with the set it has), and a refresh that fails keeps
// the good set.
func TestJWKSStaleSetKeptAndRefreshedLazily(t *testing.T) {
	idp, p, clk := setupClock(t)
	ctx := context.Background()
	tok := idp.Sign(idp.Claims(clientID, "n"))
	if _, err := p.VerifyIDToken(ctx, tok, loginOpts); err != nil {
		t.Fatal(err)
	}
	down := failingJWKS(idp)
	clk.advance(14 * time.Minute)
	if _, err := p.VerifyIDToken(ctx, tok, loginOpts); err != nil {
		t.Fatal(err)
	}
	if n := idp.JWKSHits.Load(); n != 1 {
		t.Fatalf("%d JWKS fetches before the set is 15 min old, want 1", n)
	}
	clk.advance(2 * time.Minute)
	if _, err := p.VerifyIDToken(ctx, tok, loginOpts); err != nil {
		t.Fatalf("stale set while its refresh runs: %v", err)
	}
	eventually(t, "the background refresh", func() bool { return p.JWKSFetches() == 2 })
	for range 10 {
		if _, err := p.VerifyIDToken(ctx, tok, loginOpts); err != nil {
			t.Fatalf("the failed refresh dropped the good set: %v", err)
		}
	}
	if n := idp.JWKSHits.Load(); n != 2 {
		t.Errorf("%d JWKS fetches, want 2 (the failed refresh backs off)", n)
	}
	down.Store(false)
	clk.advance(time.Second)
	if _, err := p.VerifyIDToken(ctx, tok, loginOpts); err != nil {
		t.Fatal(err)
	}
	eventually(t, "the retried refresh", func() bool { return p.JWKSFetches() == 3 })
	if _, err := p.VerifyIDToken(ctx, tok, loginOpts); err != nil {
		t.Fatal(err)
	}
	if n := idp.JWKSHits.Load(); n != 3 {
		t.Errorf("%d JWKS fetches, want 3 (a fresh set is not refetched)", n)
	}
}

// A Provider runs no goroutine of its own (jwx's jwk.Cache ran several per
// Provider): many routes and reloads cost nothing while idle.
func TestNoGoroutinePerProvider(t *testing.T) {
	idp := testidp.New()
	defer idp.Close()
	before := runtime.NumGoroutine()
	ps := make([]*provider.Provider, 50)
	for i := range ps {
		ps[i] = provider.New(idp.Issuer, provider.Options{})
	}
	if d := runtime.NumGoroutine() - before; d > 0 {
		t.Errorf("50 providers started %d goroutines", d)
	}
	for _, p := range ps {
		p.Close()
	}
}

// Issue 16.5: an attacker's unknown kid spends the refetch budget of
// untrusted input; the IdP then rotates its keys. A refreshed ID token from
// the token endpoint signed by the new key still verifies, and one whose
// key the IdP has not published yet is transient, never invalid.
func TestUnknownKidBudgetOfAttackerDoesNotBlockRotation(t *testing.T) {
	idp := testidp.New()
	t.Cleanup(idp.Close)
	// A long interval, so a slow machine cannot see the budget renewed.
	p := provider.New(idp.Issuer, provider.Options{JWKSRefetchInterval: time.Hour})
	ctx := context.Background()
	refreshOpts := provider.VerifyOptions{ClientID: clientID, Subject: "user-1", ClockSkew: time.Minute, FromTokenEndpoint: true}
	if _, err := p.VerifyIDToken(ctx, idp.Sign(idp.Claims(clientID, "n")), loginOpts); err != nil {
		t.Fatal(err)
	}

	// The attacker: a bogus logout token and a bogus bearer JWT, unknown kids.
	bogus := testidp.SignWith(jwa.RS256, testidp.ForeignKey("evil"), "evil", idp.Claims(clientID, "n"))
	if _, err := p.VerifyLogoutToken(ctx, bogus, clientID, time.Minute, time.Minute); !errors.Is(err, provider.ErrInvalidToken) {
		t.Fatalf("bogus logout token: %v", err)
	}
	bogus2 := testidp.SignWith(jwa.RS256, testidp.ForeignKey("evil2"), "evil2", idp.Claims(clientID, "n"))
	// The budget is spent: an unknown kid is not a verdict then (a real
	// logout token signed by a key rotated in meanwhile must not get 400).
	if _, err := p.VerifyAccessToken(ctx, bogus2, []string{clientID}, time.Minute); !errors.Is(err, provider.ErrUnavailable) {
		t.Fatalf("bogus bearer after the budget is spent: %v, want ErrUnavailable", err)
	}
	if n := idp.JWKSHits.Load(); n != 2 {
		t.Fatalf("%d JWKS fetches, want 2 (first use, one refetch for the attacker)", n)
	}

	idp.AddKey("k2") // the IdP rotates
	refreshed := idp.Sign(idp.Claims(clientID, ""))
	// As untrusted input, the new kid finds the budget spent: transient.
	if _, err := p.VerifyIDToken(ctx, refreshed, provider.VerifyOptions{ClientID: clientID, ClockSkew: time.Minute}); !errors.Is(err, provider.ErrUnavailable) {
		t.Fatalf("untrusted token with the new kid: %v, want ErrUnavailable (budget spent)", err)
	}
	// From the token endpoint it gets its own refetch.
	if _, err := p.VerifyIDToken(ctx, refreshed, refreshOpts); err != nil {
		t.Fatalf("refreshed ID token with the rotated-in key refused: %v", err)
	}

	// The IdP signs with a key it has not published yet: transient, and the
	// same kid again within the interval costs no further fetch.
	unpublished := testidp.SignWith(jwa.RS256, testidp.ForeignKey("k3"), "k3", idp.Claims(clientID, ""))
	hits := idp.JWKSHits.Load()
	for range 5 {
		_, err := p.VerifyIDToken(ctx, unpublished, refreshOpts)
		if !errors.Is(err, provider.ErrUnavailable) || errors.Is(err, provider.ErrInvalidToken) {
			t.Fatalf("token endpoint token with an unpublished kid: %v, want ErrUnavailable only", err)
		}
	}
	if n := idp.JWKSHits.Load() - hits; n != 1 {
		t.Errorf("5 tokens with one unpublished kid made %d JWKS fetches, want 1", n)
	}
}

// Issue 17.3: a Provider released by a reload keeps serving the requests
// still in flight on the old config.
func TestClosedProviderKeepsAnswering(t *testing.T) {
	idp, p := setup(t)
	ctx := context.Background()
	idp.OnToken(testidp.TokenResponse(idp.Sign(idp.Claims(clientID, "n")), nil))
	if _, err := p.Discovery(ctx); err != nil {
		t.Fatal(err)
	}
	p.Close()
	if err := p.Destruct(); err != nil {
		t.Fatal(err)
	}
	if _, err := p.Discovery(ctx); err != nil {
		t.Errorf("discovery after Close: %v", err)
	}
	tr, err := p.Exchange(ctx, provider.Client{ID: clientID, Secret: "s"}, "code", "http://app/cb", "v")
	if err != nil {
		t.Fatalf("code exchange after Close: %v", err)
	}
	if _, err := p.VerifyIDToken(ctx, tr.IDToken, loginOpts); err != nil {
		t.Errorf("verification (first JWKS fetch) after Close: %v", err)
	}

	// Closed before its first use, too.
	q := provider.New(idp.Issuer, provider.Options{})
	q.Close()
	if _, err := q.VerifyIDToken(ctx, tr.IDToken, loginOpts); err != nil {
		t.Errorf("a Provider closed before first use: %v", err)
	}
}

// A token without kid while the IdP publishes several keys breaks Core
// §10.1: refused (definitive) even from the token endpoint, where a missing
// key would be transient.
func TestKidAbsentWithSeveralKeysIsInvalidFromAnySource(t *testing.T) {
	idp, p := setup(t)
	idp.AddKey("k2")
	k, alg := idp.SigningKey()
	tok := testidp.SignWith(alg, k, "", idp.Claims(clientID, "n"))
	for _, o := range []provider.VerifyOptions{loginOpts, {ClientID: clientID, Nonce: "n", ClockSkew: time.Minute}} {
		if _, err := p.VerifyIDToken(context.Background(), tok, o); !errors.Is(err, provider.ErrInvalidToken) || errors.Is(err, provider.ErrUnavailable) {
			t.Errorf("FromTokenEndpoint=%v: got %v, want ErrInvalidToken", o.FromTokenEndpoint, err)
		}
	}
}

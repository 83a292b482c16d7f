package refresh

import (
	"context"
	"errors"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"go.uber.org/goleak"
)

var errDefinitive = errors.New("invalid_grant")

func newTest() *Coordinator[string] {
	return New[string](Options{HandOff: time.Second, ErrorHold: 100 * time.Millisecond,
		IsDefinitive: func(err error) bool { return errors.Is(err, errDefinitive) }})
}

func TestOneGrantForConcurrentCallers(t *testing.T) {
	defer goleak.VerifyNone(t)
	c := newTest()
	defer c.Close()
	var calls atomic.Int64
	release := make(chan struct{})
	grant := func(context.Context) (string, error) {
		calls.Add(1)
		<-release
		return "new-tokens", nil
	}
	var wg sync.WaitGroup
	results := make([]string, 50)
	for i := range results {
		wg.Add(1)
		go func() {
			defer wg.Done()
			v, err := c.Do(context.Background(), "rt-1", grant, nil)
			if err != nil {
				t.Error(err)
			}
			results[i] = v
		}()
	}
	time.Sleep(50 * time.Millisecond)
	close(release)
	wg.Wait()
	if calls.Load() != 1 {
		t.Errorf("%d grants for one refresh token, want 1", calls.Load())
	}
	for i, v := range results {
		if v != "new-tokens" {
			t.Errorf("caller %d got %q", i, v)
		}
	}
	// A late request with the spent token adopts the result (hand-off).
	if v, _ := c.Do(context.Background(), "rt-1", grant, nil); v != "new-tokens" || calls.Load() != 1 {
		t.Errorf("late caller: got %q after %d grants, want the handed-off result", v, calls.Load())
	}
	// Another token is another grant.
	if _, err := c.Do(context.Background(), "rt-2", grant, nil); err != nil || calls.Load() != 2 {
		t.Errorf("second token: %v, %d grants", err, calls.Load())
	}
}

func TestErrorsAreHeldByKind(t *testing.T) {
	defer goleak.VerifyNone(t)
	c := newTest()
	defer c.Close()
	var calls atomic.Int64
	fail := func(err error) func(context.Context) (string, error) {
		return func(context.Context) (string, error) { calls.Add(1); return "", err }
	}
	c.Do(context.Background(), "bad", fail(errDefinitive), nil)
	if _, err := c.Do(context.Background(), "bad", fail(errDefinitive), nil); !errors.Is(err, errDefinitive) || calls.Load() != 1 {
		t.Errorf("definitive error not handed to a follower: %v after %d grants", err, calls.Load())
	}
	calls.Store(0)
	c.Do(context.Background(), "down", fail(errors.New("timeout")), nil)
	time.Sleep(150 * time.Millisecond) // past ErrorHold
	c.Do(context.Background(), "down", fail(errors.New("timeout")), nil)
	if calls.Load() != 2 {
		t.Errorf("a transient error was held past ErrorHold: %d grants, want 2", calls.Load())
	}
}

func TestFollowerLeavesWithItsContext(t *testing.T) {
	defer goleak.VerifyNone(t)
	c := newTest()
	release := make(chan struct{})
	go c.Do(context.Background(), "slow", func(context.Context) (string, error) { <-release; return "x", nil }, nil)
	time.Sleep(20 * time.Millisecond)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Millisecond)
	defer cancel()
	if _, err := c.Do(ctx, "slow", nil, nil); !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("got %v, want the follower's own deadline", err)
	}
	close(release)
	c.Close()
	if _, err := c.Do(context.Background(), "after", nil, nil); !errors.Is(err, ErrClosed) {
		t.Errorf("after Close: got %v, want ErrClosed", err)
	}
}

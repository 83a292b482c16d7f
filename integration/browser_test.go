package integration

import (
	"context"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/chromedp/chromedp"
)

// chromiumPath finds Debian's chromium. A missing browser fails the test:
// the browser flow is part of what `make test` proves (.ci/run installs it).
func chromiumPath(t *testing.T) string {
	for _, p := range []string{"chromium", "chromium-browser", "google-chrome"} {
		if path, err := exec.LookPath(p); err == nil {
			return path
		}
	}
	t.Fatal("chromium is not installed: apt-get install chromium")
	return ""
}

func TestBrowserLoginAndLogout(t *testing.T) {
	exe := chromiumPath(t)
	e := newEnv(t, envOptions{})

	opts := append(chromedp.DefaultExecAllocatorOptions[:],
		chromedp.ExecPath(exe),
		chromedp.NoSandbox,
		chromedp.Flag("disable-gpu", true),
		chromedp.Flag("disable-quic", true),
		chromedp.Flag("disable-background-networking", true),
		chromedp.Flag("disable-component-update", true),
		chromedp.Flag("disable-sync", true),
		chromedp.UserDataDir(t.TempDir()),
	)
	actx, cancel := chromedp.NewExecAllocator(context.Background(), opts...)
	defer cancel()
	ctx, cancel := chromedp.NewContext(actx)
	defer cancel()
	ctx, cancel = context.WithTimeout(ctx, 60*time.Second)
	defer cancel()

	err := chromedp.Do(ctx,
		chromedp.Navigate(e.caddyURL+"/dashboard?tab=2"),
		chromedp.WaitVisible(chromedp.ID("username")),
		chromedp.SendKeys(chromedp.ID("username"), "alice"),
		chromedp.SendKeys(chromedp.ID("password"), "alice-password"),
		chromedp.Submit(chromedp.ID("password")),
		chromedp.WaitVisible(chromedp.CSS("body")),
		chromedp.Sleep(300*time.Millisecond),
	)
	if err != nil {
		t.Fatal(err)
	}
	location, err := chromedp.Run(ctx, chromedp.Location())
	if err != nil {
		t.Fatal(err)
	}
	body, err := chromedp.Run(ctx, chromedp.Text(chromedp.CSS("body")))
	if err != nil {
		t.Fatal(err)
	}
	if location != e.caddyURL+"/dashboard?tab=2" {
		t.Errorf("the browser landed on %s, want the page first asked for", location)
	}
	if !strings.Contains(body, `"X-Auth-Email":["alice@example.com"]`) {
		t.Errorf("the upstream did not see alice's identity; page: %.500s", body)
	}

	// Log out through a typed-in GET (Sec-Fetch-Site: none): the browser goes
	// to the IdP and back to post_logout_redirect_uri.
	if err := chromedp.Do(ctx, chromedp.Navigate(e.caddyURL+"/oauth2/logout"), chromedp.Sleep(500*time.Millisecond)); err != nil {
		t.Fatal(err)
	}
	location, err = chromedp.Run(ctx, chromedp.Location())
	if err != nil {
		t.Fatal(err)
	}
	if location != e.caddyURL+"/bye" {
		t.Errorf("after logout the browser is at %s, want %s/bye", location, e.caddyURL)
	}
	// The session is gone: the next page asks for a login again.
	if err := chromedp.Do(ctx, chromedp.Navigate(e.caddyURL+"/dashboard"), chromedp.WaitVisible(chromedp.ID("username"))); err != nil {
		t.Fatalf("after logout the browser was not sent to the login form: %v", err)
	}
}

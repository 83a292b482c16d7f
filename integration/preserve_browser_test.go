package integration

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/chromedp/chromedp"

	"github.com/caddy-oidc/caddy-oidc/internal/redistest"
)

// A form whose submit button has a name (<button name="submit">,
// <input type="submit" name="submit">: very common) is sent with a field
// called "submit". preserve_post keeps it, and the replay page renders it
// as <input type="hidden" name="submit">, which shadows form.submit (DOM
// clobbering): document.forms[0].submit() throws "is not a function", the
// <noscript> button is not shown because scripts run, and the user is left
// on a blank page at the callback; the form never reaches the upstream.
// The replay page calls the prototype's submit instead.
func TestPreservedPostWithASubmitFieldInBrowser(t *testing.T) {
	// control: the same form with an unnamed button is replayed.
	t.Run("unnamed button", func(t *testing.T) { preservedPostInBrowser(t, "") })
	t.Run("button named submit", func(t *testing.T) { preservedPostInBrowser(t, ` name="submit" value="Save"`) })
}

func preservedPostInBrowser(t *testing.T, buttonAttrs string) {
	exe := chromiumPath(t)
	e := newEnv(t, envOptions{oidc: "preserve_post 16KiB"})
	opts := append(chromedp.DefaultExecAllocatorOptions[:],
		chromedp.ExecPath(exe), chromedp.NoSandbox,
		chromedp.Flag("disable-gpu", true), chromedp.Flag("disable-quic", true),
		chromedp.Flag("disable-background-networking", true), chromedp.Flag("disable-component-update", true),
		chromedp.Flag("disable-sync", true), chromedp.UserDataDir(t.TempDir()))
	actx, cancel := chromedp.NewExecAllocator(context.Background(), opts...)
	defer cancel()
	ctx, cancel := chromedp.NewContext(actx)
	defer cancel()
	ctx, cancel = context.WithTimeout(ctx, 60*time.Second)
	defer cancel()

	// A page of the site (excluded, so no login yet) with the
	// application's form; the session has expired while the user typed.
	form := `document.body.innerHTML = '<form method="post" action="/posts/new">' +
		'<input name="title" value="my draft"><button id="save" type="submit"` + buttonAttrs + `>Save</button></form>'`
	err := chromedp.Do(ctx,
		chromedp.Navigate(e.caddyURL+"/public/editor"),
		chromedp.Action[chromedp.Void](func(ctx context.Context, t *chromedp.Target) (chromedp.Void, error) {
			_, err := chromedp.Evaluate[bool](form+"; true")(ctx, t)
			return chromedp.Void{}, err
		}),
		chromedp.Click(chromedp.ID("save")),
		chromedp.WaitVisible(chromedp.ID("username")),
		chromedp.SendKeys(chromedp.ID("username"), "alice"),
		chromedp.SendKeys(chromedp.ID("password"), "alice-password"),
		chromedp.Submit(chromedp.ID("password")),
	)
	if err != nil {
		t.Fatal(err)
	}
	// The login ends on the replay page, which posts the form on: wait
	// until the browser has left the IdP and the callback.
	var location string
	redistest.Poll(20*time.Second, func() bool {
		location, err = chromedp.Run(ctx, chromedp.Location())
		return err == nil && strings.HasSuffix(location, "/posts/new")
	})
	body, err := chromedp.Run(ctx, chromedp.Text(chromedp.CSS("body")))
	if err != nil {
		t.Fatal(err)
	}
	if !strings.HasSuffix(location, "/posts/new") || !strings.Contains(body, `"path":"/posts/new"`) {
		t.Fatalf("the kept POST was not replayed: the browser is at %s showing %.300q", location, body)
	}
}

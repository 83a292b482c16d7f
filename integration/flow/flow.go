// Package flow drives a browser-like login through Caddy and the
// development IdP's login form, for the tests and the load tools.
package flow

import (
	"fmt"
	"net"
	"net/http"
	"net/http/cookiejar"
	"net/url"
	"time"
)

// Browser returns an HTTP client with a cookie jar that sends navigation
// headers, as a browser does.
func Browser() *http.Client {
	jar, _ := cookiejar.New(nil)
	return &http.Client{
		Jar:     jar,
		Timeout: 15 * time.Second,
		Transport: headerTransport{base: http.DefaultTransport, set: map[string]string{
			"Accept":         "text/html,application/xhtml+xml",
			"Sec-Fetch-Mode": "navigate",
		}},
	}
}

type headerTransport struct {
	base http.RoundTripper
	set  map[string]string
}

func (h headerTransport) RoundTrip(r *http.Request) (*http.Response, error) {
	r = r.Clone(r.Context())
	for k, v := range h.set {
		if r.Header.Get(k) == "" {
			r.Header.Set(k, v)
		}
	}
	// A browser sends Origin with every POST; a page's own form posts from
	// the page's origin.
	if r.Method == http.MethodPost && r.Header.Get("Origin") == "" {
		r.Header.Set("Origin", r.URL.Scheme+"://"+r.URL.Host)
	}
	return h.base.RoundTrip(r)
}

// Start asks Caddy for target and follows the redirects to the IdP's
// login form, whose URL it returns.
func Start(c *http.Client, target string) (*url.URL, error) {
	resp, err := c.Get(target)
	if err != nil {
		return nil, err
	}
	resp.Body.Close()
	if resp.Request.URL.Path != "/login/username" {
		return nil, fmt.Errorf("expected the IdP's login form, landed on %s (%d)", resp.Request.URL, resp.StatusCode)
	}
	return resp.Request.URL, nil
}

// Submit fills the login form and follows the redirects back through the
// callback to the page first asked for.
func Submit(c *http.Client, issuer string, form *url.URL, user, pass string) (*http.Response, error) {
	id := form.Query().Get("authRequestID")
	return c.PostForm(issuer+"/login/username", url.Values{"id": {id}, "username": {user}, "password": {pass}})
}

// Login is Start then Submit.
func Login(c *http.Client, target, issuer, user, pass string) (*http.Response, error) {
	form, err := Start(c, target)
	if err != nil {
		return nil, err
	}
	return Submit(c, issuer, form, user, pass)
}

// FreePort returns a TCP port free on 127.0.0.1 at the time of the call.
func FreePort() int {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		panic(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

// WaitUp polls u until it answers, for at most 15 s.
func WaitUp(u string) error {
	for range 300 {
		if resp, err := http.Get(u); err == nil {
			resp.Body.Close()
			return nil
		}
		time.Sleep(50 * time.Millisecond)
	}
	return fmt.Errorf("%s did not come up", u)
}

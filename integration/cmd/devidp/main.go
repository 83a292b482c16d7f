// Command devidp runs the development OpenID Provider on 127.0.0.1 for the
// demo: `make demo` starts it beside Caddy.
package main

import (
	"flag"
	"fmt"
	"log"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/caddy-oidc/caddy-oidc/integration/devidp"
)

func main() {
	addr := flag.String("addr", "127.0.0.1:9000", "listen address")
	clientID := flag.String("client-id", "demo", "client id")
	secret := flag.String("client-secret", "demo-secret", "client secret")
	redirect := flag.String("redirect-uris", "http://localhost:8080/oauth2/callback,http://127.0.0.1:8080/oauth2/callback", "comma-separated redirect URIs")
	postLogout := flag.String("post-logout-uris", "http://localhost:8080/,http://127.0.0.1:8080/", "comma-separated post-logout redirect URIs")
	ttl := flag.Duration("access-token-lifetime", 2*time.Minute, "access token lifetime")
	flag.Parse()

	idp, err := devidp.Start(devidp.Options{
		Addr: *addr, ClientID: *clientID, ClientSecret: *secret,
		RedirectURIs:           strings.Split(*redirect, ","),
		PostLogoutRedirectURIs: strings.Split(*postLogout, ","),
		AccessTokenLifetime:    *ttl,
	})
	if err != nil {
		log.Fatal(err)
	}
	fmt.Printf("development IdP: issuer %s, client %s\n", idp.Issuer, *clientID)
	for _, u := range devidp.DefaultUsers {
		fmt.Printf("  demo user: %-6s password: %s  (groups %s)\n", u.Username, u.Password, strings.Join(u.Groups, ","))
	}
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, os.Interrupt, syscall.SIGTERM)
	<-sig
	_ = idp.Close()
}

// Command caddy is Caddy with its standard modules and caddy-oidc, for a
// fast `go build ./cmd/caddy` during development and tests. Users build
// with xcaddy (see xcaddy.json and the README).
package main

import (
	caddycmd "github.com/caddyserver/caddy/v2/cmd"

	_ "github.com/caddyserver/caddy/v2/modules/standard"

	_ "github.com/caddy-oidc/caddy-oidc"
)

func main() {
	caddycmd.Main()
}

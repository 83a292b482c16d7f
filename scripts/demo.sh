#!/usr/bin/env bash
# Runs the demo: the development IdP on 127.0.0.1:9000 and Caddy with
# Caddyfile.example on http://localhost:8080. Ctrl-C stops both.
set -euo pipefail
cd "$(dirname "$0")/.."

export OIDC_CLIENT_SECRET=demo-secret
# A fresh random secret per demo run; in production keep yours stable.
export OIDC_SESSION_SECRET="${OIDC_SESSION_SECRET:-$(head -c 48 /dev/urandom | base64 | tr -d '\n')}"

bin/devidp -addr 127.0.0.1:9000 &
idp=$!
trap 'kill $idp 2>/dev/null || true' EXIT
sleep 0.5

cat <<MSG

  Open http://localhost:8080/ and log in as  alice / alice-password
  (or bob / bob-password). The page shows the identity Caddy passes on.

MSG
bin/caddy run --config Caddyfile.example --adapter caddyfile

# caddy-oidc: `make demo` runs the demo, `make test` runs every test.
GO       ?= go
BIN      := bin
# The module path is not published: make the proxy's refusal final so
# xcaddy takes the local replacement instead of trying the network.
XCADDY_GOPROXY := $(shell $(GO) env GOPROXY | cut -d, -f1)|off

.PHONY: all build devidp demo test test-unit test-integration lint tools vulncheck xcaddy bench fuzz soak interop clean

all: build

build:
	$(GO) build -o $(BIN)/caddy ./cmd/caddy

devidp:
	cd integration && $(GO) build -o ../$(BIN)/devidp ./cmd/devidp

demo: build devidp
	./scripts/demo.sh

# Lint tools at pinned versions, installed into bin/ by `make tools` (a
# version stamp per tool: bumping a version reinstalls it).
GOLANGCI_LINT_VERSION := v2.15.0
GOVULNCHECK_VERSION   := v1.9.0
GOLANGCI_LINT := $(abspath $(BIN))/golangci-lint
GOVULNCHECK   := $(abspath $(BIN))/govulncheck
# govulncheck reads its database offline, built from the Go vulnerability
# database's own repository at a pinned version (data/osv, indexed into the
# v1 layout by that repository's cmd/indexdb), so a run does not depend on
# vuln.go.dev or on the day it runs. Bump VULNDB_VERSION (a pseudo-version
# of golang.org/x/vulndb) for newer reports. Cached outside the checkout.
VULNDB_VERSION := v0.0.0-20261105234957-e22db6528018
CACHE_DIR      := $(or $(CADDY_OIDC_CACHE),$(XDG_CACHE_HOME),$(HOME)/.cache)$(if $(CADDY_OIDC_CACHE),,/caddy-oidc)
VULNDB         := $(CACHE_DIR)/vulndb-$(VULNDB_VERSION)

tools: $(BIN)/.golangci-lint-$(GOLANGCI_LINT_VERSION) $(BIN)/.govulncheck-$(GOVULNCHECK_VERSION) $(VULNDB)/index/db.json

$(BIN)/.golangci-lint-$(GOLANGCI_LINT_VERSION):
	GOBIN=$(abspath $(BIN)) $(GO) install github.com/golangci/golangci-lint/v2/cmd/golangci-lint@$(GOLANGCI_LINT_VERSION)
	touch $@

$(BIN)/.govulncheck-$(GOVULNCHECK_VERSION):
	GOBIN=$(abspath $(BIN)) $(GO) install golang.org/x/vuln/cmd/govulncheck@$(GOVULNCHECK_VERSION)
	touch $@

$(VULNDB)/index/db.json:
	rm -rf $(VULNDB).tmp && mkdir -p $(VULNDB).tmp/bin
	cd $(VULNDB).tmp && GOBIN=$(VULNDB).tmp/bin $(GO) install golang.org/x/vulndb/cmd/indexdb@$(VULNDB_VERSION)
	cd $(VULNDB).tmp && $(GO) mod download golang.org/x/vulndb@$(VULNDB_VERSION)
	$(VULNDB).tmp/bin/indexdb -vulns "$$($(GO) env GOMODCACHE)/golang.org/x/vulndb@$(VULNDB_VERSION)/data/osv" -out $(VULNDB).tmp/db
	rm -rf $(VULNDB) && mv $(VULNDB).tmp/db $(VULNDB) && rm -rf $(VULNDB).tmp

# gofmt, go vet and golangci-lint (.golangci.yml) on both modules, then
# govulncheck against the pinned database (integration/cmd/vulncheck: a
# called vulnerability in a required module fails; standard-library ones are
# the builder's toolchain, listed with the Go release that fixes them, and
# fail only with VULNCHECK_STDLIB=fail).
VULNCHECK_STDLIB ?= warn
VULNCHECK = cd integration && $(GO) run ./cmd/vulncheck -govulncheck $(GOVULNCHECK) -db file://$(VULNDB) -stdlib $(VULNCHECK_STDLIB)
lint: tools
	@test -z "$$(gofmt -l $$(git ls-files '*.go'))" || { echo "gofmt needed:"; gofmt -l $$(git ls-files '*.go'); exit 1; }
	$(GO) vet ./...
	cd integration && $(GO) vet ./...
	$(GOLANGCI_LINT) run ./...
	cd integration && $(GOLANGCI_LINT) run ./...
	$(VULNCHECK) -C .. ./...
	$(VULNCHECK) ./...

# govulncheck against the live database at vuln.go.dev (needs the network).
vulncheck: $(BIN)/.govulncheck-$(GOVULNCHECK_VERSION)
	$(GOVULNCHECK) ./...
	cd integration && $(GOVULNCHECK) ./...

test-unit:
	$(GO) test -race -count=1 ./...

test-integration:
	cd integration && $(GO) test -race -count=1 -timeout 15m .

test: lint test-unit test-integration

# The end-to-end scenarios against IdPs this project did not write: the
# development IdP, Ory Hydra (built from integration/hydra's module) and
# panva's oidc-provider (npm ci of integration/oidcprovider), each with
# Chromium, two Caddy replicas and a Valkey of their own. Hydra's binary
# and node_modules are cached in $XDG_CACHE_HOME/caddy-oidc (~/.cache), or
# $CADDY_OIDC_CACHE. Needs chromium, redis-server, go with cgo, node, npm.
interop:
	cd integration && $(GO) test -race -count=1 -timeout 30m -v ./interop/

# Builds Caddy through xcaddy from the recipe in xcaddy.json.
xcaddy:
	cd integration && GOPROXY="$(XCADDY_GOPROXY)" $(GO) run ./cmd/xcaddybuild -recipe ../xcaddy.json -o ../$(BIN)/caddy-xcaddy

# Each fuzz target for FUZZTIME; `make test` runs their seed corpora.
FUZZTIME ?= 60s
fuzz:
	for f in FuzzSafeReturnTo FuzzCaddyfile FuzzCallbackParams FuzzBackchannelBody; do \
		$(GO) test -run '^$$' -fuzz "^$$f\$$" -fuzztime $(FUZZTIME) . || exit 1; done
	for f in FuzzOpen FuzzReadChunked; do \
		$(GO) test -run '^$$' -fuzz "^$$f\$$" -fuzztime $(FUZZTIME) ./session/ || exit 1; done

# A long run at moderate load (cookie sessions; SOAK_ARGS="-valkey 127.0.0.1:6379"
# for cache sessions): goroutines, RSS and open files must stay level.
SOAK_DURATION ?= 10m
soak: build
	cd integration && $(GO) run ./cmd/soak -caddy ../bin/caddy -duration $(SOAK_DURATION) $(SOAK_ARGS)

# The load comparison (writes BENCHMARKS.md and docs/bench.png), then the
# hot-path micro-benchmarks. BENCH_ARGS="-valkey 127.0.0.1:6379" adds Valkey.
BENCH_ARGS ?=
bench: build $(BIN)/oauth2-proxy
	cd integration && $(GO) run ./cmd/bench -caddy ../bin/caddy -oauth2-proxy ../$(BIN)/oauth2-proxy $(BENCH_ARGS)
	$(GO) test -run '^$$' -bench . -benchmem -count 3 . ./cache/

$(BIN)/oauth2-proxy:
	GOBIN=$(abspath $(BIN)) $(GO) install github.com/oauth2-proxy/oauth2-proxy/v7@v7.15.6

clean:
	rm -rf $(BIN)

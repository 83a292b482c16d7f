# caddy-oidc: `make demo` runs the demo, `make test` runs every test.
GO       ?= go
BIN      := bin
# The module path is not published: make the proxy's refusal final so
# xcaddy takes the local replacement instead of trying the network.
XCADDY_GOPROXY := $(shell $(GO) env GOPROXY | cut -d, -f1)|off

.PHONY: all build devidp demo test test-unit test-integration lint xcaddy bench fuzz soak interop clean

all: build

build:
	$(GO) build -o $(BIN)/caddy ./cmd/caddy

devidp:
	cd integration && $(GO) build -o ../$(BIN)/devidp ./cmd/devidp

demo: build devidp
	./scripts/demo.sh

lint:
	@test -z "$$(gofmt -l $$(git ls-files '*.go'))" || { echo "gofmt needed:"; gofmt -l $$(git ls-files '*.go'); exit 1; }
	$(GO) vet ./...
	cd integration && $(GO) vet ./...

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

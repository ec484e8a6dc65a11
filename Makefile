# banger build and test entry points. `make test` is the README's test command and what CI runs.
GO      ?= go
BIN     ?= $(CURDIR)/bin
VERSION ?= $(shell git describe --always --dirty 2>/dev/null || echo dev)
LDFLAGS := -s -w -X main.version=$(VERSION)

# Packages with concurrency run under the race detector.
RACE_PKGS := ./internal/rpc/... ./internal/disktmpl/... ./internal/imagebuild ./internal/store/... ./internal/daemon/... ./internal/guest/... ./internal/agentclient/... ./internal/agentproto/... \
             ./internal/vmdns/... ./internal/imagecat/... ./internal/vmm/... \
             ./internal/helper/... ./internal/hostnet/... ./internal/client/... ./internal/ctrshim/...

.PHONY: deps build test lint unit e2e bench clean

# deps installs the Debian packages the build and tests need (a no-op when present).
deps:
	bash scripts/install-deps.sh

build:
	mkdir -p $(BIN)
	$(GO) build -ldflags '$(LDFLAGS)' -o $(BIN)/banger ./cmd/banger
	$(GO) build -ldflags '$(LDFLAGS)' -o $(BIN)/bangerd ./cmd/bangerd
	CGO_ENABLED=0 $(GO) build -ldflags '$(LDFLAGS)' -o $(BIN)/banger-agent ./cmd/banger-agent
	$(GO) build -ldflags '$(LDFLAGS)' -o $(BIN)/containerd-shim-banger-v2 ./cmd/containerd-shim-banger-v2

lint:
	@out=$$(gofmt -l $$(git ls-files '*.go')); if [ -n "$$out" ]; then echo "gofmt needed:"; echo "$$out"; exit 1; fi
	$(GO) vet ./...

unit:
	$(GO) test -count=1 -timeout 20m $$($(GO) list ./... | grep -v /test/e2e)
	$(GO) test -race -count=1 $(RACE_PKGS)

e2e: build
	BANGER_BIN=$(BIN) $(GO) test -count=1 -timeout 30m -v ./test/e2e

test: deps lint build unit e2e

bench: build
	BANGER_BIN=$(BIN) $(GO) test -run '^$$' -bench . -benchtime 3x -timeout 30m ./test/e2e

clean:
	rm -rf $(BIN)

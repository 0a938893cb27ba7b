# Lookaside: the two commands are `make up` (the local lab) and `make test`.
# Both create .venv and install everything on first use.

PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
PYTEST_ARGS ?=

.PHONY: up test install protos lint bench browser deploy-tools clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[server,dev,redis-server]'
	touch $@

install: $(VENV)/.installed

## the local lab: Redis, balancer, DNS responder, admin API, 3 routeguide backends
up: install
	$(PY) -m lookaside up

## the whole test suite (starts its own redis-server on a free port)
test: install browser deploy-tools
	$(PY) -m pytest $(PYTEST_ARGS)

## headless Chromium for the dashboard test (Debian's package; needs root)
browser:
	@if [ ! -x /usr/bin/chromium ] && command -v apt-get >/dev/null && [ "$$(id -u)" = 0 ]; then \
		(apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null) \
		|| echo "chromium could not be installed: the browser test will be skipped"; \
	fi

## docker-compose for tests/deploy (Debian's package parses compose files without an engine)
deploy-tools:
	@if ! command -v docker-compose >/dev/null && command -v apt-get >/dev/null && [ "$$(id -u)" = 0 ]; then \
		(apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq docker-compose >/dev/null) \
		|| echo "docker-compose could not be installed: the compose checks will be skipped"; \
	fi

## regenerate lookaside/proto from protos/
protos: install
	$(PY) -m lookaside.codegen

lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy lookaside balancer_server client_lib admin_api

bench: install
	$(PY) bench/client_overhead.py
	$(PY) bench/slow_backend.py
	$(PY) bench/blackhole.py
	$(PY) bench/streams.py --streams 1000 --clients 1
	$(PY) bench/streams.py
	$(PY) bench/reports.py

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache .mypy_cache

## Go, grpc-go and the protoc plugins for the Go backend example's test
## (tests/examples/test_go_backend.py; Debian's packages, needs root)
.PHONY: go-toolchain
GO_PACKAGES := golang golang-google-grpc-dev golang-github-golang-protobuf-1-5-dev \
	protobuf-compiler protoc-gen-go protoc-gen-go-grpc
GO_TOOLS := go protoc protoc-gen-go protoc-gen-go-grpc
go-toolchain:
	@missing=; for t in $(GO_TOOLS); do command -v $$t >/dev/null || missing=1; done; \
	test -d /usr/share/gocode/src/google.golang.org/grpc/health || missing=1; \
	if [ -n "$$missing" ] && command -v apt-get >/dev/null && [ "$$(id -u)" = 0 ]; then \
		(apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $(GO_PACKAGES) >/dev/null) \
		|| echo "the Go toolchain could not be installed: the Go backend test will be skipped (it fails under LOOKASIDE_STRICT=1)"; \
	fi

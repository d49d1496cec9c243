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
	@# numba compiles the fused kernels into its cache, in two processes (it compiles on one core), while the checks
	@# run, and the tests start once it is done: the test workers load the kernels instead of compiling them each. (A
	@# niced precompile beside the tests, as before, lost the race on a cold cache: both workers compiled the kernels
	@# themselves, and the tests took 9:12-9:37 in CI against 7:51 warm.) Seconds with a warm cache.
	@set -e; \
	$(BIN)/python -m floatguard.ops.precompile --part 0 > $(VENV)/precompile0.log 2>&1 & p0=$$!; \
	$(BIN)/python -m floatguard.ops.precompile --part 1 > $(VENV)/precompile1.log 2>&1 & p1=$$!; \
	trap 'kill $$p0 $$p1 2>/dev/null || true' EXIT; \
	echo "ruff check ."; $(BIN)/ruff check .; \
	echo "mypy"; $(BIN)/python -m mypy; \
	echo "mkdocs build --strict"; NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict -q -d "$$(mktemp -d)/site"; \
	wait $$p0 $$p1 || echo "precompile failed: the tests compile what they use (see $(VENV)/precompile*.log)"; \
	trap - EXIT; \
	cat $(VENV)/precompile0.log $(VENV)/precompile1.log
	@# the docs site above: docs/hooks.py generates the rule, op and CLI pages and the report screenshots
	$(BIN)/python -m pytest -n 2 --dist worksteal -q

bench: $(VENV)/.dev
	$(BIN)/python benchmarks/accuracy.py
	$(BIN)/python benchmarks/gradient_accuracy.py
	$(BIN)/python benchmarks/paper_bhh2021.py
	$(BIN)/python benchmarks/ops_speed.py
	$(BIN)/python benchmarks/training_speed.py

clean:
	rm -rf $(VENV) .pytest_cache .hypothesis

# Two commands do everything from a fresh clone: `make demo` and `make test`.
# The virtual environment is created on first use; uv makes the install fast, pip is the fallback.
# Bytecode is compiled at install (pip does by default, uv on request): where Python may not
# write it (PYTHONDONTWRITEBYTECODE), every process would otherwise compile numpy, pandas, numba
# and the rest from source — seconds on each CLI call, service worker and nightly job.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: demo test test-slow lint bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(STAMP): $(BIN)/python pyproject.toml
	$(BIN)/python -m pip install -q --upgrade pip uv || true
	if [ -x $(BIN)/uv ]; then \
	  $(BIN)/uv pip install --compile-bytecode --python $(BIN)/python -e '.[dev,spark]'; \
	else \
	  $(BIN)/python -m pip install -e '.[dev,spark]'; \
	fi
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/leadscore demo

lint: $(STAMP)
	$(BIN)/ruff check leadscore tests benchmarks
	$(BIN)/lint-imports  # the layering contracts in pyproject.toml

test: $(STAMP) lint
	$(BIN)/python -m pytest -q

test-slow: $(STAMP)
	$(BIN)/python -m pytest -q -m slow

clean:
	rm -rf $(VENV) .demo mlruns.db mlruns .pytest_cache

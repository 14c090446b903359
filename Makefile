# Two commands do all set-up on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV := .venv
STAMP := $(VENV)/.installed
PY := $(VENV)/bin/python
DEMO_ARGS ?=
PYTEST_ARGS ?=

.PHONY: demo test lint bench clean

$(STAMP): pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --disable-pip-version-check -q -c constraints.txt -e '.[dev,demo]'
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/deit-distill demo $(DEMO_ARGS)

test: $(STAMP)
	$(VENV)/bin/ruff check .
	HF_HUB_DISABLE_TELEMETRY=1 $(PY) -m pytest $(PYTEST_ARGS)

lint: $(STAMP)
	$(VENV)/bin/ruff check .

bench: $(STAMP)
	$(PY) benchmarks/teacher_overhead.py
	$(PY) benchmarks/cache_overhead.py
	$(PY) benchmarks/hub_pull_overhead.py

clean:
	rm -rf $(VENV) *.egg-info .pytest_cache .ruff_cache

# Two commands do all set-up on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV := .venv
STAMP := $(VENV)/.installed
TEST_STAMP := $(VENV)/.installed-test
PY := $(VENV)/bin/python
DEMO_ARGS ?=
PYTEST_ARGS ?=

.PHONY: demo test lint bench clean

$(STAMP): pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --disable-pip-version-check -q -c constraints.txt -e '.[dev,demo]'
	touch $(STAMP)

# the tests read every dataset source: the [hf] and [wds] extras too
$(TEST_STAMP): $(STAMP)
	$(PY) -m pip install --disable-pip-version-check -q -c constraints.txt -e '.[dev,demo,hf,wds]'
	touch $(TEST_STAMP)

demo: $(STAMP)
	$(VENV)/bin/deit-distill demo $(DEMO_ARGS)

test: $(TEST_STAMP)
	$(VENV)/bin/ruff check .
	HF_HUB_DISABLE_TELEMETRY=1 HF_DATASETS_OFFLINE=1 HF_UPDATE_DOWNLOAD_COUNTS=0 $(PY) -m pytest $(PYTEST_ARGS)

lint: $(STAMP)
	$(VENV)/bin/ruff check .

bench: $(TEST_STAMP)
	$(PY) benchmarks/teacher_overhead.py
	$(PY) benchmarks/cache_overhead.py
	$(PY) benchmarks/hub_pull_overhead.py
	$(PY) benchmarks/loader_throughput.py

clean:
	rm -rf $(VENV) *.egg-info .pytest_cache .ruff_cache

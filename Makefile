# The README's Quickstart: `make train` and `make test`. Both create .venv when it is missing.
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
# pytest workers: two, one per core of the 2-core CI machine (TEST_WORKERS=0 runs the suite in one process); which
# files share a worker: tests/conftest.py
TEST_WORKERS ?= 2
XDIST := -n $(TEST_WORKERS)

.PHONY: install train test test-all lint clean

$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install --upgrade pip
	$(PY) -m pip install -e ".[dev]"
	touch $(STAMP)

install: $(STAMP)

train: $(STAMP)
	$(VENV)/bin/mckd-train $(ARGS)

lint: $(STAMP)
	$(VENV)/bin/ruff check .

test: lint
	WANDB_MODE=offline $(PY) -m pytest $(XDIST) $(PYTEST_ARGS)

test-all: lint
	WANDB_MODE=offline $(PY) -m pytest -m "slow or not slow" $(XDIST) $(PYTEST_ARGS)

clean:
	rm -rf $(VENV) build dist *.egg-info outputs multirun

# `make demo` and `make test` each set up .venv/ (once; again when setup.cfg or this file changes), then run.
# The venv has every optional extra (PyAV for H.264/H.265 degradation, pyspng): tests exercise them all.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.awm-installed
PYTEST_ARGS ?=

.PHONY: demo test venv lint bench clean gpu-wheels

venv: $(STAMP)

$(STAMP): setup.cfg pyproject.toml Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip setuptools wheel
	$(PY) -m pip install -q torch==2.14.1 torchvision==0.29.1
	$(PY) -m pip install -q -e '.[dev,video,fast]'
	touch $(STAMP)

demo: venv
	$(VENV)/bin/awm demo

test: venv
	$(VENV)/bin/ruff check .
	$(PY) -m pytest -q -ra $(PYTEST_ARGS)

lint: venv
	$(VENV)/bin/ruff check .

bench: venv
	for b in tests/benchmarks/bench_*.py; do $(PY) $$b || exit 1; done

# The pure-Python wheels tests/gpu/run.sh installs on a GPU machine without network (Python 3.12).
gpu-wheels: venv
	rm -f tests/gpu/wheels/*.whl
	$(PY) -m pip download -q --only-binary=:all: --python-version 3.12 --implementation cp --no-deps \
		-d tests/gpu/wheels spandrel==0.4.2 webdataset==1.0.2 wids==0.1.11 braceexpand==0.1.7

clean:
	rm -rf $(VENV) runs .pytest_cache

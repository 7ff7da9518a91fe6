# `make demo` and `make test` (test-fast, test-loaded) each set up .venv/ (once; again when setup.cfg or this
# file changes), then run. The venv has every optional extra (PyAV for H.264/H.265 degradation, pyspng,
# mlflow/wandb trackers): tests exercise them all.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.awm-installed
PYTEST_ARGS ?=

.PHONY: demo test test-fast test-loaded venv lint bench bench-table clean gpu-wheels

venv: $(STAMP)

$(STAMP): setup.cfg pyproject.toml Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip setuptools wheel
	$(PY) -m pip install -q torch==2.14.1 torchvision==0.29.1
	$(PY) -m pip install -q -e '.[dev,video,fast,track]'
	touch $(STAMP)

demo: venv
	$(VENV)/bin/awm demo

# One line at the start of every test log: what the minutes below were measured on.
MACHINE = printf 'machine: %s, %s cores, load %s\n' "$$(sed -n 's/^model name[[:space:]]*: //p' /proc/cpuinfo | head -n1)" \
	"$$(nproc)" "$$(cut -d' ' -f1-3 /proc/loadavg)"

# The whole suite; --durations says where the time went.
test: venv
	@$(MACHINE)
	$(VENV)/bin/ruff check .
	$(PY) -m pytest -q -ra --durations=25 $(PYTEST_ARGS)

# The edit-test loop: unit tests that start no training and need no cluster (tests/README.md).
test-fast: venv
	@$(MACHINE)
	$(PY) -m pytest -q -ra --durations=10 -m "not slow and not slurm" tests/unit $(PYTEST_ARGS)

# The whole suite with two busy loops on the side (a loaded CI machine); they are killed at the end
# whatever happens, and the suite's exit status is make's.
test-loaded: venv
	@sh -c 'sh -c "while :; do :; done" & a=$$!; sh -c "while :; do :; done" & b=$$!; \
		trap "kill $$a $$b 2>/dev/null" EXIT INT TERM; $(MAKE) --no-print-directory test PYTEST_ARGS="$(PYTEST_ARGS)"'

lint: venv
	$(VENV)/bin/ruff check .

# `make bench` runs every benchmark this machine can; `make bench BENCH=crawl,dedup` some;
# `make bench BENCH=stale` those whose README row is stale. Each appends to
# tests/benchmarks/results.jsonl and regenerates the README's Performance table.
bench: venv
	$(PY) tests/benchmarks/run.py $(if $(BENCH),--only $(BENCH))

# Regenerate the table only: rows whose code changed since they were measured get labelled stale.
bench-table: venv
	$(PY) tests/benchmarks/run.py --table

# The pure-Python wheels tests/gpu/run.sh installs on a GPU machine without network (Python 3.12).
gpu-wheels: venv
	rm -f tests/gpu/wheels/*.whl
	$(PY) -m pip download -q --only-binary=:all: --python-version 3.12 --implementation cp --no-deps \
		-d tests/gpu/wheels spandrel==0.4.2 webdataset==1.0.2 wids==0.1.11 braceexpand==0.1.7

clean:
	rm -rf $(VENV) runs .pytest_cache

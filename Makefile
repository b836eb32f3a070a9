# ferropool developer commands. `make help` lists them.
# Everything runs in a project-local virtual environment (.venv) that the targets create.

PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip

.PHONY: help compare test test-rust test-python test-joblib-suite install dev lint lint-rust lint-python lint-tools fix bench bench-scaleout stubtest clean

help:  ## show this help
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-10s %s\n", $$1, $$2}'

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip

install: $(PY)  ## build the wheel and install it with the test extra
	$(PIP) install --quiet ".[test]"

compare: install  ## build, install and run `ferropool compare` on the built-in workloads
	$(VENV)/bin/ferropool compare

test: install test-rust test-python test-joblib-suite  ## build, install and run every test (cargo test, pytest, joblib's suite)

test-rust:  ## engine unit and end-to-end tests
	timeout 900 cargo test --workspace --exclude ferropool-py

test-python:  ## pytest against the installed package (not the source tree)
	$(PY) -m pytest tests -p no:cacheprovider

# joblib's own test_parallel, its backend tests run on "ferropool" and "ferropool-threads"
# (tests/joblib_suite/ferropool_joblib_suite.py registers them and lists the skipped tests).
# FERROPOOL_JOBLIB_SUITE=joblib runs joblib's own backends under the two names: the reference.
test-joblib-suite:  ## joblib's test_parallel against the ferropool joblib backends
	PYTHONPATH=tests/joblib_suite $(PY) -m pytest -p ferropool_joblib_suite -p no:cacheprovider \
		--pyargs joblib.test.test_parallel -q --durations=5

lint: lint-rust lint-python  ## every check CI runs before the tests: formatters, clippy, ruff, mypy

lint-rust:  ## rustfmt (check only) and clippy with warnings as errors
	cargo fmt --all --check
	cargo clippy --workspace --all-targets -- -D warnings

# mypy reads the installed third-party packages' types, so it runs where the tests run.
lint-python: install lint-tools  ## ruff (lint and format check) and mypy on the package
	$(VENV)/bin/ruff check python tests benchmarks
	$(VENV)/bin/ruff format --check python tests benchmarks
	$(VENV)/bin/mypy

lint-tools: $(PY)
	$(PIP) install --quiet --group lint

fix: lint-tools  ## apply the formatters and ruff's safe fixes
	cargo fmt --all
	$(VENV)/bin/ruff check --fix python tests benchmarks
	$(VENV)/bin/ruff format python tests benchmarks

dev: $(PY)  ## editable build for development (maturin develop --release)
	$(PIP) install --quiet maturin pytest pytest-timeout cloudpickle
	$(VENV)/bin/maturin develop --release

bench: install  ## run the benchmarks (installs loky, mpire, pebble, psutil)
	$(PIP) install --quiet ".[bench]"
	$(PY) benchmarks/bench_pools.py

bench-scaleout: install  ## DaskPool, RayPool and the joblib backend beside the engines' own APIs and loky
	$(PY) benchmarks/bench_scaleout.py

stubtest: install  ## check that _core.pyi matches the extension module
	$(PIP) install --quiet mypy
	$(PY) -m mypy.stubtest ferropool._core

clean:  ## remove build outputs and the virtual environment
	rm -rf target $(VENV) python/ferropool/*.so

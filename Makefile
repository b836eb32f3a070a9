# ferropool developer commands. `make help` lists them.
# Everything runs in a project-local virtual environment (.venv) that the targets create.

PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip

.PHONY: help compare test test-rust test-python wheel test-wheel test-joblib-suite test-cpython-suite test-pythons fuzz-smoke fuzz fuzz-tools install dev lint lint-rust lint-python lint-tools fix bench bench-scaleout stubtest check-freethreaded loom clean

help:  ## show this help
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-10s %s\n", $$1, $$2}'

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip

install: $(PY)  ## build the wheel and install it with the test extra
	$(PIP) install --quiet ".[test]"

compare: install  ## build, install and run `ferropool compare` on the built-in workloads
	$(VENV)/bin/ferropool compare

test: install test-rust test-python test-joblib-suite test-wheel test-cpython-suite test-pythons  ## build, install and run every test (cargo test, pytest, joblib's and CPython's suites, the wheel, other Pythons)

test-rust:  ## engine unit and end-to-end tests
	timeout 900 cargo test --workspace --exclude ferropool-py

test-python:  ## pytest against the installed package (not the source tree)
	$(PY) -m pytest tests -p no:cacheprovider --ignore=tests/test_wheel.py

# The wheel anyone can install: abi3 (CPython 3.11+), linked by zig against glibc 2.28 so that it
# is a manylinux_2_28 wheel whatever this machine's glibc; auditwheel checks the tag holds.
DIST := dist
WHEEL_TOOLS := maturin==1.16.0 ziglang==0.17.1 auditwheel==6.8.2

wheel: $(PY)  ## build the portable wheel (manylinux_2_28, abi3) and the sdist into dist/
	$(PIP) install --quiet $(WHEEL_TOOLS)
	rm -rf $(DIST)
	PATH="$(abspath $(VENV))/bin:$$PATH" $(VENV)/bin/maturin build --release --zig --compatibility manylinux_2_28 --out $(DIST)
	$(VENV)/bin/maturin sdist --out $(DIST)
	$(VENV)/bin/auditwheel show $(DIST)/*.whl | tr -s ' \n' ' ' | grep -q 'platform tag: "manylinux_2_28_' \
		|| { $(VENV)/bin/auditwheel show $(DIST)/*.whl; echo "wheel: not a manylinux_2_28 wheel"; exit 1; }
	@ls -l $(DIST)

test-wheel: install wheel  ## install the wheel into a fresh venv with no Rust on PATH; run the README there
	FERROPOOL_WHEEL_DIR=$(DIST) $(PY) -m pytest tests/test_wheel.py -p no:cacheprovider -q

# joblib's own test_parallel, its backend tests run on "ferropool" and "ferropool-threads"
# (tests/joblib_suite/ferropool_joblib_suite.py registers them and lists the skipped tests).
# FERROPOOL_JOBLIB_SUITE=joblib runs joblib's own backends under the two names: the reference.
test-joblib-suite:  ## joblib's test_parallel against the ferropool joblib backends
	PYTHONPATH=tests/joblib_suite $(PY) -m pytest -p ferropool_joblib_suite -p no:cacheprovider \
		--pyargs joblib.test.test_parallel -q --durations=5

# CPython's own test.test_concurrent_futures (3.13's: pyenv's 3.11 and 3.12 lack it) on ThreadPool
# and ProcessPool, in .venv-3.13; tests/cpython_suite/ferropool_cpython_suite.py swaps the
# executors in and lists the skipped tests. FERROPOOL_CPYTHON_SUITE=stdlib runs the standard
# library's executors instead: the reference. pytest's logging plugin would take the records
# that the suite reads from stderr.
CPYTHON_SUITE_PYTHON ?= 3.13
test-cpython-suite:  ## CPython's test_concurrent_futures against ThreadPool and ProcessPool (Python 3.13)
	@py=$$(tests/python_venv.sh $(CPYTHON_SUITE_PYTHON)); \
	if [ -z "$$py" ]; then echo "test-cpython-suite: SKIPPED (no Python $(CPYTHON_SUITE_PYTHON))"; exit 0; fi; \
	if ! $$py -c 'import test.test_concurrent_futures' 2>/dev/null; then \
		echo "test-cpython-suite: SKIPPED ($$py has no test.test_concurrent_futures)"; exit 0; fi; \
	PYTHONPATH=tests/cpython_suite timeout 900 $$py -m pytest -p ferropool_cpython_suite -p no:cacheprovider \
		-p no:logging --pyargs test.test_concurrent_futures -q

# The pytest suite on each of PYTHON_VERSIONS but .venv's own (test-python runs that one), each in
# a .venv-X.Y; a version that is not installed is skipped, saying so.
PYTHON_VERSIONS ?= 3.11 3.12 3.13
test-pythons: install  ## pytest on the other Pythons of PYTHON_VERSIONS (a .venv-X.Y each)
	@main=$$($(PY) -c 'import sys; print("%d.%d" % sys.version_info[:2])'); \
	for v in $(PYTHON_VERSIONS); do \
		if [ "$$v" = "$$main" ]; then echo "test-pythons: Python $$v is .venv's (test-python)"; continue; fi; \
		py=$$(tests/python_venv.sh $$v); \
		if [ -z "$$py" ]; then echo "test-pythons: SKIPPED Python $$v: not installed"; continue; fi; \
		echo "test-pythons: Python $$v"; \
		$$py -m pytest tests -p no:cacheprovider -q --ignore=tests/test_wheel.py || exit 1; \
	done

lint: lint-rust lint-python  ## every check CI runs before the tests: formatters, clippy, ruff, mypy

lint-rust:  ## rustfmt (check only) and clippy with warnings as errors
	cargo fmt --all --check
	cd fuzz && cargo fmt --check
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
	cd fuzz && cargo fmt
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

# Free-threaded CPython 3.14 has no stable ABI, and no 3.14t interpreter is needed to compile for
# it: PyO3 reads the build from PYO3_CONFIG_FILE (Py_GIL_DISABLED). Without the `abi3` feature,
# as a 3.14t wheel is built; FERROPOOL_REQUIRE_FREE_THREADED makes build.rs refuse any other
# configuration. docs/free-threading.md says what this checks and what it cannot.
FREETHREADED_ENV := PYO3_CONFIG_FILE=$(CURDIR)/ci/pyo3-freethreaded-3.14.txt FERROPOOL_REQUIRE_FREE_THREADED=1

check-freethreaded:  ## compile and clippy the binding for free-threaded CPython 3.14 (no interpreter needed)
	$(FREETHREADED_ENV) cargo check -p ferropool-py --no-default-features --lib
	$(FREETHREADED_ENV) cargo clippy -p ferropool-py --no-default-features --all-targets -- -D warnings

# Model checking (docs/development.md, "Model checking"): loom runs each wake-up protocol's model
# in every interleaving (up to its preemption bound). `--cfg loom` changes every crate's flags, so
# it builds in a target directory of its own instead of invalidating the usual one. The models
# compile only under `--cfg loom`, so they are linted here rather than by `make lint-rust`.
LOOM_TARGET_DIR ?= target/loom

# Optimised (loom runs each model thousands of times) but without the release profile's
# link-time optimisation and single codegen unit, which only slow the build down here.
LOOM_ENV := RUSTFLAGS="--cfg loom" CARGO_TARGET_DIR=$(LOOM_TARGET_DIR) \
	CARGO_PROFILE_RELEASE_LTO=off CARGO_PROFILE_RELEASE_CODEGEN_UNITS=16

loom:  ## model-check the wake-up protocols with loom (the engine's `loom_model` tests)
	$(LOOM_ENV) cargo clippy -p ferropool-engine --lib --tests -- -D warnings
	$(LOOM_ENV) timeout 600 cargo test -p ferropool-engine --release --lib -- loom_model::

# Fuzzing (docs/development.md, "Fuzzing"). cargo-fuzz needs nightly compiler flags; the stable
# toolchain accepts them under RUSTC_BOOTSTRAP=1. Each run starts from the committed corpus in
# fuzz/corpus/<target>/; a crash leaves its input in fuzz/artifacts/<target>/ and fails the run.
FUZZ := env RUSTC_BOOTSTRAP=1 cargo fuzz
FUZZ_LIMITS := -rss_limit_mb=1024 -malloc_limit_mb=512
# Every target, in CI and by hand.
FUZZ_TARGETS ?= frame_reader connection segment_open line_relay shared_queue queue_spill
FUZZ_SMOKE_TARGETS := $(FUZZ_TARGETS)
FUZZ_SMOKE_TIME ?= 20
FUZZ_TIME ?= 600

fuzz-tools:
	command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz --locked --version '^0.13'

fuzz-smoke: fuzz-tools  ## build the fuzz targets, run each for FUZZ_SMOKE_TIME s on its corpus (CI)
	cd fuzz && cargo clippy --all-targets -- -D warnings
	cd fuzz && $(FUZZ) build
	@scratch=$$(mktemp -d) && trap 'rm -rf "$$scratch"' EXIT && \
	for t in $(FUZZ_SMOKE_TARGETS); do \
		mkdir -p "$$scratch/$$t" && \
		(cd fuzz && timeout $$(( $(FUZZ_SMOKE_TIME) + 120 )) $(FUZZ) run $$t "$$scratch/$$t" corpus/$$t -- \
			-max_total_time=$(FUZZ_SMOKE_TIME) $(FUZZ_LIMITS) >"$$scratch/$$t.log" 2>&1) || { \
			tail -n 80 "$$scratch/$$t.log"; echo "fuzz-smoke: $$t FAILED (a crash leaves its input in fuzz/artifacts/$$t/)"; exit 1; }; \
		echo "fuzz-smoke: $$t: $$(grep -E '^Done [0-9]+ runs' "$$scratch/$$t.log")"; \
	done

fuzz: fuzz-tools  ## fuzz each of FUZZ_TARGETS for FUZZ_TIME s, adding what it finds to fuzz/corpus
	@cd fuzz && failed= && for t in $(FUZZ_TARGETS); do \
		$(FUZZ) run $$t corpus/$$t -- -max_total_time=$(FUZZ_TIME) $(FUZZ_LIMITS) || failed="$$failed $$t"; \
	done; \
	if [ -n "$$failed" ]; then echo "fuzz: crashed:$$failed (inputs in fuzz/artifacts/)"; exit 1; fi

clean:  ## remove build outputs and the virtual environment
	rm -rf target fuzz/target $(DIST) $(VENV) .venv-* python/ferropool/*.so

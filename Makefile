# Every target sets itself up: `make test` on a machine with only python3 and pip creates .venv,
# installs torch 2.13.0 (only when no torch is importable there), triton, the build and test tools,
# builds fastops._C and runs the tests. A second run reinstalls nothing and rebuilds only what changed.
#
# On a machine that already has torch + triton and no network (the GPU machine), use
# `make test-installed`: it builds against the current interpreter's torch and never downloads.

PYTHON ?= python3
# pipefail: a failed compile fails the build even though its output goes through sed.
SHELL := /bin/bash
.SHELLFLAGS := -o pipefail -c
VENV   := .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip
TORCH_VERSION := 2.13.0
CXX_SOURCES := $(shell find csrc -name '*.cpp' -o -name '*.h' -o -name '*.inc')
SOURCES := $(CXX_SOURCES) setup.py

.PHONY: test lint format bench bench-quick build test-installed bench-installed gpu-check gpu-check-dry aot clean

$(PY):
	$(PYTHON) -m venv $(VENV)

# Dependencies, installed once (again only when pyproject.toml changes). What building and
# importing fastops needs comes first, so `make build` does not wait for the tools of the tests,
# benchmarks, training command and lint.
$(VENV)/.build-deps: $(PY) pyproject.toml
	$(PY) -c "import torch" 2>/dev/null || $(PIP) install "torch==$(TORCH_VERSION)"
	$(PIP) install setuptools wheel ninja pybind11 numpy triton
	touch $@

$(VENV)/.deps: $(VENV)/.build-deps
	$(PIP) install pytest pytest-benchmark expecttest matplotlib tqdm scikit-learn ruff clang-format
	touch $@

# Compiles fastops._C into fastops/ with ninja, which recompiles only the sources that changed
# (objects stay in build/temp); each compiled file is printed as "[n/N] csrc/<file>" while the
# build runs. The first time, an editable install then registers the package in the venv (its
# build finds every object up to date).
$(VENV)/.built: $(VENV)/.build-deps $(SOURCES)
	$(PY) setup.py -q build_ext --inplace 2>&1 | sed -u -E 's|^\[([0-9]+/[0-9]+)\] .* -c [^ ]*/(csrc/[^ ]*) .*|[\1] \2|'
	[ -f $(VENV)/.installed ] || { $(PIP) install -q --no-build-isolation --no-deps -e . \
		&& touch $(VENV)/.installed; }
	touch $@

build: $(VENV)/.built

test: build $(VENV)/.deps
	$(PY) -m pytest tests -q

# ruff (rules and line length in pyproject.toml) and clang-format (.clang-format): both must be
# clean; CI runs this before the tests. `make format` applies clang-format.
lint: $(VENV)/.deps
	$(VENV)/bin/ruff check .
	$(VENV)/bin/clang-format --style=file --dry-run -Werror $(CXX_SOURCES)

format: $(VENV)/.deps
	$(VENV)/bin/clang-format --style=file -i $(CXX_SOURCES)

# Both write to runs/bench/<machine>[-quick]/ (ignored by git): the committed results in
# benchmarks/results/<machine>/ change only with `python -m fastops bench --out <that folder>`.
bench: build $(VENV)/.deps
	$(PY) -m fastops bench

bench-quick: build $(VENV)/.deps
	$(PY) -m fastops bench --quick

# GPU / offline machines: use the interpreter that already has torch and triton.
test-installed:
	$(PYTHON) -m pip install --no-build-isolation --no-deps --no-index -e . -q
	$(PYTHON) -m pytest tests -q

bench-installed:
	$(PYTHON) -m pip install --no-build-isolation --no-deps --no-index -e . -q
	$(PYTHON) -m fastops bench

# The GPU run of one short lease (about 6 minutes on an H200, see the README): build against the
# installed torch, the CUDA tests, CUDA graphs of converted models, the quick GPU benchmark;
# results in benchmarks/results/<gpu-name>/. gpu-check-dry runs the same script on the CPU.
gpu-check:
	$(PYTHON) -m pip install --no-build-isolation --no-deps --no-index -e . -q
	$(PYTHON) benchmarks/gpu_check.py $(GPU_CHECK_ARGS)

gpu-check-dry: build $(VENV)/.deps
	$(PY) benchmarks/gpu_check.py --dry-run --out build/gpu-check-dry

# Every Triton kernel compiled for sm_90 with every config that autotuning can pick (the test
# suite compiles one per kernel and key); the summary is committed per Triton version.
aot: build $(VENV)/.deps
	mkdir -p build
	$(PY) tests/sm90.py --autotune all --jobs 2 --out build/sm90-all.json \
		--summary benchmarks/results/sm90-compile

clean:
	rm -rf build fastops/_C*.so *.egg-info $(VENV)/.built $(VENV)/.installed

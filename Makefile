# The two commands a newcomer needs: `make serve` and `make test`.
# Both create .venv and install the project on a fresh machine by themselves;
# the install runs again only when pyproject.toml changes.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: setup serve test test-slow test-all lint typecheck calibrations clean

setup: $(STAMP)

$(STAMP): pyproject.toml Makefile
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install --upgrade --quiet pip
	# On a machine without CUDA pin the CPU wheel first, so nothing pulls a multi-GB CUDA build.
	# Triton there runs the GPU kernels in its CPU interpreter for the tests (tests/conftest.py).
	if command -v nvidia-smi >/dev/null 2>&1; then \
	  $(BIN)/python -m pip install --quiet "torch>=2.4,<2.15"; \
	else \
	  $(BIN)/python -m pip install --quiet torch==2.13.0; \
	  $(BIN)/python -m pip install --quiet triton==3.6.0; \
	fi
	$(BIN)/python -m pip install --quiet -e ".[dev]"
	touch $(STAMP)

serve: setup
	$(BIN)/trdq serve

# The default tier (pyproject's addopts: not slow, not gpu) on every core (pytest-xdist),
# a test module's tests on one worker (--dist loadscope): some modules' tests build on the
# state of the ones before them (the playground's browser session). Exit 5 (nothing collected, e.g. a filtered run) is not a failure.
PYTEST_N ?= auto
test: setup
	$(BIN)/python -m pytest -q -n $(PYTEST_N) --dist loadscope; rc=$$?; if [ $$rc -eq 5 ]; then echo "no tests collected"; exit 0; fi; exit $$rc

# The slow tier alone (what the default tier leaves out, GPU tests excepted); loadscope keeps
# a module on one worker, so a module fixture (the quality guard's) runs once.
test-slow: setup
	$(BIN)/python -m pytest -q -n $(PYTEST_N) --dist loadscope -m "slow and not gpu"; rc=$$?; if [ $$rc -eq 5 ]; then echo "no tests collected"; exit 0; fi; exit $$rc

test-all: setup
	$(BIN)/python -m pytest -q -n $(PYTEST_N) --dist loadscope -m "not gpu"

lint: setup
	$(BIN)/ruff check trdq server tests

# mypy on the files of pyproject's [tool.mypy]: all of server/ and trdq/
typecheck: setup
	$(BIN)/python -m mypy

# Re-ship the zoo's W8A8 calibration artifacts (after a change to the zoo weights or to
# the w8a8 preset): servers then start without calibrating.
SHIPPED := trdq/zoo/calibration/artifacts
calibrations: setup
	rm -rf $(SHIPPED) .calibrations.tmp
	for model in tiny-shapes-t2i tiny-shapes-t2v; do \
	  $(BIN)/trdq calibrate --model $$model --quant w8a8 --device cpu --cache-dir .calibrations.tmp || exit 1; \
	done
	mkdir -p $(SHIPPED)
	for dir in .calibrations.tmp/*/; do \
	  test -f $$dir/manifest.json && cp -r $$dir $(SHIPPED)/; \
	done
	rm -rf .calibrations.tmp

clean:
	rm -rf $(VENV) build *.egg-info

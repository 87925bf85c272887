# Setup is idempotent: the venv is rebuilt only when the pinned dependencies change, or
# when it was made with a Python other than 3.11 (pyproject: requires-python >=3.11,<3.12).
# `make help` lists the targets.

REQUIRED_PY := 3.11
# The first of python3.11 / python3 that is Python 3.11; choose another with
# `make PYTHON=/path/to/python3.11`.
PYTHON ?= $(shell for p in python3.11 python3; do \
	v=$$(command -v $$p 2>/dev/null) && $$v -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11))' 2>/dev/null \
	&& { echo $$v; break; }; done)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
PY_VERSION = -c 'import sys; print("%d.%d" % sys.version_info[:2])' 2>/dev/null
PY_HINT := Python $(REQUIRED_PY) is required (pyproject.toml: requires-python >=3.11,<3.12)

.DEFAULT_GOAL := install
.PHONY: help install run test test-fast bench clean FORCE

# A venv made with another Python (or whose interpreter is gone) is rebuilt, not reused.
VENV_PY := $(shell $(BIN)/python $(PY_VERSION))
ifneq ($(VENV_PY),$(REQUIRED_PY))
$(STAMP): FORCE
endif

$(STAMP): pyproject.toml constraints.txt
	@if [ "$$($(BIN)/python $(PY_VERSION))" != "$(REQUIRED_PY)" ]; then \
	  if [ -z "$(PYTHON)" ]; then \
	    echo "error: $(PY_HINT), and neither python3.11 nor python3 on PATH is 3.11; choose one with: make PYTHON=/path/to/python3.11" >&2; exit 1; \
	  elif [ "$$($(PYTHON) $(PY_VERSION))" != "$(REQUIRED_PY)" ]; then \
	    echo "error: $(PY_HINT), but PYTHON=$(PYTHON) is not 3.11; choose one with: make PYTHON=/path/to/python3.11" >&2; exit 1; \
	  fi; \
	  if [ -e $(VENV) ]; then \
	    echo "==> $(VENV) has Python $(or $(VENV_PY),that does not run), not $(REQUIRED_PY): rebuilding it"; rm -rf $(VENV); \
	  fi; \
	  echo "==> [1/3] creating $(VENV) with $(PYTHON)"; \
	  $(PYTHON) -m venv $(VENV) || exit 1; \
	else echo "==> [1/3] $(VENV) exists (Python $(REQUIRED_PY))"; fi
	@echo "==> [2/3] upgrading pip"
	$(BIN)/python -m pip install --upgrade pip
	@echo "==> [3/3] installing offmarl and its pinned dependencies (a few minutes the first time)"
	$(BIN)/python -m pip install -c constraints.txt -e '.[test]'
	touch $(STAMP)
	@echo "==> done: $(VENV) is ready"

FORCE:

## help: list the targets
help:
	@sed -n 's/^## //p' $(MAKEFILE_LIST)

## install: create .venv (Python 3.11) and install offmarl with pinned dependencies
install: $(STAMP)

RUN_DIR := runs/matrace_smax_3m_s0

## run: the main job, MA-Trace on SMAX 3m, seed 0, default settings; a second `make run`
##      continues (or, if finished, re-evaluates) the same run instead of overwriting it
run: $(STAMP)
	if [ -f $(RUN_DIR)/config.json ]; then $(BIN)/offmarl train --resume $(RUN_DIR); \
	else $(BIN)/offmarl train --algo matrace --env smax:3m --seed 0 --out $(RUN_DIR); fi

# The suite runs in TEST_WORKERS processes (pytest-xdist; one test file per process at a
# time), then the few tests marked serial, which time themselves, alone.
TEST_WORKERS ?= 2
PYTEST := $(BIN)/python -m pytest -q

## test: the whole test suite, including the slow end-to-end training tests
##       (TEST_WORKERS=2 processes by default; TEST_WORKERS=0 runs it in one)
test: $(STAMP)
	$(PYTEST) -n $(TEST_WORKERS) --dist loadfile -m "not serial"
	$(PYTEST) -m serial

## test-fast: the test suite without the tests marked slow
test-fast: $(STAMP)
	$(PYTEST) -n $(TEST_WORKERS) --dist loadfile -m "not slow and not serial"
	$(PYTEST) -m "not slow and serial" || [ $$? -eq 5 ]  # 5: none selected

## bench: environment-step throughput on SMAX 3m
bench: $(STAMP)
	$(BIN)/python benchmarks/throughput.py --env smax:3m

## clean: remove .venv and runs/
clean:
	rm -rf $(VENV) runs

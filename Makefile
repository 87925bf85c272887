# Setup is idempotent: the venv is rebuilt only when the pinned dependencies change.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install run test bench clean

$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -c constraints.txt -e '.[test]'
	touch $(STAMP)

install: $(STAMP)

RUN_DIR := runs/matrace_smax_3m_s0

## The main job: MA-Trace on SMAX 3m, seed 0, default settings. A second `make run`
## continues (or, if finished, re-evaluates) the same run instead of overwriting it.
run: $(STAMP)
	if [ -f $(RUN_DIR)/config.json ]; then $(BIN)/offmarl train --resume $(RUN_DIR); \
	else $(BIN)/offmarl train --algo matrace --env smax:3m --seed 0 --out $(RUN_DIR); fi

test: $(STAMP)
	$(BIN)/python -m pytest -q

bench: $(STAMP)
	$(BIN)/python benchmarks/throughput.py --env smax:3m

clean:
	rm -rf $(VENV) runs
